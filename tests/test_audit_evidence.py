"""The audit trail as evidence: signed checkpoints, keyed verification against
outside copies, durability (audit.fsync) and the modes of the files written.

Attacks are made the way someone who can write the audit file would make them:
edit a record and recompute every hash after it (re-sealing), cut the tail, empty
the file, sign again with a key of their own. Tests that need Redis use $REDIS_URL
(run under scripts/with-redis) with a namespace of their own.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import json
import os
import signal
import stat
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis as redis_sync

from conftest import GEOIP, GEOIP_MAX_AGE_DAYS, REFERENCE_POLICY
from e2e import US_IP, Stack
from fleet import request
from gateway.audit import canonical
from gateway.audit.checkpoints import Copies
from gateway.audit.files import FileMode
from gateway.audit.log import AuditLog, AuditLogs, Checkpointing
from gateway.audit.signing import SigningKey, generate
from gateway.cli import main
from gateway.config import AuditConfig
from gateway.identity import ApiKeyStore
from gateway.live.store import LocalStore
from gateway.metrics import Metrics
from test_serve import free_port, upstream, wait_ready  # noqa: F401 (upstream is a fixture)


def entry(n: int, decision: str = "allow") -> dict[str, Any]:
    return {"time": f"2026-12-01T12:00:{n % 60:02d}.000000Z", "decision_id": uuid.uuid4().hex, "status": 200,
            "decision": decision, "reasons": [], "org": "org-acme"}


def write(directory: Path, key: SigningKey, count: int, *, every: int = 10, **options: Any) -> Path:
    """`count` records through an AuditLog signing with `key`; returns the audit file."""
    async def run() -> None:
        copies = Copies(directory / "checkpoints.jsonl", FileMode(), fsync=True, redis=options.pop("redis", None),
                        namespace=options.pop("namespace", "fgw"))
        log = AuditLog(directory / "audit.jsonl", Metrics(), replica="r1",
                       checkpointing=Checkpointing(key, copies, every, 60.0), **options)
        await log.start()
        for n in range(count):
            log.record(entry(n, "deny" if n % 3 == 0 else "allow"))
        await log.close()
    asyncio.run(run())
    return directory / "audit.jsonl"


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def save(path: Path, records: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(record) + "\n" for record in records))


def reseal(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What an attacker with write access does after an edit: every prev and hash again."""
    prev = "0" * 64
    for record in records:
        record["prev"] = prev
        record.pop("hash")
        record["hash"] = prev = hashlib.sha256(canonical(record)).hexdigest()
    return records


def verify(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = main(["audit", "verify", *args])
    return code, capsys.readouterr().out


@pytest.fixture
def key(tmp_path: Path) -> SigningKey:
    return generate(tmp_path / "signing.pem")


class TestCheckpoints:
    def test_every_n_records_and_at_close_each_naming_the_one_before(self, tmp_path: Path, key: SigningKey) -> None:
        path = write(tmp_path, key, 25, every=10)
        written = lines(path)
        marks = [r for r in written if r.get("type") == "checkpoint"]
        assert [m["seq"] for m in marks] == [11, 22, 28]  # after 10, 10 more, and the 5 left at close
        assert [m["records"] for m in marks] == [10, 10, 5]
        assert marks[0]["previous_checkpoint"] is None
        assert [m["previous_checkpoint"]["hash"] for m in marks[1:]] == [m["hash"] for m in marks[:-1]]
        assert all(m["head"] == {"seq": m["seq"] - 1, "hash": m["prev"]} and m["replica"] == "r1" for m in marks)
        assert written[-1]["type"] == "checkpoint"  # the chain ends signed
        # The outside copy holds the very same lines.
        assert (tmp_path / "checkpoints.jsonl").read_text().splitlines() == [
            line for line in path.read_text().splitlines() if '"type":"checkpoint"' in line]

    def test_at_least_every_interval_while_records_flow(self, tmp_path: Path, key: SigningKey) -> None:
        async def run() -> None:
            copies = Copies(tmp_path / "checkpoints.jsonl", FileMode(), fsync=False)
            log = AuditLog(tmp_path / "audit.jsonl", Metrics(), checkpointing=Checkpointing(key, copies, 1000, 0.2))
            await log.start()
            log.record(entry(1))
            await asyncio.sleep(0.6)
            marks = [r for r in lines(tmp_path / "audit.jsonl") if r.get("type") == "checkpoint"]
            assert len(marks) == 1 and marks[0]["records"] == 1  # one, and none while nothing flows
            await log.close()
        asyncio.run(run())

    def test_a_restart_names_the_checkpoint_before_it(self, tmp_path: Path, key: SigningKey) -> None:
        write(tmp_path, key, 5)
        first = lines(tmp_path / "audit.jsonl")[-1]
        write(tmp_path, key, 5)
        marks = [r for r in lines(tmp_path / "audit.jsonl") if r.get("type") == "checkpoint"]
        assert marks[1]["previous_checkpoint"] == {"seq": first["seq"], "hash": first["hash"]}
        assert marks[1]["records"] == 5

    def test_checkpoints_are_not_replayed_as_requests(self, tmp_path: Path, key: SigningKey) -> None:
        from gateway.policy.simulate import read_audit
        path = write(tmp_path, key, 12)
        assert [r["seq"] for r in read_audit(path)] == [*range(1, 11), 12, 13]  # not 11 and 14, the checkpoints

    def test_without_a_key_no_checkpoints_and_a_warning(self, tmp_path: Path,
                                                        caplog: pytest.LogCaptureFixture) -> None:
        async def run() -> None:
            logs = AuditLogs.from_config(AuditConfig(path=str(tmp_path / "audit.jsonl")), Metrics(),
                                         state_dir=tmp_path / "state")
            await logs.start()
            logs.record(entry(1), authenticated=True)
            await logs.close()
        asyncio.run(run())
        assert "no signed checkpoints" in caplog.text
        assert not (tmp_path / "checkpoints.jsonl").exists()
        assert "checkpoint" not in (tmp_path / "audit.jsonl").read_text()

    def test_keygen_prints_the_public_key_and_never_overwrites(self, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
        assert main(["audit", "keygen", "--out", str(tmp_path / "k.pem")]) == 0
        printed = capsys.readouterr().out.strip()
        key = SigningKey.load(tmp_path / "k.pem")
        assert printed == key.public.text == (tmp_path / "k.pem.pub").read_text().strip()
        assert stat.S_IMODE((tmp_path / "k.pem").stat().st_mode) == 0o600
        with pytest.raises(SystemExit):
            main(["audit", "keygen", "--out", str(tmp_path / "k.pem")])
        assert SigningKey.load(tmp_path / "k.pem").public == key.public


class TestKeyedVerify:
    def test_an_intact_signed_chain(self, tmp_path: Path, key: SigningKey, capsys: pytest.CaptureFixture[str]) -> None:
        path = write(tmp_path, key, 25)
        code, out = verify(capsys, str(path), "--public-key", key.public.text,
                           "--checkpoints", str(tmp_path / "checkpoints.jsonl"))
        assert code == 0, out
        assert "3 checkpoints signed by the key(s) given" in out and "3 checkpoints copied outside compared" in out

    def test_without_a_key_it_says_only_the_unkeyed_chain_was_checked(self, tmp_path: Path, key: SigningKey,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
        code, out = verify(capsys, str(write(tmp_path, key, 5)))
        assert code == 0 and "only the unkeyed chain was checked" in out

    def test_a_resealed_chain_passes_unkeyed_and_is_caught_with_the_key(self, tmp_path: Path, key: SigningKey,
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
        path = write(tmp_path, key, 25)
        records = lines(path)
        assert records[3]["decision"] == "deny"
        records[3]["decision"] = "allow"  # seq 4: a deny becomes an allow
        save(path, reseal(records))
        code, out = verify(capsys, str(path))
        assert code == 0 and "only the unkeyed chain" in out  # the hashes alone prove nothing
        code, out = verify(capsys, str(path), "--public-key", key.public.text)
        assert code == 1
        assert f"FAILED {path}:11: seq 11 (replica r1): bad-signature" in out  # the first checkpoint after it

    def test_a_chain_resigned_with_another_key_is_a_replaced_key(self, tmp_path: Path, key: SigningKey,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
        (tmp_path / "forged").mkdir()
        forged = write(tmp_path / "forged", generate(tmp_path / "theirs.pem"), 25)  # their own key, their own chain
        code, out = verify(capsys, str(forged), "--public-key", key.public.text)
        assert code == 1
        assert f"FAILED {forged}:11: seq 11 (replica r1): unknown-key: signed by key" in out
        assert "the key was replaced" in out

    def test_records_removed_at_the_end_are_caught_with_an_outside_checkpoint(
            self, tmp_path: Path, key: SigningKey, capsys: pytest.CaptureFixture[str]) -> None:
        path = write(tmp_path, key, 25)
        records = lines(path)
        save(path, records[:15])  # seq 1..15: the checkpoints at 22 and 28 are gone
        code, out = verify(capsys, str(path), "--public-key", key.public.text)
        assert code == 0 and "seq 12..15 come after the last checkpoint" in out  # nothing outside: not provable
        code, out = verify(capsys, str(path), "--public-key", key.public.text,
                           "--checkpoints", str(tmp_path / "checkpoints.jsonl"))
        assert code == 1
        assert (f"FAILED {path}:15: seq 15 (replica r1): removed: the chain ends at seq 15, but its checkpoint "
                f"seq 28 exists outside ({tmp_path / 'checkpoints.jsonl'}:3)") in out

    def test_a_tail_rewritten_after_the_last_checkpoint_in_the_file(self, tmp_path: Path, key: SigningKey,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
        path = write(tmp_path, key, 25)
        records = lines(path)[:22]  # through the second checkpoint: then new records in place of the real ones
        records += [dict(entry(n), replica="r1", seq=23 + n, prev="", hash="") for n in range(6)]
        save(path, reseal(records))
        code, out = verify(capsys, str(path), "--checkpoints", str(tmp_path / "checkpoints.jsonl"))
        # Even unkeyed: seq 28 is a checkpoint outside, another record in the file.
        assert code == 1
        assert f"FAILED {path}:28: seq 28 (replica r1): replaced: the checkpoint copied outside at " in out

    def test_an_emptied_file(self, tmp_path: Path, key: SigningKey, capsys: pytest.CaptureFixture[str]) -> None:
        path = write(tmp_path, key, 5)
        path.write_text("")
        code, out = verify(capsys, str(path), "--public-key", key.public.text)
        assert code == 1 and f"FAILED {path}: empty" in out
        code, out = verify(capsys, str(path), "--checkpoints", str(tmp_path / "checkpoints.jsonl"))
        assert code == 1 and "removed: the files hold no record, but checkpoint seq 6 of replica r1" in out

    def test_an_edited_outside_copy_is_itself_a_finding(self, tmp_path: Path, key: SigningKey,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
        path = write(tmp_path, key, 5)
        copy = tmp_path / "checkpoints.jsonl"
        copy.write_text(copy.read_text().replace('"records":5', '"records":4'))
        code, out = verify(capsys, str(path), "--checkpoints", str(copy))
        assert code == 1 and f"FAILED {copy}:1: seq 6 (replica r1): edited: outside copy" in out

    def test_key_rotation_verifies_with_both_keys_and_says_where_it_changed(
            self, tmp_path: Path, key: SigningKey, capsys: pytest.CaptureFixture[str]) -> None:
        write(tmp_path, key, 15)  # seq 1..10, checkpoint 11, 12..16, checkpoint 17
        new = generate(tmp_path / "signing-2.pem")
        path = write(tmp_path, new, 5)  # a restart with the new key: seq 18..22, checkpoint 23
        code, out = verify(capsys, str(path), "--public-key", key.public.text, "--public-key", new.public.text)
        assert code == 0, out
        assert (f"note: {path}:23: seq 23 (replica r1): the signing key changed from {key.public.id} "
                f"(last used at {path}:17, seq 17) to {new.public.id}") in out
        code, out = verify(capsys, str(path), "--public-key", new.public.text)
        assert code == 1 and f"FAILED {path}:11: seq 11 (replica r1): unknown-key" in out
        # The public key may be given as the file keygen writes, too.
        (tmp_path / "old.pub").write_text(key.public.text + "\n")
        code, out = verify(capsys, str(path), "--public-key", str(tmp_path / "old.pub"), "--public-key", new.public.text)
        assert code == 0

    def test_the_fleet_copy_in_redis(self, tmp_path: Path, key: SigningKey, redis_url: str,
                                     capsys: pytest.CaptureFixture[str]) -> None:
        import redis.asyncio as redis_async
        namespace = f"t-{uuid.uuid4().hex[:8]}"

        async def run() -> None:
            client = redis_async.Redis.from_url(redis_url)
            copies = Copies(tmp_path / "checkpoints.jsonl", FileMode(), fsync=False, redis=client, namespace=namespace)
            log = AuditLog(tmp_path / "audit.jsonl", Metrics(), replica="r1",
                           checkpointing=Checkpointing(key, copies, 10, 60.0))
            await log.start()
            for n in range(25):
                log.record(entry(n))
            await log.close()
            await client.aclose()
        asyncio.run(run())
        stored = redis_sync.Redis.from_url(redis_url).xrange("{" + namespace + "}:audit-checkpoints")
        assert len(stored) == 3
        path = tmp_path / "audit.jsonl"
        save(path, lines(path)[:20])
        code, out = verify(capsys, str(path), "--public-key", key.public.text, "--redis", redis_url,
                           "--namespace", namespace)
        assert code == 1 and "removed: the chain ends at seq 20, but its checkpoint seq 28 exists outside (redis" in out


class TestFilesAndDurability:
    def test_audit_change_and_checkpoint_files_are_created_0600(self, tmp_path: Path, key: SigningKey) -> None:
        old = os.umask(0o022)
        try:
            write(tmp_path, key, 3)
            store = LocalStore(tmp_path / "state")
            store._write({}, [], None, {"actor": "t", "action": "test"})
        finally:
            os.umask(old)
        for path in (tmp_path / "audit.jsonl", tmp_path / "checkpoints.jsonl", tmp_path / "state/live/changes.jsonl"):
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, path

    def test_0640_with_the_group_configured(self, tmp_path: Path, key: SigningKey) -> None:
        mode = FileMode.for_group(str(os.getgid()))
        write(tmp_path, key, 3, mode=mode)
        info = (tmp_path / "audit.jsonl").stat()
        assert (stat.S_IMODE(info.st_mode), info.st_gid) == (0o640, os.getgid())
        with pytest.raises(ValueError, match="no group"):
            FileMode.for_group("no-such-group-here")

    @pytest.mark.parametrize("mode", ["always", "batch"])
    def test_written_records_are_fsynced(self, tmp_path: Path, mode: str) -> None:
        async def run() -> None:
            log = AuditLog(tmp_path / "audit.jsonl", Metrics(), fsync=mode)  # type: ignore[arg-type]
            await log.start()
            acknowledged = log.record(entry(1), wait=True)
            if mode == "always":  # the answer waits for the fsync
                assert acknowledged is not None and log.file.synced < log.file.written
                await asyncio.wait_for(acknowledged, 2)
                assert log.file.synced == log.file.written
            else:  # the answer waits for the write only; the fsync follows within about 10 ms
                assert acknowledged is None and (tmp_path / "audit.jsonl").stat().st_size > 0
                await asyncio.sleep(0.2)
                assert log.file.synced == log.file.written
            await log.close()
        asyncio.run(run())


def test_public_key_served_on_the_admin_listener(tmp_path: Path) -> None:
    key = generate(tmp_path / "signing.pem")
    token = "t" * 32
    stack = Stack(tmp_path, extra_config=f"""audit: {{path: audit.jsonl, signing_key_file: signing.pem}}
admin: {{tokens: [{{name: ops, role: viewer, sha256: {hashlib.sha256(token.encode()).hexdigest()}}}]}}""")
    try:
        reply = request("GET", stack.admin_url + "/admin/audit/public-key", headers={"Authorization": f"Bearer {token}"})
        assert reply.status == 200
        assert reply.json == {"algorithm": "ed25519", "public_key": key.public.text, "key_id": key.public.id}
        assert request("GET", stack.admin_url + "/admin/audit/public-key").status == 401
        scrape = request("GET", stack.admin_url + "/metrics").raw.decode()
        age = float(re.search(r"^gateway_audit_checkpoint_age_seconds (\S+)$", scrape, re.M).group(1))
        assert 0 <= age < 60  # the checkpoint alert's series, exported with a signing key
        assert re.search(r"^gateway_audit_writable 1\.0$", scrape, re.M)
    finally:
        stack.close()


def test_fsync_always_an_acknowledged_record_survives_kill_9(tmp_path: Path, upstream: str) -> None:  # noqa: F811
    generate(tmp_path / "signing.pem")
    public, admin = free_port(), free_port()
    (tmp_path / "gateway.yaml").write_text(f"""
listen: 127.0.0.1:{public}
admin_listen: 127.0.0.1:{admin}
policy_dir: {REFERENCE_POLICY}
upstreams: {{default: {{url: "{upstream}"}}}}
geoip: {{country_db: {GEOIP / "GeoIP2-City-Test.mmdb"}, max_age_days: {GEOIP_MAX_AGE_DAYS}}}
audit: {{path: audit.jsonl, fsync: always, signing_key_file: signing.pem, checkpoint_every: 5}}
""")
    key = ApiKeyStore(tmp_path / ".gateway-state").create("org-public")[1]
    process = subprocess.Popen([sys.executable, "-m", "gateway", "serve", "--config", str(tmp_path / "gateway.yaml")],
                               stderr=subprocess.PIPE, stdout=subprocess.DEVNULL)
    answered = []
    try:
        wait_ready(f"http://127.0.0.1:{admin}", process)
        body = json.dumps({"model": "small-2", "messages": [{"role": "user", "content": "hi"}]}).encode()
        for _ in range(12):
            call = urllib.request.Request(f"http://127.0.0.1:{public}/v1/chat/completions", body, {
                "Authorization": f"Bearer {key}", "Content-Type": "application/json", "X-Forwarded-For": US_IP})
            with urllib.request.urlopen(call, timeout=5) as reply:
                assert json.load(reply)["model"] == "small-2"  # the whole answer: acknowledged
                answered.append(reply.headers["X-Gateway-Decision-Id"])
        # The outside copy follows each checkpoint on the audit thread: let it land.
        copies = tmp_path / "checkpoints.jsonl"
        deadline = time.monotonic() + 5
        while (not copies.exists() or copies.read_text().count("\n") < 2) and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(10)
    assert process.returncode == -signal.SIGKILL
    written = {r.get("decision_id") for r in lines(tmp_path / "audit.jsonl")}
    assert set(answered) <= written
    result = subprocess.run([sys.executable, "-m", "gateway", "audit", "verify", str(tmp_path / "audit.jsonl"),
                             "--public-key", SigningKey.load(tmp_path / "signing.pem").public.text,
                             "--checkpoints", str(tmp_path / "checkpoints.jsonl")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "checkpoints signed" in result.stdout

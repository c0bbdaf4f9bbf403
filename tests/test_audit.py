"""The audit trail (docs/audit.md): one hash-chained record per request, in a rotating
JSONL file and, in fleet mode, a capped Redis Stream with a disk spool.

Unit tests drive `AuditLog` on a private event loop; end-to-end tests count the
requests a real gateway answered and the records it wrote. In every test
gateway_audit_lost_total stays 0. Tests that need Redis use $REDIS_URL (run
under scripts/with-redis) with a namespace of their own; the outage test starts
a redis-server of its own ($REDIS_SERVER_BIN) to stop and start again.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import stat
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
import redis as redis_sync

from e2e import CN_IP, US_IP, Stack
from fleet import RedisServer, Reply, request
from gateway import audit
from gateway.audit import ZERO_HASH, AuditFile, AuditLog, canonical, verify
from gateway.audit.bounds import MAX_FIELD_CHARS, MAX_RECORD_BYTES, bounded
from gateway.cli import main
from gateway.metrics import Metrics

CHAT = {"model": "small-2", "messages": [{"role": "user", "content": "hello"}]}


# Helpers


def entry(n: int, **extra: Any) -> dict[str, Any]:
    """A record as Gateway.finish makes one (fewer fields)."""
    return {"time": f"2026-12-01T12:00:{n % 60:02d}.000000Z", "decision_id": uuid.uuid4().hex, "status": 200,
            "decision": "allow", "reasons": [], "decision_us": round(n * 1.37, 1), "org": "org-acme", **extra}


def lost(metrics: Metrics) -> float:
    return metrics.registry.get_sample_value("gateway_audit_lost_total") or 0.0


def spooled(metrics: Metrics) -> float:
    return metrics.registry.get_sample_value("gateway_audit_spooled") or 0.0


def records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


async def eventually(check: Callable[[], Any], timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s")
        await asyncio.sleep(0.01)
    return value


def wait_for(check: Callable[[], Any], timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s")
        time.sleep(0.02)
    return value


async def write(path: Path, entries: list[dict[str, Any]], *, one_by_one: bool = False, **options: Any) -> AuditLog:
    """Start an AuditLog, record `entries`, close it (everything written). `one_by_one`:
    each record in a batch of its own (the writer takes whatever is queued at once)."""
    log = AuditLog(path, options.pop("metrics", None) or Metrics(), **options)
    await log.start()
    for item in entries:
        log.record(item)
        if one_by_one:
            await eventually(lambda: not log.queue)
    await log.close()
    assert lost(log.metrics) == 0
    return log


def chain_of(path: Path, count: int = 20) -> list[bytes]:
    asyncio.run(write(path, [entry(n) for n in range(count)]))
    return path.read_bytes().splitlines(keepends=True)


def is_device(path: str) -> bool:
    return os.path.exists(path) and stat.S_ISCHR(os.stat(path).st_mode)


def verify_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = main(["audit", "verify", *args])
    return code, capsys.readouterr().out


# The chain


class TestChain:
    def test_many_records_form_one_chain(self, tmp_path: Path) -> None:
        path = tmp_path / "audit.jsonl"
        awkward = [
            entry(1, decision_us=0.1 + 0.2, ratio=1e-7, big=2**70, neg=-0.0),  # floats read back exactly
            entry(2, path="/v1/ünïcode/日本", note="tab\tand \"quotes\" and \\"),
            entry(3, nan=float("nan"), inf=float("inf"), obj=object.__name__, when=Path("/x")),  # not plain JSON
            entry(4, surrogate="bad \udcff byte"),                                              # not encodable
        ]
        log = asyncio.run(write(path, [entry(n) for n in range(1500)] + awkward))
        written = records(path)
        assert [r["seq"] for r in written] == list(range(1, 1505))
        assert {r["replica"] for r in written} == {log.replica}
        assert written[0]["prev"] == ZERO_HASH
        assert all(r["prev"] == before["hash"] for before, r in zip(written, written[1:]))
        assert written[-4]["decision_us"] == 0.1 + 0.2 and written[-4]["ratio"] == 1e-7
        assert written[-4]["big"] == str(2**70)  # beyond 64 bits: written as text
        assert written[-2]["nan"] == "nan" and written[-2]["when"] == "/x"
        assert written[-1]["surrogate"] == "bad ? byte"
        result = verify([path])
        assert result.ok, result.problem
        assert result.records == 1504 and result.last_hash == written[-1]["hash"]

    def test_hash_is_over_the_canonical_record_without_hash(self, tmp_path: Path) -> None:
        path = tmp_path / "audit.jsonl"
        asyncio.run(write(path, [entry(1)]))
        [record] = records(path)
        digest = record.pop("hash")
        assert hashlib.sha256(canonical(record)).hexdigest() == digest
        assert canonical(record) == json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()

    @given(st.dictionaries(st.text(min_size=1, max_size=8), st.one_of(st.none(), st.integers(-5, 5), st.text(max_size=5),
                                                                        st.dictionaries(st.text(max_size=3), st.booleans())),
                           max_size=12), st.randoms())
    def test_the_order_an_entry_comes_in_never_changes_its_line(self, fields: dict[str, Any], rng: Any) -> None:
        """The request path hands over its records in canonical order with the chain fields
        in place, for speed (gateway/request/app.py finish): the same line as any order."""
        fields = {key: value for key, value in fields.items() if key not in ("hash", "format", "prev", "replica", "seq")}
        ordered = dict(sorted({**fields, "format": None, "prev": None, "replica": None, "seq": None}.items()))
        shuffled = list(fields.items())
        rng.shuffle(shuffled)
        assert audit.seal(ordered, "r", 7, ZERO_HASH) == audit.seal(dict(shuffled), "r", 7, ZERO_HASH)

    def test_records_hashed_by_pythons_json_still_verify(self, tmp_path: Path) -> None:
        """Files written before the serializer changed: Python's json wrote 1e-05 where
        the canonical form now has 0.00001; such a record verifies, an edited one does not."""
        path = tmp_path / "audit.jsonl"
        asyncio.run(write(path, [entry(1)]))
        [record] = records(path)
        del record["hash"], record["format"]  # as written then, before records named their format
        record["ratio"] = 1e-05
        body = json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
        assert body != canonical(record)
        line = body[:-1] + b',"hash":"' + hashlib.sha256(body).hexdigest().encode() + b'"}\n'
        path.write_bytes(line)
        assert verify([path]).ok
        path.write_bytes(line.replace(b"1e-05", b"2e-05"))
        assert not verify([path]).ok

    def test_records_name_their_format_and_older_files_without_it_verify_with_them(
            self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """New records carry format 2 (orjson's canonical form only); a file written before
        the field (hashed by Python's json, 1e-05) and continued by this version verifies
        with `gateway audit verify`; format 2 with the old form's bytes, or a format this
        version does not know, does not."""
        path = tmp_path / "audit.jsonl"
        old, prev = [], ZERO_HASH
        for seq in (1, 2):
            record = {**entry(seq), "ratio": 1e-05, "replica": "gw-a", "seq": seq, "prev": prev}
            body = json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
            prev = hashlib.sha256(body).hexdigest()
            old.append(body[:-1] + b',"hash":"' + prev.encode() + b'"}\n')
        path.write_bytes(b"".join(old))
        asyncio.run(write(path, [entry(3, ratio=1e-05)], replica="gw-a"))
        written = records(path)
        assert [r.get("format") for r in written] == [None, None, 2] and written[2]["seq"] == 3
        assert verify_cli(capsys, str(path))[0] == 0

        def resealed(record: dict[str, Any], body: bytes) -> bytes:
            return body[:-1] + b',"hash":"' + hashlib.sha256(body).hexdigest().encode() + b'"}\n'

        first = {**written[0], "format": 2}
        del first["hash"]
        legacy = json.dumps(first, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
        path.write_bytes(resealed(first, legacy))  # format 2 claimed, hashed the old way
        code, out = verify_cli(capsys, str(path))
        assert code != 0 and "hash mismatch" in out
        unknown = {**first, "format": 3}
        path.write_bytes(resealed(unknown, canonical(unknown)))
        code, out = verify_cli(capsys, str(path))
        assert code != 0 and "unknown record format 3" in out

    def test_every_record_is_one_line_for_every_reader(self, tmp_path: Path) -> None:
        path = tmp_path / "audit.jsonl"
        breaks = "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029 \\\u2028"
        asyncio.run(write(path, [entry(1, path=f"/v1/{breaks}", **{breaks: breaks}), entry(2)]))
        text = path.read_text(encoding="utf-8")
        assert len(text.splitlines()) == 2  # Python's str.splitlines ends a line at each of them
        assert len(re.split("\r\n|[\n\r\u2028\u2029]", text.removesuffix("\n"))) == 2  # JavaScript's terminators
        first = records(path)[0]
        assert first["path"] == f"/v1/{breaks}" and first[breaks] == breaks
        assert verify([path]).ok

    def test_files_from_before_separators_were_escaped_verify_and_the_chain_goes_on(
            self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """Writers before the escaping left U+0085, U+2028 and U+2029 raw in the line. The hash
        was over the same canonical JSON, so those files verify, alone and continued."""
        path = tmp_path / "audit.jsonl"
        lines, prev = [], ZERO_HASH
        for seq in (1, 2, 3):
            record = {**entry(seq, path="/v1/a\u2028b\u2029c\x85d"), "replica": "gw-a", "seq": seq, "prev": prev}
            body = canonical(record)
            prev = hashlib.sha256(body).hexdigest()
            lines.append(body[:-1] + b',"hash":"' + prev.encode() + b'"}\n')  # as seal() wrote them then
        path.write_bytes(b"".join(lines))
        assert "\u2028".encode() in path.read_bytes()
        assert verify_cli(capsys, str(path))[0] == 0 and verify([path]).records == 3
        asyncio.run(write(path, [entry(4, path="/v1/\u2028")], replica="gw-a"))
        written = [json.loads(line) for line in path.read_bytes().split(b"\n") if line]
        assert [r["seq"] for r in written] == [1, 2, 3, 4] and written[3]["prev"] == written[2]["hash"]
        assert "\u2028".encode() not in path.read_bytes().split(b"\n")[3]
        code, out = verify_cli(capsys, str(path))
        assert code == 0 and "OK: 4 records" in out, out

    def test_a_restart_resumes_seq_and_prev(self, tmp_path: Path) -> None:
        path = tmp_path / "audit.jsonl"
        first = asyncio.run(write(path, [entry(n) for n in range(5)]))
        second = asyncio.run(write(path, [entry(n) for n in range(5)]))
        written = records(path)
        assert first.replica == second.replica
        assert [r["seq"] for r in written] == list(range(1, 11))
        assert written[5]["prev"] == written[4]["hash"]
        assert verify([path]).ok

    def test_a_record_cut_short_by_a_crash_is_dropped_and_the_chain_goes_on(self, tmp_path: Path) -> None:
        path = tmp_path / "audit.jsonl"
        asyncio.run(write(path, [entry(n) for n in range(3)]))
        with path.open("ab") as handle:
            handle.write(b'{"decision":"allow","decision_id":"half-writ')
        assert verify([path]).problem.kind == "garbage"
        asyncio.run(write(path, [entry(n) for n in range(2)]))
        assert [r["seq"] for r in records(path)] == [1, 2, 3, 4, 5]
        assert verify([path]).ok

    def test_a_configured_replica_names_the_chain(self, tmp_path: Path) -> None:
        path = tmp_path / "audit.jsonl"
        asyncio.run(write(path, [entry(1)], replica="gw-a"))
        asyncio.run(write(path, [entry(2)], replica="gw-a"))
        asyncio.run(write(path, [entry(3)], replica="gw-b"))  # renamed: a new chain from seq 1
        assert [(r["replica"], r["seq"]) for r in records(path)] == [("gw-a", 1), ("gw-a", 2), ("gw-b", 1)]
        result = verify([path])
        assert result.ok and set(result.replicas) == {"gw-a", "gw-b"}

    @pytest.mark.skipif(not is_device("/dev/null"), reason="needs /dev/null")
    def test_a_device_is_written_to_but_never_rotated(self, tmp_path: Path) -> None:
        path = tmp_path / "audit.jsonl"
        path.symlink_to("/dev/null")  # like audit.path: /dev/stdout
        asyncio.run(write(path, [entry(n, pad="x" * 200) for n in range(40)], max_bytes=4096, one_by_one=True))
        assert path.is_symlink() and not list(tmp_path.glob("audit.jsonl.*"))
        assert is_device("/dev/null")

    def test_reading_back_from_the_end(self, tmp_path: Path) -> None:
        path = tmp_path / "lines"
        for content, expected in [(b"", []), (b"partial", []), (b"a\n", [b"a"]), (b"a\nb\n", [b"b", b"a"]),
                                  (b"a\nbb\npartial", [b"bb", b"a"]), (b"first\n\nthird\n", [b"third", b"first"]),
                                  (b"x" * 50 + b"\n" + b"y" * 70, [b"x" * 50])]:
            path.write_bytes(content)
            for block in (1, 2, 3, 7, 64, 1 << 16):
                assert list(audit.lines_backwards(path, block)) == expected, (content, block)

    @given(st.lists(st.sampled_from([b"ab", b"needle", b"xneedley", b"nee", b"dle", b"", b"q" * 9]), max_size=30),
           st.sampled_from([b"", b"partial", b"need"]), st.sampled_from([1, 2, 3, 5, 8, 13, 64]))
    @settings(max_examples=300, deadline=None)
    def test_reading_back_for_a_needle_skips_no_line_that_has_it(self, lines: list[bytes], tail: bytes, block: int) -> None:
        """Blocks without the needle are skipped unsplit (the console's search over 10^5 records);
        every complete line that holds it still comes back, in order, even across block edges."""
        with tempfile.TemporaryDirectory() as directory:
            path = Path(directory) / "lines"
            path.write_bytes(b"".join(line + b"\n" for line in lines) + tail)
            everything = list(audit.lines_backwards(path, block))
            found = [line for line in audit.lines_backwards(path, block, b"needle") if b"needle" in line]
        assert found == [line for line in everything if b"needle" in line]

    def test_reading_back_stops_within_the_bytes_asked_for(self, tmp_path: Path) -> None:
        path = tmp_path / "lines"
        path.write_bytes(b"".join(b"%03d\n" % n for n in range(100)))  # 4 bytes a line
        for block in (1, 3, 4, 64, 1 << 16):
            assert list(audit.lines_backwards(path, block, max_bytes=400)) == [b"%03d" % n for n in reversed(range(100))]
            got = list(audit.lines_backwards(path, block, max_bytes=41))
            assert got == [b"%03d" % n for n in range(99, 99 - len(got), -1)] and 8 <= len(got) <= 10, (block, got)

    def test_two_writers_cannot_share_a_file(self, tmp_path: Path) -> None:
        path = tmp_path / "audit.jsonl"
        one, two = AuditFile(path), AuditFile(path)
        one.open()
        try:
            with pytest.raises(OSError, match="in use by another gateway process"):
                two.open()
        finally:
            one.close()


class TestRotation:
    def test_rotation_keeps_the_chain_across_files(self, tmp_path: Path) -> None:
        path = tmp_path / "audit.jsonl"
        asyncio.run(write(path, [entry(n, pad="x" * 200) for n in range(100)], max_bytes=4096, keep=50,
                          one_by_one=True))
        rotated = sorted(tmp_path.glob("audit.jsonl.*"), key=lambda p: -int(p.suffix[1:]))
        assert len(rotated) >= 5 and all(p.stat().st_size >= 4096 for p in rotated)
        files = [*rotated, path]
        chained = [r for f in files for r in records(f)]
        assert [r["seq"] for r in chained] == list(range(1, 101))
        first_of_new_file = records(files[1])[0]
        assert first_of_new_file["prev"] == records(files[0])[-1]["hash"]
        result = verify(files)
        assert result.ok and result.records == 100

    def test_only_keep_rotated_files_are_kept_and_verify_starts_where_they_do(self, tmp_path: Path) -> None:
        path = tmp_path / "audit.jsonl"
        asyncio.run(write(path, [entry(n, pad="x" * 200) for n in range(100)], max_bytes=4096, keep=3,
                          one_by_one=True))
        assert sorted(p.name for p in tmp_path.glob("audit.jsonl.*")) == ["audit.jsonl.1", "audit.jsonl.2", "audit.jsonl.3"]
        files = [tmp_path / "audit.jsonl.3", tmp_path / "audit.jsonl.2", tmp_path / "audit.jsonl.1", path]
        result = verify(files)
        assert result.ok and next(iter(result.replicas.values())).first_seq > 1
        assert "starts past seq 1" in audit.render(result)

    def test_a_restart_right_after_rotation_resumes_from_the_rotated_file(self, tmp_path: Path) -> None:
        path = tmp_path / "audit.jsonl"
        asyncio.run(write(path, [entry(n) for n in range(4)], keep=3))
        # As if stopped between the rename and the new file (rotate() itself creates it).
        os.replace(path, tmp_path / "audit.jsonl.1")
        asyncio.run(write(path, [entry(n) for n in range(2)], keep=3))
        assert [r["seq"] for r in records(path)] == [5, 6]
        assert verify([tmp_path / "audit.jsonl.1", path]).ok


class TestVerify:
    def test_an_intact_chain(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        path = tmp_path / "audit.jsonl"
        lines = chain_of(path)
        code, out = verify_cli(capsys, str(path))
        assert code == 0
        assert "OK: 20 records" in out and json.loads(lines[-1])["hash"] in out
        code, out = verify_cli(capsys, "--json", str(path))
        report = json.loads(out)
        assert code == 0 and report["ok"] is True and report["records"] == 20 and report["error"] is None
        assert report["last_hash"] == json.loads(lines[-1])["hash"]

    def check(self, tmp_path: Path, capsys: pytest.CaptureFixture[str], lines: list[bytes], *,
              kind: str, line: int, seq: int | None, says: str) -> None:
        path = tmp_path / "tampered.jsonl"
        path.write_bytes(b"".join(lines))
        code, out = verify_cli(capsys, str(path))
        assert code == 1, out
        assert f"{path}:{line}:" in out and kind in out and says in out, out
        assert "Traceback" not in out
        code, out = verify_cli(capsys, "--json", str(path))
        error = json.loads(out)["error"]
        assert code == 1 and (error["file"], error["line"], error["seq"], error["kind"]) == (str(path), line, seq, kind)

    def test_an_edited_field(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        lines = chain_of(tmp_path / "audit.jsonl")
        lines[6] = lines[6].replace(b'"status":200', b'"status":403')
        self.check(tmp_path, capsys, lines, kind="edited", line=7, seq=7, says="hash mismatch")

    def test_an_edited_record_whose_hash_was_recomputed(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        lines = chain_of(tmp_path / "audit.jsonl")
        record = json.loads(lines[6])
        record.pop("hash")
        record["org"] = "someone-else"
        lines[6] = audit.seal(record, record["replica"], record["seq"], record["prev"]).line + b"\n"
        self.check(tmp_path, capsys, lines, kind="prev-mismatch", line=8, seq=8, says="prev is not the hash of seq 7")

    def test_a_removed_record(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        lines = chain_of(tmp_path / "audit.jsonl")
        del lines[6]
        self.check(tmp_path, capsys, lines, kind="removed", line=7, seq=8, says="seq 7 missing")

    def test_two_swapped_records(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        lines = chain_of(tmp_path / "audit.jsonl")
        lines[6], lines[7] = lines[7], lines[6]
        self.check(tmp_path, capsys, lines, kind="reordered", line=7, seq=8, says="comes before seq 7")

    def test_a_duplicated_record(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        lines = chain_of(tmp_path / "audit.jsonl")
        lines.insert(7, lines[6])
        self.check(tmp_path, capsys, lines, kind="duplicate", line=8, seq=7, says="the same record as")

    def test_a_truncated_last_line(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        lines = chain_of(tmp_path / "audit.jsonl")
        lines[-1] = lines[-1][:len(lines[-1]) // 2]
        self.check(tmp_path, capsys, lines, kind="garbage", line=20, seq=None, says="cut short")

    def test_garbage(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        lines = chain_of(tmp_path / "audit.jsonl")
        for index, junk, says in [(3, b"hello world\n", "not JSON"), (3, b"\xff\xfe\n", "not UTF-8"),
                                  (3, b"\n", "empty line"), (3, b"[1, 2]\n", "not a JSON object")]:
            self.check(tmp_path, capsys, lines[:index] + [junk] + lines[index:], kind="garbage", line=4, seq=None,
                       says=says)
        not_ours = json.dumps({"seq": 4, "hello": "world"}).encode() + b"\n"
        self.check(tmp_path, capsys, lines[:3] + [not_ours] + lines[3:], kind="malformed", line=4, seq=4,
                   says="not an audit record")

    def test_files_in_the_wrong_order(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        lines = chain_of(tmp_path / "audit.jsonl")
        (tmp_path / "older").write_bytes(b"".join(lines[:10]))
        (tmp_path / "newer").write_bytes(b"".join(lines[10:]))
        assert verify_cli(capsys, str(tmp_path / "older"), str(tmp_path / "newer"))[0] == 0
        code, out = verify_cli(capsys, str(tmp_path / "newer"), str(tmp_path / "older"))
        assert code == 1 and f"{tmp_path / 'older'}:1:" in out and "seq goes backwards" in out

    def test_a_missing_file(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        code, out = verify_cli(capsys, str(tmp_path / "nope.jsonl"))
        assert code == 1 and "cannot be read" in out and "Traceback" not in out


# Failing closed


class TestFailClosed:
    def test_a_nearly_full_queue_refuses_new_requests_and_loses_nothing(self, tmp_path: Path) -> None:
        async def run() -> None:
            log = AuditLog(tmp_path / "audit.jsonl", Metrics(), capacity=100)
            # Not started: nothing drains the queue.
            for n in range(log.high_water):
                log.record(entry(n))
            log.file_ok = True
            assert not log.healthy and len(log.queue) == log.high_water < log.capacity
            await log.start()
            await eventually(lambda: log.healthy)
            await log.close()
            assert lost(log.metrics) == 0 and len(records(tmp_path / "audit.jsonl")) == log.high_water

        asyncio.run(run())

    def test_a_file_that_cannot_be_opened(self, tmp_path: Path) -> None:
        path = tmp_path / "audit.jsonl"
        path.mkdir()  # a directory where the file should be

        async def run() -> None:
            log = AuditLog(path, Metrics())
            await log.start()
            assert not log.healthy
            for n in range(3):  # the records of the 503s that refused requests meanwhile
                log.record(entry(n, status=503))
            await asyncio.sleep(0.2)
            assert not log.healthy and len(log.queue) == 3
            path.rmdir()
            await eventually(lambda: log.healthy and not log.queue)
            await log.close()
            assert lost(log.metrics) == 0

        asyncio.run(run())
        assert [r["status"] for r in records(path)] == [503, 503, 503] and verify([path]).ok

    @pytest.mark.skipif(not is_device("/dev/full"), reason="needs /dev/full")
    def test_a_full_disk_mid_run(self, tmp_path: Path) -> None:
        # Only ever a symlink in tmp_path, given to AuditLog as is: the test unlinks the
        # symlink, never the device (config loading would resolve it to /dev/full itself).
        path = tmp_path / "audit.jsonl"
        path.symlink_to("/dev/full")  # opens fine; every write fails with ENOSPC

        async def run() -> None:
            log = AuditLog(path, Metrics())
            await log.start()
            assert log.healthy
            for n in range(3):
                log.record(entry(n))
            await eventually(lambda: not log.healthy)
            await asyncio.sleep(0.2)
            assert len(log.queue) == 3  # kept, not dropped
            assert path.is_symlink()
            path.unlink()                # space again
            await eventually(lambda: log.healthy and not log.queue)
            await log.close()
            assert lost(log.metrics) == 0

        asyncio.run(run())
        assert [r["seq"] for r in records(path)] == [1, 2, 3] and verify([path]).ok


# A real gateway


def chat(stack: Stack, *, key: str | None, model: str = "small-2", ip: str = US_IP, body: Any = None) -> Reply:
    headers = {"X-Forwarded-For": ip} | ({"Authorization": f"Bearer {key}"} if key else {})
    if isinstance(body, str):
        headers["Content-Type"] = "application/json"
    return request("POST", stack.url + "/v1/chat/completions", body if body is not None else CHAT | {"model": model},
                   headers)


def mixed_requests(stack: Stack, key: Callable[[str], str]) -> list[Reply]:
    """Allowed, denied, 400, 401 and 404 requests."""
    sent = []
    for _ in range(3):
        sent += [
            chat(stack, key=key("org-public")),                                       # 200
            chat(stack, key=key("org-acme"), model="frontier-5.6", ip=CN_IP),           # denied (451)
            chat(stack, key=key("org-public"), body="{not json"),                      # 400
            chat(stack, key=None),                                                      # 401
            request("GET", stack.url + "/nope"),                                        # 404
            chat(stack, key=key("org-public"), model="nextgen-7"),                     # 404, concealed
        ]
    return sent


def check_one_record_each(sent: list[Reply], written: list[dict[str, Any]]) -> None:
    assert len(written) == len(sent)
    by_id = {r["decision_id"]: r for r in written}
    assert len(by_id) == len(written)
    for reply in sent:
        assert by_id[reply.decision_id]["status"] == reply.status


@pytest.fixture
def stacks(tmp_path: Path) -> Iterator[Callable[..., Stack]]:
    """Start Stacks; each is closed at the end, after checking that it lost no record."""
    started: list[Stack] = []

    def start(**options: Any) -> Stack:
        directory = tmp_path / f"stack-{len(started)}"
        directory.mkdir()
        prepare = options.pop("prepare", None)
        if prepare is not None:
            prepare(directory)
        started.append(Stack(directory, **options))
        return started[-1]

    yield start
    for stack in started:
        stack.close()
        assert lost(stack.service.metrics) == 0


def ready(stack: Stack) -> bool:
    return request("GET", stack.admin_url + "/readyz").status == 200


class TestGateway:
    def test_exactly_one_record_per_request(self, stacks: Callable[..., Stack]) -> None:
        stack = stacks()
        sent = mixed_requests(stack, stack.api_key)
        assert {reply.status for reply in sent} == {200, 451, 400, 401, 404}
        written = wait_for(lambda: (r := stack.audit_records()) and len(r) >= len(sent) and r)
        check_one_record_each(sent, written)
        assert verify([Path(stack.config.audit.path)]).ok

    def test_an_unwritable_audit_file_means_503_until_it_is_writable(self, stacks: Callable[..., Stack]) -> None:
        stack = stacks(prepare=lambda directory: (directory / "audit.jsonl").mkdir())
        path = stack.directory / "audit.jsonl"
        refused = [chat(stack, key=stack.api_key("org-public")) for _ in range(3)]
        assert [reply.status for reply in refused] == [503, 503, 503]
        assert request("GET", stack.admin_url + "/readyz").json["missing"] == ["audit"]
        assert "\ngateway_audit_writable 0.0\n" in request("GET", stack.admin_url + "/metrics").raw.decode()
        path.rmdir()
        wait_for(lambda: ready(stack))
        assert "\ngateway_audit_writable 1.0\n" in request("GET", stack.admin_url + "/metrics").raw.decode()
        served = [chat(stack, key=stack.api_key("org-public")) for _ in range(3)]
        assert [reply.status for reply in served] == [200, 200, 200]
        written = wait_for(lambda: (r := stack.audit_records()) and len(r) >= 6 and r)
        check_one_record_each(refused + served, written)
        assert verify([path]).ok


# Fleet mode: the Redis stream


def stream_lines(url: str, namespace: str, name: str = "audit") -> list[bytes]:
    client = redis_sync.Redis.from_url(url)
    try:
        return [fields[b"record"] for _, fields in client.xrange("{" + namespace + "}:" + name)]
    finally:
        client.close()


def fleet_config(url: str, namespace: str) -> str:
    return f"redis: {{url: '{url}', namespace: {namespace}}}"


async def open_redis(url: str) -> Any:
    import redis.asyncio

    return redis.asyncio.Redis.from_url(url, decode_responses=True, socket_timeout=0.5, socket_connect_timeout=0.5)


class TestStream:
    def test_records_reach_the_stream_as_written(self, stacks: Callable[..., Stack], redis_url: str) -> None:
        namespace = f"audit-{uuid.uuid4().hex[:12]}"
        stack = stacks(extra_config=fleet_config(redis_url, namespace))
        sent = mixed_requests(stack, stack.signing.token)
        local = wait_for(lambda: (r := stack.audit_records()) and len(r) >= len(sent) and r)
        check_one_record_each(sent, local)
        # The unauthenticated requests' records (the 401s and the unknown path) in a stream of their own.
        unauthenticated = wait_for(lambda: (s := stream_lines(redis_url, namespace, "audit-unauthenticated")) and len(s) >= 6 and s)
        lines = wait_for(lambda: (s := stream_lines(redis_url, namespace)) and len(s) >= len(sent) - 6 and s)
        assert lines == Path(stack.config.audit.path).read_bytes().splitlines()
        assert unauthenticated == audit.unauthenticated_path(stack.config.audit.path).read_bytes().splitlines()
        assert len(lines) + len(unauthenticated) == len(sent)
        assert audit.verify_lines(lines).ok and audit.verify_lines(unauthenticated).ok

    def test_redis_down_spools_then_replays_in_order(self, stacks: Callable[..., Stack],
                                                     private_redis: RedisServer) -> None:
        namespace = f"audit-{uuid.uuid4().hex[:12]}"
        url = private_redis.url
        stack = stacks(extra_config=fleet_config(url, namespace))
        metrics = stack.service.metrics
        key = stack.signing.token("org-public")
        sent = [chat(stack, key=key) for _ in range(5)]
        wait_for(lambda: len(stream_lines(url, namespace)) == 5)
        client = redis_sync.Redis.from_url(url)
        client.save()  # the restarted server comes back with what it had (an operator's AOF, in production)
        client.close()

        private_redis.kill()
        sent += [chat(stack, key=key) for _ in range(10)]  # served from the mirror, or 503 once it is stale
        wait_for(lambda: spooled(metrics) == 10)
        spool = next(Path(stack.config.state_dir).glob("audit-spool-*.jsonl"))
        assert len(spool.read_bytes().splitlines()) == 10

        private_redis.start()
        lines = wait_for(lambda: (s := stream_lines(url, namespace)) and len(s) == 15 and s, timeout=15)
        wait_for(lambda: spooled(metrics) == 0)
        assert spool.read_bytes() == b""
        assert [json.loads(line)["seq"] for line in lines] == list(range(1, 16))
        assert lines == Path(stack.config.audit.path).read_bytes().splitlines()
        check_one_record_each(sent, [json.loads(line) for line in lines])
        time.sleep(0.3)
        assert len(stream_lines(url, namespace)) == 15  # nothing sent twice
        assert lost(metrics) == 0

    def test_a_batch_that_reached_redis_is_not_sent_again(self, tmp_path: Path, redis_url: str,
                                                          caplog: pytest.LogCaptureFixture) -> None:
        """The reply to EXEC was lost: the records are spooled although Redis has them.
        The acked mark makes the replay skip them."""
        namespace = f"audit-{uuid.uuid4().hex[:12]}"
        path, state = tmp_path / "audit.jsonl", tmp_path / "state"

        async def run() -> None:
            nowhere = await open_redis("redis://127.0.0.1:1/0")  # refused: everything spools
            log = await write(path, [entry(n) for n in range(8)], redis=nowhere, namespace=namespace, state_dir=state)
            await nowhere.aclose()
            lines = path.read_bytes().splitlines()
            spool = state / f"audit-spool-{log.replica}.jsonl"
            assert spool.read_bytes().splitlines() == lines
            # What a lost reply leaves behind: the first 3 are in the stream and marked.
            client = await open_redis(redis_url)
            stream = "{" + namespace + "}:audit"
            for line in lines[:3]:
                await client.xadd(stream, {"record": line})
            third = json.loads(lines[2])
            await client.hset("{" + namespace + "}:audit-acked", log.replica, f"{third['seq']}:{third['hash']}")

            log = AuditLog(path, Metrics(), redis=client, namespace=namespace, state_dir=state)
            await log.start()
            await eventually(lambda: spooled(log.metrics) == 0)
            log.record(entry(9))
            await log.close()
            await client.aclose()
            assert spool.read_bytes() == b"" and lost(log.metrics) == 0

        asyncio.run(run())
        assert "8 spooled records to replay" not in caplog.text  # 8 were spooled, 3 skipped by the mark
        lines = stream_lines(redis_url, namespace)
        assert [json.loads(line)["seq"] for line in lines] == list(range(1, 10))
        assert lines == path.read_bytes().splitlines()

    def test_records_that_never_left_the_process_are_sent_from_the_file(self, tmp_path: Path, redis_url: str,
                                                                        caplog: pytest.LogCaptureFixture) -> None:
        """Killed after writing the file, before the stream: the next start sends them."""
        namespace = f"audit-{uuid.uuid4().hex[:12]}"
        path, state = tmp_path / "audit.jsonl", tmp_path / "state"

        async def run() -> None:
            client = await open_redis(redis_url)
            await write(path, [entry(n) for n in range(4)], redis=client, namespace=namespace, state_dir=state)
            await write(path, [entry(n) for n in range(3)])  # the same chain, written with no stream at all
            log = AuditLog(path, Metrics(), redis=client, namespace=namespace, state_dir=state)
            await log.start()
            await eventually(lambda: len(stream_lines(redis_url, namespace)) == 7)
            log.record(entry(8))
            await log.close()
            await client.aclose()

        asyncio.run(run())
        assert "sending 3 records written locally but never sent (seq 5..7)" in caplog.text
        lines = stream_lines(redis_url, namespace)
        assert [json.loads(line)["seq"] for line in lines] == list(range(1, 9))
        assert lines == path.read_bytes().splitlines()


# Bounds: one record's size, and the stream's


class TestRecordBounds:
    def test_an_ordinary_record_is_left_as_it_is(self) -> None:
        record = entry(1, path="/v1/chat/completions", subject="user@org-acme")
        assert bounded(record) is record

    @pytest.mark.parametrize("field", ["path", "subject", "requested_model", "credential_error", "client_ip"])
    def test_a_long_field_is_cut_with_a_visible_marker(self, field: str) -> None:
        record = bounded(entry(1, **{field: "x" * 50_000}))
        assert record[field] == "x" * MAX_FIELD_CHARS + "…[truncated: 50000 characters]"
        assert record["truncated"] == [field]

    def test_a_written_field_over_its_limit_is_cut_in_a_short_line_too(self, tmp_path: Path) -> None:
        path = tmp_path / "audit.jsonl"
        asyncio.run(write(path, [entry(1, path="x" * (MAX_FIELD_CHARS + 10)), entry(2, path="y" * MAX_FIELD_CHARS)]))
        cut, whole = records(path)
        assert cut["path"] == "x" * MAX_FIELD_CHARS + f"…[truncated: {MAX_FIELD_CHARS + 10} characters]"
        assert whole["path"] == "y" * MAX_FIELD_CHARS and "truncated" not in whole
        assert verify([path]).ok

    @pytest.mark.parametrize("fields", [
        {"path": "x" * 5000},
        {"path": "x" * 5000, "subject": "y" * 5000, "requested_model": "z" * 5000},
        {f"field{n}": "x" * 5000 for n in range(40)},
        {"path": "\x00" * 5000},  # 6 bytes each in JSON
        {"path": "\u2028" * 5000, "subject": "\x85" * 5000},  # escaped on the line
        {"path": "😀" * 5000, "subject": '"' * 5000},
    ], ids=["one", "three", "forty", "controls", "separators", "wide"])
    def test_a_written_record_is_capped_whatever_its_fields(self, tmp_path: Path, fields: dict[str, str]) -> None:
        path = tmp_path / "audit.jsonl"
        asyncio.run(write(path, [entry(n, **fields) for n in range(3)]))
        lines = path.read_bytes().splitlines()
        assert all(len(line) <= MAX_RECORD_BYTES for line in lines), [len(line) for line in lines]
        assert all(json.loads(line)["truncated"] for line in lines)
        assert verify([path]).ok


class TestStreamBounds:
    def _write(self, redis_url: str, namespace: str, path: Path, entries: list[dict[str, Any]], **options: Any) -> None:
        async def run() -> None:
            client = await open_redis(redis_url)
            await write(path, entries, one_by_one=True, redis=client, namespace=namespace, state_dir=path.parent / "state",
                        **options)
            await client.aclose()

        asyncio.run(run())

    def _stream(self, redis_url: str, namespace: str) -> tuple[list[bytes], int]:
        client = redis_sync.Redis.from_url(redis_url)
        try:
            counted = int(client.get("{" + namespace + "}:audit-bytes") or 0)
        finally:
            client.close()
        return stream_lines(redis_url, namespace), counted

    def test_the_stream_keeps_at_most_max_bytes_of_the_newest_records(self, tmp_path: Path, redis_url: str) -> None:
        namespace = f"audit-{uuid.uuid4().hex[:12]}"
        path = tmp_path / "audit.jsonl"
        self._write(redis_url, namespace, path, [entry(n, pad="p" * 900) for n in range(300)],
                    stream_maxlen=1000, stream_max_bytes=64 * 1024)
        lines, counted = self._stream(redis_url, namespace)
        size = sum(len(line) for line in lines)
        assert size == counted <= 64 * 1024 < size + len(lines[0])  # as many as fit, no more
        assert lines == path.read_bytes().splitlines()[-len(lines):]  # the newest, in order
        assert audit.verify_lines(lines).ok

    def test_the_stream_keeps_at_most_maxlen_records(self, tmp_path: Path, redis_url: str) -> None:
        namespace = f"audit-{uuid.uuid4().hex[:12]}"
        path = tmp_path / "audit.jsonl"
        self._write(redis_url, namespace, path, [entry(n) for n in range(1200)], stream_maxlen=1000)
        lines, counted = self._stream(redis_url, namespace)
        assert len(lines) == 1000 and counted == sum(map(len, lines))
        assert lines == path.read_bytes().splitlines()[-1000:]

    def test_a_stream_without_a_byte_count_is_still_bounded(self, tmp_path: Path, redis_url: str) -> None:
        """Written by a version that did not count bytes (or the count was lost): the count
        is estimated from the newest records, then kept."""
        namespace = f"audit-{uuid.uuid4().hex[:12]}"
        client = redis_sync.Redis.from_url(redis_url)
        try:
            for n in range(200):
                client.xadd("{" + namespace + "}:audit", {"record": json.dumps(entry(n, pad="o" * 900))})
        finally:
            client.close()
        path = tmp_path / "audit.jsonl"
        self._write(redis_url, namespace, path, [entry(n, pad="p" * 900) for n in range(20)],
                    stream_maxlen=1000, stream_max_bytes=64 * 1024)
        lines, counted = self._stream(redis_url, namespace)
        assert sum(map(len, lines)) <= 64 * 1024 and abs(counted - sum(map(len, lines))) < 2 * len(lines[0])
        assert lines[-20:] == path.read_bytes().splitlines()


class TestUnauthenticatedLog:
    def test_requests_never_authenticated_have_a_log_of_their_own(self, stacks: Callable[..., Stack],
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
        stack = stacks()
        sent = mixed_requests(stack, stack.signing.token)
        check_one_record_each(sent, wait_for(lambda: (r := stack.audit_records()) and len(r) >= len(sent) and r))
        main_path = Path(stack.config.audit.path)
        other = audit.unauthenticated_path(main_path)
        authenticated = [json.loads(line) for line in main_path.read_text().splitlines()]
        unauthenticated = [json.loads(line) for line in other.read_text().splitlines()]
        assert all(r["org"] for r in authenticated) and not any(r["org"] for r in unauthenticated)
        assert sorted(r["status"] for r in unauthenticated) == [401] * 3 + [404] * 3
        assert len({r["replica"] for r in authenticated}) == len({r["replica"] for r in unauthenticated}) == 1
        assert authenticated[0]["replica"] != unauthenticated[0]["replica"]  # two chains
        code, out = verify_cli(capsys, str(other), str(main_path))
        assert code == 0 and "2 file(s)" in out and out.count("replica ") == 2

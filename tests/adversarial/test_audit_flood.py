"""Floods of the audit trail: anyone can send requests that are never authenticated,
as fast as the network allows, each with the longest path and headers the listener
takes. They must not push the record of authenticated callers out of the local
files, nor fill Redis, and no record grows with what the client sends
(gateway/audit/bounds.py, gateway/audit/log.py `AuditLogs`, gateway/audit/stream.py).

A gateway in fleet mode on the test Redis, with small caps on the unauthenticated
log: its file rotates at 16 KiB keeping 2, its stream keeps 64 KiB of records.
Every request still has exactly one record.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis as redis_sync

from e2e import Stack
from fleet import policy_variant
from gateway.audit import unauthenticated_path
from gateway.audit.bounds import MAX_FIELD_CHARS, MAX_RECORD_BYTES
from gateway.cli import main

from .conftest import CHAT, Probe, chat_body, embargo_cn

STREAM_BYTES = 64 * 1024


@pytest.fixture(scope="module")
def fleet_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    redis_url = os.environ.get("REDIS_URL")  # as tests/conftest.py's redis_url, for a module's stack
    if not redis_url:
        pytest.skip("needs a Redis: run under scripts/with-redis (make test)")
    directory = tmp_path_factory.mktemp("audit-flood")
    namespace = f"flood-{uuid.uuid4().hex[:8]}"
    stack = Stack(directory, policy_dir=policy_variant(directory / "policy", embargo_cn), extra_config=f"""
redis: {{url: "{redis_url}", namespace: {namespace}}}
audit:
  path: audit.jsonl
  max_bytes: 65536
  keep: 1
  unauthenticated: {{max_bytes: 16384, keep: 2, stream_maxlen: 1000, stream_max_bytes: {STREAM_BYTES}}}
""")
    stack.namespace = namespace  # type: ignore[attr-defined]
    yield stack
    stack.close()


@pytest.fixture
def gw(fleet_stack: Stack, caplog: pytest.LogCaptureFixture) -> Iterator[Probe]:
    """As tests/adversarial/conftest.py's: no request may end in an exception the gateway caught."""
    fleet_stack.upstream.app.reset()
    caplog.set_level(logging.ERROR, logger="gateway")
    yield Probe(fleet_stack)
    crashes = [r.getMessage() for r in caplog.get_records("call")
               if r.name.startswith("gateway") and r.levelno >= logging.ERROR]
    assert not crashes, crashes


def _stream(stack: Stack, name: str) -> list[bytes]:
    client = redis_sync.Redis.from_url(stack.config.redis.url)
    try:
        return [fields[b"record"] for _, fields in client.xrange("{" + stack.namespace + "}:" + name)]  # type: ignore[attr-defined]
    finally:
        client.close()


def _files(path: Path, keep: int) -> list[Path]:
    """A log's files, oldest first."""
    return [p for p in [*(path.with_name(f"{path.name}.{n}") for n in range(keep, 0, -1)), path] if p.exists()]


def _records(paths: list[Path]) -> list[dict[str, Any]]:
    return [json.loads(line) for path in paths for line in path.read_bytes().splitlines()]


def _flood(gw: Probe, count: int) -> list[str]:
    """`count` unauthenticated requests, as long as the listener takes them: a bad
    credential, an unknown path, bytes that are not HTTP, a head over the limits.
    Returns the decision ids they were answered with."""
    long_path = CHAT + "/" + "p" * 8000
    ids = []
    for n in range(count):
        kind = n % 4
        if kind == 0:
            reply = gw.send(path=CHAT + "?" + "q" * 7000, body=chat_body(), credential="x" * 7000)
        elif kind == 1:
            reply = gw.send("GET", long_path, credential=None)
        elif kind == 2:
            [reply] = gw.raw(b"GET /\x00 HTTP/1.1\r\nHost: x\r\n\r\n")
        else:
            [reply] = gw.raw(f"GET {CHAT} HTTP/1.1\r\nHost: x\r\n".encode() + b"X-Pad: " + b"p" * 9000 + b"\r\n\r\n")
        assert reply.status in (400, 401, 404, 414, 431), reply
        ids.append(reply.header("x-gateway-decision-id"))
    return ids


def test_an_unauthenticated_flood_keeps_the_authenticated_history(gw: Probe, capsys: pytest.CaptureFixture[str]) -> None:
    stack = gw.stack
    main_path = Path(stack.config.audit.path)
    other = unauthenticated_path(main_path)
    served = [gw.send(body=chat_body(), credential=gw.token()) for _ in range(5)]  # fleet mode: JWTs
    assert [reply.status for reply in served] == [200] * 5
    flood = _flood(gw, 400)  # about 600 KB of records before the bounds: ten times the main file's max_bytes
    gw.settle()

    # The authenticated history is whole, in its file and its stream; the flood is not in it.
    authenticated = _records(_files(main_path, 1))
    assert {r["decision_id"] for r in authenticated} >= {reply.header("x-gateway-decision-id") for reply in served}
    assert not main_path.with_name(main_path.name + ".1").exists(), "the authenticated log was rotated"
    assert not {r["decision_id"] for r in authenticated} & set(flood)
    stream = [json.loads(line) for line in _stream(stack, "audit")]
    assert {reply.header("x-gateway-decision-id") for reply in served} <= {r["decision_id"] for r in stream}

    # The flood rotated its own log only, within its bounds; each request has one record there, or
    # had one in a file now rotated away.
    files = _files(other, 2)
    assert len(files) <= 3 and all(path.stat().st_size <= 16384 + MAX_RECORD_BYTES for path in files)
    kept = _records(files)
    assert len({r["decision_id"] for r in kept}) == len(kept) and {r["decision_id"] for r in kept} <= set(flood)
    assert [r["decision_id"] for r in kept] == flood[-len(kept):]  # the newest, in order

    # Redis: the unauthenticated stream holds at most its bytes, the newest records.
    lines = _stream(stack, "audit-unauthenticated")
    assert 0 < sum(map(len, lines)) <= STREAM_BYTES
    assert [json.loads(line)["decision_id"] for line in lines] == flood[-len(lines):]

    # `gateway audit verify` checks both chains in one run (the unauthenticated one now starts past seq 1).
    assert main(["audit", "verify", *map(str, files), *map(str, _files(main_path, 1))]) == 0
    out = capsys.readouterr().out
    assert out.startswith("OK:") and out.count("  replica ") == 2 and "starts past seq 1" in out


def test_a_record_does_not_grow_with_what_the_client_sends(gw: Probe) -> None:
    [decision_id] = _flood(gw, 2)[1:]  # GET <8 KiB path>, no credential
    [record] = [r for r in gw.stack.audit_records() if r["decision_id"] == decision_id]
    assert record["path"].endswith("…[truncated: 8021 characters]") and len(record["path"]) < MAX_FIELD_CHARS + 40
    assert record["truncated"] == ["path"]


def test_an_authenticated_callers_long_subject_is_cut(gw: Probe) -> None:
    token = gw.token(sub="s" * 5000)
    reply = gw.send(body=chat_body(), credential=token)
    gw.allowed(reply)
    [record] = [r for r in gw.stack.audit_records() if r["decision_id"] == reply.header("x-gateway-decision-id")]
    assert record["subject"] == "s" * MAX_FIELD_CHARS + "…[truncated: 5000 characters]"
    assert record["truncated"] == ["subject"]
    line = next(line for line in Path(gw.stack.config.audit.path).read_bytes().splitlines()
                if record["decision_id"].encode() in line)
    assert len(line) < 4096


def test_every_request_of_a_flood_has_one_record(gw: Probe) -> None:
    before = {r["decision_id"] for r in gw.stack.audit_records()}
    flood = _flood(gw, 8)
    gw.settle()
    records = [r for r in gw.stack.audit_records() if r["decision_id"] not in before]
    assert sorted(r["decision_id"] for r in records) == sorted(flood)
    assert all(r["decision"] == "deny" and r["org"] is None for r in records)

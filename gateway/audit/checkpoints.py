"""Signed checkpoints: what makes the hash chain evidence.

A checkpoint is a record in the chain like any other (its own seq, `prev` and
`hash`), with `type: "checkpoint"`. It names:

- `replica`, `seq`: where it stands in the chain;
- `head`: the chain head it covers, the seq and hash of the record just before it
  (the same hash as its `prev`);
- `records`: how many records it covers since the previous checkpoint (or since the
  chain's start);
- `previous_checkpoint`: the seq and hash of the previous checkpoint, or null;
- `key_id` and `signature`: Ed25519 over the record's canonical JSON without
  `signature` and `hash` (so the signature covers `prev`, and through it every
  record before).

Being in the chain, a checkpoint makes a cut visible: records removed after it
break no link, but the checkpoint itself is then missing, and a copy of it exists
outside the audit file, in `checkpoints.jsonl` (`audit.checkpoints_path`) and, in
fleet mode, in the Redis stream `{ns}:audit-checkpoints`. Re-sealing (editing a
record and recomputing every hash after it) changes some checkpoint's `prev`, and
only the private key can sign it again.

The gateway writes one every `audit.checkpoint_every` records, at least every
`audit.checkpoint_interval_s` while records flow, and at shutdown.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from gateway.audit.canonical import FORMAT, canonical
from gateway.audit.files import FileMode
from gateway.audit.signing import SigningKey

log = logging.getLogger("gateway.audit")

CHECKPOINT = "checkpoint"           # the `type` of a checkpoint record
REDIS_STREAM = "audit-checkpoints"  # {ns}:audit-checkpoints, field `record`: the line
REDIS_MAXLEN = 1_000_000            # about a billion records at the default 1,000 per checkpoint


def is_checkpoint(record: dict[str, Any]) -> bool:
    return record.get("type") == CHECKPOINT


def signed_bytes(record: dict[str, Any]) -> bytes:
    """What a checkpoint's signature covers: the record without `signature` and `hash`."""
    return canonical({k: v for k, v in record.items() if k not in ("signature", "hash")})


class Pending:
    """A checkpoint waiting for its place in the chain: `AuditFile.append` calls it with
    the replica, seq and prev it gets, and seals the signed entry it returns."""

    def __init__(self, key: SigningKey, time: str, previous: tuple[int, str] | None) -> None:
        self.key, self.time, self.previous = key, time, previous
        self.seq: int | None = None

    def __call__(self, replica: str, seq: int, prev: str) -> dict[str, Any]:
        self.seq = seq
        after = self.previous[0] if self.previous else 0
        entry: dict[str, Any] = {
            "type": CHECKPOINT, "time": self.time, "head": {"seq": seq - 1, "hash": prev},
            "records": seq - 1 - after,
            "previous_checkpoint": {"seq": self.previous[0], "hash": self.previous[1]} if self.previous else None,
            "key_id": self.key.public.id,
        }
        body = entry | {"replica": replica, "seq": seq, "prev": prev, "format": FORMAT}  # as seal() adds them
        return entry | {"signature": self.key.sign(signed_bytes(body))}


class Copies:
    """The copies of checkpoints outside the audit file: `checkpoints.jsonl` (written on
    the audit thread) and, in fleet mode, the Redis stream (best effort: the audit stream
    carries every checkpoint too, with its spool)."""

    def __init__(self, path: str | Path, mode: FileMode, *, fsync: bool, redis: Any = None,
                 namespace: str = "fgw") -> None:
        self.path = Path(path)
        self.mode = mode
        self.fsync = fsync
        self.redis = redis
        self.key = "{" + namespace + "}:" + REDIS_STREAM

    def write(self, line: bytes) -> None:
        """Append one checkpoint line to the file (blocking: on the audit thread)."""
        fd = self.mode.open(self.path, os.O_WRONLY | os.O_APPEND)
        try:
            os.write(fd, line + b"\n")
            if self.fsync:
                os.fsync(fd)
        finally:
            os.close(fd)

    async def publish(self, line: bytes) -> None:
        if self.redis is None:
            return
        try:
            await self.redis.xadd(self.key, {"record": line}, maxlen=REDIS_MAXLEN, approximate=True)
        except Exception as exc:  # Redis errors: the file copy and the audit stream still have it
            log.warning("audit checkpoint copy to Redis %s failed: %r", self.key, exc)


# Reading the outside copies (gateway audit verify --checkpoints / --redis)

Outside = tuple[str, int, dict[str, Any]]  # source, line (from 1), the checkpoint record


def read_file(path: str | Path) -> Iterator[Outside]:
    """The checkpoint records of a checkpoints.jsonl (other lines are skipped)."""
    with open(path, "rb") as lines:
        for number, line in enumerate(lines, 1):
            record = _record(line)
            if record is not None:
                yield str(path), number, record


def read_redis(url: str, namespace: str) -> Iterator[Outside]:
    import redis

    client = redis.Redis.from_url(url)
    key = "{" + namespace + "}:" + REDIS_STREAM
    try:
        for number, (_, fields) in enumerate(client.xrange(key), 1):
            record = _record(fields.get(b"record", b""))
            if record is not None:
                yield f"redis {key}", number, record
    finally:
        client.close()


def _record(line: bytes) -> dict[str, Any] | None:
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) and is_checkpoint(record) else None

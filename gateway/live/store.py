"""Where the live state is kept: the active bundle, the overlay of live changes,
an (epoch, revision) stamp and the change log (docs/admin-api.md, docs/operators.md).

`LocalStore` (embedded mode) keeps them under `state_dir`, so a restart loses
nothing. `RedisStore` (fleet mode) keeps them in Redis under one hash tag, so
every multi-key write is one MULTI transaction even on Redis Cluster, and
announces each change on a pub/sub channel. Both store the overlay as flat
fields (`susp:<id>`, `lift:<id>`, `org:<id>:<field>`, `cred:<id>`), so two operators
changing different fields of one org never overwrite each other.

Every change record is sealed into one hash chain (seq, prev, hash over its
canonical JSON, as the audit log: gateway/audit/chain.py `seal_linear`). The
chain is linear across the fleet: RedisStore keeps its head (`changes-head`)
with the state, watches it, and extends it in the transaction that writes the
change, so two replicas writing at once serialise. `change_log()` gives the
records and the head to `gateway admin changes --verify`.

The epoch names one life of the shared state: a Redis that restarts without
persistence comes back with none. Writes are conditional on the epoch the
writer knows, so a change is never written into a state that replicas would
mistake for the one they hold; replicas restore a lost state from their mirror.
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from gateway.audit.chain import ZERO_HASH, Sealed, lines_backwards, seal_linear
from gateway.audit.files import FileMode
from gateway.live.overlay import Overlay

CHANGE_LOG_MAX = 100_000
LOCAL_EPOCH = "local"
WRITE_ATTEMPTS = 50  # a write retried when another replica extended the change log meanwhile


def keys(namespace: str) -> dict[str, str]:
    """Key names under one hash tag, `{namespace}`: one Cluster slot for every
    multi-key transaction. Several gateways (or tests) can share a Redis by name."""
    tag = "{" + namespace + "}"
    return {name: f"{tag}:{name}" for name in ("bundle", "overlay", "epoch", "revision", "changes",
                                                       "changes-head", "events")}


class StoreConflict(Exception):
    """The shared state is not the one the writer expected (it was reset or
    restored meanwhile): nothing was written."""


@dataclass(frozen=True)
class Shared:
    epoch: str | None
    revision: int
    bundle: dict[str, str] | None  # file name -> YAML text; None until one is published
    bundle_version: str | None
    files_version: str | None  # version of the last bundle published from policy_dir
    overlay: Overlay


@dataclass(frozen=True)
class ChangeLog:
    """The whole change log, oldest first, as written, and the store's record of its end."""

    lines: list[bytes]
    head: tuple[int, str] | None  # (seq, hash) of the newest record, kept apart from the log
    complete: bool  # never trimmed: the chain must start at seq 1
    source: str


def fields_of(overlay: Overlay) -> dict[str, str]:
    """The overlay as the flat fields the stores keep."""
    fields = {f"susp:{k}": json.dumps(v, sort_keys=True) for k, v in overlay.suspensions.items()}
    fields |= {f"lift:{k}": "1" for k in overlay.lifted}
    fields |= {f"org:{o}:{n}": json.dumps(v, sort_keys=True) for o, f in overlay.organizations.items() for n, v in f.items()}
    fields |= {f"cred:{k}": json.dumps(v, sort_keys=True) for k, v in overlay.credentials.items()}
    return fields


def overlay_from_fields(fields: dict[str, str]) -> Overlay:
    suspensions: dict[str, Any] = {}
    lifted: set[str] = set()
    organizations: dict[str, dict[str, Any]] = {}
    credentials: dict[str, Any] = {}
    for key, value in fields.items():
        kind, _, rest = key.partition(":")
        if kind == "susp":
            suspensions[rest] = json.loads(value)
        elif kind == "lift":
            lifted.add(rest)
        elif kind == "org":
            org_id, _, name = rest.rpartition(":")
            organizations.setdefault(org_id, {})[name] = json.loads(value)
        elif kind == "cred":
            credentials[rest] = json.loads(value)
    return Overlay(suspensions, frozenset(lifted), organizations, credentials)


class Store(Protocol):
    async def read(self) -> Shared: ...

    async def stamp(self) -> tuple[str | None, int]: ...

    async def write(self, *, set_fields: dict[str, str], delete_fields: list[str], bundle: dict[str, Any] | None,
                    change: dict[str, Any], epoch: str | None) -> int: ...

    async def restore(self, shared: Shared, change: dict[str, Any]) -> bool: ...

    async def changes(self, limit: int) -> list[dict[str, Any]]: ...

    async def change_log(self) -> ChangeLog: ...

    def notifications(self) -> AsyncIterator[None]: ...

    async def close(self) -> None: ...


class LocalStore:
    """Embedded mode: one file under `state_dir/live/`, written atomically."""

    def __init__(self, state_dir: str | Path, mode: FileMode = FileMode()) -> None:
        self.directory = Path(state_dir) / "live"
        self.mode = mode  # of the change log, an audit file (0600, or 0640 with audit.group)
        self._revision: tuple[tuple[int, int, int], int] | None = None  # the file's identity, its revision

    def _state(self) -> dict[str, Any]:
        path = self.directory / "state.json"
        return json.loads(path.read_text()) if path.exists() else {"revision": 0, "bundle": None, "fields": {}}

    async def read(self) -> Shared:
        state = self._state()
        bundle = state["bundle"] or {}
        return Shared(LOCAL_EPOCH, state["revision"], bundle.get("files"), bundle.get("version"),
                      bundle.get("files_version"), overlay_from_fields(state["fields"]))

    async def stamp(self) -> tuple[str | None, int]:
        """Asked twice a second: the file is parsed again only when it was replaced (every
        write is a new file: os.replace), since parsing it is most of an idle gateway's CPU."""
        try:
            status = os.stat(self.directory / "state.json")
        except FileNotFoundError:
            return LOCAL_EPOCH, 0
        identity = (status.st_ino, status.st_mtime_ns, status.st_size)
        if self._revision is None or self._revision[0] != identity:
            self._revision = identity, int(self._state()["revision"])
        return LOCAL_EPOCH, self._revision[1]

    async def write(self, *, set_fields: dict[str, str], delete_fields: list[str], bundle: dict[str, Any] | None,
                    change: dict[str, Any], epoch: str | None = None) -> int:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        # `gateway keys` records its changes from another process: one writer at a time.
        lock = os.open(self.directory / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            return self._write(set_fields, delete_fields, bundle, change)
        finally:
            os.close(lock)

    def _write(self, set_fields: dict[str, str], delete_fields: list[str], bundle: dict[str, Any] | None,
               change: dict[str, Any]) -> int:
        state = self._state()
        state["fields"].update(set_fields)
        for name in delete_fields:
            state["fields"].pop(name, None)
        if bundle is not None:
            state["bundle"] = bundle
        state["revision"] += 1
        # The record first: a crash in between leaves a record of a change not made, never
        # a change without its record.
        sealed = seal_linear(change | {"revision": state["revision"]}, *self._next_link(state))
        with open(self.mode.open(self.directory / "changes.jsonl", os.O_WRONLY | os.O_APPEND), "ab") as log:
            log.write(sealed.line + b"\n")
        state["change_head"] = [sealed.seq, sealed.hash]
        temporary = self.directory / ".state.json.tmp"
        temporary.write_text(json.dumps(state, sort_keys=True))
        os.replace(temporary, self.directory / "state.json")
        return int(state["revision"])

    def _next_link(self, state: dict[str, Any]) -> tuple[int, str]:
        """(seq, prev) of the next record: after the log's last line, else after the head
        kept in the state (a last line that does not parse), else the first."""
        end = _chain_end(next(lines_backwards(self.directory / "changes.jsonl"), None))
        head = state.get("change_head")
        if end is None and head:
            end = (int(head[0]), str(head[1]))
        return _link_after(end)

    async def restore(self, shared: Shared, change: dict[str, Any]) -> bool:
        return False  # files under state_dir are not lost behind a running process's back

    async def changes(self, limit: int) -> list[dict[str, Any]]:
        path = self.directory / "changes.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines()[-limit:]][::-1]

    async def change_log(self) -> ChangeLog:
        path = self.directory / "changes.jsonl"
        lines = path.read_bytes().splitlines(keepends=True) if path.exists() else []
        head = self._state().get("change_head")
        return ChangeLog(lines, (int(head[0]), str(head[1])) if head else None, True, str(path))

    async def notifications(self) -> AsyncIterator[None]:
        # One process: changes are applied where they are made.
        return
        yield

    async def close(self) -> None:
        return None


class RedisStore:
    """Fleet mode: the shared state in Redis; replicas mirror it in memory."""

    def __init__(self, url: str | None = None, *, namespace: str = "fgw", timeout_s: float = 0.5,
                 cluster: bool = False, client: Any = None) -> None:
        """`client`: an asyncio client from gateway.live.redis_connect (decode_responses=True); else one is
        made for `url` (standalone, Sentinel, or a Cluster with `cluster`)."""
        from gateway.live.redis_connect import connect_url

        self.redis = client if client is not None else connect_url(url or "", cluster=cluster, timeout_s=timeout_s)
        self.namespace = namespace
        self.keys = keys(namespace)

    async def read(self) -> Shared:
        keys = self.keys
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.get(keys["epoch"]).get(keys["revision"]).hgetall(keys["bundle"]).hgetall(keys["overlay"])
            epoch, revision, bundle, fields = await pipe.execute()
        files = json.loads(bundle["files"]) if bundle.get("files") else None
        return Shared(epoch, int(revision or 0), files, bundle.get("version") or None,
                      bundle.get("files_version") or None, overlay_from_fields(fields))

    async def stamp(self) -> tuple[str | None, int]:
        epoch, revision = await self.redis.mget(self.keys["epoch"], self.keys["revision"])
        return epoch, int(revision or 0)

    async def write(self, *, set_fields: dict[str, str], delete_fields: list[str], bundle: dict[str, Any] | None,
                    change: dict[str, Any], epoch: str | None) -> int:
        """Apply one change if the shared state is still in `epoch` (None: it must
        be new, and this write starts an epoch); else StoreConflict."""
        from redis.exceptions import WatchError

        for _ in range(WRITE_ATTEMPTS):
            try:
                async with self.redis.pipeline(transaction=True) as pipe:
                    await pipe.watch(self.keys["epoch"], self.keys["changes-head"])
                    current = await pipe.get(self.keys["epoch"])
                    if current != epoch:
                        raise StoreConflict(f"the shared state is in epoch {current!r}, not {epoch!r}")
                    sealed = seal_linear(change, *await self._next_link(pipe))
                    pipe.multi()
                    if current is None:
                        pipe.set(self.keys["epoch"], secrets.token_hex(8))
                    self._queue(pipe, set_fields, delete_fields, bundle, sealed)
                    results = await pipe.execute()
                break
            except WatchError:
                continue  # another replica wrote meanwhile: chain after its record (or find the epoch gone)
        else:
            raise StoreConflict("the shared state kept changing during the write")
        revision = int(results[-1])
        await self.redis.publish(self.keys["events"], str(revision))
        return revision

    async def _next_link(self, pipe: Any) -> tuple[int, str]:
        return _link_after(_chain_end(await pipe.get(self.keys["changes-head"])))

    def _queue(self, pipe: Any, set_fields: dict[str, str], delete_fields: list[str],
               bundle: dict[str, Any] | None, change: Sealed) -> None:
        if set_fields:
            pipe.hset(self.keys["overlay"], mapping=set_fields)
        if delete_fields:
            pipe.hdel(self.keys["overlay"], *delete_fields)
        if bundle is not None:
            pipe.hset(self.keys["bundle"], mapping={
                "files": json.dumps(bundle["files"]), "version": bundle["version"] or "",
                "files_version": bundle.get("files_version") or ""})
        # The change record is part of the same transaction: no change without its record.
        line = change.line.decode()
        pipe.xadd(self.keys["changes"], {"change": line}, maxlen=CHANGE_LOG_MAX, approximate=True)
        pipe.set(self.keys["changes-head"], line)
        pipe.incr(self.keys["revision"])

    async def restore(self, shared: Shared, change: dict[str, Any]) -> bool:
        """Put a replica's mirror back when the store lost its state (no epoch) or
        holds an older state of the same epoch (restored by a replica that lagged):
        the newest mirror wins. False when the store does not need it."""
        from redis.exceptions import WatchError

        keys = self.keys
        try:
            async with self.redis.pipeline(transaction=True) as pipe:
                await pipe.watch(keys["epoch"], keys["revision"], keys["changes-head"])
                # Two GETs, not MGET: redis-py's Cluster pipeline refuses MGET even within one slot.
                epoch, revision = await pipe.get(keys["epoch"]), await pipe.get(keys["revision"])
                if not (epoch is None or (epoch == shared.epoch and int(revision or 0) < shared.revision)):
                    return False
                sealed = seal_linear(change, *await self._next_link(pipe))
                pipe.multi()
                pipe.set(keys["epoch"], shared.epoch or secrets.token_hex(8))
                pipe.set(keys["revision"], shared.revision - 1)  # _queue's INCR lands on it
                pipe.delete(keys["overlay"])
                bundle = {"files": shared.bundle or {}, "version": shared.bundle_version,
                          "files_version": shared.files_version}
                self._queue(pipe, fields_of(shared.overlay), [], bundle, sealed)
                await pipe.execute()
        except WatchError:
            return False
        await self.redis.publish(keys["events"], str(shared.revision))
        return True

    async def changes(self, limit: int) -> list[dict[str, Any]]:
        entries = await self.redis.xrevrange(self.keys["changes"], count=limit)
        return [json.loads(fields["change"]) | {"id": entry_id} for entry_id, fields in entries]

    async def change_log(self) -> ChangeLog:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.xrange(self.keys["changes"]).get(self.keys["changes-head"])
            entries, head = await pipe.execute()
        # Trimmed only past CHANGE_LOG_MAX, and approximate trimming keeps at least that many.
        return ChangeLog([fields["change"].encode() for _, fields in entries], _chain_end(head),
                         len(entries) < CHANGE_LOG_MAX, f"redis stream {self.keys['changes']}")

    async def notifications(self) -> AsyncIterator[None]:
        """Yields once per announced change; raises when the connection fails."""
        from gateway.live.redis_connect import before_pubsub

        await before_pubsub(self.redis)
        pubsub = self.redis.pubsub()
        try:
            await pubsub.subscribe(self.keys["events"])
            while True:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                if message is not None:
                    yield None
        finally:
            await pubsub.aclose()

    async def close(self) -> None:
        await self.redis.aclose()


async def record_only(store: Store, change: dict[str, Any]) -> None:
    """Put a record that changes no live state into the change log, from outside a running
    gateway (`gateway keys`, which writes the key store itself). Written in the epoch the
    store is in, so running replicas take it as one of theirs."""
    for _ in range(WRITE_ATTEMPTS):
        epoch, _ = await store.stamp()
        try:
            await store.write(set_fields={}, delete_fields=[], bundle=None, change=change, epoch=epoch)
            return
        except StoreConflict:
            continue  # the state was restored or reset meanwhile: write in its new epoch
    raise StoreConflict("the shared state kept changing; the record was not written")


def _chain_end(line: str | bytes | None) -> tuple[int, str] | None:
    """(seq, hash) of the chained record `line`; None if it is not one."""
    try:
        record = json.loads(line or "")
        seq, digest = record["seq"], record["hash"]
    except (ValueError, TypeError, KeyError):
        return None
    return (seq, digest) if isinstance(seq, int) and isinstance(digest, str) else None


def _link_after(end: tuple[int, str] | None) -> tuple[int, str]:
    """(seq, prev) of the record after the one ending at `end`."""
    return (end[0] + 1, end[1]) if end is not None else (1, ZERO_HASH)

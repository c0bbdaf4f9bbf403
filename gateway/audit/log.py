"""The audit log the gateway uses: `AuditLog`.

Who does what:

- `AuditLog.record()` runs on the request path. When nothing is queued and the
  file is open and healthy, it seals the record and appends it to the file at
  once, on the event loop: one canonical JSON, one SHA-256 and one write(2) to
  the page cache cost less than handing the record to a thread and back, and
  the caller's answer need not wait. Otherwise it appends the entry to a
  bounded in-memory queue.
- One writer task drains the queue in batches, sealing and appending each batch
  the same way; opening, reopening after a failure and rotating (the operations
  that may block on the disk) run on a single worker thread. A record leaves
  the queue only once it is in the file: a failed write is retried, never dropped.
- Written records are also offered to the `export` sink, if any (an OTLP collector,
  gateway/export/): it takes them over and sends them from threads of its own.
- In fleet mode the written lines then go to `AuditStream`, which XADDs them to
  the stream `{ns}:audit`. What Redis cannot take is spooled to a file under
  state_dir and replayed, in order, once Redis answers again.

Every record is bounded in size when it is sealed (gateway/audit/bounds.py). `AuditLogs` holds
two such logs: one for authenticated requests, one for the rest (see its docstring).

Durability (`audit.fsync`): a write(2) puts a record in the page cache, which
outlives the process (a crash, kill -9) but not the machine (a power cut, a kernel
panic). `always`: the answer also waits for the fsync that covers its record; the
records written meanwhile share that fsync (group commit). `batch` (the default):
the answer waits for the write only; an fsync on the syncer's thread follows at most
SYNC_DELAY_S later and covers every record written meanwhile. `never`: the OS
writes back when it will. The fsyncs run on a thread of their own (gateway/audit/syncer.py),
never the event loop.

Signed checkpoints (gateway/audit/checkpoints.py), when a signing key is configured:
one after a write brings the records since the last one to `checkpoint_every`, one
from a timer when `checkpoint_interval_s` passed with records since, and one at
close; each is written in the same write(2) as the batch before it, then copied
to checkpoints.jsonl (on the audit thread) and to Redis.

Fail closed: `healthy` is False while the file cannot be written, while the
queue is nearly full, or while records can reach neither Redis nor the spool;
the request path then answers 503. `record()` drops a record (and counts
gateway_audit_lost_total) only when the queue is full.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import json
import logging
import re
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeVar

from prometheus_client import Gauge

from gateway.audit import checkpoints
from gateway.audit.chain import AuditFile, Entry, Sealed, default_replica, lines_backwards
from gateway.audit.files import FileMode
from gateway.audit.signing import SigningKey
from gateway.audit.stream import BATCH, RETRY_S, AuditStream
from gateway.audit.syncer import Syncer
from gateway.metrics import Metrics

if TYPE_CHECKING:
    from gateway.config import AuditConfig

log = logging.getLogger("gateway.audit")
T = TypeVar("T")

CAPACITY = 10_000           # records queued in memory, at most
SYNC_DELAY_S = 0.010        # audit.fsync batch: a written record is fsynced this long after, at most
Fsync = Literal["always", "batch", "never"]


@dataclass(frozen=True)
class Checkpointing:
    key: SigningKey
    copies: checkpoints.Copies
    every: int = 1000
    interval_s: float = 60.0


class RecordSink(Protocol):
    """Where written records go besides the file, e.g. an OTLP collector (gateway/export/):
    called on the event loop with each batch once it is in the file, so it must only
    take them over, never wait."""

    def offer(self, records: Sequence[Sealed]) -> None: ...


class AuditLog:
    def __init__(self, path: str | Path, metrics: Metrics, *, replica: str | None = None,
                 max_bytes: int = 100 * 1024 * 1024, keep: int = 10, capacity: int = CAPACITY,
                 redis: Any = None, namespace: str = "fgw", state_dir: str | Path = ".gateway-state",
                 stream_maxlen: int = 1_000_000, stream_max_bytes: int = 1 << 30, stream: str = "audit",
                 fsync: Fsync = "batch", mode: FileMode = FileMode(), checkpointing: Checkpointing | None = None,
                 export: RecordSink | None = None) -> None:
        self.file = AuditFile(path, replica=replica, max_bytes=max_bytes, keep=keep, mode=mode,
                              durable=fsync != "never")
        self.export = export
        self.path = self.file.path
        self.fsync = fsync
        self._synced: deque[tuple[int, asyncio.Future[None]]] = deque()  # (bytes written, done once synced)
        self._syncer: Syncer | None = None
        self.checkpointing = checkpointing
        self._since_checkpoint = 0               # records written after the last checkpoint
        self._last_checkpoint: tuple[int, str] | None = None
        self._checkpoint_at = time.monotonic()
        self._checkpoint_wanted = False          # by the timer or close(): write one with the next batch
        self._pending: checkpoints.Pending | None = None
        self._timer: asyncio.Task[None] | None = None
        self._copying: set[asyncio.Task[None]] = set()
        self.metrics = metrics
        self.capacity = capacity
        # Refuse new requests a little before the queue is full: the room left is for the
        # records of requests already admitted and of the 503s that refuse the others.
        self.high_water = capacity - max(1, capacity // 5)
        self.queue: deque[dict[str, Any]] = deque()
        self._lost = 0
        self._waiters: dict[int, asyncio.Future[None]] = {}  # id(queued entry) -> done once written
        self.file_ok = False
        self._wake = asyncio.Event()
        self._busy = False
        self._writer: asyncio.Task[None] | None = None
        # One thread for every blocking file operation: they never overlap, and the
        # event loop (the request path) never waits on the disk.
        self._thread = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="audit")
        self.stream: AuditStream | None = None
        if redis is not None:
            safe = re.sub(r"[^A-Za-z0-9._-]", "_", self.file.replica)
            self.stream = AuditStream(redis, namespace, Path(state_dir) / f"audit-spool-{safe}.jsonl", self.file,
                                      metrics, maxlen=stream_maxlen, max_bytes=stream_max_bytes, run_io=self._io,
                                      name=stream, mode=mode)

    @property
    def healthy(self) -> bool:
        return (self.file_ok and (self._syncer is None or self._syncer.ok) and len(self.queue) < self.high_water
                and (self.stream is None or self.stream.ok))

    @property
    def replica(self) -> str:
        return self.file.replica

    def record(self, entry: dict[str, Any], *, wait: bool = False) -> asyncio.Future[None] | None:
        """Queue one request's record (the request path: cheap, never blocks). With
        `wait`, return a future that is done once the record is in the file (and, with
        audit.fsync `always`, on disk), so the caller can hold the end of its response
        until then; None when it already is."""
        if len(self.queue) >= self.capacity:
            self.metrics.audit_lost.inc()
            self._lost += 1
            if self._lost == 1 or self._lost % 1000 == 0:  # a flood must not flood the log too
                log.error("audit queue of %s full: record %s lost (%d so far)", self.path, entry.get("decision_id"),
                          self._lost)
            return None
        if not self.queue and self._writable_now():
            try:
                self._append([entry])
                return self._after_sync() if wait and self.fsync == "always" else None
            except Exception as exc:  # the writer retries it, off the loop
                self._write_failed(exc)
        self.queue.append(entry)
        self._wake.set()
        if not wait:
            return None
        written: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters[id(entry)] = written
        return written

    def _writable_now(self) -> bool:
        """Whether a write on the loop can go ahead: the file open and healthy, and no
        thread operation on it under way."""
        return self.file_ok and not self._busy and self.file.fd is not None and not self.file.rotation_due

    def _append(self, batch: list[dict[str, Any]]) -> None:
        entries: list[Entry] = list(batch)
        if self._checkpoint_due(len(batch)):
            entries.append(self._new_checkpoint())
        sealed = self.file.append(entries)
        if self._syncer is not None and sealed:
            self._syncer.wanted()
        if self.stream is not None:
            self.stream.push(sealed, self.file.seq)
        if self.export is not None:
            self.export.offer(sealed)
        if self._pending is not None and entries[-1] is self._pending:
            self._checkpoint_written(sealed[-1])
        else:
            self._since_checkpoint += len(sealed)
        if self.file.rotation_due:
            self._wake.set()  # the writer rotates, on its thread

    def _after_sync(self) -> asyncio.Future[None]:
        """A future done once everything written so far is fsynced."""
        synced: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._synced.append((self.file.written, synced))
        return synced

    # Checkpoints

    def _checkpoint_due(self, records: int) -> bool:
        plan = self.checkpointing
        if plan is None:
            return False
        return self._checkpoint_wanted or self._since_checkpoint + records >= plan.every

    def _new_checkpoint(self) -> checkpoints.Pending:
        assert self.checkpointing is not None
        self._pending = checkpoints.Pending(self.checkpointing.key, _timestamp(time.time()), self._last_checkpoint)
        return self._pending

    def checkpoint_age(self) -> float:
        """Seconds since the last checkpoint (or since the log started, before the first)."""
        return time.monotonic() - self._checkpoint_at

    def _checkpoint_written(self, sealed: Sealed) -> None:
        assert self.checkpointing is not None
        self._last_checkpoint = (sealed.seq, sealed.hash)
        self._pending, self._checkpoint_wanted = None, False
        self._since_checkpoint, self._checkpoint_at = 0, time.monotonic()
        copies = self.checkpointing.copies
        copied = self._io(copies.write, sealed.line)
        copied.add_done_callback(self._copy_failed)
        task = asyncio.get_running_loop().create_task(copies.publish(sealed.line))
        self._copying.add(task)
        task.add_done_callback(self._copying.discard)

    def _copy_failed(self, copied: asyncio.Future[None]) -> None:
        if not copied.cancelled() and copied.exception() is not None:
            log.error("audit checkpoint copy to %s failed: %r", self.checkpointing and self.checkpointing.copies.path,
                      copied.exception())

    async def _checkpoint_timer(self) -> None:
        """At least one checkpoint every interval_s while records flow."""
        assert self.checkpointing is not None
        interval = self.checkpointing.interval_s
        while True:
            await asyncio.sleep(max(0.01, self._checkpoint_at + interval - time.monotonic()))
            if self._since_checkpoint and time.monotonic() - self._checkpoint_at >= interval:
                self._checkpoint_wanted = True
                self._wake.set()

    def _resume_checkpoints(self) -> None:
        """The newest checkpoint of this chain in the files, so the next one names it
        (blocking: on the audit thread)."""
        newest = _newest_checkpoint(self.file)
        if newest is not None:
            self._last_checkpoint = newest
            self._since_checkpoint = max(0, self.file.seq - newest[0])
        else:
            self._since_checkpoint = self.file.seq

    # Durability

    def _release_synced(self) -> None:
        """audit.fsync `always`: the answers whose records the last fsync covered may end
        (called on the loop by the syncer)."""
        while self._synced and self._synced[0][0] <= self.file.synced:
            done = self._synced.popleft()[1]
            if not done.done():
                done.set_result(None)

    def _write_failed(self, exc: BaseException) -> None:
        if self.file_ok:
            log.error("audit file %s cannot be written, refusing requests until it can: %r", self.path, exc)
        self.file_ok = False

    def _io(self, function: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        return asyncio.get_running_loop().run_in_executor(self._thread, function, *args)

    async def start(self) -> None:
        """Open the file (resuming the chain) and start writing. A file that cannot be
        opened is not fatal: the log stays unhealthy (503s) and the writer keeps trying."""
        try:
            await self._io(self.file.open)
            self.file_ok = True
        except OSError as exc:
            log.error("audit file %s cannot be opened, refusing requests until it can: %s", self.path, exc)
        if self.checkpointing is not None:
            await self._io(self._resume_checkpoints)
            self._timer = asyncio.get_running_loop().create_task(self._checkpoint_timer())
        if self.fsync != "never":
            always = self.fsync == "always"
            self._syncer = Syncer(self.file, delay_s=0.0 if always else SYNC_DELAY_S, loop=asyncio.get_running_loop(),
                                  on_synced=self._release_synced if always else None)
            self._syncer.start()
        if self.stream is not None:
            if self.file_ok:
                self.stream.written_seq = self.file.seq
            await self.stream.start()
        self._writer = asyncio.get_running_loop().create_task(self._write_forever())

    async def _write_forever(self) -> None:
        delay = RETRY_S[0]
        while True:
            if not self.queue and self.file_ok and not self.file.rotation_due and not self._checkpoint_wanted:
                self._wake.clear()
                await self._wake.wait()
            # Read, don't take: a record leaves the queue only once it is in the file.
            batch = list(itertools.islice(self.queue, BATCH))
            self._busy = True
            try:
                if self.file.rotation_due:
                    await self._io(self.file.rotate)
                if self.file.fd is None:
                    await self._io(self.file.open)
                self._append(batch)  # the file is open: sealing and writing need no thread
            except Exception as exc:  # OSError; anything else is a bug, but must not lose records either
                self._write_failed(exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_S[1])
                continue
            finally:
                self._busy = False
            if not self.file_ok:
                log.warning("audit file %s writable again", self.path)
            self.file_ok, delay = True, RETRY_S[0]
            for _ in batch:
                written = self._waiters.pop(id(self.queue.popleft()), None)
                if written is not None and not written.done():
                    if self.fsync == "always":
                        self._synced.append((self.file.written, written))
                    else:
                        written.set_result(None)

    async def close(self, timeout: float = 5.0) -> None:
        """Write what is queued (waiting up to `timeout` for a failing file), then stop."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        if self.checkpointing is not None and self._since_checkpoint:
            self._checkpoint_wanted = True  # the chain ends signed
            self._wake.set()
        while ((self.queue or self._busy or self._checkpoint_wanted) and self._writer is not None
               and loop.time() < deadline):
            await asyncio.sleep(0.01)
        if self.queue:
            self.metrics.audit_lost.inc(len(self.queue))
            log.error("audit: %d records could not be written before shutdown", len(self.queue))
        for task in (self._writer, self._timer):
            if task is not None:
                task.cancel()
                await asyncio.wait([task], timeout=2)
        if self._copying:
            await asyncio.wait(self._copying, timeout=2)
        if self.stream is not None:
            await self.stream.close(timeout=min(2.0, max(0.0, deadline - loop.time())))
        if self._syncer is not None:
            await self._io(self._syncer.stop)
        await self._io(self.file.close)  # fsyncs, unless audit.fsync is never
        for _, synced in self._synced:
            if not synced.done():
                synced.set_result(None)
        self._thread.shutdown(wait=True)


class AuditLogs:
    """The gateway's two audit logs, each a file with its own rotation and hash chain
    (and, in fleet mode, a stream with its own caps):

    - `authenticated`: every request whose credential was accepted (`audit.path`);
    - `unauthenticated`: every request never authenticated: no or a bad credential
      (401), refused before authentication (malformed HTTP, a head over the limits or
      too slow, a connection over the cap, an unknown route), `audit.unauthenticated`.

    Anyone can make the second kind, as fast as the network allows; apart, they can
    rotate away only their own history, never the record of what callers with a
    credential did. Each request still has exactly one record, in one of them.
    The gateway refuses requests (503) while the first cannot be written; the second
    is not a reason to refuse callers with a credential (a flood would make it one).
    """

    def __init__(self, authenticated: AuditLog, unauthenticated: AuditLog) -> None:
        self.authenticated = authenticated
        self.unauthenticated = unauthenticated

    @classmethod
    def from_config(cls, config: AuditConfig, metrics: Metrics, *, state_dir: str | Path, redis: Any = None,
                    namespace: str = "fgw", export: RecordSink | None = None) -> AuditLogs:
        """Raises ValueError for a signing key or a group that cannot be used."""
        mode = FileMode.for_group(config.group)
        checkpointing = None
        if config.signing_key_file is not None:
            copies = checkpoints.Copies(checkpoints_path(config), mode, fsync=config.fsync != "never", redis=redis,
                                        namespace=namespace)
            checkpointing = Checkpointing(SigningKey.load(config.signing_key_file), copies, config.checkpoint_every,
                                          config.checkpoint_interval_s)
        common = dict(redis=redis, namespace=namespace, state_dir=state_dir, fsync=config.fsync, mode=mode,
                      checkpointing=checkpointing, export=export)
        authenticated = AuditLog(config.path, metrics, replica=config.replica, max_bytes=config.max_bytes,
                                 keep=config.keep, stream_maxlen=config.stream_maxlen,
                                 stream_max_bytes=config.stream_max_bytes, **common)
        other = config.unauthenticated
        path = other.path or unauthenticated_path(config.path)
        unauthenticated = AuditLog(path, metrics, replica=f"{config.replica or default_replica(config.path)}-unauthenticated",
                                   max_bytes=other.max_bytes, keep=other.keep, stream_maxlen=other.stream_maxlen,
                                   stream_max_bytes=other.stream_max_bytes, stream="audit-unauthenticated", **common)
        Gauge("gateway_audit_writable", "1 while the audit file can be written; 0 and the gateway refuses "
              "requests (503) until it can.", registry=metrics.registry).set_function(
            lambda: float(authenticated.file_ok))
        if checkpointing is not None:
            # Only with a signing key: without one there are no checkpoints to be late.
            Gauge("gateway_audit_checkpoint_age_seconds", "Seconds since the last signed audit checkpoint "
                  "(the older of the two logs').", registry=metrics.registry).set_function(
                lambda: max(authenticated.checkpoint_age(), unauthenticated.checkpoint_age()))
        return cls(authenticated, unauthenticated)

    @property
    def signing_key(self) -> SigningKey | None:
        plan = self.authenticated.checkpointing
        return plan.key if plan is not None else None

    @property
    def healthy(self) -> bool:
        return self.authenticated.healthy

    @property
    def writable(self) -> bool:
        """Both files can be written (readiness: not the queues, which a flood fills)."""
        return self.authenticated.healthy and self.unauthenticated.file_ok

    def record(self, entry: dict[str, Any], *, authenticated: bool, wait: bool = False) -> asyncio.Future[None] | None:
        return (self.authenticated if authenticated else self.unauthenticated).record(entry, wait=wait)

    async def start(self) -> None:
        if self.signing_key is None:
            log.warning("audit.signing_key_file is not set: no signed checkpoints, so anyone who can write the audit "
                        "files can edit and re-seal them undetected (docs/operators.md, \"Signed checkpoints\")")
        await self.authenticated.start()
        await self.unauthenticated.start()

    async def close(self, timeout: float = 5.0) -> None:
        await asyncio.gather(self.authenticated.close(timeout), self.unauthenticated.close(timeout))


def checkpoints_path(config: AuditConfig) -> Path:
    """Where the outside copy of checkpoints goes: audit.checkpoints_path, else beside audit.path."""
    return Path(config.checkpoints_path or Path(config.path).with_name("checkpoints.jsonl"))


def unauthenticated_path(path: str | Path) -> Path:
    """Where the unauthenticated log goes by default: beside `path`, e.g. audit-unauthenticated.jsonl."""
    path = Path(path)
    return path.with_name(f"{path.stem}-unauthenticated{path.suffix}")


def _newest_checkpoint(file: AuditFile, limit: int = 1_000_000) -> tuple[int, str] | None:
    """(seq, hash) of the newest checkpoint of `file`'s chain, among its last `limit` lines."""
    lines = itertools.islice((line for path in file.files() for line in lines_backwards(path)), limit)
    for line in lines:
        if b'"type":"checkpoint"' not in line:
            continue
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("replica") == file.replica and checkpoints.is_checkpoint(record):
            return int(record["seq"]), str(record["hash"])
    return None


def _timestamp(now: float) -> str:
    return datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")

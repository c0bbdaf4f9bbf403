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

Fail closed: `healthy` is False while the file cannot be written, while the
queue is nearly full, or while records can reach neither Redis nor the spool;
the request path then answers 503. `record()` drops a record (and counts
gateway_audit_lost_total) only when the queue is full.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import logging
import re
from collections import deque
from collections.abc import Callable
from pathlib import Path
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from gateway.audit.chain import AuditFile, Sealed, default_replica
from gateway.audit.stream import BATCH, RETRY_S, AuditStream
from gateway.metrics import Metrics

if TYPE_CHECKING:
    from gateway.config import AuditConfig

log = logging.getLogger("gateway.audit")
T = TypeVar("T")

CAPACITY = 10_000           # records queued in memory, at most


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
                 export: RecordSink | None = None) -> None:
        self.file = AuditFile(path, replica=replica, max_bytes=max_bytes, keep=keep)
        self.export = export
        self.path = self.file.path
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
                                      name=stream)

    @property
    def healthy(self) -> bool:
        return self.file_ok and len(self.queue) < self.high_water and (self.stream is None or self.stream.ok)

    @property
    def replica(self) -> str:
        return self.file.replica

    def record(self, entry: dict[str, Any], *, wait: bool = False) -> asyncio.Future[None] | None:
        """Queue one request's record (the request path: cheap, never blocks). With
        `wait`, return a future that is done once the record is in the file, so the
        caller can hold the end of its response until then."""
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
                return None
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
        sealed = self.file.append(batch)
        if self.stream is not None:
            self.stream.push(sealed, self.file.seq)
        if self.export is not None:
            self.export.offer(sealed)
        if self.file.rotation_due:
            self._wake.set()  # the writer rotates, on its thread

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
        if self.stream is not None:
            if self.file_ok:
                self.stream.written_seq = self.file.seq
            await self.stream.start()
        self._writer = asyncio.get_running_loop().create_task(self._write_forever())

    async def _write_forever(self) -> None:
        delay = RETRY_S[0]
        while True:
            if not self.queue and self.file_ok and not self.file.rotation_due:
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
                    written.set_result(None)

    async def close(self, timeout: float = 5.0) -> None:
        """Write what is queued (waiting up to `timeout` for a failing file), then stop."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while (self.queue or self._busy) and self._writer is not None and loop.time() < deadline:
            await asyncio.sleep(0.01)
        if self.queue:
            self.metrics.audit_lost.inc(len(self.queue))
            log.error("audit: %d records could not be written before shutdown", len(self.queue))
        if self._writer is not None:
            self._writer.cancel()
            await asyncio.wait([self._writer], timeout=2)
        if self.stream is not None:
            await self.stream.close(timeout=min(2.0, max(0.0, deadline - loop.time())))
        await self._io(self.file.close)
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
        authenticated = AuditLog(config.path, metrics, replica=config.replica, max_bytes=config.max_bytes,
                                 keep=config.keep, redis=redis, namespace=namespace, state_dir=state_dir,
                                 stream_maxlen=config.stream_maxlen, stream_max_bytes=config.stream_max_bytes,
                                 export=export)
        other = config.unauthenticated
        path = other.path or unauthenticated_path(config.path)
        unauthenticated = AuditLog(path, metrics, replica=f"{config.replica or default_replica(config.path)}-unauthenticated",
                                   max_bytes=other.max_bytes, keep=other.keep, redis=redis, namespace=namespace,
                                   state_dir=state_dir, stream_maxlen=other.stream_maxlen,
                                   stream_max_bytes=other.stream_max_bytes, stream="audit-unauthenticated",
                                   export=export)
        return cls(authenticated, unauthenticated)

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
        await self.authenticated.start()
        await self.unauthenticated.start()

    async def close(self, timeout: float = 5.0) -> None:
        await asyncio.gather(self.authenticated.close(timeout), self.unauthenticated.close(timeout))


def unauthenticated_path(path: str | Path) -> Path:
    """Where the unauthenticated log goes by default: beside `path`, e.g. audit-unauthenticated.jsonl."""
    path = Path(path)
    return path.with_name(f"{path.stem}-unauthenticated{path.suffix}")

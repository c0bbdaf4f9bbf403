"""The audit trail (SPEC §5): exactly one record per request, hash-chained, in a
rotating local JSONL file and, in fleet mode, also in a capped Redis Stream.

Who does what:

- `AuditLog.record()` runs on the request path, so it only appends the entry to
  a bounded in-memory queue: no JSON, no hashing, no I/O.
- One writer task takes the queue in batches and hands each batch to
  `AuditFile` on a single worker thread, which gives every record its place in
  the chain and appends the batch to the file. A record leaves the queue only
  once it is in the file: a failed write is retried, never dropped.
- In fleet mode the written lines then go to `AuditStream`, which XADDs them to
  the stream `{ns}:audit`. What Redis cannot take is spooled to a file under
  state_dir and replayed, in order, once Redis answers again.

Fail closed: `healthy` is False while the file cannot be written, while the
queue is nearly full, or while records can reach neither Redis nor the spool;
the request path then answers 503. `record()` drops a record (and counts
gateway_audit_lost_total) only when the queue is full.

The chain: every record carries `replica` (this writer's stable id), `seq`
(1, 2, ... per replica, across restarts and rotations), `prev` (the hash of
the record before, 64 zeros before the first) and `hash`, the SHA-256 of the
record's canonical JSON (sorted keys, no spaces, UTF-8) without `hash`.
`verify()` (`gateway audit verify`) recomputes all of it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import fcntl
import hashlib
import itertools
import json
import logging
import math
import os
import re
import socket
import stat
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

from gateway.metrics import Metrics

if TYPE_CHECKING:
    from gateway.config import AuditConfig

log = logging.getLogger("gateway.audit")
T = TypeVar("T")

ZERO_HASH = "0" * 64
CAPACITY = 10_000           # records queued in memory, at most
BATCH = 500                 # records per file write and per Redis transaction
RETRY_S = (0.05, 1.0)       # first and longest wait between retries of a failed write or send


# The record format


def canonical(record: dict[str, Any]) -> bytes:
    """The bytes that are hashed: deterministic for anything JSON can hold. Floats are
    written by `repr`, which reads back to the same float, so a verifier that parses
    the line and serializes it again gets these bytes exactly."""
    return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def _plain(value: Any) -> Any:
    """`value` reduced to what canonical JSON can hold and read back identically: text
    for other objects and non-finite floats, '?' for unpaired surrogates. Only used
    for a record that canonical() refuses, so that a bad value never stops the writer."""
    if isinstance(value, dict):
        return {_plain(str(k)): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, str):
        return value.encode("utf-8", "replace").decode("utf-8")
    if value is None or isinstance(value, (bool, int)):
        return value
    if isinstance(value, float) and math.isfinite(value):
        return value
    return _plain(str(value))


class Sealed(NamedTuple):
    """A record with its place in the chain: the line written (no newline), its seq and hash."""

    seq: int
    hash: str
    line: bytes


def seal(entry: dict[str, Any], replica: str, seq: int, prev: str) -> Sealed:
    record = {**entry, "replica": replica, "seq": seq, "prev": prev}
    record.pop("hash", None)
    try:
        body = canonical(record)
    except (TypeError, ValueError):  # UnicodeEncodeError is a ValueError
        body = canonical(_plain(record))
    digest = hashlib.sha256(body).hexdigest()
    # `hash` goes last, after the sorted fields it covers: cheaper than serializing
    # twice, and the verifier only needs the hash to match the other fields.
    return Sealed(seq, digest, body[:-1] + b',"hash":"' + digest.encode() + b'"}')


def _sealed_from_line(line: bytes) -> Sealed | None:
    try:
        record = json.loads(line)
        return Sealed(record["seq"], record["hash"], line)
    except (ValueError, TypeError, KeyError):
        return None


def default_replica(path: str | Path) -> str:
    """Stable across restarts, distinct for each audit file on a host (two gateways
    cannot share one file: see AuditFile.open)."""
    where = hashlib.sha256(os.path.abspath(path).encode()).hexdigest()[:8]
    return f"{socket.gethostname()}-{where}"


# Reading JSONL files from the end


def _lines_backwards(path: Path, block: int = 1 << 16) -> Iterator[bytes]:
    """The complete lines of a regular file, last first (a trailing partial line is skipped)."""
    try:
        if not stat.S_ISREG(path.stat().st_mode):
            return
        handle = path.open("rb")
    except FileNotFoundError:
        return
    with handle:
        position = handle.seek(0, os.SEEK_END)
        rest = b""
        in_tail = True  # still in the bytes after the last newline: nothing, or a partial line
        while position > 0:
            step = min(block, position)
            position -= step
            handle.seek(position)
            lines = (handle.read(step) + rest).split(b"\n")
            rest = lines.pop(0)  # may be the end of a line that starts further back
            if in_tail and lines:
                lines.pop()
                in_tail = False
            yield from (line for line in reversed(lines) if line)
        if rest and not in_tail:
            yield rest


def _chain_fields(line: bytes) -> dict[str, Any] | None:
    try:
        record = json.loads(line)
    except ValueError:
        return None
    if (isinstance(record, dict) and isinstance(record.get("seq"), int) and isinstance(record.get("hash"), str)
            and isinstance(record.get("replica"), str)):
        return record
    return None


# The local file


class AuditFile:
    """The local JSONL file and the chain state. Used from one thread at a time (the
    AuditLog's worker thread): nothing here is async."""

    def __init__(self, path: str | Path, *, replica: str | None = None, max_bytes: int = 100 * 1024 * 1024,
                 keep: int = 10) -> None:
        self.path = Path(path)
        self.replica = replica or default_replica(self.path)
        self.max_bytes = max_bytes
        self.keep = keep
        self.seq = 0                # the last seq written
        self.prev = ZERO_HASH       # its hash
        self.resumed = False
        self.fd: int | None = None
        self.size = 0               # bytes in the file that end on a complete record
        self.regular = True         # a regular file (not a device): rotated, locked, read back
        self._rotation_failing = False

    def files(self) -> list[Path]:
        """The current file and the rotated ones, newest first."""
        return [self.path, *(self.rotated(n) for n in range(1, self.keep + 1))]

    def rotated(self, n: int) -> Path:
        return self.path.with_name(f"{self.path.name}.{n}")

    def open(self) -> None:
        """Open for appending (if not open), resuming the chain the first time."""
        if self.fd is not None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o666)
        try:
            # A device or pipe (e.g. /dev/stdout) is written to, never locked, cut,
            # read back or rotated: those are for files this gateway owns.
            self.regular = stat.S_ISREG(os.fstat(fd).st_mode)
            size = 0
            if self.regular:
                try:
                    # Two writers on one file would interleave two chains under one replica id.
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    raise OSError(f"{self.path} is in use by another gateway process") from None
                size = self._cut_partial_line(fd)
            if not self.resumed:
                self._resume()
        except BaseException:
            os.close(fd)
            raise
        self.fd, self.size = fd, size

    def _cut_partial_line(self, fd: int) -> int:
        """A file that does not end in a newline was cut short mid-write (a crash, a full
        disk): that record was never completed, so the chain continues from the last
        whole one. Returns the size kept."""
        size = os.fstat(fd).st_size
        if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
            return size
        keep = size
        while keep > 0:
            start = max(0, keep - (1 << 16))
            newline = os.pread(fd, keep - start, start).rfind(b"\n")
            if newline >= 0:
                keep = start + newline + 1
                break
            keep = start
        log.warning("audit file %s ended in a partial record (%d bytes, a write cut short): removed them: %r",
                    self.path, size - keep, os.pread(fd, min(size - keep, 200), keep))
        os.ftruncate(fd, keep)
        return keep

    def _resume(self) -> None:
        """Continue the chain from the newest record of this replica on disk (the current
        file, or the newest rotated one if a rotation happened just before a stop)."""
        last = None
        for path in self.files():
            last = next(filter(None, map(_chain_fields, _lines_backwards(path))), None)
            if last is not None:
                break
        if last is not None and last["replica"] == self.replica:
            self.seq, self.prev = last["seq"], last["hash"]
        elif last is not None:
            log.warning("audit file %s was written by replica %r, this is %r: a new chain starts at seq 1",
                        self.path, last["replica"], self.replica)
        self.resumed = True

    def append(self, entries: list[dict[str, Any]]) -> list[Sealed]:
        """Seal and write `entries`; the chain advances only if the write succeeds.
        Raises OSError (the file is then closed, and reopened by the next call)."""
        self.open()
        sealed, seq, prev = [], self.seq, self.prev
        for entry in entries:
            seq += 1
            sealed.append(record := seal(entry, self.replica, seq, prev))
            prev = record.hash
        if sealed:
            self._write(b"".join(record.line + b"\n" for record in sealed))
            self.seq, self.prev = seq, prev
            if self.size >= self.max_bytes and self.regular:
                self.rotate()
        return sealed

    def _write(self, data: bytes) -> None:
        assert self.fd is not None
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self.fd, view):]
        except OSError:
            # Take back a partial write, so that the retry starts on a line boundary.
            try:
                if self.regular:
                    os.ftruncate(self.fd, self.size)
            except OSError:
                pass  # the next open() cuts a partial last line
            self.close()
            raise
        self.size += len(data)

    def rotate(self) -> None:
        """audit.jsonl -> .1 -> .2 ... -> .keep (the oldest is dropped). The chain goes on
        in a new audit.jsonl."""
        self.close()
        if self.path.exists() and not stat.S_ISREG(self.path.stat().st_mode):
            return
        try:
            for n in range(self.keep, 0, -1):
                source = self.path if n == 1 else self.rotated(n - 1)
                if source.exists():
                    os.replace(source, self.rotated(n))
        except OSError as exc:
            if not self._rotation_failing:
                log.error("audit file rotation failed, %s keeps growing: %s", self.path, exc)
            self._rotation_failing = True
            return
        self._rotation_failing = False
        try:
            self.open()  # the new file exists at once (for tail -F, verify, the admin API)
        except OSError:
            pass  # not now: the next write opens it, and fails there if it must

    def sealed_between(self, after_seq: int, after_hash: str, before_seq: int, *,
                       limit: int = 100_000) -> list[Sealed] | None:
        """This replica's records after (after_seq, after_hash) and before before_seq, oldest
        first, read back from the files; None when that record is not found (another chain)
        or there are more than `limit`."""
        found: list[Sealed] = []
        for path in self.files():
            for line in _lines_backwards(path):
                record = _chain_fields(line)
                if record is None or record["replica"] != self.replica or record["seq"] >= before_seq:
                    continue
                if record["seq"] <= after_seq:
                    return found[::-1] if (record["seq"], record["hash"]) == (after_seq, after_hash) else None
                found.append(Sealed(record["seq"], record["hash"], line))
                if len(found) > limit:
                    return None
        return None

    def close(self) -> None:
        if self.fd is not None:
            fd, self.fd = self.fd, None
            os.close(fd)


# The fleet-wide copy: a Redis Stream, with a spool for when Redis is away


class Spool:
    """Lines written to the local file but not yet to the stream, oldest first. A file,
    so that a restart keeps them; `offset` (bytes already sent) lives in memory only:
    after a restart, AuditStream learns from Redis where the stream stands.
    Used from one thread at a time."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.count = 0              # lines after offset

    def load(self) -> None:
        try:
            with self.path.open("r+b") as handle:
                data = handle.read()
                complete = data.rfind(b"\n") + 1
                if complete < len(data):  # a write cut short: that record is still in the local file
                    log.warning("audit spool %s ended in a partial line: removed it", self.path)
                    handle.truncate(complete)
                self.count = data.count(b"\n")
        except FileNotFoundError:
            self.count = 0
        self.offset = 0

    def append(self, lines: Iterable[bytes]) -> None:
        data = b"".join(line + b"\n" for line in lines)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("ab") as handle:
            size = handle.tell()
            try:
                handle.write(data)
                handle.flush()
            except OSError:
                handle.truncate(size)
                raise
        self.count += data.count(b"\n")

    def peek(self, n: int) -> list[bytes]:
        try:
            with self.path.open("rb") as handle:
                handle.seek(self.offset)
                lines = [line[:-1] for line in itertools.islice(handle, min(n, self.count))]
        except FileNotFoundError:
            lines = []
        if not lines:  # removed or cut behind our back: nothing left to replay
            log.error("audit spool %s lost %d records before they were replayed", self.path, self.count)
            self.clear()
        return lines

    def advance(self, lines: list[bytes]) -> None:
        """`lines` (from peek) are in the stream; once every line is, empty the file."""
        self.offset += sum(len(line) + 1 for line in lines)
        self.count -= len(lines)
        if self.count == 0:
            self.clear()

    def skip_through(self, digest: str) -> bool:
        """Advance past the line whose hash is `digest`, if it is in the spool."""
        marker = f',"hash":"{digest}"}}'.encode()
        skipped: list[bytes] = []
        with self.path.open("rb") as handle:
            handle.seek(self.offset)
            for line in itertools.islice(handle, self.count):
                skipped.append(line[:-1])
                if line[:-1].endswith(marker):
                    self.advance(skipped)
                    return True
        return False

    def clear(self) -> None:
        # One truncate: the spool is either whole or empty. A crash before it only
        # means that the next start skips, by the acked mark in Redis, what was sent.
        with self.path.open("ab") as handle:
            handle.truncate(0)
        self.offset = self.count = 0


class AuditStream:
    """Fleet mode: every record also goes to the capped stream `{ns}:audit` (field
    `record`: the line as written locally), in order per replica.

    Each batch is one MULTI/EXEC that XADDs the lines and sets this replica's field of
    `{ns}:audit-acked` to "seq:hash" of the last one. After a start or any failure the
    stream task first reads that mark (`_sync`), so that:
      - a batch that reached Redis although its reply was lost is not sent again;
      - records that were written locally but never reached the stream or the spool
        (the process was killed in between) are read back from the local files and sent.
    Delivery is therefore exactly once while the mark and the pending records agree;
    should they not (Redis restored from an old backup, the chain reset), records are
    sent again rather than skipped: at least once, never lost. Consumers can de-duplicate
    by (replica, seq).
    """

    def __init__(self, redis: Any, namespace: str, spool_path: Path, file: AuditFile, metrics: Metrics, *,
                 maxlen: int, run_io: Callable[..., Any]) -> None:
        self.redis = redis
        tag = "{" + namespace + "}"
        self.key, self.acked_key = f"{tag}:audit", f"{tag}:audit-acked"
        self.maxlen = maxlen
        self.spool = Spool(spool_path)
        self.file = file
        self.metrics = metrics
        self._io = run_io                     # runs a blocking function on the audit thread
        self.fresh: deque[Sealed] = deque()   # written locally, neither sent nor spooled yet
        self.written_seq: int | None = None   # the last seq in the local file (None: not yet open)
        self.synced = False
        self.up: bool | None = None           # None: not tried yet
        self.ok = True                        # False: records can reach neither Redis nor the spool
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self._io(self.spool.load)
        self.metrics.audit_spooled.set(self.spool.count)
        self._task = asyncio.get_running_loop().create_task(self._run())

    def push(self, sealed: list[Sealed], written_seq: int) -> None:
        """Records just written to the local file (called by the writer, in order)."""
        self.fresh.extend(sealed)
        self.written_seq = written_seq
        self._wake.set()

    async def _run(self) -> None:
        delay = RETRY_S[0]
        while True:
            if self.synced and not self.fresh and not self.spool.count:
                self._wake.clear()
                await self._wake.wait()
            try:
                await self._step()
            except _NotYet:
                await asyncio.sleep(RETRY_S[0])
            except Exception as exc:  # Redis errors, and anything unexpected: retry, never stop
                self._went_down(exc)
                await self._spill()
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_S[1])
            else:
                delay = RETRY_S[0]

    async def _step(self) -> None:
        if not self.synced:
            await self._sync()
        elif self.spool.count:
            lines = await self._io(self.spool.peek, BATCH)
            if lines:
                await self._send(lines, _sealed_from_line(lines[-1]))
                await self._io(self.spool.advance, lines)
            self.metrics.audit_spooled.set(self.spool.count)
        elif self.fresh:
            batch = list(itertools.islice(self.fresh, BATCH))
            await self._send([record.line for record in batch], batch[-1])
            for _ in batch:
                self.fresh.popleft()
        if self.up is False:
            log.warning("audit stream %s: Redis answers again; %d spooled records to replay", self.key, self.spool.count)
        self.up = True

    async def _send(self, lines: list[bytes], last: Sealed | None) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            for line in lines:
                pipe.xadd(self.key, {"record": line}, maxlen=self.maxlen, approximate=True)
            if last is not None:
                pipe.hset(self.acked_key, self.file.replica, f"{last.seq}:{last.hash}")
            await pipe.execute()

    async def _sync(self) -> None:
        """Where does the stream stand for this replica? Drop what it already has from the
        pending records; send what it lacks from the local files."""
        if self.written_seq is None:
            raise _NotYet  # the local file was never opened: nothing written, nothing to know
        acked = await self.redis.hget(self.acked_key, self.file.replica)
        if acked:
            seq_text, _, digest = (acked.decode() if isinstance(acked, bytes) else acked).partition(":")
            first = await self._first_pending_seq()
            if first is not None and int(seq_text) >= first:
                await self._drop_through(digest)
            else:
                before = first if first is not None else self.written_seq + 1
                if int(seq_text) < before - 1:
                    await self._backfill(int(seq_text), digest, before)
        self.synced = True

    async def _first_pending_seq(self) -> int | None:
        if self.spool.count:
            lines = await self._io(self.spool.peek, 1)
            head = _sealed_from_line(lines[0]) if lines else None
            return head.seq if head else None
        return self.fresh[0].seq if self.fresh else None

    async def _drop_through(self, digest: str) -> None:
        if self.spool.count and await self._io(self.spool.skip_through, digest):
            self.metrics.audit_spooled.set(self.spool.count)
            return
        for index, record in enumerate(self.fresh):
            if record.hash == digest:
                await self._io(self.spool.clear)  # everything spooled precedes it
                self.metrics.audit_spooled.set(0)
                for _ in range(index + 1):
                    self.fresh.popleft()
                return

    async def _backfill(self, after_seq: int, after_hash: str, before_seq: int) -> None:
        missing = await self._io(self.file.sealed_between, after_seq, after_hash, before_seq)
        if missing is None:
            log.warning("audit stream %s: its last record of %s (seq %d) is not in the local files; "
                        "not back-filling", self.key, self.file.replica, after_seq)
            return
        log.warning("audit stream %s: sending %d records written locally but never sent (seq %d..%d)",
                    self.key, len(missing), after_seq + 1, before_seq - 1)
        for start in range(0, len(missing), BATCH):
            batch = missing[start:start + BATCH]
            await self._send([record.line for record in batch], batch[-1])

    def _went_down(self, exc: BaseException) -> None:
        if self.up is not False:
            log.warning("audit stream %s unavailable, spooling to %s: %r", self.key, self.spool.path, exc)
        self.up = self.synced = False

    async def _spill(self) -> None:
        """Move what waits in memory to the spool, behind what is already there."""
        if not self.fresh:
            return
        batch = list(self.fresh)
        try:
            await self._io(self.spool.append, [record.line for record in batch])
        except OSError as exc:
            if self.ok:
                log.error("audit spool %s cannot be written, records wait in memory: %s", self.spool.path, exc)
            self.ok = False
            return
        for _ in batch:
            self.fresh.popleft()
        self.ok = True
        self.metrics.audit_spooled.set(self.spool.count)

    async def close(self, timeout: float) -> None:
        """Send what waits in memory while Redis answers (up to `timeout`), spool the rest."""
        deadline = asyncio.get_running_loop().time() + timeout
        while self.fresh and self.up and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)
        if self._task is not None:
            self._task.cancel()
            # Bounded: a Redis client caught mid-reconnect can swallow a cancellation.
            await asyncio.wait([self._task], timeout=2)
        await self._spill()


class _NotYet(Exception):
    """The stream cannot sync yet (the local file was never opened): retry quietly."""


# The audit log the gateway uses


class AuditLog:
    def __init__(self, path: str | Path, metrics: Metrics, *, replica: str | None = None,
                 max_bytes: int = 100 * 1024 * 1024, keep: int = 10, capacity: int = CAPACITY,
                 redis: Any = None, namespace: str = "fgw", state_dir: str | Path = ".gateway-state",
                 stream_maxlen: int = 1_000_000) -> None:
        self.file = AuditFile(path, replica=replica, max_bytes=max_bytes, keep=keep)
        self.path = self.file.path
        self.metrics = metrics
        self.capacity = capacity
        # Refuse new requests a little before the queue is full: the room left is for the
        # records of requests already admitted and of the 503s that refuse the others.
        self.high_water = capacity - max(1, capacity // 5)
        self.queue: deque[dict[str, Any]] = deque()
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
                                      metrics, maxlen=stream_maxlen, run_io=self._io)

    @classmethod
    def from_config(cls, config: AuditConfig, metrics: Metrics, *, state_dir: str | Path, redis: Any = None,
                    namespace: str = "fgw") -> AuditLog:
        return cls(config.path, metrics, replica=config.replica, max_bytes=config.max_bytes, keep=config.keep,
                   redis=redis, namespace=namespace, state_dir=state_dir, stream_maxlen=config.stream_maxlen)

    @property
    def healthy(self) -> bool:
        return self.file_ok and len(self.queue) < self.high_water and (self.stream is None or self.stream.ok)

    @property
    def replica(self) -> str:
        return self.file.replica

    def record(self, entry: dict[str, Any]) -> None:
        """Queue one request's record (the request path: cheap, never blocks)."""
        if len(self.queue) >= self.capacity:
            self.metrics.audit_lost.inc()
            log.error("audit queue full: record %s lost", entry.get("decision_id"))
            return
        self.queue.append(entry)
        self._wake.set()

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
            if not self.queue and self.file_ok:
                self._wake.clear()
                await self._wake.wait()
            # Read, don't take: a record leaves the queue only once it is in the file.
            batch = list(itertools.islice(self.queue, BATCH))
            self._busy = True
            try:
                sealed = await self._io(self.file.append, batch)  # an empty batch just reopens the file
            except Exception as exc:  # OSError; anything else is a bug, but must not lose records either
                if self.file_ok:
                    log.error("audit file %s cannot be written, refusing requests until it can: %r", self.path, exc)
                self.file_ok = False
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_S[1])
                continue
            finally:
                self._busy = False
            if not self.file_ok:
                log.warning("audit file %s writable again", self.path)
            self.file_ok, delay = True, RETRY_S[0]
            for _ in batch:
                self.queue.popleft()
            if self.stream is not None:
                self.stream.push(sealed, self.file.seq)

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


# Verification (`gateway audit verify`)


@dataclass
class Problem:
    file: str
    line: int
    seq: int | None
    replica: str | None
    kind: str       # garbage | malformed | edited | removed | reordered | duplicate | prev-mismatch | unreadable
    message: str


@dataclass
class ChainEnd:
    first_seq: int
    last_seq: int
    last_hash: str
    records: int
    where: str      # file:line of the last record


@dataclass
class Verification:
    files: list[str]
    records: int = 0
    last_hash: str | None = None
    replicas: dict[str, ChainEnd] = field(default_factory=dict)
    problem: Problem | None = None

    @property
    def ok(self) -> bool:
        return self.problem is None

    def as_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok, "files": self.files, "records": self.records, "last_hash": self.last_hash,
            "replicas": {name: {"first_seq": end.first_seq, "last_seq": end.last_seq, "last_hash": end.last_hash,
                                "records": end.records} for name, end in self.replicas.items()},
            "error": None if self.problem is None else vars(self.problem),
        }


class _Unreadable(Exception):
    def __init__(self, path: str, message: str) -> None:
        super().__init__(message)
        self.path = path


Numbered = tuple[str, int, bytes]  # file, line number (from 1), the line with its newline if it had one
LOOKAHEAD = 10_000  # lines read past a seq gap, looking for the missing record (reordered, or removed?)


def _numbered_lines(paths: Iterable[str | Path]) -> Iterator[Numbered]:
    for path in paths:
        try:
            handle = open(path, "rb")
        except OSError as exc:
            raise _Unreadable(str(path), f"{path}: cannot be read: {exc.strerror or exc}") from None
        with handle:
            for number, line in enumerate(handle, 1):
                yield str(path), number, line


def verify(paths: list[str | Path]) -> Verification:
    """Check the records of `paths`, read in that order (oldest file first): every hash,
    and per replica every seq and prev link. Stops at the first bad record."""
    result = Verification([str(path) for path in paths])
    lines = _numbered_lines(paths)
    try:
        for file, number, raw in lines:
            result.problem = _check(result, file, number, raw, lines)
            if result.problem is not None:
                break
    except _Unreadable as exc:
        result.problem = Problem(exc.path, 0, None, None, "unreadable", str(exc))
    return result


def verify_lines(lines: Iterable[bytes], source: str = "stream") -> Verification:
    """The same check over lines from elsewhere (e.g. the Redis stream's `record` fields)."""
    result = Verification([source])
    numbered = ((source, number, line) for number, line in enumerate(lines, 1))
    for file, number, raw in numbered:
        result.problem = _check(result, file, number, raw, numbered)
        if result.problem is not None:
            break
    return result


def _check(result: Verification, file: str, number: int, raw: bytes, rest: Iterator[Numbered]) -> Problem | None:
    def problem(kind: str, message: str) -> Problem:
        return Problem(file, number, record.get("seq") if isinstance(record, dict) else None,
                       record.get("replica") if isinstance(record, dict) else None, kind, message)

    record: Any = None
    cut = "" if raw.endswith(b"\n") else " (the last line is cut short)"
    if not raw.strip():
        return problem("garbage", "empty line")
    try:
        record = json.loads(raw)
    except UnicodeDecodeError:
        return problem("garbage", f"not UTF-8 text{cut}")
    except ValueError:
        return problem("garbage", f"not JSON{cut}")
    if not isinstance(record, dict):
        return problem("garbage", "not a JSON object")
    record_or_problem = _chain_of(record)
    if isinstance(record_or_problem, str):
        return problem("malformed", record_or_problem)
    replica, seq, prev, digest = record_or_problem
    body = {k: v for k, v in record.items() if k != "hash"}
    try:
        recomputed = hashlib.sha256(canonical(body)).hexdigest()
    except ValueError:
        recomputed = None
    if recomputed != digest:
        return problem("edited", "hash mismatch: the record is not what was written (edited after it was written)")

    chain = result.replicas.get(replica)
    where = f"{file}:{number}"
    if chain is None:
        if seq == 1 and prev != ZERO_HASH:
            return problem("prev-mismatch", "the first record of a chain (seq 1) must have prev 000...0")
        chain = result.replicas[replica] = ChainEnd(seq, seq - 1, prev, 0, where)
    expected = chain.last_seq + 1
    if seq > expected:
        found = _look_ahead(rest, replica, expected)
        if found is not None:
            return problem("reordered", f"seq {seq} comes before seq {expected} ({found}): records out of order")
        missing = f"seq {expected}" if seq == expected + 1 else f"seq {expected}..{seq - 1}"
        return problem("removed", f"seq gap after seq {chain.last_seq} ({chain.where}): {missing} missing (removed)")
    if seq < expected:
        if seq == chain.last_seq and digest == chain.last_hash:
            return problem("duplicate", f"the same record as {chain.where}")
        return problem("reordered", f"seq goes backwards: seq {seq} after seq {chain.last_seq} ({chain.where})")
    if prev != chain.last_hash:
        return problem("prev-mismatch", f"prev is not the hash of seq {chain.last_seq} ({chain.where}): "
                                        "that record was replaced, or records were removed and renumbered")
    chain.last_seq, chain.last_hash, chain.where = seq, digest, where
    chain.records += 1
    result.records += 1
    result.last_hash = digest
    return None


def _chain_of(record: dict[str, Any]) -> tuple[str, int, str, str] | str:
    """(replica, seq, prev, hash) of a record, or what is wrong with them."""
    replica, seq, prev, digest = (record.get(k) for k in ("replica", "seq", "prev", "hash"))
    for name, value in (("replica", replica), ("seq", seq), ("prev", prev), ("hash", digest)):
        if value is None:
            return f"not an audit record: no {name!r}"
    if not isinstance(replica, str) or not replica:
        return "'replica' is not a non-empty string"
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 1:
        return "'seq' is not a positive integer"
    for name, value in (("prev", prev), ("hash", digest)):
        if not isinstance(value, str) or not re.fullmatch(r"[0-9a-f]{64}", value):
            return f"{name!r} is not a SHA-256 hex digest"
    return replica, seq, prev, digest


def _look_ahead(rest: Iterator[Numbered], replica: str, seq: int) -> str | None:
    """file:line of this replica's record `seq` among the next lines, if there."""
    for file, number, raw in itertools.islice(rest, LOOKAHEAD):
        record = _chain_fields(raw)
        if record is not None and record["replica"] == replica and record["seq"] == seq:
            return f"{file}:{number}"
    return None


def render(result: Verification) -> str:
    """`gateway audit verify` without --json."""
    problem = result.problem
    if problem is not None:
        at = f"{problem.file}:{problem.line}" if problem.line else problem.file
        which = "" if problem.seq is None else f"seq {problem.seq}" + (f" (replica {problem.replica})" if problem.replica else "")
        return (f"FAILED {at}: {which + ': ' if which else ''}{problem.kind}: {problem.message}\n"
                f"{result.records} records verified before it")
    lines = [f"OK: {result.records} records in {len(result.files)} file(s), hash chain intact"]
    for name, end in result.replicas.items():
        start = "" if end.first_seq == 1 else " (starts past seq 1: earlier records are in files not given)"
        lines.append(f"  replica {name}: seq {end.first_seq}..{end.last_seq}{start}")
    lines.append(f"last hash {result.last_hash or '-'}")
    return "\n".join(lines)

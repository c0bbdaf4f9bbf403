"""The fleet-wide copy: a Redis Stream, with a spool for when Redis is away.

In fleet mode the lines `AuditLog` wrote to the local file go to `AuditStream`,
which XADDs them to the stream `{ns}:audit`. What Redis cannot take is spooled to
a file under state_dir and replayed, in order, once Redis answers again. Records
go in batches, each batch waiting up to GATHER_S for more: the stream lags the file
by a few milliseconds, and under load a round trip carries many records.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
from collections import deque
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from gateway.audit.chain import AuditFile, Sealed, _sealed_from_line
from gateway.audit.files import FileMode
from gateway.metrics import Metrics

log = logging.getLogger("gateway.audit")

BATCH = 500                 # records per file write and per Redis transaction
RETRY_S = (0.05, 1.0)       # first and longest wait between retries of a failed write or send
GATHER_S = 0.005            # a batch for the stream waits this long for more records ...
GATHER_RECORDS = 64         # ... unless it has this many


# One batch, atomically: XADD each line, set this replica's acked mark, then trim the
# oldest entries until the stream holds at most `maxlen` entries and `max_bytes` bytes
# of records. The bytes are counted in a key beside the stream (a stream does not
# know its size); a missing count (a stream written by an older version, or the
# key lost) is estimated from the newest entries. A script rather than MULTI/EXEC:
# one reply to parse instead of one per line, and no thread on Redis Cluster (all
# keys carry the {namespace} tag: one slot).
# KEYS: stream, acked hash, byte count. ARGV: maxlen, max_bytes, replica, mark ("" for none), lines...
_APPEND = """
local maxlen, max_bytes = tonumber(ARGV[1]), tonumber(ARGV[2])
if redis.call('EXISTS', KEYS[3]) == 0 then
  local length, sample, sampled = redis.call('XLEN', KEYS[1]), redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 100), 0
  for _, entry in ipairs(sample) do sampled = sampled + #entry[2][2] end
  redis.call('SET', KEYS[3], #sample > 0 and math.floor(length * sampled / #sample) or 0)
end
local added = 0
for i = 5, #ARGV do
  redis.call('XADD', KEYS[1], '*', 'record', ARGV[i])
  added = added + #ARGV[i]
end
if ARGV[4] ~= '' then redis.call('HSET', KEYS[2], ARGV[3], ARGV[4]) end
local size, length = redis.call('INCRBY', KEYS[3], added), redis.call('XLEN', KEYS[1])
while (size > max_bytes or length > maxlen) and length > 0 do
  local oldest, keep = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 256), nil
  local drop = {}
  for _, entry in ipairs(oldest) do
    if size <= max_bytes and length <= maxlen then keep = entry[1] break end
    size, length = size - #entry[2][2], length - 1
    drop[#drop + 1] = entry[1]
  end
  if keep then redis.call('XTRIM', KEYS[1], 'MINID', keep) else redis.call('XDEL', KEYS[1], unpack(drop)) end
end
if length == 0 then size = 0 end
redis.call('SET', KEYS[3], math.max(size, 0))
return #ARGV - 4
"""


class Spool:
    """Lines written to the local file but not yet to the stream, oldest first. A file,
    so that a restart keeps them; `offset` (bytes already sent) lives in memory only:
    after a restart, AuditStream learns from Redis where the stream stands.
    Used from one thread at a time."""

    def __init__(self, path: Path, mode: FileMode = FileMode()) -> None:
        self.path = path
        self.mode = mode
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
        with open(self.mode.open(self.path, os.O_WRONLY | os.O_APPEND), "ab") as handle:
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
        with open(self.mode.open(self.path, os.O_WRONLY | os.O_APPEND), "ab") as handle:
            handle.truncate(0)
        self.offset = self.count = 0


class AuditStream:
    """Fleet mode: every record also goes to the capped stream `{ns}:audit` (field
    `record`: the line as written locally), in order per replica. Capped in entries
    (`maxlen`) and in the bytes of its records (`max_bytes`): the oldest go first.
    The records of requests never authenticated have a stream of their own
    (`{ns}:audit-unauthenticated`, see gateway/audit/log.py).

    Each batch is one script (atomic, as MULTI/EXEC would be) that XADDs the lines and
    sets this replica's field of `{ns}:audit-acked` to "seq:hash" of the last one. After a start or any failure the
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
                 maxlen: int, max_bytes: int, run_io: Callable[..., Any], name: str = "audit",
                 mode: FileMode = FileMode()) -> None:
        self.redis = redis
        tag = "{" + namespace + "}"
        self.key, self.acked_key, self.bytes_key = f"{tag}:{name}", f"{tag}:{name}-acked", f"{tag}:{name}-bytes"
        self.maxlen = maxlen
        self.max_bytes = max_bytes
        self._spooled = 0                     # this stream's share of gateway_audit_spooled
        self.spool = Spool(spool_path, mode)
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
        self._append = redis.register_script(_APPEND)

    async def start(self) -> None:
        await self._io(self.spool.load)
        self._report_spooled()
        self._task = asyncio.get_running_loop().create_task(self._run())

    def _report_spooled(self) -> None:
        """gateway_audit_spooled is the sum over the process's streams: each adds its change."""
        self.metrics.audit_spooled.inc(self.spool.count - self._spooled)
        self._spooled = self.spool.count

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
            if self.synced and not self.spool.count and len(self.fresh) < GATHER_RECORDS:
                # The records of the next few ms go in the same script: under load one
                # round trip per batch instead of nearly one per record.
                await asyncio.sleep(GATHER_S)
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
            self._report_spooled()
        elif self.fresh:
            batch = list(itertools.islice(self.fresh, BATCH))
            await self._send([record.line for record in batch], batch[-1])
            for _ in batch:
                self.fresh.popleft()
        if self.up is False:
            log.warning("audit stream %s: Redis answers again; %d spooled records to replay", self.key, self.spool.count)
        self.up = True

    async def _send(self, lines: list[bytes], last: Sealed | None) -> None:
        mark = f"{last.seq}:{last.hash}" if last is not None else ""
        await self._append([self.key, self.acked_key, self.bytes_key], [self.maxlen, self.max_bytes, self.file.replica, mark, *lines])

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
            self._report_spooled()
            return
        for index, record in enumerate(self.fresh):
            if record.hash == digest:
                await self._io(self.spool.clear)  # everything spooled precedes it
                self._report_spooled()
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
        self._report_spooled()

    async def close(self, timeout: float) -> None:
        """Send what waits in memory unless Redis is known down (up to `timeout`), spool the rest."""
        deadline = asyncio.get_running_loop().time() + timeout
        while self.fresh and self.up is not False and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)
        if self._task is not None:
            self._task.cancel()
            # Bounded: a Redis client caught mid-reconnect can swallow a cancellation.
            await asyncio.wait([self._task], timeout=2)
        await self._spill()


class _NotYet(Exception):
    """The stream cannot sync yet (the local file was never opened): retry quietly."""

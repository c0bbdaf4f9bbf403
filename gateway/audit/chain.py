"""The record format and the local file: canonical JSON, sealing a record into the
chain, and `AuditFile`, the rotating JSONL file that holds the chain.

The chain: every record carries `replica` (this writer's stable id), `seq`
(1, 2, ... per replica, across restarts and rotations), `prev` (the hash of
the record before, 64 zeros before the first), `format` (the canonical form,
gateway/audit/canonical.py) and `hash`, the SHA-256 of the record's canonical
JSON (sorted keys, no spaces, UTF-8) without `hash`.
`verify()` (`gateway audit verify`) recomputes all of it.

Canonical JSON is orjson's (sorted keys): its strings are escaped as Python's json
module escapes them with ensure_ascii off, and its floats are the shortest form that
reads back to the same float. Python's json writes a few floats otherwise (1e-05
where orjson writes 0.00001); records written by earlier versions with that
serializer verify too (`legacy_canonical`).

A line holds one record for every reader: canonical JSON escapes every control
character, and the line escapes the three others some readers end a line at
(U+0085, U+2028, U+2029: Python's str.splitlines, JavaScript, Unicode line
breaking) as JSON escape sequences. The hash stays over the canonical
form, which a verifier gets by parsing the line and serializing it again, so
files written before and after this escaping verify alike.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import logging
import math
import os
import socket
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple, Union

from gateway.audit.bounds import MAX_FIELD_CHARS, bounded
from gateway.audit.canonical import FORMAT, canonical
from gateway.audit.files import FileMode, sync_directory

log = logging.getLogger("gateway.audit")

ZERO_HASH = "0" * 64


# The record format


def _plain(value: Any) -> Any:
    """`value` reduced to what canonical JSON can hold and read back identically: text
    for other objects, non-finite floats and integers beyond 64 bits, '?' for unpaired
    surrogates. Only used
    for a record that canonical() refuses, so that a bad value never stops the writer."""
    if isinstance(value, dict):
        return {_plain(str(k)): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, str):
        return value.encode("utf-8", "replace").decode("utf-8")
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value if -(2**63) <= value < 2**64 else str(value)  # what orjson can write as a number
    if isinstance(value, float) and math.isfinite(value):
        return value
    return _plain(str(value))


class Sealed(NamedTuple):
    """A record with its place in the chain: the line written (no newline), its seq and hash."""

    seq: int
    hash: str
    line: bytes


def seal(entry: dict[str, Any], replica: str, seq: int, prev: str) -> Sealed:
    """`entry` in the chain, cut to the bounds of gateway/audit/bounds.py. A line no
    longer than the longest string a record may keep (nearly every record's) holds no
    string to cut: only a longer one is looked at, and sealed again if cut."""
    sealed = _sealed(entry, replica, seq, prev)
    if len(sealed.line) <= MAX_FIELD_CHARS:
        return sealed
    cut = bounded(entry)
    return sealed if cut is entry else _sealed(cut, replica, seq, prev)


def _sealed(entry: dict[str, Any], replica: str, seq: int, prev: str) -> Sealed:
    # An entry whose keys are in canonical order with the chain fields already among them
    # (the request path's records: gateway/request/app.py finish) keeps that order here,
    # and orjson sorts a sorted dict faster. Any other order gives the same bytes.
    record = {**entry, "replica": replica, "seq": seq, "prev": prev, "format": FORMAT}
    record.pop("hash", None)
    return _hashed(record, seq)


def seal_linear(entry: dict[str, Any], seq: int, prev: str) -> Sealed:
    """`entry` in a chain that has no replica id: the change log, one chain for the whole
    fleet, its head kept with the shared state and extended atomically. Never cut: a
    change record is kept whole, before and after."""
    record = {k: v for k, v in entry.items() if k not in ("hash", "replica")} | {"seq": seq, "prev": prev}
    return _hashed(record, seq)


def _hashed(record: dict[str, Any], seq: int) -> Sealed:
    try:
        body = canonical(record)
    except (TypeError, ValueError):  # UnicodeEncodeError is a ValueError
        body = canonical(_plain(record))
    digest = hashlib.sha256(body).hexdigest()
    # `hash` goes last, after the sorted fields it covers: cheaper than serializing
    # twice, and the verifier only needs the hash to match the other fields.
    return Sealed(seq, digest, one_line(body[:-1]) + b',"hash":"' + digest.encode() + b'"}')


# UTF-8 of the line separators JSON leaves raw: in valid UTF-8 these bytes are only ever
# these characters, and in canonical JSON they only occur inside strings.
_SEPARATORS = ((b"\xc2\x85", b"\\u0085"), (b"\xe2\x80\xa8", b"\\u2028"), (b"\xe2\x80\xa9", b"\\u2029"))


def one_line(body: bytes) -> bytes:
    """Canonical JSON with the separators some readers break lines at escaped: the same
    JSON value, on one line for every reader."""
    if body.isascii():
        return body
    for raw, escaped in _SEPARATORS:
        body = body.replace(raw, escaped)
    return body


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


def lines_backwards(path: Path, block: int = 1 << 16, needle: bytes | None = None,
                    max_bytes: int | None = None) -> Iterator[bytes]:
    """The complete lines of a regular file, last first (a trailing partial line is skipped).
    With `needle`, a block of the file without it is skipped whole, unsplit: lines that
    cannot contain it may be left out (callers still test the lines they get), and a search
    for a rare value reads at the speed of a substring search. With `max_bytes`, only the
    lines within that many bytes of the end."""
    try:
        if not stat.S_ISREG(path.stat().st_mode):
            return
        handle = path.open("rb")
    except FileNotFoundError:
        return
    with handle:
        end = position = handle.seek(0, os.SEEK_END)
        rest = b""
        in_tail = True  # still in the bytes after the last newline: nothing, or a partial line
        while position > 0:
            step = min(block, position, max_bytes - (end - position) if max_bytes is not None else position)
            if step <= 0:
                return  # read as far as asked: the line under way may be cut, so it is not given
            position -= step
            handle.seek(position)
            data = handle.read(step) + rest
            if needle is not None and needle not in data:
                first_newline = data.find(b"\n")
                rest = data if first_newline < 0 else data[:first_newline]  # a line's end, kept for its start
                in_tail = in_tail and first_newline < 0
                continue
            lines = data.split(b"\n")
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

# What `AuditFile.append` takes: a record, or a function that makes one from its place in
# the chain (replica, seq, prev), for a record that signs that place (a checkpoint).
Entry = Union[dict[str, Any], Callable[[str, int, str], dict[str, Any]]]



class AuditFile:
    """The local JSONL file and the chain state. Used from one thread at a time (the
    AuditLog's event loop or its worker thread, never both at once), except `sync()`,
    which the syncer's thread calls meanwhile: it only reads how much was written and
    fsyncs the descriptor. Nothing here is async."""

    def __init__(self, path: str | Path, *, replica: str | None = None, max_bytes: int = 100 * 1024 * 1024,
                 keep: int = 10, mode: FileMode = FileMode(), durable: bool = True) -> None:
        self.path = Path(path)
        self.mode = mode
        self.durable = durable      # fsync when a file is closed or created (audit.fsync is not `never`)
        self.written = 0            # bytes written since this object was made, in every file
        self.synced = 0             # ... of which known to be on disk
        self.replica = replica or default_replica(self.path)
        self.max_bytes = max_bytes
        self.keep = keep
        self.seq = 0                # the last seq written
        self.prev = ZERO_HASH       # its hash
        self.resumed = False
        self.fd: int | None = None
        self.size = 0               # bytes in the file that end on a complete record
        self.regular = True         # a regular file (not a device): rotated, locked, read back
        self._rotation_failed_at = -1  # the size at which rotation last failed

    def files(self) -> list[Path]:
        """The current file and the rotated ones, newest first."""
        return [self.path, *(self.rotated(n) for n in range(1, self.keep + 1))]

    def rotated(self, n: int) -> Path:
        return self.path.with_name(f"{self.path.name}.{n}")

    def open(self) -> None:
        """Open for appending (if not open), resuming the chain the first time."""
        if self.fd is not None:
            return
        created = not self.path.exists()
        fd = self.mode.open(self.path, os.O_RDWR | os.O_APPEND)
        try:
            if created and self.durable:
                sync_directory(self.path)  # the new file's name survives a power cut too
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
            last = next(filter(None, map(_chain_fields, lines_backwards(path))), None)
            if last is not None:
                break
        if last is not None and last["replica"] == self.replica:
            self.seq, self.prev = last["seq"], last["hash"]
        elif last is not None:
            log.warning("audit file %s was written by replica %r, this is %r: a new chain starts at seq 1",
                        self.path, last["replica"], self.replica)
        self.resumed = True

    def append(self, entries: list[Entry]) -> list[Sealed]:
        """Seal and write `entries`; the chain advances only if the write succeeds.
        Raises OSError (the file is then closed, and reopened by the next call).
        Never rotates: the caller does, when `rotation_due`, off the event loop."""
        if self.fd is None:
            self.open()
        sealed, seq, prev = [], self.seq, self.prev
        for entry in entries:
            seq += 1
            made = entry if isinstance(entry, dict) else entry(self.replica, seq, prev)
            sealed.append(record := seal(made, self.replica, seq, prev))
            prev = record.hash
        if sealed:
            self._write(b"\n".join([record.line for record in sealed]) + b"\n")
            self.seq, self.prev = seq, prev
        return sealed

    @property
    def rotation_due(self) -> bool:
        # After a failed rotation, the next try waits for the next write.
        return self.regular and self.size >= self.max_bytes and self.size != self._rotation_failed_at

    def _write(self, data: bytes) -> None:
        assert self.fd is not None
        try:
            written = os.write(self.fd, data)
            if written < len(data):  # rare: a regular file takes all of a write, or fails
                view = memoryview(data)[written:]
                while view:
                    view = view[os.write(self.fd, view):]
        except OSError:
            # Take back a partial write, so that the retry starts on a line boundary.
            try:
                if self.regular:
                    os.ftruncate(self.fd, self.size)
            except OSError:
                pass  # the next open() cuts a partial last line
            self.close(sync=False)  # on the event loop, and the disk is failing: the reopened file syncs
            raise
        self.size += len(data)
        self.written += len(data)

    def sync(self) -> None:
        """fsync what was written so far (blocking: on the syncer's thread). The count is read
        before the call, so it never claims a write that came after."""
        target, fd = self.written, self.fd
        if not self.regular:  # a device or pipe: nothing to fsync
            self.synced = target
            return
        if fd is None or target <= self.synced:
            return
        try:
            os.fdatasync(fd)
        except OSError as exc:
            if exc.errno == errno.EBADF:
                return  # closed meanwhile, after a failed write: the reopened file is synced next
            raise
        self.synced = max(self.synced, target)

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
            if self._rotation_failed_at < 0:
                log.error("audit file rotation failed, %s keeps growing: %s", self.path, exc)
            self._rotation_failed_at = self.size
            return
        self._rotation_failed_at = -1
        self.size = 0
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
            for line in lines_backwards(path):
                record = _chain_fields(line)
                if record is None or record["replica"] != self.replica or record["seq"] >= before_seq:
                    continue
                if record["seq"] <= after_seq:
                    return found[::-1] if (record["seq"], record["hash"]) == (after_seq, after_hash) else None
                found.append(Sealed(record["seq"], record["hash"], line))
                if len(found) > limit:
                    return None
        return None

    def close(self, *, sync: bool = True) -> None:
        if self.fd is not None:
            fd, self.fd = self.fd, None
            try:
                if sync and self.durable and self.regular:
                    os.fdatasync(fd)
                    self.synced = self.written
            except OSError as exc:
                log.error("audit fsync of %s on close failed: %r", self.path, exc)
            finally:
                os.close(fd)

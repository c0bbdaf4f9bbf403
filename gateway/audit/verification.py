"""Verification (`gateway audit verify`): recompute every hash, and per replica
every seq and prev link, of records read from files or from the Redis stream; with
public keys and outside copies of checkpoints, also what gateway/audit/evidence.py
checks (signatures, removal at the end, replaced keys).

The change log (`gateway admin changes`) is chained the same way, as one chain for
the whole fleet: its records have a `change_id` and no `replica`, and are checked
as the chain `CHANGE_LOG`. Change records written before the log was chained (no
`hash`) are counted as unchained when they come before the first chained one.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.audit.canonical import FORMAT, canonical, legacy_canonical
from gateway.audit.chain import ZERO_HASH
from gateway.audit.checkpoints import Outside
from gateway.audit.evidence import Evidence
from gateway.audit.signing import PublicKey


@dataclass
class Problem:
    file: str
    line: int
    seq: int | None
    replica: str | None
    # garbage | malformed | edited | removed | reordered | duplicate | prev-mismatch | unreadable; with
    # evidence: replaced | bad-signature | unknown-key | unsigned | empty
    kind: str
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
    unchained: int = 0  # change records from before the change log was chained
    last_hash: str | None = None
    replicas: dict[str, ChainEnd] = field(default_factory=dict)
    problem: Problem | None = None
    evidence: Evidence = field(default_factory=Evidence)

    @property
    def ok(self) -> bool:
        return self.problem is None

    def as_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok, "files": self.files, "records": self.records, "unchained": self.unchained,
            "last_hash": self.last_hash,
            "replicas": {name: {"first_seq": end.first_seq, "last_seq": end.last_seq, "last_hash": end.last_hash,
                                "records": end.records} for name, end in self.replicas.items()},
            "keyed": self.evidence.keyed, "checkpoints": self.evidence.checkpoints,
            "outside_checkpoints": len(self.evidence.outside), "notes": self.evidence.notes,
            "error": None if self.problem is None else vars(self.problem),
        }


class _Unreadable(Exception):
    def __init__(self, path: str, message: str) -> None:
        super().__init__(message)
        self.path = path


Numbered = tuple[str, int, bytes]  # file, line number (from 1), the line with its newline if it had one
CHANGE_LOG = "change-log"  # the chain name change records are verified under
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


def verify(paths: list[str | Path], *, keys: Iterable[PublicKey] | None = None,
           outside: Iterable[Outside] = ()) -> Verification:
    """Check the records of `paths`, read in that order (oldest file first): every hash,
    and per replica every seq and prev link; with `keys`, every checkpoint's signature;
    against `outside` copies of checkpoints, that none is missing or replaced. Stops at
    the first finding."""
    result = Verification([str(path) for path in paths])
    result.evidence, bad_copy = Evidence.of(keys, outside)
    if bad_copy is not None:
        result.problem = Problem(*bad_copy)
        return result
    lines = _numbered_lines(paths)
    try:
        for file, number, raw in lines:
            result.problem = _check(result, file, number, raw, lines)
            if result.problem is not None:
                break
    except _Unreadable as exc:
        result.problem = Problem(exc.path, 0, None, None, "unreadable", str(exc))
    if result.problem is None:
        finding = result.evidence.finish(result.files, result.replicas, result.records)
        result.problem = None if finding is None else Problem(*finding)
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


def verify_change_log(lines: Iterable[bytes], source: str, *, head: tuple[int, str] | None,
                      complete: bool) -> Verification:
    """The change log's records, oldest first, checked as `verify_lines` does, and against
    the store's `head` (seq, hash of the newest record), which catches records removed at
    the end. `complete`: the log was never trimmed, so its chain must start at seq 1."""
    result = verify_lines(lines, source)
    end = result.replicas.get(CHANGE_LOG)
    if result.problem is not None:
        return result
    if complete and end is not None and end.first_seq != 1:
        result.problem = Problem(source, 1, end.first_seq, None, "removed",
                                 f"the log starts at seq {end.first_seq}: seq 1..{end.first_seq - 1} missing (removed)")
    elif head is not None and (end is None or end.last_seq < head[0]
                               or (end.last_seq == head[0] and end.last_hash != head[1])):
        last = "no chained record" if end is None else f"seq {end.last_seq} ({end.where})"
        kind = "removed" if end is None or end.last_seq < head[0] else "edited"
        result.problem = Problem(source, 0, head[0], None, kind,
                                 f"the store's newest record is seq {head[0]}, the log ends at {last}: "
                                 "records at the end were removed or replaced")
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
    if "change_id" in record and "hash" not in record and CHANGE_LOG not in result.replicas:
        result.unchained += 1  # written before the change log was chained
        return None
    record_or_problem = _chain_of(record)
    if isinstance(record_or_problem, str):
        return problem("malformed", record_or_problem)
    replica, seq, prev, digest = record_or_problem
    body = {k: v for k, v in record.items() if k != "hash"}
    form = record.get("format")
    if form is not None and (type(form) is not int or form != FORMAT):
        return problem("malformed", f"unknown record format {form!r}: this version reads format {FORMAT} "
                                    "and records without one")
    forms = (canonical,) if form is not None else (canonical, legacy_canonical)  # none: written before format 2
    if not any(_hash_of(body, serialize) == digest for serialize in forms):
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
    wrong = result.evidence.check(replica, seq, digest, record, where)
    if wrong is not None:
        return problem(*wrong)
    chain.last_seq, chain.last_hash, chain.where = seq, digest, where
    chain.records += 1
    result.records += 1
    result.last_hash = digest
    return None


def _chain_of(record: dict[str, Any]) -> tuple[str, int, str, str] | str:
    """(replica, seq, prev, hash) of a record, or what is wrong with them."""
    replica, seq, prev, digest = (record.get(k) for k in ("replica", "seq", "prev", "hash"))
    if replica is None and "change_id" in record:
        replica = CHANGE_LOG
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
        try:
            record = json.loads(raw)
        except ValueError:
            continue
        chain = _chain_of(record) if isinstance(record, dict) else None
        if isinstance(chain, tuple) and chain[:2] == (replica, seq):
            return f"{file}:{number}"
    return None


def render(result: Verification) -> str:
    """`gateway audit verify` without --json."""
    problem = result.problem
    if problem is not None:
        at = f"{problem.file}:{problem.line}" if problem.line else problem.file
        which = "" if problem.seq is None else f"seq {problem.seq}" + (f" (replica {problem.replica})" if problem.replica else "")
        return "\n".join([f"FAILED {at}: {which + ': ' if which else ''}{problem.kind}: {problem.message}",
                          f"{result.records} records verified before it", *_evidence_lines(result)])
    lines = [f"OK: {result.records} records in {len(result.files)} file(s), hash chain intact"]
    if result.unchained:
        lines.append(f"  {result.unchained} change records before them predate the chained change log")
    for name, end in result.replicas.items():
        name = "the change log" if name == CHANGE_LOG else f"replica {name}"
        start = "" if end.first_seq == 1 else " (starts past seq 1: earlier records are in files not given)"
        lines.append(f"  {name}: seq {end.first_seq}..{end.last_seq}{start}")
    lines.append(f"last hash {result.last_hash or '-'}")
    return "\n".join([*lines, *_evidence_lines(result)])


def _evidence_lines(result: Verification) -> list[str]:
    evidence = result.evidence
    if not evidence.keyed:
        lines = [f"only the unkeyed chain was checked ({evidence.checkpoints} checkpoints, signatures not checked): "
                 "anyone who can write the files can re-seal them; give --public-key to check the signatures"]
    else:
        lines = [f"{evidence.checkpoints} checkpoints signed by the key(s) given"]
    if evidence.outside:
        lines.append(f"{len(evidence.outside)} checkpoints copied outside compared")
    return lines + [f"note: {note}" for note in evidence.notes]


def _hash_of(body: dict[str, Any], form: Callable[[dict[str, Any]], bytes]) -> str | None:
    try:
        return hashlib.sha256(form(body)).hexdigest()
    except (TypeError, ValueError):
        return None

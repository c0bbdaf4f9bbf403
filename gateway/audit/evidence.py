"""What `gateway audit verify` checks beyond the hash chain, given public keys
(`--public-key`) and outside copies of checkpoints (`--checkpoints`, `--redis`):

- every checkpoint's signature, by a key given: re-sealing (editing records and
  recomputing every hash after them) is caught at the next checkpoint, whose
  signature covers the `prev` it had; a checkpoint signed by a key not given (a
  replaced key) is a finding, and a change from one given key to another is noted
  with the place it happened (a key rotation);
- every record whose seq a copy outside names must be that very checkpoint (same
  hash), and a chain must not end before the newest checkpoint copied outside
  (records removed at the end);
- with a key, a chain with no checkpoint at all, or no records at all, proves nothing:
  a finding.

Records after a chain's last checkpoint are not signed yet (a running gateway writes
one every audit.checkpoint_every records or checkpoint_interval_s); the result says how many.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from gateway.audit.canonical import canonical
from gateway.audit.checkpoints import Outside, is_checkpoint, signed_bytes
from gateway.audit.signing import PublicKey

# file, line, seq, replica, kind, message: a verification.Problem's fields
Finding = tuple[str, int, "int | None", "str | None", str, str]


@dataclass
class Seen:
    """The newest checkpoint verified in one chain."""

    seq: int
    hash: str
    key_id: str
    where: str


@dataclass
class Evidence:
    keys: dict[str, PublicKey] | None = None  # by key id; None: signatures are not checked
    outside: dict[tuple[str, int], Outside] = field(default_factory=dict)
    checkpoints: int = 0
    last: dict[str, Seen] = field(default_factory=dict)  # by replica
    notes: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, keys: Iterable[PublicKey] | None, outside: Iterable[Outside]) -> tuple[Evidence, Finding | None]:
        """The evidence to check against, or the first outside copy that is itself bad."""
        evidence = cls(None if keys is None else {key.id: key for key in keys})
        for source, line, record in outside:
            place = (record.get("replica"), record.get("seq"))
            if not isinstance(place[0], str) or not isinstance(place[1], int):
                return evidence, (source, line, None, None, "malformed", "an outside checkpoint without replica and seq")
            wrong = evidence._signature_problem(record) or _hash_problem(record)
            if wrong is not None:
                return evidence, (source, line, place[1], place[0], wrong[0], f"outside copy: {wrong[1]}")
            known = evidence.outside.get(place)  # type: ignore[arg-type]
            if known is not None and known[2].get("hash") != record.get("hash"):
                return evidence, (source, line, place[1], place[0], "replaced",
                                  f"outside copies disagree with {known[0]}:{known[1]} about this checkpoint")
            evidence.outside.setdefault(place, (source, line, record))  # type: ignore[arg-type]
        return evidence, None

    @property
    def keyed(self) -> bool:
        return self.keys is not None

    def check(self, replica: str, seq: int, digest: str, record: dict[str, Any], where: str) -> tuple[str, str] | None:
        """(kind, message) of what is wrong with this chained record, or None."""
        copy = self.outside.get((replica, seq))
        if copy is not None and copy[2].get("hash") != digest:
            return "replaced", (f"the checkpoint copied outside at {copy[0]}:{copy[1]} is not this record: "
                                "the chain was rewritten from here")
        if not is_checkpoint(record):
            return None
        self.checkpoints += 1
        if self.keys is None:
            return None
        wrong = self._signature_problem(record) or _previous_problem(record, self.last.get(replica))
        if wrong is not None:
            return wrong
        key_id = str(record["key_id"])
        before = self.last.get(replica)
        if before is not None and before.key_id != key_id:
            self.notes.append(f"{where}: seq {seq} (replica {replica}): the signing key changed from {before.key_id} "
                              f"(last used at {before.where}, seq {before.seq}) to {key_id}")
        self.last[replica] = Seen(seq, digest, key_id, where)
        return None

    def _signature_problem(self, record: dict[str, Any]) -> tuple[str, str] | None:
        if self.keys is None:
            return None
        key_id, signature = record.get("key_id"), record.get("signature")
        if not isinstance(key_id, str) or not isinstance(signature, str):
            return "malformed", "a checkpoint without key_id and signature"
        key = self.keys.get(key_id)
        if key is None:
            given = ", ".join(self.keys) or "none"
            return "unknown-key", (f"signed by key {key_id}, not a key given (--public-key: {given}): the key was "
                                   "replaced, or an earlier key is missing")
        if not key.verifies(signature, signed_bytes(record)):
            return "bad-signature", ("the checkpoint's signature does not verify: the records before it were "
                                     "re-sealed, or the checkpoint edited")
        return None

    def finish(self, files: list[str], replicas: dict[str, Any], records: int) -> Finding | None:
        """After the last record: chains that end early, or that nothing proves."""
        newest: dict[str, Outside] = {}
        for (replica, seq), copy in self.outside.items():
            if replica not in newest or seq > newest[replica][2]["seq"]:
                newest[replica] = copy
        for replica, (source, line, record) in sorted(newest.items()):
            end = replicas.get(replica)
            if end is None and records == 0:
                return (", ".join(files), 0, None, replica, "removed",
                        f"the files hold no record, but checkpoint seq {record['seq']} of replica {replica} exists "
                        f"outside ({source}:{line}): the file was emptied or replaced")
            if end is not None and record["seq"] > end.last_seq:
                file, _, number = end.where.rpartition(":")
                return (file, int(number), end.last_seq, replica, "removed",
                        f"the chain ends at seq {end.last_seq}, but its checkpoint seq {record['seq']} exists outside "
                        f"({source}:{line}): records after seq {end.last_seq} were removed")
        if self.keys is None:
            return None
        if records == 0:
            return ", ".join(files), 0, None, None, "empty", "no records: nothing to prove (an emptied file?)"
        for replica, end in replicas.items():
            seen = self.last.get(replica)
            if seen is None:
                file, _, number = end.where.rpartition(":")
                return (file, int(number), end.last_seq, replica, "unsigned",
                        f"no signed checkpoint in seq {end.first_seq}..{end.last_seq}: nothing proves these records")
            if seen.seq < end.last_seq:
                self.notes.append(f"replica {replica}: seq {seen.seq + 1}..{end.last_seq} come after the last "
                                  f"checkpoint ({seen.where}) and are not signed yet")
        return None


def _hash_problem(record: dict[str, Any]) -> tuple[str, str] | None:
    body = {k: v for k, v in record.items() if k != "hash"}
    try:
        ok = hashlib.sha256(canonical(body)).hexdigest() == record.get("hash")
    except (TypeError, ValueError):
        ok = False
    return None if ok else ("edited", "hash mismatch: the checkpoint is not what was written")


def _previous_problem(record: dict[str, Any], before: Seen | None) -> tuple[str, str] | None:
    head, seq, prev = record.get("head"), record.get("seq"), record.get("prev")
    if head != {"seq": seq - 1, "hash": prev}:  # type: ignore[operator]
        return "malformed", "the checkpoint's head is not the record before it"
    named = record.get("previous_checkpoint")
    # None: the gateway did not find its last checkpoint when it started (far back in rotated files).
    if before is not None and named is not None and named != {"seq": before.seq, "hash": before.hash}:
        return "removed", (f"the checkpoint names {named} as the previous one, the chain's is seq {before.seq} "
                           f"({before.where}): a checkpoint was removed")
    return None

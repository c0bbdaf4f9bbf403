"""Bounds on one audit record's size.

A client decides the length of some of a record's fields: the path, a JWT's
`sub`, a model named in the path, whatever a credential's error quotes. Unbounded,
a few requests with 8 KiB paths would fill the audit files many times faster than
real traffic and rotate real history away. So, before a record is sealed:

- every string longer than MAX_FIELD_CHARS is cut there and ends with a visible
  marker that says how long it was, and the record's `truncated` lists the fields cut;
- a record whose line would still exceed MAX_RECORD_BYTES has its strings cut to
  SHORT_FIELD_CHARS; failing that, only its core fields are kept.

Cutting happens when the record is sealed (gateway/audit/chain.py seal), so the hash covers the record as written and
`gateway audit verify` checks it like any other.
"""

from __future__ import annotations

from typing import Any

from gateway.audit.canonical import canonical

MAX_RECORD_BYTES = 4096  # a written line, chain fields included: a few times an ordinary record
MAX_FIELD_CHARS = 1024  # the longest string a record keeps whole
SHORT_FIELD_CHARS = 128
# What seal() adds: replica (at most 128 + a suffix), seq, prev, format and hash.
_CHAIN_BYTES = 400
_ENTRY_BYTES = MAX_RECORD_BYTES - _CHAIN_BYTES
# The keys and the fields that are not strings (numbers, reason lists): well under this.
_ROOM_FOR_THE_REST = 1536
# What a record keeps when even short strings do not fit (chain fields are added by seal()).
CORE = ("time", "decision_id", "method", "status", "decision", "reasons", "error", "org", "policy_version")
# Characters the written line escapes beyond canonical JSON (U+0085, U+2028, U+2029:
# gateway/audit/chain.py), and the bytes each then takes more.
_WIDENED = ((b"\xc2\x85", 4), (b"\xe2\x80\xa8", 3), (b"\xe2\x80\xa9", 3))


def bounded(entry: dict[str, Any]) -> dict[str, Any]:
    """`entry` within the bounds (the same dict when nothing needed cutting)."""
    chars = 0
    for value in entry.values():
        if value.__class__ is str:
            chars += len(value)
    # A character takes at most 6 bytes in the line (a control character as \u00XX).
    if 6 * chars + _ROOM_FOR_THE_REST <= _ENTRY_BYTES:
        return entry  # nearly every record: one pass over its fields, nothing copied
    if chars <= MAX_FIELD_CHARS and _size(entry) <= _ENTRY_BYTES:
        return entry
    for limit in (MAX_FIELD_CHARS, SHORT_FIELD_CHARS):
        cut = _cut(entry, limit)
        if _size(cut) <= _ENTRY_BYTES:
            return cut
    core = _cut({key: entry[key] for key in CORE if key in entry}, SHORT_FIELD_CHARS)
    core["truncated"] = ["record"]
    return core


def _cut(entry: dict[str, Any], limit: int) -> dict[str, Any]:
    """A copy of `entry` with its strings longer than `limit` cut and marked."""
    cut = dict(entry)
    keys = [key for key, value in entry.items() if isinstance(value, str) and len(value) > limit]
    for key in keys:
        value = entry[key]
        cut[key] = value[:limit] + f"…[truncated: {len(value)} characters]"
    if keys:
        cut["truncated"] = keys
    return cut


def _size(entry: dict[str, Any]) -> int:
    """The bytes of `entry` in the written line (before the chain fields)."""
    try:
        body = canonical(entry)
    except (TypeError, ValueError):  # seal() makes such a value plain; its size is then at most this
        return 6 * len(repr(entry))
    return len(body) + sum(body.count(raw) * more for raw, more in _WIDENED)

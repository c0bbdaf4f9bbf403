"""Bounds on one audit record's size.

A client decides the length of some of a record's fields: the path, a JWT's
`sub`, a model named in the path, whatever a credential's error quotes. Unbounded,
a few requests with 8 KiB paths would fill the audit files many times faster than
real traffic and rotate real history away. So, before a record is sealed:

- every string longer than MAX_FIELD_CHARS is cut there and ends with a visible
  marker that says how long it was, and the record's `truncated` lists the fields cut;
- a record whose canonical JSON would still exceed MAX_RECORD_BYTES has its strings
  cut to SHORT_FIELD_CHARS; failing that, only its core fields are kept.

Cutting happens before sealing, so the hash covers the record as written and
`gateway audit verify` checks it like any other.
"""

from __future__ import annotations

from typing import Any

from gateway.audit.chain import canonical

MAX_FIELD_CHARS = 1024
SHORT_FIELD_CHARS = 128
MAX_RECORD_BYTES = 16 * 1024
# A character takes at most 6 bytes in canonical JSON (a control character as \u00XX);
# the fields that are not strings (numbers, reason lists) take well under this much.
_ROOM_FOR_THE_REST = 4096
# What a record keeps when even short strings do not fit (chain fields are added by seal()).
CORE = ("time", "decision_id", "method", "status", "decision", "reasons", "error", "org", "policy_version")


def bounded(entry: dict[str, Any]) -> dict[str, Any]:
    """`entry` within the bounds (the same dict when nothing needed cutting)."""
    chars = 0
    for value in entry.values():
        if value.__class__ is str:
            chars += len(value)
    if chars <= MAX_FIELD_CHARS:
        return entry  # nearly every record: no field can be too long, nor the whole (6 * 1 KiB + the rest)
    if all(len(v) <= MAX_FIELD_CHARS for v in entry.values() if isinstance(v, str)) \
            and 6 * chars + _ROOM_FOR_THE_REST <= MAX_RECORD_BYTES:
        return entry
    for limit in (MAX_FIELD_CHARS, SHORT_FIELD_CHARS):
        cut = _cut(entry, limit)
        if _size(cut) <= MAX_RECORD_BYTES:
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
    try:
        return len(canonical(entry))
    except (TypeError, ValueError):  # seal() makes such a value plain; its size is then at most this
        return 6 * len(repr(entry))

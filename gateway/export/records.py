"""An audit record as an OpenTelemetry log record: pure, no SDK, no I/O.

The record is the line the audit file holds (gateway/audit/chain.py), already cut
to its bounds (gateway/audit/bounds.py): every field becomes an attribute under
`gateway.`, its chain fields (replica, seq, hash) included, so that an event in the
SIEM can be traced back to its line in the file and checked there. Absent values
(null) are left out; lists of strings stay lists; anything else nested is JSON text.
The body is a one-line summary a person can read in a log view.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any, NamedTuple

PREFIX = "gateway."
EVENT_NAME = "gateway.decision"
MAX_ATTRIBUTES = 64        # a record has about 35 fields; a bound, should one ever grow
MAX_ATTRIBUTE_CHARS = 1024  # as an audit record keeps a string whole (MAX_FIELD_CHARS)

Attribute = str | bool | int | float | list[str]


class LogFields(NamedTuple):
    time_ns: int | None
    severity: str  # WARN for a denied request, else INFO
    body: str
    attributes: dict[str, Attribute]


def log_fields(record: dict[str, Any]) -> LogFields:
    """What one audit record says, as the parts of an OpenTelemetry log record."""
    return LogFields(_time_ns(record.get("time")), "WARN" if record.get("decision") == "deny" else "INFO",
                     summary(record), attributes(record))


def summary(record: dict[str, Any]) -> str:
    """E.g. `deny 451 country_embargoed POST /v1/chat/completions model=fable org=org-acme country=CN`;
    for a record of another kind (a checkpoint), its type and sequence number."""
    if "decision" not in record:
        return f"{_short(str(record.get('type') or record.get('kind') or 'record'))} seq={record.get('seq', '?')}"
    reasons = record.get("reasons") or []
    why = reasons[0] if reasons else record.get("error") or "-"
    parts = [str(record.get("decision", "?")), str(record.get("status", "?")), str(why),
             str(record.get("method") or "-"), _short(str(record.get("path") or "-"))]
    for key, name in (("model", "requested_model"), ("org", "org"), ("country", "observed_country")):
        value = record.get(name)
        if value is not None:
            parts.append(f"{key}={_short(str(value))}")
    return " ".join(parts)


def attributes(record: dict[str, Any]) -> dict[str, Attribute]:
    found: dict[str, Attribute] = {}
    for key, value in record.items():
        if value is None:
            continue
        if len(found) == MAX_ATTRIBUTES:
            found[PREFIX + "truncated_attributes"] = True
            break
        kind = value.__class__
        if kind in _SCALARS or (kind is str and len(value) <= MAX_ATTRIBUTE_CHARS):
            found[PREFIX + key] = value  # nearly every field: no copy, no conversion
        else:
            found[PREFIX + key] = _attribute(value)
    return found


_SCALARS = frozenset({bool, int, float})


def _attribute(value: Any) -> Attribute:
    if isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, str):
        return _short(value, MAX_ATTRIBUTE_CHARS)
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return [_short(item, MAX_ATTRIBUTE_CHARS) for item in value]
    return _short(json.dumps(value, separators=(",", ":"), sort_keys=True), MAX_ATTRIBUTE_CHARS)


def _short(text: str, limit: int = 128) -> str:
    return text if len(text) <= limit else text[:limit] + "…"


def _time_ns(text: Any) -> int | None:
    """The record's RFC 3339 time in ns since the epoch; None (the SDK then takes now) if unreadable."""
    if not isinstance(text, str):
        return None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return int(moment.timestamp()) * 1_000_000_000 + moment.microsecond * 1000

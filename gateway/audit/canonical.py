"""Canonical JSON of an audit record: the bytes its hash covers (gateway/audit/chain.py),
and by which its size is bounded (gateway/audit/bounds.py).

Canonical JSON is orjson's (sorted keys): its strings are escaped as Python's json
module escapes them with ensure_ascii off, and its floats are the shortest form that
reads back to the same float. Python's json writes a few floats otherwise (1e-05
where orjson writes 0.00001); records written by earlier versions with that
serializer verify too (`legacy_canonical`).

Records sealed since carry `"format": 2` (FORMAT), which names their canonical form:
a verifier hashes such a record with `canonical` alone, and a record without one (from
before) with either form. A later change of the canonical form would take the next number.
"""

from __future__ import annotations

import json
from typing import Any

import orjson

FORMAT = 2  # the canonical form of the records sealed now (1, implicit: Python's json)


def canonical(record: dict[str, Any]) -> bytes:
    """The bytes that are hashed: deterministic for anything JSON can hold, and the
    same bytes again for a verifier that parses the line and serializes it. Raises
    TypeError for what JSON cannot hold as is (other objects, unpaired surrogates,
    integers beyond 64 bits); a non-finite float is written as null."""
    return orjson.dumps(record, option=orjson.OPT_SORT_KEYS)


def legacy_canonical(record: dict[str, Any]) -> bytes:
    """The canonical form of records written before orjson: Python's json module."""
    return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()

"""Strict decoding of the pieces of a JWS and a JWKS.

Two readers of the same bytes must never disagree about what they say:
- base64url without padding and only its alphabet (RFC 7515 §2), in canonical
  form (unused trailing bits zero), so one token has exactly one spelling;
- JSON with no duplicate member names. RFC 7515 §5.2 allows "last one wins"
  parsing, but then `{"alg":"RS256","alg":"none"}` means different things to
  different parsers (RFC 8725 §3.12 on such ambiguity); we refuse instead;
- no NaN/Infinity, which are not JSON (RFC 8259 §6).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from typing import Any

_BASE64URL = re.compile(r"[A-Za-z0-9_-]+")


class EncodingError(ValueError):
    pass


def b64url_decode(segment: str) -> bytes:
    if not _BASE64URL.fullmatch(segment) or len(segment) % 4 == 1:
        raise EncodingError("not unpadded base64url")
    try:
        data = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except binascii.Error:
        raise EncodingError("not unpadded base64url") from None
    if base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii") != segment:
        raise EncodingError("non-canonical base64url (trailing bits set)")
    return data


def _unique_members(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for name, value in pairs:
        if name in obj:
            raise EncodingError(f"duplicate member name {name!r}")
        obj[name] = value
    return obj


def _no_constants(name: str) -> Any:
    raise EncodingError(f"{name} is not JSON")


def json_object(data: bytes) -> dict[str, Any]:
    """A JSON object from UTF-8 bytes, refusing duplicate names at any depth."""
    try:
        value = json.loads(data.decode("utf-8"), object_pairs_hook=_unique_members, parse_constant=_no_constants)
    except RecursionError:
        raise EncodingError("JSON nested too deeply") from None
    except EncodingError:
        raise
    except ValueError as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise EncodingError(f"not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise EncodingError("not a JSON object")
    return value

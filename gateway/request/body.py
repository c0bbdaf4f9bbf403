"""The model a JSON request body names, read once and strictly (docs/routes.md).

The gateway decides on the model it reads here, and the upstream then parses the
same bytes with a parser of its own. Anything two JSON parsers could read
differently is therefore refused rather than resolved:

- the body must be UTF-8 without a BOM: `json.loads(bytes)` would also accept
  UTF-16/32, which an upstream may not; we decode to `str` ourselves;
- duplicate keys anywhere (RFC 8259 §4 leaves their meaning to the parser:
  Python keeps the last, others the first or fail);
- a top-level key that is not `model` but reads as `model` to a lenient
  parser: Go's encoding/json matches struct fields case-insensitively, some
  frameworks trim keys, and C parsers may stop a key at an escaped NUL;
- NaN/Infinity literals and numbers that overflow to infinity (not JSON);
- nesting deeper than `MAX_DEPTH` (serde_json's default recursion limit), and
  more than `MAX_CONTAINERS` objects and arrays.

The parse costs about the same whatever the body's shape. Building a container
costs far more than a string or a number (the duplicate-key check is a Python
call per object), so 4 MB of `[{},{},...]` once took a second where 4 MB of
text takes milliseconds. The objects and arrays are therefore counted (and
their depth measured) on the body's bytes first, at the speed of `bytes.count`,
and a body over the limits is refused before anything is built.
- a compressed body we are not configured to decode (415); one we decode is
  forwarded decoded, so the upstream sees exactly the bytes we parsed.

Nothing here does I/O; every refusal is a `RequestError` carrying its status.
"""

from __future__ import annotations

import gc
import json
import math
import operator
import re
import unicodedata
import zlib
from functools import lru_cache
from itertools import accumulate, count
from typing import Any
from urllib.parse import unquote_plus

MAX_BYTES = 4 * 1024 * 1024
# serde_json's default recursion limit; deeper than any real request (tool
# schemas included) and well inside Python's own recursion limit.
MAX_DEPTH = 128
# Objects and arrays: far more than any real request holds (a 4 MB conversation of
# short messages has tens of thousands), and few enough to build in milliseconds.
MAX_CONTAINERS = 100_000
MAX_MODEL_LENGTH = 256
# The top-level keys a route reads when it names models only in `model`.
MODEL_ONLY = frozenset({"model"})

# zlib window bits: 16 + 15 reads a gzip member (RFC 1952), 15 a zlib stream,
# which is what "deflate" means in HTTP (RFC 9110 §8.4.1.2).
_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}
# RFC 9110 §8.4.1.3: a recipient SHOULD treat "x-gzip" as "gzip".
_CODING_ALIASES = {"x-gzip": "gzip"}
_BOM = b"\xef\xbb\xbf"
_JSON = "application/json"


class RequestError(Exception):
    """A request refused before any decision: whose fault it is, and its status.

    `message` is written for the caller and names no policy internals; `param`
    is the request field at fault (OpenAI's error `param`), if any.
    """

    def __init__(self, status: int, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param

    def __repr__(self) -> str:
        return f"RequestError({self.status}, {self.message!r}, param={self.param!r})"


def extract_model(
    body: bytes,
    content_type: str | None,
    content_encoding: str | None,
    *,
    max_bytes: int = MAX_BYTES,
    decode_encodings: frozenset[str] = frozenset(),
    keys: frozenset[str] = MODEL_ONLY,
    max_containers: int = MAX_CONTAINERS,
) -> tuple[str, bytes, dict[str, Any]]:
    """(model exactly as sent, the bytes to forward, the parsed top-level object).

    The bytes to forward are `body` itself unless it was decompressed; then they
    are the decoded bytes and the caller must drop Content-Encoding (and fix
    Content-Length). `decode_encodings` may hold "gzip" and "deflate"; other
    names are never decoded. `keys` are the top-level keys the caller reads
    (`model`, and those under which its route names other models): a key that
    reads as one of them to a lenient parser is refused.
    """
    if len(body) > max_bytes:
        raise _too_large(max_bytes)
    _check_content_type(content_type)
    coding = _coding(content_encoding)
    if coding is not None:
        if coding not in decode_encodings or coding not in _WBITS:
            raise RequestError(415, "This Content-Encoding is not supported; send the body uncompressed.")
        body = _decompress(body, coding, max_bytes)
    document = _parse(body, max_containers)
    return _model(document, keys), body, document


def _too_large(max_bytes: int) -> RequestError:
    return RequestError(413, f"Request body is larger than {max_bytes} bytes.")


def _check_content_type(content_type: str | None) -> None:
    """application/json, optionally with charset=utf-8 (RFC 8259 §11 defines no
    other charset, and "UTF-8" in any case is the same charset, RFC 2046 §4.1.2)."""
    if content_type == _JSON:
        return
    if content_type is None:
        raise RequestError(415, "Content-Type must be application/json.")
    media_type, *parameters = content_type.split(";")
    if media_type.strip(" \t").lower() != _JSON:
        raise RequestError(415, "Content-Type must be application/json.")
    charsets = []
    for parameter in parameters:
        parameter = parameter.strip(" \t")
        if not parameter:
            continue  # "application/json;" — an empty parameter says nothing
        name, equals, value = parameter.partition("=")
        if not equals or not name or name != name.rstrip(" \t"):
            raise RequestError(415, "Content-Type has a malformed parameter.")
        if name.lower() == "charset":
            charsets.append(value.removeprefix('"').removesuffix('"').lower())
    if charsets and charsets != ["utf-8"]:
        raise RequestError(415, "The JSON body must be sent as charset=utf-8.")


def _coding(content_encoding: str | None) -> str | None:
    """The one content coding applied, or None for none. Stacked codings are
    refused (415): we decode at most one layer."""
    if content_encoding is None:
        return None
    coding = content_encoding.strip(" \t").lower()
    if coding == "identity":
        return None
    if not coding or "," in coding:
        raise RequestError(415, "Content-Encoding is not supported; send the body uncompressed.")
    return _CODING_ALIASES.get(coding, coding)


def _decompress(body: bytes, coding: str, max_bytes: int) -> bytes:
    """One complete gzip member or zlib stream, at most max_bytes when decoded.

    `max_length` stops a decompression bomb at the cap instead of inflating it;
    a truncated stream, a bad checksum or bytes after the end are 400.
    """
    decoder = zlib.decompressobj(_WBITS[coding])
    try:
        data = decoder.decompress(body, max_bytes + 1)
    except zlib.error:
        raise RequestError(400, f"The {coding} request body is corrupt.") from None
    if len(data) > max_bytes:
        raise _too_large(max_bytes)
    if not decoder.eof:
        raise RequestError(400, f"The {coding} request body is truncated.")
    if decoder.unused_data:
        # A second gzip member or trailing garbage: refused, not guessed at.
        raise RequestError(400, f"The {coding} request body has data after its end.")
    return data


def _parse(body: bytes, max_containers: int) -> dict[str, Any]:
    if body.startswith(_BOM):
        raise RequestError(400, "The request body must be UTF-8 without a byte order mark.")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise RequestError(400, "The request body is not valid UTF-8.") from None
    _check_shape(body, max_containers)
    # The document holds no cycles: the collector has nothing to find in it, and a
    # collection triggered by its allocations would walk the whole heap for nothing.
    collecting = gc.isenabled()
    gc.disable()
    try:
        document = _DECODER.decode(text)
    except json.JSONDecodeError as exc:
        raise RequestError(400, f"The request body is not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno}).") from None
    except ValueError:
        # int() refuses numbers over sys.get_int_max_str_digits() (CVE-2020-10735).
        raise RequestError(400, "The request body has a number too large to read.") from None
    except RecursionError:  # _check_shape refuses these first; kept in case it ever misses one
        raise _too_deep() from None
    finally:
        if collecting:
            gc.enable()
    if type(document) is not dict:
        raise RequestError(400, "The request body must be a JSON object.")
    return document


def _check_shape(body: bytes, max_containers: int) -> None:
    """Refuse more than `max_containers` objects and arrays, or nesting deeper than
    MAX_DEPTH, from the bytes alone (nothing is built).

    Brackets inside strings do not count, so the strings are cut out first. In JSON
    text every backslash in a string escapes the character after it, so removing
    each `\\\\` pair, then each `\\"`, leaves exactly the quotes that open and close
    strings; between them, every other piece is outside a string. On text that is
    not JSON the count may be off, but only after the point where the parser stops:
    the parser never builds more than is counted here."""
    upper = body.count(b"{") + body.count(b"[")
    if upper <= min(MAX_DEPTH, max_containers):
        return  # neither limit can be reached: most bodies stop here
    outside = b"".join(body.replace(b"\\\\", b"").replace(b'\\"', b"").split(b'"')[::2])
    brackets = outside.translate(None, _NOT_BRACKETS)
    containers = len(brackets) - brackets.count(b"]") - brackets.count(b"}")
    if containers > max_containers:
        raise RequestError(400, f"The request body has more than {max_containers} objects and arrays.")
    if containers > MAX_DEPTH and _depth(brackets) > MAX_DEPTH:
        raise _too_deep()


def _depth(brackets: bytes) -> int:
    """The deepest nesting of a sequence of brackets. An opening one counts 2 and a
    closing one 0, so after i brackets the running sum less i is the depth there:
    the whole computation runs in C (itertools), not in a Python loop."""
    steps = brackets.translate(_STEPS)
    return max(map(operator.sub, accumulate(steps), count(1)), default=0)


_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_STEPS = bytes.maketrans(b"[]{}", b"\x02\x00\x02\x00")


def _too_deep() -> RequestError:
    return RequestError(400, f"The request body is nested deeper than {MAX_DEPTH} levels.")


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """object_pairs_hook: a dict, or 400 if any key repeats (after unescaping,
    so `"mod\\u0065l"` repeats `"model"`)."""
    document = dict(pairs)
    if len(document) != len(pairs):
        model_repeated = sum(1 for key, _ in pairs if key == "model") > 1
        raise RequestError(400, "The request body has a duplicate key.", "model" if model_repeated else None)
    return document


def _constant(name: str) -> float:
    raise RequestError(400, f"The request body contains {name}, which is not JSON.")


def _finite(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise RequestError(400, "The request body has a number too large to read.")
    return value


_DECODER = json.JSONDecoder(object_pairs_hook=_object, parse_constant=_constant, parse_float=_finite)


def with_model(document: dict[str, Any], model: str) -> bytes:
    """The body to forward, re-serialized with `model` as its model (`models.M.upstream_model`).
    The document was parsed strictly (no duplicate keys, no NaN), so it serializes to the
    same JSON with one value changed. A lone surrogate (valid in a JSON string escape, not
    in UTF-8) is kept as the escape the client sent."""
    renamed = {**document, "model": model}
    try:
        return json.dumps(renamed, ensure_ascii=False, separators=(",", ":")).encode()
    except UnicodeEncodeError:
        return json.dumps(renamed, separators=(",", ":")).encode()


def _model(document: dict[str, Any], keys: frozenset[str]) -> str:
    for key in document:
        if key not in keys and (name := folded(key)) in keys:
            raise RequestError(400, f"The request body has a key that differs from '{name}' only in case, spacing or encoding.", name)
    return model_name(document.get("model"), "model")


def model_name(model: Any, param: str) -> str:
    """`model` if it is a model name the policy and every upstream read alike, else 400
    naming `param`, the field it was read from."""
    if type(model) is not str or not model.strip():
        raise RequestError(400, f"'{param}' is required and must be a non-empty string.", param)
    # isprintable() is False for control and format characters, lone
    # surrogates and unassigned code points: characters upstream parsers
    # replace, drop or stop at, so that they could name another model.
    if len(model) > MAX_MODEL_LENGTH or not model.isprintable():
        raise RequestError(400, f"'{param}' must be at most {MAX_MODEL_LENGTH} printable characters.", param)
    # Compatibility characters (fullwidth `ｆ`, long `ſ`, Kelvin `K`): a name the
    # policy does not know, which an upstream that NFKC-normalises names reads
    # as one it may well know.
    if not model.isascii() and not unicodedata.is_normalized("NFKC", model):
        raise RequestError(400, f"'{param}' must not contain compatibility characters (it must be NFKC-normalised).", param)
    return model


def folded(key: str) -> str:
    """`key` as a lenient parser may match it: cut at NUL, trimmed and case-folded
    (NFKC first for non-ASCII keys, so that fullwidth `ｍｏｄｅｌ` is `model` too)."""
    # Bodies repeat their few short keys request after request; a long key is folded
    # afresh, so that a flood of megabyte keys cannot fill the memo.
    return _memo_folded(key) if len(key) <= MEMO_KEY_LENGTH else _fold(key)


def _fold(key: str) -> str:
    key = key.partition("\x00")[0]
    if not key.isascii():
        key = unicodedata.normalize("NFKC", key)
    return key.strip().casefold()


MEMO_KEY_LENGTH = 64
_memo_folded = lru_cache(maxsize=4096)(_fold)


def _reads_as_model(key: str) -> bool:
    """True for a key a lenient parser could take for `model` (see `folded`)."""
    return folded(key) == "model"


# Query separators: "&", and ";" which older frameworks also split on.
_QUERY_SEPARATORS = re.compile("[&;]")
# Where a lenient query parser ends a name: `model[]`, `model[0]` (PHP, Rails)
# and `model.id` (qs with allowDots) are all `model` to someone.
_NAME_SUFFIX = re.compile(r"[\[.]")


def query_names_model(query_string: bytes) -> bool:
    """True if some server could read a `model` out of this query string: any
    parameter whose name, percent-decoded once or twice, reads as `model` the
    way a body key would (see `_reads_as_model`), before any `[` or `.`."""
    if not query_string:
        return False
    text = query_string.decode("utf-8", "replace")
    for parameter in _QUERY_SEPARATORS.split(text):
        name = parameter.partition("=")[0]
        once = unquote_plus(name, errors="replace")
        for candidate in (name, once, unquote_plus(once, errors="replace")):
            if _reads_as_model(candidate) or _reads_as_model(_NAME_SUFFIX.split(candidate, 1)[0]):
                return True
    return False

"""Fuzzing the body parser (gateway/request/body.py extract_model).

Bodies are written as raw JSON text, not through json.dumps, so that escapes,
duplicate keys in any spelling, odd numbers, BOMs, other encodings and
compression all occur; then mutated byte by byte. For every input:

- only RequestError escapes, with a status the API documents;
- when a model is returned, the forwarded bytes are the body (or its decoded
  form), and every way an upstream might read those bytes names that same
  model: a strict parse (duplicates refused), Python's json.loads on the bytes,
  a first-key-wins parser, a Go-like case-insensitive field match, a C-like
  parser that stops a key at NUL. No differential.
"""

from __future__ import annotations

import gzip
import json
import zlib
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from gateway.request.body import MAX_DEPTH, RequestError, extract_model

from .body_oracle import BOTH, JSON, check, strict
from .conftest import fuzz


# --- generators --------------------------------------------------------------------


def _escaped(text: str, how: list[int]) -> str:
    """`text` as a JSON string body, each character plain or \\u-escaped."""
    out = []
    for char, choice in zip(text, how + [0] * len(text)):
        if char in '"\\' or ord(char) < 0x20 or choice % 3 == 1:
            out.append(json.dumps(char)[1:-1] if ord(char) > 0xFFFF else f"\\u{ord(char):04x}")
        else:
            out.append(char)
    return "".join(out)


_MODEL_KEYS = st.sampled_from([
    "model", "Model", "MODEL", "mOdEl", "model ", " model", "model\x00", "model\x00x", "ｍｏｄｅｌ", "ＭＯＤＥＬ",
    "model\u00a0", "\u3000model", "mode", "models", "model_", "\u212aodel", "mod\u0435l", "model\u200b", "\ufeffmodel",
])
_KEYS = st.one_of(_MODEL_KEYS, st.sampled_from(["messages", "input", "x", "stream", ""]), st.text(max_size=6))
_MODEL_VALUES = st.one_of(
    st.sampled_from([
        "small-2", "frontier-5.6", "small-2\x00frontier-5.6", "small-2\u200b", " small-2 ", "SMALL-2", "\ufeffsmall-2",
        "small/2", "small\\2", "\ud800", "\udc00x", "\ud83d\ude00", "\u202efable", "a" * 300, "", " ",
    ]),
    st.text(max_size=12),
)
_RAW_STRINGS = st.sampled_from([
    '"\\ud800"', '"\\udc00\\ud800"', '"\\ud83d\\ude00"', '"\\u0000"', '"\\/"', '"\\x41"', '"\\u00"', '"\\uZZZZ"',
    "'x'", '"a\x01"', '"\\U0001F600"', '"\xe9"',
])
_GOOD_STRINGS = {'"\\ud800"', '"\\udc00\\ud800"', '"\\ud83d\\ude00"', '"\\u0000"', '"\\/"'}
_GOOD_NUMBERS = {"0", "-0", "1e308", "1E+2", "0.1e-400", "9" * 4200}
_NUMBERS = st.sampled_from([
    "0", "-0", "1e308", "1e309", "-1e999", "1E+2", "0.1e-400", "9" * 4400, "9" * 4200 + ".5", "01", ".5", "1.",
    "-", "+1", "NaN", "Infinity", "-Infinity", "0x10", "1_000", "١",
])


@st.composite
def raw_string(draw: st.DrawFn, values: st.SearchStrategy[str]) -> str:
    text = draw(values)
    return '"' + _escaped(text, draw(st.lists(st.integers(0, 2), max_size=len(text)))) + '"'


_SPACE = st.sampled_from(["", " ", "\n", "\t", "\r\n"])
_BAD_SPACE = st.sampled_from(["\x0c", "\u00a0", "\x00", "\u2028"])
_LITERALS = st.sampled_from(["true", "false", "null", "[]", "{}"])


def _grammar(strings: st.SearchStrategy[str], numbers: st.SearchStrategy[str], space: st.SearchStrategy[str],
             model_values: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """Top-level objects of nested values, from the given pieces."""
    leaves = st.one_of(raw_string(st.text(max_size=8)), strings, numbers, _LITERALS)

    def object_of(values: st.SearchStrategy[str], top: bool = False) -> st.SearchStrategy[str]:
        member = st.tuples(raw_string(_KEYS), values)
        model = st.tuples(raw_string(_MODEL_KEYS), st.one_of(raw_string(model_values), values))

        @st.composite
        def build(draw: st.DrawFn) -> str:
            members = draw(st.lists(st.one_of(member, model), max_size=4))
            if top and draw(st.booleans()):
                members.insert(draw(st.integers(0, len(members))), ('"model"', draw(raw_string(model_values))))
            s = draw(space)
            return "{" + s + ("," + s).join(f"{key}{draw(space)}:{s}{value}" for key, value in members) + s + "}"

        return build()

    def nest(values: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
        return st.one_of(leaves, st.lists(values, max_size=3).map(lambda items: "[" + ",".join(items) + "]"), object_of(values))

    return object_of(nest(nest(leaves)), top=True)


_WELL_FORMED = _grammar(_RAW_STRINGS.filter(lambda s: s in _GOOD_STRINGS), _NUMBERS.filter(lambda n: n in _GOOD_NUMBERS),
                        _SPACE, _MODEL_VALUES.filter(lambda v: not any(0xD800 <= ord(c) < 0xE000 for c in v)))
_ADVERSARIAL = _grammar(_RAW_STRINGS, _NUMBERS, st.one_of(_SPACE, _BAD_SPACE), _MODEL_VALUES)


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    text = draw(st.one_of(_WELL_FORMED, _ADVERSARIAL))
    if draw(st.integers(0, 3)) == 0:
        text = draw(st.sampled_from(["", " ", "\n", "[", "\ufeff"])) + text + draw(st.sampled_from(["", " ", "\n", "x", "}", "{}", "\x00", ","]))
    encoding = draw(st.sampled_from(["utf-8"] * 20 + ["utf-8-sig", "utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-32-be", "latin-1"]))
    return text.encode(encoding, "surrogatepass" if encoding.startswith("utf") else "replace")


@st.composite
def mutated(draw: st.DrawFn, base: st.SearchStrategy[bytes]) -> bytes:
    data = bytearray(draw(base))
    for _ in range(draw(st.sampled_from([0, 0, 0, 1, 1, 2, 3]))):
        at = draw(st.integers(0, len(data)))
        kind = draw(st.integers(0, 3))
        if kind == 0 and at < len(data):
            data[at] = draw(st.integers(0, 255))
        elif kind == 1:
            data[at:at] = draw(st.sampled_from([b"\x00", b"\xc0\xaf", b"\xed\xa0\x80", b"\xff", b"\\", b'"', b",", b"\xef\xbb\xbf",
                                               b'"model":"frontier-5.6",', b'"Model":"x",', b"\\u0000"]))
        elif kind == 2:
            del data[at:at + draw(st.integers(1, 4))]
        else:
            data[at:at] = data[max(0, at - 8):at]
    return bytes(data)


@fuzz(examples=300)
@given(mutated(bodies()))
def test_raw_bodies(body: bytes) -> None:
    check(body)


@fuzz(examples=300)
@given(st.binary(max_size=128))
def test_arbitrary_bytes(body: bytes) -> None:
    check(body)


_CODINGS = st.sampled_from(["gzip", "GZIP", " gzip ", "x-gzip", "deflate", "br", "zstd", "compress", "identity",
                            "gzip, gzip", "gzip,identity", "", "gzip;q=1", "deflate ", "\tdeflate"])


def _compressors() -> st.SearchStrategy[Any]:
    return st.sampled_from([
        gzip.compress, zlib.compress, lambda b: gzip.compress(gzip.compress(b)), lambda b: b,
        lambda b: zlib.compress(b)[:-2], lambda b: gzip.compress(b) + b"x", lambda b: gzip.compress(b) * 2,
        lambda b: zlib.compressobj(wbits=-15).compress(b) + zlib.compressobj(wbits=-15).flush(),
    ])


@fuzz(examples=200)
@given(mutated(bodies()), _compressors(), st.one_of(st.none(), _CODINGS),
       st.sampled_from([frozenset(), frozenset({"gzip"}), BOTH]), st.integers(16, 4096))
def test_compressed_bodies(body: bytes, compress: Any, encoding: str | None, decode: frozenset[str], max_bytes: int) -> None:
    """A decoded body is capped at max_bytes and forwarded decoded; any other
    coding, a stacked one or a lying one is refused."""
    check(compress(body), JSON, encoding, decode, max_bytes)


@fuzz(examples=10)
@given(st.integers(2, 8), st.integers(0, 64))
def test_decompression_bombs_stop_at_the_cap(megabytes: int, slack: int) -> None:
    body = b'{"model":"small-2","pad":"' + b" " * (megabytes << 20) + b'"}'
    for packed, coding in ((gzip.compress(body, 1), "gzip"), (zlib.compress(body, 1), "deflate")):
        assert check(packed, JSON, coding, BOTH, max_bytes=(1 << 20) + slack) is None


_PARAMS = st.sampled_from([
    "", ";", "; charset=utf-8", ";charset=UTF-8", '; charset="utf-8"', "; charset=latin-1", "; charset = latin-1",
    "; charset =latin-1", "; charset= latin-1", '; charset="latin-1"', "; CHARSET=utf-16", "; charset=utf-8; charset=utf-16",
    "; charset=utf-8, latin-1", "; charset", "; =utf-8", "; q=1", "; charset=utf8", "; boundary=x", "; charset='utf-16'",
    "; charset=utf-8\x00latin-1", "; charset=\tutf-16", "\t; charset=utf-16",
])
_MEDIA = st.sampled_from([
    "application/json", "APPLICATION/JSON", " application/json", "application/json ", "text/plain", "text/json",
    "application/jsonx", "application/json-seq", "multipart/form-data", "application/x-www-form-urlencoded",
    "application/json, text/plain", "application/*", "*/*", "", "application/vnd.openai+json", "application /json",
])


def _lenient_charsets(content_type: str) -> list[str]:
    """How a lenient parser reads every charset parameter."""
    out = []
    for parameter in content_type.split(";")[1:]:
        name, _, value = parameter.partition("=")
        if name.strip().lower() == "charset":
            out.append(value.strip().strip("\"'").lower())
    return out


@fuzz(examples=500)
@given(_MEDIA, st.lists(_PARAMS, max_size=3), st.one_of(st.none(), st.text(max_size=30)))
def test_content_types(media: str, params: list[str], noise: str | None) -> None:
    """Accepted only as application/json whose every charset, however a lenient
    reader parses the header, is UTF-8."""
    content_type = noise if noise is not None and not params else media + "".join(params)
    body = b'{"model":"small-2"}'
    if check(body, content_type) is not None:
        assert content_type.split(";")[0].strip().lower() == JSON
        assert all(charset == "utf-8" for charset in _lenient_charsets(content_type)), content_type


@fuzz(examples=200)
@given(st.integers(1, 3000), st.sampled_from(["[", "{\"a\":"]))
def test_deep_nesting(depth: int, opener: str) -> None:
    closer = "]" if opener == "[" else "}"
    inner = "1" if opener != "[" else ""
    check(('{"model":"small-2","x":' + opener * depth + inner + closer * depth + "}").encode())


def _shape(value: Any, depth: int = 1) -> tuple[int, int]:
    """(objects and arrays, deepest nesting) of a parsed value, counted by walking it."""
    children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else None
    if children is None:
        return 0, depth - 1
    shapes = [_shape(child, depth + 1) for child in children]
    return 1 + sum(n for n, _ in shapes), max([depth, *(d for _, d in shapes)])


@fuzz(examples=300)
@given(mutated(bodies()), st.integers(0, 16))
def test_shape_limits_match_the_parsed_document(body: bytes, limit: int) -> None:
    """The objects and arrays counted on the bytes, before parsing, are those of the
    parsed document: a body over the limit is refused, one within it never for its shape."""
    try:
        reference = strict(body)
    except (ValueError, RecursionError):
        reference = None
    try:
        extract_model(body, JSON, None, max_containers=limit)
        refusal = None
    except RequestError as error:
        refusal = error
    if not isinstance(reference, dict):
        assert reference is not None or refusal is not None
        return
    containers, depth = _shape(reference)
    if containers > limit or depth > MAX_DEPTH:
        assert refusal is not None and refusal.status == 400, (containers, depth, limit)
    elif refusal is not None:
        assert "objects and arrays" not in refusal.message and "nested deeper" not in refusal.message, refusal

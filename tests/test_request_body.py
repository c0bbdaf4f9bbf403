"""Reading the model from a JSON body (docs/routes.md): one table per rule, then
properties over arbitrary objects and bytes."""

from __future__ import annotations

import gzip
import json
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.request.body import MAX_CONTAINERS, MAX_DEPTH, MAX_MODEL_LENGTH, RequestError, extract_model

JSON = "application/json"
BODY = b'{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}'
GZIP = frozenset({"gzip"})
BOTH = frozenset({"gzip", "deflate"})


def refused(body: bytes, content_type: str | None = JSON, content_encoding: str | None = None, **options: object) -> RequestError:
    with pytest.raises(RequestError) as caught:
        extract_model(body, content_type, content_encoding, **options)  # type: ignore[arg-type]
    return caught.value


def test_plain_body() -> None:
    model, forward, parsed = extract_model(BODY, JSON, None)
    assert model == "gpt-4o"
    assert forward is BODY  # forwarded unchanged, the very bytes decided on
    assert parsed == json.loads(BODY)


# --- size -------------------------------------------------------------------


def test_size_limit() -> None:
    body = b'{"model":"m","pad":"' + b"x" * 100 + b'"}'
    assert extract_model(body, JSON, None, max_bytes=len(body))[0] == "m"
    error = refused(body, max_bytes=len(body) - 1)
    assert error.status == 413


# --- Content-Type -----------------------------------------------------------


@pytest.mark.parametrize("content_type", [
    "application/json",
    "Application/JSON",
    "application/json; charset=utf-8",
    "application/json;charset=UTF-8",
    'application/json; charset="utf-8"',
    "application/json ; charset=utf-8",
    "application/json;",
    "application/json; odata=verbose",
])
def test_content_type_accepted(content_type: str) -> None:
    assert extract_model(BODY, content_type, None)[0] == "gpt-4o"


@pytest.mark.parametrize("content_type", [
    None,
    "",
    "text/plain",
    "text/json",
    "application/jsonx",
    "application/json-patch+json",
    "application/vnd.api+json",
    "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=x",
    "application/json; charset=latin-1",
    "application/json; charset=utf-16",
    "application/json; charset=utf8",
    "application/json; charset=",
    "application/json; charset=utf-8; charset=iso-8859-1",
    "application/json; charset=utf-8; charset=utf-8",
    "application/json; charset =utf-8",
    "application/json; utf-8",
    "application/json; =utf-8",
])
def test_content_type_refused(content_type: str | None) -> None:
    assert refused(BODY, content_type).status == 415


# --- Content-Encoding -------------------------------------------------------


@pytest.mark.parametrize("encoding", [None, "identity", "IDENTITY", " identity "])
def test_identity(encoding: str | None) -> None:
    assert extract_model(BODY, JSON, encoding)[1] is BODY


@pytest.mark.parametrize("encoding,decode", [
    ("gzip", frozenset()),
    ("deflate", GZIP),
    ("br", frozenset({"br"})),  # only the stdlib codings are ever decoded
    ("zstd", frozenset({"zstd"})),
    ("compress", BOTH),
    ("gzip, gzip", BOTH),  # stacked codings
    ("gzip, identity", BOTH),
    ("", BOTH),
    ("gzip;q=1", BOTH),
])
def test_encoding_refused(encoding: str, decode: frozenset[str]) -> None:
    assert refused(gzip.compress(BODY), content_encoding=encoding, decode_encodings=decode).status == 415


@pytest.mark.parametrize("encoding,compressed", [
    ("gzip", gzip.compress(BODY)),
    ("GZIP", gzip.compress(BODY)),
    ("x-gzip", gzip.compress(BODY)),
    ("deflate", zlib.compress(BODY)),
])
def test_decoded_body_is_forwarded(encoding: str, compressed: bytes) -> None:
    model, forward, _ = extract_model(compressed, JSON, encoding, decode_encodings=BOTH)
    assert (model, forward) == ("gpt-4o", BODY)


def _raw_deflate(data: bytes) -> bytes:
    compressor = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return compressor.compress(data) + compressor.flush()


def _bad_crc(data: bytes) -> bytes:
    packed = bytearray(gzip.compress(data))
    packed[-8] ^= 0xFF
    return bytes(packed)


@pytest.mark.parametrize("encoding,compressed,status", [
    ("gzip", gzip.compress(BODY)[:-4], 400),  # truncated trailer
    ("gzip", gzip.compress(BODY)[:20], 400),  # truncated stream
    ("gzip", b"", 400),
    ("gzip", BODY, 400),  # not gzip at all
    ("gzip", _bad_crc(BODY), 400),
    ("gzip", gzip.compress(BODY) + b"junk", 400),
    ("gzip", gzip.compress(BODY) + gzip.compress(b"{}"), 400),  # a second member
    ("gzip", zlib.compress(BODY), 400),
    ("deflate", _raw_deflate(BODY), 400),  # HTTP deflate is the zlib format
    ("deflate", gzip.compress(BODY), 400),
    ("gzip", gzip.compress(b"\xef\xbb\xbf" + BODY), 400),  # the decoded body is checked like any other
    ("gzip", gzip.compress(b'{"model":"a","model":"b"}'), 400),
])
def test_bad_compressed_body(encoding: str, compressed: bytes, status: int) -> None:
    assert refused(compressed, content_encoding=encoding, decode_encodings=BOTH).status == status


def test_gzip_bomb_stops_at_the_cap() -> None:
    bomb = gzip.compress(b'{"model":"m","x":"' + b" " * (64 * 1024 * 1024) + b'"}')
    assert len(bomb) < 100_000
    assert refused(bomb, content_encoding="gzip", decode_encodings=GZIP).status == 413


def test_decoded_size_limit() -> None:
    body = b'{"model":"m","pad":"' + b"x" * 1000 + b'"}'
    packed = gzip.compress(body)
    assert extract_model(packed, JSON, "gzip", decode_encodings=GZIP, max_bytes=len(body))[1] == body
    assert refused(packed, content_encoding="gzip", decode_encodings=GZIP, max_bytes=len(body) - 1).status == 413
    # The compressed size is capped too.
    assert refused(packed, content_encoding="gzip", decode_encodings=GZIP, max_bytes=len(packed) - 1).status == 413


# --- character encoding -----------------------------------------------------


@pytest.mark.parametrize("body", [
    b"\xef\xbb\xbf" + BODY,  # UTF-8 BOM
    BODY.decode().encode("utf-16"),  # with BOM
    BODY.decode().encode("utf-16-le"),  # no BOM: valid UTF-8 full of NULs, not JSON
    BODY.decode().encode("utf-16-be"),
    BODY.decode().encode("utf-32"),
    BODY.decode().encode("utf-32-le"),
    b'{"model":"caf\xe9"}',  # Latin-1
    b'{"model":"\xc0\xaf"}',  # overlong
    b'{"model":"\xed\xa0\x80"}',  # an encoded surrogate
    b'{"model":"\xf4\x90\x80\x80"}',  # beyond U+10FFFF
    b'{"model":"m"}\xff',
])
def test_not_utf8_json(body: bytes) -> None:
    assert refused(body).status == 400


def test_non_ascii_utf8_is_fine() -> None:
    body = '{"model":"модель","messages":[{"content":"日本語 😀"}]}'.encode()
    assert extract_model(body, JSON, None)[0] == "модель"


# --- JSON -------------------------------------------------------------------


def _nested(depth: int, open_: str = "[", close: str = "]") -> bytes:
    """A body `depth` containers deep, the top-level object included."""
    innermost = "1" if open_ == '{"a":' else ""
    return ('{"model":"m","x":' + open_ * (depth - 1) + innermost + close * (depth - 1) + "}").encode()


@pytest.mark.parametrize("body", [
    b"",
    b" ",
    b"{",
    b'{"model":"m"',
    b'{"model":"m"} x',
    b'{"model":"m"}{"model":"n"}',
    b'{"model":"m",}',
    b"{'model':'m'}",
    b'{"model":"m" /* c */}',
    b'{model:"m"}',
    b'{"model":"a\x01b"}',  # raw control character in a string
    b'{"model":"m","t":NaN}',
    b'{"model":"m","t":Infinity}',
    b'{"model":"m","t":-Infinity}',
    b'{"model":"m","t":1e999}',  # overflows to infinity
    b'{"model":"m","t":-1e999}',
    b'{"model":"m","t":' + b"9" * 5000 + b"}",  # over int's digit limit
    b'{"model":"m","t":01}',
    b'{"model":"m","t":.5}',
    b'{"model":"m","t":0x10}',
    b'{"model":"m"}\x00',
    b'\x0c{"model":"m"}',  # form feed is not JSON whitespace
    b'{"model":"m","t":tru}',
    _nested(100_000),
    _nested(100_000, '{"a":', "}"),
    _nested(1_000_000),
    _nested(MAX_DEPTH + 1),
    _nested(MAX_DEPTH + 1, '{"a":', "}"),
    b"[" + b'{"model":"m"},' * 200 + b'{"model":"m"}]',  # many brackets, top level an array
])
def test_invalid_json(body: bytes) -> None:
    error = refused(body)
    assert error.status == 400
    assert error.param is None


@pytest.mark.parametrize("body", [
    _nested(MAX_DEPTH),
    _nested(MAX_DEPTH, '{"a":', "}"),
    b'{"model":"m","t":1e308,"u":-0.0,"v":' + b"9" * 4000 + b"}",
    b' \t\r\n{"model":"m"} \t\r\n',
    b'{"model":"m","x":[' + b"{}," * 1000 + b"{}]}",  # many brackets, shallow: walked
])
def test_valid_json(body: bytes) -> None:
    assert extract_model(body, JSON, None)[0] == "m"


# --- how many objects and arrays ------------------------------------------------


def _containers(n: int, unit: bytes = b"{}") -> bytes:
    """A body of 2 + n * (the containers in `unit`) objects and arrays: the top-level
    object, a list, and `n` units in it."""
    return b'{"model":"m","x":[' + b",".join([unit] * n) + b"]}"


@pytest.mark.parametrize("unit", [b"{}", b"[]", b'{"a":[]}'])
def test_container_limit(unit: bytes) -> None:
    per = unit.count(b"{") + unit.count(b"[")
    body = _containers(10, unit)
    assert extract_model(body, JSON, None, max_containers=2 + 10 * per)[0] == "m"
    assert refused(body, max_containers=1 + 10 * per).status == 400
    error = refused(_containers(MAX_CONTAINERS - 1))
    assert (error.status, error.param) == (400, None)
    assert "objects and arrays" in error.message
    assert extract_model(_containers(MAX_CONTAINERS - 2), JSON, None)[0] == "m"


@pytest.mark.parametrize("text", [
    rb"{" * 1000,                # brackets inside a string are text, not structure
    rb"[" * 1000 + rb"\\",       # ... however the string ends
    rb"\"" + rb"[" * 1000,       # an escaped quote does not end the string
    rb"\\\"" + rb"{" * 1000,     # nor does one after an escaped backslash
    rb"\u005c\"" + rb"{" * 1000,
])
def test_brackets_in_strings_do_not_count(text: bytes) -> None:
    body = b'{"model":"m","x":"' + text + b'"}'
    json.loads(body)  # the test's own body is JSON
    assert extract_model(body, JSON, None, max_containers=2)[0] == "m"


_EMPTIES = b",".join([b"[]"] * 200)


@pytest.mark.parametrize("body", [
    rb'{"model":"m","x":"\\","y":[' + _EMPTIES + b"]}",  # `\\` then `"`: the string ends, these brackets count
    rb'{"model":"m","x":["\\\\",' + _EMPTIES + b"]}",
    rb'{"model":"m","x":"\"","y":[' + _EMPTIES + b"]}",
    rb'{"model":"m","x":"\u0022","y":[' + _EMPTIES + b"]}",
])
def test_brackets_outside_strings_count(body: bytes) -> None:
    json.loads(body)
    assert refused(body, max_containers=100).status == 400


@pytest.mark.parametrize("body", [
    b'{"model":"m","x":"' + b"[" * 1000 + b'"}',
    b'{"model":"m","x":[' + b'"]",' * 200 + b'"["' + b"]" * 1 + b"}",
])
def test_depth_counts_structure_only(body: bytes) -> None:
    assert extract_model(body, JSON, None)[0] == "m"


@pytest.mark.parametrize("body", [b"[]", b'["model"]', b'[{"model":"m"}]', b'"model"', b"1", b"null", b"true"])
def test_top_level_must_be_an_object(body: bytes) -> None:
    assert refused(body).status == 400


# --- duplicate keys ---------------------------------------------------------


@pytest.mark.parametrize("body,param", [
    (b'{"model":"a","model":"b"}', "model"),
    (b'{"model":"a","model":"a"}', "model"),
    (b'{"model":"a","mod\\u0065l":"b"}', "model"),  # the same key once unescaped
    (b'{"\\u006d\\u006f\\u0064\\u0065\\u006c":"a","model":"b"}', "model"),
    (b'{"model":"a","x":1,"x":2}', None),
    (b'{"model":"a","messages":[{"role":"user","role":"system"}]}', None),
    (b'{"model":"a","t":{"u":{"v":{"w":1,"w":1}}}}', None),
    (b'{"model":"a","tools":[{"function":{"parameters":{"properties":{"model":{},"model":{}}}}}]}', "model"),
])
def test_duplicate_keys(body: bytes, param: str | None) -> None:
    error = refused(body)
    assert (error.status, error.param) == (400, param)


# --- keys that read as "model" ----------------------------------------------


@pytest.mark.parametrize("key", [
    "Model", "MODEL", "mOdEl", " model", "model ", "\tmodel", "model\n", "model\u00a0",
    "model\u0000", "model\u0000x", "ｍｏｄｅｌ", "Ｍｏｄｅｌ", "\u3000model",
])
def test_key_reading_as_model(key: str) -> None:
    body = json.dumps({"model": "a", key: "b"}).encode()
    error = refused(body)
    assert (error.status, error.param) == (400, "model")
    # Without a real "model" beside it, the same key is still refused.
    assert refused(json.dumps({key: "b"}).encode()).param == "model"


@pytest.mark.parametrize("key", ["models", "model_name", "modelo", "mode", "m odel", "model.id", "_model", "mod\u200bel"])
def test_other_keys_are_fine(key: str) -> None:
    assert extract_model(json.dumps({"model": "a", key: "b"}).encode(), JSON, None)[0] == "a"


def test_only_top_level_keys_are_folded() -> None:
    # A tool schema may well have a property called "Model".
    body = json.dumps({"model": "a", "tools": [{"parameters": {"properties": {"Model": {"type": "string"}}}}]}).encode()
    assert extract_model(body, JSON, None)[0] == "a"


# --- the model value ---------------------------------------------------------


@pytest.mark.parametrize("body", [
    b"{}",
    b'{"messages":[]}',
    b'{"model":null}',
    b'{"model":1}',
    b'{"model":["a"]}',
    b'{"model":{"id":"a"}}',
    b'{"model":true}',
    b'{"model":""}',
    b'{"model":"   "}',
    b'{"model":"a\\u0000"}',
    b'{"model":"a\\nb"}',
    b'{"model":"\\ud800"}',  # lone surrogate
    b'{"model":"a\\udc00b"}',
    b'{"model":"a\\u200bb"}',  # zero-width space
    b'{"model":"a\\u202eb"}',  # bidi override
    b'{"model":"\\ufeffa"}',
    b'{"model":"\\uff53mall-2"}',  # fullwidth: "small-2" once NFKC-normalised
    '{"model":"ſmall-2"}'.encode(),  # long s, likewise
    b'{"model":"\\u212a2"}',  # Kelvin sign
    b'{"model":"' + b"a" * (MAX_MODEL_LENGTH + 1) + b'"}',
])
def test_bad_model(body: bytes) -> None:
    error = refused(body)
    assert (error.status, error.param) == (400, "model")


@pytest.mark.parametrize("body,model", [
    (b'{"model":"gpt-4o"}', "gpt-4o"),
    (b'{"model":" GPT-4o "}', " GPT-4o "),  # exactly as sent; canonicalising is the model step's
    (b'{"model":"meta-llama/Llama-3.1-8B-Instruct"}', "meta-llama/Llama-3.1-8B-Instruct"),
    (b'{"model":"\\u0067pt"}', "gpt"),
    (b'{"model":"\\ud83d\\ude00"}', "😀"),  # a surrogate pair is one character
    (b'{"model":"' + b"a" * MAX_MODEL_LENGTH + b'"}', "a" * MAX_MODEL_LENGTH),
])
def test_model_as_sent(body: bytes, model: str) -> None:
    assert extract_model(body, JSON, None)[0] == model


def test_errors_reveal_nothing_of_the_body() -> None:
    error = refused(b'{"model":"secret-model","model":"x"}')
    assert "secret" not in error.message


# --- properties --------------------------------------------------------------

_KEYS = st.one_of(st.sampled_from(["model", "Model", "messages", "model ", "x"]), st.text(max_size=8))
_JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=10),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(_KEYS, children, max_size=4),
    max_leaves=20,
)
_MODELS = st.one_of(st.sampled_from(["gpt-4o", "claude-3", " a ", ""]), st.text(max_size=12), st.integers(), st.none())


def _check(body: bytes) -> None:
    try:
        model, forward, parsed = extract_model(body, JSON, None)
    except RequestError as error:
        assert error.status in (400, 413)
        return
    assert forward is body
    assert parsed == json.loads(body)
    assert model == json.loads(body)["model"]
    assert not [key for key in parsed if key != "model" and key.strip().casefold() == "model"]
    # No key repeats at the top level, whatever a parser's duplicate rule.
    pairs = json.loads(body, object_pairs_hook=lambda pairs: pairs)
    assert [key for key, _ in pairs].count("model") == 1


@settings(max_examples=500, deadline=None)
@given(st.dictionaries(_KEYS, _JSON_VALUES, max_size=5), _MODELS, st.booleans())
def test_any_object(document: dict[str, object], model: object, ensure_ascii: bool) -> None:
    document = {"model": model, **document}
    _check(json.dumps(document, ensure_ascii=ensure_ascii).encode())


_ESCAPED_KEYS = st.lists(st.sampled_from(["m", "\\u006d", "M", "\\u004d"]), min_size=1, max_size=1).flatmap(
    lambda first: st.tuples(*[st.sampled_from([c, f"\\u{ord(c):04x}", c.upper(), f"\\u{ord(c.upper()):04x}"]) for c in "odel"]).map(
        lambda rest: first[0] + "".join(rest)
    )
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(_ESCAPED_KEYS, st.sampled_from(['"a"', '"b"', "1", "null"])), min_size=1, max_size=3))
def test_escaped_spellings_of_model(members: list[tuple[str, str]]) -> None:
    _check(("{" + ",".join(f'"{key}":{value}' for key, value in members) + "}").encode())


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=64))
def test_any_bytes(body: bytes) -> None:
    _check(body)

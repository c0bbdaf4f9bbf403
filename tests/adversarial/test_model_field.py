"""Adversarial: parser differentials on the model field, end to end.

Every case goes over real HTTP to a real gateway in front of a recording
upstream. The caller (org-public, from the US) may use `small-2`; at the
stack's decision time `frontier-5.6` is in limited release and concealed from
it. Each case tries to make the gateway decide on one model while the upstream
reads another (or reads one the gateway never saw), and asserts:

- the status is the expected one, never a 500, and a refusal comes in the
  API's own error shape (OpenAI's, or Anthropic's on /v1/messages) with a
  decision id;
- a refused or denied request never reaches the upstream;
- an allowed one reaches it once, and every way the upstream might read its
  model — Python's json (last key wins), first key wins, Go-like
  case-insensitive, C-like NUL-terminated and NFKC-folded keys, a query
  parameter split on `&` or `;` — gives exactly the model the gateway decided
  on (the audit record's `requested_model`).
"""

from __future__ import annotations

import gzip
import http.client
import json
import re
import shutil
import socket
import unicodedata
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote_plus

import pytest

from e2e import US_IP, Stack
from gateway.config import ConfigError, load_config

ALLOWED, DENIED = "small-2", "frontier-5.6"
CHAT = "/v1/chat/completions"
MESSAGES = [{"role": "user", "content": "hi"}]
JSON_TYPE = "application/json"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    stack = Stack(tmp_path_factory.mktemp("model-field"))
    yield stack
    stack.close()


@pytest.fixture(scope="module")
def decoding(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A gateway configured to decode gzip and deflate request bodies."""
    stack = Stack(tmp_path_factory.mktemp("model-field-decoding"),
                  extra_config="request: {decode_encodings: [gzip, deflate], max_body_bytes: 200000}")
    yield stack
    stack.close()


# Not imported from tests/conftest.py: a conftest.py in this directory would shadow that module name.
REFERENCE_POLICY = Path(__file__).resolve().parents[1] / "fixtures" / "reference" / "policy"
# Routes of APIs that name the model in the path or a form body: the gateway does not decide on them.
PATH_ROUTES = ["/openai/deployments", "/v1/engines", "/model", "/v1beta/models", "/v1/audio/transcriptions"]


@pytest.fixture(scope="module")
def configured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A gateway that allows models its policy does not list."""
    directory = tmp_path_factory.mktemp("model-field-routes")
    policy = directory / "policy"
    shutil.copytree(REFERENCE_POLICY, policy)
    framework = policy / "framework.yaml"
    framework.write_text(framework.read_text().replace("unknown_models: deny", "unknown_models: allow"))
    stack = Stack(directory, policy_dir=policy)
    yield stack
    stack.close()


# --- sending and checking ---------------------------------------------------------


def send(stack: Stack, method: str, target: str, body: bytes | None = None,
         headers: list[tuple[str, str]] | None = None, *, content_type: str | None = JSON_TYPE,
         credentials: bool = True) -> tuple[int, dict[str, str], bytes]:
    """One request exactly as given: headers may repeat, none are added but
    Host, credentials, X-Forwarded-For, Content-Type and Content-Length."""
    host, port = stack.url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=15)
    connection.putrequest(method, target, skip_host=True, skip_accept_encoding=True)
    connection.putheader("Host", f"{host}:{port}")
    if credentials:
        connection.putheader("Authorization", f"Bearer {stack.api_key('org-public')}")
    connection.putheader("X-Forwarded-For", US_IP)
    if content_type is not None:
        connection.putheader("Content-Type", content_type)
    for name, value in headers or []:
        connection.putheader(name, value)
    if body is not None:
        connection.putheader("Content-Length", str(len(body)))
    connection.endheaders(body)
    response = connection.getresponse()
    data = response.read()
    connection.close()
    return response.status, {k.lower(): v for k, v in response.getheaders()}, data


def upstream_models(method: str, path: str, query: bytes, body: bytes) -> set[Any]:
    """Every model some upstream parser could read from this request."""
    seen: set[Any] = set()
    segments = path.split("/")
    seen.update(segments[i + 1] for i in range(1, len(segments) - 1)
                if segments[i] in ("deployments", "engines", "models", "model") and segments[i - 1] != "v1")
    for parameter in re.split("[&;]", query.decode("latin-1")):
        name, _, value = parameter.partition("=")
        if unquote_plus(name).split("[")[0].strip().casefold() == "model":
            seen.add(unquote_plus(value))
    if method != "POST" or not body:
        return seen
    pairs = json.loads(body, object_pairs_hook=lambda pairs: pairs)
    keys = {
        "python": lambda key: key == "model",
        "go": lambda key: key.casefold() == "model",
        "c": lambda key: key.partition("\x00")[0] == "model",
        "nfkc": lambda key: unicodedata.normalize("NFKC", key).strip().casefold() == "model",
    }
    for matches in keys.values():
        values = [value for key, value in pairs if matches(key)]
        seen.update(json.dumps(v) if not isinstance(v, str) else v for v in (values[:1] + values[-1:]))
    seen.add(json.loads(body)["model"])
    seen.add(json.loads(body, object_pairs_hook=lambda pairs: dict(reversed(pairs)))["model"])
    return seen


def path_of(target: str) -> str:
    return re.split("[?#]", target, maxsplit=1)[0]


def upstream_answered(headers: dict[str, str]) -> bool:
    """The answer is the upstream's own (the demo upstream names itself)."""
    return "x-demo-upstream" in headers


def assert_denial_shape(path: str, headers: dict[str, str], data: bytes) -> None:
    assert headers.get("x-gateway-decision-id"), headers
    payload = json.loads(data)
    if path.startswith("/v1/messages"):
        assert payload["type"] == "error" and set(payload["error"]) == {"type", "message"}, payload
    else:
        assert set(payload["error"]) == {"message", "type", "param", "code"}, payload


def check(stack: Stack, expected: int, method: str, target: str, body: bytes | None = None,
          headers: list[tuple[str, str]] | None = None, **options: Any) -> dict[str, Any] | None:
    """Send, then assert the status, the shape, and what reached the upstream.
    Returns the upstream's record of an allowed request."""
    stack.upstream.app.reset()
    status, reply_headers, data = send(stack, method, target, body, headers, **options)
    assert status == expected, (status, data[:300])
    assert status != 500
    received = stack.received
    if status >= 400 and not upstream_answered(reply_headers):
        assert_denial_shape(target, reply_headers, data)
        assert received == [], f"a {status} reached the upstream: {received}"
        return None
    [seen] = received
    assert seen.method == method and seen.path == path_of(target)
    decided = stack.audit_records()[-1]["requested_model"]
    views = upstream_models(seen.method, seen.path, seen.query_string, seen.body)
    assert views <= {decided}, f"the gateway decided on {decided!r}, the upstream may read {views!r}"
    # An upstream that NFKC-normalises names resolves the name the policy resolved.
    assert unicodedata.normalize("NFKC", decided).strip().casefold() == decided.strip().casefold()
    return {"record": seen, "decided": decided}


def chat(model: str = ALLOWED, **extra: Any) -> bytes:
    return json.dumps({"model": model, "messages": MESSAGES, **extra}).encode()


def raw(text: str) -> bytes:
    """A body written by hand (escapes stay as written)."""
    return text.encode("utf-8", "surrogatepass")


# --- duplicate keys, in any spelling -----------------------------------------------

M = '"messages":[{"role":"user","content":"hi"}]'


@pytest.mark.parametrize("body", [
    f'{{"model":"{ALLOWED}","model":"{DENIED}",{M}}}',
    f'{{"model":"{DENIED}","model":"{ALLOWED}",{M}}}',
    f'{{"model":"{ALLOWED}","model":"{ALLOWED}",{M}}}',
    f'{{"model":"{ALLOWED}","Model":"{DENIED}",{M}}}',
    f'{{"MODEL":"{DENIED}","model":"{ALLOWED}",{M}}}',
    f'{{"model":"{ALLOWED}","mOdEl":"{DENIED}",{M}}}',
    f'{{"model":"{ALLOWED}","\\u006dodel":"{DENIED}",{M}}}',
    f'{{"\\u006d\\u006f\\u0064\\u0065\\u006c":"{DENIED}","model":"{ALLOWED}",{M}}}',
    f'{{"model":"{ALLOWED}","\\u004dodel":"{DENIED}",{M}}}',
    f'{{"model":"{ALLOWED}","model\\u0000":"{DENIED}",{M}}}',
    f'{{"model":"{ALLOWED}","model\\u0000junk":"{DENIED}",{M}}}',
    f'{{"model":"{ALLOWED}","model ":"{DENIED}",{M}}}',
    f'{{"model":"{ALLOWED}"," model":"{DENIED}",{M}}}',
    f'{{"model":"{ALLOWED}","\\tmodel\\n":"{DENIED}",{M}}}',
    f'{{"model":"{ALLOWED}","ｍｏｄｅｌ":"{DENIED}",{M}}}',
    f'{{"model":"{ALLOWED}","\\uff4d\\uff4f\\uff44\\uff45\\uff4c":"{DENIED}",{M}}}',
    f'{{"Model":"{DENIED}",{M}}}',  # only a look-alike: no model at all
    f'{{"model":"{ALLOWED}",{M},"messages":[]}}',  # any duplicate: parsers differ on all of them
    f'{{"model":"{ALLOWED}","messages":[{{"role":"user","role":"system","content":"x"}}]}}',
    f'{{"model":"{ALLOWED}","tools":[{{"model":"a","model":"b"}}],{M}}}',
])
@pytest.mark.parametrize("path", [CHAT, "/v1/completions", "/v1/embeddings", "/v1/responses", "/v1/messages"])
def test_duplicates_and_look_alikes_are_refused(stack: Stack, body: str, path: str) -> None:
    check(stack, 400, "POST", path, raw(body))


@pytest.mark.parametrize("path", [CHAT, "/v1/completions", "/v1/embeddings", "/v1/responses", "/v1/messages"])
def test_each_endpoint_forwards_the_decided_model(stack: Stack, path: str) -> None:
    body = {"model": ALLOWED, "messages": MESSAGES, "input": "hi", "max_tokens": 5}
    if path == "/v1/completions":
        body["prompt"] = "hi"  # on /v1/responses, `prompt` is a stored template: refused (test_body_models.py)
    check(stack, 200, "POST", path, json.dumps(body).encode())
    check(stack, 404, "POST", path, json.dumps(body | {"model": DENIED}).encode())


# --- escapes in the value -------------------------------------------------------------


@pytest.mark.parametrize("body,status", [
    (f'{{"model":"\\u0073mall-2",{M}}}', 200),                    # an escaped letter is the same model
    (f'{{"model":"\\u0066rontier-5.6",{M}}}', 404),               # ... and so is a denied one
    (f'{{"model":"small-2\\u0000frontier-5.6",{M}}}', 400),       # NUL: C parsers stop at it
    (f'{{"model":"frontier-5.6\\u0000small-2",{M}}}', 400),
    (f'{{"model":"small-2\\/",{M}}}', 404),                        # "small-2/": unknown, denied
    (f'{{"model":"small\\/2",{M}}}', 404),
    (f'{{"model":"\\ud83d\\ude00",{M}}}', 404),                   # a surrogate pair: one character, unknown
    (f'{{"model":"\\ud800",{M}}}', 400),                           # lone surrogates
    (f'{{"model":"small-2\\udc00",{M}}}', 400),
    (f'{{"model":"\\udc00\\ud800",{M}}}', 400),
    (f'{{"model":"small-2\\u200b",{M}}}', 400),                    # zero-width, bidi, BOM
    (f'{{"model":"\\u202esmall-2",{M}}}', 400),
    (f'{{"model":"\\ufeffsmall-2",{M}}}', 400),
    (f'{{"model":"small-2\\n",{M}}}', 400),
    (f'{{"model":"small\\u00ad-2",{M}}}', 400),                    # soft hyphen
    (f'{{"model":"\\uff53mall-2",{M}}}', 400),                     # fullwidth: small-2 to an NFKC-normalising upstream
    (f'{{"model":"SMALL-2",{M}}}', 200),                           # canonicalised: same model
    (f'{{"model":"FRONTIER-5.6",{M}}}', 404),
    (f'{{"model":" frontier-5.6 ",{M}}}', 404),
    (f'{{"model":"fr-5.6",{M}}}', 404),                            # an alias is the model it names
    (f'{{"model":"small-latest",{M}}}', 200),
    (f'{{"model":"small-2","x":"\\ud800",{M}}}', 200),              # elsewhere, a lone surrogate is only data
    ('{"model":"small-2","messages":[{"role":"user","content":"\\u0000\\/\\ud83d\\ude00"}]}', 200),
    (f'{{"model":"\\x73mall-2",{M}}}', 400),                       # not JSON escapes
    (f'{{"model":"\\u73mall-2",{M}}}', 400),
    (f'{{"model":"\\U00000073mall-2",{M}}}', 400),
    (f"{{'model':'small-2',{M}}}", 400),
])
def test_escapes_in_the_value(stack: Stack, body: str, status: int) -> None:
    check(stack, status, "POST", CHAT, raw(body))


# --- encodings ---------------------------------------------------------------------------

PLAIN = '{"model":"small-2","messages":[{"role":"user","content":"hi"}]}'


@pytest.mark.parametrize("body", [
    PLAIN.encode("utf-16"), PLAIN.encode("utf-16-le"), PLAIN.encode("utf-16-be"),
    PLAIN.encode("utf-32"), PLAIN.encode("utf-32-le"), PLAIN.encode("utf-32-be"),
    b"\xef\xbb\xbf" + PLAIN.encode(), b"\xef\xbb\xbf\xef\xbb\xbf" + PLAIN.encode(),
    '{"model":"smäll-2","messages":[]}'.encode("latin-1"),
    b'{"model":"small-2","x":"\xc0\xaf"}',                           # overlong "/"
    b'{"model":"small-2\xc0\x80"}',                                  # overlong NUL
    b'{"model":"\xed\xa0\xbd\xed\xb8\x80"}',                         # CESU-8 surrogates
    b'{"model":"small-2","x":"\xf8\x88\x80\x80\x80"}',              # 5-byte sequence
    b'{"model":"small-2"}\xff',
])
def test_bodies_not_in_utf8_are_refused(stack: Stack, body: bytes) -> None:
    check(stack, 400, "POST", CHAT, body)


@pytest.mark.parametrize("content_type", [
    "application/json; charset=utf-16", "application/json; charset=latin-1", "application/json; charset=UTF-32BE",
    'application/json; charset="iso-8859-1"', "application/json; charset=utf-8; charset=utf-16",
])
def test_a_charset_other_than_utf8_is_refused(stack: Stack, content_type: str) -> None:
    check(stack, 415, "POST", CHAT, PLAIN.encode("utf-16") if "16" in content_type else PLAIN.encode(),
          content_type=content_type)


# --- nesting, batches, numbers, sizes ----------------------------------------------------


@pytest.mark.parametrize("body,status", [
    (f'{{"messages":[{{"role":"user","content":"hi","model":"{DENIED}"}}]}}', 400),       # nested only: none at the top
    (f'{{"params":{{"model":"{DENIED}"}},{M}}}', 400),
    (f'{{"model":"{ALLOWED}","params":{{"model":"{DENIED}"}},{M}}}', 200),                # data, not the model
    (f'{{"model":"{ALLOWED}","tools":[{{"type":"function","model":"{DENIED}"}}],{M}}}', 200),
    (f'{{"model":{{"model":"{ALLOWED}"}},{M}}}', 400),
    (f'{{"model":["{ALLOWED}"],{M}}}', 400),
    (f'{{"model":null,{M}}}', 400),
    (f'{{"model":5,{M}}}', 400),
    (f'[{{"model":"{ALLOWED}",{M}}},{{"model":"{DENIED}",{M}}}]', 400),                     # a batch in one body
    (f'[{{"model":"{ALLOWED}",{M}}}]', 400),
    ('"small-2"', 400),
    (f'{{"model":"{ALLOWED}",{M}}}{{"model":"{DENIED}"}}', 400),                            # trailing documents
    (f'{{"model":"{ALLOWED}",{M}}}\n{{"model":"{DENIED}"}}', 400),                          # JSON lines
    (f'{{"model":"{ALLOWED}",{M}}}\x00{{"model":"{DENIED}"}}', 400),
    (f'{{"model":"{ALLOWED}",{M}}} garbage', 400),
    (f'{{"model":"{ALLOWED}",{M},}}', 400),
    (f'{{"model":"{ALLOWED}",{M}}} \r\n\t', 200),
    (f'{{"model":"{ALLOWED}","t":NaN,{M}}}', 400),
    (f'{{"model":"{ALLOWED}","t":Infinity,{M}}}', 400),
    (f'{{"model":"{ALLOWED}","t":-Infinity,{M}}}', 400),
    (f'{{"model":"{ALLOWED}","t":1e400,{M}}}', 400),
    (f'{{"model":"{ALLOWED}","t":{"9" * 5000},{M}}}', 400),
    (f'{{"model":"{ALLOWED}","t":{"9" * 4000},"u":1e308,"v":-0.0,"w":1e-400,{M}}}', 200),
    (f'{{"model":"{ALLOWED}","x":{"[" * 127}{"]" * 127},{M}}}', 200),
    (f'{{"model":"{ALLOWED}","x":{"[" * 128}{"]" * 128},{M}}}', 400),
    (f'{{"model":"{ALLOWED}","x":{"[" * 100_000}{"]" * 100_000},{M}}}', 400),
    ('{"model":"small-2","x":' + '{"a":' * 5000 + "1" + "}" * 5000 + "}", 400),
    (f'{{"model":"{"a" * 257}",{M}}}', 400),
    (f'{{"model":"{ALLOWED}","pad":"{"x" * 3_000_000}",{M}}}', 200),                       # large but under the cap
])
def test_structure(stack: Stack, body: str, status: int) -> None:
    check(stack, status, "POST", CHAT, raw(body))


def test_body_over_the_cap_is_413(stack: Stack) -> None:
    check(stack, 413, "POST", CHAT, chat(pad="x" * (4 * 1024 * 1024)))


# --- compression ---------------------------------------------------------------------------

BODY = chat()
DENIED_BODY = chat(DENIED)


def _deflate_raw(data: bytes) -> bytes:
    compressor = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return compressor.compress(data) + compressor.flush()


@pytest.mark.parametrize("body,coding,status", [
    (gzip.compress(BODY), "gzip", 415),            # not configured to decode: never guessed at
    (zlib.compress(BODY), "deflate", 415),
    (BODY, "br", 415),
    (BODY, "zstd", 415),
    (BODY, "compress", 415),
    (gzip.compress(gzip.compress(BODY)), "gzip, gzip", 415),
    (BODY, "gzip", 415),                           # a lying encoding
    (gzip.compress(BODY), "identity", 400),        # a lying identity: gzip bytes are not JSON
    (BODY, "identity", 200),
    (BODY, "IDENTITY", 200),
])
def test_compression_when_not_decoding(stack: Stack, body: bytes, coding: str, status: int) -> None:
    check(stack, status, "POST", CHAT, body, [("Content-Encoding", coding)])


def test_two_content_encoding_headers_are_refused(stack: Stack) -> None:
    check(stack, 400, "POST", CHAT, BODY, [("Content-Encoding", "identity"), ("Content-Encoding", "gzip")])


@pytest.mark.parametrize("body,coding,status", [
    (gzip.compress(BODY), "gzip", 200),
    (gzip.compress(BODY), "x-gzip", 200),
    (zlib.compress(BODY), "deflate", 200),
    (gzip.compress(DENIED_BODY), "gzip", 404),
    (gzip.compress(raw(f'{{"model":"{ALLOWED}","model":"{DENIED}"}}')), "gzip", 400),
    (gzip.compress(raw(f'{{"model":"{ALLOWED}","Model":"{DENIED}"}}')), "gzip", 400),
    (gzip.compress(b"\xef\xbb\xbf" + BODY), "gzip", 400),
    (gzip.compress(BODY.decode().encode("utf-16")), "gzip", 400),
    (gzip.compress(gzip.compress(BODY)), "gzip", 400),              # double-encoded, declared once
    (gzip.compress(gzip.compress(BODY)), "gzip, gzip", 415),        # stacked codings are not decoded
    (gzip.compress(BODY), "gzip, identity", 415),
    (gzip.compress(BODY), "deflate", 400),                          # lying: the wrong coding
    (zlib.compress(BODY), "gzip", 400),
    (_deflate_raw(BODY), "deflate", 400),                           # raw deflate is not HTTP deflate
    (gzip.compress(BODY) + gzip.compress(DENIED_BODY), "gzip", 400),  # a second member
    (gzip.compress(BODY) + b"trailing", "gzip", 400),
    (gzip.compress(BODY)[:-6], "gzip", 400),                        # truncated
    (BODY, "gzip", 400),                                            # not compressed at all
    (BODY, "br", 415),
    (gzip.compress(chat(pad="a" * 300_000)), "gzip", 413),          # inflates past max_body_bytes
    (gzip.compress(b'{"model":"small-2","pad":"' + b" " * 50_000_000 + b'"}'), "gzip", 413),  # a bomb
    (zlib.compress(b'{"model":"small-2","pad":"' + b" " * 50_000_000 + b'"}', 9), "deflate", 413),
])
def test_compression_when_decoding(decoding: Stack, body: bytes, coding: str, status: int) -> None:
    result = check(decoding, status, "POST", CHAT, body, [("Content-Encoding", coding)])
    if result is not None:
        seen = result["record"]
        # Forwarded decoded, without the coding: the upstream parses the very bytes decided on.
        assert seen.header("content-encoding") is None
        assert seen.body == BODY and int(seen.header("content-length")) == len(BODY)


# --- content types ---------------------------------------------------------------------------


def _multipart(fields: dict[str, str]) -> tuple[bytes, str]:
    boundary = "xYzBoundary"
    parts = "".join(f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n' for k, v in fields.items())
    return (parts + f"--{boundary}--\r\n").encode(), f"multipart/form-data; boundary={boundary}"


@pytest.mark.parametrize("body,content_type,status", [
    (BODY, None, 415),
    (BODY, "text/plain", 415),
    (BODY, "text/json", 415),
    (BODY, "application/x-ndjson", 415),
    (BODY, "application/json-patch+json", 415),
    (BODY, "application/json, text/plain", 415),
    (BODY, "*/*", 415),
    (*_multipart({"model": DENIED, "purpose": "batch"}), 415),
    (*_multipart({"model": ALLOWED}), 415),
    (b"model=frontier-5.6&messages=hi", "application/x-www-form-urlencoded", 415),
    (BODY, "application/json; charset=utf-8", 200),
    (BODY, "Application/JSON;charset=UTF-8", 200),
    (BODY, 'application/json; charset="utf-8"', 200),
    (BODY, "application/json; charset =latin-1", 415),
    (BODY, "application/json;;", 200),
])
def test_content_types(stack: Stack, body: bytes, content_type: str | None, status: int) -> None:
    check(stack, status, "POST", CHAT, body, content_type=content_type)


def test_two_content_type_headers_are_refused(stack: Stack) -> None:
    check(stack, 400, "POST", CHAT, BODY, [("Content-Type", "text/plain")])


def test_chunked_body_is_read_whole(stack: Stack) -> None:
    """Transfer-Encoding: chunked, the model split across chunks."""
    host, port = stack.url.removeprefix("http://").split(":")
    half = len(DENIED_BODY) // 2
    for body, status in ((BODY, b"200"), (DENIED_BODY, b"404")):
        stack.upstream.app.reset()
        chunks = [body[:half], body[half:]]
        request = (f"POST {CHAT} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {stack.api_key('org-public')}\r\n"
                   f"X-Forwarded-For: {US_IP}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n"
                   f"Connection: close\r\n\r\n").encode()
        request += b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(request)
            reply = b""
            while chunk := sock.recv(65536):
                reply += chunk
        assert reply.split(b" ", 2)[1] == status, reply[:200]
        assert len(stack.received) == (1 if status == b"200" else 0)
        if stack.received:
            assert json.loads(stack.received[0].body)["model"] == ALLOWED


# --- models in the path and the query ---------------------------------------------------------


@pytest.mark.parametrize("query", [
    f"model={DENIED}", f"MODEL={DENIED}", f"Model={DENIED}", f"mod%65l={DENIED}", f"%6dodel={DENIED}",
    f"%256dodel={DENIED}", f"model%00={DENIED}", f"+model={DENIED}", f"model+={DENIED}", f"%20model={DENIED}",
    f"model[]={DENIED}", f"model[0]={DENIED}", f"model.id={DENIED}", f"x=1;model={DENIED}", f"x=1&model={DENIED}",
    f"api-version=1;model={DENIED}", f"%EF%BD%8D%EF%BD%8F%EF%BD%84%EF%BD%85%EF%BD%8C={DENIED}", f"model={ALLOWED}",
    "model", "modelx=1", "model_id=1",  # whatever follows "model": refused rather than guessed about
])
def test_a_model_in_the_query_is_refused(stack: Stack, query: str) -> None:
    check(stack, 400, "POST", f"{CHAT}?{query}", BODY)


@pytest.mark.parametrize("query", ["api-version=2024-06-01", "stream=true&x=models", "remodel=1", "x=model"])
def test_other_query_parameters_pass(stack: Stack, query: str) -> None:
    result = check(stack, 200, "POST", f"{CHAT}?{query}", BODY)
    assert result is not None and result["record"].query_string == query.encode()


@pytest.mark.parametrize("target,status", [
    (f"/v1/models/{ALLOWED}", 200),
    (f"/v1/models/{DENIED}", 404),
    ("/v1/models/FRONTIER-5.6", 404),
    ("/v1/models/fr-5.6", 404),
    (f"/v1/models/{ALLOWED}/../{DENIED}", 400),
    (f"/v1/models/{ALLOWED}/..%2f{DENIED}", 400),
    (f"/v1/models/{ALLOWED}%2f..%2f{DENIED}", 400),
    ("/v1/models/%66rontier-5.6", 400),
    (f"/v1/models/{DENIED};{ALLOWED}", 400),
    (f"/v1/models/{ALLOWED};{DENIED}", 400),
    (f"/v1/models//{DENIED}", 400),
    (f"/v1/models/{DENIED}/", 400),
    (f"/v1/models/./{DENIED}", 400),
    (f"/v1/models/{ALLOWED}\\..\\{DENIED}", 400),
    (f"/v1/models/{ALLOWED}?model={DENIED}", 400),
    (f"/v1/models/{ALLOWED}?x=1;model={DENIED}", 400),
    (f"/v1/models/{ALLOWED}#{DENIED}", 200),  # a fragment is never part of the path sent on
    (f"/V1/models/{DENIED}", 404),
    (f"/v1/Models/{DENIED}", 404),
])
def test_models_in_the_path(stack: Stack, target: str, status: int) -> None:
    result = check(stack, status, "GET", target, content_type=None)
    if result is not None:
        assert result["record"].path == path_of(target)
        assert result["decided"] == path_of(target).removeprefix("/v1/models/")


@pytest.mark.parametrize("route", PATH_ROUTES)
def test_routes_that_name_models_in_the_path_cannot_be_configured(tmp_path: Path, route: str) -> None:
    """Azure deployments, legacy engines, Bedrock, Gemini, multipart uploads: the
    gateway cannot decide on their models, so it refuses to start with them."""
    config = tmp_path / "gateway.yaml"
    config.write_text(f"routes: [/v1/chat/completions, {route}]\n")
    with pytest.raises(ConfigError) as refused:
        load_config(config, {})
    assert route in str(refused.value) and "POST /v1/chat/completions" in str(refused.value)


@pytest.mark.parametrize("target", [
    f"{CHAT}/deployments/{DENIED}", f"{CHAT}/models/{ALLOWED}", f"/v1/models/{DENIED}/chat/completions",
    f"/v1/responses/models/{DENIED}", f"/v1/messages/model/{DENIED}",
])
def test_a_model_in_an_inference_path_is_not_a_route(stack: Stack, target: str) -> None:
    check(stack, 404, "POST", target, BODY)


@pytest.mark.parametrize("model,status", [
    ("ｆｒｏｎｔｉｅｒ-5.6", 400),   # unknown to the policy, frontier-5.6 to an NFKC-normalising upstream
    ("Ｆｒｏｎｔｉｅｒ-5.6", 400),
    ("frontier-5.６", 400),
    ("ſmall-2", 400),               # long s: casefolds, and NFKC-normalises, to "small-2"
    ("\u212aodel", 400),            # Kelvin sign
    ("ﬁne-tuned", 400),             # a ligature
    ("frontier-5.6", 404),
    ("FRONTIER-5.6", 404),
])
def test_compatibility_characters_cannot_reach_a_known_model(configured: Stack, model: str, status: int) -> None:
    result = check(configured, status, "POST", CHAT, chat(model))
    if result is not None:
        assert result["decided"] == model


def test_a_body_on_a_model_read_is_not_forwarded(stack: Stack) -> None:
    """GET /v1/models/{id} is decided on the path; a body naming another model
    never reaches the upstream, which could otherwise read it."""
    result = check(stack, 200, "GET", f"/v1/models/{ALLOWED}", DENIED_BODY)
    assert result is not None and result["record"].body == b""
    assert result["record"].header("content-length") in (None, "0")


@pytest.mark.parametrize("method", ["DELETE", "POST", "PUT", "PATCH"])
def test_only_reads_of_a_model(stack: Stack, method: str) -> None:
    check(stack, 404, method, f"/v1/models/{ALLOWED}", BODY)


@pytest.mark.parametrize("target", [
    f"/openai/deployments/{DENIED}/chat/completions?api-version=2024-06-01",
    f"/deployments/{DENIED}/chat/completions",
    f"/v1/deployments/{DENIED}/chat/completions",
    f"/v1/engines/{DENIED}/completions",
    f"/v1/models/{DENIED}:generateContent",
    f"/v1beta/models/{DENIED}:generateContent",
    f"/model/{DENIED}/invoke",
    "/v1/batches",
    "/v1/files",
    f"/v1/realtime?model={DENIED}",
    "/v1/realtime/sessions",
])
def test_model_bearing_routes_that_are_not_served(stack: Stack, target: str) -> None:
    """Not in the configured routes: 404 (or 400 when the route would read a
    model only from the path, which no decision covers) and never forwarded."""
    status, headers, data = send(stack, "POST", target, BODY)
    assert status in (400, 404) and stack.received == []
    assert_denial_shape(target, headers, data)


@pytest.mark.parametrize("target", [f"{CHAT}/{DENIED}", f"/v1/responses/{DENIED}", f"/v1/responses/{DENIED}/cancel",
                                    f"/v1/messages/{DENIED}", f"/v1/embeddings/{DENIED}", f"{CHAT}/chatcmpl-1",
                                    "/v1/responses/resp_1/input_items", "/v1/messages/batches"])
@pytest.mark.parametrize("method", ["POST", "GET", "DELETE"])
def test_sub_paths_of_an_endpoint_are_not_routes(stack: Stack, target: str, method: str) -> None:
    """A route covers only the sub-paths the gateway knows how to decide on; others
    (stored completions and responses, batches) name no model: 404, never forwarded."""
    check(stack, 404, method, target, BODY)


@pytest.mark.parametrize("method", ["GET", "HEAD", "PUT", "PATCH", "DELETE", "OPTIONS"])
def test_inference_endpoints_are_served_only_on_post(stack: Stack, method: str) -> None:
    stack.upstream.app.reset()
    status, _, _ = send(stack, method, f"{CHAT}?model={ALLOWED}", BODY)
    assert status == 404 and stack.received == []


def test_responses_follow_up_names_its_model_in_the_body(stack: Stack) -> None:
    """A /v1/responses call that continues an earlier one still needs a model
    of its own in the body; without one it is refused, never forwarded."""
    check(stack, 400, "POST", "/v1/responses", raw('{"previous_response_id":"resp_1","input":"more"}'))
    check(stack, 200, "POST", "/v1/responses", raw('{"model":"small-2","previous_response_id":"resp_1","input":"x"}'))


def test_realtime_websocket_upgrade_is_never_forwarded(stack: Stack) -> None:
    host, port = stack.url.removeprefix("http://").split(":")
    stack.upstream.app.reset()
    request = (f"GET /v1/realtime?model={DENIED} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               f"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
               f"Authorization: Bearer {stack.api_key('org-public')}\r\nX-Forwarded-For: {US_IP}\r\n\r\n").encode()
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(request)
        reply = sock.recv(65536)
    status = int(reply.split(b" ", 2)[1])
    assert status != 101 and status < 500, reply[:200]
    assert stack.received == []


def test_no_request_was_answered_500(stack: Stack, decoding: Stack, configured: Stack) -> None:
    """Across everything above (the module's stacks), the audit has no 500."""
    for each in (stack, decoding, configured):
        statuses = {record["status"] for record in each.audit_records()}
        assert statuses and 500 not in statuses, statuses


def test_a_model_the_policy_does_not_list_goes_to_the_default_upstream_when_allowed(configured: Stack) -> None:
    """`unknown_models: allow`: an unlisted model is decided as covered, and a vetted
    partner's request for it is forwarded to the default upstream."""
    before = len(configured.received)
    body = json.dumps({"model": "frontier-9-preview", "messages": [{"role": "user", "content": "hi"}]}).encode()
    status, _, data = send(configured, "POST", "/v1/chat/completions", body, credentials=False,
                           headers=[("Authorization", f"Bearer {configured.api_key('org-acme')}")])
    assert status == 200, data
    [seen] = configured.received[before:]
    assert seen.json()["model"] == "frontier-9-preview"
    record = configured.audit_records()[-1]
    assert (record["decision"], record["requested_model"], record["covered"]) == ("allow", "frontier-9-preview", True)

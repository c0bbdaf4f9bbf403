"""Fuzzing header filtering (gateway/request/proxy.py) with names spelled every way a
server might read them: any case, `_` for any `-`, repeated, named in
`Connection`, beside the upstream's configured headers.

Properties, checked against a CGI-style reader of the result (case-insensitive,
`_` read as `-`):
- request: a Connection header either is refused (400) or leaves what was
  decided untouched: Content-Type (and Content-Encoding unless the body was
  decoded, credentials if passed on) reach the upstream exactly as the gateway
  read them, under their one real name; no routing, forwarding, hop-by-hop or
  client `X-Gateway-*` header, no name with `_`; each configured header once,
  with its configured value; the gateway's own two headers once each;
- response: nothing never returned (hop-by-hop, Date, a redirect's Location,
  Content-Location, Refresh, `X-Gateway-*`) and nothing denied by default
  unless configured; the representation headers survive a Connection header.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from gateway.config import Upstream
from gateway.request.proxy import (GATEWAY_PREFIX, HOP_BY_HOP, NEVER_RETURNED, RESPONSE_DENIED, RESPONSE_DENIED_PREFIXES,
                           ROUTING, ROUTING_PREFIXES, Rules, check_connection, folded, request_headers,
                           response_headers)
from gateway.request.body import RequestError

from .conftest import fuzz

REQUEST_NAMES = ["content-type", "content-encoding", "content-length", "transfer-encoding", "authorization",
                 "x-api-key", "host", "x-forwarded-for", "forwarded", "x-gateway-org", "x-gateway-decision-id",
                 "openai-organization", "api-key", "x-ms-region", "x-goog-user-project", "x-upstream-tenant", "cookie",
                 "connection", "keep-alive", "te", "openai-beta", "x-custom", "user-agent", "x-original-url"]
RESPONSE_NAMES = ["content-type", "content-length", "content-encoding", "set-cookie", "location", "refresh",
                  "content-location", "date", "server", "via", "openai-organization", "x-ratelimit-limit-tokens",
                  "x-envoy-upstream-service-time", "x-gateway-decision-id", "x-gateway-org", "x-request-id",
                  "connection", "keep-alive", "transfer-encoding", "x-custom", "alt-svc", "cf-ray"]
CONFIGURED = {"X-Upstream-Tenant": "tenant-operator", "Api-Key": "upstream-secret"}
DECIDED_VALUE = {"content-type": "application/json", "content-encoding": "identity", "authorization": "Bearer k"}


@st.composite
def spelling(draw: st.DrawFn, names: list[str]) -> str:
    """A name as a client might write it: any case, any `-` as `_`, or a token of its own."""
    name = draw(st.one_of(st.sampled_from(names), st.from_regex(r"[a-z][a-z0-9_-]{0,8}", fullmatch=True)))
    letters = [c.upper() if draw(st.booleans()) else c for c in name]
    return "".join("_" if c == "-" and draw(st.integers(0, 3)) == 0 else c for c in letters)


@st.composite
def connection_value(draw: st.DrawFn) -> str:
    tokens = draw(st.lists(st.one_of(spelling(REQUEST_NAMES), st.sampled_from(["close", "keep-alive", ""])),
                           max_size=3))
    return ",".join(f"{' ' * draw(st.integers(0, 1))}{t}" for t in tokens)


@st.composite
def client_headers(draw: st.DrawFn) -> list[tuple[bytes, bytes]]:
    headers = [(name.lower(), value) for name, value in DECIDED_VALUE.items()]  # as the gateway read them: once each
    for _ in range(draw(st.integers(0, 8))):
        name = draw(spelling(REQUEST_NAMES))
        if name.lower() in DECIDED_VALUE:
            continue  # a second one is refused before forwarding (gateway/request/app.py `_single`)
        value = draw(connection_value()) if name.lower() == "connection" else draw(st.sampled_from(["x", "evil", "1"]))
        headers.insert(draw(st.integers(0, len(headers))), (name, value))
    if draw(st.booleans()):
        headers.insert(draw(st.integers(0, len(headers))), ("Connection", draw(connection_value())))
    # uvicorn hands the application lower-case names.
    return [(name.lower().encode(), value.encode()) for name, value in headers]


def read(headers: list[tuple[str, str]], name: str) -> list[str]:
    return [v for n, v in headers if folded(n.encode()) == name.encode()]


@fuzz(examples=300)
@given(client_headers(), st.booleans(), st.booleans(), st.booleans())
def test_the_upstream_receives_what_was_decided(client: list[tuple[bytes, bytes]], credentials: bool, decoded: bool,
                                                 cookies: bool) -> None:
    connection = [v.decode() for n, v in client if n == b"connection"]
    try:
        check_connection(connection)
    except RequestError as error:
        assert error.status == 400
        named = {folded(t.strip(" \t").encode()) for v in connection for t in v.split(",")}
        assert named & {b"content-type", b"content-encoding", b"content-length", b"transfer-encoding", b"host",
                        b"authorization", b"x-api-key", b"x-forwarded-for"} or any(
            t.startswith(GATEWAY_PREFIX) for t in named)
        return
    upstream = Upstream(url="http://x:1", headers=CONFIGURED, response_headers=["set-cookie"] if cookies else [])
    out = request_headers(client, org_id="org-a", decision_id="d-1", pass_credentials=credentials,
                          drop_content_encoding=decoded, rules=Rules.of(upstream))
    assert read(out, "content-type") == ["application/json"]
    assert read(out, "content-encoding") == ([] if decoded else ["identity"])
    assert read(out, "authorization") == (["Bearer k"] if credentials else [])
    assert read(out, "x-upstream-tenant") == ["tenant-operator"] and read(out, "api-key") == ["upstream-secret"]
    assert read(out, "x-gateway-org") == ["org-a"] and read(out, "x-gateway-decision-id") == ["d-1"]
    extras = {"X-Upstream-Tenant", "Api-Key", "X-Gateway-Org", "X-Gateway-Decision-Id"}
    for name, _ in out:
        if name in extras:
            continue
        key = name.encode()
        assert b"_" not in key and not key.startswith(GATEWAY_PREFIX) and not key.startswith(ROUTING_PREFIXES), out
        assert key not in HOP_BY_HOP | {b"host", b"content-length", b"x-forwarded-for", b"forwarded", b"x-original-url"}
        assert key not in ROUTING or (cookies and key == b"cookie"), out


@st.composite
def upstream_answer(draw: st.DrawFn) -> list[tuple[bytes, bytes]]:
    headers = [(b"Content-Type", b"application/json"), (b"Content-Length", b"2")]
    for _ in range(draw(st.integers(0, 8))):
        name = draw(spelling(RESPONSE_NAMES))
        if name.lower() in ("content-type", "content-length"):
            continue
        value = ",".join(draw(st.lists(spelling(RESPONSE_NAMES), max_size=3))) if name.lower() == "connection" else "v"
        headers.insert(draw(st.integers(0, len(headers))), (name.encode(), value.encode()))
    if draw(st.booleans()):
        tokens = draw(st.lists(st.sampled_from(["content-type", "Content-Length", "content_encoding", "close",
                                                "set-cookie", "x-custom"]), min_size=1, max_size=3))
        headers.insert(draw(st.integers(0, len(headers))), (b"Connection", ", ".join(tokens).encode()))
    return headers


@fuzz(examples=300)
@given(upstream_answer(), st.lists(st.sampled_from(["set-cookie", "server", "x-ratelimit-limit-tokens", "x_custom"]),
                                   max_size=2))
def test_the_client_receives_only_what_may_pass(answer: list[tuple[bytes, bytes]], allowed: list[str]) -> None:
    passed = Rules.of(Upstream(url="http://x:1", response_headers=allowed)).passed
    out = response_headers(answer, b"d-1", passed)
    assert out[-1] == (b"x-gateway-decision-id", b"d-1")
    assert [v for n, v in out if n == b"content-type"] == [b"application/json"]
    assert [v for n, v in out if n == b"content-length"] == [b"2"]
    for name, _ in out[:-1]:
        assert name == name.lower() and name not in NEVER_RETURNED and not name.startswith(GATEWAY_PREFIX), out
        denied = name in RESPONSE_DENIED or name.startswith(RESPONSE_DENIED_PREFIXES) or b"_" in name
        assert not denied or name in passed, out

"""The HTTP layer, on a real socket to the real uvicorn listener: framing
(smuggling), the request target, hop-by-hop and override headers, upgrades.

Whoever refuses — the HTTP parser (bad framing) or the gateway — the answer is
never a 500 and is in the API's error shape with a decision id, and the upstream receives only requests the gateway
decided on, each with the decided org, model and path. Bytes the client hid
after or inside a request (a second, denied request) never reach it."""

from __future__ import annotations

import json

import pytest

from .conftest import CHAT, COVERED, ORG, PLAIN, US_IP, Probe, Reply, chat_body, error_shape

BODY = chat_body(PLAIN)
# A request that must never be forwarded: no credential, a forged org, a covered model.
HIDDEN_BODY = chat_body(COVERED)
HIDDEN = (f"POST {CHAT} HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: {US_IP}\r\nX-Gateway-Org: org-caisi\r\n"
          f"Content-Type: application/json\r\nContent-Length: {len(HIDDEN_BODY)}\r\n\r\n").encode() + HIDDEN_BODY


def head(gw: Probe, *lines: str, target: str = CHAT, method: str = "POST", version: str = "HTTP/1.1") -> bytes:
    """A request head with ORG's credential and a US address, then `lines`."""
    start = [f"{method} {target} {version}", "Host: gateway.test", f"Authorization: Bearer {gw.key()}",
             f"X-Forwarded-For: {US_IP}", "Content-Type: application/json"]
    return ("\r\n".join(start + list(lines)) + "\r\n\r\n").encode()


def chunked(body: bytes, size: str | None = None) -> bytes:
    return f"{size or format(len(body), 'x')}\r\n".encode() + body + b"\r\n0\r\n\r\n"


def check_exchange(gw: Probe, replies: list[Reply], *, forwarded_at_most: int = 1) -> None:
    """No 500; every refusal (the HTTP parser's too) in the error shape with a decision
    id; whatever reached the upstream is a decided, allowed request."""
    assert replies, "no answer at all"
    for reply in replies:
        assert reply.status < 500 or reply.status == 503, reply
        if reply.status >= 400:
            assert reply.header("x-gateway-decision-id"), reply
            error_shape(reply)
    gw.settle()
    allowed = {r.header("x-gateway-decision-id") for r in replies if r.status == 200}
    seen = gw.stack.received
    assert len(seen) <= forwarded_at_most, seen
    for request in seen:
        assert request.header("x-gateway-decision-id") in allowed, request
        assert request.header("x-gateway-org") == ORG, request.headers
        assert (request.method, request.path, request.json()["model"]) == ("POST", CHAT, PLAIN), request


# Framing: each case carries the hidden request where one reading of the framing would find it.
SMUGGLING = [
    ("CL.TE", lambda g: head(g, f"Content-Length: {len(chunked(BODY))}", "Transfer-Encoding: chunked") + chunked(BODY) + HIDDEN),
    ("TE.CL", lambda g: head(g, "Transfer-Encoding: chunked", "Content-Length: 4") + chunked(BODY) + HIDDEN),
    ("CL.TE with the hidden request as body", lambda g: head(g, f"Content-Length: {len(b'0' + bytes(4) + HIDDEN)}", "Transfer-Encoding: chunked") + b"0\r\n\r\n" + HIDDEN),
    ("TE chunked, identity", lambda g: head(g, "Transfer-Encoding: chunked, identity") + chunked(BODY) + HIDDEN),
    ("TE identity, chunked", lambda g: head(g, "Transfer-Encoding: identity, chunked") + chunked(BODY) + HIDDEN),
    ("TE xchunked with CL", lambda g: head(g, f"Content-Length: {len(BODY)}", "Transfer-Encoding: xchunked") + BODY + HIDDEN),
    ("TE space before colon", lambda g: head(g, "Transfer-Encoding : chunked", f"Content-Length: {len(BODY)}") + BODY + HIDDEN),
    ("TE two headers", lambda g: head(g, "Transfer-Encoding: chunked", "Transfer-Encoding: identity") + chunked(BODY) + HIDDEN),
    ("TE vertical tab", lambda g: head(g, "Transfer-Encoding:\x0bchunked", f"Content-Length: {len(BODY)}") + BODY + HIDDEN),
    ("TE obs-fold", lambda g: head(g, "X-Note: a", " Transfer-Encoding: chunked", f"Content-Length: {len(BODY)}") + BODY + HIDDEN),
    ("TE in HTTP/1.0", lambda g: head(g, "Transfer-Encoding: chunked", version="HTTP/1.0") + chunked(BODY) + HIDDEN),
    ("TE quoted", lambda g: head(g, 'Transfer-Encoding: "chunked"', f"Content-Length: {len(BODY)}") + BODY + HIDDEN),
    ("two Content-Lengths, different", lambda g: head(g, f"Content-Length: {len(BODY)}", f"Content-Length: {len(BODY) + len(HIDDEN)}") + BODY + HIDDEN),
    ("two Content-Lengths, same", lambda g: head(g, f"Content-Length: {len(BODY)}", f"Content-Length: {len(BODY)}") + BODY + HIDDEN),
    ("Content-Length list", lambda g: head(g, f"Content-Length: {len(BODY)}, {len(BODY)}") + BODY + HIDDEN),
    ("Content-Length negative", lambda g: head(g, "Content-Length: -1") + BODY + HIDDEN),
    ("Content-Length huge", lambda g: head(g, "Content-Length: 99999999999999999999999999") + BODY + HIDDEN),
    ("Content-Length over 2**64", lambda g: head(g, f"Content-Length: {2**64 + len(BODY)}") + BODY + HIDDEN),
    ("Content-Length with plus", lambda g: head(g, f"Content-Length: +{len(BODY)}") + BODY + HIDDEN),
    ("Content-Length hex", lambda g: head(g, f"Content-Length: 0x{len(BODY):x}") + BODY + HIDDEN),
    ("Content-Length a latin-1 superscript digit", lambda g: head(g, "Content-Length: 1").replace(b": 1\r\n\r\n", b": \xb2\r\n\r\n") + BODY + HIDDEN),
    ("Content-Length full-width digits", lambda g: head(g, "Content-Length: ２") + BODY + HIDDEN),
    ("Content-Length short", lambda g: head(g, f"Content-Length: {len(BODY) - 10}") + BODY + HIDDEN),
    ("chunk size overflow", lambda g: head(g, "Transfer-Encoding: chunked") + chunked(BODY, "1" + "0" * 17) + HIDDEN),
    ("chunk size with extension", lambda g: head(g, "Transfer-Encoding: chunked") + chunked(BODY, f"{len(BODY):x};x=y") + HIDDEN),
    ("chunk size negative", lambda g: head(g, "Transfer-Encoding: chunked") + chunked(BODY, "-1") + HIDDEN),
    ("chunk with bare LF", lambda g: head(g, "Transfer-Encoding: chunked") + f"{len(BODY):x}\n".encode() + BODY + b"\n0\n\n" + HIDDEN),
    ("bare LF head", lambda g: head(g, f"Content-Length: {len(BODY)}").replace(b"\r\n", b"\n") + BODY + HIDDEN),
    ("pipelined after an allowed request", lambda g: head(g, f"Content-Length: {len(BODY)}") + BODY + HIDDEN),
    ("NUL in a header", lambda g: head(g, "X-Note: a\x00b", f"Content-Length: {len(BODY)}") + BODY + HIDDEN),
    ("space in a header name", lambda g: head(g, "X Gateway Org: org-caisi", f"Content-Length: {len(BODY)}") + BODY + HIDDEN),
    ("header without colon", lambda g: head(g, "Transfer-Encoding chunked", f"Content-Length: {len(BODY)}") + BODY + HIDDEN),
    ("HTTP/2 preface", lambda g: b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + HIDDEN),
    ("HTTP/0.9", lambda g: f"GET {CHAT}\r\n\r\n".encode() + HIDDEN),
    ("HTTP/1.2", lambda g: head(g, f"Content-Length: {len(BODY)}", version="HTTP/1.2") + BODY + HIDDEN),
]


@pytest.mark.parametrize("build", [c[1] for c in SMUGGLING], ids=[c[0] for c in SMUGGLING])
def test_framing_never_smuggles_a_request(gw: Probe, build) -> None:  # type: ignore[no-untyped-def]
    check_exchange(gw, gw.raw(build(gw), timeout=3))


@pytest.mark.parametrize("data", [
    b"\r\n" * 5000,
    b"POST " + b"/" * 100_000 + b" HTTP/1.1\r\n\r\n",
    b"POST /v1/chat/completions HTTP/1.1\r\n" + b"X-A: b\r\n" * 20_000 + b"\r\n",
    b"POST /v1/chat/completions HTTP/1.1\r\nX-A: " + b"b" * 1_000_000 + b"\r\n\r\n",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(64),  # a TLS ClientHello
    bytes(range(256)) * 4,
], ids=["empty lines", "long target", "many headers", "huge header", "TLS hello", "binary"])
def test_garbage_is_refused_without_500(gw: Probe, data: bytes) -> None:
    replies = gw.raw(data, timeout=1.5)  # some get no answer at all: the parser waits for a request
    assert all(r.status != 500 for r in replies), replies
    gw.nothing_forwarded()


# The request target: only the path as sent, in canonical form, is routed.
TARGETS: list[tuple[str, int]] = [
    ("//v1/chat/completions", 400),
    ("/v1//chat/completions", 400),
    ("/v1/./chat/completions", 400),
    ("/v1/chat/./completions", 400),
    ("/v1/../v1/chat/completions", 400),
    ("/v1/models/../chat/completions", 400),
    ("/x/../v1/chat/completions", 400),
    ("/v1/%2e%2e/v1/chat/completions", 400),
    ("/v1/%2E%2E/v1/chat/completions", 400),
    ("/v1/chat%2Fcompletions", 400),
    ("/v1/chat%2fcompletions", 400),
    ("/v1%2Fchat%2Fcompletions", 400),
    ("/%761/chat/completions", 400),
    ("/v1/chat/completions%00", 400),
    ("/v1/chat/completions%20", 400),
    ("/v1/chat/completions/", 400),
    ("/v1/chat/completions/.", 400),
    ("/v1/chat/completions;a=b", 400),
    ("/v1;/chat/completions", 400),
    ("/v1\\chat\\completions", 400),
    ("/v1/chat/completions\\..\\..\\admin", 400),
    ("/V1/CHAT/COMPLETIONS", 404),
    ("/v1/Chat/Completions", 404),
    ("/v1/chat/completionsX", 404),
    ("/v1/chat", 404),
    ("/admin/policy", 404),
    ("/metrics", 404),
    ("/v1/chat/completions?model=frontier-5.6", 400),
    ("/v1/chat/completions?MODEL=frontier-5.6", 400),
    ("/v1/chat/completions?%6dodel=frontier-5.6", 400),
    ("/v1/chat/completions?model%00=frontier-5.6", 400),
    ("/v1/chat/completions?model[]=frontier-5.6", 400),
    ("/v1/chat/completions?model%5B0%5D=frontier-5.6", 400),
    ("/v1/chat/completions?%20Model%20=frontier-5.6", 400),
    ("/v1/chat/completions?model.id=frontier-5.6", 400),
    ("/v1/chat/completions?x=1&model=frontier-5.6", 400),
    ("/v1/chat/completions?x=1;model=frontier-5.6", 400),
    ("*", 400),
    ("v1/chat/completions", 400),
]


@pytest.mark.parametrize(("target", "status"), TARGETS, ids=[t[0] for t in TARGETS])
def test_non_canonical_target_is_refused(gw: Probe, target: str, status: int) -> None:
    replies = gw.raw(head(gw, f"Content-Length: {len(BODY)}", "Connection: close", target=target) + BODY)
    assert len(replies) == 1, replies
    gw.denied(replies[0], status)


# Targets the parser splits before routing: the gateway routes, and forwards, only their path.
@pytest.mark.parametrize("target", [
    "http://evil.test/v1/chat/completions",
    "http://evil.test:8080/v1/chat/completions",
    "/v1/chat/completions#fragment",
    "/v1/chat/completions#/../../admin",
    "/v1/chat/completions?",
    "/v1/chat/completions?stream=false&x=%2e%2e",
], ids=["absolute form", "absolute form with port", "fragment", "fragment with dot segments", "empty query", "query"])
def test_split_target_forwards_only_the_decided_path(gw: Probe, target: str) -> None:
    replies = gw.raw(head(gw, f"Content-Length: {len(BODY)}", "Connection: close", target=target) + BODY)
    check_exchange(gw, replies)
    assert replies[0].status == 200, replies
    [seen] = gw.stack.received
    assert seen.header("host") == gw.stack.upstream.url.removeprefix("http://"), seen.headers
    assert b"evil" not in seen.query_string and b"#" not in seen.query_string


# Headers that ask an intermediary to drop, rewrite or reinterpret something.
HEADERS: list[tuple[str, list[str]]] = [
    ("Connection naming X-Gateway-Org", ["Connection: x-gateway-org"]),
    ("Connection naming X-Gateway-Decision-Id", ["Connection: keep-alive, X-Gateway-Decision-Id"]),
    ("Connection naming Authorization", ["Connection: authorization"]),
    ("Connection naming Content-Type", ["Connection: content-type, content-length"]),
    ("Connection naming X-Forwarded-For", ["Connection: x-forwarded-for"]),
    ("TE trailers", ["TE: trailers", "Connection: TE"]),
    ("Trailer announcing X-Gateway-Org", ["Trailer: X-Gateway-Org"]),
    ("Keep-Alive and Proxy-Connection", ["Keep-Alive: timeout=5", "Proxy-Connection: keep-alive"]),
    ("Proxy-Authorization", ["Proxy-Authorization: Basic YWRtaW46YWRtaW4="]),
    ("Upgrade without Connection", ["Upgrade: websocket"]),
    ("h2c upgrade", ["Connection: Upgrade, HTTP2-Settings", "Upgrade: h2c", "HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA"]),
    ("X-HTTP-Method-Override", ["X-HTTP-Method-Override: DELETE"]),
    ("X-HTTP-Method and X-Method-Override", ["X-HTTP-Method: PUT", "X-Method-Override: PATCH"]),
    ("X-Original-URL", ["X-Original-URL: /v1/chat/completions/../../admin"]),
    ("X-Rewrite-URL", ["X-Rewrite-URL: /internal/models"]),
    ("X-Original-Method", ["X-Original-Method: DELETE"]),
    ("X-Envoy-Original-Path", ["X-Envoy-Original-Path: /admin"]),
    ("X-Forwarded-Host", ["X-Forwarded-Host: evil.test"]),
    ("X-Forwarded-Prefix", ["X-Forwarded-Prefix: /admin"]),
    ("X-Forwarded-Proto and Port", ["X-Forwarded-Proto: https", "X-Forwarded-Port: 443", "X-Forwarded-Scheme: https"]),
    ("X-Original-Host and X-Host", ["X-Original-Host: evil.test", "X-Host: evil.test"]),
    ("a second Host", ["Host: evil.test"]),
    ("Host with a path", ["Host: evil.test/admin"]),
    ("client X-Gateway-Org", ["X-Gateway-Org: org-caisi"]),
    ("client X-Gateway-Decision-Id", ["X-Gateway-Decision-Id: 0000"]),
    ("client X-GATEWAY-ORG upper-case", ["X-GATEWAY-ORG: org-caisi"]),
    ("client X_Gateway_Org with underscores", ["X_Gateway_Org: org-caisi"]),
    ("client x-gateway_org mixed", ["x-gateway_org: org-caisi"]),
    ("client X-Gateway-Anything", ["X-Gateway-Tier: government", "X-Gateway-Country: US"]),
    ("client X_API_KEY with underscores", ["X_API_KEY: sk-smuggled"]),
]


@pytest.mark.parametrize("lines", [c[1] for c in HEADERS], ids=[c[0] for c in HEADERS])
def test_hop_by_hop_and_override_headers_change_nothing_upstream(gw: Probe, lines: list[str]) -> None:
    replies = gw.raw(head(gw, *lines, f"Content-Length: {len(BODY)}", "Connection: close") + BODY)
    check_exchange(gw, replies)
    if replies[0].status != 200:  # a parser refusal is fine; nothing was forwarded (checked above)
        return
    gw.allowed(replies[0])
    [seen] = gw.stack.received
    names = {name.decode("latin-1").lower().replace("_", "-") for name, _ in seen.raw_headers}
    assert not names & {"x-gateway-tier", "x-gateway-country", "x-api-key", "x-original-url", "x-rewrite-url",
                        "x-original-method", "x-envoy-original-path", "x-forwarded-prefix", "x-forwarded-port",
                        "x-forwarded-scheme", "x-forwarded-proto", "x-original-host", "x-host", "trailer", "te",
                        "keep-alive", "proxy-connection", "proxy-authorization", "upgrade", "http2-settings",
                        "x-http-method", "x-method-override"}, names
    assert [v for n, v in seen.raw_headers if n.lower() == b"x-gateway-org"] == [ORG.encode()]


@pytest.mark.parametrize("target", [CHAT, "/v1/realtime?model=frontier-5.6", "/v1/responses"])
def test_websocket_upgrade_is_never_forwarded(gw: Probe, target: str) -> None:
    data = (f"GET {target} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {gw.key()}\r\nX-Forwarded-For: {US_IP}\r\n"
            "Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n").encode()
    replies = gw.raw(data, timeout=3)
    assert replies and replies[0].status in (400, 404, 405), replies  # an ordinary request, refused
    error_shape(replies[0])
    gw.nothing_forwarded()


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "HEAD", "PROPFIND", "get"])
def test_other_methods_on_an_inference_route_are_not_forwarded(gw: Probe, method: str) -> None:
    replies = gw.raw(head(gw, f"Content-Length: {len(BODY)}", "Connection: close", method=method) + BODY)
    assert replies and replies[0].status in (400, 404, 405), replies
    if replies[0].header("x-gateway-decision-id") and method != "HEAD":
        error_shape(replies[0])
    gw.nothing_forwarded()


def test_connect_is_refused(gw: Probe) -> None:
    replies = gw.raw(b"CONNECT evil.test:443 HTTP/1.1\r\nHost: evil.test:443\r\n\r\n")
    assert replies and replies[0].status == 400, replies
    gw.nothing_forwarded()


def test_keep_alive_connection_decides_each_request_on_its_own(gw: Probe) -> None:
    """An allowed request, then on the same connection a denied one: only the first is forwarded."""
    denied = chat_body(COVERED)
    data = (head(gw, f"Content-Length: {len(BODY)}") + BODY
            + head(gw, f"Content-Length: {len(denied)}", "X-Forwarded-For: 175.16.199.1").replace(
                f"X-Forwarded-For: {US_IP}\r\n".encode(), b"") + denied)
    replies = gw.raw(data, timeout=3)
    assert [r.status for r in replies] == [200, 451], replies
    check_exchange(gw, replies)
    assert json.loads(replies[1].body)["error"]["code"] == "unsupported_country_region_territory"


@pytest.mark.parametrize("framing", ["content-length", "chunked", "expect-100"])
def test_unread_body_of_a_denied_request_is_never_a_request(gw: Probe, framing: str) -> None:
    """Denied before its body is read (no credential), the request's body is a complete allowed
    request. Whatever the framing, it stays a body: one 401, nothing forwarded."""
    allowed = head(gw, f"Content-Length: {len(BODY)}") + BODY
    lines = [f"POST {CHAT} HTTP/1.1", "Host: x", f"X-Forwarded-For: {US_IP}", "Content-Type: application/json"]
    if framing == "chunked":
        lines.append("Transfer-Encoding: chunked")
        body = chunked(allowed)
    else:
        lines.append(f"Content-Length: {len(allowed)}")
        body = allowed
    if framing == "expect-100":
        lines.append("Expect: 100-continue")
    replies = gw.raw(("\r\n".join(lines) + "\r\n\r\n").encode() + body, timeout=3)
    assert [r.status for r in replies if r.status != 100] == [401], replies
    error_shape(replies[-1])
    gw.nothing_forwarded()


def test_a_request_the_parser_refuses_is_recorded(gw: Probe) -> None:
    before = len(gw.stack.audit_records())
    replies = gw.raw(head(gw, f"Content-Length: {len(BODY)}", f"Content-Length: {len(BODY) + 1}") + BODY)
    [reply] = replies
    assert reply.status == 400 and json.loads(reply.body)["error"]["code"] == "invalid_request"
    gw.nothing_forwarded()
    records = gw.stack.audit_records()[before:]
    assert [(r["decision_id"], r["status"], r["decision"], r["error"]) for r in records] == [
        (reply.header("x-gateway-decision-id"), 400, "deny", "malformed_http")]


@pytest.mark.parametrize("lines", [["Upgrade: h2c", "Connection: Upgrade, HTTP2-Settings", "HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA"],
                                   ["Upgrade: websocket"]], ids=["h2c", "bare"])
def test_an_upgrade_request_is_refused_for_what_it_is(gw: Probe, lines: list[str]) -> None:
    replies = gw.raw(head(gw, *lines, f"Content-Length: {len(BODY)}", "Connection: close") + BODY)
    gw.denied(replies[0], 400)
    assert "upgrade" in json.loads(replies[0].body)["error"]["message"].lower()

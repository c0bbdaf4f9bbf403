"""Forwarding to upstreams with aiohttp: header hygiene and pooled sessions.

What the upstream sees is decided here: hop-by-hop headers (RFC 9110 §7.6.1)
and every header named in `Connection` are dropped, as are the client's
credentials (unless configured), any client-sent `X-Gateway-*` header (only the
gateway speaks with that prefix), method-override headers (the method decided
on is the method forwarded), URL- and host-rewrite headers (the path decided on
is the path served: IIS, Symfony and Envoy-fronted apps route by
X-Original-URL and its kin), and client forwarding and address headers (where
the client is was decided here). The client's `Accept-Encoding` is replaced by
`identity`: the gateway reads the answer's token usage (gateway/usage.py) and
may end a stream with an event of its own, and both need the answer as plain
bytes (docs/quotas.md).

Names are compared with `_` read as `-`: CGI/WSGI servers (and so Django, Flask
behind gunicorn, PHP) fold both to the same variable, so `X_Gateway_Org` would
reach such an upstream as `X-Gateway-Org`.
"""

from __future__ import annotations

from collections.abc import Iterable

import aiohttp

from gateway.config import Upstream

HOP_BY_HOP = frozenset({
    b"connection", b"keep-alive", b"proxy-authenticate", b"proxy-authorization", b"proxy-connection",
    b"te", b"trailer", b"transfer-encoding", b"upgrade",
})
_CREDENTIALS = frozenset({b"authorization", b"x-api-key"})
_NEVER_FORWARDED = HOP_BY_HOP | frozenset({
    b"host", b"content-length", b"expect", b"http2-settings",
    b"x-http-method-override", b"x-http-method", b"x-method-override", b"x-original-method",
    b"x-original-url", b"x-rewrite-url", b"x-envoy-original-path", b"x-forwarded-prefix", b"x-forwarded-path",
    b"x-original-host", b"x-host", b"x-forwarded-server",
    b"forwarded", b"x-forwarded-for", b"x-forwarded-host", b"x-forwarded-proto", b"x-forwarded-port",
    b"x-forwarded-scheme", b"x-forwarded-ssl", b"x-url-scheme", b"front-end-https",
    b"x-real-ip", b"true-client-ip", b"cf-connecting-ip", b"x-client-ip", b"x-cluster-client-ip",
    b"x-original-forwarded-for", b"fastly-client-ip", b"x-envoy-external-address",
    b"accept-encoding",  # replaced: see IDENTITY
})
# What the gateway asks of every upstream instead of the client's Accept-Encoding.
IDENTITY = ("Accept-Encoding", "identity")
# The listener sets its own Date; the upstream's would make a second one.
_STRIPPED_RESPONSE = HOP_BY_HOP | frozenset({b"x-gateway-decision-id", b"x-gateway-org", b"date"})
# Dropped from a request, by (credentials passed on, body forwarded decoded): built once.
_DROPPED = {
    (credentials, decoded): _NEVER_FORWARDED | (frozenset() if credentials else _CREDENTIALS)
    | (frozenset({b"content-encoding"}) if decoded else frozenset())
    for credentials in (False, True) for decoded in (False, True)
}


def _connection_tokens(headers: Iterable[tuple[bytes, bytes]]) -> set[bytes]:
    return {_folded(token.strip()) for name, value in headers if name.lower() == b"connection" for token in value.split(b",")}


def _folded(name: bytes) -> bytes:
    """A header name as a CGI-style server reads it: case-insensitive, `_` the same as `-`."""
    return name.lower().replace(b"_", b"-")


def request_headers(
    client: list[tuple[bytes, bytes]],
    *,
    org_id: str,
    decision_id: str,
    pass_credentials: bool,
    drop_content_encoding: bool,
    extra: dict[str, str],
) -> list[tuple[str, str]]:
    """The headers to send upstream for an allowed request."""
    dropped = _DROPPED[pass_credentials, drop_content_encoding]
    if named := _connection_tokens(client):
        dropped = dropped | named
    out = [
        (name.decode("latin-1"), value.decode("latin-1"))
        for name, value in client
        if (folded := _folded(name)) not in dropped and not folded.startswith(b"x-gateway-")
    ]
    out.append(IDENTITY)
    out += list(extra.items())
    out.append(("X-Gateway-Org", org_id))
    out.append(("X-Gateway-Decision-Id", decision_id))
    return out


def response_headers(upstream: Iterable[tuple[bytes, bytes]], decision_id: bytes) -> list[tuple[bytes, bytes]]:
    """The upstream's headers as the client will see them."""
    upstream = list(upstream)
    dropped = _STRIPPED_RESPONSE
    if named := _connection_tokens(upstream):
        dropped = dropped | named
    out = [(name.lower(), value) for name, value in upstream if _folded(name) not in dropped]
    out.append((b"x-gateway-decision-id", decision_id))
    return out


class Upstreams:
    """One pooled aiohttp session per configured upstream."""

    def __init__(self, upstreams: dict[str, Upstream]) -> None:
        self.config = upstreams
        self.sessions: dict[str, aiohttp.ClientSession] = {}

    async def start(self) -> None:
        for name, upstream in self.config.items():
            connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=30, enable_cleanup_closed=True)
            self.sessions[name] = aiohttp.ClientSession(
                base_url=upstream.url.rstrip("/"),
                connector=connector,
                auto_decompress=False,  # bytes pass through as the upstream sent them
                skip_auto_headers=("User-Agent", "Accept-Encoding", "Content-Type"),
                timeout=aiohttp.ClientTimeout(
                    total=None, sock_connect=upstream.connect_timeout_s, sock_read=upstream.read_timeout_s
                ),
            )

    async def close(self) -> None:
        for session in self.sessions.values():
            await session.close()

"""Header names the gateway keeps for itself, shared by the forwarding rules
(gateway/request/proxy.py) and the validation of the upstream headers an operator may
configure (gateway/config.py), so that the configuration can refuse a name without
importing the request path. docs/headers.md lists every name and says why."""

from __future__ import annotations

# Hop-by-hop headers (RFC 9110 §7.6.1): never forwarded, never configurable.
HOP_BY_HOP = frozenset({
    b"connection", b"keep-alive", b"proxy-authenticate", b"proxy-authorization", b"proxy-connection",
    b"te", b"trailer", b"transfer-encoding", b"upgrade",
})
GATEWAY_PREFIX = b"x-gateway-"  # only the gateway speaks with this prefix
# Never passed to the client, whatever the configuration: the gateway frames the answer and
# dates it, a redirect would send the client (and its credential) somewhere not decided on.
NEVER_RETURNED = HOP_BY_HOP | frozenset({b"date", b"location", b"content-location", b"refresh"})


def folded(name: bytes) -> bytes:
    """A header name as a CGI-style server reads it: case-insensitive, `_` the same as `-`."""
    return name.lower().replace(b"_", b"-")

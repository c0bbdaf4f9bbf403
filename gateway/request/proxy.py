"""Forwarding to upstreams: header hygiene, and the pools of URLs requests go to
(docs/headers.md lists every name below and says why).

What the upstream sees is decided here. The request carries the representation
the gateway parsed (Content-Type, and Content-Encoding unless it decoded the
body; aiohttp frames it), the gateway's `X-Gateway-*` headers and the
upstream's configured headers, and otherwise the client's end-to-end headers
less those that would change what was decided:

- hop-by-hop headers (RFC 9110 §7.6.1) and every header named in `Connection`;
  a `Connection` header naming one the gateway reads or sets is refused
  (`check_connection`), since that would strip what was decided on;
- the client's credentials (unless configured), and any client-sent
  `X-Gateway-*` header (only the gateway speaks with that prefix);
- method-override, URL- and host-rewrite headers (the method and path decided
  on are the ones served: IIS, Symfony and Envoy-fronted apps route by
  X-Original-URL and its kin), and forwarding and address headers (where the
  client is was decided here);
- headers upstreams route or bill by (OpenAI-Organization, api-key,
  azureml-model-deployment, x-goog-user-project, ...): which account, project
  or deployment serves a request is the operator's to set, in
  `upstreams.NAME.headers`, whose names replace any client copy;
- every name with `_`: CGI/WSGI servers (and so Django, Flask behind gunicorn,
  PHP) fold `_` and `-` to the same variable, so `Content_Type` would reach such
  an upstream beside, or instead of, `Content-Type` (nginx drops these names by
  default for the same reason, `underscores_in_headers off`).
- the client's `Accept-Encoding`, replaced by `identity` (IDENTITY below): the
  gateway reads the answer's token usage and may end a stream with an event of
  its own, both of which need plain bytes (docs/quotas.md).

The answer loses its hop-by-hop headers, and by default the upstream's cookies,
origin policies (HSTS, Alt-Svc, reporting), account identifiers and proxy
internals (`upstreams.NAME.response_headers` lets named ones through). A
redirect or its kin (Location, Content-Location, Refresh) and the gateway's own
headers are never passed on.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from gateway.config import Upstream
from gateway.request.header_names import GATEWAY_PREFIX, HOP_BY_HOP, NEVER_RETURNED, folded
from gateway.request.pool import Pool
from gateway.request.body import RequestError

_CREDENTIALS = frozenset({b"authorization", b"x-api-key"})
# What the gateway reads to decide, or frames the request by: a Connection header may not
# name one (RFC 9110 §7.6.1: a connection option never names an end-to-end field).
DECIDED = frozenset({
    b"host", b"content-type", b"content-length", b"content-encoding", b"transfer-encoding",
    b"authorization", b"x-api-key", b"x-forwarded-for",
})
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
# What the gateway asks of every upstream instead of the client's Accept-Encoding: it reads
# the answer's token usage and may end a stream with an event of its own (docs/quotas.md).
IDENTITY = ("Accept-Encoding", "identity")
# Headers upstreams and AI gateways choose an account, project, deployment, region or price by,
# or authenticate with (none is a credential the gateway checked).
ROUTING = frozenset({
    b"openai-organization", b"openai-project", b"chatgpt-account-id",          # OpenAI
    b"anthropic-organization-id",                                               # Anthropic
    b"api-key", b"ocp-apim-subscription-key", b"ocp-apim-trace",                 # Azure OpenAI, API Management
    b"azureml-model-deployment", b"azureml-model-group",                         # Azure ML endpoints: past traffic rules
    b"x-goog-api-key", b"x-goog-user-project", b"x-goog-request-params",         # Google: key, billed project, routing
    b"cookie", b"cookie2",                                                       # the upstream's sessions (see Rules)
})
ROUTING_PREFIXES = (
    b"x-ms-",                    # Azure routing and client headers
    b"x-amz-", b"x-amzn-",       # AWS SigV4 credentials, Bedrock guardrails and trace
    b"x-vertex-ai-",             # Vertex AI provisioned-throughput and priority billing
    b"x-litellm-", b"x-portkey-", b"helicone-", b"cf-aig-",  # AI gateways: keys, routes, target URLs
)
_DROPPED_PREFIXES = (GATEWAY_PREFIX, *ROUTING_PREFIXES)
# Not passed by default; `upstreams.NAME.response_headers` lets named ones through.
RESPONSE_DENIED = frozenset({
    # State and policies set for the gateway's origin by another one, and reports sent to it.
    b"set-cookie", b"set-cookie2", b"clear-site-data", b"strict-transport-security", b"alt-svc",
    b"public-key-pins", b"public-key-pins-report-only", b"expect-ct", b"nel", b"report-to", b"reporting-endpoints",
    # The upstream's account: who pays, and how much of its limits everyone else has used.
    b"openai-organization", b"openai-project", b"anthropic-organization-id", b"apim-request-id",
    b"azureml-model-session",
    # Server software and the proxies between the gateway and the model.
    b"server", b"x-powered-by", b"via", b"server-timing", b"x-served-by", b"x-cache", b"x-cache-hits",
    b"x-timer", b"x-backend-server", b"x-aspnet-version", b"x-aspnetmvc-version", b"x-runtime",
    b"x-cloud-trace-context", b"x-azure-ref",
})
RESPONSE_DENIED_PREFIXES = (
    b"x-ratelimit-", b"anthropic-ratelimit-",                      # the upstream account's limits
    b"x-ms-", b"x-amz-", b"x-amzn-", b"x-goog-", b"x-litellm-",    # regions, deployments, served models, traces
    b"x-envoy-", b"x-kong-", b"cf-",                               # proxies and CDNs
)
# A Connection header from the upstream never takes the answer's representation away.
_REPRESENTATION = frozenset({b"content-type", b"content-length", b"content-encoding"})


def _connection_tokens(headers: Iterable[tuple[bytes, bytes]]) -> set[bytes]:
    return {folded(token.strip()) for name, value in headers if name.lower() == b"connection"
            for token in value.split(b",")}


def check_connection(values: list[str]) -> None:
    """Refuse a Connection header that names a header the gateway reads or sets: honoured,
    it would strip what was decided on before the upstream sees it."""
    for value in values:
        for token in value.split(","):
            name = folded(token.strip(" \t").encode("latin-1"))
            if name in DECIDED or name.startswith(GATEWAY_PREFIX):
                shown = "X-Gateway-* headers" if name.startswith(GATEWAY_PREFIX) else name.decode()
                raise RequestError(400, f"The Connection header may name only hop-by-hop headers, not {shown}.")


@dataclass(frozen=True, slots=True)
class Rules:
    """One upstream's header rules, built once from its configuration."""

    extra: tuple[tuple[str, str], ...]
    # Client headers dropped, by (credentials passed on, body forwarded decoded).
    dropped: dict[tuple[bool, bool], frozenset[bytes]]
    # Response headers denied by default that this upstream's answers may carry.
    passed: frozenset[bytes]

    @classmethod
    def of(cls, upstream: Upstream) -> Rules:
        passed = frozenset(name.lower().encode("latin-1") for name in upstream.response_headers)
        # Configured headers replace the client's, however spelled; cookies go only where
        # the upstream's own Set-Cookie reaches the client.
        replaced = frozenset(folded(name.encode("latin-1")) for name in upstream.headers)
        base = _NEVER_FORWARDED | ROUTING | replaced
        if passed & {b"set-cookie", b"set-cookie2"}:
            base -= {b"cookie", b"cookie2"} - replaced
        dropped = {
            (credentials, decoded): base | (frozenset() if credentials else _CREDENTIALS)
            | (frozenset({b"content-encoding"}) if decoded else frozenset())
            for credentials in (False, True) for decoded in (False, True)
        }
        return cls(tuple(upstream.headers.items()), dropped, passed)


def request_headers(
    client: list[tuple[bytes, bytes]],
    *,
    org_id: str,
    decision_id: str,
    pass_credentials: bool,
    drop_content_encoding: bool,
    rules: Rules,
) -> list[tuple[str, str]]:
    """The headers to send upstream for an allowed request."""
    dropped = rules.dropped[pass_credentials, drop_content_encoding]
    verdicts = _verdicts(_forwarded_verdicts, dropped)
    out = []
    connection = None
    for name, value in client:
        forwarded = verdicts.get(name, _UNSEEN)
        if forwarded is _UNSEEN:
            forwarded = _judged(verdicts, name, _forwarded(name, dropped))
        if forwarded is not None:
            out.append((forwarded, value.decode("latin-1")))
        elif name.lower() == b"connection":
            connection = [*(connection or ()), (name, value)]
    if connection and (named := _connection_tokens(connection) - DECIDED):
        out = [(name, value) for name, value in out if name.lower().encode("latin-1") not in named]
    out.append(IDENTITY)
    out += rules.extra
    out.append(("X-Gateway-Org", org_id))
    out.append(("X-Gateway-Decision-Id", decision_id))
    return out


def _forwarded(name: bytes, dropped: frozenset[bytes]) -> str | None:
    """The name as the upstream gets it, or None when the header is dropped."""
    if b"_" in name:
        return None
    lower = name.lower()
    if lower in dropped or lower.startswith(_DROPPED_PREFIXES):
        return None
    return name.decode("latin-1")


def response_headers(upstream: Iterable[tuple[bytes, bytes]], decision_id: bytes,
                     passed: frozenset[bytes] = frozenset()) -> list[tuple[bytes, bytes]]:
    """The upstream's headers as the client will see them."""
    verdicts = _verdicts(_returned_verdicts, passed)
    out = []
    connection = None
    for name, value in upstream:
        lower = verdicts.get(name, _UNSEEN)
        if lower is _UNSEEN:
            lower = _judged(verdicts, name, _returned(name, passed))
        if lower is not None:
            out.append((lower, value))
        elif name.lower() == b"connection":
            connection = [*(connection or ()), (name, value)]
    if connection and (named := _connection_tokens(connection) - _REPRESENTATION):
        out = [(name, value) for name, value in out if name not in named]
    out.append((b"x-gateway-decision-id", decision_id))
    return out


def _returned(name: bytes, passed: frozenset[bytes]) -> bytes | None:
    """The name as the client gets it, or None when the header is not passed on."""
    lower = name.lower()
    if lower in NEVER_RETURNED or lower.startswith(GATEWAY_PREFIX):
        return None
    if lower in passed or not (lower in RESPONSE_DENIED or b"_" in lower or lower.startswith(RESPONSE_DENIED_PREFIXES)):
        return lower
    return None


# Clients and upstreams send the same few short names message after message: each set of
# rules remembers its verdicts on them (a dict lookup per header, not a judgement), up to
# MEMO_ENTRIES names; a long name, or one past that, is judged afresh, so that a flood of
# names cannot fill the memos.
MEMO_NAME_LENGTH = 64
MEMO_ENTRIES = 4096
_UNSEEN = object()
_forwarded_verdicts: dict[frozenset[bytes], dict[bytes, str | None]] = {}
_returned_verdicts: dict[frozenset[bytes], dict[bytes, bytes | None]] = {}


def _verdicts(memos: dict[frozenset[bytes], dict[bytes, Any]], rules: frozenset[bytes]) -> dict[bytes, Any]:
    """The memo of one set of rules (a few per upstream, made once)."""
    memo = memos.get(rules)
    if memo is None:
        memo = memos[rules] = {}
    return memo


def _judged(memo: dict[bytes, Any], name: bytes, verdict: Any) -> Any:
    if len(name) <= MEMO_NAME_LENGTH and len(memo) < MEMO_ENTRIES:
        memo[name] = verdict
    return verdict


def is_redirect(status: int) -> bool:
    """A status the gateway never passes on: following it, or letting the client follow it,
    would serve something other than what was decided."""
    return 300 <= status < 400


class Upstreams:
    """The pool of every configured upstream (gateway/request/pool.py), and its header rules."""

    def __init__(self, upstreams: dict[str, Upstream]) -> None:
        self.config = upstreams
        self.rules = {name: Rules.of(upstream) for name, upstream in upstreams.items()}
        self.pools = {name: Pool(name, upstream) for name, upstream in upstreams.items()}

    async def start(self) -> None:
        for pool in self.pools.values():
            await pool.start()

    async def close(self) -> None:
        for pool in self.pools.values():
            await pool.close()

"""Headers, both ways, on a real socket through the real listener to the recording
upstream (docs/headers.md).

Requests: the upstream receives exactly the representation the gateway decided on,
whatever the client adds: a `Connection` header naming a header the gateway reads
or sets is refused; a name that folds onto another (`Content_Type`, read as
`Content-Type` by CGI-style servers) never reaches it; headers upstreams bill or
route by are dropped; configured upstream headers replace any client copy.

Responses: the client never receives the upstream's cookies, account ids, proxy
internals or a redirect; `upstreams.NAME.response_headers` lets named ones through.
An upstream's redirect is a 502 in the API's error shape, never followed.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
import pytest

from e2e import CN_IP, Stack

from .conftest import CHAT, MESSAGES, ORG, PLAIN, US_IP, Probe, Reply, chat_body, error_shape

BODY = chat_body(PLAIN)
MESSAGE = json.dumps({"model": PLAIN, "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}).encode()


def upstream_headers(gw: Probe) -> list[tuple[str, str]]:
    """The headers of the one request the upstream received, as it received them."""
    [seen] = gw.stack.received
    return [(name.decode("latin-1"), value.decode("latin-1")) for name, value in seen.raw_headers]


def values(headers: list[tuple[str, str]], name: str) -> list[str]:
    """Every value of `name`, under any spelling a CGI-style server reads as it."""
    return [v for n, v in headers if n.lower().replace("_", "-") == name]


def raw_request(gw: Probe, *lines: str, body: bytes = BODY) -> list[Reply]:
    """ORG's credential, a US address, then exactly `lines` (no Content-Type of its own)."""
    head = [f"POST {CHAT} HTTP/1.1", "Host: gateway.test", f"Authorization: Bearer {gw.key()}",
            f"X-Forwarded-For: {US_IP}", *lines, f"Content-Length: {len(body)}", "Connection: close"]
    return gw.raw(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body)


def denied_unread(gw: Probe, replies: list[Reply], status: int) -> None:
    assert replies and replies[0].status == status, replies
    error_shape(replies[0])
    gw.nothing_forwarded()


# Item 2: what the gateway decided on reaches the upstream unchanged.

# Connection options naming a header the gateway reads or sets (RFC 9110 §7.6.1: never an end-to-end one).
DECIDED_TOKENS = ["content-type", "Content-Length", "CONTENT-ENCODING", "transfer-encoding", "authorization",
                  "x-api-key", "x-forwarded-for", "host", "x-gateway-org", "X-Gateway-Decision-Id", "x-gateway-tier",
                  "content_type", "Content_Encoding", "keep-alive, content-type", " content-type ", "close,content-length",
                  "keep-alive,,x-gateway-org"]


@pytest.mark.parametrize("tokens", DECIDED_TOKENS)
def test_connection_may_not_name_a_header_the_gateway_decided_on(gw: Probe, tokens: str) -> None:
    reply = gw.send(body=BODY, headers=[("Connection", tokens)])
    gw.denied(reply, 400)
    assert "connection" in json.loads(reply.body)["error"]["message"].lower()


def test_connection_naming_a_decided_header_is_refused_in_the_routes_own_shape(gw: Probe) -> None:
    reply = gw.send(path=MESSAGES, body=MESSAGE, headers=[("Connection", "content-type")])
    gw.denied(reply, 400, api="anthropic")


def test_connection_naming_other_headers_drops_only_those(gw: Probe) -> None:
    reply = gw.send(body=BODY, headers=[("Connection", "X-Custom, keep-alive"), ("X-Custom", "1"), ("X-Other", "2")])
    gw.allowed(reply)
    headers = upstream_headers(gw)
    assert values(headers, "x-custom") == [] and values(headers, "x-other") == ["2"]
    assert values(headers, "content-type") == ["application/json"]


# Names a CGI/WSGI/PHP upstream reads as another header (`_` as `-`), and their kin.
FOLDING = [("Content_Type", "text/plain"), ("content_type", "application/x-www-form-urlencoded"),
           ("CONTENT_TYPE", "application/json; charset=utf-16"), ("Content_Encoding", "gzip"), ("Content_Length", "1"),
           ("Transfer_Encoding", "chunked"), ("X_Forwarded_For", CN_IP), ("X_Real_IP", CN_IP), ("Authori_zation", "x"),
           ("X_Gateway_Org", "org-caisi"), ("Api_Key", "sk-smuggled"), ("OpenAI_Organization", "org-other"),
           ("Host_", "evil.test"), ("User_Agent", "smuggled")]


@pytest.mark.parametrize("name, value", FOLDING, ids=[n for n, _ in FOLDING])
def test_a_name_that_folds_onto_another_never_reaches_the_upstream(gw: Probe, name: str, value: str) -> None:
    reply = gw.send(body=BODY, headers=[(name, value)])
    gw.allowed(reply)
    [seen] = gw.stack.received
    headers = upstream_headers(gw)
    assert seen.body == BODY
    assert not [n for n, _ in headers if "_" in n], headers
    assert values(headers, "content-type") == ["application/json"]
    assert values(headers, "content-length") == [str(len(BODY))]
    assert values(headers, "content-encoding") == values(headers, "transfer-encoding") == []


def test_an_underscore_spelling_is_not_the_header(gw: Probe) -> None:
    """The gateway reads `Content-Type` itself, never a look-alike: without it, 415."""
    denied_unread(gw, raw_request(gw, "Content_Type: application/json"), 415)


@pytest.mark.parametrize("trailer", ["Content-Type: text/plain", "Content-Encoding: gzip", "X-Gateway-Org: org-other", "OpenAI-Organization: org-other",
                                     "X-Forwarded-For: 1.2.3.4", "Authorization: Bearer other"])
def test_trailer_fields_are_never_headers(gw: Probe, trailer: str) -> None:
    """A chunked body's trailer fields arrive after the head was decided on: none of them
    reaches the upstream, as a header or otherwise."""
    head = [f"POST {CHAT} HTTP/1.1", "Host: gateway.test", f"Authorization: Bearer {gw.key()}",
            f"X-Forwarded-For: {US_IP}", "Content-Type: application/json", "Transfer-Encoding: chunked",
            "Connection: close"]
    request = ("\r\n".join(head) + "\r\n\r\n").encode() + b"%x\r\n%s\r\n0\r\n%s\r\n\r\n" % (
        len(BODY), BODY, trailer.encode())
    [reply] = gw.raw(request)
    assert reply.status == 200, reply
    name, value = trailer.split(": ")
    seen = upstream_headers(gw)
    assert value not in values(seen, name.lower()), seen
    assert values(seen, "content-type") == ["application/json"]


def test_a_framing_trailer_is_refused(gw: Probe) -> None:
    request = ("\r\n".join([f"POST {CHAT} HTTP/1.1", "Host: gateway.test", f"Authorization: Bearer {gw.key()}",
                             f"X-Forwarded-For: {US_IP}", "Content-Type: application/json",
                             "Transfer-Encoding: chunked", "Connection: close"]) + "\r\n\r\n").encode()
    denied_unread(gw, gw.raw(request + b"%x\r\n%s\r\n0\r\nContent-Length: 5\r\n\r\n" % (len(BODY), BODY)), 400)


@pytest.mark.parametrize("lines", [
    ["Content-Type: application/json", "Content-Type: application/json"],
    ["Content-Type: application/json", "content-TYPE: text/plain"],
    ["Content-Type: application/json", "Content-Encoding: identity", "content-encoding: gzip"],
    ["Content-Type: application/json", "AUTHORIZATION: Bearer other"],
    ["Content-Type: application/json", "Content-Type: application/json", "Content_Type: application/json"],
], ids=["same twice", "mixed case", "content-encoding twice", "authorization twice", "twice and a look-alike"])
def test_a_decided_header_given_twice_is_refused(gw: Probe, lines: list[str]) -> None:
    denied_unread(gw, raw_request(gw, *lines), 400)


# Values the HTTP parser refuses before the gateway sees them: line breaks, obs-fold, controls.
BAD_VALUES = [
    ("obs-fold", ["Content-Type: application/json", "X-Note: a", " continued"]),
    ("obs-fold continuing content-type", ["Content-Type: application/json", " ; charset=utf-16"]),
    ("NUL", ["Content-Type: application/json\x00text/plain"]),
    ("CR", ["Content-Type: application/json", "X-Note: a\rContent-Type: text/plain"]),
    ("bare LF", ["Content-Type: application/json", "X-Note: a\nContent-Type: text/plain"]),
    ("vertical tab", ["Content-Type: application/json\x0b"]),
    ("form feed", ["Content-Type: application/json", "X-Note: a\x0cb"]),
    ("DEL", ["Content-Type: application/json", "X-Note: a\x7fb"]),
    ("control", ["Content-Type: application/json", "Authorization: Bearer \x01"]),
    ("space before colon", ["Content-Type : text/plain", "Content-Type: application/json"]),
]


@pytest.mark.parametrize("lines", [c[1] for c in BAD_VALUES], ids=[c[0] for c in BAD_VALUES])
def test_header_lines_with_breaks_or_controls_are_refused(gw: Probe, lines: list[str]) -> None:
    denied_unread(gw, raw_request(gw, *lines), 400)


# Item 12: headers upstreams route or bill by.

ROUTING = [
    ("OpenAI-Organization", "org-attacker"), ("OpenAI-Project", "proj_attacker"), ("chatgpt-account-id", "acct"),
    ("api-key", "azure-key-of-someone-else"), ("Ocp-Apim-Subscription-Key", "apim-key"), ("Ocp-Apim-Trace", "true"),
    ("azureml-model-deployment", "green"), ("x-ms-region", "eastus"), ("x-ms-client-request-id", "abc"),
    ("anthropic-organization-id", "org-uuid"), ("X-Goog-User-Project", "billed-elsewhere"),
    ("x-goog-api-key", "AIza-other"), ("x-goog-request-params", "location=us"),
    ("X-Vertex-AI-LLM-Request-Type", "dedicated"), ("X-Vertex-AI-LLM-Shared-Request-Type", "priority"),
    ("X-Amzn-Bedrock-GuardrailIdentifier", "gr-none"), ("X-Amz-Security-Token", "token"), ("x-amz-date", "20260101T000000Z"),
    ("x-litellm-api-key", "sk-litellm"), ("x-portkey-virtual-key", "vk"), ("Helicone-Target-Url", "http://evil.test/"),
    ("cf-aig-authorization", "Bearer x"), ("Cookie", "session=upstream-session"),
]
# End-to-end headers the SDKs send that carry no account or route: passed as sent.
PASSED = [("OpenAI-Beta", "assistants=v2"), ("anthropic-version", "2023-06-01"), ("anthropic-beta", "tools-2024-04-04"),
          ("User-Agent", "OpenAI/Python 1.99"), ("X-Stainless-Lang", "python"), ("X-Client-Request-Id", "req-1"),
          ("Idempotency-Key", "k-1")]


@pytest.mark.parametrize("name, value", ROUTING, ids=[n for n, _ in ROUTING])
def test_headers_upstreams_route_or_bill_by_are_dropped(gw: Probe, name: str, value: str) -> None:
    reply = gw.send(body=BODY, headers=[(name, value), *PASSED])
    gw.allowed(reply)
    headers = upstream_headers(gw)
    assert values(headers, name.lower()) == [], headers
    for passed, sent in PASSED:
        assert values(headers, passed.lower()) == [sent], headers


# Configured upstream headers, and response headers let through.

CONFIGURED = (", headers: {X-Upstream-Tenant: tenant-operator, OpenAI-Organization: org-operator, api-key: upstream-secret}"
              ", response_headers: [openai-organization, X-RateLimit-Remaining-Tokens, set-cookie]")


@pytest.fixture(scope="module")
def configured_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    stack = Stack(tmp_path_factory.mktemp("configured-upstream"), upstream_options=CONFIGURED)
    yield stack
    stack.close()


@pytest.fixture
def configured(configured_stack: Stack) -> Probe:
    configured_stack.upstream.app.reset()
    return Probe(configured_stack)


@pytest.mark.parametrize("name", ["X-Upstream-Tenant", "x-upstream-tenant", "X_Upstream_Tenant", "OPENAI-ORGANIZATION",
                                  "openai_organization", "Api-Key", "API_KEY"])
def test_configured_headers_replace_any_client_copy(configured: Probe, name: str) -> None:
    reply = configured.send(body=BODY, headers=[(name, "client-value")])
    configured.allowed(reply)
    headers = upstream_headers(configured)
    assert values(headers, "x-upstream-tenant") == ["tenant-operator"]
    assert values(headers, "openai-organization") == ["org-operator"]
    assert values(headers, "api-key") == ["upstream-secret"]


# Item 11: what the upstream answers with.

# Denied by default: state and policies for the gateway's origin, the upstream's account, proxies' internals.
RESPONSE_DENIED = [
    ("Set-Cookie", "__cf_bm=abc; path=/; domain=.upstream.test; HttpOnly"), ("Set-Cookie2", "a=b"),
    ("Strict-Transport-Security", "max-age=31536000; includeSubDomains; preload"), ("Alt-Svc", 'h3=":443"; ma=86400'),
    ("NEL", '{"report_to":"cf-nel","max_age":604800}'), ("Report-To", '{"group":"cf-nel"}'), ("Clear-Site-Data", '"*"'),
    ("openai-organization", "org-upstream-account"), ("openai-project", "proj_upstream"),
    ("anthropic-organization-id", "3f1c-upstream"), ("x-ratelimit-remaining-tokens", "149984"),
    ("anthropic-ratelimit-tokens-remaining", "99000"), ("apim-request-id", "a1"), ("azureml-model-session", "d-123"),
    ("x-ms-region", "East US"), ("x-ms-deployment-name", "internal-deployment"), ("x-ms-served-model", "internal-model"),
    ("x-litellm-model-api-base", "https://10.0.0.7/v1"), ("Server", "cloudflare"), ("X-Powered-By", "Express"),
    ("Via", "1.1 google"), ("Server-Timing", "upstream;dur=53"), ("x-envoy-upstream-service-time", "12"),
    ("CF-RAY", "8a1b2c3d4e5f-SJC"), ("CF-Cache-Status", "DYNAMIC"), ("X-Amzn-Trace-Id", "Root=1-abc"),
    ("X-Cloud-Trace-Context", "105445aa7843bc8bf206b12000100000/1"), ("X-Served-By", "cache-sjc"),
    ("Set_Cookie", "a=b"), ("X_Internal", "1"),
]
# Never passed, whatever the configuration.
RESPONSE_NEVER = [("Location", "http://127.0.0.1:1/v1/models"), ("Content-Location", "/internal/v2/chat"),
                  ("Refresh", "0; url=http://evil.test/"), ("X-Gateway-Org", "org-caisi"),
                  ("X-Gateway-Decision-Id", "forged"), ("X-Gateway-Tier", "government")]
RESPONSE_PASSED = [("x-request-id", "req_123"), ("request-id", "req_456"), ("openai-processing-ms", "42"),
                   ("openai-version", "2020-10-01"), ("x-should-retry", "false"), ("x-demo-upstream", "demo")]

ROUTES = [("POST", CHAT, BODY, "openai"), ("POST", CHAT, chat_body(PLAIN, stream=True), "openai"),
          ("POST", MESSAGES, MESSAGE, "anthropic"), ("GET", f"/v1/models/{PLAIN}", None, "openai")]
ROUTE_IDS = ["chat", "chat stream", "messages", "model"]


def reply_hooks(*pairs: tuple[str, str]) -> list[tuple[str, str]]:
    """Ask the demo upstream to answer with these headers too."""
    return [("X-Demo-Reply-Header", f"{name}: {value}") for name, value in pairs]


@pytest.mark.parametrize("method, path, body, api", ROUTES, ids=ROUTE_IDS)
def test_upstream_response_headers_are_filtered(gw: Probe, method: str, path: str, body: bytes | None, api: str) -> None:
    reply = gw.send(method, path, body, headers=reply_hooks(*RESPONSE_DENIED, *RESPONSE_NEVER, *RESPONSE_PASSED))
    assert reply.status == 200, reply
    names = [name.lower() for name, _ in reply.headers]
    leaked = [name for name, _ in RESPONSE_DENIED + RESPONSE_NEVER if name.lower() in names]
    assert leaked == ["X-Gateway-Decision-Id"], reply.headers  # the gateway's own, below
    # A model read is answered with an entry built afresh (gateway/request/catalogue.py): none of the
    # upstream's headers at all.
    for name, value in RESPONSE_PASSED:
        assert reply.header(name) == (None if path.startswith("/v1/models") else value), reply.headers
    assert names.count("date") == 1 and names.count("x-gateway-decision-id") == 1, reply.headers
    [seen] = gw.stack.received
    assert reply.header("x-gateway-decision-id") == seen.header("x-gateway-decision-id")


def test_response_headers_config_lets_named_headers_through(configured: Probe) -> None:
    reply = configured.send(body=BODY, headers=reply_hooks(
        ("Set-Cookie", "route=a"), ("OpenAI-Organization", "org-upstream"), ("x-ratelimit-remaining-tokens", "10"),
        ("openai-project", "proj_upstream"), ("Via", "1.1 google"), ("Location", "/elsewhere")))
    assert reply.status == 200, reply
    assert (reply.header("set-cookie"), reply.header("openai-organization"),
            reply.header("x-ratelimit-remaining-tokens")) == ("route=a", "org-upstream", "10")
    assert reply.header("openai-project") is reply.header("via") is reply.header("location") is None, reply.headers


REDIRECTS = [301, 302, 303, 307, 308, 300]


@pytest.mark.parametrize("status", REDIRECTS)
@pytest.mark.parametrize("method, path, body, api", ROUTES + [("GET", "/v1/models", None, "openai")],
                         ids=[*ROUTE_IDS, "models"])
def test_an_upstream_redirect_is_a_bad_gateway_never_followed(gw: Probe, status: int, method: str, path: str,
                                                              body: bytes | None, api: str) -> None:
    target = f"{gw.stack.upstream.url}/v1/models"
    reply = gw.send(method, path, body, headers=[
        ("X-Demo-Fault", f"status={status}"),
        *reply_hooks(("Location", target), ("Refresh", f"0; url={target}"), ("Content-Location", target))])
    assert reply.status == 502, reply
    error_shape(reply, api)
    assert reply.header("location") is reply.header("refresh") is reply.header("content-location") is None
    gw.settle()
    assert len(gw.stack.received) == 1, gw.stack.received  # aiohttp did not follow it
    [record] = [r for r in gw.stack.audit_records() if r["decision_id"] == reply.header("x-gateway-decision-id")]
    assert (record["status"], record["upstream_status"], record["org"]) == (502, status, ORG)
    assert record["error"] == "upstream_redirect"

"""Route matching on raw paths (docs/routes.md): canonical paths of a known route
under a configured prefix route, non-canonical ones are 400, everything else
404; a prefix that covers no known route is refused when the router is built."""

from __future__ import annotations

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from gateway.request.body import RequestError
from gateway.request.routing import DEFAULT_ROUTES, KNOWN_ROUTES, MESSAGES, RESPONSES, Route, Router

ROUTER = Router(DEFAULT_ROUTES)


# (raw path, method, expected Route fields: prefix, api, model_in_path, kind)
ROUTED = [
    (b"/v1/chat/completions", "POST", ("/v1/chat/completions", "openai", None, "inference")),
    (b"/v1/completions", "POST", ("/v1/completions", "openai", None, "inference")),
    (b"/v1/embeddings", "POST", ("/v1/embeddings", "openai", None, "inference")),
    (b"/v1/responses", "POST", ("/v1/responses", "openai", None, "inference")),
    (b"/v1/responses/input_tokens", "POST", ("/v1/responses", "openai", None, "inference")),
    (b"/v1/responses/compact", "POST", ("/v1/responses", "openai", None, "inference")),
    (b"/v1/messages", "POST", ("/v1/messages", "anthropic", None, "inference")),
    (b"/v1/messages/count_tokens", "POST", ("/v1/messages", "anthropic", None, "inference")),
    (b"/v1/models", "GET", ("/v1/models", "openai", None, "models_list")),
    (b"/v1/models/gpt-4o", "GET", ("/v1/models", "openai", "gpt-4o", "models_get")),
    (b"/v1/models/gpt-4.1-mini", "GET", ("/v1/models", "openai", "gpt-4.1-mini", "models_get")),
    (b"/v1/models/meta-llama/Llama-3.1-8B", "GET", ("/v1/models", "openai", "meta-llama/Llama-3.1-8B", "models_get")),
    (b"/v1/models/ft:gpt-4o:acme::abc123", "GET", ("/v1/models", "openai", "ft:gpt-4o:acme::abc123", "models_get")),
    (b"/v1/models/claude@20240620", "GET", ("/v1/models", "openai", "claude@20240620", "models_get")),
    (b"/v1/models/a~b_c", "GET", ("/v1/models", "openai", "a~b_c", "models_get")),
    (b"/v1/models/...", "GET", ("/v1/models", "openai", "...", "models_get")),  # not a dot segment
]


@pytest.mark.parametrize("raw,method,expected", ROUTED)
def test_routed(raw: bytes, method: str, expected: tuple[str, str, str | None, str]) -> None:
    route = ROUTER.match(raw, method)
    assert (route.prefix, route.api, route.model_in_path, route.kind) == expected
    assert route.path == raw.decode()


def test_each_route_carries_where_its_body_names_models() -> None:
    assert ROUTER.match(b"/v1/responses/compact", "POST").body is RESPONSES
    assert ROUTER.match(b"/v1/messages/count_tokens", "POST").body is MESSAGES
    assert ROUTER.match(b"/v1/embeddings", "POST").body.keys == {"model"}


# (raw path, method, status)
REFUSED = [
    # Not under a configured prefix: 404, never forwarded.
    (b"/", "GET", 404),
    (b"/v1", "GET", 404),
    (b"/v1/", "GET", 400),
    (b"/v2/chat/completions", "POST", 404),
    (b"/v1/modelsX", "GET", 404),
    (b"/v1/chat/completionsX", "POST", 404),
    (b"/v1/chat", "POST", 404),
    (b"/V1/chat/completions", "POST", 404),
    (b"/v1/Models", "GET", 404),
    (b"/admin/policy", "GET", 404),
    (b"/metrics", "GET", 404),
    (b"/v1/messages-batch", "POST", 404),
    # Under a prefix but not a route the gateway decides on: sub-resources that name no model
    # (stored completions and responses, batches), and other methods on known paths.
    (b"/v1/chat/completions", "GET", 404),
    (b"/v1/chat/completions/chatcmpl-1", "GET", 404),
    (b"/v1/chat/completions/chatcmpl-1", "POST", 404),
    (b"/v1/chat/completions/chatcmpl-1", "DELETE", 404),
    (b"/v1/chat/completions/chatcmpl-1/messages", "GET", 404),
    (b"/v1/chat/completions/small-2", "POST", 404),
    (b"/v1/chat/completions/deployments/small-2", "POST", 404),
    (b"/v1/responses/resp_1", "GET", 404),
    (b"/v1/responses/resp_1", "DELETE", 404),
    (b"/v1/responses/resp_1/cancel", "POST", 404),
    (b"/v1/responses/resp_1/input_items", "GET", 404),
    (b"/v1/responses/input_tokens", "GET", 404),
    (b"/v1/responses/compact/x", "POST", 404),
    (b"/v1/messages/batches", "POST", 404),
    (b"/v1/messages/batches", "GET", 404),
    (b"/v1/messages/batches/msgbatch_1/results", "GET", 404),
    (b"/v1/messages/count_tokens/x", "POST", 404),
    (b"/v1/messages/msg_1", "POST", 404),
    (b"/v1/messages", "GET", 404),
    (b"/v1/messages", "post", 404),
    (b"/v1/embeddings/x", "POST", 404),
    (b"/v1/completions", "PUT", 404),
    # The models endpoint serves GET only.
    (b"/v1/models", "POST", 404),
    (b"/v1/models", "HEAD", 404),
    (b"/v1/models", "get", 404),
    (b"/v1/models/gpt-4o", "DELETE", 404),
    # Percent-encoding, any of it.
    (b"/v1/%2e%2e/admin", "GET", 400),
    (b"/v1/models/%2e%2e", "GET", 400),
    (b"/v1/models/org%2fname", "GET", 400),
    (b"/v1/models/org%2Fname", "GET", 400),
    (b"/v1/chat%5ccompletions", "POST", 400),
    (b"/v1/chat/completion%73", "POST", 400),
    (b"/v1/models/%41", "GET", 400),
    (b"/v1/models/%", "GET", 400),
    (b"/v1/models/%zz", "GET", 400),
    (b"/%761/models", "GET", 400),
    # Dot and empty segments.
    (b"/v1/../v1/models", "GET", 400),
    (b"/v1/models/..", "GET", 400),
    (b"/v1/models/../../admin", "GET", 400),
    (b"/v1/./models", "GET", 400),
    (b"/v1/models/.", "GET", 400),
    (b"/./v1/models", "GET", 400),
    (b"/../v1/models", "GET", 400),
    (b"//v1/models", "GET", 400),
    (b"/v1//models", "GET", 400),
    (b"/v1/models/", "GET", 400),
    (b"/v1/chat/completions/", "POST", 400),
    (b"/v1/models//gpt-4o", "GET", 400),
    (b"/v1/models/org//name", "GET", 400),
    # Backslashes, parameters, query and fragment markers, other delimiters.
    (b"/v1\\models", "GET", 400),
    (b"/v1/models\\..\\admin", "GET", 400),
    (b"/v1/models;x=1", "GET", 400),
    (b"/v1/models/gpt-4o;v=2", "GET", 400),
    (b"/v1/chat/completions?x=1", "POST", 400),
    (b"/v1/chat/completions#x", "POST", 400),
    (b"/v1/models/a+b", "GET", 400),
    (b"/v1/models/a,b", "GET", 400),
    (b"/v1/models/a=b", "GET", 400),
    (b"/v1/models/a*b", "GET", 400),
    (b"/v1/models/a'b", "GET", 400),
    (b"/v1/models/(a)", "GET", 400),
    (b"/v1/models/a!b", "GET", 400),
    (b"/v1/models/a$b", "GET", 400),
    (b"/v1/models/a&b", "GET", 400),
    (b"/v1/models/a b", "GET", 400),
    (b"/v1/models/a\"b", "GET", 400),
    (b"/v1/models/<a>", "GET", 400),
    (b"/v1/models/a|b", "GET", 400),
    (b"/v1/models/{a}", "GET", 400),
    (b"/v1/models/a`b", "GET", 400),
    (b"/v1/models/a^b", "GET", 400),
    (b"/v1/models/[a]", "GET", 400),
    # Non-ASCII and control bytes.
    (b"/v1/models/caf\xc3\xa9", "GET", 400),
    (b"/v1/models/\xff", "GET", 400),
    (b"/v1/chat/completions\x00", "POST", 400),
    (b"/v1/chat/completions\r\n", "POST", 400),
    (b"/v1/chat/completions\t", "POST", 400),
    (b"/v1/models/a\x7fb", "GET", 400),
    # Not origin-form.
    (b"", "GET", 400),
    (b"v1/models", "GET", 400),
    (b"*", "OPTIONS", 400),
    (b"http://evil.example/v1/models", "GET", 400),
    (b"https://api.example/v1/chat/completions", "POST", 400),
    (b"//evil.example/v1/models", "GET", 400),
    # Too long.
    (b"/v1/models/" + b"a" * 2048, "GET", 400),
]


@pytest.mark.parametrize("raw,method,status", REFUSED)
def test_refused(raw: bytes, method: str, status: int) -> None:
    with pytest.raises(RequestError) as caught:
        ROUTER.match(raw, method)
    assert caught.value.status == status
    assert caught.value.param is None


def test_path_at_the_length_limit_routes() -> None:
    raw = b"/v1/models/" + b"a" * (2048 - len(b"/v1/models/"))
    assert ROUTER.match(raw, "GET").kind == "models_get"
    with pytest.raises(RequestError):
        Router(DEFAULT_ROUTES, max_length=100).match(raw, "GET")


def test_longest_prefix_wins() -> None:
    router = Router(["/v1", "/v1/models", "/v1/messages"])
    assert router.match(b"/v1/models/x", "GET").prefix == "/v1/models"
    assert router.match(b"/v1/chat/completions", "POST").prefix == "/v1"
    # api and kind follow the path, whichever prefix matched.
    assert router.match(b"/v1/messages", "POST") == Route("/v1/messages", "/v1/messages", "anthropic", None, "inference",
                                                          MESSAGES)


def test_only_configured_prefixes_route() -> None:
    router = Router(["/v1/chat/completions"])
    assert router.match(b"/v1/chat/completions", "POST").kind == "inference"
    for raw in (b"/v1/models", b"/v1/messages", b"/v1/embeddings"):
        with pytest.raises(RequestError) as caught:
            router.match(raw, "GET")
        assert caught.value.status == 404
    with pytest.raises(RequestError):
        Router([]).match(b"/v1/models", "GET")


@pytest.mark.parametrize("prefix", ["", "/", "v1/models", "/v1/models/", "/v1//models", "/v1/../admin", "/v1/%2e", "/v1/mödels", "/v1;x", None])
def test_bad_prefixes_are_refused_at_construction(prefix: str) -> None:
    with pytest.raises(ValueError, match="prefix"):
        Router([prefix])


@pytest.mark.parametrize("prefix", [
    "/v1/messages/batches", "/v1/batches", "/v1/files", "/v1/audio/transcriptions", "/v1/realtime", "/v2",
    "/v1/chat/completions/chatcmpl-1", "/v1/responses/resp_1", "/openai/deployments", "/model", "/v1beta/models",
    "/v1/engines", "/v1/modelsX",
])
def test_prefixes_covering_no_known_route_are_refused(prefix: str) -> None:
    with pytest.raises(ValueError) as refused:
        Router(["/v1/chat/completions", prefix])
    message = str(refused.value)
    assert repr(prefix) in message and "covers no route" in message
    assert all(f"{known.method} {known.path}" in message for known in KNOWN_ROUTES)


@pytest.mark.parametrize("prefix,served,not_served", [
    ("/v1", b"/v1/messages/count_tokens", b"/v1/batches"),
    ("/v1/messages/count_tokens", b"/v1/messages/count_tokens", b"/v1/messages"),
    ("/v1/responses/compact", b"/v1/responses/compact", b"/v1/responses"),
    ("/v1/models/gpt-4o", b"/v1/models/gpt-4o", b"/v1/models/gpt-5"),
    ("/v1/models/org", b"/v1/models/org/name", b"/v1/models"),
])
def test_a_prefix_serves_the_known_routes_under_it(prefix: str, served: bytes, not_served: bytes) -> None:
    router = Router([prefix])
    method = "GET" if served.startswith(b"/v1/models") else "POST"
    assert router.match(served, method).prefix == prefix
    with pytest.raises(RequestError) as caught:
        router.match(not_served, method)
    assert caught.value.status == 404


def test_duplicate_prefix_is_refused() -> None:
    with pytest.raises(ValueError, match="twice"):
        Router(["/v1/models", "/v1/models"])


# Property: a path routes only as itself and under a prefix.

_SEGMENT = st.one_of(
    st.sampled_from(["v1", "models", "chat", "completions", "messages", "gpt-4o", "org", "x:y", "a.b"]),
    st.sampled_from([".", "..", "", "%2e", "%2F", "a;b", "a\\b", "modelsX"]),
    st.text(alphabet="abcAZ09-._~:@%;/\\?#+ \x00é", max_size=6),
)
_PATHS = st.builds(
    lambda start, segments: "/".join([start, *segments]).encode(),
    st.sampled_from(["", "/v1", *DEFAULT_ROUTES]),
    st.lists(_SEGMENT, max_size=4),
)


def _check(raw: bytes) -> None:
    try:
        route = ROUTER.match(raw, "GET")
    except RequestError as error:
        assert error.status in (400, 404)
        return
    assert route.path.encode("ascii") == raw
    assert route.prefix in DEFAULT_ROUTES
    assert route.path == route.prefix or route.path.startswith(route.prefix + "/")
    segments = route.path.split("/")[1:]
    assert all(segment not in ("", ".", "..") for segment in segments)
    if route.kind == "models_get":
        assert route.path == "/v1/models/" + route.model_in_path
    else:
        assert route.model_in_path is None
        assert any(known.path == route.path and known.method == "GET" for known in KNOWN_ROUTES)


@settings(max_examples=1000, deadline=None)
@given(st.binary(max_size=64))
@example(b"/v1/models/%2e%2e")
@example(b"/v1/models")
def test_any_bytes_route_only_as_themselves(raw: bytes) -> None:
    _check(raw)


@settings(max_examples=1000, deadline=None)
@given(_PATHS)
def test_any_path_routes_only_as_itself(raw: bytes) -> None:
    _check(raw)

"""Fuzzing the router (gateway/request/routing.py): paths built from the pieces that
path normalisers disagree on — dot segments, percent-encoding (once or twice),
backslashes, empty segments, `;` parameters, case, NUL, `?` and `#`.

Properties, for every raw path and method:
- only RequestError escapes, and only as 400 or 404;
- a path that routes is one that every reference normaliser (RFC 3986
  percent-decoding and dot-segment removal, with the common server
  variations: repeated decoding, backslash as slash, merged slashes, `;`
  parameters dropped, trailing slash dropped) leaves unchanged — so what the
  upstream serves is what was routed, and a model in /v1/models/{id} is the
  id the upstream reads;
- no path that one of those normalisers turns into a configured route (an
  inference endpoint or a model read) is routed anywhere else.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

from hypothesis import given
from hypothesis import strategies as st

from gateway.request.body import RequestError
from gateway.request.routing import DEFAULT_ROUTES, Router

from .conftest import fuzz

ROUTER = Router()


def remove_dot_segments(path: str) -> str:
    """RFC 3986 §5.2.4, written out."""
    output: list[str] = []
    while path:
        if path.startswith("../"):
            path = path[3:]
        elif path.startswith("./"):
            path = path[2:]
        elif path.startswith("/./"):
            path = path[2:]
        elif path == "/.":
            path = "/"
        elif path.startswith("/../"):
            path = path[3:]
            if output:
                output.pop()
        elif path == "/..":
            path = "/"
            if output:
                output.pop()
        elif path in (".", ".."):
            path = ""
        else:
            start = 1 if path.startswith("/") else 0
            end = path.find("/", start)
            end = len(path) if end < 0 else end
            output.append(path[:end])
            path = path[end:]
    return "".join(output)


def normalisations(raw: str) -> set[str]:
    """The paths different servers would serve for `raw`."""
    path = raw.split("#", 1)[0].split("?", 1)[0]
    variants = {path}
    for _ in range(2):  # decode, then decode again (double-decoding servers)
        variants |= {unquote(v, errors="replace") for v in variants}
    variants |= {v.replace("\\", "/") for v in variants}
    variants |= {re.sub(r";[^/]*", "", v) for v in variants}
    variants |= {v.split("\x00", 1)[0] for v in variants}
    variants |= {remove_dot_segments(v) for v in variants}
    variants |= {re.sub("/+", "/", v) for v in variants}
    variants |= {v.rstrip("/") or "/" for v in variants}
    variants |= {remove_dot_segments(v) for v in variants}
    return variants


def served_route(path: str) -> str | None:
    for prefix in sorted(DEFAULT_ROUTES, key=len, reverse=True):
        if path == prefix or path.startswith(prefix + "/"):
            return prefix
    return None


_SEGMENTS = st.sampled_from([
    "v1", "V1", "chat", "completions", "models", "messages", "responses", "embeddings", "batches", "realtime",
    "deployments", "small-2", "frontier-5.6", "ft:gpt-4o:org::id", "claude@2024", "a~b", "..", ".", "", "%2e", "%2E%2e",
    "%2e.", "%2f", "%2F", "%5c", "%252e%252e", "%25", "%", "%zz", "\\", "..\\", ";x", "v1;a=b", "%00", "\x00", " ", "%20",
    "?", "?model=x", "#", "#x", "ｖ１", "\u2024", "%c0%ae", "%u002e", "models%2ffrontier-5.6", ".%2e", "%2e%2e%2f",
])


@st.composite
def raw_paths(draw: st.DrawFn) -> bytes:
    segments = draw(st.lists(st.one_of(_SEGMENTS, st.text(max_size=4)), min_size=1, max_size=7))
    separators = draw(st.lists(st.sampled_from(["/", "/", "/", "//", "\\", "/./", "/../"]), min_size=len(segments), max_size=len(segments)))
    path = "".join(sep + seg for sep, seg in zip(separators, segments))
    if draw(st.booleans()):
        path = draw(st.sampled_from(DEFAULT_ROUTES)) + draw(st.sampled_from(["", "/"])) + path.lstrip("/")
    return path.encode("utf-8", "surrogatepass")


@fuzz(examples=500)
@given(raw_paths(), st.sampled_from(["GET", "POST", "DELETE", "get", "PUT"]))
def test_router(raw: bytes, method: str) -> None:
    try:
        route = ROUTER.match(raw, method)
    except RequestError as error:
        assert error.status in (400, 404)
        route = None
    text = raw.decode("utf-8", "surrogateescape")
    if route is not None:
        assert route.path == text
        assert normalisations(text) == {text}, "routed a path that a server would normalise to another"
        assert route.prefix == served_route(text)
        if route.kind == "models_get":
            assert route.model_in_path == text.removeprefix("/v1/models/")
    for seen in normalisations(text):
        served = served_route(seen)
        if served is not None and route is not None:
            assert route.prefix == served and route.path == seen, (text, seen)


@fuzz(examples=300)
@given(st.binary(max_size=64), st.text(max_size=8))
def test_arbitrary_bytes(raw: bytes, method: str) -> None:
    try:
        ROUTER.match(raw, method)
    except RequestError as error:
        assert error.status in (400, 404)

"""Which API route a request is for, decided on the raw path (docs/routes.md).

The gateway serves only the routes in `KNOWN_ROUTES`: those it knows how to
decide on, each with where its body names models (gateway/request/body_models.py).
A configured prefix chooses which of them are served; any other path, under a
prefix or not, is 404 and never forwarded: a sub-resource such as a stored
completion (`/v1/chat/completions/{id}`), a stored response or a message batch
(`/v1/messages/batches`, whose results are read later by id under the gateway's
own upstream credential) names no model a decision could cover. A prefix that
covers no known route is refused when the configuration is loaded.

The path is matched exactly as sent, never normalised first: a path that an
upstream (or any proxy between) could normalise into something else —
percent-encoding, dot segments, empty segments, backslashes, `;` parameters —
is refused with 400, so that the path we route on is the path the upstream
serves. Percent-encoding is refused outright: no route of these APIs needs it,
and decoding `%2f` or `%2e` is exactly where servers disagree (RFC 3986 §6.2.2
leaves it to them).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from gateway.request.body_models import TOP_LEVEL, BodyModels, Named
from gateway.request.body import RequestError

DEFAULT_ROUTES = (
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/responses",
    "/v1/models",
    "/v1/messages",
)
MAX_PATH_LENGTH = 2048

# RFC 3986 unreserved characters, "/" and ":" "@" (model ids such as
# "ft:gpt-4o:org::id" or "claude@20240620"). Every other byte — "%", ";", "\",
# the other sub-delims, "?", "#", space, controls, non-ASCII — is refused.
_ALLOWED = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~/:@"
_REST = "/{model}"  # a known path ending in it: the rest of the path names the model

Api = Literal["openai", "anthropic"]
Kind = Literal["models_list", "models_get", "inference"]


@dataclass(frozen=True, slots=True)
class Known:
    """A route the gateway decides on: its method and path, its API (the error shape)
    and kind, and where an inference body names models."""

    method: str
    path: str
    api: Api
    kind: Kind
    body: BodyModels = TOP_LEVEL


# Where bodies name models besides `model`, from the API references (the
# official SDKs' request types, 2026-08): OpenAI Chat Completions and Responses
# `moderation.model`; Responses tools (`image_generation` calls gpt-image-1 when
# it names no model); a Responses `prompt` is a stored template, which can set
# its own model and tools; Anthropic tools (`advisor_*`) and `fallbacks`.
CHAT = BodyModels((Named("moderation.model", required=True),))
RESPONSES = BodyModels(
    (Named("moderation.model", required=True),
     Named("tools[].model", required_types=frozenset({"image_generation"}))),
    refused=("prompt",),
)
MESSAGES = BodyModels((Named("tools[].model"), Named("fallbacks[].model", required=True)))

KNOWN_ROUTES: tuple[Known, ...] = (
    Known("POST", "/v1/chat/completions", "openai", "inference", CHAT),
    Known("POST", "/v1/completions", "openai", "inference"),
    Known("POST", "/v1/embeddings", "openai", "inference"),
    Known("POST", "/v1/responses", "openai", "inference", RESPONSES),
    Known("POST", "/v1/responses/input_tokens", "openai", "inference", RESPONSES),
    Known("POST", "/v1/responses/compact", "openai", "inference", RESPONSES),
    # Only reads: OpenAI's DELETE /v1/models/{id} manages fine-tunes, not this gateway's business.
    Known("GET", "/v1/models", "openai", "models_list"),
    Known("GET", "/v1/models" + _REST, "openai", "models_get"),
    Known("POST", "/v1/messages", "anthropic", "inference", MESSAGES),
    Known("POST", "/v1/messages/count_tokens", "anthropic", "inference", MESSAGES),
)


@dataclass(frozen=True, slots=True)
class Route:
    prefix: str
    path: str
    api: Api
    model_in_path: str | None  # models_get: the model read
    kind: Kind
    body: BodyModels = TOP_LEVEL


class Router:
    """Matches raw request paths against the known routes under the configured
    prefixes. A prefix matches on a segment boundary: `/v1/models` covers
    `/v1/models` and `/v1/models/x`, not `/v1/modelsX`; the longest one that
    matches is the route's."""

    def __init__(self, prefixes: Iterable[str] = DEFAULT_ROUTES, *, max_length: int = MAX_PATH_LENGTH) -> None:
        self._prefixes = tuple(sorted(checked_prefixes(prefixes), key=len, reverse=True))
        self._max_length = max_length
        served = [known for known in KNOWN_ROUTES if any(covers(prefix, known) for prefix in self._prefixes)]
        # An exact path's route is the same every time: built once.
        self._exact = {(k.method, k.path): Route(self._prefix(k.path), k.path, k.api, None, k.kind, k.body)
                       for k in served if not k.path.endswith(_REST)}
        self._rest = [(k.method, k.path.removesuffix(_REST) + "/", k) for k in served if k.path.endswith(_REST)]

    @property
    def prefixes(self) -> tuple[str, ...]:
        return self._prefixes

    def match(self, raw_path: bytes, method: str) -> Route:
        path = self._canonical(raw_path)
        exact = self._exact.get((method, path))
        if exact is not None:
            return exact
        prefix = self._prefix(path)
        for known_method, start, known in self._rest:
            if method == known_method and path.startswith(start):
                return Route(prefix, path, known.api, path[len(start):], known.kind, known.body)
        raise _not_found()

    def _canonical(self, raw_path: bytes) -> str:
        """The path as str if it is in canonical form, else 400."""
        if len(raw_path) > self._max_length:
            raise RequestError(400, f"The request path is longer than {self._max_length} bytes.")
        if not raw_path.startswith(b"/") or raw_path.translate(None, _ALLOWED):
            raise _invalid()
        path = raw_path.decode("ascii")
        if path == "/":
            raise _not_found()
        if not _canonical_segments(path):
            raise _invalid()
        return path

    def _prefix(self, path: str) -> str:
        for prefix in self._prefixes:
            if path == prefix or (path.startswith(prefix) and path[len(prefix)] == "/"):
                return prefix
        raise _not_found()


def api_of(path: str) -> Api:
    """The API whose error shape answers `path`, a known route or not."""
    return "anthropic" if path == "/v1/messages" or path.startswith("/v1/messages/") else "openai"


def covers(prefix: str, known: Known) -> bool:
    """Whether some path of `known` lies under `prefix` (for a path ending in a model,
    the prefix may name the model too: `/v1/models/gpt-4o`)."""
    if known.path.endswith(_REST):
        start = known.path.removesuffix(_REST)
        return _under(start, prefix) or prefix.startswith(start + "/")
    return _under(known.path, prefix)


def _under(path: str, prefix: str) -> bool:
    return path == prefix or path.startswith(prefix + "/")


def _canonical_segments(path: str) -> bool:
    """No empty, "." or ".." segment (RFC 3986 §5.2.4 would remove or merge them)."""
    return "//" not in path and not path.endswith("/") and "/./" not in path + "/" and "/../" not in path + "/"


def checked_prefixes(prefixes: Iterable[str]) -> list[str]:
    """The prefixes, each canonical, listed once, and covering a known route; else
    ValueError naming the prefix (and the routes the gateway knows)."""
    checked: list[str] = []
    for prefix in prefixes:
        valid = (
            isinstance(prefix, str)
            and prefix.isascii()
            and prefix.startswith("/")
            and prefix != "/"
            and not prefix.encode().translate(None, _ALLOWED)
            and _canonical_segments(prefix)
        )
        if not valid:
            raise ValueError(f"route prefix {prefix!r} is not a canonical path such as /v1/chat/completions")
        if prefix in checked:
            raise ValueError(f"route prefix {prefix!r} is listed twice")
        if not any(covers(prefix, known) for known in KNOWN_ROUTES):
            known = ", ".join(f"{k.method} {k.path}" for k in KNOWN_ROUTES)
            raise ValueError(f"route prefix {prefix!r} covers no route the gateway can decide on (it knows {known})")
        checked.append(prefix)
    return checked


def _invalid() -> RequestError:
    return RequestError(400, "The request path is not in canonical form (no percent-encoding, dot or empty segments, or special characters).")


def _not_found() -> RequestError:
    return RequestError(404, "Unknown request path.")

"""Which API route a request is for, decided on the raw path (SPEC §1.1).

Only paths under a configured prefix are forwarded; everything else is 404. The
path is matched exactly as sent, never normalised first: a path that an upstream
(or any proxy between) could normalise into something else — percent-encoding,
dot segments, empty segments, backslashes, `;` parameters — is refused with 400,
so that the path we route on is the path the upstream serves. Percent-encoding
is refused outright: no route of these APIs needs it, and decoding `%2f` or
`%2e` is exactly where servers disagree (RFC 3986 §6.2.2 leaves it to them).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from gateway.request_body import RequestError

DEFAULT_ROUTES = (
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/responses",
    "/v1/models",
    "/v1/messages",
)
MAX_PATH_LENGTH = 2048

_MODELS = "/v1/models"
_MESSAGES = "/v1/messages"
_MODEL_SEGMENTS = frozenset({"deployments", "engines", "models", "model"})

# RFC 3986 unreserved characters, "/" and ":" "@" (model ids such as
# "ft:gpt-4o:org::id" or "claude@20240620"). Every other byte — "%", ";", "\",
# the other sub-delims, "?", "#", space, controls, non-ASCII — is refused.
_ALLOWED = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~/:@"

Api = Literal["openai", "anthropic"]
Kind = Literal["models_list", "models_get", "inference"]


@dataclass(frozen=True, slots=True)
class Route:
    prefix: str
    path: str
    api: Api
    model_in_path: str | None  # models_get: the model read; inference: one the body must name too
    kind: Kind


class Router:
    """Matches raw request paths against configured prefixes, longest first.

    A prefix matches on a segment boundary: `/v1/models` covers `/v1/models`
    and `/v1/models/x`, not `/v1/modelsX`.
    """

    def __init__(self, prefixes: Iterable[str] = DEFAULT_ROUTES, *, max_length: int = MAX_PATH_LENGTH) -> None:
        self._prefixes = tuple(sorted(_checked_prefixes(prefixes), key=len, reverse=True))
        self._max_length = max_length

    @property
    def prefixes(self) -> tuple[str, ...]:
        return self._prefixes

    def match(self, raw_path: bytes, method: str) -> Route:
        path = self._canonical(raw_path)
        prefix = self._prefix(path)
        model = None
        if path == _MODELS or path.startswith(_MODELS + "/"):
            # Only reads are served here; OpenAI's DELETE /v1/models/{id}
            # manages fine-tunes, which is not this gateway's business.
            if method != "GET":
                raise _not_found()
            model = path[len(_MODELS) + 1 :] or None
            kind: Kind = "models_get" if model else "models_list"
        else:
            kind = "inference"
            model = _model_in_path(path)
        api: Api = "anthropic" if path == _MESSAGES or path.startswith(_MESSAGES + "/") else "openai"
        return Route(prefix, path, api, model, kind)

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


def _model_in_path(path: str) -> str | None:
    """The model an upstream would read from an inference path, if any: the
    segment after `deployments` (Azure OpenAI), `engines` (OpenAI's legacy
    API), `models` (Gemini, Vertex) or `model` (Bedrock). Such an upstream
    ignores the body's model, so the caller must check that they agree. Two
    different ones are refused: no upstream's choice between them is known."""
    segments = path.split("/")
    named = {segments[i + 1] for i in range(1, len(segments) - 1) if segments[i].lower() in _MODEL_SEGMENTS}
    if len(named) > 1:
        raise RequestError(400, "The request path names more than one model.", "model")
    return named.pop() if named else None


def _canonical_segments(path: str) -> bool:
    """No empty, "." or ".." segment (RFC 3986 §5.2.4 would remove or merge them)."""
    return "//" not in path and not path.endswith("/") and "/./" not in path + "/" and "/../" not in path + "/"


def _checked_prefixes(prefixes: Iterable[str]) -> list[str]:
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
        checked.append(prefix)
    return checked


def _invalid() -> RequestError:
    return RequestError(400, "The request path is not in canonical form (no percent-encoding, dot or empty segments, or special characters).")


def _not_found() -> RequestError:
    return RequestError(404, "Unknown request path.")

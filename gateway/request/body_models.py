"""Where a request body names models besides its top-level `model`, read as strictly.

A route's body can name more models than the one it runs on: a Responses
`image_generation` tool names the image model it calls, a `moderation` object the
model that screens the input, Anthropic's `fallbacks` the models tried when the
first declines. Every model a request names is decided on (gateway/request/app.py: all
must be allowed), so each such place is declared per route in the routing table
(gateway/request/routing.py) as a `Named` path, and read here with the strictness of the
top-level model (gateway/request/body.py):

- a key along the path, or beside the model, that a lenient parser would read as
  the declared one (`Tools`, `model\\u0000`, `ｍｏｄｅｌ`) is refused, as at the top;
- where the API says a list or object, anything else is refused: no upstream's
  reading of the odd shape is known (Anthropic's `fallbacks: "default"`, a
  server-chosen list, is refused this way);
- a model that is present must be a name the policy and upstreams read alike;
- an object whose `type` makes the upstream pick a default model when it names
  none (Responses' `image_generation`: `gpt-image-1`) must name it;
- at most `MAX_MODELS` distinct models per request, each decided once.

The walk reads only the declared paths, never the whole body: a chat request
without `moderation` costs one dict lookup.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from gateway.request.body import RequestError, folded, model_name

MAX_MODELS = 32


@dataclass(frozen=True, slots=True)
class Named:
    """A place a body names models: `path` is dotted keys from the top, `[]` after a
    key for each object of a list ("tools[].model": the `model` of every object in
    `tools`), ending in the model's own key. `required`: every object there must
    name one; `required_types`: the objects whose `type` is one of these must."""

    path: str
    required: bool = False
    required_types: frozenset[str] = frozenset()
    steps: tuple[tuple[str, bool], ...] = field(init=False)  # (key, is a list), to the model's object
    key: str = field(init=False)

    def __post_init__(self) -> None:
        *steps, key = self.path.split(".")
        if not steps or key != "model" or any(not s.removesuffix("[]").isidentifier() for s in steps):
            raise ValueError(f"{self.path!r} is not a path such as tools[].model")
        object.__setattr__(self, "steps", tuple((s.removesuffix("[]"), s.endswith("[]")) for s in steps))
        object.__setattr__(self, "key", key)


@dataclass(frozen=True, slots=True)
class BodyModels:
    """Where a route's body names models: always its top-level `model`; `named`,
    the other places; `refused`, top-level keys that would bring in models the
    gateway cannot see (a stored prompt's), refused when present."""

    named: tuple[Named, ...] = ()
    refused: tuple[str, ...] = ()
    keys: frozenset[str] = field(init=False)       # the top-level keys read strictly
    elsewhere: frozenset[str] = field(init=False)  # ... but `model`

    def __post_init__(self) -> None:
        elsewhere = frozenset({*self.refused, *(named.steps[0][0] for named in self.named)})
        object.__setattr__(self, "elsewhere", elsewhere)
        object.__setattr__(self, "keys", elsewhere | {"model"})


TOP_LEVEL = BodyModels()  # the route names models only in `model`


def other_models(document: dict[str, Any], body: BodyModels, model: str) -> tuple[str, ...]:
    """The models `document` names at `body.named`, in order, each once, without `model`
    (the top-level one, already read). Raises RequestError (400) as described above."""
    if body.elsewhere.isdisjoint(document):  # the common case: nothing to read
        return ()
    for key in body.refused:
        if document.get(key) is not None:
            raise RequestError(400, f"'{key}' is not supported: it can name models the gateway cannot decide on.", key)
    found: dict[str, None] = {}
    for named in body.named:
        for holder in _holders(document, named):
            _read(holder, named, found)
    found.pop(model, None)
    if len(found) > MAX_MODELS:
        raise RequestError(400, f"The request names more than {MAX_MODELS} models.", "model")
    return tuple(found)


def _holders(document: dict[str, Any], named: Named) -> list[dict[str, Any]]:
    """The objects at `named`'s path whose model key is to be read."""
    objects = [document]
    for depth, (key, is_list) in enumerate(named.steps):
        found = []
        for parent in objects:
            if depth:  # the top level's keys are checked when the model is read
                _no_look_alike(parent, key)
            value = parent.get(key)
            if value is None:
                continue
            if not is_list:
                found.append(_object(value, key))
            elif type(value) is list:
                found.extend(_object(element, key) for element in value)
            else:
                raise RequestError(400, f"'{key}' must be a list of objects.", key)
        objects = found
    return objects


def _read(holder: dict[str, Any], named: Named, found: dict[str, None]) -> None:
    _no_look_alike(holder, named.key, "type" if named.required_types else None)
    if named.key in holder:
        found[model_name(holder[named.key], named.path)] = None
    elif named.required or (named.required_types and _type(holder) in named.required_types):
        raise RequestError(400, f"'{named.path}' is required here: the upstream would otherwise choose a model.", named.path)


def _type(holder: dict[str, Any]) -> str | None:
    kind = holder.get("type")
    return folded(kind) if type(kind) is str else None


def _object(value: Any, key: str) -> dict[str, Any]:
    if type(value) is not dict:
        raise RequestError(400, f"'{key}' must hold objects.", key)
    return value


def _no_look_alike(holder: dict[str, Any], *names: str | None) -> None:
    """A key that reads as one of `names` to a lenient parser but is spelled otherwise."""
    for key in holder:
        if key not in names and folded(key) in names:
            raise RequestError(400, f"The request body has a key that differs from '{folded(key)}' only in case, spacing or encoding.", folded(key))

"""Fuzzing where bodies name models besides `model` (gateway/request/body_models.py).

Documents are built around the places the routing table declares (tools,
moderation, fallbacks, a stored prompt), with keys in look-alike spellings and
values of every JSON type. For each route's declaration and each document:

- only RequestError (400) escapes;
- when the models are returned, every way a lenient upstream might read the
  document (keys matched exactly, case-insensitively as Go does, cut at NUL as
  C does, NFKC-folded) names no model outside them and the top-level one, and
  no object whose type picks a default model goes without one.
"""

from __future__ import annotations

import json
import unicodedata
from typing import Any

from hypothesis import example, given
from hypothesis import strategies as st

from gateway.request.body_models import MAX_MODELS, BodyModels, other_models
from gateway.request.body import RequestError, extract_model
from gateway.request.routing import CHAT, MESSAGES, RESPONSES

from .conftest import fuzz

ROUTES = [CHAT, RESPONSES, MESSAGES]
READINGS = {
    "exact": lambda key: key,
    "go": lambda key: key.casefold(),
    "c": lambda key: key.partition("\x00")[0],
    "nfkc": lambda key: unicodedata.normalize("NFKC", key).strip().casefold(),
}


def _spellings(name: str) -> st.SearchStrategy[str]:
    return st.sampled_from([name, name, name, name.upper(), name.title(), f"{name}\x00", f" {name}",
                            name.translate({ord(c): ord(c) + 0xFEE0 for c in "aeiou"}),  # fullwidth vowels
                            name + "s", "x" + name])


_MODELS = st.sampled_from(["a", "b", "small-2", "", " ", "a\x00b", "ｆａｂｌｅ", "c" * 300])
_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), _MODELS)


_TYPES = st.sampled_from(["image_generation", "Image_Generation", " image_generation", "function", "advisor_20260301"])


def _objects(depth: int) -> st.SearchStrategy[Any]:
    children = _SCALARS if depth == 0 else st.one_of(_SCALARS, _objects(depth - 1))
    tool = st.fixed_dictionaries({"type": _TYPES}, optional={"model": _MODELS})
    return st.one_of(
        tool,
        st.builds(dict.__or__, tool, st.dictionaries(st.one_of(_spellings("model"), _spellings("type")),
                                                     st.one_of(_MODELS, _TYPES), max_size=2)),
        st.dictionaries(st.one_of(_spellings("model"), _spellings("type"), st.sampled_from(["name", "policy"])),
                        st.one_of(_MODELS, _TYPES, children), max_size=4),
        st.lists(children, max_size=3),
    )


documents = st.dictionaries(
    st.one_of(_spellings("tools"), _spellings("moderation"), _spellings("fallbacks"), _spellings("prompt"),
              st.just("messages")),
    st.one_of(st.lists(_objects(1), max_size=4), _objects(1), _SCALARS, st.just("default")),
    max_size=4,
).map(lambda extra: {"model": "top"} | extra)


def _lenient(document: dict[str, Any], body: BodyModels, reading: Any) -> tuple[set[Any], bool]:
    """(the models a lenient upstream reads at the declared places, whether some
    object whose type picks a default model names none)."""
    seen: set[Any] = set()
    defaulted = False
    for named in body.named:
        holders = [document]
        for key, is_list in named.steps:
            values = [value for holder in holders for k, value in holder.items() if reading(k) == key]
            holders = []
            for value in values:
                elements = value if is_list and isinstance(value, list) else [value]
                holders += [e for e in elements if isinstance(e, dict)]
        for holder in holders:
            models = [value for k, value in holder.items() if reading(k) == "model"]
            kinds = [value for k, value in holder.items() if reading(k) == "type" and isinstance(value, str)]
            seen.update(map(repr, models))
            if not models and any(reading(kind) in named.required_types for kind in kinds):
                defaulted = True
    return seen, defaulted


@fuzz(examples=800)
@given(documents, st.sampled_from(ROUTES))
@example({"model": "top", "tools": [{"type": "image_generation"}]}, RESPONSES)
@example({"model": "top", "tools": [{"type": "function", "Type": "image_generation"}]}, RESPONSES)
@example({"model": "top", "moderation": {"Model": "a"}}, CHAT)
@example({"model": "top", "Fallbacks": [{"model": "a"}]}, MESSAGES)
def test_other_models(document: dict[str, Any], body: BodyModels) -> None:
    try:
        model, _, parsed = extract_model(json.dumps(document).encode(), "application/json", None, keys=body.keys)
        found = other_models(parsed, body, model)
    except RequestError as error:
        assert error.status == 400
        return
    assert len(found) == len(set(found)) <= MAX_MODELS and model not in found
    decided = {repr(m) for m in (model, *found)}
    for reading in READINGS.values():
        seen, defaulted = _lenient(document, body, reading)
        assert seen <= decided, (seen, decided)
        assert not defaulted
    for key in body.refused:
        assert all(document[k] is None for k in document if READINGS["nfkc"](k) == key)

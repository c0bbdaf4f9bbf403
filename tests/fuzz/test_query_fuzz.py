"""Fuzzing the query-string check (gateway/request/body.py query_names_model):
query strings built from the spellings of `model` that servers accept — any
case, percent-encoded once or twice, `+` for space, NUL, fullwidth letters,
`[]` and `.` suffixes, `&` or `;` between parameters.

Properties: never raises; a query it passes gives no `model` parameter to
any of the reference readers (urllib with either separator, Starlette/Werkzeug
style, PHP/Rails-style brackets, a double-decoding proxy)."""

from __future__ import annotations

import unicodedata
from urllib.parse import parse_qsl, quote, unquote_plus

from hypothesis import given
from hypothesis import strategies as st

from gateway.request.body import query_names_model

from .conftest import fuzz

_NAMES = st.sampled_from([
    "model", "Model", "MODEL", " model", "model ", "model\x00", "ｍｏｄｅｌ", "model[]", "model[0]", "model.id",
    "models", "modelx", "remodel", "x", "api-version", "stream", "", "mode", "mod el", "\u212aodel",
])


@st.composite
def queries(draw: st.DrawFn) -> bytes:
    parts = []
    for _ in range(draw(st.integers(0, 4))):
        name = draw(st.one_of(_NAMES, st.text(max_size=6)))
        encoding = draw(st.integers(0, 3))
        if encoding == 1:
            name = quote(name, safe="")
        elif encoding == 2:
            name = quote(quote(name, safe=""), safe="")
        elif encoding == 3:
            name = name.replace(" ", "+")
        value = draw(st.sampled_from(["", "=", "=frontier-5.6", "=a%26model%3Dx", "=a;b"]))
        parts.append(name + value)
    separators = draw(st.lists(st.sampled_from(["&", ";", "&&"]), min_size=len(parts), max_size=len(parts)))
    return "".join(s + p for s, p in zip(separators, parts)).lstrip("&;").encode("utf-8", "surrogatepass")


def _reads_as_model(name: str) -> bool:
    name = unicodedata.normalize("NFKC", name.split("\x00")[0]).strip().casefold()
    return name == "model" or name.startswith(("model[", "model."))


def reference_names(query: str) -> list[str]:
    names = []
    for separator in ("&", ";"):
        pairs = parse_qsl(query, keep_blank_values=True, separator=separator)
        names += [name for name, _ in pairs]
        names += [unquote_plus(name) for name, _ in pairs]  # decoded again by a second server
    return names


@fuzz(examples=400)
@given(queries())
def test_a_passed_query_names_no_model(query: bytes) -> None:
    if not query_names_model(query):
        text = query.decode("utf-8", "replace")
        assert not [name for name in reference_names(text) if _reads_as_model(name)], text


@fuzz(examples=300)
@given(st.binary(max_size=64))
def test_arbitrary_bytes(query: bytes) -> None:
    query_names_model(query)

"""Fuzzing the token quota's readers (gateway/request/usage.py): the bound held for a
request, and the usage read from its answer.

Properties:
- `reservation` raises only RequestError(400); a hold it returns covers the prompt
  bound and the output that any of the reference readers would let the upstream
  write: an exact reader, a Go-like one (keys matched case-insensitively, cut at
  NUL, trimmed, NFKC, the last match wins) and a coercing one (pydantic's lax
  mode: "100" and true are numbers).
- `tokens_used` never raises; the usage of a JSON answer is exactly what its
  `usage` says, whatever text the model wrote (text cannot pose as usage); a Tap
  reads the same whatever the chunking.
"""

from __future__ import annotations

import json
import math
import unicodedata
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.request.body import RequestError
from gateway.request.usage import HEAD_BYTES, MAX_RESERVATION, TAIL_BYTES, Tap, reservation, tokens_used

from .conftest import fuzz

DEFAULT = 4096
_OUTPUT = ("max_tokens", "max_completion_tokens", "max_output_tokens")
_CHOICES = ("n", "best_of")
_KEYS = st.sampled_from([
    *_OUTPUT, *_CHOICES, "MAX_TOKENS", "Max_Tokens", " max_tokens", "max_tokens ", "max_tokens\x00x", "N", " n",
    "ｍａｘ_ｔｏｋｅｎｓ", "Best_Of", "max_tokens_x", "maxTokens", "model", "stream", "temperature",
])
_VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(-5, 10**7), st.floats(-5, 10**7, allow_nan=False, allow_infinity=False),
    st.sampled_from(["100", "1e5", " 7", "-1", "", "abc"]), st.lists(st.integers(0, 9), max_size=2),
    st.dictionaries(st.just("value"), st.integers(0, 9), max_size=1),
)


def _folded(key: str) -> str:
    return unicodedata.normalize("NFKC", key.split("\x00")[0]).strip().casefold()


def _lax_number(value: Any) -> int | None:
    """pydantic's lax int: numbers, integral strings and booleans."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (int, float)):
        return math.ceil(value)
    if isinstance(value, str):
        try:
            return math.ceil(float(value.strip()))
        except ValueError:
            return None
    return None


def _strict_number(value: Any) -> int | None:
    return math.ceil(value) if type(value) in (int, float) else None


def _read(document: dict[str, Any], fold: bool, number: Any) -> int:
    """The most output a reader lets the upstream write: its limit (the default when it
    reads none, or reads one it takes for "no limit") times its choices."""
    found: dict[str, Any] = {}
    for key, value in document.items():  # in order: the last match wins, as in Go
        name = _folded(key) if fold else key
        if name in _OUTPUT or name in _CHOICES:
            found[name] = value
    limits = [n for key in _OUTPUT if (n := number(found.get(key))) is not None and n > 0]
    choices = [n for key in _CHOICES if (n := number(found.get(key))) is not None and n > 0]
    return (max(limits) if limits else DEFAULT) * max([1, *choices])


@fuzz(examples=600)
@given(st.dictionaries(_KEYS, _VALUES, max_size=5), st.integers(0, 10**6))
def test_a_hold_covers_what_any_reader_lets_the_upstream_write(document: dict[str, Any], body_bytes: int) -> None:
    try:
        held = reservation(document, body_bytes, DEFAULT)
    except RequestError as refused:
        assert refused.status == 400 and refused.param in document
        return
    assert body_bytes <= held <= MAX_RESERVATION
    for fold in (False, True):
        for number in (_strict_number, _lax_number):
            assert held >= min(MAX_RESERVATION, body_bytes + _read(document, fold, number)), (fold, number)


@fuzz(examples=300)
@given(st.text(max_size=300), st.integers(0, 10**9), st.sampled_from(["total", "parts", "anthropic"]))
def test_text_cannot_pose_as_usage(text: str, used: int, shape: str) -> None:
    usage = {"total": {"total_tokens": used},
             "parts": {"prompt_tokens": used // 2, "completion_tokens": used - used // 2},
             "anthropic": {"input_tokens": used // 3, "cache_read_input_tokens": used // 3,
                           "output_tokens": used - 2 * (used // 3)}}[shape]
    answer = {"choices": [{"text": text, "message": {"content": text}}], "echo": {text: text}, "usage": usage}
    for ensure_ascii in (True, False):
        assert tokens_used(json.dumps(answer, ensure_ascii=ensure_ascii).encode(), b"") == used


@fuzz(examples=200)
@given(st.binary(max_size=HEAD_BYTES + TAIL_BYTES), st.lists(st.integers(1, 4096), max_size=20))
def test_a_tap_reads_the_same_whatever_the_chunking(data: bytes, cuts: list[int]) -> None:
    tap = Tap()
    rest = data
    for size in cuts:
        tap.feed(rest[:size])
        rest = rest[size:]
    tap.feed(rest)
    assert tap.tokens() == tokens_used(data[:HEAD_BYTES], data[HEAD_BYTES:])


@pytest.mark.parametrize("data", [b"", b'"total_tokens":', b'"total_tokens": ' + b"9" * 40, b'"input_tokens":1' * 10_000])
def test_odd_answers_are_read_without_error(data: bytes) -> None:
    assert tokens_used(data, data) is None or tokens_used(data, data) >= 0

"""Token usage as the upstream reports it, in every shape the SDKs use."""

from __future__ import annotations

import json

import pytest

from gateway.request.body import RequestError
from gateway.request.usage import Tap, reservation, tokens_used


@pytest.mark.parametrize("body,expected", [
    ({"usage": {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12}}, 12),
    ({"usage": {"input_tokens": 3, "output_tokens": 9}}, 12),
    ({"usage": {"prompt_tokens": 4}}, 4),
    ({"object": "list", "data": []}, None),
])
def test_json_bodies(body: dict, expected: int | None) -> None:
    assert tokens_used(json.dumps(body).encode(), b"") == expected


def test_anthropic_stream_reports_input_first_and_output_last() -> None:
    tap = Tap()
    tap.feed(b'event: message_start\ndata: {"message": {"usage": {"input_tokens": 25, "output_tokens": 1}}}\n\n')
    for _ in range(2000):
        tap.feed(b'event: content_block_delta\ndata: {"delta": {"text": "word "}}\n\n')
    tap.feed(b'event: message_delta\ndata: {"usage": {"output_tokens": 40}}\n\n')
    assert tap.tokens() == 65


def test_openai_stream_usage_chunk_at_the_end() -> None:
    tap = Tap()
    for _ in range(1000):
        tap.feed(b'data: {"choices": [{"delta": {"content": "x"}}]}\n\n')
    tap.feed(b'data: {"choices": [], "usage": {"prompt_tokens": 2, "completion_tokens": 1000, "total_tokens": 1002}}\n\n')
    tap.feed(b"data: [DONE]\n\n")
    assert tap.tokens() == 1002


def test_tap_keeps_head_and_tail_only() -> None:
    tap = Tap()
    tap.feed(b"a" * 100_000)
    assert len(tap.head) == 8 * 1024 and len(tap.tail) == 16 * 1024


def test_anthropic_cached_prompt_tokens_count() -> None:
    """Anthropic's input_tokens leave out the prompt read from or written to its cache;
    those tokens were processed all the same (OpenAI's prompt_tokens include them)."""
    start = {"message": {"usage": {"input_tokens": 4, "cache_creation_input_tokens": 0,
                                   "cache_read_input_tokens": 90_000, "output_tokens": 1}}}
    tap = Tap()
    tap.feed(b"event: message_start\ndata: " + json.dumps(start).encode() + b"\n\n")
    tap.feed(b'event: message_delta\ndata: {"usage": {"output_tokens": 30}}\n\n')
    assert tap.tokens() == 90_034
    body = {"usage": {"input_tokens": 3, "cache_creation_input_tokens": 500, "output_tokens": 9}}
    assert tokens_used(json.dumps(body).encode(), b"") == 512


def test_usage_named_inside_text_is_not_read() -> None:
    """Text the model wrote (or echoed from the prompt) is a JSON string: its quotes are
    escaped, so it cannot pose as the usage."""
    body = {"choices": [{"text": '"total_tokens": 1, "prompt_tokens": 1'}], "usage": {"total_tokens": 700}}
    assert tokens_used(json.dumps(body).encode(), b"") == 700
    assert tokens_used(json.dumps({"choices": [{"text": '"total_tokens": 1'}]}).encode(), b"") is None


@pytest.mark.parametrize("document,expected", [
    ({"max_tokens": 100}, 1100),
    ({"max_completion_tokens": 100, "max_tokens": 300}, 1300),  # the largest an upstream might honour
    ({"max_output_tokens": 7.2}, 1008),
    ({}, 1000 + 4096),  # names none: the configured default
    ({"max_tokens": None}, 1000 + 4096),
    ({"max_tokens": 0}, 1000 + 4096),  # some servers read 0 as "no limit"
    ({"max_tokens": 100, "n": 3}, 1300),
    ({"max_tokens": 100, "n": 2, "best_of": 5}, 1500),  # best_of: generated (and billed) in full
    ({"n": 2}, 1000 + 2 * 4096),
    ({"max_tokens": 10**30}, 10**15),  # bounded: far above any budget, inside a Redis integer
])
def test_reservation_bounds_prompt_and_output(document: dict, expected: int) -> None:
    assert reservation(document, 1000, 4096) == expected


@pytest.mark.parametrize("key,value", [
    ("max_tokens", "100000"), ("max_tokens", True), ("max_tokens", -1), ("max_completion_tokens", [5]),
    ("max_output_tokens", {"value": 5}), ("n", "5"), ("best_of", -2), ("n", False),
])
def test_a_limit_the_gateway_cannot_read_is_refused(key: str, value: object) -> None:
    """An upstream may coerce what the gateway would ignore ("100000" is 100000 to a
    lenient parser; -1 means "no limit" to llama.cpp): refused, not guessed at."""
    with pytest.raises(RequestError) as refused:
        reservation({"max_tokens": 10, key: value}, 100, 4096)
    assert refused.value.status == 400 and refused.value.param == key


@pytest.mark.parametrize("key", ["MAX_TOKENS", "Max_Tokens", " max_tokens", "max_tokens\x00x", "N", "Best_Of",
                                 "ｍａｘ_ｔｏｋｅｎｓ", "max_output_tokens "])
def test_a_limit_spelled_for_lenient_parsers_is_refused(key: str) -> None:
    """Go's encoding/json matches keys case-insensitively: {"max_tokens": 1, "MAX_TOKENS": 100000}
    would hold 1 here and let the upstream write 100000."""
    with pytest.raises(RequestError) as refused:
        reservation({"max_tokens": 1, key: 100_000}, 100, 4096)
    assert refused.value.status == 400 and refused.value.param == key
    assert reservation({"max_tokens": 1, "max_tokens_per_turn": 5, "nonce": 1}, 100, 4096) == 101


def anthropic_stream(*, ended: bool, deltas: int = 5) -> Tap:
    tap = Tap()
    tap.feed(b'event: message_start\ndata: {"message": {"usage": {"input_tokens": 25, "output_tokens": 1}}}\n\n')
    for _ in range(deltas):
        # Text the model wrote that reads like the end of a stream, inside a JSON string.
        tap.feed(b'event: content_block_delta\ndata: {"delta": {"text": "\\nevent: message_stop\\ndata: [DONE]"}}\n\n')
    if ended:
        tap.feed(b'event: message_delta\ndata: {"usage": {"output_tokens": 40}}\n\nevent: message_stop\ndata: {}\n\n')
    return tap


@pytest.mark.parametrize("deltas", [5, 2000])  # within the head, and past it
def test_a_stream_counts_only_once_it_reached_its_end(deltas: int) -> None:
    """Ended early (cleanly), an Anthropic stream has reported only its input and one
    output token: no usage, so the caller keeps the whole reservation."""
    assert anthropic_stream(ended=True, deltas=deltas).tokens(stream=True) == 65
    assert anthropic_stream(ended=False, deltas=deltas).tokens(stream=True) is None
    openai = Tap()
    openai.feed(b'data: {"choices": [{"delta": {"content": "hi"}}]}\n\n')
    openai.feed(b'data: {"choices": [], "usage": {"prompt_tokens": 2, "completion_tokens": 1, "total_tokens": 3}}\n\n')
    assert openai.tokens(stream=True) == 3
    openai.feed(b"data: [DONE]\n\n")
    assert openai.tokens(stream=True) == 3
    responses = Tap()
    responses.feed(b'event: response.created\ndata: {"response": {"usage": null}}\n\n')
    assert responses.tokens(stream=True) is None
    responses.feed(b'event: response.completed\ndata: {"response": {"usage": {"input_tokens": 3, "output_tokens": 4, '
                   b'"total_tokens": 7}}}\n\n')
    assert responses.tokens(stream=True) == 7

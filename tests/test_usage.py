"""Token usage as the upstream reports it, in every shape the SDKs use."""

from __future__ import annotations

import json

import pytest

from gateway.usage import Tap, tokens_used


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

"""Tokens for the daily quota (docs/quotas.md): how many a request may use at most,
held before it is forwarded, and how many its response says it used.

A request's reservation is a bound read from the request itself: its prompt is
at most one token per byte of body (a text tokenizer's every token covers at
least one byte; images and files named by id are the exception, see
docs/quotas.md), and its output at most the largest limit it names
(`max_tokens`, `max_completion_tokens`, `max_output_tokens`) — or the
configured default when it names none — times the completions it asks for (`n`,
`best_of`). A limit the gateway cannot read is refused: an upstream might read
it (`"max_tokens": "100000"`) when the gateway could not. So is a key that
differs from a limit's name only in case, spacing or a NUL (`"MAX_TOKENS"`):
Go's encoding/json, for one, matches keys case-insensitively, as for `model`
(gateway/request/body.py).

Only what the response itself says counts as usage: OpenAI `usage.total_tokens`
(or prompt + completion), Anthropic `input_tokens` + cache reads and writes +
`output_tokens`. Streams report usage in their first events (Anthropic's
message_start) and last ones (OpenAI's include_usage chunk, Anthropic's
message_delta, Responses' response.completed), so the caller keeps the head and
tail of a stream rather than all of it. A stream's usage counts only if the stream
reached its end (OpenAI's `data: [DONE]`, Anthropic's `message_stop`, a final
usage total): Anthropic's first event already reports the input and one output
token, which is not what a stream ended early used.
"""

from __future__ import annotations

import math
import re
from typing import Any

from gateway.request.body import RequestError, folded

HEAD_BYTES = 8 * 1024
TAIL_BYTES = 16 * 1024
# Above any daily budget, and far inside a Redis integer (2^63).
MAX_RESERVATION = 10**15

# Each bounds the output (chat: max_tokens, max_completion_tokens; Responses:
# max_output_tokens; Anthropic: max_tokens); an upstream honours one of them, so the
# largest named is the bound.
_OUTPUT_LIMITS = ("max_tokens", "max_completion_tokens", "max_output_tokens")
# Completions generated per request (chat and completions `n`; completions `best_of`,
# which the upstream generates and bills in full while returning `n`).
_CHOICES = ("n", "best_of")
_LIMITS = frozenset(_OUTPUT_LIMITS + _CHOICES)

_TOTAL = re.compile(rb'"total_tokens"\s*:\s*(\d{1,12})')
_PROMPT = re.compile(rb'"(?:prompt_tokens|input_tokens)"\s*:\s*(\d{1,12})')
# Anthropic counts cached prompt tokens apart from input_tokens (OpenAI's
# prompt_tokens include them): a cached prompt is still processed.
_CACHE_WRITE = re.compile(rb'"cache_creation_input_tokens"\s*:\s*(\d{1,12})')
_CACHE_READ = re.compile(rb'"cache_read_input_tokens"\s*:\s*(\d{1,12})')
_COMPLETION = re.compile(rb'"(?:completion_tokens|output_tokens)"\s*:\s*(\d{1,12})')
# At the start of a line: text the model wrote is inside JSON strings, its newlines escaped.
_STREAM_END = re.compile(rb'(?:^|\n)(?:data: \[DONE\]|event: message_stop)|"total_tokens"\s*:\s*\d')


def reservation(document: dict[str, Any], body_bytes: int, default_output: int) -> int:
    """The most tokens the request can use: `body_bytes` for its prompt, plus its
    output limit (or `default_output`) times its completions. 400 when a limit it
    names is not a non-negative number, or is named in a spelling only some parsers read."""
    for key in document:
        if key not in _LIMITS and folded(key) in _LIMITS:
            raise RequestError(400, "The request body has a key that differs from a token limit's name only in case, "
                               "spacing or encoding.", key)
    named = [limit for key in _OUTPUT_LIMITS if (limit := _count(document, key))]
    output = max(named) if named else default_output
    choices = max([1, *(_count(document, key) or 1 for key in _CHOICES)])
    return min(body_bytes + output * choices, MAX_RESERVATION)


def _count(document: dict[str, Any], key: str) -> int | None:
    """A limit as every upstream would read it: absent or null is None; 0 is read as
    none too (some servers take 0 for "no limit"). Anything but a non-negative
    number is refused rather than guessed at."""
    value = document.get(key)
    if value is None:
        return None
    kind = type(value)
    if (kind is int or kind is float) and value >= 0:
        return min(math.ceil(value), MAX_RESERVATION) or None
    raise RequestError(400, f"'{key}' must be a non-negative integer.", key)


def tokens_used(head: bytes, tail: bytes) -> int | None:
    """The tokens the response reports, or None when it reports none."""
    text = head + b"\n" + tail
    totals = [int(n) for n in _TOTAL.findall(text)]
    if totals:
        return max(totals)
    parts = [[int(n) for n in pattern.findall(text)] for pattern in (_PROMPT, _CACHE_WRITE, _CACHE_READ, _COMPLETION)]
    if not parts[0] and not parts[3]:
        return None
    return sum(max(found, default=0) for found in parts)


class Tap:
    """Keeps the first HEAD_BYTES and the last TAIL_BYTES of a body as it passes."""

    __slots__ = ("head", "tail")

    def __init__(self) -> None:
        self.head = b""
        self.tail = b""

    def feed(self, chunk: bytes) -> None:
        if len(self.head) < HEAD_BYTES:
            room = HEAD_BYTES - len(self.head)
            self.head += chunk[:room]
            chunk = chunk[room:]
        if chunk:
            self.tail = (self.tail + chunk)[-TAIL_BYTES:]

    def tokens(self, *, stream: bool = False) -> int | None:
        """The usage reported; for a stream, only if it reached its end."""
        if stream and not _STREAM_END.search((self.head + self.tail)[-TAIL_BYTES:]):
            return None
        return tokens_used(self.head, self.tail)

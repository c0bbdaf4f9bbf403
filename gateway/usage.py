"""Tokens a response used, read from the usage the upstream reports (SPEC §1.7).

Only what the response itself says counts: OpenAI `usage.total_tokens` (or
prompt + completion), Anthropic `input_tokens` + `output_tokens`. Streams report
usage in their first events (Anthropic's message_start) and last ones (OpenAI's
include_usage chunk, Anthropic's message_delta, Responses' response.completed),
so the caller keeps the head and tail of a stream rather than all of it.
"""

from __future__ import annotations

import re

HEAD_BYTES = 8 * 1024
TAIL_BYTES = 16 * 1024

_TOTAL = re.compile(rb'"total_tokens"\s*:\s*(\d{1,12})')
_PROMPT = re.compile(rb'"(?:prompt_tokens|input_tokens)"\s*:\s*(\d{1,12})')
_COMPLETION = re.compile(rb'"(?:completion_tokens|output_tokens)"\s*:\s*(\d{1,12})')


def tokens_used(head: bytes, tail: bytes) -> int | None:
    """The tokens the response reports, or None when it reports none."""
    text = head + b"\n" + tail
    totals = [int(n) for n in _TOTAL.findall(text)]
    if totals:
        return max(totals)
    prompt = [int(n) for n in _PROMPT.findall(text)]
    completion = [int(n) for n in _COMPLETION.findall(text)]
    if not prompt and not completion:
        return None
    return max(prompt, default=0) + max(completion, default=0)


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

    def tokens(self) -> int | None:
        return tokens_used(self.head, self.tail)

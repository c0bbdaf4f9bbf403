"""Audit lines, read by every reader: one record per line, whatever a request holds.

A client chooses the bytes of its request path, which the audit record keeps
(percent-decoded, as the listener read it). JSON escapes control characters,
but not U+0085, U+2028 or U+2029, which Python's str.splitlines, JavaScript and
Unicode line breaking end a line at: such a reader would see a record cut in
two, neither half JSON, and a tool counting or tailing records would miscount."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from gateway.audit import unauthenticated_path, verify

from .conftest import CHAT, Probe

# Every character some reader ends a line at: Python's str.splitlines list, JavaScript's, CR LF.
BREAKS = ["\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029", "\r", "\n", "\r\n"]


def encoded(text: str) -> str:
    return "".join(f"%{byte:02X}" for byte in text.encode())


@pytest.mark.parametrize("target", [CHAT + encoded("".join(BREAKS)), "/v1/models/" + encoded("x\u2029y\x85z")],
                         ids=["inference path", "model path"])
def test_every_audit_record_is_one_line_for_every_reader(gw: Probe, target: str) -> None:
    reply = gw.send(path=target, body=b"{}")
    gw.denied(reply, 400, 404)
    # Refused before authentication: the record is in the unauthenticated log, written
    # before the answer ends.
    path = Path(gw.stack.config.audit.unauthenticated.path or unauthenticated_path(gw.stack.config.audit.path))
    text = path.read_text(encoding="utf-8")
    for lines in (text.splitlines(), re.split("\r\n|[\n\r\u2028\u2029]", text.removesuffix("\n"))):
        records = [json.loads(line) for line in lines]  # every line a whole record
        [mine] = [r for r in records if r["decision_id"] == reply.header("x-gateway-decision-id")]
        assert mine["path"].startswith(("/v1/chat/completions", "/v1/models/")) and any(c in mine["path"] for c in BREAKS)
    assert verify([path]).ok

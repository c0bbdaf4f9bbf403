"""An X-Forwarded-For that the gateway cannot read, from its trusted proxy (127.0.0.1).

Before issue 12 such a header gave an *unknown* country, and an unknown country
was allowed for models that are not covered: a caller in an embargoed country
padded the header (64 empty entries before the address its proxy appends) and
was served. Now the whole header must be readable or the request is a 400 in
the API's own error shape, with its audit record, before any decision; and an
unknown country is refused for every model anyway (see test_client_ip.py).
small-2 is not covered; this suite's policy embargoes CN (CN_IP).
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from .conftest import CHAT, CN_IP, MESSAGES, PLAIN, US_IP, Probe, Reply, chat_body

UNTRUSTED_PEER = "127.0.0.2"


def audit_record(gw: Probe, reply: Reply) -> dict[str, Any]:
    [record] = [r for r in gw.stack.audit_records() if r["decision_id"] == reply.header("x-gateway-decision-id")]
    return record


def refused(gw: Probe, reply: Reply, api: str = "openai") -> None:
    """A 400 of the request itself: the API's error shape, nothing forwarded, one audit record."""
    gw.denied(reply, 400, api=api)
    record = audit_record(gw, reply)
    assert (record["status"], record["decision"], record["error"], record["reasons"]) == (
        400, "deny", "invalid_request", [])
    assert (record["client_ip"], record["observed_country"]) == (None, None)


# What a proxy that appends the address it saw (nginx's $proxy_add_x_forwarded_for)
# forwards, for a caller in CN that wrote the part before it.
PADDED = [
    ("64 empty entries (the issue's repro)", ["," * 64 + CN_IP]),
    ("64 empty entries and spaces", [", " * 64 + CN_IP]),
    ("64 private addresses", [", ".join(["10.0.0.1"] * 64 + [CN_IP])]),
    ("64 copies of a US address", [", ".join([US_IP] * 64 + [CN_IP])]),
    ("one empty entry", ["," + CN_IP]),
    ("garbage before the address", ["unknown, " + CN_IP]),
    ("65 header lines", [US_IP] * 64 + [CN_IP]),
    ("an empty header line first", ["", CN_IP]),
    ("5,000 characters of whitespace before it", ["10.0.0.1," + " \t" * 2500 + CN_IP]),
    ("a long run of entries", [",".join(["1.1.1.1"] * 1000 + [CN_IP])]),
]


@pytest.mark.parametrize("values", [c[1] for c in PADDED], ids=[c[0] for c in PADDED])
def test_padding_is_refused_not_turned_unknown(gw: Probe, values: list[str]) -> None:
    refused(gw, gw.send(body=chat_body(PLAIN), ip=None, headers=[("X-Forwarded-For", v) for v in values]))


@pytest.mark.parametrize(("path", "api"), [(CHAT, "openai"), (MESSAGES, "anthropic")])
def test_every_route_refuses_in_its_own_shape(gw: Probe, path: str, api: str) -> None:
    refused(gw, gw.send(path=path, body=chat_body(PLAIN, max_tokens=5), ip="," * 64 + CN_IP), api)


def test_the_model_list_refuses_too(gw: Probe) -> None:
    refused(gw, gw.send("GET", "/v1/models", ip="," * 64 + CN_IP))


def test_the_answer_says_what_is_wrong_without_echoing_it(gw: Probe) -> None:
    reply = gw.send(body=chat_body(PLAIN), ip="<script>, " + CN_IP)
    message = json.loads(reply.body)["error"]["message"]
    assert "X-Forwarded-For" in message and "<script>" not in message


def test_obs_fold_is_refused_by_the_parser(gw: Probe) -> None:
    # A header continued on the next line (RFC 9112 §5.2 obs-fold) is not HTTP/1.1 we accept.
    body = chat_body(PLAIN)
    head = (f"POST {CHAT} HTTP/1.1\r\nHost: gw\r\nConnection: close\r\nAuthorization: Bearer {gw.key()}\r\n"
            f"X-Forwarded-For: 10.0.0.1,\r\n {CN_IP}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n")
    [reply] = gw.raw(head.encode() + body)
    assert reply.status == 400 and json.loads(reply.body)["error"]["code"] == "invalid_request"
    gw.nothing_forwarded()


def test_a_refusal_is_remembered_and_does_not_stick_to_the_peer(gw: Probe) -> None:
    # The memoised path (gateway/request/clientip.py ClientLocator) refuses the same header every time,
    # and the same trusted peer with a readable header is then located and served.
    for _ in range(3):
        refused(gw, gw.send(body=chat_body(PLAIN), ip="," * 64 + CN_IP))
    gw.denied(gw.send(body=chat_body(PLAIN), ip=CN_IP), 451)
    gw.allowed(gw.send(body=chat_body(PLAIN), ip=US_IP))


def test_an_untrusted_peer_header_is_never_read(gw: Probe) -> None:
    # Not our proxy: its X-Forwarded-For means nothing, readable or not; the peer is the client
    # (loopback: no country), and an unknown place is refused for every model.
    reply = gw.send(body=chat_body(PLAIN), ip="," * 64 + US_IP, source=UNTRUSTED_PEER)
    gw.denied(reply, 451)
    assert audit_record(gw, reply)["reasons"] == ["jurisdiction_unknown"]


def test_a_caller_without_credentials_is_told_that_first(gw: Probe) -> None:
    gw.denied(gw.send(body=chat_body(PLAIN), ip="," * 64 + CN_IP, credential=None), 401)


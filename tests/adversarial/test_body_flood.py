"""Bodies that cost the gateway CPU: who is calling is decided before any body is
read, and a body is parsed in time that its shape cannot inflate.

- A denied organization's bodies are never read or parsed: one the parser would
  refuse gets the organization's 403 instead, and a flood of the costliest bodies
  the parser accepts leaves another organization's latency where it was.
- 4 MB of `[{},{},...]` and other container-heavy bodies are refused by count
  before anything is built (gateway/request/body.py).
"""

from __future__ import annotations

import socket
import statistics
import threading
import time
from collections.abc import Iterator

import pytest

from .conftest import CHAT, ORG, PLAIN, US_IP, Probe, chat_body

DENIED = "org-listed"  # status: denied in the reference policy
MAX = 4 * 1024 * 1024


def _fill(unit: bytes, size: int = MAX - 64) -> bytes:
    """A body of about `size` bytes: the model, then a list of `unit` repeated."""
    prefix, suffix = b'{"model":"' + PLAIN.encode() + b'","x":[', b"]}"
    count = (size - len(prefix) - len(suffix)) // (len(unit) + 1)
    return prefix + b",".join([unit] * count) + suffix


# The costliest 4 MB bodies the parser accepts (a Python call per float), and ones it refuses.
COSTLY = _fill(b"0.5")
REFUSED_BY_THE_PARSER = {
    "objects": _fill(b"{}"),
    "arrays": _fill(b"[]"),
    "deep": b'{"model":"' + PLAIN.encode() + b'","x":' + b"[" * (MAX - 64) + b"}",
    "invalid at the end": _fill(b"{}", 100_000)[:-1] + b",]}",
}


def _request(gw: Probe, body: bytes, key: str) -> bytes:
    return (f"POST {CHAT} HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {key}\r\nX-Forwarded-For: {US_IP}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body


@pytest.mark.parametrize("name", REFUSED_BY_THE_PARSER)
def test_a_denied_orgs_body_is_not_parsed(gw: Probe, name: str) -> None:
    body = REFUSED_BY_THE_PARSER[name]
    assert gw.send(body=body).status == 400  # from an allowed org: the parser refuses it
    reply = gw.send(body=body, credential=gw.key(DENIED))
    gw.denied(reply, 403)  # from a denied one: refused for who it is, the body never looked at
    assert b"organization_not_permitted" in reply.body
    [record] = [r for r in gw.stack.audit_records() if r["decision_id"] == reply.header("x-gateway-decision-id")]
    assert record["reasons"] == ["org_denied"] and record["org"] == DENIED and record["requested_model"] is None
    assert record["observed_country"] == "US"


@pytest.mark.parametrize("name", ["objects", "arrays", "deep"])
def test_container_heavy_bodies_are_refused_by_count(gw: Probe, name: str) -> None:
    reply = gw.send(body=REFUSED_BY_THE_PARSER[name])
    gw.denied(reply, 400)
    assert b"objects and arrays" in reply.body or b"nested deeper" in reply.body


def test_the_audit_record_of_a_denied_org_keeps_its_place(gw: Probe) -> None:
    from .conftest import CN_IP

    reply = gw.send(body=chat_body(PLAIN), credential=gw.key(DENIED), ip=CN_IP)
    gw.denied(reply, 403)
    [record] = [r for r in gw.stack.audit_records() if r["decision_id"] == reply.header("x-gateway-decision-id")]
    # CN is embargoed in the harness policy: reported beside the org's denial, as decide() would.
    assert record["reasons"] == ["org_denied", "jurisdiction_embargoed"] and record["observed_country"] == "CN"


@pytest.fixture
def denied_flood(gw: Probe) -> Iterator[list[int]]:
    """Two connections sending the costliest accepted 4 MB body as the denied org, back to
    back, until the test ends; yields the statuses they got."""
    statuses: list[int] = []
    stop = threading.Event()
    data = _request(gw, COSTLY, gw.key(DENIED))

    def flood() -> None:
        while not stop.is_set():
            with socket.create_connection(gw.address, timeout=10) as sock:
                while not stop.is_set():
                    sock.sendall(data)
                    head = sock.recv(65536)
                    if not head:
                        break
                    statuses.append(int(head.split(b" ", 2)[1]))

    threads = [threading.Thread(target=flood, daemon=True) for _ in range(2)]
    for thread in threads:
        thread.start()
    while len(statuses) < 2:
        time.sleep(0.01)
    yield statuses
    stop.set()
    for thread in threads:
        thread.join(10)


def _median_latency(gw: Probe, samples: int = 30, spacing: float = 0.05) -> float:
    """The median time of ORG's small requests, spread over a second and a half (so that
    the floods' bodies, a few a second, overlap them)."""
    key = gw.key(ORG)
    data = _request(gw, chat_body(PLAIN), key)
    times = []
    with socket.create_connection(gw.address, timeout=10) as sock:
        for _ in range(samples):
            time.sleep(spacing)
            started = time.perf_counter()
            sock.sendall(data)
            reply = b""
            while b"\r\n\r\n" not in reply or not reply.endswith(b"}"):
                reply += sock.recv(65536)
            times.append(time.perf_counter() - started)
            assert reply.startswith(b"HTTP/1.1 200"), reply[:200]
    return statistics.median(times)


def test_a_denied_orgs_flood_does_not_slow_others(gw: Probe, request: pytest.FixtureRequest) -> None:
    baseline = _median_latency(gw)
    statuses = request.getfixturevalue("denied_flood")
    flooded = _median_latency(gw)
    assert statuses and set(statuses) == {403}, set(statuses)
    # Parsing one of these bodies takes over 100 ms of the event loop: two connections
    # sending them back to back would add that much to the median. Reading and
    # discarding them costs a few milliseconds.
    assert flooded < max(3 * baseline, baseline + 0.04), (baseline, flooded)

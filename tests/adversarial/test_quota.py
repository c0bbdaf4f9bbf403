"""Using more tokens than the daily budget allows (issue 12, item 4). The caller
holds one key of an org with a token quota and tries to have its tokens go
uncounted or undercounted: a compressed answer, a stream that carries no usage,
leaving before the usage arrives, a token limit only the upstream reads, a body
that is small only while compressed, many requests at once. Every request is
either refused before the upstream sees it, or held against the budget for all it
could use until the upstream's complete answer says what it used
(docs/quotas.md)."""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
import math
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from e2e import Stack
from fleet import policy_variant, wait_for
from gateway.request.quota import LocalQuota

from .conftest import CHAT, MESSAGES, ORG, PLAIN, US_IP, Probe, Reply, embargo_cn

BUDGET = 3000
DEFAULT_MAX_TOKENS = 1000


def with_token_quota(texts: dict[str, str]) -> None:
    embargo_cn(texts)
    marker = "    vetted_until: 2027-06-30\n"
    assert marker in texts["organizations.yaml"]
    texts["organizations.yaml"] = texts["organizations.yaml"].replace(
        marker, f"{marker}    quota: {{tokens_per_day: {BUDGET}}}\n", 1)


@pytest.fixture(scope="module")
def quota_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    directory = tmp_path_factory.mktemp("adversarial-quota")
    stack = Stack(directory, policy_dir=policy_variant(directory / "policy", with_token_quota),
                  extra_config=f"quota: {{default_max_tokens: {DEFAULT_MAX_TOKENS}}}\n"
                               "request: {decode_encodings: [gzip]}\n")
    yield stack
    stack.close()


@pytest.fixture
def gw(quota_stack: Stack, caplog: pytest.LogCaptureFixture) -> Iterator[Probe]:
    """The probe on a fresh upstream record, today's budget unspent; afterwards, no
    request may have ended in an exception the gateway caught."""
    assert quota_stack.service.gateway is not None
    quota_stack.service.gateway.quota = LocalQuota()
    quota_stack.upstream.app.reset()
    caplog.set_level(logging.ERROR, logger="gateway")
    yield Probe(quota_stack)
    quota_stack.upstream.app.stream_delay_s = 0.0
    crashes = [r.getMessage() for r in caplog.get_records("call")
               if r.name.startswith("gateway") and r.levelno >= logging.ERROR]
    assert not crashes, crashes


def body(**fields: Any) -> bytes:
    return json.dumps({"model": PLAIN, "messages": [{"role": "user", "content": "hi"}]} | fields).encode()


def record(gw: Probe, reply: Reply) -> dict[str, Any]:
    decision_id = reply.header("x-gateway-decision-id")
    [found] = wait_for(lambda: [r for r in gw.stack.audit_records() if r["decision_id"] == decision_id], 5)[0]
    return found


def served_until_refused(gw: Probe, payload: bytes, headers: list[tuple[str, str]] = ()) -> int:
    """Send `payload` until refused: how many were served."""
    for served in range(20):
        reply = gw.send("POST", CHAT, payload, headers)
        if reply.status == 429:
            return served
        assert reply.status == 200, reply
    raise AssertionError("never refused")


def admitted(hold: int) -> int:
    """Requests admitted one after another, each charged `hold`: each while the charges are below the budget."""
    return math.ceil(BUDGET / hold)


# 1. A compressed answer the gateway cannot read


@pytest.mark.parametrize("headers", [
    [("Accept-Encoding", "gzip")],
    [("Accept-Encoding", "br, zstd, gzip;q=0.8, deflate")],
    [("Accept-Encoding", "*")],
    [("Accept-Encoding", "identity;q=0, *")],
    [("Accept-Encoding", "gzip"), ("Accept-Encoding", "deflate")],
    [("Connection", "accept-encoding"), ("Accept-Encoding", "gzip")],
    [("TE", "gzip"), ("Accept-Encoding", "gzip")],
    [("Accept_Encoding", "gzip")],  # CGI-style servers read it as Accept-Encoding
], ids=lambda h: "+".join(f"{k}:{v}" for k, v in h))
def test_the_upstream_is_asked_for_plain_answers_whatever_the_client_accepts(gw: Probe, headers: list) -> None:
    reply = gw.send("POST", CHAT, body(), headers)
    if reply.status == 400:  # an underscore spelling may be refused outright: then nothing is forwarded
        return gw.denied(reply, 400)
    seen = gw.allowed(reply)
    assert [(k, v) for k, v in seen.raw_headers if k.lower().replace(b"_", b"-") == b"accept-encoding"] == [
        (b"accept-encoding", b"identity")]
    assert reply.header("content-encoding") is None
    usage = json.loads(reply.body)["usage"]["total_tokens"]
    assert record(gw, reply)["tokens_charged"] == usage > 0


def test_an_answer_compressed_anyway_is_charged_all_it_could_use(gw: Probe) -> None:
    payload = body(max_tokens=1400)
    assert served_until_refused(gw, payload, [("x-demo-fault", "gzip")]) == admitted(len(payload) + 1400)


# 2. A stream that carries no usage


@pytest.mark.parametrize("options", [{}, {"stream_options": None}, {"stream_options": {"include_usage": False}},
                                     {"stream_options": {}}])
def test_a_stream_without_usage_is_charged_all_it_could_use(gw: Probe, options: dict[str, Any]) -> None:
    payload = body(stream=True, max_tokens=1400, **options)
    reply = gw.send("POST", CHAT, payload)
    assert reply.status == 200 and b"data: [DONE]" in reply.body and b'"usage":{' not in reply.body
    assert 1 + served_until_refused(gw, payload) == admitted(len(payload) + 1400)
    assert record(gw, reply)["tokens_charged"] == len(payload) + 1400


def test_completions_asked_for_at_once_multiply_the_hold(gw: Probe) -> None:
    payload = body(stream=True, max_tokens=300, n=3)
    reply = gw.send("POST", CHAT, payload)
    assert reply.status == 200 and record(gw, reply)["tokens_charged"] == len(payload) + 900


def test_a_request_naming_no_limit_is_charged_the_configured_default(gw: Probe) -> None:
    payload = body(stream=True)
    reply = gw.send("POST", CHAT, payload)
    assert reply.status == 200 and record(gw, reply)["tokens_charged"] == len(payload) + DEFAULT_MAX_TOKENS


# 3. Leaving before the usage arrives


def test_leaving_before_the_usage_event_is_charged_all_it_could_use(gw: Probe) -> None:
    gw.stack.upstream.app.stream_delay_s = 0.05
    payload = json.dumps({"model": PLAIN, "max_tokens": 1500, "stream": True, "messages": [{"role": "user", "content": "hi"}],
                          "stream_options": {"include_usage": True}}).encode()
    for api_path, data in ((CHAT, payload),
                           (MESSAGES, json.dumps({"model": PLAIN, "max_tokens": 1500, "stream": True,
                                                  "messages": [{"role": "user", "content": "hi"}]}).encode())):
        head = (f"POST {api_path} HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {gw.key()}\r\n"
                f"X-Forwarded-For: {US_IP}\r\nContent-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n")
        with socket.create_connection(gw.address, timeout=5) as sock:
            sock.sendall(head.encode() + data)
            assert sock.recv(65536).startswith(b"HTTP/1.1 200")  # the answer has started; then gone
    wait_for(lambda: [r.outcome for r in gw.stack.received] == ["disconnected"] * 2, 5)
    records = wait_for(lambda: [r for r in gw.stack.audit_records()[-2:] if r["error"] == "client_disconnected"], 5)[0]
    # Anthropic's first event reports input tokens and one output token: not what was used.
    assert gw.send("POST", CHAT, body()).status == 429  # 2 × (body + 1500) > 3000
    assert len(records) == 2 and all(r["tokens_charged"] > 1500 for r in records)


def test_an_upstream_cut_off_mid_answer_is_charged_all_it_could_use(gw: Probe) -> None:
    payload = body(max_tokens=1400)
    assert served_until_refused(gw, payload, [("x-demo-fault", "drop")]) == admitted(len(payload) + 1400)


# 4. A token limit only the upstream reads


@pytest.mark.parametrize("fields", [
    {"max_tokens": "100000"}, {"max_tokens": True}, {"max_tokens": -1}, {"max_tokens": [100000]},
    {"max_completion_tokens": {"value": 100000}}, {"max_output_tokens": "1e5"}, {"n": "50"}, {"best_of": -1},
    {"max_tokens": 10, "MAX_TOKENS": 100000}, {"max_tokens": 10, "Max_Tokens ": 100000},
    {"max_tokens": 10, "max_tokens\u0000": 100000}, {"max_tokens": 10, "N": 50},
], ids=lambda f: json.dumps(f))
def test_a_limit_the_gateway_cannot_read_is_refused(gw: Probe, fields: dict[str, Any]) -> None:
    gw.denied(gw.send("POST", CHAT, body(**fields)), 400)
    gw.denied(gw.send("POST", MESSAGES, body(**fields)), 400, api="anthropic")


# 5. A body that is small only while compressed


def test_a_compressed_body_is_held_at_its_decoded_size(gw: Probe) -> None:
    prompt = " ".join(["word"] * 20_000)
    payload = body(stream=True, max_tokens=10, messages=[{"role": "user", "content": prompt}])
    packed = gzip.compress(payload)
    assert len(packed) < 1000 < len(payload)
    reply = gw.send("POST", CHAT, packed, [("Content-Encoding", "gzip")])
    assert reply.status == 200 and record(gw, reply)["tokens_charged"] == len(payload) + 10
    assert gw.send("POST", CHAT, body()).status == 429


# 6. Many requests at once, on every route and both kinds of credential


def test_a_burst_over_every_route_stays_within_the_budget(gw: Probe) -> None:
    prompt = " ".join(["word"] * 300)
    requests = [
        (CHAT, {"model": PLAIN, "max_tokens": 20, "messages": [{"role": "user", "content": prompt}]}),
        (MESSAGES, {"model": PLAIN, "max_tokens": 20, "messages": [{"role": "user", "content": prompt}]}),
        ("/v1/responses", {"model": PLAIN, "max_output_tokens": 20, "input": prompt}),
        ("/v1/completions", {"model": PLAIN, "max_tokens": 20, "prompt": prompt}),
    ]
    credentials = [gw.key(), gw.token()]
    most = max(len(json.dumps(payload)) + 20 for _, payload in requests)

    async def burst() -> list[tuple[int, int]]:
        async with aiohttp.ClientSession() as session:
            async def one(i: int) -> tuple[int, int]:
                path, payload = requests[i % len(requests)]
                headers = {"Authorization": f"Bearer {credentials[i % 2]}", "X-Forwarded-For": US_IP,
                           "x-demo-fault": "stall=0.5"}
                async with session.post(gw.stack.url + path, json=payload, headers=headers) as response:
                    answer = await response.json()
                    usage = answer.get("usage") or {}
                    used = usage.get("total_tokens") or usage.get("input_tokens", 0) + usage.get("output_tokens", 0)
                    return response.status, used
            return await asyncio.gather(*(one(i) for i in range(40)))

    started = time.monotonic()
    results = asyncio.run(burst())
    assert {status for status, _ in results} == {200, 429}, results
    served = [used for status, used in results if status == 200]
    assert sum(served) <= BUDGET + most, (len(served), sum(served), time.monotonic() - started)
    assert len(gw.stack.received) == len(served)

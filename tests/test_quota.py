"""Quotas as a caller meets them: requests per minute and tokens per day, 429 with Retry-After."""

from __future__ import annotations

import asyncio
import http.client
import json
import math
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
import redis.asyncio

from conftest import REFERENCE_POLICY
from e2e import US_IP, Stack
from fleet import policy_variant, start_fleet, wait_for
from gateway.request.quota import HELD_RETRY_S, SETTLE_DELAY_S, LocalQuota, RedisQuota, Reservation
from test_gateway import request


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    directory = tmp_path_factory.mktemp("quota")
    policy = directory / "policy"
    shutil.copytree(REFERENCE_POLICY, policy)
    framework = policy / "framework.yaml"
    framework.write_text(framework.read_text() + "quotas:\n  standard: {requests_per_minute: 3}\n")
    orgs = policy / "organizations.yaml"
    orgs.write_text(orgs.read_text().replace(
        "    vetted_until: 2027-06-30\n", "    vetted_until: 2027-06-30\n    quota: {tokens_per_day: 30}\n", 1))
    stack = Stack(directory, policy_dir=policy)
    yield stack
    stack.close()


def chat(stack: Stack, org: str) -> tuple[int, dict[str, str], bytes]:
    body = json.dumps({"model": "small-2", "messages": [{"role": "user", "content": "hello there"}]}).encode()
    headers = {"Authorization": f"Bearer {stack.api_key(org)}", "Content-Type": "application/json", "X-Forwarded-For": US_IP}
    return request(stack, "POST", "/v1/chat/completions", body, headers)


def test_requests_per_minute(stack: Stack) -> None:
    stack.upstream.app.reset()
    results = [chat(stack, "org-public") for _ in range(5)]
    statuses = [status for status, _, _ in results]
    if statuses[:3] != [200, 200, 200]:  # the minute rolled over mid-test: the next window admits 3 again
        pytest.skip("minute boundary crossed")
    assert statuses == [200, 200, 200, 429, 429]
    status, headers, body = results[3]
    assert 1 <= int(headers["retry-after"]) <= 60
    assert json.loads(body)["error"]["code"] == "rate_limit_exceeded"
    assert len(stack.received) == 3
    record = stack.audit_records()[-1]
    assert record["reasons"] == ["rate_limited"] and record["status"] == 429


def test_tokens_per_day_count_what_the_upstream_reports(stack: Stack) -> None:
    stack.upstream.app.reset()
    spent, statuses = [], []
    for _ in range(20):
        status, _, body = chat(stack, "org-acme")
        statuses.append(status)
        if status != 200:
            break
        spent.append(json.loads(body)["usage"]["total_tokens"])
    # Admitted while below the limit; refused once the reported usage reached it.
    assert statuses[-1] == 429 and sum(spent) >= 30 > sum(spent[:-1])
    assert len(stack.received) == statuses.count(200)
    assert stack.audit_records()[-2]["tokens"] > 0


# Tokens per day, held before forwarding and settled after (docs/quotas.md): counted
# whatever the client does, and overrun by at most one request's reservation.

BUDGET = 3000
DEFAULT_MAX_TOKENS = 1000


@pytest.fixture(scope="module")
def tokens_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    directory = tmp_path_factory.mktemp("tokens")
    policy = directory / "policy"
    shutil.copytree(REFERENCE_POLICY, policy)
    orgs = policy / "organizations.yaml"
    orgs.write_text(orgs.read_text().replace(
        "    vetted_until: 2027-06-30\n", f"    vetted_until: 2027-06-30\n    quota: {{tokens_per_day: {BUDGET}}}\n", 1))
    stack = Stack(directory, policy_dir=policy, extra_config=f"quota: {{default_max_tokens: {DEFAULT_MAX_TOKENS}}}\n")
    yield stack
    stack.close()


@pytest.fixture
def tokens(tokens_stack: Stack) -> Iterator[Stack]:
    """The stack with today's budget unspent (a fresh in-process counter) and a quick upstream."""
    assert tokens_stack.service.gateway is not None
    tokens_stack.service.gateway.quota = LocalQuota()
    tokens_stack.upstream.app.reset()
    yield tokens_stack
    tokens_stack.upstream.app.stream_delay_s = 0.0


def sdk(stack: Stack) -> openai.OpenAI:
    """The official SDK, which asks for gzip (Accept-Encoding: gzip, deflate)."""
    return openai.OpenAI(base_url=stack.url + "/v1", api_key=stack.api_key("org-acme"), max_retries=0,
                         default_headers={"X-Forwarded-For": US_IP})


def words(n: int) -> str:
    return " ".join(["word"] * n)


def charged(stack: Stack, decision_id: str) -> dict[str, Any]:
    [record] = [r for r in stack.audit_records() if r["decision_id"] == decision_id]
    return record


def test_a_client_asking_for_gzip_is_counted(tokens: Stack) -> None:
    """The SDK asks for gzip; the gateway asks the upstream for identity, reads the usage,
    and the budget ends where the usage reported says it does."""
    client = sdk(tokens)
    spent = []
    with pytest.raises(openai.RateLimitError):
        for _ in range(30):
            spent.append(client.chat.completions.create(
                model="small-2", messages=[{"role": "user", "content": words(200)}]).usage.total_tokens)
    assert sum(spent) >= BUDGET > sum(spent[:-1])
    seen = tokens.received
    assert len(seen) == len(spent) and {r.header("accept-encoding") for r in seen} == {"identity"}


def test_an_upstream_that_compresses_anyway_is_charged_the_reservation(tokens: Stack) -> None:
    """Asked for identity, it answers gzip: the usage cannot be read, so the reservation stands."""
    body = json.dumps({"model": "small-2", "max_tokens": 900, "messages": [{"role": "user", "content": "hi"}]}).encode()
    headers = {"Authorization": f"Bearer {tokens.api_key('org-acme')}", "Content-Type": "application/json",
               "X-Forwarded-For": US_IP, "x-demo-fault": "gzip"}
    admitted = math.ceil(BUDGET / (len(body) + 900))  # each admitted while the charges are below the budget
    replies = [request(tokens, "POST", "/v1/chat/completions", body, headers) for _ in range(admitted + 1)]
    assert [status for status, _, _ in replies] == [200] * admitted + [429]
    record = charged(tokens, replies[0][1]["x-gateway-decision-id"])
    assert record["tokens"] is None and record["tokens_charged"] == len(body) + 900
    assert int(replies[-1][1]["retry-after"]) > 1  # spent, not only held: tomorrow


def test_a_stream_without_usage_is_charged_its_reservation(tokens: Stack) -> None:
    """OpenAI streams carry no usage unless asked (stream_options.include_usage): such a
    stream is charged all it could have used."""
    client = sdk(tokens)
    streams = 0
    with pytest.raises(openai.RateLimitError):
        for _ in range(10):
            with client.chat.completions.create(model="small-2", messages=[{"role": "user", "content": "hi"}],
                                                stream=True, max_tokens=900) as stream:
                assert [chunk.usage for chunk in stream if chunk.usage] == []
            streams += 1
    # Each was charged all it could have used: its body (a bound on its prompt) and 900 tokens.
    reservation = len(tokens.received[-1].body) + 900
    record = charged(tokens, stream.response.headers["x-gateway-decision-id"])
    assert streams == math.ceil(BUDGET / reservation)
    assert record["tokens"] is None and record["tokens_charged"] == reservation


def test_a_stream_with_usage_is_charged_what_it_used(tokens: Stack) -> None:
    with sdk(tokens).chat.completions.create(model="small-2", messages=[{"role": "user", "content": "hi"}], stream=True,
                                             stream_options={"include_usage": True}, max_tokens=900) as stream:
        usage = [chunk.usage for chunk in stream if chunk.usage][0]
    record = charged(tokens, stream.response.headers["x-gateway-decision-id"])
    assert record["tokens"] == record["tokens_charged"] == usage.total_tokens


def test_a_stream_the_client_leaves_before_its_usage_is_charged_its_reservation(tokens: Stack) -> None:
    tokens.upstream.app.stream_delay_s = 0.05
    body = json.dumps({"model": "small-2", "max_tokens": 1400, "stream": True, "stream_options": {"include_usage": True},
                       "messages": [{"role": "user", "content": words(20)}]}).encode()
    host, port = tokens.url.removeprefix("http://").split(":")
    ids = []
    for _ in range(2):
        connection = http.client.HTTPConnection(host, int(port), timeout=10)
        connection.request("POST", "/v1/chat/completions", body, {
            "Authorization": f"Bearer {tokens.api_key('org-acme')}", "Content-Type": "application/json",
            "X-Forwarded-For": US_IP})
        response = connection.getresponse()
        assert response.status == 200 and response.read1(100).startswith(b"data: ")  # the first event, then gone
        ids.append(response.headers["x-gateway-decision-id"])
        connection.close()
    records = wait_for(lambda: [r for r in tokens.audit_records() if r["decision_id"] in ids] if all(
        r.outcome == "disconnected" for r in tokens.received) else None, 5)[0]
    assert chat(tokens, "org-acme")[0] == 429
    assert [r["error"] for r in records] == ["client_disconnected"] * 2
    assert [r["tokens_charged"] for r in records] == [len(body) + 1400] * 2


def test_an_upstream_cut_off_mid_answer_is_charged_its_reservation(tokens: Stack) -> None:
    body = json.dumps({"model": "small-2", "max_tokens": 1500, "messages": [{"role": "user", "content": "hi"}]}).encode()
    headers = {"Authorization": f"Bearer {tokens.api_key('org-acme')}", "Content-Type": "application/json",
               "X-Forwarded-For": US_IP, "x-demo-fault": "drop"}
    for _ in range(2):
        with pytest.raises(http.client.IncompleteRead):
            request(tokens, "POST", "/v1/chat/completions", body, headers)
    assert chat(tokens, "org-acme")[0] == 429
    assert [r["tokens_charged"] for r in tokens.audit_records()[-3:-1]] == [len(body) + 1500] * 2


def test_an_error_answer_is_charged_nothing(tokens: Stack) -> None:
    """A complete error answer from the upstream reports no usage: no tokens were served."""
    body = json.dumps({"model": "small-2", "max_tokens": 2900, "messages": []}).encode()
    headers = {"Authorization": f"Bearer {tokens.api_key('org-acme')}", "Content-Type": "application/json",
               "X-Forwarded-For": US_IP}
    for _ in range(3):
        status, reply_headers, _ = request(tokens, "POST", "/v1/chat/completions", body, headers)
        assert status == 400 and charged(tokens, reply_headers["x-gateway-decision-id"])["tokens_charged"] == 0
    assert chat(tokens, "org-acme")[0] == 200


def test_a_request_that_names_no_limit_holds_the_configured_default(tokens: Stack) -> None:
    body = json.dumps({"model": "small-2", "stream": True, "messages": [{"role": "user", "content": "hi"}]}).encode()
    headers = {"Authorization": f"Bearer {tokens.api_key('org-acme')}", "Content-Type": "application/json",
               "X-Forwarded-For": US_IP}
    _, reply_headers, _ = request(tokens, "POST", "/v1/chat/completions", body, headers)
    assert charged(tokens, reply_headers["x-gateway-decision-id"])["tokens_charged"] == len(body) + DEFAULT_MAX_TOKENS


def burst_body(prompt_words: int = 300) -> bytes:
    return json.dumps({"model": "small-2", "max_tokens": 20,
                       "messages": [{"role": "user", "content": words(prompt_words)}]}).encode()


async def burst(urls: list[str], key: str, body: bytes, count: int = 40) -> list[tuple[int, dict[str, Any] | None, str]]:
    """`count` requests at once, spread over `urls`; each answered slowly (stall), so all overlap."""
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json", "X-Forwarded-For": US_IP,
               "x-demo-fault": "stall=0.5"}
    async with aiohttp.ClientSession() as session:
        async def one(url: str) -> tuple[int, dict[str, Any] | None, str]:
            async with session.post(url + "/v1/chat/completions", data=body, headers=headers) as response:
                answer = await response.json()
                return response.status, answer.get("usage"), response.headers.get("retry-after", "")
        return await asyncio.gather(*(one(urls[i % len(urls)]) for i in range(count)))


def check_burst(results: list[tuple[int, dict[str, Any] | None, str]], body: bytes) -> None:
    served = [usage["total_tokens"] for status, usage, _ in results if status == 200 and usage]
    refused = [retry for status, _, retry in results if status == 429]
    assert len(served) + len(refused) == len(results)
    assert served and refused
    # Everything the served requests used stays within the budget plus one reservation.
    assert sum(served) <= BUDGET + len(body) + 20, (len(served), sum(served))
    assert "1" in refused  # refused while tokens were only held: try again in a second


def test_a_burst_from_one_org_stays_within_the_budget(tokens: Stack) -> None:
    body = burst_body()
    check_burst(asyncio.run(burst([tokens.url], tokens.api_key("org-acme"), body)), body)
    # The holds are settled to what was used: the org is served again.
    assert chat(tokens, "org-acme")[0] == 200


def test_a_burst_across_a_fleet_stays_within_the_budget(tmp_path: Path, redis_url: str) -> None:
    """Two replicas sharing one Redis: the hold is taken in the admission script, so the
    bound holds across replicas."""
    def with_budget(texts: dict[str, str]) -> None:
        texts["framework.yaml"] += f"quotas:\n  standard: {{tokens_per_day: {BUDGET}}}\n"

    fleet = start_fleet(tmp_path / "fleet", redis_url=redis_url, policy_dir=policy_variant(tmp_path / "policy", with_budget))
    try:
        body = burst_body()
        key = fleet.key("org-public")
        check_burst(asyncio.run(burst([replica.url for replica in fleet.replicas], key, body)), body)
        # Each replica sends its settlements within SETTLE_DELAY_S: the holds are gone then.
        time.sleep(20 * SETTLE_DELAY_S)
        assert fleet.a.chat(key).status == 200
        time.sleep(20 * SETTLE_DELAY_S)
        assert fleet.b.chat(key).status == 200
    finally:
        fleet.close()


def test_redis_holds_and_settles_atomically(redis_url: str) -> None:
    """40 admissions at once against a budget of 1000, 300 tokens held each: exactly 4 are
    admitted (0, 300, 600, 900 were below the budget); settled, the budget frees again."""
    async def run() -> None:
        client = redis.asyncio.Redis.from_url(redis_url)
        quota = RedisQuota(client, f"test-{uuid.uuid4().hex[:8]}")
        now = time.time()
        try:
            results = await asyncio.gather(*(quota.admit("org-r", None, 1000, now, reserve=300) for _ in range(40)))
            assert results.count(None) == 4 and set(results) - {None} == {HELD_RETRY_S}
            for _ in range(4):
                await quota.settle(Reservation("org-r", 300, now), 10)
            assert await quota.admit("org-r", None, 1000, now, reserve=300) is None
            await quota.settle(Reservation("org-r", 300, now), 960)  # spent: 1000
            assert await quota.admit("org-r", None, 1000, now, reserve=300) > HELD_RETRY_S  # until tomorrow
        finally:
            await client.aclose()

    asyncio.run(run())


def test_redis_settlements_go_together_and_this_replica_never_admits_against_a_released_hold(redis_url: str) -> None:
    """The request path's settlements (`settle_soon`) reach Redis a few milliseconds later,
    one script per org and day; an admission on the same replica meanwhile carries its
    org's, so the tokens a finished request released are free for the next one at once;
    another replica sees them once sent; close() sends what is left."""
    async def run() -> None:
        client = redis.asyncio.Redis.from_url(redis_url)
        namespace = f"test-{uuid.uuid4().hex[:8]}"
        here, there = RedisQuota(client, namespace, settle_delay_s=0.2), RedisQuota(client, namespace)
        now = time.time()
        try:
            assert await here.admit("org-s", None, 1000, now, reserve=600) is None
            assert await there.admit("org-s", None, 1000, now, reserve=400) is None
            assert await here.admit("org-s", None, 1000, now) == HELD_RETRY_S  # 1000 held
            here.settle_soon(Reservation("org-s", 600, now), 100)  # not sent yet
            assert await there.admit("org-s", None, 1000, now) == HELD_RETRY_S  # the other replica: not yet
            assert await here.admit("org-s", None, 1000, now, reserve=500) is None  # carried it: 100 + 400 held
            assert await there.admit("org-s", None, 1000, now) == HELD_RETRY_S  # 100 + 900 held
            here.settle_soon(Reservation("org-s", 500, now), 20)
            here.settle_soon(Reservation("org-s", 400, now), 30)  # the other replica's hold, settled here
            await asyncio.sleep(0.3)  # sent together
            assert await there.admit("org-s", None, 1000, now, reserve=840) is None  # spent 150, held 840
            there.settle_soon(Reservation("org-s", 840, now), 850)
            await there.close()  # sent at once: spent 1000, until tomorrow
            assert await here.admit("org-s", None, 1000, now) > HELD_RETRY_S
        finally:
            await client.aclose()

    asyncio.run(run())


class _CountingScripts:
    """A Redis client whose scripts count their calls (how many round trips admissions took)."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.calls = 0

    def register_script(self, text: str) -> Any:
        script = self.client.register_script(text)

        async def call(keys: Any, args: Any) -> Any:
            self.calls += 1
            return await script(keys, args)
        return call


def test_redis_admissions_for_one_org_go_together_in_order(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """While an org's admission script is in flight, its next admissions wait and go
    together in one script (at most quota.BATCH), applied in arrival order exactly as
    separate calls would be: 40 at once against 10 a minute admit the first 10."""
    monkeypatch.setattr("gateway.request.quota.BATCH", 4)

    async def run() -> None:
        client = redis.asyncio.Redis.from_url(redis_url)
        counting = _CountingScripts(client)
        quota = RedisQuota(counting, f"test-{uuid.uuid4().hex[:8]}")
        now = time.time()
        try:
            results = await asyncio.gather(*(quota.admit("org-b", 10, None, now) for _ in range(40)))
            assert results[:10] == [None] * 10 and all(wait is not None and wait > 0 for wait in results[10:])
            assert counting.calls == 1 + math.ceil(39 / 4)  # the first alone, then batches of 4
            counting.calls = 0
            assert [await quota.admit("org-b", 10, None, now) for _ in range(2)] != [None, None]
            assert counting.calls == 2  # one at a time: each alone, at once
        finally:
            await client.aclose()

    asyncio.run(run())


def test_redis_batched_admissions_apply_the_settlements_owed_first(redis_url: str) -> None:
    async def run() -> None:
        client = redis.asyncio.Redis.from_url(redis_url)
        quota = RedisQuota(client, f"test-{uuid.uuid4().hex[:8]}", settle_delay_s=60)
        now = time.time()
        try:
            assert await quota.admit("org-o", None, 1000, now, reserve=600) is None
            first = asyncio.ensure_future(quota.admit("org-o", None, 1000, now, reserve=300))  # 900 held
            await asyncio.sleep(0)  # in flight
            quota.settle_soon(Reservation("org-o", 600, now), 100)  # owed: spent 100, held 300
            waiting = [quota.admit("org-o", None, 1000, now, reserve=n) for n in (500, 400, 1)]
            results = await asyncio.gather(first, *waiting)
            assert results == [None, None, None, HELD_RETRY_S]  # 100 + 300 + 500 + 400 >= 1000
        finally:
            await client.aclose()

    asyncio.run(run())


def test_a_failed_batch_fails_every_admission_in_it_closed(redis_url: str) -> None:
    """A script Redis refuses fails each admission waiting for it (the gateway answers 503);
    the next admissions are tried afresh."""
    async def run() -> None:
        client = redis.asyncio.Redis.from_url(redis_url)
        namespace = f"test-{uuid.uuid4().hex[:8]}"
        quota = RedisQuota(client, namespace)
        now = time.time()
        spent = f"{namespace}:tpd:{{org-f}}:{int(now // 86_400)}"
        try:
            await client.set(spent, "not a number")  # the script fails on it
            results = await asyncio.gather(*(quota.admit("org-f", None, 1000, now, reserve=1) for _ in range(10)),
                                           return_exceptions=True)
            assert all(isinstance(result, redis.exceptions.ResponseError) for result in results), results
            await client.delete(spent)
            results = await asyncio.gather(*(quota.admit("org-f", None, 1000, now, reserve=1) for _ in range(10)))
            assert results == [None] * 10
        finally:
            await client.aclose()

    asyncio.run(run())


def test_admissions_fail_closed_when_redis_is_gone(private_redis: Any) -> None:
    async def run() -> None:
        client = redis.asyncio.Redis.from_url(private_redis.url, socket_timeout=2, socket_connect_timeout=2)
        quota = RedisQuota(client, f"test-{uuid.uuid4().hex[:8]}")
        now = time.time()
        try:
            assert await quota.admit("org-g", 5, None, now) is None
            private_redis.kill()
            results = await asyncio.gather(*(quota.admit("org-g", 5, None, now) for _ in range(10)),
                                           return_exceptions=True)
            assert all(isinstance(result, redis.exceptions.ConnectionError) for result in results), results
        finally:
            await client.aclose()

    asyncio.run(run())


def test_a_cancelled_admission_does_not_stop_the_others(redis_url: str) -> None:
    """A caller that goes away while its admission waits for the org's script is left out
    of the next one (nothing counted for it); a caller cancelled while its script is in
    flight does not hold up those waiting behind it."""
    async def run() -> None:
        client = redis.asyncio.Redis.from_url(redis_url)
        quota = RedisQuota(client, f"test-{uuid.uuid4().hex[:8]}")
        now = time.time()
        try:
            tasks = [asyncio.ensure_future(quota.admit("org-c", 5, None, now)) for _ in range(6)]
            await asyncio.sleep(0)  # the first is in flight, the others wait for it
            tasks[3].cancel()
            results = await asyncio.gather(*tasks, return_exceptions=True)
            assert isinstance(results[3], asyncio.CancelledError)
            assert results[:3] + results[4:] == [None] * 5  # 5 a minute: the cancelled one was not counted
            assert await quota.admit("org-c", 5, None, now) is not None

            await client.execute_command("CLIENT", "PAUSE", 300, "WRITE")  # the first script waits in Redis
            tasks = [asyncio.ensure_future(quota.admit("org-d", 100, None, now)) for _ in range(5)]
            await asyncio.sleep(0.1)
            tasks[0].cancel()  # the one in flight
            results = await asyncio.gather(*tasks, return_exceptions=True)
            assert isinstance(results[0], asyncio.CancelledError) and results[1:] == [None] * 4
            assert not quota._queued  # nothing left waiting
        finally:
            await client.aclose()

    asyncio.run(run())

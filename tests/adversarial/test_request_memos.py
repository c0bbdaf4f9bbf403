"""What the request path remembers across requests (issue 18 made it remember more, to
spend less per request), filled by an attacker's ever-different values: a caller with a
key varying where it says it is (decisions), a flood of long verified tokens (the token
cache), a burst of requests for one org in fleet mode (admissions sent together). Each is
bounded, and a full one answers exactly as an empty one would."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import redis.asyncio

from gateway.identity import Principal
from gateway.identity.cache import MAX_CHARS, VerifiedTokens
from gateway.policy.decision import decide
from gateway.request import quota as quota_module
from gateway.request.decisions import Decisions
from gateway.request.quota import RedisQuota
from test_properties import POLICY


def test_a_caller_varying_its_place_cannot_grow_the_decision_memo() -> None:
    memo, now = Decisions(), datetime(2027, 3, 1, tzinfo=UTC)
    answers = {}
    for n in range(3 * memo.size):  # every request a place never seen before
        facts = memo.facts("org-acme", "small-2", "US", f"US-X{n}", n % 2 == 0)
        answers[n] = (facts, memo.decide(POLICY, facts, now))
        assert len(memo) <= memo.size and len(memo._facts) <= memo.size
    for facts, decision in list(answers.values())[:: 97]:  # a full memo still answers as the core does
        assert decision == decide(POLICY, facts, now)


def test_a_flood_of_long_verified_tokens_stays_within_the_cache_budget() -> None:
    cache = VerifiedTokens()
    principal = Principal("s", "o", "jwt:x", "jwt")
    for n in range(1_500):  # 1,500 distinct 16 KiB tokens: 24 MiB offered
        cache.put(f"{n:08d}" + "x" * (16 * 1024 - 8), "r1", principal, time.time() + 60)
        assert cache._chars <= MAX_CHARS
    assert 0 < len(cache) <= MAX_CHARS // (16 * 1024)


class _RecordingScripts:
    """A Redis client whose scripts record how many admissions each call carried."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.admissions: list[int] = []

    def register_script(self, text: str) -> Any:
        script = self.client.register_script(text)

        async def call(keys: Any, args: Any) -> Any:
            if len(args) > 3:  # an admission script: 3 fixed arguments, then 3 per admission
                self.admissions.append((len(args) - 3) // 3)
            return await script(keys, args)
        return call


def test_a_burst_for_one_org_goes_in_bounded_scripts_and_admits_exactly_the_limit(redis_url: str) -> None:
    async def run() -> None:
        client = redis.asyncio.Redis.from_url(redis_url)
        recording = _RecordingScripts(client)
        quota = RedisQuota(recording, f"adv-{uuid.uuid4().hex[:8]}")
        now = time.time()
        try:
            results = await asyncio.gather(*(quota.admit("org-burst", 100, None, now) for _ in range(500)))
        finally:
            await client.aclose()
        assert sum(result is None for result in results) == 100
        assert sum(recording.admissions) == 500 and max(recording.admissions) <= quota_module.BATCH

    asyncio.run(run())

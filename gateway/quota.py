"""Request quotas per organization (SPEC §1.7): a fixed one-minute window per
organization, counted in this process (embedded) or in Redis (fleet).
"""

from __future__ import annotations

import math
from typing import Any, Protocol


DAY = 86_400


class Quota(Protocol):
    async def admit(self, org_id: str, per_minute: int, now: float) -> float | None:
        """None when admitted; otherwise the seconds until the window resets."""

    async def tokens_exhausted(self, org_id: str, per_day: int, now: float) -> float | None:
        """None while today's tokens (UTC) are below the limit; else seconds to midnight."""

    async def add_tokens(self, org_id: str, tokens: int, now: float) -> None: ...


def _retry_after(window: int, now: float, length: int = 60) -> float:
    return max(1.0, math.ceil((window + 1) * length - now))


class LocalQuota:
    def __init__(self) -> None:
        self._windows: dict[str, tuple[int, int]] = {}
        self._tokens: dict[tuple[str, int], int] = {}

    async def admit(self, org_id: str, per_minute: int, now: float) -> float | None:
        window = int(now // 60)
        start, count = self._windows.get(org_id, (window, 0))
        if start != window:
            count = 0
            if len(self._windows) > 100_000:
                self._windows = {k: v for k, v in self._windows.items() if v[0] == window}
        if count >= per_minute:
            return _retry_after(window, now)
        self._windows[org_id] = (window, count + 1)
        return None

    async def tokens_exhausted(self, org_id: str, per_day: int, now: float) -> float | None:
        day = int(now // DAY)
        return _retry_after(day, now, DAY) if self._tokens.get((org_id, day), 0) >= per_day else None

    async def add_tokens(self, org_id: str, tokens: int, now: float) -> None:
        day = int(now // DAY)
        if len(self._tokens) > 100_000:
            self._tokens = {k: v for k, v in self._tokens.items() if k[1] == day}
        self._tokens[(org_id, day)] = self._tokens.get((org_id, day), 0) + tokens


class RedisQuota:
    """The same window as one Redis counter per org and minute: INCR is atomic,
    so N requests a minute are admitted exactly N times across all replicas."""

    def __init__(self, redis: Any, namespace: str = "fgw") -> None:
        self.redis = redis
        self.namespace = namespace

    async def admit(self, org_id: str, per_minute: int, now: float) -> float | None:
        window = int(now // 60)
        key = f"{self.namespace}:rpm:{{{org_id}}}:{window}"
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.incr(key).expire(key, 120)
            count, _ = await pipe.execute()
        return _retry_after(window, now) if int(count) > per_minute else None

    async def tokens_exhausted(self, org_id: str, per_day: int, now: float) -> float | None:
        day = int(now // DAY)
        used = await self.redis.get(self._tokens_key(org_id, day))
        return _retry_after(day, now, DAY) if int(used or 0) >= per_day else None

    async def add_tokens(self, org_id: str, tokens: int, now: float) -> None:
        key = self._tokens_key(org_id, int(now // DAY))
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.incrby(key, tokens).expire(key, 2 * DAY)
            await pipe.execute()

    def _tokens_key(self, org_id: str, day: int) -> str:
        return f"{self.namespace}:tpd:{{{org_id}}}:{day}"

"""Request quotas per organization (SPEC §1.7): a fixed one-minute window per
organization, counted in this process (embedded) or in Redis (fleet).
"""

from __future__ import annotations

import math
from typing import Any, Protocol


class Quota(Protocol):
    async def admit(self, org_id: str, per_minute: int, now: float) -> float | None:
        """None when admitted; otherwise the seconds until the window resets."""


def _retry_after(window: int, now: float) -> float:
    return max(1.0, math.ceil((window + 1) * 60 - now))


class LocalQuota:
    def __init__(self) -> None:
        self._windows: dict[str, tuple[int, int]] = {}

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

"""Request quotas per organization (SPEC §1.7): a fixed one-minute window per
organization, counted in this process (embedded) or in Redis (fleet).
"""

from __future__ import annotations

import math
from typing import Any, Protocol


DAY = 86_400


class Quota(Protocol):
    async def admit(self, org_id: str, per_minute: int | None, tokens_per_day: int | None,
                    now: float) -> float | None:
        """None when the request is admitted (and counted against `per_minute`); else the
        seconds until the window that refuses it resets. Today's tokens (UTC) are checked
        first: a request refused for tokens does not spend a request."""

    async def add_tokens(self, org_id: str, tokens: int, now: float) -> None: ...


def _retry_after(window: int, now: float, length: int = 60) -> float:
    return max(1.0, math.ceil((window + 1) * length - now))


class LocalQuota:
    def __init__(self) -> None:
        self._windows: dict[str, tuple[int, int]] = {}
        self._tokens: dict[tuple[str, int], int] = {}

    async def admit(self, org_id: str, per_minute: int | None, tokens_per_day: int | None,
                    now: float) -> float | None:
        day = int(now // DAY)
        if tokens_per_day is not None and self._tokens.get((org_id, day), 0) >= tokens_per_day:
            return _retry_after(day, now, DAY)
        if per_minute is None:
            return None
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

    async def add_tokens(self, org_id: str, tokens: int, now: float) -> None:
        day = int(now // DAY)
        if len(self._tokens) > 100_000:
            self._tokens = {k: v for k, v in self._tokens.items() if k[1] == day}
        self._tokens[(org_id, day)] = self._tokens.get((org_id, day), 0) + tokens


# KEYS: today's tokens, this minute's requests (one hash slot: both carry {org}).
# ARGV: tokens per day, requests per minute (0: no limit). 0 admits; 1 and 2 refuse.
_ADMIT = """
if tonumber(ARGV[1]) > 0 and tonumber(redis.call('GET', KEYS[1]) or '0') >= tonumber(ARGV[1]) then
  return 1
end
if tonumber(ARGV[2]) > 0 then
  local count = redis.call('INCR', KEYS[2])
  if count == 1 then redis.call('EXPIRE', KEYS[2], 120) end
  if count > tonumber(ARGV[2]) then return 2 end
end
return 0
"""
_ADD = """
redis.call('INCRBY', KEYS[1], ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[2])
"""


class RedisQuota:
    """The same windows as Redis counters per org: one script per admission, so N
    requests a minute are admitted exactly N times across all replicas, in one round
    trip (a Lua script is atomic, and cheaper than MULTI/EXEC on Redis Cluster)."""

    def __init__(self, redis: Any, namespace: str = "fgw") -> None:
        self.redis = redis
        self.namespace = namespace
        self._admit = redis.register_script(_ADMIT)
        self._add = redis.register_script(_ADD)

    async def admit(self, org_id: str, per_minute: int | None, tokens_per_day: int | None,
                    now: float) -> float | None:
        day, window = int(now // DAY), int(now // 60)
        keys = [self._tokens_key(org_id, day), f"{self.namespace}:rpm:{{{org_id}}}:{window}"]
        refused = int(await self._admit(keys, [tokens_per_day or 0, per_minute or 0]))
        if refused == 1:
            return _retry_after(day, now, DAY)
        return _retry_after(window, now) if refused == 2 else None

    async def add_tokens(self, org_id: str, tokens: int, now: float) -> None:
        await self._add([self._tokens_key(org_id, int(now // DAY))], [tokens, 2 * DAY])

    def _tokens_key(self, org_id: str, day: int) -> str:
        return f"{self.namespace}:tpd:{{{org_id}}}:{day}"

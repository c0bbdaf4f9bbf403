"""Quotas per organization (docs/quotas.md): requests in a fixed one-minute window, and
tokens per UTC day, counted in this process (embedded) or in Redis (fleet).

Tokens are held before they are spent (docs/quotas.md). Admission reserves the
most the request can use (gateway/request/usage.py) in the same atomic step that checks
the budget, and refuses while today's spent tokens plus those held by requests
in flight reach it. When the answer is in, `settle` releases the hold and
charges what the upstream reported; when nothing can be read (no usage in the
answer, the client or the upstream gone) the caller charges the whole hold.
Every admitted request's hold was counted before the next was admitted, so the
budget is overrun by at most one request's reservation, across all replicas.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Protocol


DAY = 86_400
# Retry-After when only holds of requests in flight fill the budget: they settle
# within a request's time, well before the day ends.
HELD_RETRY_S = 1.0


@dataclass(frozen=True, slots=True)
class Reservation:
    """Tokens held for one admitted request, on the day it was admitted."""

    org_id: str
    tokens: int
    at: float


class Quota(Protocol):
    async def admit(self, org_id: str, per_minute: int | None, tokens_per_day: int | None,
                    now: float, *, reserve: int = 0) -> float | None:
        """None when the request is admitted (counted against `per_minute`, and `reserve`
        tokens held against `tokens_per_day`); else the seconds until it could be.
        Today's tokens (UTC) are checked first: a request refused for tokens does not
        spend a request, and one refused for requests holds no tokens."""

    async def settle(self, reservation: Reservation, charged: int) -> None:
        """Release the hold and add `charged` tokens to its day's spending."""


def _retry_after(window: int, now: float, length: int = 60) -> float:
    return max(1.0, math.ceil((window + 1) * length - now))


class LocalQuota:
    def __init__(self) -> None:
        self._windows: dict[str, tuple[int, int]] = {}
        self._tokens: dict[tuple[str, int], int] = {}  # spent, by (org, day)
        self._held: dict[tuple[str, int], int] = {}  # reserved by requests in flight

    async def admit(self, org_id: str, per_minute: int | None, tokens_per_day: int | None,
                    now: float, *, reserve: int = 0) -> float | None:
        # No await in here: check and hold are one step on the event loop.
        day = int(now // DAY)
        key = (org_id, day)
        if tokens_per_day is not None:
            spent = self._tokens.get(key, 0)
            if spent >= tokens_per_day:
                return _retry_after(day, now, DAY)
            if spent + self._held.get(key, 0) >= tokens_per_day:
                return HELD_RETRY_S
        if per_minute is not None:
            window = int(now // 60)
            start, count = self._windows.get(org_id, (window, 0))
            if start != window:
                count = 0
                if len(self._windows) > 100_000:
                    self._windows = {k: v for k, v in self._windows.items() if v[0] == window}
            if count >= per_minute:
                return _retry_after(window, now)
            self._windows[org_id] = (window, count + 1)
        if tokens_per_day is not None and reserve > 0:
            self._held[key] = self._held.get(key, 0) + reserve
        return None

    async def settle(self, reservation: Reservation, charged: int) -> None:
        key = (reservation.org_id, int(reservation.at // DAY))
        held = self._held.get(key, 0) - reservation.tokens
        if held > 0:
            self._held[key] = held
        else:
            self._held.pop(key, None)
        if charged > 0:
            if len(self._tokens) > 100_000:
                self._tokens = {k: v for k, v in self._tokens.items() if k[1] >= key[1]}
            self._tokens[key] = self._tokens.get(key, 0) + charged


# KEYS: today's spent tokens, this minute's requests, today's held tokens (one hash
# slot: all carry {org}). ARGV: tokens per day, requests per minute (0: no limit), tokens
# to hold, the tokens keys' lifetime. 0 admits; 1 (day spent), 2 (minute full) and 3
# (held by requests in flight) refuse.
_ADMIT = """
local budget = tonumber(ARGV[1])
if budget > 0 then
  local spent = tonumber(redis.call('GET', KEYS[1]) or '0')
  if spent >= budget then return 1 end
  if spent + tonumber(redis.call('GET', KEYS[3]) or '0') >= budget then return 3 end
end
if tonumber(ARGV[2]) > 0 then
  local count = redis.call('INCR', KEYS[2])
  if count == 1 then redis.call('EXPIRE', KEYS[2], 120) end
  if count > tonumber(ARGV[2]) then return 2 end
end
if budget > 0 and tonumber(ARGV[3]) > 0 then
  redis.call('INCRBY', KEYS[3], ARGV[3])
  redis.call('EXPIRE', KEYS[3], ARGV[4])
end
return 0
"""
# KEYS: the day's spent and held tokens. ARGV: tokens charged, tokens held, lifetime.
_SETTLE = """
if tonumber(ARGV[1]) > 0 then
  redis.call('INCRBY', KEYS[1], ARGV[1])
  redis.call('EXPIRE', KEYS[1], ARGV[3])
end
if redis.call('DECRBY', KEYS[2], ARGV[2]) <= 0 then redis.call('DEL', KEYS[2]) end
"""


class RedisQuota:
    """The same counters in Redis per org: one script per admission, so N requests a
    minute are admitted exactly N times across all replicas, and the token check and
    hold are one step, in one round trip (a Lua script is atomic, and cheaper than
    MULTI/EXEC on Redis Cluster). Settling is a second script, after the answer."""

    def __init__(self, redis: Any, namespace: str = "fgw") -> None:
        self.redis = redis
        self.namespace = namespace
        self._admit = redis.register_script(_ADMIT)
        self._settle = redis.register_script(_SETTLE)

    async def admit(self, org_id: str, per_minute: int | None, tokens_per_day: int | None,
                    now: float, *, reserve: int = 0) -> float | None:
        day, window = int(now // DAY), int(now // 60)
        keys = [self._key("tpd", org_id, day), f"{self.namespace}:rpm:{{{org_id}}}:{window}",
                self._key("tph", org_id, day)]
        refused = int(await self._admit(keys, [tokens_per_day or 0, per_minute or 0, reserve, 2 * DAY]))
        if refused == 1:
            return _retry_after(day, now, DAY)
        if refused == 3:
            return HELD_RETRY_S
        return _retry_after(window, now) if refused == 2 else None

    async def settle(self, reservation: Reservation, charged: int) -> None:
        day = int(reservation.at // DAY)
        keys = [self._key("tpd", reservation.org_id, day), self._key("tph", reservation.org_id, day)]
        await self._settle(keys, [charged, reservation.tokens, 2 * DAY])

    def _key(self, kind: str, org_id: str, day: int) -> str:
        # `tpd` (spent) is the key earlier versions counted in: replicas of both
        # versions share it during a rolling upgrade.
        return f"{self.namespace}:{kind}:{{{org_id}}}:{day}"

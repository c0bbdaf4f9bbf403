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

In fleet mode the admissions for one org that arrive while its admission script is
in flight go together in the next script, each applied in turn (RedisQuota).
The request path settles with `settle_soon`, which never waits: in fleet mode the
settlements of the next few milliseconds go to Redis together, one script per org
and day, off the answer's path; an admission script for an org with settlements still
to send carries them, applied first, so this replica never admits against a hold
it has already released. A settlement Redis does not take is not retried (it
might have been applied): its hold stays until the day ends, which refuses early,
never late (fail closed).
"""

from __future__ import annotations

import asyncio
import logging
import math
from dataclasses import dataclass
from typing import Any, Protocol

log = logging.getLogger("gateway.quota")


DAY = 86_400
# Retry-After when only holds of requests in flight fill the budget: they settle
# within a request's time, well before the day ends.
HELD_RETRY_S = 1.0
SETTLE_DELAY_S = 0.005  # fleet mode: settlements are sent together this long after the first, at most


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

    def settle_soon(self, reservation: Reservation, charged: int) -> None:
        """The same without waiting: done now, or within SETTLE_DELAY_S (see above)."""

    async def close(self) -> None:
        """Send the settlements not yet sent."""


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
        self.settle_soon(reservation, charged)

    async def close(self) -> None:
        pass

    def settle_soon(self, reservation: Reservation, charged: int) -> None:
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


# Admissions for one org, in order, in one atomic step. KEYS: today's spent tokens, this
# minute's requests, today's held tokens (one hash slot: all carry {org}). ARGV: the
# tokens keys' lifetime, today's settlements not yet sent (tokens charged, tokens
# released; applied first), then three per admission: tokens per day, requests per
# minute (0: no limit), tokens to hold. One result per admission (a list, unless one
# admission: its result alone, one reply line fewer to parse): 0 admits; 1 (day spent),
# 2 (minute full) and 3 (held by requests in flight) refuse.
_ADMIT = """
local lifetime = ARGV[1]
local charged, released = tonumber(ARGV[2]), tonumber(ARGV[3])
if charged > 0 then
  redis.call('INCRBY', KEYS[1], charged)
  redis.call('EXPIRE', KEYS[1], lifetime)
end
if released > 0 and redis.call('DECRBY', KEYS[3], released) <= 0 then redis.call('DEL', KEYS[3]) end
local function admit(budget, per_minute, reserve)
  if budget > 0 then
    local spent = tonumber(redis.call('GET', KEYS[1]) or '0')
    if spent >= budget then return 1 end
    if spent + tonumber(redis.call('GET', KEYS[3]) or '0') >= budget then return 3 end
  end
  if per_minute > 0 then
    local count = redis.call('INCR', KEYS[2])
    if count == 1 then redis.call('EXPIRE', KEYS[2], 120) end
    if count > per_minute then return 2 end
  end
  if budget > 0 and reserve > 0 then
    redis.call('INCRBY', KEYS[3], reserve)
    redis.call('EXPIRE', KEYS[3], lifetime)
  end
  return 0
end
if #ARGV == 6 then return admit(tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])) end
local results = {}
for i = 4, #ARGV, 3 do
  results[#results + 1] = admit(tonumber(ARGV[i]), tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2]))
end
return results
"""
# KEYS: the day's spent and held tokens. ARGV: tokens charged, tokens held, lifetime.
_SETTLE = """
if tonumber(ARGV[1]) > 0 then
  redis.call('INCRBY', KEYS[1], ARGV[1])
  redis.call('EXPIRE', KEYS[1], ARGV[3])
end
if redis.call('DECRBY', KEYS[2], ARGV[2]) <= 0 then redis.call('DEL', KEYS[2]) end
"""


BATCH = 64  # fleet mode: admissions for one org in one script, at most

_Group = tuple[str, int, int]  # (org, day, minute): the keys one admission script touches
_Limits = tuple[int, int, int]  # tokens per day, requests per minute (0: no limit), tokens to hold
_Waiting = tuple[_Limits, "asyncio.Future[int]"]


class QuotaUnavailable(Exception):
    """An admission that could not be decided (its caller fails closed)."""


def _fail(waiting: list[_Waiting], error: BaseException) -> None:
    for _, future in waiting:
        if not future.done():
            future.set_exception(error)


class RedisQuota:
    """The same counters in Redis per org: each admission is applied in one atomic script
    (check and hold together, one round trip; a Lua script is atomic, and cheaper than
    MULTI/EXEC on Redis Cluster), so N requests a minute are admitted exactly N times
    across all replicas. While an org's script is in flight, its next admissions wait
    and then go together, in arrival order, in one script (at most BATCH): under load
    one call for many requests, at low load each at once. Settling is another script,
    after the answer, for the settlements of a few milliseconds together (see the
    module's docstring)."""

    def __init__(self, redis: Any, namespace: str = "fgw", *, settle_delay_s: float = SETTLE_DELAY_S) -> None:
        self.redis = redis
        self.namespace = namespace
        self.settle_delay_s = settle_delay_s
        self._admit = redis.register_script(_ADMIT)
        self._settle = redis.register_script(_SETTLE)
        self._owed: dict[tuple[str, int], list[int]] = {}  # (org, day) -> [tokens charged, tokens released]
        self._sending: asyncio.Task[None] | None = None
        # Present while a script for the group is in flight: the admissions waiting for it.
        self._queued: dict[_Group, list[_Waiting]] = {}
        self._batches: set[asyncio.Task[None]] = set()

    async def admit(self, org_id: str, per_minute: int | None, tokens_per_day: int | None,
                    now: float, *, reserve: int = 0) -> float | None:
        day, window = int(now // DAY), int(now // 60)
        group = (org_id, day, window)
        limits = (tokens_per_day or 0, per_minute or 0, reserve)
        queued = self._queued.get(group)
        if queued is not None:
            future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
            queued.append((limits, future))
            refused = await future
        else:
            self._queued[group] = []
            try:
                refused = await self._run(group, [limits])
            finally:
                self._send_queued(group)
        if refused == 1:
            return _retry_after(day, now, DAY)
        if refused == 3:
            return HELD_RETRY_S
        return _retry_after(window, now) if refused == 2 else None

    def _send_queued(self, group: _Group) -> None:
        """After a script: what queued meanwhile goes next, in a task of its own (its
        callers wait on futures, and this caller need not wait for them)."""
        if not self._queued[group]:
            del self._queued[group]
            return
        task = asyncio.get_running_loop().create_task(self._send_batches(group))
        self._batches.add(task)
        task.add_done_callback(self._batches.discard)

    async def _send_batches(self, group: _Group) -> None:
        queued = self._queued[group]  # still filled by admissions while a batch is in flight
        try:
            while queued:
                batch = [(limits, future) for limits, future in queued[:BATCH] if not future.done()]  # not cancelled
                del queued[:BATCH]
                if batch:
                    await self._send_batch(group, batch)
        finally:
            del self._queued[group]
            _fail(queued, QuotaUnavailable("the admission was not sent: its batch was cancelled"))

    async def _send_batch(self, group: _Group, batch: list[_Waiting]) -> None:
        try:
            results = await self._run(group, [limits for limits, _ in batch])
            results = [results] if len(batch) == 1 else results
            if len(results) != len(batch):  # never expected; but no caller may wait forever
                raise QuotaUnavailable(f"{len(results)} results for {len(batch)} admissions")
        except Exception as error:  # each caller gets it: fail closed
            _fail(batch, error)
            return
        except BaseException:
            _fail(batch, QuotaUnavailable("the admission's batch was cancelled; it may have been applied"))
            raise
        for (_, future), refused in zip(batch, results):
            if not future.done():
                future.set_result(refused)

    async def _run(self, group: _Group, admissions: list[_Limits]) -> Any:
        """One script: the org's settlements owed, then `admissions` in order (see _ADMIT
        for its reply)."""
        org_id, day, window = group
        keys = [self._key("tpd", org_id, day), f"{self.namespace}:rpm:{{{org_id}}}:{window}",
                self._key("tph", org_id, day)]
        charged, released = self._owed.pop((org_id, day), (0, 0))
        args = [2 * DAY, charged, released]
        for limits in admissions:
            args.extend(limits)
        try:
            return await self._admit(keys, args)
        except BaseException:
            if charged or released:
                log.warning("could not settle %d tokens for %s (their hold stays until the day ends)", released,
                            org_id)
            raise

    async def settle(self, reservation: Reservation, charged: int) -> None:
        """At once, in a script of its own."""
        await self._send(reservation.org_id, int(reservation.at // DAY), charged, reservation.tokens)

    def settle_soon(self, reservation: Reservation, charged: int) -> None:
        owed = self._owed.setdefault((reservation.org_id, int(reservation.at // DAY)), [0, 0])
        owed[0] += charged
        owed[1] += reservation.tokens
        if self._sending is None:
            self._sending = asyncio.get_running_loop().create_task(self._send_owed(self.settle_delay_s))

    async def close(self) -> None:
        if self._batches:  # admissions still waiting for their script
            await asyncio.wait(self._batches)
        while self._sending is not None:  # at most SETTLE_DELAY_S, then its round trips
            await self._sending
        await self._send_owed(0.0)

    async def _send_owed(self, delay_s: float) -> None:
        """The settlements owed, SETTLE_DELAY_S after the first: one script per org and day
        (an admission may have taken its org's meanwhile)."""
        if delay_s:
            await asyncio.sleep(delay_s)
        owed, self._owed, self._sending = self._owed, {}, None
        for (org_id, day), (charged, released) in owed.items():
            try:
                await self._send(org_id, day, charged, released)
            except Exception as error:  # the hold stays until the day ends: fail closed
                log.warning("could not settle %d tokens for %s (their hold stays until the day ends): %r", released,
                            org_id, error)

    async def _send(self, org_id: str, day: int, charged: int, released: int) -> None:
        keys = [self._key("tpd", org_id, day), self._key("tph", org_id, day)]
        await self._settle(keys, [charged, released, 2 * DAY])

    def _key(self, kind: str, org_id: str, day: int) -> str:
        # `tpd` (spent) is the key earlier versions counted in: replicas of both
        # versions share it during a rolling upgrade.
        return f"{self.namespace}:{kind}:{{{org_id}}}:{day}"

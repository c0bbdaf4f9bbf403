"""Credential misuse: one credential seen from several countries within a window.

A credential is held by one party; the same key answering from two countries
within the hour usually means it was shared or stolen. Sightings are kept per
credential (in this process, or in Redis so that a fleet sees every replica's
traffic), each country with the last time it was seen.
"""

from __future__ import annotations

from typing import Any, Protocol


class Sightings(Protocol):
    async def observe(self, credential_id: str, country: str, now: float) -> frozenset[str]:
        """Record a sighting; return the countries seen within the window."""


class LocalSightings:
    def __init__(self, window_s: float, capacity: int = 100_000) -> None:
        self.window_s = window_s
        self.capacity = capacity
        self._seen: dict[str, dict[str, float]] = {}

    async def observe(self, credential_id: str, country: str, now: float) -> frozenset[str]:
        countries = self._seen.get(credential_id)
        if countries is None:
            if len(self._seen) >= self.capacity:
                self._prune(now)
            countries = self._seen[credential_id] = {}
        countries[country] = now
        horizon = now - self.window_s
        return frozenset(c for c, seen in countries.items() if seen >= horizon)

    def _prune(self, now: float) -> None:
        horizon = now - self.window_s
        self._seen = {k: v for k, v in self._seen.items() if max(v.values()) >= horizon}
        if len(self._seen) >= self.capacity:  # still full of live entries: forget the oldest half
            ordered = sorted(self._seen, key=lambda k: max(self._seen[k].values()))
            for key in ordered[: len(ordered) // 2]:
                del self._seen[key]


# KEYS: the credential's hash. ARGV: country, now, seconds to keep. Returns HGETALL's flat list.
_OBSERVE = """
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[3])
return redis.call('HGETALL', KEYS[1])
"""


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


class RedisSightings:
    """One hash per credential (country -> last seen), expiring with the window.

    A credential seen again from the same country within `refresh_s` is not written
    again: the answer is the countries Redis returned last time. A new country is
    always written at once, and the replica that writes it gets every replica's
    countries back, so detection is not delayed; only the last-seen times (kept for
    a window of minutes or hours) lag by up to `refresh_s`. That takes a Redis round
    trip off nearly every request."""

    def __init__(self, redis: Any, namespace: str, window_s: float, *, refresh_s: float = 5.0,
                 capacity: int = 100_000) -> None:
        self.redis = redis
        self.namespace = namespace
        self.window_s = window_s
        self.refresh_s = min(refresh_s, window_s / 10)
        self.capacity = capacity
        self._recent: dict[tuple[str, str], tuple[float, frozenset[str]]] = {}
        self._observe = redis.register_script(_OBSERVE)

    async def observe(self, credential_id: str, country: str, now: float) -> frozenset[str]:
        recent = self._recent.get((credential_id, country))
        if recent is not None and 0 <= now - recent[0] < self.refresh_s:
            return recent[1]
        key = f"{self.namespace}:seen:{{{credential_id}}}"
        flat = await self._observe([key], [country, now, int(self.window_s) + 1])
        horizon = now - self.window_s
        seen = frozenset(_text(c) for c, at in zip(flat[::2], flat[1::2]) if float(at) >= horizon)
        if len(self._recent) >= self.capacity:
            self._recent.clear()  # a cache only: the next sightings are written again
        self._recent[(credential_id, country)] = (now, seen)
        return seen

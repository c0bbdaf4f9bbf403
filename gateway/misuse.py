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


class RedisSightings:
    """One hash per credential (country -> last seen), expiring with the window."""

    def __init__(self, redis: Any, namespace: str, window_s: float) -> None:
        self.redis = redis
        self.namespace = namespace
        self.window_s = window_s

    async def observe(self, credential_id: str, country: str, now: float) -> frozenset[str]:
        key = f"{self.namespace}:seen:{{{credential_id}}}"
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(key, country, now).hgetall(key).expire(key, int(self.window_s) + 1)
            _, countries, _ = await pipe.execute()
        horizon = now - self.window_s
        return frozenset(c for c, seen in countries.items() if float(seen) >= horizon)

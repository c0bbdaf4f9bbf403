"""Requests and denials of the last hour, per minute, in memory, for the console's overview.

Fed by the request path where each decision is recorded (gateway/request/app.py `finish`), so it
must cost next to nothing: one bucket per minute in a ring of 60, a counter increment
and, for a denial, one dict increment per place. Nothing here reads a clock: the caller
passes the time. In fleet mode each replica publishes its own `window()` in its heartbeat
(gateway/live/heartbeat.py) and the overview adds them up.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

MINUTES = 60


@dataclass
class Minute:
    minute: int  # minutes since the epoch
    requests: int = 0
    denials: int = 0
    countries: Counter[str] = field(default_factory=Counter)  # denials per ISO 3166-1 alpha-2 ("unknown" if none)
    regions: Counter[str] = field(default_factory=Counter)  # denials per ISO 3166-2 region, where known


@dataclass(frozen=True)
class Window:
    """The last hour, summed: what the overview shows and a heartbeat carries."""
    requests: int
    denials: int
    countries: dict[str, int]
    regions: dict[str, int]
    per_minute: tuple[tuple[int, int, int], ...]  # (minute, requests, denials), oldest first

    def as_json(self) -> dict[str, Any]:
        return {"requests": self.requests, "denials": self.denials, "countries": self.countries,
                "regions": self.regions, "per_minute": [list(m) for m in self.per_minute]}


EMPTY = Window(0, 0, {}, {}, ())


class Activity:
    def __init__(self) -> None:
        self.ring: list[Minute | None] = [None] * MINUTES

    def count(self, now: float, *, allowed: bool, country: str | None, region: str | None) -> None:
        minute = int(now // 60)
        slot = minute % MINUTES
        bucket = self.ring[slot]
        if bucket is None or bucket.minute != minute:
            bucket = self.ring[slot] = Minute(minute)
        bucket.requests += 1
        if not allowed:
            bucket.denials += 1
            bucket.countries[country or "unknown"] += 1
            if region:
                bucket.regions[region] += 1

    def window(self, now: float) -> Window:
        """The 60 minutes ending with the current one."""
        current = int(now // 60)
        live = sorted((b for b in self.ring if b is not None and current - MINUTES < b.minute <= current),
                      key=lambda b: b.minute)
        countries: Counter[str] = Counter()
        regions: Counter[str] = Counter()
        for bucket in live:
            countries.update(bucket.countries)
            regions.update(bucket.regions)
        return Window(sum(b.requests for b in live), sum(b.denials for b in live), dict(countries), dict(regions),
                      tuple((b.minute, b.requests, b.denials) for b in live))


def combined(windows: list[Window]) -> Window:
    """The fleet's hour: the replicas' windows added up, minute by minute."""
    countries: Counter[str] = Counter()
    regions: Counter[str] = Counter()
    minutes: dict[int, list[int]] = {}
    for window in windows:
        countries.update(window.countries)
        regions.update(window.regions)
        for minute, requests, denials in window.per_minute:
            total = minutes.setdefault(minute, [0, 0])
            total[0] += requests
            total[1] += denials
    return Window(sum(w.requests for w in windows), sum(w.denials for w in windows), dict(countries), dict(regions),
                  tuple((m, r, d) for m, (r, d) in sorted(minutes.items())))


def window_from_json(data: Any) -> Window | None:
    """A heartbeat's window, checked: None for anything not shaped as `as_json` writes it."""
    if not isinstance(data, dict):
        return None
    try:
        per_minute = tuple((int(m), int(r), int(d)) for m, r, d in data["per_minute"])
        countries = {str(k): int(v) for k, v in data["countries"].items()}
        regions = {str(k): int(v) for k, v in data["regions"].items()}
        return Window(int(data["requests"]), int(data["denials"]), countries, regions, per_minute)
    except (KeyError, TypeError, ValueError, AttributeError):
        return None

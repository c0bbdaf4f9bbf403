"""What the overview shows, gathered from plain values: pure functions, no I/O, no clock
(the page's handler reads the state and passes `now`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gateway.policy import countries
from gateway.policy.explain import iso
from gateway.request.activity import MINUTES, Window, combined
from gateway.console import worldmap
from gateway.live.heartbeat import STALE_S, Heartbeat
from gateway.policy.snapshot import Suspension

DAY_S = 86400.0


@dataclass(frozen=True)
class ReplicaRow:
    replica: str
    policy_version: str | None
    seen_s_ago: float
    alive: bool
    agrees: bool  # runs the version most live replicas run


@dataclass(frozen=True)
class PlaceRow:
    code: str
    name: str
    denials: int


@dataclass(frozen=True)
class DatabaseRow:
    name: str
    age_days: float
    condition: str  # fresh, old, expired


@dataclass(frozen=True)
class SuspensionRow:
    id: str
    models: str
    places: str
    until: str | None
    reason: str | None


@dataclass(frozen=True)
class Overview:
    replicas: tuple[ReplicaRow, ...]
    versions_agree: bool
    window: Window
    requests_per_minute: float
    denied_share: float
    map: worldmap.WorldMap
    top_countries: tuple[PlaceRow, ...]
    regions: tuple[PlaceRow, ...]
    minutes: tuple[tuple[int, int], ...]  # (requests, denials) for each of the last 60 minutes, oldest first
    peak: int  # the most requests in one of those minutes


def replica_rows(beats: list[Heartbeat], now: float) -> tuple[tuple[ReplicaRow, ...], bool]:
    """Each replica with whether it runs the fleet's version (that of most live replicas);
    and whether all live replicas agree."""
    live = [b for b in beats if now - b.seen_at <= STALE_S]
    versions = [b.policy_version for b in live]
    majority = max(set(versions), key=lambda v: (versions.count(v), v or ""), default=None)
    rows = tuple(ReplicaRow(b.replica, b.policy_version, max(0.0, now - b.seen_at), now - b.seen_at <= STALE_S,
                            b.policy_version == majority and b.policy_version is not None) for b in beats)
    return rows, len(set(versions)) == 1 and versions[0] is not None if versions else False


def place_rows(counts: dict[str, int], limit: int | None = None) -> tuple[PlaceRow, ...]:
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:limit]
    return tuple(PlaceRow(code, countries.name_of(code) or ("Unknown" if code == "unknown" else code), n)
                 for code, n in ranked)


def overview(beats: list[Heartbeat], now: float) -> Overview:
    rows, agree = replica_rows(beats, now)
    window = combined([b.window for b in beats if now - b.seen_at <= STALE_S])
    minutes = every_minute(window, now)
    return Overview(rows, agree, window, window.requests / MINUTES,
                    window.denials / window.requests if window.requests else 0.0,
                    worldmap.shaded(window.countries), place_rows(window.countries, 15), place_rows(window.regions),
                    minutes, max((r for r, _ in minutes), default=0))


def every_minute(window: Window, now: float) -> tuple[tuple[int, int], ...]:
    """The window's counts on a fixed 60-minute axis ending now (quiet minutes are zeros)."""
    counts = {minute: (requests, denials) for minute, requests, denials in window.per_minute}
    current = int(now // 60)
    return tuple(counts.get(minute, (0, 0)) for minute in range(current - MINUTES + 1, current + 1))


def database_rows(ages: dict[str, float], max_age_days: float) -> tuple[DatabaseRow, ...]:
    rows = []
    for name, age in sorted(ages.items()):
        days = age / DAY_S
        condition = "expired" if days > 2 * max_age_days else "old" if days > max_age_days else "fresh"
        rows.append(DatabaseRow(name, round(days, 1), condition))
    return tuple(rows)


def suspension_rows(suspensions: tuple[Suspension, ...] | list[Suspension], now: float) -> tuple[SuspensionRow, ...]:
    """The suspensions in force at `now`; `places` says where they deny ("everywhere but" for deny_outside)."""
    rows = []
    for s in suspensions:
        if not s.in_force(now):
            continue
        named = dict.fromkeys([*s.groups.names, *sorted(s.groups.countries), *sorted(s.groups.regions)])
        places = ", ".join(named) or "-"  # a country given by its code is also a name: once
        rows.append(SuspensionRow(s.id, ", ".join(sorted(s.models)) or "every model",
                                  f"everywhere but {places}" if s.scope == "deny_outside" else places,
                                  iso(s.ends) if s.ends is not None else None, s.reason))
    return tuple(rows)


def awaiting_rows(proposals: list[dict[str, Any]], pending: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Open proposals (awaiting approval) and applied tightenings awaiting a countersignature."""
    keep = ("id", "kind", "target", "proposer", "created", "reason")
    return {"approval": [{k: p.get(k) for k in keep} for p in proposals],
            "countersign": [{k: e.get(k) for k in ("change_id", "actor", "action", "target", "time", "due", "overdue")}
                            for e in pending]}

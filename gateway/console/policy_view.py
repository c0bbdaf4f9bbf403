"""What the Policy page shows, derived from the policy in force: the jurisdiction groups
with the legal lists they mirror, and the organizations with their vetting, those
whose vetting lapses soon first in mind.

Pure: the policy and the time in, rows out.
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from gateway.policy import countries
from gateway.policy.provenance import JURISDICTIONS
from gateway.policy.snapshot import Organization, Policy

DAY = 86_400.0
LAPSING_WITHIN_DAYS = 30
MAX_ORG_ROWS = 500  # a registry may hold 10^5: the page shows a filtered part of it


@dataclass(frozen=True, slots=True)
class GroupRow:
    name: str
    source: str | None
    as_of: str | None
    includes: tuple[str, ...]
    countries: tuple[str, ...]  # as listed by the group itself, "CN China"
    regions: tuple[str, ...]
    members: int  # places it holds with its includes expanded
    shadow: bool


@dataclass(frozen=True, slots=True)
class OrgRow:
    id: str
    name: str
    country: str
    tier: str
    effective_tier: str
    status: str
    status_reason: str | None
    vetted_until: str | None
    vetting: str  # "not vetted", "current", "lapsing" or "lapsed"
    days_left: int | None  # whole days until vetting lapses (0: lapses today); None: no date or lapsed

    @property
    def note(self) -> str:
        """The vetting in words, so the highlight never rests on colour alone."""
        if self.vetting == "lapsed":
            return f"Vetting lapsed: counts as {self.effective_tier}"
        if self.vetting == "lapsing":
            days = "today" if self.days_left == 0 else f"in {self.days_left} day{'s' if self.days_left != 1 else ''}"
            return f"Vetting lapses {days}"
        return ""


def group_rows(policy: Policy) -> list[GroupRow]:
    """Every jurisdiction group as its file writes it, with its size once expanded."""
    documents: Mapping[str, Any] = policy.documents.get(JURISDICTIONS, {}).get("groups", {})
    rows = []
    for name, group in documents.items():
        expanded = policy.groups.get(name)
        members = len(expanded.countries) + len(expanded.regions) if expanded is not None else 0
        rows.append(GroupRow(name, group.get("source"), _text(group.get("as_of")), tuple(group.get("include", ())),
                             tuple(countries.label(c) for c in group.get("countries", ())),
                             tuple(countries.label(r) for r in group.get("regions", ())), members,
                             group.get("mode") == "shadow"))
    return rows


def org_row(org: Organization, now: float, within_days: int = LAPSING_WITHIN_DAYS) -> OrgRow:
    vetting, days_left = vetting_of(org, now, within_days)
    return OrgRow(org.id, org.name, org.country, org.tier, org.effective_tier(now), org.status, org.status_reason,
                  org.vetted_until.isoformat() if org.vetted_until else None, vetting, days_left)


def vetting_of(org: Organization, now: float, within_days: int = LAPSING_WITHIN_DAYS) -> tuple[str, int | None]:
    """("lapsing", days) when the vetting lapses within `within_days` of `now`; the
    date is valid through its last day, so the day it lapses is 0 days away."""
    if org.lapses_at is None:
        return "not vetted", None
    if now >= org.lapses_at:
        return "lapsed", None
    days = int((org.lapses_at - now) // DAY)
    return ("lapsing" if days < within_days else "current"), days


def org_rows(policy: Policy, now: float, query: str = "", limit: int = MAX_ORG_ROWS) -> tuple[list[OrgRow], int]:
    """(the organizations matching `query` in id or name, lapsing ones first, at most
    `limit`; how many matched). Only the rows shown are built: a registry may be large."""
    folded = query.strip().casefold()
    everyone = policy.organizations.values()
    matching = [o for o in everyone if folded in o.id.casefold() or folded in o.name.casefold()] if folded else list(everyone)
    shown = heapq.nsmallest(limit, matching, key=lambda org: _urgency(org.id, *vetting_of(org, now)))
    return [org_row(o, now) for o in shown], len(matching)


def lapsing(policy: Policy, now: float, within_days: int = LAPSING_WITHIN_DAYS) -> list[OrgRow]:
    """The organizations whose vetting lapses within `within_days`, soonest first."""
    horizon = now + within_days * DAY
    soon = (o for o in policy.organizations.values() if o.lapses_at is not None and now < o.lapses_at <= horizon)
    rows = (org_row(o, now, within_days) for o in soon)
    return sorted((r for r in rows if r.vetting == "lapsing"), key=lambda r: _urgency(r.id, r.vetting, r.days_left))


def _urgency(org_id: str, vetting: str, days_left: int | None) -> tuple[int, int, str]:
    order = {"lapsing": 0, "lapsed": 1, "current": 2, "not vetted": 3}[vetting]
    return order, days_left if days_left is not None else 0, org_id


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return value.isoformat() if isinstance(value, datetime) else str(value)


def today(now: float) -> str:
    return datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%d")

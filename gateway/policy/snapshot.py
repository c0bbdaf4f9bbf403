"""The compiled, immutable policy snapshot that `decide()` reads.

Everything a decision needs is indexed here at load time (group membership as
sets, names as a dict, stage starts as a sorted tuple), so a decision does a
handful of dict and set lookups however large the lists grow.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from types import MappingProxyType
from typing import Any

from gateway.policy.schema import StageName, Tier, Verdict


def canonical_name(name: str) -> str:
    """Model names match exactly after case-folding and trimming (docs/policy.md, `models.ID.aliases`)."""
    return name.strip().casefold()


@dataclass(frozen=True, slots=True)
class GroupSet:
    """The union of some named groups, with `include` already expanded.

    Each country and region maps to the first listed group that contains it,
    so an explanation can say which group matched.

    A place is the country a database reports and, with a City database, an
    ISO 3166-2 region, whose first two letters name the region's own country.
    The two can disagree: some databases file Crimea (UA-43) and Sevastopol
    (UA-40) under RU. So a place is read every way it can be, failing closed:
    a deny list matches it on any reading (`match`), an allow list admits it
    only if its region is listed or every country it may be in is (`admits`).
    """

    names: tuple[str, ...]
    countries: Mapping[str, str]
    regions: Mapping[str, str]
    # Groups in `mode: shadow`: reported when they match, never enforced, and
    # they admit no one where a list admits (stage jurisdictions).
    shadow: GroupSet | None = None

    def find(self, country: str | None, region: str | None = None) -> tuple[str, str] | None:
        """(group, the code it lists) for the first enforced group that contains this
        place on any reading: its reported country, its region, the region's country."""
        if country is not None:
            group = self.countries.get(country)
            if group is not None:
                return group, country
        if region is not None:
            group = self.regions.get(region)
            if group is not None:
                return group, region
            group = self.countries.get(region[:2])
            if group is not None:
                return group, region[:2]
        return None

    def match(self, country: str | None, region: str | None = None) -> str | None:
        """The enforced group that contains this place on any reading (deny lists), or None."""
        found = self.find(country, region)
        return found[0] if found is not None else None

    def admits(self, country: str | None, region: str | None = None) -> bool:
        """Whether this place is inside an allow list (stage jurisdictions, deny_outside):
        its region is listed, or its reported country is and so is the region's own
        country. A region reported under another country (Crimea under RU) is not
        admitted by the reported country alone; an unknown place by nothing."""
        if region is not None and region in self.regions:
            return True
        if country is None or country not in self.countries:
            return False
        return region is None or region[:2] == country or region[:2] in self.countries


EMPTY_GROUPS = GroupSet((), MappingProxyType({}), MappingProxyType({}))

Member = tuple[str, Mapping[str, str], Mapping[str, str], bool]


def place_member(code: str) -> Member:
    """A place named directly by its ISO code (a suspension's `JP` or `UA-43`) as a
    member of a GroupSet: it contains itself, and a match names the code."""
    if "-" in code:
        return code, {}, {code: code}, False
    return code, {code: code}, {}, False


def merge(names: tuple[str, ...], parts: list[Member]) -> GroupSet:
    """A GroupSet from (group, countries, regions, shadow) in listing order;
    each place maps to the first listed group that contains it."""
    maps: dict[bool, tuple[dict[str, str], dict[str, str]]] = {False: ({}, {}), True: ({}, {})}
    for name, countries, regions, shadow in parts:
        for code in countries:
            maps[shadow][0].setdefault(code, name)
        for code in regions:
            maps[shadow][1].setdefault(code, name)
    shadow = maps[True]
    shadow_set = GroupSet(names, MappingProxyType(shadow[0]), MappingProxyType(shadow[1])) if any(shadow) else None
    return GroupSet(names, MappingProxyType(maps[False][0]), MappingProxyType(maps[False][1]), shadow_set)


@dataclass(frozen=True, slots=True)
class RuleSet:
    deny: GroupSet
    check_declared_country: bool
    deny_anonymizers: bool
    unknown_country: Verdict | None
    shadow: bool = False  # `mode: shadow`: every match is reported, none enforced


@dataclass(frozen=True, slots=True)
class Quota:
    requests_per_minute: int | None
    tokens_per_day: int | None


@dataclass(frozen=True, slots=True)
class Organization:
    id: str
    name: str
    country: str
    tier: Tier
    status: str
    status_reason: str | None
    vetted_until: date | None
    # Epoch seconds at which vetting lapses: the start of the day after
    # `vetted_until`, since the date is valid through its end (UTC).
    lapses_at: float | None
    quota: Quota | None = None

    def effective_tier(self, now: float) -> Tier:
        if self.lapses_at is not None and now >= self.lapses_at:
            return "standard"
        return self.tier


@dataclass(frozen=True, slots=True)
class Stage:
    name: StageName
    starts: datetime
    tiers: frozenset[Tier] | None  # None: every tier
    jurisdictions: GroupSet | None  # None: anywhere the rules do not deny


@dataclass(frozen=True, slots=True)
class Coverage:
    """Why a model is or is not covered: each threshold and its outcome."""

    covered: bool
    checks: tuple[tuple[str, float, float | None, bool | None], ...]  # evaluation, at_least, value, met
    mode: str  # "any" or "all"


@dataclass(frozen=True, slots=True)
class Suspension:
    id: str
    models: frozenset[str]
    scope: str  # "deny_outside" or "deny_in"
    groups: GroupSet
    starts: float | None
    ends: float | None
    reason: str
    reference: str | None
    mode: str

    def in_force(self, now: float) -> bool:
        return (self.starts is None or self.starts <= now) and (self.ends is None or now < self.ends)


@dataclass(frozen=True, slots=True)
class Model:
    id: str
    aliases: tuple[str, ...]
    upstream: str
    evaluations: Mapping[str, float]
    coverage: Coverage
    stages: tuple[Stage, ...]
    stage_starts: tuple[float, ...]
    suspensions: tuple[Suspension, ...]

    @property
    def covered(self) -> bool:
        return self.coverage.covered

    def stage_index(self, now: float) -> int:
        """Index of the stage in force (the last whose start <= now), or -1."""
        return bisect_right(self.stage_starts, now) - 1

    def stage_at(self, now: float) -> Stage | None:
        index = self.stage_index(now)
        return self.stages[index] if index >= 0 else None


@dataclass(frozen=True, slots=True)
class Assertion:
    """A compiled assertion of assertions.yaml: what must never (or always) be
    allowed over a scope of facts. A None field takes every value."""

    name: str
    kind: str  # "never_allow" or "always_allow"
    description: str
    source: str | None
    models: frozenset[str] | None  # model ids, aliases resolved
    covered: bool | None
    stages: frozenset[str] | None
    tiers: frozenset[Tier] | None  # the listed tier; `below_tier` is folded in
    organizations: frozenset[str] | None
    statuses: frozenset[str] | None
    vetting: str | None  # "current" or "lapsed" at the time
    places: GroupSet | None  # the observed place is in one of these (on any reading)
    outside: GroupSet | None  # the observed place is not admitted by these
    declared: GroupSet | None  # the org's declared country is in one of these
    anonymizer: bool | None
    unknown_place: bool | None
    starts: float | None  # inclusive
    ends: float | None  # exclusive; None: no end (also "before" a stage never scheduled)

    @property
    def never(self) -> bool:
        return self.kind == "never_allow"


@dataclass(frozen=True, slots=True)
class Policy:
    version: str
    review_window_max_days: int
    all_models: RuleSet
    covered_models: RuleSet
    # False: an unknown observed country is denied for every model, and the
    # `unknown_country` verdicts have no effect; True: they decide as written.
    allow_unknown_places: bool
    unknown_country: Verdict
    unknown_models: Verdict
    conceal_unreleased: bool
    organizations: Mapping[str, Organization]
    models: Mapping[str, Model]
    suspensions: tuple[Suspension, ...]
    groups: Mapping[str, GroupSet]
    quotas: Mapping[str, Quota]
    # The validated documents, by file, for explain, diff and the admin API.
    documents: Mapping[str, Any] = field(repr=False)
    # Canonical name or alias -> model.
    names: Mapping[str, Model] = field(repr=False)
    # Credentials suspended live (e.g. by credential-misuse detection): refused as invalid.
    suspended_credentials: frozenset[str] = frozenset()
    # assertions.yaml: checked by `gateway policy prove` (gateway/policy/prove.py), never by decide().
    assertions: tuple[Assertion, ...] = ()

    def model_named(self, requested: str) -> Model | None:
        return self.names.get(canonical_name(requested))

    def quota_for(self, org: Organization, tier: str) -> Quota | None:
        return org.quota or self.quotas.get(tier)

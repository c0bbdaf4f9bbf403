"""The shape of each policy file, as pydantic models.

These check types and required keys only; relations between entries (group
references, stage order, review windows) are checked in `validate.py`, where
every error can name its file, key path and line.
"""

from __future__ import annotations

import math
import re
from datetime import date
from typing import Annotated, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator

Tier = Literal["government", "vetted_partner", "verified", "standard"]
StageName = Literal["internal", "government_review", "limited_partner", "general"]
Verdict = Literal["allow", "deny"]
Mode = Literal["enforce", "shadow"]

# Tiers from most to least trusted (docs/policy.md).
TIERS: tuple[Tier, ...] = ("government", "vetted_partner", "verified", "standard")
# The only order a release timeline may take; each stage at most once.
STAGE_ORDER: tuple[StageName, ...] = ("internal", "government_review", "limited_partner", "general")

NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@/+-]{0,127}")
Name = Annotated[str, Field(pattern=f"^{NAME_PATTERN.pattern}$")]
Text = Annotated[str, Field(min_length=1, max_length=2000)]


class Entry(BaseModel):
    # Strict: YAML turns `yes`, `on` and `no` into booleans, which lax parsing
    # would quietly accept as 1.0 for a score or "True" for a name.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


# jurisdictions.yaml


class Group(Entry):
    countries: list[str] = []
    regions: list[str] = []
    include: list[Name] = []
    source: Text
    as_of: date | None = None
    notes: Text | None = None
    # shadow: deny rules report a match but do not enforce it (trialling a new list).
    mode: Mode = "enforce"


# framework.yaml


class Threshold(Entry):
    evaluation: Name
    at_least: float

    @field_validator("at_least")
    @classmethod
    def _finite(cls, value: float) -> float:
        if not math.isfinite(value):
            raise ValueError("must be a finite number")
        return value


class CoveredModel(Entry):
    any: list[Threshold] = []
    all: list[Threshold] = []


class RuleSet(Entry):
    deny_jurisdictions: list[Name] = []
    check_declared_country: bool = False
    deny_anonymizers: bool = False
    unknown_country: Verdict | None = None
    mode: Mode = "enforce"


class Rules(Entry):
    all_models: RuleSet = RuleSet()
    covered_models: RuleSet = RuleSet()


class Quota(Entry):
    requests_per_minute: int | None = Field(default=None, gt=0)
    tokens_per_day: int | None = Field(default=None, gt=0)


class Framework(Entry):
    covered_model: CoveredModel
    review_window_max_days: int = Field(ge=1, le=366)
    rules: Rules = Rules()
    # An observed place that cannot be established (no GeoIP record, a private
    # address, a trusted proxy that forwarded no address) is refused for every
    # model unless this is true; only then do the `unknown_country` verdicts apply.
    allow_unknown_places: bool = False
    unknown_country: Verdict = "allow"
    unknown_models: Verdict = "deny"
    conceal_unreleased: bool = True
    # Per tier; an organization's own `quota` replaces its tier's.
    quotas: dict[Tier, Quota] = {}


# organizations.yaml


class Organization(Entry):
    name: Text
    country: str
    tier: Tier = "standard"
    vetted_until: date | None = None
    status: Literal["active", "suspended", "denied"] = "active"
    status_reason: Text | None = None
    quota: Quota | None = None


# models.yaml


class Stage(Entry):
    stage: StageName
    from_: AwareDatetime = Field(alias="from")
    tiers: list[Tier] | None = None
    jurisdictions: list[Name] | None = None


class Waiver(Entry):
    reason: Text
    reference: Text | None = None


class Model(Entry):
    aliases: list[Name] = []
    upstream: Name = "default"
    evaluations: dict[Name, float] = {}
    release: list[Stage]
    review_waiver: Waiver | None = None
    description: Text | None = None

    @field_validator("evaluations")
    @classmethod
    def _finite(cls, value: dict[str, float]) -> dict[str, float]:
        for name, number in value.items():
            if not math.isfinite(number):
                raise ValueError(f"evaluation {name!r} must be a finite number")
        return value


# suspensions.yaml


class Suspension(Entry):
    id: Name
    models: list[Name] = Field(min_length=1)
    deny_outside: list[Name] | None = None
    deny_in: list[Name] | None = None
    from_: AwareDatetime | None = Field(default=None, alias="from")
    until: AwareDatetime | None = None
    reason: Text
    reference: Text | None = None
    mode: Mode = "enforce"


# assertions.yaml

Status = Literal["active", "suspended", "denied"]


class Before(Entry):
    """The instant a model's stage starts: the end of a time window."""

    stage: StageName
    model: Name


class Scope(Entry):
    """The facts an assertion speaks about. Every key narrows it; an absent key
    takes every value (every model, tier, place, time in the horizon...)."""

    models: list[Name] | None = Field(default=None, min_length=1)  # ids or aliases
    covered: bool | None = None
    stages: list[StageName] | None = Field(default=None, min_length=1)  # the stage in force at the time
    tiers: list[Tier] | None = Field(default=None, min_length=1)  # the tier the registry lists
    below_tier: Tier | None = None  # tiers less trusted than this one
    organizations: list[Name] | None = Field(default=None, min_length=1)
    statuses: list[Status] | None = Field(default=None, min_length=1)
    vetting: Literal["current", "lapsed"] | None = None
    jurisdictions: list[Name] | None = Field(default=None, min_length=1)  # groups or ISO codes
    outside: list[Name] | None = Field(default=None, min_length=1)
    declared: list[Name] | None = Field(default=None, min_length=1)  # the org's declared country
    anonymizer: bool | None = None
    unknown_place: bool | None = None
    from_: AwareDatetime | None = Field(default=None, alias="from")
    until: AwareDatetime | None = None
    before: Before | None = None


class Assertion(Entry):
    description: Text
    source: Text | None = None
    never_allow: Scope | None = None
    always_allow: Scope | None = None

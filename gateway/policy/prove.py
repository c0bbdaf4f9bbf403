"""Prove a bundle's assertions (assertions.yaml) over every fact, not a sample.

An assertion says that `decide()` never (or always) allows any request in a
scope: some models, stages, organizations, places, a time window. The facts are
infinite (every instant) or large (every org, country and region); the prover
makes them finite by reasoning about what `decide()` can tell apart, all of it
derived here, in `Partition`, from the bundle:

- **Time.** Every time comparison `decide()` makes is `start <= now` or
  `now < end` against a stage start, a vetting lapse, or a suspension's from or
  until. Between two consecutive such breakpoints nothing changes, so one
  instant per interval (its start) stands for all of it. Assertion windows add
  their own ends, so that an interval never straddles the scope.
- **Places.** `decide()` reads a place only through group lookups (a deny list
  `find`, an allow list `admits`). Countries in exactly the same groups are
  interchangeable; so is every region of the same kind. The candidates are each
  country, an unknown place, each region any group, suspension, assertion or
  the region overlay names (reported under its own country or under a country
  of any class, as a database may report Crimea under RU), and a region no one
  names; they are kept one per distinct lookup signature.
- **Organizations.** `decide()` reads an org's status, its effective tier at
  the time and its declared country (through the same groups). Besides every
  listed org, the prover adds the abstract org of each tier, status, vetting
  state and country class: an org the registry may list tomorrow, or a live
  change may make. An assertion naming orgs by id speaks of those only.
- **Models.** At one instant, models with the same coverage, the same stage
  rules in force and the same suspensions in force decide alike. A model name
  the bundle does not define is one more model (covered, in no stage).

Within a scope, two facts that agree on all of that get the same decision, so
checking one representative of each class at each instant is complete: PROVED
means no fact in the horizon violates; VIOLATED comes with a real fact that
does, and `decide()`'s decision and explanation there. Time enters a decision
only through the classes (the stage and suspensions in force, the effective
tier), so a pair of org and model classes already checked at an earlier instant
decides as it did there, and is not decided again.

A credential is assumed valid and the GeoIP database current: both only ever
deny, so they cannot break a `never_allow`, and an `always_allow` is a promise
about callers who present a valid key from a placeable address.

Pure: the time and the overlay's regions are arguments; no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from types import MappingProxyType
from typing import Any

from gateway.policy import countries
from gateway.policy import explain
from gateway.policy.decision import Decision, Facts, changes, decide
from gateway.policy.load import lapse_time
from gateway.policy.schema import TIERS
from gateway.policy.snapshot import Assertion, GroupSet, Model, Organization, Policy

Place = tuple[str | None, str | None]  # (country, region); (None, None) is an unknown place
OrgClass = tuple[str, str, int]  # status, effective tier, class of the declared country
UNKNOWN_PLACE: Place = (None, None)
DEFAULT_HORIZON_DAYS = 365
# Ids no bundle can use (names start with a letter or digit).
UNKNOWN_MODEL = "~unknown-model"
_ABSTRACT = "~"
STATUSES = ("active", "suspended", "denied")
VETTING = ("current", "lapsed")
# A region code no group names, for "a region the bundle does not name".
_UNNAMED = "ZZZ"


def _group_key(groups: GroupSet) -> tuple[frozenset[str], frozenset[str]]:
    return frozenset(groups.countries), frozenset(groups.regions)


def _group_sets(policy: Policy) -> list[GroupSet]:
    """Every group set `decide()` or an assertion reads a place through, once each by content."""
    found = [policy.all_models.deny, policy.covered_models.deny]
    for model in policy.models.values():
        found += [stage.jurisdictions for stage in model.stages if stage.jurisdictions is not None]
        found += [suspension.groups for suspension in model.suspensions]
    for assertion in policy.assertions:
        found += [g for g in (assertion.places, assertion.outside, assertion.declared) if g is not None]
    unique: dict[tuple[frozenset[str], frozenset[str]], GroupSet] = {}
    for groups in found:
        unique.setdefault(_group_key(groups), groups)
    return list(unique.values())


def breakpoints(policy: Policy) -> frozenset[float]:
    """Every instant at which some decision, or some assertion's scope, may change."""
    points = set(changes(policy))
    for assertion in policy.assertions:
        points.update(p for p in (assertion.starts, assertion.ends) if p is not None)
    return frozenset(points)


def _abstract_org(tier: str, status: str, vetting: str, country: str) -> Organization:
    # A lapsed one's vetting ran out long before any horizon.
    vetted_until = date(1970, 1, 1) if vetting == "lapsed" else None
    return Organization(id=f"{_ABSTRACT}{tier}/{status}/{vetting}/{country}", name="", country=country,
                        tier=tier, status=status, status_reason=None,  # type: ignore[arg-type]
                        vetted_until=vetted_until, lapses_at=lapse_time(vetted_until))


def is_abstract(org_id: str) -> bool:
    return org_id.startswith(_ABSTRACT)


@dataclass(frozen=True)
class Partition:
    """The finite facts that stand for all facts (see the module docstring)."""

    policy: Policy  # the bundle, with the abstract organizations added
    breakpoints: tuple[float, ...]
    places: tuple[Place, ...]
    country_class: Mapping[str, int]
    class_members: tuple[tuple[str, ...], ...]
    orgs: tuple[Organization, ...]  # listed first, so that a counterexample names a real one
    # The first of `orgs` with each tier, status, lapse and country class: the others
    # are in the same scopes and classes at every instant, unless an assertion names ids.
    kinds: tuple[Organization, ...]

    @classmethod
    def of(cls, policy: Policy, regions: Iterable[str] = ()) -> Partition:
        """`regions`: more regions a caller may be placed in (the region overlay's)."""
        sets = _group_sets(policy)
        signatures: dict[tuple[bool, ...], list[str]] = {}
        for code in sorted(countries.ALPHA2):
            signatures.setdefault(tuple(code in g.countries for g in sets), []).append(code)
        members = tuple(tuple(codes) for codes in signatures.values())
        country_class = {code: index for index, codes in enumerate(members) for code in codes}
        representatives = [codes[0] for codes in members]
        named = sorted({*regions, *(r for g in sets for r in g.regions)})
        candidates: list[Place] = [UNKNOWN_PLACE, *((code, None) for code in representatives)]
        for region in named:
            candidates += [(region[:2], region), *((code, region) for code in representatives)]
        candidates += [(code, f"{other}-{_UNNAMED}") for code in representatives for other in representatives]
        places: dict[tuple[bool, ...], Place] = {}
        for country, region in candidates:
            signature = tuple(flag for g in sets for flag in (g.find(country, region) is not None,
                                                               g.admits(country, region)))
            places.setdefault((country is None, *signature), (country, region))
        abstract = {org.id: org for org in (
            _abstract_org(tier, status, vetting, code)
            for tier in TIERS for status in STATUSES for vetting in VETTING for code in representatives)}
        extended = replace(policy, organizations=MappingProxyType({**policy.organizations, **abstract}))
        orgs = (*policy.organizations.values(), *abstract.values())
        kinds: dict[tuple[str, str, float | None, int], Organization] = {}
        for org in orgs:
            kinds.setdefault((org.tier, org.status, org.lapses_at, country_class[org.country]), org)
        return cls(extended, tuple(sorted(breakpoints(policy))), tuple(places.values()), country_class, members,
                   orgs, tuple(kinds.values()))

    def instants(self, start: float, end: float) -> list[float]:
        """One instant per interval on which decisions are constant, over [start, end)."""
        return [start, *(point for point in self.breakpoints if start < point < end)]

    def orgs_at(self, assertion: Assertion, now: float) -> dict[OrgClass, Organization]:
        """One in-scope organization per decision-relevant class at `now`."""
        found: dict[OrgClass, Organization] = {}
        for org in self.orgs if assertion.organizations is not None else self.kinds:
            if org_in_scope(assertion, org, now):
                found.setdefault((org.status, org.effective_tier(now), self.country_class[org.country]), org)
        return found

    def models_at(self, assertion: Assertion, now: float) -> dict[Any, str]:
        """One in-scope model name per decision-relevant class at `now`."""
        found: dict[Any, str] = {}
        for model in self.policy.models.values():
            if model_in_scope(assertion, model, now):
                stage = model.stage_at(now)
                places = None if stage is None or stage.jurisdictions is None else _group_key(stage.jurisdictions)
                rules = None if stage is None else (stage.name, stage.tiers, places)
                suspended = frozenset((s.scope, _group_key(s.groups), s.mode)
                                      for s in model.suspensions if s.in_force(now))
                found.setdefault((model.covered, rules, suspended), model.id)
        if unknown_model_in_scope(assertion):
            found[UNKNOWN_MODEL] = UNKNOWN_MODEL  # a class of its own: no id, in no stage
        return found

    def places_for(self, assertion: Assertion) -> list[tuple[Place, bool]]:
        return [(place, anonymizer) for place in self.places for anonymizer in (False, True)
                if place_in_scope(assertion, place, anonymizer)]


# Scope: which facts an assertion speaks about. `in_scope` is the whole rule; the
# prover applies its three parts separately, to filter before it multiplies.


def in_scope(assertion: Assertion, policy: Policy, facts: Facts, now: float) -> bool:
    org = policy.organizations.get(facts.org_id) if facts.org_id else None
    model = policy.model_named(facts.model) if facts.model else None
    if org is None or facts.model is None or facts.credential != "valid" or facts.geo_expired:
        return False  # the scope speaks of registered orgs calling with a valid key (module docstring)
    in_window = (assertion.starts is None or assertion.starts <= now) and (assertion.ends is None or now < assertion.ends)
    named = model_in_scope(assertion, model, now) if model is not None else unknown_model_in_scope(assertion)
    place = (facts.observed_country, facts.observed_region) if facts.observed_country else UNKNOWN_PLACE
    return (in_window and named and org_in_scope(assertion, org, now)
            and place_in_scope(assertion, place, facts.anonymizer))


def model_in_scope(assertion: Assertion, model: Model, now: float) -> bool:
    if assertion.models is not None and model.id not in assertion.models:
        return False
    if assertion.covered is not None and model.covered != assertion.covered:
        return False
    if assertion.stages is not None:
        stage = model.stage_at(now)
        return stage is not None and stage.name in assertion.stages
    return True


def unknown_model_in_scope(assertion: Assertion) -> bool:
    """A name the bundle does not define: no id, in no stage, covered (decide() applies
    the covered rules to it, since its coverage cannot be established)."""
    return assertion.models is None and assertion.stages is None and assertion.covered is not False


def org_in_scope(assertion: Assertion, org: Organization, now: float) -> bool:
    if assertion.organizations is not None and org.id not in assertion.organizations:
        return False
    if assertion.tiers is not None and org.tier not in assertion.tiers:
        return False
    if assertion.statuses is not None and org.status not in assertion.statuses:
        return False
    if assertion.vetting is not None:
        lapsed = org.lapses_at is not None and now >= org.lapses_at
        if lapsed != (assertion.vetting == "lapsed"):
            return False
    return assertion.declared is None or assertion.declared.match(org.country) is not None


def place_in_scope(assertion: Assertion, place: Place, anonymizer: bool) -> bool:
    """A `never_allow` reads its places as a deny list does (a place is in a group on
    any reading, and outside unless certainly in); an `always_allow` as an allow list
    does (in only if certainly in, outside only if in on no reading). Each way the
    promise covers the places it can keep."""
    country, region = place
    if assertion.anonymizer is not None and anonymizer != assertion.anonymizer:
        return False
    if assertion.unknown_place is not None and (country is None) != assertion.unknown_place:
        return False
    never = assertion.never
    if assertion.places is not None:
        inside = assertion.places.match(country, region) is not None if never else assertion.places.admits(country, region)
        if not inside:
            return False
    if assertion.outside is not None:
        if never:
            return not assertion.outside.admits(country, region)
        return country is not None and assertion.outside.match(country, region) is None
    return True


def violates(assertion: Assertion, decision: Decision) -> bool:
    return decision.allowed if assertion.never else not decision.allowed


# Proof


@dataclass(frozen=True, slots=True)
class Counterexample:
    facts: Facts
    at: datetime
    decision: Decision
    organization: Organization
    account: Mapping[str, Any]  # explain.as_json of the decision

    def as_json(self) -> dict[str, Any]:
        org = self.organization
        abstract = is_abstract(org.id)
        return {
            "org": None if abstract else org.id,
            "org_class": {"tier": org.tier, "status": org.status,
                          "vetting": "lapsed" if org.lapses_at is not None else "current",
                          "declared_country": org.country} if abstract else None,
            "model": None if self.facts.model == UNKNOWN_MODEL else self.facts.model,
            "observed_country": self.facts.observed_country,
            "observed_region": self.facts.observed_region,
            "anonymizer": self.facts.anonymizer,
            "at": explain.iso(self.at),
            "decision": self.decision.verdict,
            "status": self.decision.status,
            "reasons": [str(r) for r in self.decision.reasons],
            "explain": dict(self.account),
        }


@dataclass(frozen=True, slots=True)
class Outcome:
    assertion: Assertion
    counterexample: Counterexample | None
    decisions: int  # how many decide() calls the proof took
    window: tuple[datetime, datetime] | None  # the part of the horizon in scope; None: none of it

    @property
    def proved(self) -> bool:
        return self.counterexample is None

    @property
    def state(self) -> str:
        return "PROVED" if self.proved else "VIOLATED"

    def as_json(self) -> dict[str, Any]:
        a = self.assertion
        return {
            "name": a.name, "kind": a.kind, "description": a.description, "source": a.source,
            "state": self.state, "decisions": self.decisions,
            "window": None if self.window is None else {"from": explain.iso(self.window[0]),
                                                        "until": explain.iso(self.window[1])},
            "counterexample": None if self.counterexample is None else self.counterexample.as_json(),
        }


def prove(policy: Policy, now: datetime, *, horizon_days: float = DEFAULT_HORIZON_DAYS,
          regions: Iterable[str] = (), partition: Partition | None = None) -> list[Outcome]:
    """Each assertion of `policy`, PROVED or VIOLATED over [now, now + horizon)."""
    if not policy.assertions:
        return []
    partition = partition or Partition.of(policy, regions)
    start, end = now.timestamp(), (now + timedelta(days=horizon_days)).timestamp()
    return [prove_one(partition, assertion, start, end) for assertion in policy.assertions]


def prove_one(partition: Partition, assertion: Assertion, start: float, end: float) -> Outcome:
    start = max(start, assertion.starts if assertion.starts is not None else start)
    end = min(end, assertion.ends if assertion.ends is not None else end)
    if start >= end:
        return Outcome(assertion, None, 0, None)
    window = (_moment(start), _moment(end))
    places = partition.places_for(assertion)
    checked: set[tuple[OrgClass, Any]] = set()  # (org class, model class) pairs decided at earlier instants
    count = 0
    for instant in partition.instants(start, end):
        moment = _moment(instant)
        for model, org, facts in _facts(partition, assertion, instant, places, checked):
            count += 1
            decision = decide(partition.policy, facts, moment)
            if violates(assertion, decision):
                account = explain.as_json(partition.policy, facts, decision, moment)
                return Outcome(assertion, Counterexample(facts, moment, decision, org, account), count, window)
    return Outcome(assertion, None, count, window)


def _facts(partition: Partition, assertion: Assertion, instant: float, places: list[tuple[Place, bool]],
           checked: set[tuple[OrgClass, Any]]) -> Iterator[tuple[str, Organization, Facts]]:
    """The facts to decide at `instant`: each in-scope class, less the pairs in `checked` (added to it)."""
    models = partition.models_at(assertion, instant)
    if not models or not places:
        return
    for org_class, org in partition.orgs_at(assertion, instant).items():
        for model_class, model in models.items():
            if (org_class, model_class) in checked:
                continue
            checked.add((org_class, model_class))
            for (country, region), anonymizer in places:
                yield model, org, Facts(org.id, model, country, region, anonymizer)


def _moment(stamp: float) -> datetime:
    return datetime.fromtimestamp(stamp, UTC)


# Output


def as_json(outcomes: list[Outcome]) -> dict[str, Any]:
    return {"proved": all(o.proved for o in outcomes), "assertions": [o.as_json() for o in outcomes]}


def render(outcomes: list[Outcome]) -> str:
    if not outcomes:
        return "no assertions (assertions.yaml is absent or empty)"
    lines = []
    for outcome in outcomes:
        a = outcome.assertion
        span = "outside the horizon" if outcome.window is None else f"{outcome.decisions} decisions"
        lines.append(f"{outcome.state:<9} {a.name}: {a.description} ({span})")
        if outcome.counterexample is not None:
            lines += ["          " + line for line in describe(outcome.counterexample).splitlines()]
    return "\n".join(lines)


def describe(example: Counterexample) -> str:
    """The counterexample in a sentence, then the explanation of its decision."""
    facts, org = example.facts, example.organization
    if is_abstract(org.id):
        vetting = "lapsed" if org.lapses_at is not None else "current"
        who = (f"any {org.status} {org.tier} organization (vetting {vetting}) declared in {countries.label(org.country)}"
               f" or a country in the same groups")
    else:
        who = org.id
    model = "a model name the bundle does not define" if facts.model == UNKNOWN_MODEL else facts.model
    if facts.observed_country is None:
        where = "an unknown place"
    elif facts.observed_region is None:
        where = countries.label(facts.observed_country)
    elif facts.observed_region.endswith(f"-{_UNNAMED}"):
        where = f"a region of {facts.observed_region[:2]} no group names, reported under {facts.observed_country}"
    elif facts.observed_region[:2] == facts.observed_country:
        where = countries.label(facts.observed_region)
    else:
        where = f"{countries.label(facts.observed_region)} reported under {facts.observed_country}"
    through = " through an anonymizer" if facts.anonymizer else ""
    decision = example.decision
    reasons = f" ({', '.join(str(r) for r in decision.reasons)})" if decision.reasons else ""
    head = (f"counterexample: {who} calling {model} from {where}{through} at {explain.iso(example.at)}: "
            f"{decision.verdict} {decision.status}{reasons}")
    return "\n".join([head, *("  " + line for line in explain.render(example.account).splitlines())])


def state_changes(old: list[Outcome], new: list[Outcome]) -> list[dict[str, str | None]]:
    """Assertions whose state differs between two bundles (`policy diff`): None is
    an assertion the bundle does not have."""
    before = {o.assertion.name: o.state for o in old}
    after = {o.assertion.name: o.state for o in new}
    return [{"name": name, "old": before.get(name), "new": after.get(name)}
            for name in sorted(before.keys() | after.keys()) if before.get(name) != after.get(name)]


def render_changes(changes: list[dict[str, str | None]]) -> str:
    if not changes:
        return "Assertions: no assertion changes state."
    return "\n".join(["Assertions that change state:",
                      *(f"  {c['name']}: {c['old'] or 'absent'} -> {c['new'] or 'absent'}" for c in changes)])

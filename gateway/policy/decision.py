"""The pure decision core: `decide(policy, facts, now) -> Decision`.

No I/O, no clock, no environment: everything a decision depends on is in its
three arguments, so the same inputs always give the same decision and every
rule can be tested with a table (STYLE.md §1). The semantics (docs/policy.md):

- the org's effective tier is its tier until `vetted_until` has passed;
- the stage in force is the last one whose start is <= now;
- `rules.all_models` checks the observed place of every request;
- an observed place that is unknown is refused for every model unless the
  framework sets `allow_unknown_places`; only then do the `unknown_country`
  verdicts decide (a client address that cannot be established must never
  widen access, issue 12);
- a place is its reported country and its ISO 3166-2 region, which names its
  own country (a database may report Crimea, UA-43, under RU): a deny list
  matches any of them, an allow list admits the place only by its region or by
  every country it may be in (gateway/policy/snapshot.py `GroupSet`);
- covered models also get `rules.covered_models`, and with
  `check_declared_country` the org's declared country must pass the same rules,
  the stage's jurisdictions and any suspension;
- a covered model is unavailable (state_unavailable, 503) while the place comes
  from an expired GeoIP database (`Facts.geo_expired`, issue 13);
- every reason that applies is reported, most important first; the status
  comes from the first.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from gateway.policy.snapshot import Coverage, Model, Organization, Policy, RuleSet
from gateway.policy.reasons import Reason, order, status_of

Subject = Literal["observed", "declared"]
CredentialState = Literal["valid", "missing", "invalid"]


@dataclass(frozen=True, slots=True)
class Facts:
    """What the request path established about one request."""

    org_id: str | None
    model: str | None
    observed_country: str | None = None
    observed_region: str | None = None
    anonymizer: bool = False
    credential: CredentialState = "valid"
    # The place comes from a GeoIP database older than twice `geoip.max_age_days`
    # (gateway/geo/files.py): not trusted for covered models, which get 503.
    geo_expired: bool = False


@dataclass(frozen=True, slots=True)
class Match:
    """One rule that applied: which reason, which rule, for which place."""

    reason: Reason
    rule: str
    subject: Subject | None = None
    place: str | None = None
    group: str | None = None
    shadow: bool = False  # from a rule, group or suspension in `mode: shadow`: reported, not enforced

    def as_dict(self) -> dict[str, str | bool | None]:
        return {
            "reason": str(self.reason),
            "rule": self.rule,
            "subject": self.subject,
            "place": self.place,
            "group": self.group,
            "shadow": self.shadow,
        }


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    status: int
    reasons: tuple[Reason, ...]
    policy_version: str
    model: str | None = None
    stage: str | None = None
    covered: bool | None = None
    tier: str | None = None
    upstream: str | None = None
    # The model name to forward in place of the requested one (`models.M.upstream_model`).
    upstream_model: str | None = None
    matches: tuple[Match, ...] = ()
    # Reasons that shadow-mode rules would add if they were enforced.
    shadow: tuple[Reason, ...] = ()

    @property
    def verdict(self) -> str:
        return "allow" if self.allowed else "deny"

    @property
    def reason(self) -> Reason | None:
        return self.reasons[0] if self.reasons else None


_CREDENTIAL_REASONS = {"missing": Reason.CREDENTIAL_MISSING, "invalid": Reason.CREDENTIAL_INVALID}


def decide(policy: Policy, facts: Facts, now: datetime) -> Decision:
    """Decide one request. `now` must be timezone-aware."""
    if facts.credential != "valid":
        reason = _CREDENTIAL_REASONS[facts.credential]
        return Decision(False, status_of(reason), (reason,), policy.version, matches=(Match(reason, "identity"),))
    return _Evaluation(policy, facts, now.timestamp()).run()


def changes(policy: Policy) -> frozenset[float]:
    """Every instant (epoch seconds) at which some decision may change. `now` enters a
    decision only through `start <= now` (a stage's start, a vetting lapse, a
    suspension's from) and `now < end` (a suspension's until), so between two
    consecutive instants here, from one inclusive to the next exclusive, every
    decision is the same (the prover and the request path's memo rely on it)."""
    points: set[float] = set()
    for model in policy.models.values():
        points.update(model.stage_starts)
        for suspension in model.suspensions:
            points.update(p for p in (suspension.starts, suspension.ends) if p is not None)
    points.update(org.lapses_at for org in policy.organizations.values() if org.lapses_at is not None)
    return frozenset(points)


def decide_caller(policy: Policy, facts: Facts, now: datetime) -> Decision | None:
    """The denial that who is calling settles alone, or None. A missing or invalid
    credential and an unknown, denied or suspended organization outrank every other
    reason (reasons.PRECEDENCE), so no model could change that answer: the request
    path asks this before it reads the body, and a refused caller costs no parse.
    The denial also reports the rules that need no model (as `decide_listing`), so
    the record of a denied org calling from an embargoed country still says so.
    Any other request is then decided whole by `decide()`."""
    if facts.credential == "valid":
        evaluation = _Evaluation(policy, facts, now.timestamp())
        evaluation.check_organization()
        if not evaluation.matches:
            return None
    return decide_listing(policy, facts, now)


def decide_listing(policy: Policy, facts: Facts, now: datetime) -> Decision:
    """Decide a model-catalogue request (`GET /v1/models`): only the rules that do
    not depend on a model apply (credential, organization, all-model rules, an
    unknown place); the catalogue itself is then filtered with `decide()` per model."""
    if facts.credential != "valid":
        return decide(policy, facts, now)
    evaluation = _Evaluation(policy, facts, now.timestamp())
    tier = evaluation.check_organization()
    evaluation.check_rules(policy.all_models, Reason.JURISDICTION_EMBARGOED, "all_models", declared=False)
    if evaluation.check_unknown_place() and policy.all_models.unknown_country == "deny":
        evaluation.deny(Reason.JURISDICTION_UNKNOWN, "all_models.unknown_country", "observed")
    return evaluation.decision(None, None, None, tier, concealed=False)


class _Evaluation:
    """The state of one decision while its rules are applied."""

    __slots__ = ("policy", "facts", "now", "matches", "org", "declared")

    def __init__(self, policy: Policy, facts: Facts, now: float) -> None:
        self.policy = policy
        self.facts = facts
        self.now = now
        self.matches: list[Match] = []
        self.org: Organization | None = None
        self.declared: str | None = None

    def deny(self, reason: Reason, rule: str, subject: Subject | None = None,
             place: str | None = None, group: str | None = None, *, shadow: bool = False) -> None:
        self.matches.append(Match(reason, rule, subject, place, group, shadow))

    def run(self) -> Decision:
        policy, facts = self.policy, self.facts
        tier = self.check_organization()
        self.check_rules(policy.all_models, Reason.JURISDICTION_EMBARGOED, "all_models", declared=False)
        unknown_allowed = self.check_unknown_place()
        model = policy.model_named(facts.model) if facts.model is not None else None
        stage_name = None
        concealed = False
        if model is None:
            covered = self.check_unknown_model()
            if covered is None:  # denied: a 404, timed like a known model's
                self.stand_in(unknown_allowed)
        else:
            covered = model.covered
            stage_name, concealed = self.check_stage(model, tier)
        if covered is not None:
            self.check_coverage_rules(covered, unknown_allowed)
        if model is not None:
            self.check_suspensions(model)
        return self.decision(model, stage_name, covered, tier, concealed=concealed)

    def decision(self, model: Model | None, stage: str | None, covered: bool | None, tier: str | None,
                 *, concealed: bool) -> Decision:
        reasons = order({m.reason for m in self.matches if not m.shadow}, concealed=concealed)
        shadow = order({m.reason for m in self.matches if m.shadow}, concealed=concealed)
        ranked = reasons + shadow
        matches = tuple(sorted(self.matches, key=lambda m: (m.shadow, ranked.index(m.reason))))
        return Decision(
            allowed=not reasons,
            status=status_of(reasons[0], concealed=concealed) if reasons else 200,
            reasons=reasons,
            policy_version=self.policy.version,
            model=model.id if model else None,
            stage=stage,
            covered=covered,
            tier=tier,
            upstream=model.upstream if model else None,
            upstream_model=model.upstream_model if model else None,
            matches=matches,
            shadow=shadow,
        )

    def check_organization(self) -> str | None:
        org = self.policy.organizations.get(self.facts.org_id) if self.facts.org_id else None
        if org is None:
            self.deny(Reason.ORG_UNKNOWN, "organizations")
            return None
        self.org = org
        if org.status == "denied":
            self.deny(Reason.ORG_DENIED, "organizations.status")
        elif org.status == "suspended":
            self.deny(Reason.ORG_SUSPENDED, "organizations.status")
        return org.effective_tier(self.now)

    def stand_in(self, unknown_allowed: bool) -> None:
        """Evaluate the rules of a model in no stage yet, and drop what they find: an
        unknown model's 404 then takes about the time of a pre-GA one's (between a
        model not released and a concealed one), so that the time cannot tell a
        caller that a model it may not see exists (issue 12)."""
        kept = len(self.matches)
        self.check_stage(_STAND_IN, None)
        self.check_coverage_rules(True, unknown_allowed)
        self.check_suspensions(_STAND_IN)
        del self.matches[kept:]

    def check_unknown_model(self) -> bool | None:
        if self.policy.unknown_models == "deny":
            self.deny(Reason.MODEL_UNKNOWN, "framework.unknown_models")
            return None
        # Allowed through, but its coverage cannot be established: covered rules apply.
        return True

    def check_stage(self, model: Model, tier: str | None) -> tuple[str | None, bool]:
        stage = model.stage_at(self.now)
        if stage is None:
            self.deny(Reason.MODEL_NOT_RELEASED, "release")
            return None, False
        rule = f"release.{stage.name}"
        if tier is not None and stage.tiers is not None and tier not in stage.tiers:
            self.deny(Reason.TIER_NOT_PERMITTED, f"{rule}.tiers", place=tier)
        if stage.jurisdictions is not None:
            for subject, country, region in self.places(declared=self.checks_declared(model.covered)):
                if not stage.jurisdictions.admits(country, region):
                    self.deny(Reason.JURISDICTION_NOT_PERMITTED, f"{rule}.jurisdictions", subject, _where(country, region))
        concealed = self.policy.conceal_unreleased and stage.name != "general"
        return stage.name, concealed

    def check_coverage_rules(self, covered: bool, unknown_allowed: bool) -> None:
        rules = self.policy.covered_models
        if covered:
            self.check_rules(rules, Reason.JURISDICTION_OF_CONCERN, "covered_models", declared=rules.check_declared_country)
            if self.facts.geo_expired:
                self.deny(Reason.STATE_UNAVAILABLE, "geoip.max_age_days", "observed")
        if unknown_allowed:
            self.check_unknown_country(covered)

    def check_unknown_place(self) -> bool:
        """Whether the observed place is unknown and the framework lets unknown places
        on to the `unknown_country` verdicts; refused here otherwise, for every model."""
        if self.facts.observed_country is not None:
            return False
        if not self.policy.allow_unknown_places:
            self.deny(Reason.JURISDICTION_UNKNOWN, "framework.allow_unknown_places", "observed")
            return False
        return True

    def check_unknown_country(self, covered: bool) -> None:
        """With `allow_unknown_places`: `unknown_country` is set at the top level
        (models that are not covered), for covered models, and for all models; the
        most specific verdict applies."""
        policy = self.policy
        verdicts = [("all_models.unknown_country", policy.all_models.unknown_country, policy.all_models.shadow)]
        if covered and policy.covered_models.unknown_country is not None:
            verdicts.append(("covered_models.unknown_country", policy.covered_models.unknown_country,
                             policy.covered_models.shadow))
        else:
            verdicts.append(("framework.unknown_country", policy.unknown_country, False))
        denials = [(rule, shadow) for rule, verdict, shadow in verdicts if verdict == "deny"]
        # An enforced verdict wins; a shadow one is reported only when none is enforced.
        for rule, shadow in sorted(denials, key=lambda denial: denial[1])[:1]:
            self.deny(Reason.JURISDICTION_UNKNOWN, rule, "observed", shadow=shadow)

    def check_rules(self, rules: RuleSet, reason: Reason, name: str, *, declared: bool) -> None:
        deny = rules.deny
        for subject, country, region in self.places(declared=declared or rules.check_declared_country):
            found, shadow = deny.find(country, region), rules.shadow
            if found is None and deny.shadow is not None:
                found, shadow = deny.shadow.find(country, region), True
            if found is not None:
                group, place = found
                self.deny(reason, f"{name}.deny_jurisdictions", subject, place, group, shadow=shadow)
        if rules.deny_anonymizers and self.facts.anonymizer:
            self.deny(Reason.ANONYMIZER, f"{name}.deny_anonymizers", "observed", shadow=rules.shadow)

    def check_suspensions(self, model: Model) -> None:
        declared = self.checks_declared(model.covered)
        for suspension in model.suspensions:
            if not suspension.in_force(self.now):
                continue
            for subject, country, region in self.places(declared=declared):
                if suspension.scope == "deny_in":
                    denied = suspension.groups.match(country, region) is not None
                else:
                    denied = not suspension.groups.admits(country, region)
                if denied:
                    self.deny(Reason.EXPORT_SUSPENDED, f"suspensions.{suspension.id}", subject, _where(country, region),
                              shadow=suspension.mode == "shadow")

    def checks_declared(self, covered: bool) -> bool:
        return covered and self.policy.covered_models.check_declared_country

    def places(self, *, declared: bool) -> list[tuple[Subject, str | None, str | None]]:
        """The places a rule checks: the observed one, and the org's declared country."""
        places: list[tuple[Subject, str | None, str | None]] = [
            ("observed", self.facts.observed_country, self.facts.observed_region)
        ]
        if declared and self.org is not None:
            places.append(("declared", self.org.country, None))
        return places


def _where(country: str | None, region: str | None) -> str | None:
    """The place to name in a match: the country, or the region where it lies in
    another country than the one reported (so explain says "UA-23", not "RU")."""
    return region if region is not None and region[:2] != country else country


# The model an unknown name is timed as (see `_Evaluation.stand_in`): covered, with
# no stage.
_STAND_IN = Model(id="", aliases=(), upstream="", evaluations={}, coverage=Coverage(True, (), "any"),
                  stages=(), stage_starts=(), suspensions=())

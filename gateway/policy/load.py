"""Load a policy bundle: read, validate whole, compile into one snapshot.

A bundle is either accepted completely or refused with every error found
(file, key path, line); there is no partial policy. Entries are validated one
by one so that a broken entry is reported without hiding errors elsewhere.
"""

from __future__ import annotations

import gc
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path as FsPath
from types import MappingProxyType
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from gateway.policy import countries
from gateway.policy import schema, snapshot
from gateway.policy.issues import Issue, PolicyError, format_path, validation_message
from gateway.policy.yamlsource import Path, YamlDocument, YamlSyntaxError, parse

JURISDICTIONS = "jurisdictions.yaml"
FRAMEWORK = "framework.yaml"
ORGANIZATIONS = "organizations.yaml"
MODELS = "models.yaml"
SUSPENSIONS = "suspensions.yaml"
ASSERTIONS = "assertions.yaml"
FILES = (JURISDICTIONS, FRAMEWORK, ORGANIZATIONS, MODELS, SUSPENSIONS, ASSERTIONS)
OPTIONAL = frozenset({SUSPENSIONS, ASSERTIONS})
MAX_FILE_BYTES = 64 * 1024 * 1024

E = TypeVar("E", bound=BaseModel)


@dataclass(frozen=True)
class Loaded:
    policy: snapshot.Policy
    warnings: tuple[Issue, ...]


def load_bundle(directory: str | FsPath, *, now: datetime | None = None,
                placeable_regions: frozenset[str] | None = None) -> Loaded:
    """Read the bundle's files from `directory` and load them. With `now`, also
    warn about what is suspicious at that time (see `load_texts`)."""
    texts, problems = read_bundle(directory)
    return load_texts(texts, extra_issues=problems, now=now, placeable_regions=placeable_regions)


def read_bundle(directory: str | FsPath) -> tuple[dict[str, str], list[Issue]]:
    """The bundle's files as {name: text}, and problems reading them."""
    root = FsPath(directory)
    if not root.is_dir():
        raise PolicyError([Issue(str(root), "", "policy directory not found")])
    texts: dict[str, str] = {}
    problems: list[Issue] = []
    for path in sorted(root.glob("*.y*ml")):
        if path.name not in FILES:
            problems.append(Issue(path.name, "", f"unknown policy file (expected: {', '.join(FILES)})"))
            continue
        try:
            if path.stat().st_size > MAX_FILE_BYTES:
                problems.append(Issue(path.name, "", f"larger than {MAX_FILE_BYTES} bytes"))
                continue
            texts[path.name] = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            problems.append(Issue(path.name, "", f"cannot be read: {exc}"))
    return texts, problems


def load_texts(
    texts: Mapping[str, str], *, extra_issues: list[Issue] | None = None, now: datetime | None = None,
    placeable_regions: frozenset[str] | None = None,
) -> Loaded:
    """Load a bundle given as {file name: YAML text}.

    `now` only adds warnings that depend on the time (a suspension already
    expired, vetting lapsed or lapsing within 14 days); without it loading
    reads no clock and the same texts always give the same result.
    `placeable_regions`, the regions the embedded region overlay holds, adds a
    warning for each region a group names outside them: without a City
    database, no caller is ever placed there."""
    # A large registry builds millions of short-lived objects that the cyclic
    # GC would scan again and again (it doubled load time at 10^5 orgs).
    enabled = gc.isenabled()
    gc.disable()
    try:
        return _load(texts, extra_issues, now, placeable_regions)
    finally:
        if enabled:
            gc.enable()


def _load(texts: Mapping[str, str], extra_issues: list[Issue] | None, now: datetime | None,
          placeable_regions: frozenset[str] | None = None) -> Loaded:
    checker = _Checker(list(extra_issues or []), now, placeable_regions)
    docs = {name: checker.parse(name, texts.get(name)) for name in FILES}
    parts = checker.validate_files(docs)
    if checker.errors():
        raise PolicyError(checker.issues)
    if parts.framework is None:  # unreachable: a missing framework is an error above
        raise PolicyError(checker.issues)
    return Loaded(_compile(parts, parts.framework), tuple(checker.issues))


@dataclass
class _Parts:
    groups: dict[str, schema.Group] = field(default_factory=dict)
    framework: schema.Framework | None = None
    organizations: dict[str, schema.Organization] = field(default_factory=dict)
    models: dict[str, schema.Model] = field(default_factory=dict)
    suspensions: list[schema.Suspension] = field(default_factory=list)
    assertions: dict[str, schema.Assertion] = field(default_factory=dict)
    # Names of entries that failed validation: references to them are not
    # reported again as unknown.
    broken: set[tuple[str, str]] = field(default_factory=set)
    expanded: dict[str, tuple[dict[str, str], dict[str, str]]] = field(default_factory=dict)


# Vetting that lapses this soon is worth a warning (with `now`).
LAPSE_WARNING = timedelta(days=14)


class _Checker:
    def __init__(self, issues: list[Issue], now: datetime | None = None,
                 placeable_regions: frozenset[str] | None = None) -> None:
        self.issues = issues
        self.placeable_regions = placeable_regions
        self.docs: dict[str, YamlDocument] = {}
        # Time-relative warnings need a time; None: skip them (deterministic).
        self.now = None if now is None else (now if now.tzinfo else now.replace(tzinfo=UTC))

    def errors(self) -> list[Issue]:
        return [i for i in self.issues if i.severity == "error"]

    def report(self, file: str, path: Path, message: str, severity: str = "error") -> None:
        doc = self.docs.get(file)
        line = doc.line_of(path) if doc else None
        self.issues.append(Issue(file, format_path(path), message, line, severity))  # type: ignore[arg-type]

    def warn(self, file: str, path: Path, message: str) -> None:
        self.report(file, path, message, "warning")

    # Reading

    def parse(self, name: str, text: str | None) -> YamlDocument | None:
        if text is None:
            if name not in OPTIONAL:
                self.issues.append(Issue(name, "", "required file is missing"))
            return None
        try:
            doc = parse(text)
        except YamlSyntaxError as exc:
            self.issues.append(Issue(name, "", str(exc), exc.line))
            return None
        self.docs[name] = doc
        for path, line, message in doc.problems:
            self.issues.append(Issue(name, format_path(path), message, line))
        if doc.data is None:
            if name not in OPTIONAL:
                self.issues.append(Issue(name, "", "file is empty"))
            return None
        return doc

    def entry(self, file: str, path: Path, data: Any, model: type[E]) -> E | None:
        try:
            return model.model_validate(data)
        except ValidationError as exc:
            for err in exc.errors():
                loc = path + tuple(err["loc"])
                self.report(file, loc, validation_message(err))
            return None

    def section(self, file: str, doc: YamlDocument | None, key: str, kind: type) -> Any:
        """The file's single top-level `key`, checked to be of `kind`."""
        if doc is None:
            return kind()
        data = doc.data
        if not isinstance(data, dict):
            self.report(file, (), f"must be a mapping with the key {key!r}")
            return kind()
        for other in data:
            if other != key:
                self.report(file, (str(other),), f"unknown key (expected only {key!r})")
        value = data.get(key)
        if value is None:
            return kind()
        if not isinstance(value, kind):
            self.report(file, (key,), f"must be a {'mapping' if kind is dict else 'list'}")
            return kind()
        return value

    def named_entries(
        self, file: str, doc: YamlDocument | None, key: str, model: type[E], kind: str, parts: _Parts
    ) -> dict[str, E]:
        entries: dict[str, E] = {}
        for name, data in self.section(file, doc, key, dict).items():
            path: Path = (key, str(name))
            if not isinstance(name, str) or not _valid_name(name):
                self.report(file, path, "names may use letters, digits and . _ : @ / + - (at most 128)")
                continue
            entry = self.entry(file, path, data, model)
            if entry is None:
                parts.broken.add((kind, name))
            else:
                entries[name] = entry
        return entries

    # Validation

    def validate_files(self, docs: Mapping[str, YamlDocument | None]) -> _Parts:
        parts = _Parts()
        parts.groups = self.named_entries(
            JURISDICTIONS, docs[JURISDICTIONS], "groups", schema.Group, "group", parts
        )
        if docs[FRAMEWORK] is not None:
            parts.framework = self.entry(FRAMEWORK, (), docs[FRAMEWORK].data, schema.Framework)  # type: ignore[union-attr]
        parts.organizations = self.named_entries(
            ORGANIZATIONS, docs[ORGANIZATIONS], "organizations", schema.Organization, "org", parts
        )
        parts.models = self.named_entries(MODELS, docs[MODELS], "models", schema.Model, "model", parts)
        for index, data in enumerate(self.section(SUSPENSIONS, docs[SUSPENSIONS], "suspensions", list)):
            entry = self.entry(SUSPENSIONS, ("suspensions", index), data, schema.Suspension)
            if entry is not None:
                parts.suspensions.append(entry)
        parts.assertions = self.named_entries(
            ASSERTIONS, docs[ASSERTIONS], "assertions", schema.Assertion, "assertion", parts
        )
        self.check_groups(parts)
        self.check_framework(parts)
        self.check_organizations(parts)
        self.check_models(parts)
        self.check_suspensions(parts)
        self.check_assertions(parts)
        self.check_group_usage(parts)
        return parts

    def group_refs(self, file: str, path: Path, names: list[str], parts: _Parts) -> None:
        for index, name in enumerate(names):
            if name not in parts.groups and ("group", name) not in parts.broken:
                self.report(file, path + (index,), f"unknown jurisdiction group {name!r}")

    def place_refs(self, file: str, path: Path, names: list[str], parts: _Parts) -> None:
        """A suspension's entries: group names or ISO codes of single places."""
        for index, name in enumerate(names):
            if ("group", name) not in parts.broken and (problem := unknown_place(name, parts.groups)):
                self.report(file, path + (index,), problem)
            elif countries.is_region(name):
                self.warn_unplaceable(file, path + (index,), name)

    def warn_unplaceable(self, file: str, path: Path, region: str) -> None:
        """A region no caller is placed in without a City database (with `placeable_regions`)."""
        if self.placeable_regions is not None and region not in self.placeable_regions:
            overlay = (f"is not in the embedded region overlay ({', '.join(sorted(self.placeable_regions))})"
                       if self.placeable_regions else "is in no region overlay (geoip.region_overlay is false)")
            self.warn(file, path, f"{region!r} {overlay}: only a GeoIP2/GeoLite2 City database (geoip.country_db) "
                                  "can place a caller in it")

    def check_groups(self, parts: _Parts) -> None:
        for name, group in parts.groups.items():
            base: Path = ("groups", name)
            if countries.is_place(name):
                self.report(JURISDICTIONS, base, f"group name {name!r} is an ISO 3166 code, which a suspension reads "
                                                 "as the place itself; rename the group (e.g. lower-case)")
            for index, code in enumerate(group.countries):
                if not countries.is_country(code):
                    self.report(JURISDICTIONS, base + ("countries", index), f"{code!r} is not an ISO 3166-1 alpha-2 code")
            for index, code in enumerate(group.regions):
                if not countries.is_region(code):
                    self.report(JURISDICTIONS, base + ("regions", index), f"{code!r} is not an ISO 3166-2 code (CC-XXX)")
                else:
                    self.warn_unplaceable(JURISDICTIONS, base + ("regions", index), code)
            self.group_refs(JURISDICTIONS, base + ("include",), group.include, parts)
            if not (group.countries or group.regions or group.include):
                self.warn(JURISDICTIONS, base, "group is empty")
        for name in parts.groups:
            self.expand(name, parts, ())

    def expand(self, name: str, parts: _Parts, trail: tuple[str, ...]) -> tuple[dict[str, str], dict[str, str]]:
        """Countries and regions of a group with its includes; reports cycles."""
        if name in parts.expanded:
            return parts.expanded[name]
        group = parts.groups.get(name)
        if group is None:
            return {}, {}
        if name in trail:
            cycle = " -> ".join(trail[trail.index(name) :] + (name,))
            self.report(JURISDICTIONS, ("groups", name, "include"), f"include cycle: {cycle}")
            return {}, {}
        found_countries = {code: name for code in group.countries}
        found_regions = {code: name for code in group.regions}
        for included in group.include:
            inner_countries, inner_regions = self.expand(included, parts, trail + (name,))
            for code in inner_countries:
                found_countries.setdefault(code, name)
            for code in inner_regions:
                found_regions.setdefault(code, name)
        parts.expanded[name] = (found_countries, found_regions)
        return found_countries, found_regions

    def check_framework(self, parts: _Parts) -> None:
        framework = parts.framework
        if framework is None:
            return
        covered = framework.covered_model
        if bool(covered.any) == bool(covered.all):
            self.report(FRAMEWORK, ("covered_model",), "give exactly one of 'any' or 'all' with at least one threshold")
        for rule_name in ("all_models", "covered_models"):
            rules: schema.RuleSet = getattr(framework.rules, rule_name)
            path: Path = ("rules", rule_name, "deny_jurisdictions")
            self.group_refs(FRAMEWORK, path, rules.deny_jurisdictions, parts)
        self.check_unknown_places(framework)

    def check_unknown_places(self, framework: schema.Framework) -> None:
        """Warn when unknown places are let through, and when an `unknown_country:
        allow` is written where it cannot take effect (issue 12)."""
        if framework.allow_unknown_places:
            self.warn(FRAMEWORK, ("allow_unknown_places",),
                      "unknown places are allowed: a caller whose country cannot be established (no GeoIP record, "
                      "a private address, a proxy that forwarded no address) is decided by the unknown_country "
                      "settings and may be served")
            return
        allows: list[Path] = [("rules", name, "unknown_country") for name in ("all_models", "covered_models")
                              if getattr(framework.rules, name).unknown_country == "allow"]
        if "unknown_country" in framework.model_fields_set and framework.unknown_country == "allow":
            allows.append(("unknown_country",))
        for path in allows:
            self.warn(FRAMEWORK, path, "'allow' has no effect while unknown places are refused "
                                       "(allow_unknown_places is false): an unknown place is denied for every model")

    def check_group_usage(self, parts: _Parts) -> None:
        """Warn about groups nothing refers to, directly or through `include`."""
        if parts.framework is None or self.errors():
            return  # a bundle with errors has unknown or misspelt references: groups would look unused
        rules = parts.framework.rules
        used = {*rules.all_models.deny_jurisdictions, *rules.covered_models.deny_jurisdictions}
        for model in parts.models.values():
            for stage in model.release:
                used.update(stage.jurisdictions or ())
        for suspension in parts.suspensions:
            used.update(suspension.deny_outside or ())
            used.update(suspension.deny_in or ())
        for assertion in parts.assertions.values():
            for scope in (assertion.never_allow, assertion.always_allow):
                if scope is not None:
                    used.update((*(scope.jurisdictions or ()), *(scope.outside or ()), *(scope.declared or ())))
        pending = [name for name in used if name in parts.groups]
        while pending:
            for included in parts.groups[pending.pop()].include:
                if included in parts.groups and included not in used:
                    used.add(included)
                    pending.append(included)
        for name in parts.groups:
            if name not in used:
                self.warn(JURISDICTIONS, ("groups", name),
                          "group is not used: no rule, stage or suspension names it, directly or through include")

    def check_organizations(self, parts: _Parts) -> None:
        for name, org in parts.organizations.items():
            if not countries.is_country(org.country):
                self.report(ORGANIZATIONS, ("organizations", name, "country"), f"{org.country!r} is not an ISO 3166-1 alpha-2 code")
            self.check_vetting(name, org)

    def check_vetting(self, name: str, org: schema.Organization) -> None:
        base: Path = ("organizations", name)
        if org.tier == "vetted_partner" and org.vetted_until is None:
            self.warn(ORGANIZATIONS, base + ("tier",), "vetted_partner without vetted_until: the vetting never lapses")
        if org.tier == "standard" and org.vetted_until is not None:
            self.warn(ORGANIZATIONS, base + ("vetted_until",), "vetted_until has no effect on a standard organization")
        lapses = lapse_time(org.vetted_until)
        if self.now is None or lapses is None or org.tier == "standard" or org.status == "denied":
            return
        left = lapses - self.now.timestamp()
        if left <= 0:
            self.warn(ORGANIZATIONS, base + ("vetted_until",),
                      f"vetting lapsed after {org.vetted_until}: the organization counts as standard, not {org.tier}")
        elif left <= LAPSE_WARNING.total_seconds():
            self.warn(ORGANIZATIONS, base + ("vetted_until",),
                      f"vetting lapses in {round(left / 86400, 1):g} days (valid through {org.vetted_until}): "
                      f"the organization will then count as standard, not {org.tier}")

    def check_models(self, parts: _Parts) -> None:
        seen: dict[str, str] = {}
        for name, model in parts.models.items():
            base: Path = ("models", name)
            for label, path in [(name, base), *((a, base + ("aliases", i)) for i, a in enumerate(model.aliases))]:
                key = snapshot.canonical_name(label)
                if key in seen:
                    self.report(MODELS, path, f"name {label!r} is already used by model {seen[key]!r}")
                else:
                    seen[key] = name
            self.check_timeline(name, model, parts)

    def check_timeline(self, name: str, model: schema.Model, parts: _Parts) -> None:
        base: Path = ("models", name, "release")
        if not model.release:
            self.report(MODELS, base, "a release timeline needs at least one stage")
            return
        window = parts.framework.review_window_max_days if parts.framework else None
        for index, stage in enumerate(model.release):
            path = base + (index,)
            if stage.jurisdictions is not None:
                self.group_refs(MODELS, path + ("jurisdictions",), stage.jurisdictions, parts)
            if stage.stage == "government_review" and stage.tiers is not None and set(stage.tiers) - {"government"}:
                self.report(MODELS, path + ("tiers",), "a government_review stage admits only the government tier")
            self.check_audience(model, path, stage, parts)
            if index == 0:
                continue
            before = model.release[index - 1]
            order = schema.STAGE_ORDER
            if order.index(stage.stage) <= order.index(before.stage):
                self.report(
                    MODELS, path + ("stage",),
                    f"{stage.stage!r} cannot follow {before.stage!r} (stages run {' -> '.join(order)}, each at most once)",
                )
            if stage.from_ <= before.from_:
                self.report(MODELS, path + ("from",), f"must be later than the previous stage's start ({_iso(before.from_)})")
            if before.stage == "government_review" and window is not None:
                days = (stage.from_ - before.from_) / timedelta(days=1)
                if days > window:
                    self.report(
                        MODELS, base + (index - 1,),
                        f"government review lasts {days:g} days, longer than the framework's {window}-day window",
                    )
        if model.release[-1].stage == "government_review":
            self.warn(MODELS, base + (len(model.release) - 1,), "government review has no end: no later stage is scheduled")
        self.check_review_requirement(name, model, parts)

    def check_audience(self, model: schema.Model, path: Path, stage: schema.Stage, parts: _Parts) -> None:
        """Warn about a stage that is legal but open to no one (it never really
        starts), or open to more callers than its name suggests."""
        if stage.tiers is not None and not stage.tiers and stage.stage != "internal":
            self.warn(MODELS, path + ("tiers",), f"empty tiers admit no one: the {stage.stage} stage is never open to any caller")
        if stage.stage == "limited_partner" and stage.tiers is None:
            self.warn(MODELS, path, "limited_partner stage without tiers admits every tier; list the tiers it is limited to")
        if stage.jurisdictions is None:
            return
        if not stage.jurisdictions:
            self.warn(MODELS, path + ("jurisdictions",),
                      "empty jurisdictions admit no one: the stage is never open to any caller "
                      "(omit the key to allow anywhere the rules do not deny)")
            return
        if any(name not in parts.groups for name in stage.jurisdictions):
            return  # an unknown group is an error already
        admitted_countries: set[str] = set()
        admitted_regions: set[str] = set()
        for name in stage.jurisdictions:
            if _shadow(parts.groups[name]):
                continue  # a group in shadow mode admits no one
            inner_countries, inner_regions = parts.expanded.get(name, ({}, {}))
            admitted_countries.update(inner_countries)
            admitted_regions.update(inner_regions)
        if not admitted_countries and not admitted_regions:
            self.warn(MODELS, path + ("jurisdictions",),
                      "its jurisdictions contain no country or region: the stage is never open to any caller")
            return
        if parts.framework is None:
            return
        rule_names = ["all_models"]
        if _coverage(parts.framework.covered_model, model.evaluations).covered:
            rule_names.append("covered_models")
        denied_countries: set[str] = set()
        denied_regions: set[str] = set()
        for rule_name in rule_names:
            rules: schema.RuleSet = getattr(parts.framework.rules, rule_name)
            if _shadow(rules):
                continue
            for name in rules.deny_jurisdictions:
                if name in parts.groups and not _shadow(parts.groups[name]):
                    inner_countries, inner_regions = parts.expanded.get(name, ({}, {}))
                    denied_countries.update(inner_countries)
                    denied_regions.update(inner_regions)
        open_countries = admitted_countries - denied_countries
        open_regions = {r for r in admitted_regions - denied_regions if r[:2] not in denied_countries}
        if not open_countries and not open_regions:
            self.warn(MODELS, path + ("jurisdictions",),
                      f"every country and region of its jurisdictions is denied by rules.{' / rules.'.join(rule_names)}: "
                      "the stage is never open to any caller")

    def check_review_requirement(self, name: str, model: schema.Model, parts: _Parts) -> None:
        if parts.framework is None:
            return
        coverage = _coverage(parts.framework.covered_model, model.evaluations)
        stages = [stage.stage for stage in model.release]
        wider = any(stage in ("limited_partner", "general") for stage in stages)
        if coverage.covered and wider and "government_review" not in stages and model.review_waiver is None:
            self.report(
                MODELS, ("models", name, "release"),
                "covered model is released beyond government review without a government_review stage; "
                "add one or record a review_waiver with its reason",
            )
        if not coverage.covered and model.review_waiver is not None:
            self.warn(MODELS, ("models", name, "review_waiver"), "waiver on a model that is not covered")
        strict = _coverage(parts.framework.covered_model, model.evaluations, missing_meets=False)
        if coverage.covered and not strict.covered:
            missing = [c[0] for c in coverage.checks if c[2] is None]
            self.warn(
                MODELS, ("models", name, "evaluations"),
                f"treated as covered because {', '.join(missing)} is not recorded (fail closed)",
            )

    def check_suspensions(self, parts: _Parts) -> None:
        names = {snapshot.canonical_name(n) for n in parts.models}
        names |= {snapshot.canonical_name(a) for m in parts.models.values() for a in m.aliases}
        broken_models = {n for kind, n in parts.broken if kind == "model"}
        ids: set[str] = set()
        for index, suspension in enumerate(parts.suspensions):
            base: Path = ("suspensions", index)
            if suspension.id in ids:
                self.report(SUSPENSIONS, base + ("id",), f"duplicate suspension id {suspension.id!r}")
            ids.add(suspension.id)
            for position, model in enumerate(suspension.models):
                if snapshot.canonical_name(model) not in names and model not in broken_models:
                    self.report(SUSPENSIONS, base + ("models", position), f"unknown model {model!r}")
            scopes = [s for s in ("deny_outside", "deny_in") if getattr(suspension, s) is not None]
            if len(scopes) != 1:
                self.report(SUSPENSIONS, base, "give exactly one of deny_outside or deny_in")
            for scope in scopes:
                self.place_refs(SUSPENSIONS, base + (scope,), getattr(suspension, scope), parts)
            if suspension.from_ and suspension.until and suspension.until <= suspension.from_:
                self.report(SUSPENSIONS, base + ("until",), "must be later than 'from'")
            if suspension.deny_outside is not None and not suspension.deny_outside:
                self.warn(SUSPENSIONS, base + ("deny_outside",),
                          "empty deny_outside denies everywhere: every country is outside it")
            if suspension.deny_in is not None and not suspension.deny_in:
                self.warn(SUSPENSIONS, base + ("deny_in",), "empty deny_in denies nowhere: the suspension does nothing")
            if self.now is not None and suspension.until is not None and suspension.until <= self.now:
                self.warn(SUSPENSIONS, base + ("until",),
                          f"already expired at {_iso(suspension.until)}: the suspension no longer applies; remove it")


    def check_assertions(self, parts: _Parts) -> None:
        names = {snapshot.canonical_name(n) for n in parts.models}
        names |= {snapshot.canonical_name(a) for m in parts.models.values() for a in m.aliases}
        for name, assertion in parts.assertions.items():
            base: Path = ("assertions", name)
            kinds = [k for k in ("never_allow", "always_allow") if getattr(assertion, k) is not None]
            if len(kinds) != 1:
                self.report(ASSERTIONS, base, "give exactly one of never_allow or always_allow")
            for kind in kinds:
                self.check_scope(base + (kind,), getattr(assertion, kind), names, parts)

    def check_scope(self, path: Path, scope: schema.Scope, model_names: set[str], parts: _Parts) -> None:
        """References resolve, and no two keys contradict each other (a scope that
        could hold no fact would make its assertion hold for nothing)."""
        def known_model(key: Path, model: str) -> None:
            if snapshot.canonical_name(model) not in model_names and ("model", model) not in parts.broken:
                self.report(ASSERTIONS, key, f"unknown model {model!r}")
        for index, model in enumerate(scope.models or ()):
            known_model(path + ("models", index), model)
        for index, org in enumerate(scope.organizations or ()):
            if org not in parts.organizations and ("org", org) not in parts.broken:
                self.report(ASSERTIONS, path + ("organizations", index), f"unknown organization {org!r}")
        for key in ("jurisdictions", "outside", "declared"):
            self.place_refs(ASSERTIONS, path + (key,), getattr(scope, key) or [], parts)
        for index, entry in enumerate(scope.declared or ()):
            if countries.is_region(entry):
                self.report(ASSERTIONS, path + ("declared", index), "a declared country is a country, not a region")
        if scope.tiers is not None and scope.below_tier is not None:
            self.report(ASSERTIONS, path + ("below_tier",), "give tiers or below_tier, not both")
        if scope.below_tier == schema.TIERS[-1]:
            self.report(ASSERTIONS, path + ("below_tier",), f"no tier is below {scope.below_tier!r}")
        if scope.unknown_place and (scope.jurisdictions is not None or scope.anonymizer is not None):
            self.report(ASSERTIONS, path + ("unknown_place",),
                        "an unknown place is in no jurisdiction and has no anonymizer verdict: drop jurisdictions/anonymizer")
        if scope.before is not None:
            known_model(path + ("before", "model"), scope.before.model)
            if scope.until is not None:
                self.report(ASSERTIONS, path + ("before",), "give until or before, not both")
        if scope.from_ and scope.until and scope.until <= scope.from_:
            self.report(ASSERTIONS, path + ("until",), "must be later than 'from'")


def unknown_place(name: str, groups: Mapping[str, Any]) -> str | None:
    """Why a suspension's entry names nothing (neither one of `groups` nor an ISO
    3166 code), or None. `jp` is not Japan: a hint points to the code."""
    if countries.is_place(name) or name in groups:
        return None
    folded = name.strip().upper()
    hint = f" (did you mean {folded!r}?)" if countries.is_place(folded) else ""
    return f"unknown jurisdiction group {name!r}, nor an ISO 3166 code{hint}"


def _shadow(entry: BaseModel) -> bool:
    """A group or rule set in `mode: shadow`: it reports matches but enforces none."""
    return getattr(entry, "mode", "enforce") == "shadow"


def _valid_name(name: str) -> bool:
    return schema.NAME_PATTERN.fullmatch(name) is not None




def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


# Compiling


def _coverage(
    rule: schema.CoveredModel, evaluations: Mapping[str, float], *, missing_meets: bool = True
) -> snapshot.Coverage:
    """Apply the framework's thresholds. A missing evaluation counts as met by
    default: a model whose coverage cannot be established is treated as covered."""
    mode = "any" if rule.any else "all"
    thresholds = rule.any or rule.all
    checks = []
    outcomes = []
    for threshold in thresholds:
        value = evaluations.get(threshold.evaluation)
        met = None if value is None else value >= threshold.at_least
        checks.append((threshold.evaluation, threshold.at_least, value, met))
        outcomes.append(missing_meets if met is None else met)
    covered = (any if mode == "any" else all)(outcomes) if outcomes else False
    return snapshot.Coverage(covered, tuple(checks), mode)


def _group_set(names: list[str] | None, parts: _Parts) -> snapshot.GroupSet:
    if not names:
        return snapshot.EMPTY_GROUPS
    members = []
    for name in names:
        if countries.is_place(name):
            members.append(snapshot.place_member(name))
            continue
        listed, regions = parts.expanded.get(name, ({}, {}))
        members.append((name, listed, regions, parts.groups[name].mode == "shadow"))
    return snapshot.merge(tuple(names), members)


def _rule_set(rules: schema.RuleSet, parts: _Parts) -> snapshot.RuleSet:
    return snapshot.RuleSet(
        deny=_group_set(rules.deny_jurisdictions, parts),
        check_declared_country=rules.check_declared_country,
        deny_anonymizers=rules.deny_anonymizers,
        unknown_country=rules.unknown_country,
        shadow=rules.mode == "shadow",
    )


def lapse_time(vetted_until: date | None) -> float | None:
    if vetted_until is None:
        return None
    return datetime.combine(vetted_until + timedelta(days=1), time(), tzinfo=UTC).timestamp()


def _stage_tiers(stage: schema.Stage) -> frozenset[schema.Tier] | None:
    if stage.tiers is not None:
        return frozenset(stage.tiers)
    # Unlisted tiers: an internal stage admits no one from outside, a review
    # stage only governments (docs/policy.md); later stages admit every tier.
    return {"internal": frozenset(), "government_review": frozenset({"government"})}.get(stage.stage)


def _quota(quota: schema.Quota | None) -> snapshot.Quota | None:
    return None if quota is None else snapshot.Quota(quota.requests_per_minute, quota.tokens_per_day)


def _stamp(moment: datetime | None) -> float | None:
    return None if moment is None else moment.timestamp()


def _window_end(scope: schema.Scope, models: Mapping[str, schema.Model], names: Mapping[str, str]) -> float | None:
    """`until`, or the start of `before`'s stage of its model (None if never scheduled)."""
    if scope.before is None:
        return _stamp(scope.until)
    model = models[names[snapshot.canonical_name(scope.before.model)]]
    return next((s.from_.timestamp() for s in model.release if s.stage == scope.before.stage), None)


def _assertion(name: str, entry: schema.Assertion, parts: _Parts, names: Mapping[str, str]) -> snapshot.Assertion:
    kind = "never_allow" if entry.never_allow is not None else "always_allow"
    scope: schema.Scope = getattr(entry, kind)
    tiers = scope.tiers
    if scope.below_tier is not None:
        tiers = list(schema.TIERS[schema.TIERS.index(scope.below_tier) + 1:])
    def places(entries: list[str] | None) -> snapshot.GroupSet | None:
        return None if entries is None else _group_set(entries, parts)
    def some(values: list[str] | None) -> frozenset[str] | None:
        return None if values is None else frozenset(values)
    return snapshot.Assertion(
        name=name, kind=kind, description=entry.description, source=entry.source,
        models=None if scope.models is None else frozenset(names[snapshot.canonical_name(m)] for m in scope.models),
        covered=scope.covered, stages=some(scope.stages), tiers=some(tiers),  # type: ignore[arg-type]
        organizations=some(scope.organizations), statuses=some(scope.statuses), vetting=scope.vetting,
        places=places(scope.jurisdictions), outside=places(scope.outside), declared=places(scope.declared),
        anonymizer=scope.anonymizer, unknown_place=scope.unknown_place,
        starts=_stamp(scope.from_), ends=_window_end(scope, parts.models, names),
    )


def _compile(parts: _Parts, framework: schema.Framework) -> snapshot.Policy:
    names = {snapshot.canonical_name(n): n for n in parts.models}
    names |= {snapshot.canonical_name(a): n for n, m in parts.models.items() for a in m.aliases}
    suspensions = tuple(
        snapshot.Suspension(
            id=s.id,
            models=frozenset(names[snapshot.canonical_name(m)] for m in s.models),
            scope="deny_outside" if s.deny_outside is not None else "deny_in",
            groups=_group_set(s.deny_outside if s.deny_outside is not None else s.deny_in, parts),
            starts=_stamp(s.from_),
            ends=_stamp(s.until),
            reason=s.reason,
            reference=s.reference,
            mode=s.mode,
        )
        for s in parts.suspensions
    )
    models = {
        name: snapshot.Model(
            id=name,
            aliases=tuple(m.aliases),
            upstream=m.upstream,
            upstream_model=m.upstream_model,
            evaluations=MappingProxyType(dict(m.evaluations)),
            coverage=_coverage(framework.covered_model, m.evaluations),
            stages=tuple(
                snapshot.Stage(
                    name=s.stage,
                    starts=s.from_.astimezone(UTC),
                    tiers=_stage_tiers(s),
                    jurisdictions=None if s.jurisdictions is None else _group_set(s.jurisdictions, parts),
                )
                for s in m.release
            ),
            stage_starts=tuple(s.from_.timestamp() for s in m.release),
            suspensions=tuple(s for s in suspensions if name in s.models),
        )
        for name, m in parts.models.items()
    }
    organizations = {
        name: snapshot.Organization(
            id=name,
            name=o.name,
            country=o.country,
            tier=o.tier,
            status=o.status,
            status_reason=o.status_reason,
            vetted_until=o.vetted_until,
            lapses_at=lapse_time(o.vetted_until),
            quota=_quota(o.quota),
        )
        for name, o in parts.organizations.items()
    }
    documents = {
        JURISDICTIONS: {"groups": {n: g.model_dump(mode="json", exclude_none=True) for n, g in parts.groups.items()}},
        FRAMEWORK: framework.model_dump(mode="json", by_alias=True, exclude_none=True),
        ORGANIZATIONS: {
            "organizations": {n: o.model_dump(mode="json", exclude_none=True) for n, o in parts.organizations.items()}
        },
        MODELS: {
            "models": {n: m.model_dump(mode="json", by_alias=True, exclude_none=True) for n, m in parts.models.items()}
        },
        SUSPENSIONS: {
            "suspensions": [s.model_dump(mode="json", by_alias=True, exclude_none=True) for s in parts.suspensions]
        },
    }
    if parts.assertions:  # only then: a bundle without assertions keeps its version
        documents[ASSERTIONS] = {
            "assertions": {n: a.model_dump(mode="json", by_alias=True, exclude_none=True)
                           for n, a in parts.assertions.items()}
        }
    return snapshot.Policy(
        version=content_version(documents),
        review_window_max_days=framework.review_window_max_days,
        all_models=_rule_set(framework.rules.all_models, parts),
        covered_models=_rule_set(framework.rules.covered_models, parts),
        allow_unknown_places=framework.allow_unknown_places,
        unknown_country=framework.unknown_country,
        unknown_models=framework.unknown_models,
        conceal_unreleased=framework.conceal_unreleased,
        organizations=MappingProxyType(organizations),
        models=MappingProxyType(models),
        suspensions=suspensions,
        groups=MappingProxyType({name: _group_set([name], parts) for name in parts.groups}),
        quotas=MappingProxyType({tier: q for tier, q in ((t, _quota(v)) for t, v in framework.quotas.items()) if q}),
        documents=MappingProxyType(documents),
        names=MappingProxyType({key: models[name] for key, name in names.items()}),
        assertions=tuple(_assertion(name, entry, parts, names) for name, entry in parts.assertions.items()),
    )


def content_version(documents: Mapping[str, Any]) -> str:
    """A short hash of the canonical content: formatting and comments do not count."""
    canonical = json.dumps(documents, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]

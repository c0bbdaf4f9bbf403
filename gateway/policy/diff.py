"""The semantic difference between two policy bundles: what changed, and who
gains or loses access to what (`gateway policy diff OLD NEW`).

Two parts:

- **Changes**, entry by entry: jurisdiction groups that gained or lost countries
  or regions (with `include` expanded, so a change to a mirror shows in every
  group that includes it), framework settings, models whose covered status,
  stages or other fields changed, organizations and suspensions added, removed
  or changed.
- **The access delta**: `decide()` run under both bundles, at one time, over a
  grid of synthetic requests — every model of either bundle, one active
  organization per tier (never vetted-lapsed) whose declared country is the
  observed country, and every place: each ISO 3166-1 country, each region that
  a group of either bundle names (observed with its country), and an unknown
  country (the probe organization then declares no country either, so the
  decision is the unknown country's alone). Cells whose verdict flips between
  allow and deny are grouped by (model, tier, direction) with their places.
  Organizations whose own entry changed are also decided at their declared
  countries, since the tier grid cannot see them.

The grid is models x 4 tiers x ~255 places per bundle: 5 models take about
10^4 decisions (milliseconds); 10^4 models would take 10^7, so large bundles
should be compared a few models at a time (`models=`).

Pure: no clock (the time is an argument), no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any, Literal

from gateway.policy.countries import ALPHA2
from gateway.policy.decision import Decision, Facts, decide
from gateway.policy.load import FRAMEWORK, JURISDICTIONS, MODELS, ORGANIZATIONS, SUSPENSIONS
from gateway.policy.schema import TIERS
from gateway.policy.snapshot import GroupSet, Organization, Policy, Stage

ChangeKind = Literal["added", "removed", "changed"]
Direction = Literal["allow_to_deny", "deny_to_allow"]
# (country, region): (None, None) is an unknown country.
Place = tuple[str | None, str | None]

UNKNOWN: Place = (None, None)
# Probe organizations get ids no bundle can use (names start with a letter or digit).
_PROBE = "~probe"


@dataclass(frozen=True, slots=True)
class FieldChange:
    field: str
    old: Any
    new: Any

    def as_dict(self) -> dict[str, Any]:
        return {"field": self.field, "old": self.old, "new": self.new}


@dataclass(frozen=True, slots=True)
class EntryChange:
    """An organization, suspension or model field-level change."""

    name: str
    change: ChangeKind
    fields: tuple[FieldChange, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "change": self.change, "fields": [f.as_dict() for f in self.fields]}


@dataclass(frozen=True, slots=True)
class GroupChange:
    name: str
    change: ChangeKind
    gained: tuple[str, ...] = ()  # countries and regions, includes expanded
    lost: tuple[str, ...] = ()
    fields: tuple[FieldChange, ...] = ()  # include, source, as_of, notes, mode

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "change": self.change, "gained": list(self.gained), "lost": list(self.lost),
                "fields": [f.as_dict() for f in self.fields]}


@dataclass(frozen=True, slots=True)
class StageChange:
    stage: str
    change: ChangeKind
    fields: tuple[FieldChange, ...] = ()  # from, tiers, jurisdictions

    def as_dict(self) -> dict[str, Any]:
        return {"stage": self.stage, "change": self.change, "fields": [f.as_dict() for f in self.fields]}


@dataclass(frozen=True, slots=True)
class ModelChange:
    name: str
    change: ChangeKind
    covered: tuple[bool | None, bool | None] | None = None  # (old, new) when it changed
    stages: tuple[StageChange, ...] = ()
    fields: tuple[FieldChange, ...] = ()  # aliases, upstream, evaluations.*, review_waiver, ...

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "change": self.change,
            "covered": None if self.covered is None else {"old": self.covered[0], "new": self.covered[1]},
            "stages": [s.as_dict() for s in self.stages],
            "fields": [f.as_dict() for f in self.fields],
        }


@dataclass(frozen=True, slots=True)
class Flip:
    """Cells of the access grid whose verdict flips, for one model and one tier
    (or one organization, for `org_flips`)."""

    model: str
    who: str  # a tier, or an organization id
    direction: Direction
    places: tuple[Place, ...]
    # The first reason on the deny side (new decision for allow->deny, old for
    # deny->allow) -> the places it explains.
    reasons: Mapping[str, tuple[Place, ...]] = field(default_factory=dict)

    def as_dict(self, who: str = "tier") -> dict[str, Any]:
        return {
            "model": self.model,
            who: self.who,
            "direction": self.direction,
            "places": [place_name(p) for p in self.places],
            "reasons": {reason: [place_name(p) for p in places] for reason, places in self.reasons.items()},
        }


@dataclass(frozen=True)
class PolicyDiff:
    old_version: str
    new_version: str
    at: datetime
    groups: tuple[GroupChange, ...]
    framework: tuple[FieldChange, ...]
    models: tuple[ModelChange, ...]
    organizations: tuple[EntryChange, ...]
    suspensions: tuple[EntryChange, ...]
    # The access delta over the tier grid.
    access: tuple[Flip, ...]
    models_compared: tuple[str, ...]
    places: tuple[Place, ...]
    cells: int
    anonymizer: bool
    # Organizations whose own entry changed, decided at their declared countries.
    org_flips: tuple[Flip, ...] = ()

    @property
    def changed(self) -> bool:
        return bool(self.groups or self.framework or self.models or self.organizations or self.suspensions)


def place_name(place: Place) -> str:
    country, region = place
    return region or country or "unknown"


def diff(old: Policy, new: Policy, at: datetime, *, models: Iterable[str] | None = None,
         anonymizer: bool = False) -> PolicyDiff:
    """Everything that changed from `old` to `new`, and the access delta at `at`.

    `models` (ids or aliases of either bundle) restricts the access delta; the
    changes are always listed whole. Raises KeyError for a model in neither."""
    at = at if at.tzinfo else at.replace(tzinfo=UTC)
    compared = select_models(old, new, models)
    orgs = organization_changes(old, new)
    places = grid_places(old, new)
    access, cells = access_delta(old, new, at, compared, places, anonymizer=anonymizer)
    return PolicyDiff(
        old_version=old.version,
        new_version=new.version,
        at=at,
        groups=group_changes(old, new),
        framework=_field_changes(_flatten(old.documents[FRAMEWORK]), _flatten(new.documents[FRAMEWORK])),
        models=model_changes(old, new),
        organizations=orgs,
        suspensions=suspension_changes(old, new),
        access=access,
        models_compared=compared,
        places=places,
        cells=cells,
        anonymizer=anonymizer,
        org_flips=organization_delta(old, new, at, compared, [c.name for c in orgs], anonymizer=anonymizer),
    )


def select_models(old: Policy, new: Policy, names: Iterable[str] | None) -> tuple[str, ...]:
    if names is None:
        return tuple(sorted(set(old.models) | set(new.models)))
    chosen: list[str] = []
    for name in names:
        found = {m.id for m in (old.model_named(name), new.model_named(name)) if m is not None}
        if not found:
            raise KeyError(name)
        chosen.extend(sorted(found - set(chosen)))
    return tuple(chosen)


# Changes, entry by entry


def _members(groups: GroupSet | None) -> set[str]:
    """Countries and regions of a group (includes expanded), enforced or shadow."""
    if groups is None:
        return set()
    found = set(groups.countries) | set(groups.regions)
    shadow = getattr(groups, "shadow", None)
    if shadow is not None:
        found |= set(shadow.countries) | set(shadow.regions)
    return found


def group_changes(old: Policy, new: Policy) -> tuple[GroupChange, ...]:
    old_docs = old.documents[JURISDICTIONS]["groups"]
    new_docs = new.documents[JURISDICTIONS]["groups"]
    changes = []
    for name in sorted(set(old.groups) | set(new.groups)):
        before, after = _members(old.groups.get(name)), _members(new.groups.get(name))
        kind = _kind(name in old.groups, name in new.groups)
        fields = ()
        if kind == "changed":
            fields = _field_changes(_group_fields(old_docs[name]), _group_fields(new_docs[name]))
            if before == after and not fields:
                continue
        changes.append(GroupChange(name, kind, tuple(sorted(after - before)), tuple(sorted(before - after)), fields))
    return tuple(changes)


def _group_fields(document: Mapping[str, Any]) -> dict[str, Any]:
    # The lists themselves are compared expanded, as gained/lost places.
    return {k: v for k, v in document.items() if k not in ("countries", "regions")}


def model_changes(old: Policy, new: Policy) -> tuple[ModelChange, ...]:
    old_docs = old.documents[MODELS]["models"]
    new_docs = new.documents[MODELS]["models"]
    changes = []
    for name in sorted(set(old.models) | set(new.models)):
        before, after = old.models.get(name), new.models.get(name)
        kind = _kind(before is not None, after is not None)
        if kind != "changed":
            model = before or after
            assert model is not None
            changes.append(ModelChange(name, kind, (before.covered if before else None, after.covered if after else None),
                                       tuple(StageChange(s.name, kind) for s in model.stages)))
            continue
        assert before is not None and after is not None
        covered = (before.covered, after.covered) if before.covered != after.covered else None
        stages = _stage_changes(before.stages, after.stages)
        fields = _field_changes(_model_fields(old_docs[name]), _model_fields(new_docs[name]))
        if covered or stages or fields:
            changes.append(ModelChange(name, kind, covered, stages, fields))
    return tuple(changes)


def _model_fields(document: Mapping[str, Any]) -> dict[str, Any]:
    return _flatten({k: v for k, v in document.items() if k != "release"})


def stage_summary(stage: Stage) -> dict[str, Any]:
    """A stage as data: start, admitted tiers (None: every tier), jurisdictions (None: anywhere)."""
    return {
        "from": _iso(stage.starts),
        "tiers": None if stage.tiers is None else [t for t in TIERS if t in stage.tiers],
        "jurisdictions": None if stage.jurisdictions is None else list(stage.jurisdictions.names),
    }


def _stage_changes(before: tuple[Stage, ...], after: tuple[Stage, ...]) -> tuple[StageChange, ...]:
    old = {s.name: s for s in before}
    new = {s.name: s for s in after}
    order = [s.name for s in after] + [s.name for s in before if s.name not in new]
    changes = []
    for name in order:
        kind = _kind(name in old, name in new)
        if kind == "changed":
            fields = _field_changes(stage_summary(old[name]), stage_summary(new[name]))
            if fields:
                changes.append(StageChange(name, kind, fields))
        else:
            stage = old.get(name) or new[name]
            summary = stage_summary(stage)
            changes.append(StageChange(name, kind, tuple(
                FieldChange(k, v if kind == "removed" else None, v if kind == "added" else None)
                for k, v in summary.items())))
    return tuple(changes)


def organization_changes(old: Policy, new: Policy) -> tuple[EntryChange, ...]:
    return _entry_changes(old.documents[ORGANIZATIONS]["organizations"], new.documents[ORGANIZATIONS]["organizations"])


def suspension_changes(old: Policy, new: Policy) -> tuple[EntryChange, ...]:
    def by_id(policy: Policy) -> dict[str, Any]:
        return {s["id"]: {k: v for k, v in s.items() if k != "id"} for s in policy.documents[SUSPENSIONS]["suspensions"]}

    return _entry_changes(by_id(old), by_id(new))


def _entry_changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> tuple[EntryChange, ...]:
    changes = []
    for name in sorted(set(old) | set(new)):
        kind = _kind(name in old, name in new)
        before = _flatten(old.get(name, {}))
        after = _flatten(new.get(name, {}))
        fields = _field_changes(before, after)
        if kind != "changed" or fields:
            changes.append(EntryChange(name, kind, fields))
    return tuple(changes)


def _kind(in_old: bool, in_new: bool) -> ChangeKind:
    return "changed" if in_old and in_new else ("added" if in_new else "removed")


def _flatten(document: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in document.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(_flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def _field_changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> tuple[FieldChange, ...]:
    return tuple(
        FieldChange(key, old.get(key), new.get(key))
        for key in sorted(set(old) | set(new))
        if old.get(key) != new.get(key)
    )


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


# The access delta


def grid_places(old: Policy, new: Policy) -> tuple[Place, ...]:
    """Every country, every region a group or suspension of either bundle names, and unknown."""
    regions = set()
    for policy in (old, new):
        for groups in (*policy.groups.values(), *(s.groups for s in policy.suspensions)):
            regions |= {code for code in _members(groups) if "-" in code}
    return (
        *((country, None) for country in sorted(ALPHA2)),
        *((region.split("-", 1)[0], region) for region in sorted(regions)),
        UNKNOWN,
    )


def _probe_id(tier: str, country: str | None) -> str:
    return f"{_PROBE}/{tier}/{country or 'unknown'}"


def with_probes(policy: Policy, countries: Iterable[str | None]) -> Policy:
    """`policy` with one active, never-lapsing probe organization per tier and
    declared country. An unknown country's probe declares none (None): it then
    passes every deny list and fails every allow list, exactly as the unknown
    observed country already does, so it adds nothing of its own."""
    probes = {
        _probe_id(tier, country): Organization(
            id=_probe_id(tier, country), name=f"probe {tier} {country or 'unknown'}",
            country=country,  # type: ignore[arg-type]
            tier=tier, status="active", status_reason=None, vetted_until=None, lapses_at=None,
        )
        for tier in TIERS
        for country in countries
    }
    return replace(policy, organizations=MappingProxyType({**policy.organizations, **probes}))


def access_delta(old: Policy, new: Policy, at: datetime, models: Iterable[str], places: Iterable[Place], *,
                 anonymizer: bool = False) -> tuple[tuple[Flip, ...], int]:
    """Flips of the tier grid, grouped by (model, tier, direction); and the number of cells."""
    places = tuple(places)
    countries = {country for country, _ in places}
    before, after = with_probes(old, countries), with_probes(new, countries)
    flips: list[Flip] = []
    cells = 0
    for model in models:
        for tier in TIERS:
            found: dict[Direction, list[tuple[Place, Decision, Decision]]] = {"allow_to_deny": [], "deny_to_allow": []}
            for place in places:
                country, region = place
                facts = Facts(_probe_id(tier, country), model, country, region, anonymizer)
                was, now = decide(before, facts, at), decide(after, facts, at)
                cells += 1
                if was.allowed != now.allowed:
                    found["deny_to_allow" if now.allowed else "allow_to_deny"].append((place, was, now))
            flips.extend(_flip(model, tier, direction, cells_) for direction, cells_ in found.items() if cells_)
    return tuple(flips), cells


def organization_delta(old: Policy, new: Policy, at: datetime, models: Iterable[str], org_ids: Iterable[str], *,
                       anonymizer: bool = False) -> tuple[Flip, ...]:
    """For organizations whose entry changed: flips at their declared countries (old and new)."""
    flips: list[Flip] = []
    for org_id in org_ids:
        declared = {o.country for o in (old.organizations.get(org_id), new.organizations.get(org_id)) if o}
        for model in models:
            found: dict[Direction, list[tuple[Place, Decision, Decision]]] = {"allow_to_deny": [], "deny_to_allow": []}
            for country in sorted(declared):
                facts = Facts(org_id, model, country, None, anonymizer)
                was, now = decide(old, facts, at), decide(new, facts, at)
                if was.allowed != now.allowed:
                    found["deny_to_allow" if now.allowed else "allow_to_deny"].append(((country, None), was, now))
            flips.extend(_flip(model, org_id, direction, cells) for direction, cells in found.items() if cells)
    return tuple(flips)


def _flip(model: str, who: str, direction: Direction, cells: list[tuple[Place, Decision, Decision]]) -> Flip:
    reasons: dict[str, list[Place]] = {}
    for place, was, now in cells:
        denied = now if direction == "allow_to_deny" else was
        reasons.setdefault(str(denied.reason) if denied.reason else "none", []).append(place)
    return Flip(model, who, direction, tuple(place for place, _, _ in cells),
                MappingProxyType({reason: tuple(places) for reason, places in reasons.items()}))


# Output


def as_json(result: PolicyDiff) -> dict[str, Any]:
    return {
        "old_version": result.old_version,
        "new_version": result.new_version,
        "at": _iso(result.at),
        "changes": {
            "groups": [c.as_dict() for c in result.groups],
            "framework": [f.as_dict() for f in result.framework],
            "models": [c.as_dict() for c in result.models],
            "organizations": [c.as_dict() for c in result.organizations],
            "suspensions": [c.as_dict() for c in result.suspensions],
        },
        "access": {
            "grid": {
                "models": list(result.models_compared),
                "tiers": list(TIERS),
                "places": len(result.places),
                "cells": result.cells,
                "organization": "one active organization per tier; declared country = observed country "
                                "(none for an unknown country)",
                "anonymizer": result.anonymizer,
            },
            "flips": [f.as_dict("tier") for f in result.access],
            "organization_flips": [f.as_dict("org") for f in result.org_flips],
        },
    }


_ARROW = {"allow_to_deny": "allow -> deny", "deny_to_allow": "deny -> allow"}
_MARK = {"added": "+", "removed": "-", "changed": "~"}


def render(result: PolicyDiff, old_name: str = "OLD", new_name: str = "NEW") -> str:
    lines = [f"Policy diff: {old_name} (version {result.old_version}) -> {new_name} (version {result.new_version})"]
    if not result.changed:
        lines.append("No semantic change.")
    if result.groups:
        lines += ["", "Jurisdiction groups (includes expanded):"]
        for group in result.groups:
            parts = []
            if group.gained:
                parts.append("gains " + ", ".join(group.gained))
            if group.lost:
                parts.append("loses " + ", ".join(group.lost))
            parts += [_describe_field(f) for f in group.fields]
            lines.append(f"  {_MARK[group.change]} {group.name}" + (": " + "; ".join(parts) if parts else ""))
    if result.framework:
        lines += ["", "Framework:"] + [f"  ~ {_describe_field(f)}" for f in result.framework]
    if result.models:
        lines += ["", "Models:"]
        for model in result.models:
            lines.append(f"  {_MARK[model.change]} {model.name}")
            if model.covered is not None:
                lines.append(f"      covered: {_yes(model.covered[0])} -> {_yes(model.covered[1])}")
            for stage in model.stages:
                if stage.change == "changed":
                    lines.append(f"      stage {stage.stage}: " + "; ".join(_describe_field(f) for f in stage.fields))
                else:
                    side = {f.field: (f.new if stage.change == "added" else f.old) for f in stage.fields}
                    lines.append(f"      stage {stage.stage} {stage.change}" + (f" (from {side['from']})" if side else ""))
            lines += [f"      {_describe_field(f)}" for f in model.fields]
    for title, entries in (("Organizations", result.organizations), ("Suspensions", result.suspensions)):
        if entries:
            lines += ["", f"{title}:"]
            for entry in entries:
                if entry.change == "changed":
                    fields = "; ".join(_describe_field(f) for f in entry.fields)
                else:  # the whole entry, as it is added or was
                    fields = "; ".join(f"{f.field} {_value(f.new if entry.change == 'added' else f.old)}"
                                       for f in entry.fields)
                lines.append(f"  {_MARK[entry.change]} {entry.name}" + (f": {fields}" if fields else ""))
    lines += ["", *_render_access(result)]
    return "\n".join(lines)


def _render_access(result: PolicyDiff) -> list[str]:
    lines = [
        f"Access at {_iso(result.at)}: decide() under both bundles for {len(result.models_compared)} model(s) x "
        f"{len(TIERS)} tiers x {len(result.places)} places ({result.cells} cells), one active organization per tier "
        f"whose declared country is the observed country"
        + (", through an anonymizer" if result.anonymizer else ", no anonymizer") + ".",
    ]
    if not result.access:
        lines.append("  No decision flips between allow and deny.")
    # Tiers with the same flips are listed together.
    merged: dict[tuple[str, str, tuple[Place, ...], tuple[tuple[str, tuple[Place, ...]], ...]], list[str]] = {}
    for flip in result.access:
        key = (flip.model, flip.direction, flip.places, tuple(flip.reasons.items()))
        merged.setdefault(key, []).append(flip.who)
    for (model, direction, _, reasons), tiers in merged.items():
        lines.append(f"  {model} [{', '.join(tiers)}] {_ARROW[direction]}:")
        lines += [f"      {reason}: {_places(places, result.places)}" for reason, places in reasons]
    if result.org_flips:
        lines += ["", "Organizations whose entry changed, at their declared countries:"]
        for flip in result.org_flips:
            reasons = "; ".join(f"{reason}: {_places(places)}" for reason, places in flip.reasons.items())
            lines.append(f"  {flip.who} {flip.model} {_ARROW[flip.direction]} ({reasons})")
    return lines


def _places(places: Iterable[Place], grid: tuple[Place, ...] = ()) -> str:
    """The places, or — when they are most of the grid — the grid without the others."""
    places = tuple(places)
    if grid and len(places) > len(grid) / 2:
        listed = set(places)
        others = [p for p in grid if p not in listed]
        if not others:
            return f"every place ({len(places)})"
        return f"every place but {', '.join(place_name(p) for p in others)} ({len(places)} places)"
    return ", ".join(place_name(p) for p in places)


def _describe_field(change: FieldChange) -> str:
    return f"{change.field} {_value(change.old)} -> {_value(change.new)}"


def _value(value: Any) -> str:
    if value is None:
        return "(none)"
    if isinstance(value, list):
        return "[" + ", ".join(str(v) for v in value) + "]"
    return str(value)


def _yes(value: bool | None) -> str:
    return "(absent)" if value is None else ("yes" if value else "no")

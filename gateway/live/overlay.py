"""Live changes on top of a policy bundle (docs/admin-api.md): suspensions created and
lifted, and organization overrides, made through the admin API.

Pure: an `Overlay` is data, `check_*` validate one change against the bundle
(every error at once, in the admin API's terms), and `apply()` derives the
effective snapshot incrementally — only the organizations and models a change
touches are rebuilt, so a change takes effect in milliseconds even on a
registry of 10^5 organizations. The effective version is a hash of the bundle's
version and the overlay, so every change produces a new version.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import date, datetime
from types import MappingProxyType
from typing import Any

from pydantic import ValidationError

from gateway.policy import prove, schema
from gateway.policy import countries
from gateway.policy.load import lapse_time, unknown_place
from gateway.policy.snapshot import Member, Organization, Policy, Suspension, merge, place_member

log = logging.getLogger("gateway.live")

ORG_FIELDS = ("status", "tier", "vetted_until", "status_reason")


@dataclass(frozen=True)
class Overlay:
    # Live suspensions by id, as validated suspension documents (JSON-ready).
    suspensions: Mapping[str, dict[str, Any]] = field(default_factory=dict)
    # Ids of bundle suspensions lifted live.
    lifted: frozenset[str] = frozenset()
    # Organization id -> the fields that override the bundle's record.
    organizations: Mapping[str, dict[str, Any]] = field(default_factory=dict)
    # Credential id -> why it was suspended.
    credentials: Mapping[str, dict[str, Any]] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {
            "suspensions": dict(sorted(self.suspensions.items())),
            "lifted": sorted(self.lifted),
            "organizations": dict(sorted(self.organizations.items())),
            "credentials": dict(sorted(self.credentials.items())),
        }

    def empty(self) -> bool:
        return not (self.suspensions or self.lifted or self.organizations or self.credentials)


class ChangeError(Exception):
    """A live change was refused; `problems` names every field at fault."""

    def __init__(self, problems: list[str], status: int = 422) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems
        self.status = status


# Checking one change


def check_suspension(base: Policy, overlay: Overlay, data: Mapping[str, Any], new_id: str) -> dict[str, Any]:
    """Validate a suspension for POST /admin/suspensions; return its document.
    Shape and references are checked together, so every problem is named at once."""
    document = {"id": new_id, **data}
    if new_id in _suspension_ids(base, overlay):
        raise ChangeError([f"id: a suspension {new_id!r} exists already"], status=409)
    problems = []
    try:
        suspension = schema.Suspension.model_validate(document, strict=False)
    except ValidationError as exc:
        suspension = None
        problems += [f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in exc.errors()]
    problems += [f"models: unknown model {m!r}" for m in _strings(data.get("models")) if base.model_named(m) is None]
    scopes = [s for s in ("deny_outside", "deny_in") if data.get(s) is not None]
    if len(scopes) != 1:
        problems.append("give exactly one of deny_outside or deny_in")
    for scope in scopes:
        problems += [f"{scope}: {problem}" for g in _strings(data.get(scope)) if (problem := unknown_place(g, base.groups))]
    if suspension is not None and suspension.from_ and suspension.until and suspension.until <= suspension.from_:
        problems.append("until: must be later than 'from'")
    if problems or suspension is None:
        raise ChangeError(problems)
    document = suspension.model_dump(mode="json", by_alias=True, exclude_none=True)
    return document | {"expanded": expand(base, _entries(document))}


def expand(base: Policy, entries: list[str]) -> dict[str, dict[str, list[str]]]:
    """The places each entry of a suspension stands for in `base`, as recorded with
    the suspension when it is made: it keeps denying what the operator saw, and
    every tool can show it, even after a bundle changes the group (issue 14)."""
    expanded = {}
    for name in entries:
        _, listed, regions, _ = place_member(name) if countries.is_place(name) else (
            name, base.groups[name].countries, base.groups[name].regions, False)
        expanded[name] = {"countries": sorted(listed), "regions": sorted(regions)}
    return expanded


def _entries(document: Mapping[str, Any]) -> list[str]:
    return _strings(document.get("deny_outside") if document.get("deny_outside") is not None else document.get("deny_in"))


def _strings(value: Any) -> list[str]:
    return [item for item in value if isinstance(item, str)] if isinstance(value, list) else []


def check_org_patch(base: Policy, org_id: str, data: Mapping[str, Any]) -> dict[str, Any]:
    """Validate a PATCH /admin/organizations/{id}; return the override fields,
    normalised as the policy files would write them (null: back to the files' value)."""
    if org_id not in base.organizations:
        raise ChangeError([f"organization {org_id!r} is not in the policy"], status=404)
    unknown = sorted(set(data) - set(ORG_FIELDS))
    if unknown or not data:
        raise ChangeError([f"{key}: unknown field" for key in unknown] or [f"give one or more of {', '.join(ORG_FIELDS)}"])
    org = base.organizations[org_id]
    merged = {"name": org.name, "country": org.country, "tier": org.tier, "status": org.status,
              "vetted_until": org.vetted_until.isoformat() if org.vetted_until else None,
              "status_reason": org.status_reason} | dict(data)
    if isinstance(data.get("vetted_until"), str) and not _is_date(data["vetted_until"]):
        raise ChangeError(["vetted_until: must be a date, YYYY-MM-DD"])
    try:
        validated = schema.Organization.model_validate({k: v for k, v in merged.items() if v is not None}, strict=False)
    except ValidationError as exc:
        raise ChangeError([f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()]) from None
    normal = validated.model_dump(mode="json")
    return {name: None if data[name] is None else normal[name] for name in data}


def with_resets(fields: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """An org patch with the resets it implies: resetting the status also resets an
    overridden status_reason, which only explained that status (issue 14), unless
    the patch sets the reason itself."""
    implied = {"status_reason": None} if (
        "status" in fields and fields["status"] is None and "status_reason" in override and "status_reason" not in fields) else {}
    return dict(fields) | implied


def _is_date(text: str) -> bool:
    try:
        return date.fromisoformat(text).isoformat() == text
    except ValueError:
        return False


def _suspension_ids(base: Policy, overlay: Overlay) -> set[str]:
    return {s.id for s in base.suspensions} | set(overlay.suspensions)


# Checking a bundle against the live controls on top of it


def missing_names(base: Policy, document: Mapping[str, Any]) -> list[str]:
    """The groups and models a live suspension names that `base` does not define."""
    missing = [f"jurisdiction group {name!r}" for name in _entries(document) if unknown_place(name, base.groups)]
    return missing + [f"model {name!r}" for name in _strings(document.get("models")) if base.model_named(name) is None]


def lost_controls(base: Policy, overlay: Overlay) -> list[str]:
    """Every live control that `base` would leave naming something it does not
    define, one problem each. A bundle change must never empty a live suspension
    or drop an override silently (issue 14): such a bundle is refused."""
    problems = [f"live suspension {suspension_id!r} names {', '.join(missing)}, which the bundle does not define: "
                f"keep them in the bundle, or lift the suspension with the change"
                for suspension_id, document in sorted(overlay.suspensions.items())
                if (missing := missing_names(base, document))]
    return problems + [f"live override of organization {org_id!r}: the bundle does not define the organization: keep it "
                       f"in the bundle, or reset the override with the change"
                       for org_id in sorted(overlay.organizations) if org_id not in base.organizations]


def check_bundle(base: Policy, overlay: Overlay, now: datetime | None = None) -> None:
    """Refuse (409) a bundle that would leave a live control naming what it lacks;
    with `now`, also one that, with the live changes in force, breaks an assertion."""
    problems = lost_controls(base, overlay)
    if problems:
        raise ChangeError(problems, status=409)
    if now is not None:
        check_assertions(apply(base, overlay), now)


def check_assertions(policy: Policy, now: datetime) -> None:
    """Refuse (409) a policy that breaks an assertion of its assertions.yaml anywhere
    in the prover's horizon from `now`, naming the counterexample (issue 15)."""
    problems = [f"assertion {o.assertion.name!r} would be violated: "
                f"{prove.describe(o.counterexample).splitlines()[0]}"
                for o in prove.prove(policy, now) if o.counterexample is not None]
    if problems:
        raise ChangeError(problems, status=409)


# Deriving the effective snapshot


def apply(base: Policy, overlay: Overlay) -> Policy:
    """The bundle with the live changes in force. A bundle that drops what a live
    change names is refused before it gets here (`check_bundle`); a stored one that
    does anyway (from an older version) keeps each suspension at its recorded places,
    and overrides of organizations it lacks are skipped."""
    if overlay.empty():
        return base
    organizations = _organizations(base, overlay)
    suspensions = tuple(s for s in base.suspensions if s.id not in overlay.lifted)
    for document in overlay.suspensions.values():
        try:
            suspensions += (_compile_suspension(base, document),)
        except (ValidationError, ValueError, KeyError, TypeError) as error:
            log.error("live suspension %r cannot be applied and is skipped: %s", document.get("id"), error)
    models = dict(base.models)
    touched = {m for s in (*base.suspensions, *suspensions) for m in s.models if m in models}
    for name in touched:
        models[name] = replace(models[name], suspensions=tuple(s for s in suspensions if name in s.models))
    names = {key: models[model.id] for key, model in base.names.items()}
    return replace(
        base,
        suspended_credentials=frozenset(overlay.credentials),
        version=_version(base.version, overlay),
        organizations=MappingProxyType(organizations),
        models=MappingProxyType(models),
        names=MappingProxyType(names),
        suspensions=suspensions,
    )


def _organizations(base: Policy, overlay: Overlay) -> Mapping[str, Organization]:
    if not overlay.organizations:
        return base.organizations
    organizations = dict(base.organizations)
    for org_id, fields in overlay.organizations.items():
        org = organizations.get(org_id)
        if org is None:
            continue
        try:
            vetted = fields.get("vetted_until", org.vetted_until)
            vetted = date.fromisoformat(vetted) if isinstance(vetted, str) else vetted
        except ValueError:
            log.error("live override of %s has a bad vetted_until %r and is skipped", org_id, fields["vetted_until"])
            continue
        organizations[org_id] = replace(
            org,
            status=fields.get("status", org.status),
            tier=fields.get("tier", org.tier),
            status_reason=fields.get("status_reason", org.status_reason),
            vetted_until=vetted,
            lapses_at=lapse_time(vetted),
        )
    return organizations


def _compile_suspension(base: Policy, document: Mapping[str, Any]) -> Suspension:
    suspension = schema.Suspension.model_validate({k: v for k, v in document.items() if k != "expanded"}, strict=False)
    scope = "deny_outside" if suspension.deny_outside is not None else "deny_in"
    listed = (suspension.deny_outside if scope == "deny_outside" else suspension.deny_in) or []
    recorded = recorded_places(document)
    members = [member for name in listed for member in _entry_members(base, name, recorded.get(name), scope)]
    if missing := missing_names(base, document):
        log.error("live suspension %r names %s, which the bundle in force does not define: it denies the places "
                  "recorded when it was made", suspension.id, ", ".join(missing))
    models = frozenset(m.id for m in (base.model_named(name) for name in suspension.models) if m is not None)
    return Suspension(
        id=suspension.id,
        models=models,
        scope=scope,
        groups=merge(tuple(listed), members),
        starts=suspension.from_.timestamp() if suspension.from_ else None,
        ends=suspension.until.timestamp() if suspension.until else None,
        reason=suspension.reason,
        reference=suspension.reference,
        mode=suspension.mode,
    )


def recorded_places(document: Mapping[str, Any]) -> dict[str, tuple[list[str], list[str]]]:
    """A live suspension's recorded expansion, entry -> (countries, regions); entries
    recorded in a shape this version cannot read are left out (the group as it is now)."""
    recorded = document.get("expanded")
    places = {}
    for name, entry in (recorded.items() if isinstance(recorded, dict) else ()):
        listed = entry.get("countries") if isinstance(entry, dict) else None
        regions = entry.get("regions") if isinstance(entry, dict) else None
        if isinstance(listed, list) and isinstance(regions, list):
            places[name] = (_strings(listed), _strings(regions))
    return places


def _entry_members(base: Policy, name: str, recorded: tuple[list[str], list[str]] | None, scope: str) -> list[Member]:
    """The places one entry denies, failing closed whichever way the group changed
    since the suspension was made: `deny_in` denies what was recorded and what the
    group holds now; `deny_outside` admits only what is in both."""
    current = _members_now(base, name)
    if recorded is None:
        return current  # made before places were recorded: the group as it is now
    kept = (name, dict.fromkeys(recorded[0], name), dict.fromkeys(recorded[1], name), False)
    if not current:
        return [kept]  # the bundle lacks the group: the record is what the operator decided
    if scope == "deny_in":
        return [kept, *current]
    [(_, listed, regions, _)] = [m for m in current if not m[3]]
    both = (name, {c: name for c in recorded[0] if c in listed}, {r: name for r in recorded[1] if r in regions}, False)
    return [both, *(m for m in current if m[3])]


def _members_now(base: Policy, name: str) -> list[Member]:
    """The places of one suspension entry in `base`: an ISO code, or a group of it
    (none when the bundle lacks the group)."""
    if countries.is_place(name):
        return [place_member(name)]
    group = base.groups.get(name)
    if group is None:
        return []
    shadow = [(name, group.shadow.countries, group.shadow.regions, True)] if group.shadow is not None else []
    return [*shadow, (name, group.countries, group.regions, False)]


def _version(base_version: str, overlay: Overlay) -> str:
    canonical = json.dumps([base_version, overlay.as_json()], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


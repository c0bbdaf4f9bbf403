"""Whether a change tightens or loosens access (issue 14, change control).

A change is judged by what it does to decisions, not by its name: `policy
diff`'s grid (every model x tier x place, gateway/policy/diff.py) is decided
under the policy in force and under the policy the change would put in force,
at `now` and at every upcoming breakpoint of either policy (a stage start, a
suspension's start or end, a changed organization's vetting lapse), since
decisions are constant between two breakpoints. Organizations whose record
differs are also decided at their declared countries, and credentials
reinstated count as access granted.

- **tightening**: no cell goes from deny to allow (it only removes access, or
  changes nothing a decision reads): it applies at once on one operator's word.
- **loosening**: some cell goes from deny to allow: it needs approval.

Only the models a change can affect are decided (all of them when a setting
every model reads changed), so a live suspension costs one model's grid.

Pure: the time is an argument; no I/O.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from gateway.policy import diff
from gateway.policy.diff import Flip
from gateway.policy.snapshot import Policy

Kind = Literal["tightening", "loosening"]
# Settings every decision reads: when one differs, every model is compared.
_GLOBAL = ("all_models", "covered_models", "allow_unknown_places", "unknown_country", "unknown_models",
           "conceal_unreleased", "groups")


@dataclass(frozen=True)
class AccessDelta:
    times: tuple[datetime, ...]  # now, then the upcoming breakpoints compared
    flips: tuple[tuple[datetime, Flip], ...]  # tier grid, at each time where it flips
    org_flips: tuple[tuple[datetime, Flip], ...]
    credentials_reinstated: tuple[str, ...]
    credentials_suspended: tuple[str, ...]
    models_compared: tuple[str, ...]
    keys_created: tuple[str, ...] = ()  # API keys: access in themselves, whatever the policy says
    keys_revoked: tuple[str, ...] = ()

    @property
    def loosens(self) -> bool:
        granted = any(f.direction == "deny_to_allow" for _, f in (*self.flips, *self.org_flips))
        return granted or bool(self.credentials_reinstated) or bool(self.keys_created)

    @property
    def kind(self) -> Kind:
        return "loosening" if self.loosens else "tightening"

    def signature(self) -> str:
        """A digest of what the change grants and removes: equal signatures, same access delta."""
        body = as_json(self)
        start = body.pop("times")[0]
        for entry in (*body["granted"], *body["removed"]):  # what flips at once, whenever "now" was
            entry["at"] = "now" if entry["at"] == start else entry["at"]
        return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]


def classify(before: Policy, after: Policy, now: datetime, *, extra_times: Iterable[float] = ()) -> AccessDelta:
    """The access delta of replacing `before` with `after`, from `now` on."""
    now = now if now.tzinfo else now.replace(tzinfo=UTC)
    orgs = changed_organizations(before, after)
    models = affected_models(before, after)
    times = (now, *upcoming(before, after, now, orgs, extra_times))
    places = diff.grid_places(before, after) if models else ()
    flips: list[tuple[datetime, Flip]] = []
    org_flips: list[tuple[datetime, Flip]] = []
    every_model = diff.select_models(before, after, None)
    for moment in times:
        flips += [(moment, f) for f in diff.access_delta(before, after, moment, models, places)[0]]
        org_flips += [(moment, f) for f in diff.organization_delta(before, after, moment, every_model, orgs)]
    old_creds, new_creds = before.suspended_credentials, after.suspended_credentials
    return AccessDelta(times, _first_seen(flips), _first_seen(org_flips), tuple(sorted(old_creds - new_creds)),
                       tuple(sorted(new_creds - old_creds)), models)


def changed_organizations(before: Policy, after: Policy) -> tuple[str, ...]:
    old, new = before.organizations, after.organizations
    if old is new:
        return ()
    names = set(old) | set(new)
    return tuple(sorted(n for n in names if old.get(n) is not new.get(n) and old.get(n) != new.get(n)))


def affected_models(before: Policy, after: Policy) -> tuple[str, ...]:
    """Models whose decisions the change can alter for some tier and place."""
    if any(getattr(before, name) != getattr(after, name) for name in _GLOBAL):
        return diff.select_models(before, after, None)
    names = set(before.models) | set(after.models)
    return tuple(sorted(n for n in names if before.models.get(n) != after.models.get(n)))


def upcoming(before: Policy, after: Policy, now: datetime, orgs: Iterable[str], extra: Iterable[float] = ()) -> tuple[datetime, ...]:
    """The times after `now` at which a decision under either policy may change."""
    moments: set[float] = set(extra)
    for policy in (before, after):
        for model in policy.models.values():
            moments.update(model.stage_starts)
        for suspension in policy.suspensions:
            moments.update(t for t in (suspension.starts, suspension.ends) if t is not None)
        for org_id in orgs:
            org = policy.organizations.get(org_id)
            if org is not None and org.lapses_at is not None:
                moments.add(org.lapses_at)
    instant = now.timestamp()
    return tuple(datetime.fromtimestamp(t, UTC) for t in sorted(moments) if t > instant)


def _first_seen(found: list[tuple[datetime, Flip]]) -> tuple[tuple[datetime, Flip], ...]:
    """Each flip once, at the first time it is seen (the same cells flip at several times)."""
    seen: set[tuple[str, str, str, tuple[Any, ...]]] = set()
    kept = []
    for moment, flip in found:
        key = (flip.model, flip.who, flip.direction, flip.places)
        if key not in seen:
            seen.add(key)
            kept.append((moment, flip))
    return tuple(kept)


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def as_json(delta: AccessDelta) -> dict[str, Any]:
    def flip(moment: datetime, item: Flip, who: str) -> dict[str, Any]:
        return item.as_dict(who) | {"at": _iso(moment)}

    return {
        "kind": delta.kind,
        "times": [_iso(t) for t in delta.times],
        "models": list(delta.models_compared),
        "granted": [flip(t, f, "tier") for t, f in delta.flips if f.direction == "deny_to_allow"]
                   + [flip(t, f, "org") for t, f in delta.org_flips if f.direction == "deny_to_allow"],
        "removed": [flip(t, f, "tier") for t, f in delta.flips if f.direction == "allow_to_deny"]
                   + [flip(t, f, "org") for t, f in delta.org_flips if f.direction == "allow_to_deny"],
        "credentials_reinstated": list(delta.credentials_reinstated),
        "credentials_suspended": list(delta.credentials_suspended),
        "keys_created": list(delta.keys_created),
        "keys_revoked": list(delta.keys_revoked),
    }


def render(delta: dict[str, Any], limit: int = 12) -> list[str]:
    """An access delta (as_json) in a few lines a reviewer reads at a glance."""
    lines = [f"Access delta: {delta['kind']} (compared at now and {len(delta['times']) - 1} upcoming breakpoint(s))"]
    for title, entries in (("grants", delta["granted"]), ("removes", delta["removed"])):
        for entry in entries[:limit]:
            who = entry.get("tier") or entry.get("org")
            places = entry["places"]
            shown = ", ".join(places[:8]) + (f" and {len(places) - 8} more" if len(places) > 8 else "")
            lines.append(f"  {title} {entry['model']} [{who}] from {entry['at']}: {shown}")
        if len(entries) > limit:
            lines.append(f"  ... and {len(entries) - limit} more")
    lines += [f"  grants: credential {c} reinstated" for c in delta["credentials_reinstated"]]
    lines += [f"  removes: credential {c} suspended" for c in delta["credentials_suspended"]]
    lines += [f"  grants: API key {k} created" for k in delta.get("keys_created", ())]
    lines += [f"  removes: API key {k} revoked" for k in delta.get("keys_revoked", ())]
    if not any(delta.get(name) for name in ("granted", "removed", "credentials_reinstated", "credentials_suspended",
                                              "keys_created", "keys_revoked")):
        lines.append("  no decision changes")
    return lines

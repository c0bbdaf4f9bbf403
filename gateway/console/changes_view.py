"""What the Changes page reads from its forms and shows of proposals and the change log.

The forms become the admin API's own change bodies (the same `ChangeControl.submit`
checks them): this module only reads the fields a person fills in, and says in plain
words what it cannot read (an unknown place names the value). The proposals are shown
as change control computed them: its diff, its access delta (`access_delta.render`),
its simulation.

Pure: a form and the policy in, a change body and problems out.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from gateway.policy import countries
from gateway.live import access_delta
from gateway.policy.schema import NAME_PATTERN
from gateway.policy.snapshot import Policy

MAX_TEXT = 500
MAX_SHOWN = 4000  # characters of a diff side shown in the page; the admin API has the rest
ID = NAME_PATTERN  # a suspension's, proposal's, change's or key's id, as the policy names things
KIND_LABELS = {
    "suspension.create": "Suspend", "suspension.lift": "Lift a suspension", "organization.update": "Change an organization",
    "policy.replace": "Replace the policy", "credential.reinstate": "Reinstate a credential",
    "apikey.create": "Create an API key", "apikey.revoke": "Revoke an API key",
}


@dataclass(frozen=True)
class Draft:
    """A change read from a form: the admin API body, or the problems that stop it."""
    body: dict[str, Any]
    problems: list[str]


def places(text: str) -> tuple[list[str], list[str]]:
    """(ISO codes, problems) of a field of countries and regions, separated by commas or
    spaces, in any case: "se, ua-43" is SE and UA-43. Each unknown code is named."""
    codes, problems = [], []
    for raw in re.split(r"[\s,;]+", text.strip()):
        if not raw:
            continue
        code = raw.upper()
        if countries.is_place(code):
            codes.append(code)
        else:
            problems.append(f"{raw[:40]!r} is not an ISO 3166-1 country code (such as SE) "
                            f"or an ISO 3166-2 region code (such as UA-43).")
    return list(dict.fromkeys(codes)), problems


def suspension(form: Mapping[str, Any], getlist: Any, policy: Policy) -> Draft:
    """A suspension from the Suspend form: models, where (places and groups), the scope,
    an optional end, the reason; as POST /admin/suspensions takes it."""
    problems = []
    models = [m for m in getlist("models") if isinstance(m, str)]
    if not models:
        problems.append("Choose at least one model.")
    problems += [f"There is no model {m[:80]!r} in the policy in force." for m in models if policy.model_named(m) is None]
    codes, unknown = places(str(form.get("places") or ""))
    problems += unknown
    groups = [g for g in getlist("groups") if isinstance(g, str)]
    problems += [f"There is no jurisdiction group {g[:80]!r}." for g in groups if g not in policy.groups]
    if not codes and not groups and not unknown:
        problems.append("Name at least one country, region or jurisdiction group.")
    scope = form.get("scope") or "deny_in"
    if scope not in ("deny_in", "deny_outside"):
        problems.append("Choose whether to deny in those places or outside them.")
        scope = "deny_in"
    reason = _text(form.get("reason"))
    if reason is None:
        problems.append("Give a reason: it is recorded with the change.")
    body: dict[str, Any] = {"models": models, scope: codes + groups, "reason": reason}
    until, bad_time = _time(form.get("until"))
    if bad_time:
        problems.append(bad_time)
    elif until is not None:
        body["until"] = until
    if reference := _text(form.get("reference")):
        body["reference"] = reference
    return Draft(body, problems)


def api_key(form: Mapping[str, Any]) -> Draft:
    """A new API key from the Create form, as POST /admin/keys takes it (the secret's
    SHA-256, never the secret)."""
    problems: list[str] = []
    org = _text(form.get("org_id"))
    if org is None:
        problems.append("Name the organization the key is for.")
    digest = str(form.get("sha256") or "").strip().lower()  # as sha256sum prints it; the change control checks it
    reason = _text(form.get("reason"))
    body = {"org_id": org, "sha256": digest, "label": _text(form.get("label")), "reason": reason}
    return Draft(body, problems)


def reason_of(form: Mapping[str, Any]) -> str | None:
    return _text(form.get("reason"))


def valid_id(value: Any) -> bool:
    return isinstance(value, str) and ID.fullmatch(value) is not None


def _text(value: Any) -> str | None:
    text = str(value).strip() if value is not None else ""
    return text[:MAX_TEXT] if text else None


def _time(value: Any) -> tuple[str | None, str | None]:
    """(ISO time, problem) of an optional <input type="datetime-local">, read as UTC."""
    text = str(value or "").strip()
    if not text:
        return None, None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None, f"{text[:40]!r} is not a time; write it as 2026-12-31T18:00 (UTC)."
    if moment.tzinfo is not None:
        return moment.isoformat(), None
    return moment.isoformat() + "Z", None


# Showing proposals and the change log


@dataclass(frozen=True)
class ProposalView:
    id: str
    kind: str
    label: str
    target: str | None
    state: str
    proposer: str
    created: str
    expires_at: str
    reason: str | None
    reference: str | None
    approvals: list[dict[str, Any]]
    approvals_needed: int
    closed: dict[str, Any] | None
    problems: list[str]
    before: str | None
    after: str | None
    bundle_changes: str | None
    delta_kind: str
    delta_lines: list[str]
    simulation: dict[str, Any]
    recomputed: dict[str, Any] | None

    @property
    def open(self) -> bool:
        return self.state == "open"


def proposal_view(proposal: Mapping[str, Any]) -> ProposalView:
    """A proposal document of change control, ready for the page."""
    diff = proposal.get("diff") or {}
    delta = proposal.get("access_delta") or {}
    changes = diff.get("changes")
    return ProposalView(
        str(proposal["id"]), str(proposal["kind"]), KIND_LABELS.get(str(proposal["kind"]), str(proposal["kind"])),
        proposal.get("target"), str(proposal["state"]), str(proposal["proposer"]), stamp(proposal["created"]),
        stamp(proposal["expires_at"]), proposal.get("reason"), proposal.get("reference"), list(proposal.get("approvals", ())),
        int(proposal.get("approvals_needed", 0)), proposal.get("closed"), list(proposal.get("problems") or ()),
        shown(diff.get("before")), shown(diff.get("after")), shown(changes) if changes else None,
        str(delta.get("kind", "unknown")), access_delta.render(delta) if delta else ["not computed"],
        simulation_summary(proposal.get("simulation") or {}), proposal.get("recomputed"))


def stamp(value: Any) -> str:
    """A time as the page writes every time: UTC to the second, "2026-12-01T12:00:00Z"."""
    try:
        moment = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return str(value)
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def shown(value: Any) -> str | None:
    """A diff side as indented JSON, cut at MAX_SHOWN characters (saying so)."""
    if value is None:
        return None
    text = json.dumps(value, indent=2, sort_keys=True, default=str)
    return text if len(text) <= MAX_SHOWN else text[:MAX_SHOWN] + "\n… (cut here: the admin API has it whole)"


def simulation_summary(simulation: Mapping[str, Any]) -> dict[str, Any]:
    flips = simulation.get("would_flip") or {}
    return {"records": simulation.get("records", 0), "replayed": simulation.get("replayed", 0),
            "to_allow": flips.get("deny_to_allow", 0), "to_deny": flips.get("allow_to_deny", 0),
            "by_org": _top(simulation.get("by_org"), "org"), "by_country": _top(simulation.get("by_country"), "country"),
            "source": simulation.get("source")}


def _top(rows: Any, by: str, limit: int = 8) -> list[str]:
    """The largest rows of a simulation breakdown (simulate.breakdown), as words."""
    if not isinstance(rows, list):
        return []
    return [f"{row.get(by)}: {row.get('deny_to_allow', 0)} would be allowed, {row.get('allow_to_deny', 0)} denied"
            for row in rows[:limit] if isinstance(row, Mapping)]


@dataclass(frozen=True)
class HistoryRow:
    change_id: str
    time: str
    actor: str
    action: str
    target: str | None
    reason: str | None
    details: str  # access, proposal, approvers, countersignature: what else the record says


def history_row(record: Mapping[str, Any]) -> HistoryRow:
    notes = []
    if record.get("access"):
        notes.append(str(record["access"]))
    if record.get("proposal"):
        notes.append(f"proposal {record['proposal']}")
    if record.get("approved_by"):
        notes.append("approved by " + ", ".join(map(str, record["approved_by"])))
    countersign = record.get("countersign")
    if isinstance(countersign, Mapping) and countersign.get("state") == "awaiting":
        notes.append(f"countersignature due {countersign.get('due')}")
    return HistoryRow(str(record.get("change_id", "")), stamp(record.get("time", "")), str(record.get("actor", "")),
                      str(record.get("action", "")), record.get("target"), record.get("reason"), "; ".join(notes))

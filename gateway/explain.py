"""An account of one decision: the JSON of `gateway explain --json` and its
readable form. Pure: it formats what `decide()` and the policy say."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from gateway.decision import Decision, Facts, Match
from gateway.policy.snapshot import Model, Organization, Policy, Stage


def iso(moment: datetime | float) -> str:
    if isinstance(moment, float):
        moment = datetime.fromtimestamp(moment, UTC)
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def as_json(policy: Policy, facts: Facts, decision: Decision, now: datetime) -> dict[str, Any]:
    """The contract fields of SPEC §2.1 first, then the details behind them."""
    model = policy.models.get(decision.model) if decision.model else None
    return {
        "decision": decision.verdict,
        "status": decision.status,
        "reasons": [str(r) for r in decision.reasons],
        "stage": decision.stage,
        "covered": decision.covered,
        "policy_version": decision.policy_version,
        "at": iso(now),
        "org": facts.org_id,
        "tier": decision.tier,
        "model": decision.model,
        "requested_model": facts.model,
        "observed_country": facts.observed_country,
        "observed_region": facts.observed_region,
        "declared_country": _org(policy, facts).country if _org(policy, facts) else None,
        "anonymizer": facts.anonymizer,
        "matches": [m.as_dict() for m in decision.matches],
        "would_deny": [str(r) for r in decision.shadow],
        "coverage": _coverage_json(model) if model else None,
        "next_stage": _next_stage_json(model, now) if model else None,
    }


def _org(policy: Policy, facts: Facts) -> Organization | None:
    return policy.organizations.get(facts.org_id) if facts.org_id else None


def _coverage_json(model: Model) -> dict[str, Any]:
    return {
        "covered": model.covered,
        "mode": model.coverage.mode,
        "checks": [
            {"evaluation": name, "at_least": threshold, "value": value, "met": met}
            for name, threshold, value, met in model.coverage.checks
        ],
    }


def _next_stage(model: Model, now: datetime) -> Stage | None:
    index = model.stage_index(now.timestamp()) + 1
    return model.stages[index] if index < len(model.stages) else None


def _next_stage_json(model: Model, now: datetime) -> dict[str, str] | None:
    stage = _next_stage(model, now)
    return {"stage": stage.name, "from": iso(stage.starts)} if stage else None


# The readable account


def render(policy: Policy, facts: Facts, decision: Decision, now: datetime) -> str:
    lines = [
        f"Decision: {decision.verdict.upper()} ({decision.status})"
        + (f" — {', '.join(decision.reasons)}" if decision.reasons else ""),
        f"At {iso(now)} under policy {decision.policy_version}",
        "",
        _describe_org(policy, facts, now),
        _describe_request(facts),
    ]
    model = policy.models.get(decision.model) if decision.model else None
    if model is not None:
        lines += ["", *_describe_model(model, now)]
    elif facts.model is not None:
        lines += ["", f"Model {facts.model!r} is not in the policy (unknown_models: {policy.unknown_models})."]
    lines += ["", "Rules that matched:" if decision.matches else "No rule denies this request."]
    lines += [f"  - {_describe_match(m, decision)}" for m in decision.matches]
    return "\n".join(lines)


def _describe_org(policy: Policy, facts: Facts, now: datetime) -> str:
    org = _org(policy, facts)
    if org is None:
        return f"Organization {facts.org_id!r} is not in the registry."
    text = f"Organization {org.id} ({org.name}), declared country {org.country}, tier {org.tier}"
    if org.vetted_until is not None:
        lapsed = org.effective_tier(now.timestamp()) != org.tier
        text += f", vetted until {org.vetted_until}" + (" — lapsed, counts as standard" if lapsed else "")
    if org.status != "active":
        text += f", status {org.status}" + (f" ({org.status_reason})" if org.status_reason else "")
    return text + "."


def _describe_request(facts: Facts) -> str:
    place = facts.observed_region or facts.observed_country or "an unknown country"
    if facts.observed_region and facts.observed_country and facts.observed_region[:2] != facts.observed_country:
        place += f" (reported in {facts.observed_country})"
    text = f"Request for {facts.model!r} observed from {place}"
    return text + (" through an anonymizer." if facts.anonymizer else ".")


def _describe_model(model: Model, now: datetime) -> list[str]:
    coverage = model.coverage
    checks = "; ".join(
        f"{name} {'not recorded' if value is None else f'{value:g}'} "
        f"{'(counts as met: fail closed)' if value is None else ('>=' if met else '<')} {threshold:g}"
        for name, threshold, value, met in coverage.checks
    )
    lines = [
        f"Model {model.id} is {'COVERED' if model.covered else 'not covered'} "
        f"({coverage.mode} of: {checks}).",
    ]
    stage = model.stage_at(now.timestamp())
    if stage is None:
        lines.append("No stage is in force yet: the model is not released.")
    else:
        lines.append(f"Stage in force: {stage.name} since {iso(stage.starts)} — {_audience(stage)}.")
    upcoming = _next_stage(model, now)
    lines.append(f"Next: {upcoming.name} from {iso(upcoming.starts)}." if upcoming else "No later stage is scheduled.")
    return lines


def _audience(stage: Stage) -> str:
    tiers = "every tier" if stage.tiers is None else ("no tier" if not stage.tiers else ", ".join(sorted(stage.tiers)))
    places = "anywhere the rules allow" if stage.jurisdictions is None else "in " + ", ".join(stage.jurisdictions.names)
    return f"{tiers}, {places}"


def _describe_match(match: Match, decision: Decision) -> str:
    subject = f"{match.subject} " if match.subject else ""
    if match.group:
        detail = f"{subject}{match.place} is in group {match.group}"
    elif match.rule.endswith(".jurisdictions"):
        detail = f"{subject}{match.place or 'unknown country'} is outside the stage's jurisdictions"
    elif match.rule.endswith(".tiers"):
        detail = f"tier {match.place} is not admitted by the stage"
    elif match.rule.startswith("suspensions."):
        detail = f"{subject}{match.place or 'unknown country'} is within the suspension's scope"
    elif match.subject == "observed" and match.reason.value == "jurisdiction_unknown":
        detail = "the observed country is unknown"
    else:
        detail = ""
    shadow = " [shadow: reported, not enforced]" if match.shadow else ""
    return f"{match.reason}: {match.rule}" + (f" ({detail})" if detail else "") + shadow

"""A model's release timeline at one time: `gateway explain --policy DIR --model X`
without `--org`.

It says whether the model is covered and which evaluations decide that, every
stage with its dates and audience (tiers, jurisdictions) and which one is in
force, how much of the framework's review window the government review uses,
the suspensions that name the model, and what changes next and when.

Pure: it formats what the policy says at `now`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from gateway.policy.load import MODELS
from gateway.policy.schema import TIERS
from gateway.policy.snapshot import Model, Policy, RuleSet, Stage, Suspension



def _iso(moment: datetime | float) -> str:
    if isinstance(moment, (int, float)):
        moment = datetime.fromtimestamp(moment, UTC)
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _days(seconds: float) -> float:
    return round(seconds / 86400, 2)


def find_model(policy: Policy, name: str) -> Model:
    """The model a client would get for `name` (id or alias); KeyError if none."""
    model = policy.model_named(name)
    if model is None:
        raise KeyError(name)
    return model


def as_json(policy: Policy, name: str, now: datetime) -> dict[str, Any]:
    model = find_model(policy, name)
    now = now if now.tzinfo else now.replace(tzinfo=UTC)
    stamp = now.timestamp()
    current = model.stage_index(stamp)
    stages = [_stage_json(model, index, current, now) for index in range(len(model.stages))]
    events = _events(model, stages, now)
    return {
        "model": model.id,
        "requested_model": name,
        "aliases": list(model.aliases),
        "upstream": model.upstream,
        "policy_version": policy.version,
        "at": _iso(now),
        "covered": model.covered,
        "coverage": _coverage_json(model),
        "rules": _rules_json(policy, model),
        "stage": model.stages[current].name if current >= 0 else None,
        "released": current >= 0,
        "stages": stages,
        "review": _review_json(policy, model, now),
        "suspensions": [_suspension_json(s, stamp) for s in model.suspensions],
        "next": events[0] if events else None,
        "upcoming": events,
    }


def _coverage_json(model: Model) -> dict[str, Any]:
    coverage = model.coverage
    checks = [
        {"evaluation": evaluation, "at_least": at_least, "value": value,
         "met": met, "counts_as_met": met is None}  # not recorded: counts as met (fail closed)
        for evaluation, at_least, value, met in coverage.checks
    ]
    meets = [c["evaluation"] for c in checks if c["met"] is not False]
    misses = [c["evaluation"] for c in checks if c["met"] is False]
    # The evaluations that decide the outcome: a covered model is covered by the
    # thresholds it meets (for `any`, one suffices; for `all`, all are met); a
    # model that is not covered by those it misses (for `any`, all of them).
    return {"mode": coverage.mode, "checks": checks, "decided_by": meets if model.covered else misses}


def _rules_json(policy: Policy, model: Model) -> dict[str, Any]:
    def rule(rules: RuleSet) -> dict[str, Any]:
        return {
            "deny_jurisdictions": list(rules.deny.names),
            "check_declared_country": rules.check_declared_country,
            "deny_anonymizers": rules.deny_anonymizers,
            "unknown_country": rules.unknown_country,
            "mode": "shadow" if getattr(rules, "shadow", False) else "enforce",
        }

    applied = {"all_models": rule(policy.all_models)}
    if model.covered:
        applied["covered_models"] = rule(policy.covered_models)
    # As decide(): refused unless the framework allows unknown places; then all_models'
    # verdict, and the covered-model one (covered models, when set) or the top-level
    # one; any deny denies.
    specific = policy.covered_models.unknown_country if model.covered else None
    verdicts = (policy.all_models.unknown_country, specific if specific is not None else policy.unknown_country)
    denied = not policy.allow_unknown_places or "deny" in verdicts
    applied["unknown_country"] = "deny" if denied else "allow"  # type: ignore[assignment]
    return applied


def _audience(stage: Stage) -> dict[str, Any]:
    return {
        "tiers": [t for t in TIERS if stage.tiers is None or t in stage.tiers],
        "jurisdictions": None if stage.jurisdictions is None else list(stage.jurisdictions.names),
        "countries": None if stage.jurisdictions is None else sorted(stage.jurisdictions.countries),
        "regions": None if stage.jurisdictions is None else sorted(stage.jurisdictions.regions),
    }


def _stage_json(model: Model, index: int, current: int, now: datetime) -> dict[str, Any]:
    stage = model.stages[index]
    until = model.stages[index + 1].starts if index + 1 < len(model.stages) else None
    status = "in_force" if index == current else ("past" if index < current else "upcoming")
    return {
        "stage": stage.name,
        "from": _iso(stage.starts),
        "until": _iso(until) if until else None,
        "days": _days((until - stage.starts).total_seconds()) if until else None,
        "status": status,
        **_audience(stage),
    }


def _review_json(policy: Policy, model: Model, now: datetime) -> dict[str, Any]:
    window = policy.review_window_max_days
    names = [s.name for s in model.stages]
    waiver = policy.documents[MODELS]["models"].get(model.id, {}).get("review_waiver")
    if "government_review" not in names:
        return {"stage": False, "required": model.covered, "window_days": window, "days": None,
                "used": None, "remaining_days": None, "waiver": waiver}
    index = names.index("government_review")
    stage = model.stages[index]
    ends = model.stages[index + 1].starts if index + 1 < len(model.stages) else None
    days = _days((ends - stage.starts).total_seconds()) if ends else None
    elapsed = _days(max(0.0, (min(now, ends) if ends else now).timestamp() - stage.starts.timestamp()))
    return {
        "stage": True,
        "required": model.covered,
        "window_days": window,
        "from": _iso(stage.starts),
        "until": _iso(ends) if ends else None,
        "days": days,  # None: no later stage is scheduled (open-ended)
        "used": days if days is not None else elapsed,
        "remaining_days": round(window - days, 2) if days is not None else round(window - elapsed, 2),
        "elapsed_days": elapsed,
        "waiver": waiver,
    }


def _suspension_json(suspension: Suspension, now: float) -> dict[str, Any]:
    if suspension.in_force(now):
        status = "in_force"
    elif suspension.starts is not None and now < suspension.starts:
        status = "upcoming"
    else:
        status = "ended"
    return {
        "id": suspension.id,
        "scope": suspension.scope,
        "groups": list(suspension.groups.names),
        "from": _iso(suspension.starts) if suspension.starts is not None else None,
        "until": _iso(suspension.ends) if suspension.ends is not None else None,
        "mode": suspension.mode,
        "status": status,
        "reason": suspension.reason,
        "reference": suspension.reference,
    }


def _events(model: Model, stages: list[dict[str, Any]], now: datetime) -> list[dict[str, Any]]:
    """Every scheduled change after `now`, earliest first."""
    stamp = now.timestamp()
    events: list[tuple[float, int, dict[str, Any]]] = []
    for stage, data in zip(model.stages, stages):
        if stage.starts > now:
            events.append((stage.starts.timestamp(), 0, {
                "at": data["from"], "in_days": _days(stage.starts.timestamp() - stamp), "change": "stage",
                "stage": stage.name, "tiers": data["tiers"], "jurisdictions": data["jurisdictions"],
            }))
    for suspension in model.suspensions:
        for moment, change in ((suspension.starts, "suspension_starts"), (suspension.ends, "suspension_ends")):
            if moment is not None and moment > stamp:
                events.append((moment, 1, {
                    "at": _iso(moment), "in_days": _days(moment - stamp), "change": change,
                    "suspension": suspension.id, "mode": suspension.mode,
                }))
    return [event for _, _, event in sorted(events, key=lambda e: (e[0], e[1]))]


# The readable account


def render(policy: Policy, name: str, now: datetime) -> str:
    data = as_json(policy, name, now)
    aliases = f" (aliases: {', '.join(data['aliases'])})" if data["aliases"] else ""
    lines = [f"Model {data['model']}{aliases} at {data['at']} under policy {data['policy_version']}", ""]
    lines += _describe_coverage(data)
    lines += ["", "Release timeline:"]
    width = max(len(s["stage"]) for s in data["stages"])
    for stage in data["stages"]:
        marker = ">" if stage["status"] == "in_force" else " "
        until = stage["until"] or "(no later stage)"
        length = f" ({stage['days']:g} days)" if stage["days"] is not None else ""
        status = {"in_force": "  [in force]", "past": "  [past]", "upcoming": ""}[stage["status"]]
        lines.append(f"  {marker} {stage['stage']:<{width}}  {stage['from']} -> {until}{length}: "
                     f"{_describe_audience(stage)}{status}")
    if not data["released"]:
        lines.append("  No stage is in force yet: the model is not released (404 to every caller).")
    lines += ["", _describe_review(data["review"])]
    if data["suspensions"]:
        lines += ["", "Suspensions:"]
        for s in data["suspensions"]:
            scope = f"{'deny outside' if s['scope'] == 'deny_outside' else 'deny in'} {', '.join(s['groups']) or '(no group)'}"
            span = f"{s['from'] or 'at once'} -> {s['until'] or 'until lifted'}"
            mode = ", shadow" if s["mode"] == "shadow" else ""
            lines.append(f"  {s['id']}: {scope}, {span} [{s['status'].replace('_', ' ')}{mode}] — {s['reason']}")
    lines.append("")
    upcoming = data["upcoming"]
    if not upcoming:
        lines.append("Next: nothing further is scheduled.")
    else:
        lines.append(f"Next: {_describe_event(upcoming[0])}.")
        lines += [f"  then {_describe_event(e)}" for e in upcoming[1:]]
    return "\n".join(lines)


def _describe_coverage(data: dict[str, Any]) -> list[str]:
    coverage = data["coverage"]
    checks = "; ".join(
        f"{c['evaluation']} "
        + ("not recorded (counts as met: fail closed)" if c["counts_as_met"]
           else f"{c['value']:g} {'>=' if c['met'] else '<'} {c['at_least']:g}")
        for c in coverage["checks"]
    )
    verdict = "COVERED" if data["covered"] else "not covered"
    lines = [f"{verdict} ({coverage['mode']} of: {checks})."]
    if coverage["decided_by"]:
        lines.append(f"Decided by: {', '.join(coverage['decided_by'])}.")
    rules = data["rules"]
    parts = [f"every model: deny {', '.join(rules['all_models']['deny_jurisdictions']) or 'nothing'}"]
    covered = rules.get("covered_models")
    if covered is not None:
        extra = [f"deny {', '.join(covered['deny_jurisdictions']) or 'nothing more'}"]
        if covered["check_declared_country"]:
            extra.append("the declared country must pass too")
        if covered["deny_anonymizers"]:
            extra.append("anonymizers denied")
        parts.append("covered models: " + ", ".join(extra))
    parts.append(f"unknown country: {rules['unknown_country']}")
    lines.append("Rules on top of the stage: " + "; ".join(parts) + ".")
    return lines


def _describe_audience(stage: dict[str, Any]) -> str:
    tiers = _tiers(stage["tiers"])
    if stage["jurisdictions"] is None:
        return f"{tiers}; anywhere the rules allow"
    places = len(stage["countries"]) + len(stage["regions"])
    return f"{tiers}; in {', '.join(stage['jurisdictions']) or 'nowhere'} ({places} place{'s' if places != 1 else ''})"


def _describe_review(review: dict[str, Any]) -> str:
    window = review["window_days"]
    if not review["stage"]:
        if review["waiver"]:
            return f"Government review: none, waived ({review['waiver'].get('reason')})."
        return "Government review: none" + (" (required for a covered model)." if review["required"] else " (not covered: not required).")
    if review["days"] is None:
        return (f"Government review: open-ended (no later stage scheduled); {review['elapsed_days']:g} of the "
                f"{window}-day window elapsed so far.")
    return f"Government review: {review['days']:g} of the {window}-day window used ({review['remaining_days']:g} days to spare)."


def _describe_event(event: dict[str, Any]) -> str:
    when = f"{event['at']} (in {event['in_days']:g} days)"
    if event["change"] == "stage":
        tiers = _tiers(event["tiers"])
        places = "anywhere the rules allow" if event["jurisdictions"] is None else "in " + ", ".join(event["jurisdictions"])
        return f"{event['stage']} from {when}: {tiers}; {places}"
    verb = "starts" if event["change"] == "suspension_starts" else "ends"
    return f"suspension {event['suspension']} {verb} at {when}"


def _tiers(tiers: list[str]) -> str:
    if list(tiers) == list(TIERS):
        return "every tier"
    return ", ".join(tiers) or "no tier"

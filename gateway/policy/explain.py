"""An account of one decision: the JSON of `gateway explain --json`, of
`POST /admin/explain` and of `gateway audit explain`, and its readable form.

`as_json` gathers every fact the account states; `render` reads only that JSON,
so each entry point prints the same sentences from the same fields, and the
admin CLI renders the API's answer with it too. Pure: it formats what `decide()`
and the policy say. Where a place entered a jurisdiction group, and on which
legal list, is worked out here (gateway/policy/provenance.py), so the request
path never pays for it.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from gateway.policy import countries
from gateway.policy.decision import Decision, Facts, Match
from gateway.policy.provenance import provenance
from gateway.policy.snapshot import Model, Organization, Policy, Stage

Account = Mapping[str, Any]


def iso(moment: datetime | float) -> str:
    if isinstance(moment, float):
        moment = datetime.fromtimestamp(moment, UTC)
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def as_json(policy: Policy, facts: Facts, decision: Decision, now: datetime,
            recorded: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The decision's contract fields first, then the details behind them.
    `recorded`: the audit record this decision re-decides, if any."""
    model = policy.models.get(decision.model) if decision.model else None
    org = _org(policy, facts)
    account = {
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
        "declared_country": org.country if org else None,
        "anonymizer": facts.anonymizer,
        "place_names": _place_names(facts, org),
        # A 404 for a model the policy knows: the caller is told it does not exist.
        "concealed": decision.status == 404 and model is not None,
        "organization": _organization_json(org, now) if org else None,
        "org_suggestions": _suggestions(policy, facts.org_id) if org is None else [],
        "unknown_models": policy.unknown_models,
        "matches": [_match_json(policy, m) for m in decision.matches],
        "would_deny": [str(r) for r in decision.shadow],
        "coverage": _coverage_json(model) if model else None,
        "stage_in_force": _stage_json(model.stage_at(now.timestamp())) if model else None,
        "next_stage": _next_stage_json(model, now) if model else None,
    }
    if recorded is not None:
        account["recorded"] = _recorded_json(recorded, decision)
    return account


def _org(policy: Policy, facts: Facts) -> Organization | None:
    return policy.organizations.get(facts.org_id) if facts.org_id else None


def _suggestions(policy: Policy, org_id: str | None) -> list[str]:
    """The organizations whose ids are nearest to an unknown one (a typo, usually)."""
    return difflib.get_close_matches(org_id, list(policy.organizations), n=3) if org_id else []


def _place_names(facts: Facts, org: Organization | None) -> dict[str, str]:
    codes = (facts.observed_country, facts.observed_region, org.country if org else None)
    return {code: name for code in codes if code and (name := countries.name_of(code))}


def _organization_json(org: Organization, now: datetime) -> dict[str, Any]:
    effective = org.effective_tier(now.timestamp())
    return {
        "id": org.id,
        "name": org.name,
        "country": org.country,
        "tier": org.tier,
        "effective_tier": effective,
        "vetted_until": org.vetted_until.isoformat() if org.vetted_until else None,
        "lapsed": effective != org.tier,
        "status": org.status,
        "status_reason": org.status_reason,
    }


def _match_json(policy: Policy, match: Match) -> dict[str, Any]:
    """A match, with the place's name and, for a group, the list it came through."""
    found = provenance(policy, match.group, match.place) if match.group and match.place else None
    return {
        **match.as_dict(),
        "place_name": countries.name_of(match.place) if match.place else None,
        **(found.as_dict() if found else {"via": None, "chain": None, "source": None, "as_of": None}),
    }


def _coverage_json(model: Model) -> dict[str, Any]:
    return {
        "covered": model.covered,
        "mode": model.coverage.mode,
        "checks": [
            {"evaluation": name, "at_least": threshold, "value": value, "met": met}
            for name, threshold, value, met in model.coverage.checks
        ],
    }


def _stage_json(stage: Stage | None) -> dict[str, Any] | None:
    if stage is None:
        return None
    return {
        "name": stage.name,
        "from": iso(stage.starts),
        "tiers": None if stage.tiers is None else sorted(stage.tiers),
        "jurisdictions": None if stage.jurisdictions is None else list(stage.jurisdictions.names),
    }


def _next_stage(model: Model, now: datetime) -> Stage | None:
    index = model.stage_index(now.timestamp()) + 1
    return model.stages[index] if index < len(model.stages) else None


def _next_stage_json(model: Model, now: datetime) -> dict[str, str] | None:
    stage = _next_stage(model, now)
    return {"stage": stage.name, "from": iso(stage.starts)} if stage else None


def _recorded_json(record: Mapping[str, Any], decision: Decision) -> dict[str, Any]:
    reasons = [str(r) for r in record.get("reasons") or []]
    return {
        "decision_id": record.get("decision_id"),
        "time": record.get("time"),
        "decision": record.get("decision"),
        "status": record.get("status"),
        "reasons": reasons,
        "policy_version": record.get("policy_version"),
        "same_policy": record.get("policy_version") == decision.policy_version,
        "same_reasons": reasons == [str(r) for r in decision.reasons],
    }


# The readable account: from the JSON alone.


def render(account: Account) -> str:
    reasons = account["reasons"]
    lines = [
        *_describe_record(account),
        f"Decision: {account['decision'].upper()} ({account['status']})"
        + (f" — {', '.join(reasons)}" if reasons else ""),
        f"At {account['at']} under policy {account['policy_version']}",
    ]
    if account.get("concealed"):
        lines.append(f"The model {account['model']} is concealed from this caller: it is answered 404, "
                     "as if no such model existed.")
    lines += ["", _describe_org(account), _describe_request(account)]
    if account.get("coverage") is not None:
        lines += ["", *_describe_model(account)]
    elif account.get("requested_model") is not None:
        lines += ["", f"Model {account['requested_model']!r} is not in the policy "
                      f"(unknown_models: {account.get('unknown_models')})."]
    matches = account.get("matches") or []
    lines += ["", "Rules that matched:" if matches else "No rule denies this request."]
    lines += [f"  - {_describe_match(m)}" for m in matches]
    return "\n".join(lines)


def _describe_record(account: Account) -> list[str]:
    record = account.get("recorded")
    if not record:
        return []
    reasons = ", ".join(record.get("reasons") or []) or "no reason"
    lines = [f"Recorded decision {record.get('decision_id')} at {record.get('time')}: {record.get('decision')} "
             f"({record.get('status')}) — {reasons}, under policy {record.get('policy_version')}."]
    if not record.get("same_policy"):
        lines.append(f"Decided again under policy {account['policy_version']}, not the recorded one: "
                     "the account below may differ from what was decided then.")
    elif not record.get("same_reasons"):
        lines.append("Decided again, the reasons differ from the record's (reasons given after the decision, "
                     "such as rate_limited, are not the policy's).")
    return [*lines, ""]


def _describe_org(account: Account) -> str:
    org = account.get("organization")
    if org is None:
        return _describe_unknown_org(account.get("org"), account.get("org_suggestions") or [])
    text = (f"Organization {org['id']} ({org['name']}), declared country {_label(account, org['country'])}, "
            f"tier {org['tier']}")
    if org.get("vetted_until"):
        text += f", vetted until {org['vetted_until']}" + (" — lapsed, counts as standard" if org.get("lapsed") else "")
    if org.get("status") != "active":
        text += f", status {org['status']}" + (f" ({org['status_reason']})" if org.get("status_reason") else "")
    return text + "."


def _describe_unknown_org(org_id: str | None, suggestions: list[str]) -> str:
    if org_id is None:
        return "No organization: the caller was not identified."
    text = f"Organization {org_id!r} is not in the policy, so every request it makes is denied (org_unknown)."
    if suggestions:
        return text + f" Did you mean {_either(suggestions)}?"
    return text + " No organization in the policy has a similar id."


def _either(names: list[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + f" or {names[-1]}"


def _describe_request(account: Account) -> str:
    country, region = account.get("observed_country"), account.get("observed_region")
    place = _label(account, region or country) if region or country else "an unknown country"
    if region and country and region[:2] != country:
        place += f" (reported in {_label(account, country)})"
    text = f"Request for {account.get('requested_model')!r} observed from {place}"
    return text + (" through an anonymizer." if account.get("anonymizer") else ".")


def _label(account: Account, code: str) -> str:
    name = (account.get("place_names") or {}).get(code)
    return f"{code} {name}" if name else code


def _describe_model(account: Account) -> list[str]:
    coverage = account["coverage"]
    checks = "; ".join(
        f"{c['evaluation']} {'not recorded' if c['value'] is None else format(c['value'], 'g')} "
        f"{'(counts as met: fail closed)' if c['value'] is None else ('>=' if c['met'] else '<')} "
        f"{c['at_least']:g}"
        for c in coverage["checks"]
    )
    lines = [f"Model {account['model']} is {'COVERED' if coverage['covered'] else 'not covered'} "
             f"({coverage['mode']} of: {checks})."]
    stage = account.get("stage_in_force")
    if stage is None:
        lines.append("No stage is in force yet: the model is not released.")
    else:
        lines.append(f"Stage in force: {stage['name']} since {stage['from']} — {_audience(stage)}.")
    upcoming = account.get("next_stage")
    lines.append(f"Next: {upcoming['stage']} from {upcoming['from']}." if upcoming else "No later stage is scheduled.")
    return lines


def _audience(stage: Account) -> str:
    tiers = stage.get("tiers")
    places = stage.get("jurisdictions")
    who = "every tier" if tiers is None else ("no tier" if not tiers else ", ".join(tiers))
    where = "anywhere the rules allow" if places is None else "in " + ", ".join(places)
    return f"{who}, {where}"


def _describe_match(match: Account) -> str:
    subject = f"{match['subject']} " if match.get("subject") else ""
    rule, reason = match["rule"], match["reason"]
    place = match.get("place")
    where = f"{place} {match['place_name']}" if place and match.get("place_name") else place
    if match.get("group"):
        detail = f"{subject}{where} is in {match['group']}{_citation(match)}"
    elif rule.endswith(".jurisdictions"):
        detail = f"{subject}{where or 'unknown country'} is outside the stage's jurisdictions"
    elif rule.endswith(".tiers"):
        detail = f"tier {place} is not admitted by the stage"
    elif rule.startswith("suspensions."):
        detail = f"{subject}{where or 'unknown country'} is within the suspension's scope"
    elif match.get("subject") == "observed" and reason == "jurisdiction_unknown":
        detail = "the observed country is unknown"
    else:
        detail = ""
    shadow = " [shadow: reported, not enforced]" if match.get("shadow") else ""
    return f"{reason}: {rule}" + (f" ({detail})" if detail else "") + shadow


def _citation(match: Account) -> str:
    """' via ear_d5: <source>, checked <as_of>' — the list the place came through."""
    chain = match.get("chain") or []
    via = "".join(f" via {name}" for name in chain[1:])
    source = match.get("source")
    if not source:
        return via
    checked = f", checked {match['as_of']}" if match.get("as_of") else ""
    return f"{via}: {source}{checked}"

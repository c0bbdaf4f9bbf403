"""What the Decisions page shows: the filters as given in the query, checked; a record as a
row; a recorded decision explained as `gateway audit explain` explains it. Pure: no I/O,
no clock."""

from __future__ import annotations

import re
from urllib.parse import urlencode
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gateway.policy import countries, explain
from gateway.audit import recorded
from gateway.policy.decision import decide
from gateway.policy.snapshot import Policy
from gateway.policy.reasons import Reason

DECISION_ID = re.compile(r"^[0-9a-f]{32}$")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,127}$")  # an org or model id as policies write them
REASONS = tuple(sorted(str(r) for r in Reason))
FILTERS = ("org", "country", "model", "reason", "decision")


@dataclass(frozen=True)
class Filters:
    org: str | None = None
    country: str | None = None
    model: str | None = None
    reason: str | None = None
    decision: str | None = None

    def audit_fields(self) -> dict[str, str]:
        """The filters as audit record fields (for gateway.admin.app.matching_records)."""
        fields = {"org": self.org, "observed_country": self.country, "requested_model": self.model,
                  "decision": self.decision}
        return {k: v for k, v in fields.items() if v is not None}

    def query(self) -> str:
        return urlencode({k: v for k in FILTERS if (v := getattr(self, k)) is not None})


def filters_from(query: Mapping[str, str]) -> tuple[Filters, list[str]]:
    """The filters of a query string, and a message for each value refused (refused ones are not applied,
    and the page then shows no records rather than more than was asked for)."""
    problems = []
    values: dict[str, str | None] = {}
    for key in FILTERS:
        text = (query.get(key) or "").strip()
        values[key] = text or None
    if values["org"] and not NAME.match(values["org"]):
        problems.append("org: not an organization id")
    if values["model"] and not NAME.match(values["model"]):
        problems.append("model: not a model name")
    if values["country"]:
        values["country"] = values["country"].upper()
        if not (countries.is_country(values["country"]) or values["country"] == "UNKNOWN"):
            problems.append("country: not an ISO 3166-1 alpha-2 code")
    if values["reason"] and values["reason"] not in REASONS:
        problems.append("reason: not one of the gateway's reasons")
    if values["decision"] and values["decision"] not in ("allow", "deny"):
        problems.append("decision: allow or deny")
    return Filters(**values), problems


@dataclass(frozen=True)
class DecisionRow:
    decision_id: str
    time: str
    org: str
    model: str
    place: str
    decision: str
    status: str
    reasons: str


def row(record: Mapping[str, Any]) -> DecisionRow:
    def text(key: str) -> str:
        value = record.get(key)
        return "" if value is None else str(value)

    place = "/".join(p for p in (text("observed_country"), text("observed_region")) if p) or "unknown"
    return DecisionRow(text("decision_id"), text("time"), text("org") or "-", text("requested_model") or "-", place,
                       text("decision"), text("status"), ", ".join(str(r) for r in record.get("reasons") or ()))


@dataclass(frozen=True)
class Explained:
    text: str | None  # the account as `gateway audit explain` prints it; None when there is no decision to explain
    problem: str | None  # why not
    sources: tuple[dict[str, Any], ...]  # the rules that matched, with the legal source of each list


def explained(policy: Policy | None, record: Mapping[str, Any]) -> Explained:
    """The record decided again under `policy` at its own time, explained (gateway/policy/explain.py)."""
    if policy is None:
        return Explained(None, "No policy is loaded: nothing to decide this record against.", ())
    try:
        facts, at = recorded.facts_of(record)
    except recorded.RecordError as refused:
        return Explained(None, str(refused), ())
    account = explain.as_json(policy, facts, decide(policy, facts, at), at, recorded=record)
    sources = tuple({k: m.get(k) for k in ("reason", "rule", "place", "place_name", "group", "chain", "source", "as_of")}
                    for m in account.get("matches") or ())
    return Explained(explain.render(account), None, sources)

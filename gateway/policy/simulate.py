"""Replay recorded requests under a proposed bundle: which decisions would flip
(`gateway policy simulate DIR --audit FILE`).

Each audit record (one JSON object per line, written by `Gateway.finish`) gives
the facts `decide()` saw: `org`, `requested_model`, `observed_country`,
`observed_region`, `anonymizer`, and its `time`. They are decided again under
the proposed bundle — at the record's own time, or at one fixed time — and
compared with the recorded decision, or with a decision under a baseline bundle.

The recorded verdict is the policy's, read from the record's `reasons`: a
request denied only after the decision allowed it (`rate_limited`, or
`state_unavailable` when quota state was unreachable) or that failed upstream
counts as allowed, since the policy allowed it. Records of requests that never
reached a decision about a model — no organization (401, an unrouted 404, 503
before authentication) or no model (a 400/413 body, the model listing) — are
skipped and counted by cause.

Pure apart from `read_audit`: records in, counts out.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from gateway.policy.decision import Facts, decide
from gateway.policy.snapshot import Policy

Direction = Literal["allow_to_deny", "deny_to_allow"]
DIRECTIONS: tuple[Direction, ...] = ("allow_to_deny", "deny_to_allow")
# Reasons added after the policy decided (the policy itself allowed the request).
AFTER_DECISION = frozenset({"rate_limited", "state_unavailable"})
SKIP_CAUSES = ("no_org", "no_model", "malformed")
BREAKDOWNS = ("model", "org", "country", "reason")


@dataclass(frozen=True, slots=True)
class Replay:
    """One record whose decision would flip."""

    decision_id: str | None
    time: str
    org: str
    requested_model: str
    model: str  # canonical under the proposed bundle (or the recorded one, or as requested)
    country: str | None
    region: str | None
    anonymizer: bool
    direction: Direction
    before: tuple[str, ...]  # reasons of the recorded/baseline decision
    after: tuple[str, ...]  # reasons under the proposed bundle

    @property
    def reason(self) -> str:
        """The reason on the deny side: why it is now denied, or why it was."""
        denied = self.after if self.direction == "allow_to_deny" else self.before
        return denied[0] if denied else "none"

    def key(self, breakdown: str) -> str:
        return {
            "model": self.model,
            "org": self.org,
            "country": self.country or "unknown",
            "reason": self.reason,
        }[breakdown]

    def as_dict(self) -> dict[str, Any]:
        return {
            "decision_id": self.decision_id,
            "time": self.time,
            "org": self.org,
            "requested_model": self.requested_model,
            "model": self.model,
            "observed_country": self.country,
            "observed_region": self.region,
            "anonymizer": self.anonymizer,
            "direction": self.direction,
            "reasons_before": list(self.before),
            "reasons_after": list(self.after),
        }


@dataclass
class Simulation:
    policy_version: str
    at: datetime | None  # None: each record's own time
    baseline: str | None  # None: the recorded decisions; else the baseline bundle's version
    records: int = 0
    replayed: int = 0
    unchanged: int = 0
    skipped: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SKIP_CAUSES, 0))
    flips: list[Replay] = field(default_factory=list)

    def count(self, direction: Direction) -> int:
        return sum(1 for flip in self.flips if flip.direction == direction)

    def breakdown(self, by: str, examples: int = 3) -> list[dict[str, Any]]:
        """Flips grouped by model, org, country or reason, largest first, with
        up to `examples` decision ids each."""
        rows: dict[str, dict[str, Any]] = {}
        for flip in self.flips:
            row = rows.setdefault(flip.key(by), {by: flip.key(by), **dict.fromkeys(DIRECTIONS, 0), "examples": []})
            row[flip.direction] += 1
            if len(row["examples"]) < examples and flip.decision_id is not None:
                row["examples"].append(flip.decision_id)
        return sorted(rows.values(), key=lambda r: (-(r["allow_to_deny"] + r["deny_to_allow"]), r[by]))


def recorded_verdict(record: Mapping[str, Any]) -> str:
    """The policy's verdict as recorded: deny if any reason the policy gave remains."""
    reasons = record.get("reasons") or []
    return "deny" if any(r not in AFTER_DECISION for r in reasons) else "allow"


def _time(record: Mapping[str, Any]) -> datetime | None:
    text = record.get("time")
    if not isinstance(text, str):
        return None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _text(value: Any) -> bool:
    return value is None or isinstance(value, str)


def simulate(policy: Policy, records: Iterable[Any], *, at: datetime | None = None,
             baseline: Policy | None = None) -> Simulation:
    """Replay `records` (audit records as dicts; anything else counts as
    malformed) under `policy`, at `at` or each record's own time, against the
    recorded decisions or, with `baseline`, the decisions under that bundle."""
    if at is not None and at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    result = Simulation(policy.version, at, baseline.version if baseline is not None else None)
    for record in records:
        result.records += 1
        if not isinstance(record, Mapping):
            result.skipped["malformed"] += 1
            continue
        org, model = record.get("org"), record.get("requested_model")
        if not org:
            result.skipped["no_org" if _text(org) else "malformed"] += 1
            continue
        if not model:
            result.skipped["no_model" if _text(model) else "malformed"] += 1
            continue
        moment = at or _time(record)
        country, region = record.get("observed_country"), record.get("observed_region")
        if moment is None or not isinstance(org, str) or not isinstance(model, str) or not _text(country) \
                or not _text(region):
            result.skipped["malformed"] += 1
            continue
        facts = Facts(org, model, country, region, bool(record.get("anonymizer")))
        after = decide(policy, facts, moment)
        result.replayed += 1
        if baseline is not None:
            before = decide(baseline, facts, moment)
            was_allowed = before.allowed
            before_reasons = tuple(str(r) for r in before.reasons)
        else:
            was_allowed = recorded_verdict(record) == "allow"
            before_reasons = tuple(str(r) for r in record.get("reasons") or ())
        if was_allowed == after.allowed:
            result.unchanged += 1
            continue
        decision_id = record.get("decision_id")
        result.flips.append(Replay(
            decision_id=decision_id if isinstance(decision_id, str) else None,
            time=moment.astimezone(UTC).isoformat().replace("+00:00", "Z"),
            org=org,
            requested_model=model,
            model=after.model or record.get("model") or model,
            country=country,
            region=region,
            anonymizer=facts.anonymizer,
            direction="deny_to_allow" if after.allowed else "allow_to_deny",
            before=before_reasons,
            after=tuple(str(r) for r in after.reasons),
        ))
    return result


def read_audit(path: str | Path) -> Iterator[Any]:
    """Each non-blank line of an audit file, parsed; None for a line that is not JSON.
    Signed checkpoints (gateway/audit/checkpoints.py) are no requests: skipped."""
    with open(path, encoding="utf-8") as lines:
        for line in lines:
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError:
                yield None
                continue
            if not (isinstance(record, dict) and record.get("type") == "checkpoint"):
                yield record


# Output


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def as_json(result: Simulation, *, examples: int = 10) -> dict[str, Any]:
    return {
        "policy_version": result.policy_version,
        "at": _iso(result.at) if result.at else None,
        "compared_with": result.baseline or "recorded",
        "records": result.records,
        "replayed": result.replayed,
        "skipped": dict(result.skipped),
        "unchanged": result.unchanged,
        "flips": {direction: result.count(direction) for direction in DIRECTIONS},
        **{f"by_{by}": result.breakdown(by) for by in BREAKDOWNS},
        "examples": [flip.as_dict() for flip in result.flips[:examples]],
    }


_ARROW = {"allow_to_deny": "allow -> deny", "deny_to_allow": "deny -> allow"}


def render(result: Simulation, *, bundle: str = "the proposed bundle", audit: str = "the audit records",
           examples: int = 10) -> str:
    skipped = sum(result.skipped.values())
    lines = [
        f"Replayed {audit} under {bundle} (version {result.policy_version}), "
        + (f"at {_iso(result.at)}" if result.at else "each record at its own time")
        + ", against " + (f"the baseline bundle (version {result.baseline})" if result.baseline else "the recorded decisions")
        + ".",
        f"Records: {result.records}; replayed {result.replayed}; skipped {skipped}"
        + (" (" + ", ".join(f"{cause.replace('_', ' ')}: {n}" for cause, n in result.skipped.items() if n) + ")"
           if skipped else "") + ".",
        f"Would flip: {len(result.flips)} (allow -> deny: {result.count('allow_to_deny')}, "
        f"deny -> allow: {result.count('deny_to_allow')}); unchanged: {result.unchanged}.",
    ]
    if not result.flips:
        return "\n".join(lines)
    for by in BREAKDOWNS:
        lines += ["", f"By {by}:"]
        for row in result.breakdown(by):
            counts = ", ".join(f"{_ARROW[d]} {row[d]}" for d in DIRECTIONS if row[d])
            lines.append(f"  {row[by]}: {counts}" + (f" (e.g. {', '.join(row['examples'])})" if row["examples"] else ""))
    lines += ["", f"Examples (first {min(examples, len(result.flips))}):"]
    for flip in result.flips[:examples]:
        place = flip.region or flip.country or "an unknown country"
        why = ", ".join(flip.after if flip.direction == "allow_to_deny" else flip.before) or "none"
        lines.append(f"  {flip.decision_id or '(no id)'} {flip.time} {flip.org} {flip.requested_model} from {place}"
                     + (" via anonymizer" if flip.anonymizer else "") + f": {_ARROW[flip.direction]} ({why})")
    return "\n".join(lines)

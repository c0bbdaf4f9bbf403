"""A recorded decision, found by its id in audit files and turned back into the
facts `decide()` saw, so that `gateway audit explain DECISION_ID` can decide it
again at its own time and explain it with the same account as `gateway explain`.

An audit record keeps the facts (org, requested model, observed country and
region, anonymizer, time) and the verdict, not the rules that matched: those are
worked out again, under the bundle given, and the account says when that bundle
is not the one the record was decided under.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gateway.policy.decision import Facts


class RecordError(ValueError):
    """The record holds no decision about a model to explain, or is malformed."""


def find(paths: Iterable[str | Path], decision_id: str) -> dict[str, Any] | None:
    """The record with this decision id in the first file that has it, or None."""
    for path in paths:
        with open(path, encoding="utf-8") as lines:
            for line in lines:
                if decision_id not in line:  # cheap: most lines are not the one
                    continue
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if isinstance(record, dict) and record.get("decision_id") == decision_id:
                    return record
    return None


def facts_of(record: Mapping[str, Any]) -> tuple[Facts, datetime]:
    """The facts and time of a recorded decision about a model."""
    org, model = record.get("org"), record.get("requested_model")
    reasons = ", ".join(str(r) for r in record.get("reasons") or []) or "no reason"
    if not isinstance(org, str) or not org:
        raise RecordError(f"the request was never identified as an organization's ({reasons}, "
                          f"status {record.get('status')}): no policy decision to explain")
    if not isinstance(model, str) or not model:
        raise RecordError(f"the request named no model ({reasons}, status {record.get('status')}, "
                          f"{record.get('method')} {record.get('path')}): no model decision to explain")
    country, region = record.get("observed_country"), record.get("observed_region")
    if not all(value is None or isinstance(value, str) for value in (country, region)):
        raise RecordError("the record's observed place is malformed")
    return Facts(org, model, country, region, record.get("anonymizer") is True), _time(record.get("time"))


def _time(text: Any) -> datetime:
    try:
        moment = datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    except ValueError:
        raise RecordError(f"the record's time {text!r} is not an ISO 8601 time") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)

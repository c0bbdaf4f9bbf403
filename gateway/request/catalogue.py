"""What a caller may learn from the model catalogue (`GET /v1/models`, `GET
/v1/models/{id}`): the models it may use, and nothing that names another (issue 12).

The answer is built afresh from the allowed entries, never the upstream's document
with entries taken out: any other top-level field (`first_id`, `last_id`,
`has_more`, or one an upstream adds later) could name or betray a concealed model.
Each entry keeps only the fields that describe the entry itself (OpenAI's `id`,
`object`, `created`, `owned_by`; Anthropic's `type`, `id`, `display_name`,
`created_at`) and only as plain values: OpenAI's legacy `parent` and `root`, a
`permission` list or any nested object could name the model an entry derives
from. A kept field other than `id` whose text names a model the caller may not use
(by id or alias, ignoring case and punctuation, so "Frontier 5.6" names
frontier-5.6) is dropped too.

Pure: the decisions come in from `decide()`; no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from gateway.policy.decision import Facts, decide
from gateway.policy.snapshot import Policy

ENTRY_FIELDS = frozenset({"id", "object", "created", "owned_by", "type", "display_name", "created_at"})
# Top-level fields of Anthropic's list (its pagination); OpenAI's list has `object`.
_ANTHROPIC_PAGE = frozenset({"has_more", "first_id", "last_id"})


def _folded(text: str) -> str:
    return "".join(c for c in text.casefold() if c.isalnum())


class Concealed:
    """The names of the models a caller may not use, to find them inside other text."""

    def __init__(self, names: Iterable[str]) -> None:
        self.names = tuple(sorted({folded for name in names if (folded := _folded(name))}))

    def named_in(self, text: str) -> bool:
        folded = _folded(text)
        return any(name in folded for name in self.names)


def concealed(policy: Policy, facts: Facts, now: datetime, others: Iterable[str] = ()) -> Concealed:
    """Every name (id and aliases) of the policy's models this caller may not use,
    and `others` (upstream entries it may not see)."""
    names = list(others)
    for model in policy.models.values():
        if not decide(policy, _for(facts, model.id), now).allowed:
            names += [model.id, *model.aliases]
    return Concealed(names)


def entry(raw: dict[str, Any], hidden: Concealed) -> dict[str, Any]:
    """One model object as the caller may see it; `raw["id"]` must be a str."""
    kept = {"id": raw["id"]}
    for name, value in raw.items():
        if name == "id" or name not in ENTRY_FIELDS:
            continue
        if isinstance(value, str) and not hidden.named_in(value):
            kept[name] = value
        elif isinstance(value, (int, float, bool)) or value is None:
            kept[name] = value
    return kept


def listing(policy: Policy, facts: Facts, now: datetime, upstream: Any) -> dict[str, Any]:
    """The caller's catalogue from the upstream's list document. Raises ValueError
    when it is not one (`{"data": [...]}`)."""
    if not isinstance(upstream, dict) or not isinstance(upstream.get("data"), list):
        raise ValueError("not a model list")
    entries = [e for e in upstream["data"] if isinstance(e, dict) and isinstance(e.get("id"), str)]
    allowed, refused = [], []
    for raw in entries:
        (allowed if decide(policy, _for(facts, raw["id"]), now).allowed else refused).append(raw)
    hidden = concealed(policy, facts, now, (raw["id"] for raw in refused))
    data = [entry(raw, hidden) for raw in allowed]
    listed: dict[str, Any] = {"object": "list", "data": data}
    if _ANTHROPIC_PAGE & upstream.keys():
        # One page, complete as far as this caller goes: the gateway asks for no other
        # (the upstream's cursors would name, or count, what is left out).
        if upstream.get("object") != "list":
            del listed["object"]
        listed |= {"has_more": False, "first_id": data[0]["id"] if data else None,
                   "last_id": data[-1]["id"] if data else None}
    return listed


def _for(facts: Facts, model: str) -> Facts:
    return Facts(facts.org_id, model, facts.observed_country, facts.observed_region, facts.anonymizer, facts.credential)

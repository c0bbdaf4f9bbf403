"""Where a place in a jurisdiction group comes from: the legal list it came through.

A policy group such as `countries_of_concern` composes mirrors of legal lists
(`ear_d5`, `ear_e1`, ...) with `include`. When a rule matches a place through a
group, an explanation cites the group that lists the code itself, through the
chain of includes, with that group's `source` and `as_of`. The snapshot keeps
only the expanded membership (that is all `decide()` needs), so this walks the
validated documents instead, and only when a decision is explained: the request
path never pays for it. Pure: the policy in, the provenance out.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gateway.policy.snapshot import Policy

JURISDICTIONS = "jurisdictions.yaml"


@dataclass(frozen=True, slots=True)
class Provenance:
    """How `code` entered `group`: through `chain` (the group first), down to the
    group that lists it, `via`, whose legal `source` and check date are cited."""

    group: str
    code: str
    chain: tuple[str, ...]
    source: str | None
    as_of: str | None

    @property
    def via(self) -> str:
        return self.chain[-1]

    def as_dict(self) -> dict[str, Any]:
        return {"via": self.via, "chain": list(self.chain), "source": self.source, "as_of": self.as_of}


def provenance(policy: Policy, group: str, code: str) -> Provenance | None:
    """The first listing of `code` (a country or an ISO 3166-2 region) in `group`:
    the group's own list first, then its includes in order, as the loader expands
    them. None when the group does not hold the code."""
    groups: Mapping[str, Any] = policy.documents.get(JURISDICTIONS, {}).get("groups", {})
    chain = _chain(groups, group, code, ())
    if chain is None:
        return None
    listing = groups[chain[-1]]
    return Provenance(group, code, chain, listing.get("source"), listing.get("as_of"))


def _chain(groups: Mapping[str, Any], name: str, code: str, trail: tuple[str, ...]) -> tuple[str, ...] | None:
    group = groups.get(name)
    if group is None or name in trail:  # a cycle is refused at load; never loop on one
        return None
    trail += (name,)
    if code in group.get("regions" if "-" in code else "countries", ()):
        return trail
    for included in group.get("include", ()):
        found = _chain(groups, included, code, trail)
        if found is not None:
            return found
    return None

"""gateway/request/catalogue.py: what a caller may learn of the models from the catalogue,
decided without I/O on the reference policy at a fixed time."""

from __future__ import annotations

from typing import Any

import pytest

from conftest import at
from gateway.request import catalogue
from gateway.policy.decision import Facts
from gateway.policy.snapshot import Policy

NOW = at("2026-12-01T12:00:00Z")
PUBLIC = Facts("org-public", None, "US")  # standard tier: frontier-5.6 (pre-GA) and nextgen-7 are concealed
PARTNER = Facts("org-acme", None, "US")   # vetted partner: frontier-5.6 is its to use


def names(policy: Policy, facts: Facts, *others: str) -> catalogue.Concealed:
    return catalogue.concealed(policy, facts, NOW, others)


@pytest.mark.parametrize("text,named", [
    ("frontier-5.6", True), ("Frontier 5.6", True), ("FRONTIER_5.6 preview", True), ("fr-5.6", True),
    ("based on nextgen-7", True), ("Frontier-5.6-2026-11-01", True), ("extra-model", True),
    ("small-2", False), ("Small 2", False), ("openai", False), ("2026-01-01T00:00:00Z", False), ("", False),
])
def test_a_concealed_name_is_found_however_written(reference_policy: Policy, text: str, named: bool) -> None:
    assert names(reference_policy, PUBLIC, "extra-model").named_in(text) is named


def test_a_partner_may_see_the_names_of_its_own_models(reference_policy: Policy) -> None:
    hidden = names(reference_policy, PARTNER)
    assert not hidden.named_in("Frontier 5.6") and hidden.named_in("nextgen-7")


@pytest.mark.parametrize("raw,kept", [
    ({"id": "small-2", "object": "model", "created": 1, "owned_by": "demo"},
     {"id": "small-2", "object": "model", "created": 1, "owned_by": "demo"}),
    ({"id": "small-2", "object": "model", "root": "frontier-5.6", "parent": "nextgen-7"}, {"id": "small-2", "object": "model"}),
    ({"id": "small-2", "root": "small-2", "parent": None}, {"id": "small-2"}),  # the fields go whatever they say
    ({"id": "small-2", "permission": [{"id": "modelperm-1"}], "metadata": {"base": "frontier-5.6"}}, {"id": "small-2"}),
    ({"id": "small-2", "owned_by": "team-frontier-5.6", "display_name": "Small 2, distilled from Nextgen 7"},
     {"id": "small-2"}),
    ({"type": "model", "id": "small-2", "display_name": "Small 2", "created_at": "2026-01-01T00:00:00Z"},
     {"type": "model", "id": "small-2", "display_name": "Small 2", "created_at": "2026-01-01T00:00:00Z"}),
    ({"id": "small-2", "created": {"$date": "frontier-5.6"}, "object": ["model"]}, {"id": "small-2"}),
])
def test_an_entry_keeps_only_what_describes_itself(reference_policy: Policy, raw: dict[str, Any],
                                                   kept: dict[str, Any]) -> None:
    assert catalogue.entry(raw, names(reference_policy, PUBLIC)) == kept


def upstream(*ids: str, **top: Any) -> dict[str, Any]:
    return {"data": [{"id": i, "object": "model", "parent": "frontier-5.6"} for i in ids], **top}


@pytest.mark.parametrize("document,expected", [
    (upstream("frontier-5.6", "small-2", "fable", object="list", next_cursor="frontier-5.6"),
     {"object": "list", "data": [{"id": "small-2", "object": "model"}, {"id": "fable", "object": "model"}]}),
    (upstream("frontier-5.6", "small-2", "nextgen-7", has_more=True, first_id="frontier-5.6", last_id="nextgen-7"),
     {"data": [{"id": "small-2", "object": "model"}], "has_more": False, "first_id": "small-2", "last_id": "small-2"}),
    (upstream("frontier-5.6", last_id="frontier-5.6"), {"data": [], "has_more": False, "first_id": None, "last_id": None}),
    (upstream("fable", "frontier-5.6", object="list", has_more=True, last_id="frontier-5.6"),  # a paginated OpenAI-style list
     {"object": "list", "data": [{"id": "fable", "object": "model"}], "has_more": False, "first_id": "fable",
      "last_id": "fable"}),
    ({"data": [{"id": "small-2"}, {"id": 7}, "fable", None, {"name": "mythos"}]}, {"object": "list", "data": [{"id": "small-2"}]}),
])
def test_a_listing_is_built_from_the_allowed_entries(reference_policy: Policy, document: dict[str, Any],
                                                     expected: dict[str, Any]) -> None:
    assert catalogue.listing(reference_policy, PUBLIC, NOW, document) == expected


@pytest.mark.parametrize("document", [[], "x", None, {"object": "list"}, {"data": {"id": "small-2"}}])
def test_a_listing_needs_a_list_document(reference_policy: Policy, document: Any) -> None:
    with pytest.raises(ValueError):
        catalogue.listing(reference_policy, PUBLIC, NOW, document)

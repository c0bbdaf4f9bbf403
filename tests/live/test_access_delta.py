"""A change is tightening or loosening by what it does to decisions (gateway/live/access_delta.py)."""

from __future__ import annotations

from typing import Any

import pytest

from conftest import at
from gateway.live.access_delta import as_json, classify
from gateway.live.overlay import Overlay, apply, check_suspension
from gateway.policy.snapshot import Policy

NOW = at("2026-12-01T12:00:00Z")


def live_suspension(policy: Policy, **data: Any) -> Overlay:
    document = check_suspension(policy, Overlay(), {"reason": "order"} | data, "s1")
    return Overlay(suspensions={"s1": document})


@pytest.mark.parametrize(("before", "after", "kind"), [
    # A new suspension only removes access; lifting it grants it back.
    (Overlay(), "suspend small-2 in JP", "tightening"),
    ("suspend small-2 in JP", Overlay(), "loosening"),
    # An org suspended, or lowered a tier; and back.
    (Overlay(), Overlay(organizations={"org-acme": {"status": "suspended"}}), "tightening"),
    (Overlay(organizations={"org-acme": {"status": "suspended"}}), Overlay(), "loosening"),
    (Overlay(), Overlay(organizations={"org-acme": {"tier": "standard"}}), "tightening"),
    (Overlay(organizations={"org-public": {"tier": "government"}}), Overlay(), "tightening"),
    (Overlay(), Overlay(organizations={"org-public": {"tier": "government"}}), "loosening"),
    # Vetting extended for an org that lapsed: access granted back.
    (Overlay(), Overlay(organizations={"org-lapsed": {"vetted_until": "2027-12-31"}}), "loosening"),
    # A credential reinstated is access granted.
    (Overlay(credentials={"key-1": {"why": "misuse"}}), Overlay(), "loosening"),
    (Overlay(), Overlay(credentials={"key-1": {"why": "misuse"}}), "tightening"),
    # Nothing a decision reads changes: not a loosening.
    (Overlay(), Overlay(organizations={"org-acme": {"status_reason": "noted"}}), "tightening"),
])
def test_a_change_is_classified_by_its_access_delta(reference_policy: Policy, before: Any, after: Any, kind: str) -> None:
    def policy(overlay: Any) -> Policy:
        if isinstance(overlay, str):
            overlay = live_suspension(reference_policy, models=["small-2"], deny_in=["JP"])
        return apply(reference_policy, overlay)

    assert classify(policy(before), policy(after), NOW).kind == kind


def test_a_loosening_that_starts_later_is_found_at_its_breakpoint(reference_policy: Policy) -> None:
    """Lifting a suspension that only starts next year grants nothing now, but it does then."""
    later = live_suspension(reference_policy, models=["small-2"], deny_in=["JP"], **{"from": "2027-03-01T00:00:00Z"})
    delta = classify(apply(reference_policy, later), reference_policy, NOW)
    assert delta.kind == "loosening"
    granted = as_json(delta)["granted"]
    assert {g["at"] for g in granted} == {"2027-03-01T00:00:00Z"} and all(g["places"] == ["JP"] for g in granted)


def test_the_signature_follows_the_access_delta_not_the_time(reference_policy: Policy) -> None:
    suspended = apply(reference_policy, live_suspension(reference_policy, models=["small-2"], deny_in=["JP"]))
    wider = apply(reference_policy, live_suspension(reference_policy, models=["small-2"], deny_in=["JP", "KR"]))
    lift = classify(suspended, reference_policy, NOW)
    assert lift.signature() == classify(suspended, reference_policy, at("2026-12-01T13:00:00Z")).signature()
    assert lift.signature() != classify(wider, reference_policy, NOW).signature()

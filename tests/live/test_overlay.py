"""Live changes on top of a bundle, decided by the pure core."""

from __future__ import annotations

import pytest

from conftest import at
from gateway.decision import Facts, decide
from gateway.live.overlay import ChangeError, Overlay, apply, check_org_patch, check_suspension
from gateway.policy.snapshot import Policy

DEC_1 = at("2026-12-01T12:00:00Z")


def decision(policy: Policy, org: str, model: str, country: str | None) -> tuple[int, list[str]]:
    result = decide(policy, Facts(org, model, country), DEC_1)
    return result.status, list(result.reasons)


def test_empty_overlay_is_the_bundle(reference_policy: Policy) -> None:
    assert apply(reference_policy, Overlay()) is reference_policy


def test_live_suspension_applies_to_aliases_and_changes_the_version(reference_policy: Policy) -> None:
    document = check_suspension(reference_policy, Overlay(), {"models": ["SMALL-LATEST"], "deny_outside": ["us"], "reason": "order"}, "s1")
    live = apply(reference_policy, Overlay(suspensions={"s1": document}))
    assert decision(live, "org-public", "small-2", "JP") == (451, ["export_suspended"])
    assert decision(live, "org-public", "small-latest", "US") == (200, [])
    assert live.version != reference_policy.version
    assert decision(reference_policy, "org-public", "small-2", "JP") == (200, [])  # the bundle is untouched


def test_lifting_a_bundle_suspension(reference_policy: Policy) -> None:
    during = at("2026-11-10T00:00:00Z")
    lifted = apply(reference_policy, Overlay(lifted=frozenset({"commerce-2026-11-03"})))
    assert decide(reference_policy, Facts("org-public", "fable", "JP"), during).status == 451
    assert decide(lifted, Facts("org-public", "fable", "JP"), during).status == 200


def test_org_overrides(reference_policy: Policy) -> None:
    live = apply(reference_policy, Overlay(organizations={
        "org-acme": {"status": "suspended"},
        "org-public": {"tier": "vetted_partner", "vetted_until": "2026-12-31"},
        "org-gone": {"status": "denied"},  # not in the bundle: skipped
    }))
    assert decision(live, "org-acme", "small-2", "US") == (403, ["org_suspended"])
    assert decision(live, "org-public", "frontier-5.6", "US") == (200, [])
    assert decide(live, Facts("org-public", "frontier-5.6", "US"), at("2027-01-01T00:00:00Z")).status == 404
    assert "org-gone" not in live.organizations


def test_suspension_checks_name_every_problem(reference_policy: Policy) -> None:
    with pytest.raises(ChangeError) as refused:
        check_suspension(reference_policy, Overlay(), {"models": ["nope"], "deny_outside": ["mars"], "deny_in": ["us"],
                                                       "reason": "x", "from": "2026-12-02T00:00:00Z", "until": "2026-12-01T00:00:00Z"}, "s2")
    problems = " | ".join(refused.value.problems)
    for words in ("unknown model 'nope'", "unknown jurisdiction group 'mars'", "exactly one of", "later than 'from'"):
        assert words in problems
    with pytest.raises(ChangeError) as duplicate:
        check_suspension(reference_policy, Overlay(), {"models": ["fable"], "deny_in": ["us"], "reason": "x"}, "commerce-2026-11-03")
    assert duplicate.value.status == 409
    with pytest.raises(ChangeError):
        check_suspension(reference_policy, Overlay(), {"models": ["fable"], "deny_in": ["us"]}, "s3")  # no reason


def test_org_patch_checks(reference_policy: Policy) -> None:
    assert check_org_patch(reference_policy, "org-acme", {"tier": "verified"}) == {"tier": "verified"}
    for org, data, status in [("org-nobody", {"status": "denied"}, 404), ("org-acme", {"tier": "emperor"}, 422),
                              ("org-acme", {"colour": "red"}, 422), ("org-acme", {}, 422),
                              ("org-acme", {"vetted_until": "soon"}, 422)]:
        with pytest.raises(ChangeError) as refused:
            check_org_patch(reference_policy, org, data)
        assert refused.value.status == status

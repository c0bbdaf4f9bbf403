"""Live changes on top of a bundle, decided by the pure core."""

from __future__ import annotations

from dataclasses import replace
from types import MappingProxyType
from typing import Any

import pytest

from conftest import at
from gateway.policy.decision import Facts, decide
from gateway.live.overlay import (ChangeError, Overlay, apply, check_bundle, check_org_patch, check_suspension, lost_controls,
                                  with_resets)
from gateway.policy.snapshot import Policy, merge

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


def place(policy: Policy, org: str, model: str, country: str | None, region: str | None = None) -> tuple[int, list[str]]:
    result = decide(policy, Facts(org, model, country, region), DEC_1)
    return result.status, list(result.reasons)


def suspended(base: Policy, scope: str, *entries: str) -> Policy:
    document = check_suspension(base, Overlay(), {"models": ["small-2"], scope: list(entries), "reason": "order"}, "s1")
    return apply(base, Overlay(suspensions={"s1": document}))


# (scope, entries, place -> status): ISO codes stand beside group names; a region code
# matches the region whatever country the database reports it under.
PLACES = [
    ("deny_in", ["JP"], {("JP", None): 451, ("JP", "JP-13"): 451, ("US", None): 200}),
    ("deny_in", ["JP-13"], {("JP", "JP-13"): 451, ("JP", "JP-27"): 200, ("JP", None): 200}),
    ("deny_in", ["UA-65"], {("UA", "UA-65"): 451, ("RU", "UA-65"): 451, ("UA", "UA-30"): 200, ("RU", None): 200}),
    ("deny_in", ["us", "GB"], {("US", None): 451, ("GB", None): 451, ("JP", None): 200}),
    ("deny_outside", ["US"], {("US", None): 200, ("US", "US-WA"): 200, ("JP", None): 451}),
    ("deny_outside", ["UA"], {("UA", "UA-30"): 200, ("RU", "UA-65"): 451}),  # filed under RU: not admitted by UA alone
    ("deny_outside", ["us", "JP-13"], {("US", None): 200, ("JP", "JP-13"): 200, ("JP", "JP-27"): 451}),
]


@pytest.mark.parametrize(("scope", "entries", "outcomes"), PLACES, ids=[f"{p[0]} {' '.join(p[1])}" for p in PLACES])
def test_a_live_suspension_names_single_places_by_iso_code(reference_policy: Policy, scope: str, entries: list[str],
                                                            outcomes: dict[tuple[str | None, str | None], int]) -> None:
    live = suspended(reference_policy, scope, *entries)
    found = {where: place(live, "org-public", "small-2", *where) for where in outcomes}
    assert found == {where: (status, ["export_suspended"] if status == 451 else []) for where, status in outcomes.items()}
    assert {place(reference_policy, "org-public", "small-2", *where)[0] for where in outcomes} == {200}  # the bundle alone serves them


# (entry, the problem named): an entry is an upper-case ISO code or a group's name.
BAD_ENTRIES = [
    ("jp", "deny_in: unknown jurisdiction group 'jp', nor an ISO 3166 code (did you mean 'JP'?)"),
    ("ua-43", "deny_in: unknown jurisdiction group 'ua-43', nor an ISO 3166 code (did you mean 'UA-43'?)"),
    ("ZZ", "deny_in: unknown jurisdiction group 'ZZ', nor an ISO 3166 code"),
    ("XX-1", "deny_in: unknown jurisdiction group 'XX-1', nor an ISO 3166 code"),
    ("UA-4321", "deny_in: unknown jurisdiction group 'UA-4321', nor an ISO 3166 code"),
    ("JPN", "deny_in: unknown jurisdiction group 'JPN', nor an ISO 3166 code"),
]


@pytest.mark.parametrize(("entry", "problem"), BAD_ENTRIES, ids=[b[0] for b in BAD_ENTRIES])
def test_an_entry_that_is_neither_group_nor_code_is_refused_by_name(reference_policy: Policy, entry: str,
                                                                     problem: str) -> None:
    with pytest.raises(ChangeError) as refused:
        check_suspension(reference_policy, Overlay(), {"models": ["fable"], "deny_in": ["us", "JP", entry], "reason": "x"}, "s4")
    assert refused.value.problems == [problem] and refused.value.status == 422


def test_a_suspension_keeps_its_entries_as_given(reference_policy: Policy) -> None:
    data = {"models": ["fable"], "deny_in": ["UA-43", "countries_of_concern", "JP"], "reason": "x"}
    document = check_suspension(reference_policy, Overlay(), data, "s5")
    assert document["deny_in"] == ["UA-43", "countries_of_concern", "JP"]
    [suspension] = [s for s in apply(reference_policy, Overlay(suspensions={"s5": document})).suspensions if s.id == "s5"]
    assert suspension.groups.names == ("UA-43", "countries_of_concern", "JP")
    assert suspension.groups.match("UA", "UA-43") == "UA-43" and suspension.groups.match("JP") == "JP"


# A suspension's recorded places against a bundle that changed under it (issue 14)


def with_group(policy: Policy, name: str, codes: list[str]) -> Policy:
    """`policy` with the jurisdiction group `name` holding `codes` (a bundle edit)."""
    group = merge((name,), [(name, dict.fromkeys(codes, name), {}, False)])
    return replace(policy, groups=MappingProxyType(dict(policy.groups) | {name: group}))


def without_group(policy: Policy, name: str) -> Policy:
    return replace(policy, groups=MappingProxyType({k: v for k, v in policy.groups.items() if k != name}))


def made_on(policy: Policy, scope: str) -> dict[str, Any]:
    return check_suspension(policy, Overlay(), {"models": ["small-2"], scope: ["partners"], "reason": "order"}, "s-p")


# (bundle edit, country -> status of small-2 for org-public under deny_in [partners] made when partners = [JP, KR])
DENY_IN = [
    ("unchanged", lambda p: with_group(p, "partners", ["JP", "KR"]), {"JP": 451, "KR": 451, "DE": 200}),
    ("group shrunk", lambda p: with_group(p, "partners", ["JP"]), {"JP": 451, "KR": 451, "DE": 200}),
    ("group grown", lambda p: with_group(p, "partners", ["JP", "KR", "DE"]), {"JP": 451, "KR": 451, "DE": 451}),
    ("group gone", lambda p: without_group(p, "partners"), {"JP": 451, "KR": 451, "DE": 200}),
]


@pytest.mark.parametrize(("edit", "bundle", "expected"), DENY_IN, ids=[d[0] for d in DENY_IN])
def test_deny_in_denies_what_was_recorded_and_what_the_group_holds_now(reference_policy: Policy, edit: str,
                                                                       bundle: Any, expected: dict[str, int]) -> None:
    made = with_group(reference_policy, "partners", ["JP", "KR"])
    document = made_on(made, "deny_in")
    assert document["expanded"] == {"partners": {"countries": ["JP", "KR"], "regions": []}}
    live = apply(bundle(made), Overlay(suspensions={"s-p": document}))
    assert {c: place(live, "org-public", "small-2", c)[0] for c in expected} == expected


# deny_outside [partners] made when partners = [JP, KR]: it admits only what is in both.
DENY_OUTSIDE = [
    ("group shrunk", lambda p: with_group(p, "partners", ["JP"]), {"JP": 200, "KR": 451, "DE": 451}),
    ("group grown", lambda p: with_group(p, "partners", ["JP", "KR", "DE"]), {"JP": 200, "KR": 200, "DE": 451}),
    ("group gone", lambda p: without_group(p, "partners"), {"JP": 200, "KR": 200, "DE": 451}),
]


@pytest.mark.parametrize(("edit", "bundle", "expected"), DENY_OUTSIDE, ids=[d[0] for d in DENY_OUTSIDE])
def test_deny_outside_never_admits_more_than_was_recorded(reference_policy: Policy, edit: str, bundle: Any,
                                                          expected: dict[str, int]) -> None:
    made = with_group(reference_policy, "partners", ["JP", "KR"])
    live = apply(bundle(made), Overlay(suspensions={"s-p": made_on(made, "deny_outside")}))
    assert {c: place(live, "org-public", "small-2", c)[0] for c in expected} == expected


def test_a_record_without_places_or_a_malformed_one_follows_the_group(reference_policy: Policy) -> None:
    made = with_group(reference_policy, "partners", ["JP"])
    document = made_on(made, "deny_in")
    for record in ({k: v for k, v in document.items() if k != "expanded"}, document | {"expanded": {"partners": "JP"}}):
        live = apply(with_group(made, "partners", ["KR"]), Overlay(suspensions={"s-p": record}))
        assert (place(live, "org-public", "small-2", "KR")[0], place(live, "org-public", "small-2", "JP")[0]) == (451, 200)


def test_lost_controls_name_each_suspension_and_override(reference_policy: Policy) -> None:
    made = with_group(reference_policy, "partners", ["JP"])
    overlay = Overlay(suspensions={"s-p": made_on(made, "deny_in"),
                                   "s-iso": check_suspension(made, Overlay(), {"models": ["fable", "small-2"], "deny_in": ["JP"],
                                                                               "reason": "x"}, "s-iso")},
                      organizations={"org-acme": {"status": "denied"}})
    assert lost_controls(made, overlay) == []
    models = dict(made.names)
    del models["fable"]
    lacking = replace(without_group(made, "partners"), names=MappingProxyType(models),
                      organizations=MappingProxyType({k: v for k, v in made.organizations.items() if k != "org-acme"}))
    assert lost_controls(lacking, overlay) == [
        "live suspension 's-iso' names model 'fable', which the bundle does not define: keep them in the bundle, "
        "or lift the suspension with the change",
        "live suspension 's-p' names jurisdiction group 'partners', which the bundle does not define: keep them in "
        "the bundle, or lift the suspension with the change",
        "live override of organization 'org-acme': the bundle does not define the organization: keep it in the "
        "bundle, or reset the override with the change"]
    with pytest.raises(ChangeError) as refused:
        check_bundle(lacking, overlay)
    assert refused.value.status == 409 and len(refused.value.problems) == 3


@pytest.mark.parametrize(("fields", "override", "expected"), [
    ({"status": None}, {"status": "denied", "status_reason": "EL"}, {"status": None, "status_reason": None}),
    ({"status": None}, {"status": "denied", "tier": "verified"}, {"status": None}),
    ({"status": None, "status_reason": "kept"}, {"status": "denied", "status_reason": "EL"},
     {"status": None, "status_reason": "kept"}),
    ({"status": "suspended"}, {"status": "denied", "status_reason": "EL"}, {"status": "suspended"}),
    ({"tier": None}, {"tier": "verified", "status_reason": "EL"}, {"tier": None}),
])
def test_a_status_reset_takes_the_reason_with_it(fields: dict[str, Any], override: dict[str, Any],
                                                 expected: dict[str, Any]) -> None:
    assert with_resets(fields, override) == expected

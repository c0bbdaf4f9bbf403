"""decide() against the reference cases and further cases of docs/policy.md."""

from __future__ import annotations

import json
from typing import Any

import pytest

from conftest import REFERENCE_POLICY, at, reference_cases
from gateway.cli import main
from gateway.policy.decision import Facts, decide, decide_caller
from gateway.policy.snapshot import Policy

CASES = reference_cases()


def facts_of(case: dict[str, Any]) -> Facts:
    return Facts(
        org_id=case["org"],
        model=case["model"],
        observed_country=case.get("country"),
        observed_region=case.get("region"),
        anonymizer=case.get("anonymizer", False),
    )


def check(result: dict[str, Any], case: dict[str, Any]) -> None:
    assert result["status"] == case["status"]
    assert result["decision"] == ("allow" if case["status"] == 200 else "deny")
    if "reason" in case:
        assert result["reasons"][0] == case["reason"]
    if "reasons" in case:
        assert result["reasons"] == case["reasons"]
    if case["status"] == 200:
        assert result["reasons"] == []


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_reference_case_through_decide(reference_policy: Policy, case: dict[str, Any]) -> None:
    decision = decide(reference_policy, facts_of(case), at(case["at"]))
    check({"status": decision.status, "decision": decision.verdict, "reasons": list(decision.reasons)}, case)
    assert decision.policy_version == reference_policy.version


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_reference_case_through_explain_cli(case: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["explain", "--policy", str(REFERENCE_POLICY), "--org", case["org"], "--model", case["model"], "--at", case["at"], "--json"]
    if case.get("country"):
        argv += ["--country", case["country"]]
    if case.get("region"):
        argv += ["--region", case["region"]]
    if case.get("anonymizer"):
        argv.append("--anonymizer")
    assert main(argv) == 0
    check(json.loads(capsys.readouterr().out), case)


# Further cases on the reference policy: other facts and times, as §2.1 says.
# (name, at, org, model, observed country, region, anonymizer, status, reasons)
MORE = [
    ("vetting lapses exactly at midnight after vetted_until", "2026-12-16T00:00:00Z", "org-expiring", "frontier-5.6", "US", None, False, 404, ["tier_not_permitted"]),
    ("government evaluator abroad during review", "2026-11-10T00:00:00Z", "org-caisi", "frontier-5.6", "GB", None, False, 451, ["jurisdiction_not_permitted"]),
    ("government evaluator from an unknown country during review", "2026-11-10T00:00:00Z", "org-caisi", "frontier-5.6", None, None, False, 451, ["jurisdiction_unknown", "jurisdiction_not_permitted"]),
    ("review ends as the next stage starts", "2026-11-25T00:00:00Z", "org-kyoto", "frontier-5.6", "JP", None, False, 200, []),
    ("mythos limited stage has no jurisdiction list", "2026-09-15T00:00:00Z", "org-kyoto", "mythos", "BR", None, False, 200, []),
    ("mythos limited stage still applies covered rules", "2026-09-15T00:00:00Z", "org-kyoto", "mythos", "RU", None, False, 451, ["jurisdiction_of_concern"]),
    ("suspension starts exactly at from", "2026-11-03T00:00:00Z", "org-public", "mythos", "GB", None, False, 451, ["export_suspended"]),
    ("one second before a suspension", "2026-11-02T23:59:59Z", "org-public", "mythos", "GB", None, False, 200, []),
    ("suspension treats an unknown country as outside", "2026-11-10T00:00:00Z", "org-public", "fable", None, None, False, 451, ["export_suspended", "jurisdiction_unknown"]),
    ("suspension checks the declared country of a covered model", "2026-11-10T00:00:00Z", "org-kyoto", "fable", "US", None, False, 451, ["export_suspended"]),
    ("suspension does not touch uncovered models", "2026-11-10T00:00:00Z", "org-public", "small-2", "JP", None, False, 200, []),
    ("declared country of concern, embargoed observed country and an anonymizer", "2027-02-02T00:00:00Z", "org-offshore", "frontier-5.6", "IR", None, True, 451, ["jurisdiction_embargoed", "jurisdiction_of_concern", "anonymizer"]),
    ("denied org still reports jurisdiction", "2026-12-01T12:00:00Z", "org-listed", "small-2", "CU", None, False, 403, ["org_denied", "jurisdiction_embargoed"]),
    ("unknown org and unknown model", "2026-12-01T12:00:00Z", "org-nobody", "gpt-unknown", "US", None, False, 403, ["org_unknown", "model_unknown"]),
    ("embargoed region of a country with other regions", "2026-12-01T12:00:00Z", "org-public", "small-2", "UA", "UA-09", False, 451, ["jurisdiction_embargoed"]),
    ("region without a City database cannot match", "2026-12-01T12:00:00Z", "org-public", "small-2", "UA", None, False, 200, []),
    ("future model before its review", "2027-01-09T23:59:59Z", "org-caisi", "nextgen-7", "US", None, False, 404, ["model_not_released"]),
    ("future model in review for a partner is concealed", "2027-01-20T00:00:00Z", "org-acme", "nextgen-7", "US", None, False, 404, ["tier_not_permitted"]),
    ("alias with a date suffix", "2027-02-02T00:00:00Z", "org-public", "FRONTIER-5.6-2026-11-01", "DE", None, False, 200, []),
    ("blank model name is unknown", "2026-12-01T12:00:00Z", "org-public", "   ", "US", None, False, 404, ["model_unknown"]),
    # An unknown place is refused for every model (allow_unknown_places is not set); a model that
    # does not exist is still a 404 first, as it is from an embargoed country.
    ("unknown place, uncovered model at GA", "2027-02-02T00:00:00Z", "org-public", "small-2", None, None, False, 451, ["jurisdiction_unknown"]),
    ("unknown place and an unknown model", "2026-12-01T12:00:00Z", "org-public", "gpt-unknown", None, None, False, 404, ["model_unknown", "jurisdiction_unknown"]),
    ("unknown place, concealed model", "2026-12-01T12:00:00Z", "org-public", "frontier-5.6", None, None, False, 404, ["tier_not_permitted", "jurisdiction_unknown", "jurisdiction_not_permitted"]),
    ("unknown place, denied org", "2026-12-01T12:00:00Z", "org-listed", "small-2", None, None, False, 403, ["org_denied", "jurisdiction_unknown"]),
    # A region names its own country (ISO 3166-2): Crimea and Sevastopol reported under RU are
    # still the embargoed UA-43 and UA-40, and a deny list matches every reading of the place.
    ("Crimea reported under RU", "2026-12-01T12:00:00Z", "org-public", "small-2", "RU", "UA-43", False, 451, ["jurisdiction_embargoed"]),
    ("Sevastopol reported under RU", "2026-12-01T12:00:00Z", "org-public", "small-2", "RU", "UA-40", False, 451, ["jurisdiction_embargoed"]),
    ("Donetsk reported under RU", "2026-12-01T12:00:00Z", "org-public", "small-2", "RU", "UA-14", False, 451, ["jurisdiction_embargoed"]),
    ("a Russian region is not embargoed", "2026-12-01T12:00:00Z", "org-public", "small-2", "RU", "RU-MOW", False, 200, []),
    ("Crimea under RU, covered model: every reading reported", "2026-12-01T12:00:00Z", "org-acme", "frontier-5.6", "RU", "UA-43", False, 451,
     ["jurisdiction_embargoed", "jurisdiction_of_concern", "jurisdiction_not_permitted"]),
    ("the region's country is denied even when the database reports another", "2027-02-02T00:00:00Z", "org-public", "frontier-5.6", "UA", "CN-22", False, 451, ["jurisdiction_of_concern"]),
    # Allow lists admit a place by its region, or only if every country it may be in is listed.
    ("stage jurisdictions do not admit a UA region reported under JP", "2026-12-01T12:00:00Z", "org-kyoto", "frontier-5.6", "JP", "UA-23", False, 451, ["jurisdiction_not_permitted"]),
    ("stage jurisdictions admit a JP region under JP", "2026-12-01T12:00:00Z", "org-kyoto", "frontier-5.6", "JP", "JP-13", False, 200, []),
    ("deny_outside does not admit a UA region reported under the US", "2026-11-10T00:00:00Z", "org-public", "fable", "US", "UA-23", False, 451, ["export_suspended"]),
    ("deny_outside admits a US region under the US", "2026-11-10T00:00:00Z", "org-public", "fable", "US", "US-CA", False, 200, []),
]


@pytest.mark.parametrize("name,when,org,model,country,region,anonymizer,status,reasons", MORE, ids=[m[0] for m in MORE])
def test_more_cases(reference_policy: Policy, name: str, when: str, org: str, model: str, country: str | None,
                    region: str | None, anonymizer: bool, status: int, reasons: list[str]) -> None:
    facts = Facts(org_id=org, model=model, observed_country=country, observed_region=region, anonymizer=anonymizer)
    decision = decide(reference_policy, facts, at(when))
    assert (decision.status, list(decision.reasons)) == (status, reasons)


@pytest.mark.parametrize("name,when,org,model,country,region,anonymizer,status,reasons",
                         [m for m in MORE if m[4] is not None or m[5] is None], ids=[m[0] for m in MORE if m[4] is not None or m[5] is None])
def test_more_cases_through_explain_cli(name: str, when: str, org: str, model: str, country: str | None,
                                        region: str | None, anonymizer: bool, status: int, reasons: list[str],
                                        capsys: pytest.CaptureFixture[str]) -> None:
    """explain decides the same facts the same way: a region in another country is decided, not refused."""
    argv = ["explain", "--policy", str(REFERENCE_POLICY), "--org", org, "--model", model, "--at", when, "--json"]
    argv += ["--country", country] if country else []
    argv += ["--region", region] if region else []
    argv += ["--anonymizer"] if anonymizer else []
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    assert (result["status"], result["reasons"]) == (status, reasons)
    assert (result["observed_country"], result["observed_region"]) == (country, region)


def test_credential_failures_are_401_and_nothing_else(reference_policy: Policy) -> None:
    for state, reason in [("missing", "credential_missing"), ("invalid", "credential_invalid")]:
        decision = decide(reference_policy, Facts(org_id=None, model="small-2", credential=state), at("2026-12-01T00:00:00Z"))
        assert (decision.status, list(decision.reasons), decision.allowed) == (401, [reason], False)


def test_allowed_decision_names_model_stage_and_upstream(reference_policy: Policy) -> None:
    decision = decide(reference_policy, Facts(org_id="org-acme", model=" Fr-5.6 ", observed_country="US"), at("2026-12-01T00:00:00Z"))
    assert decision.allowed and decision.status == 200
    assert (decision.model, decision.stage, decision.covered, decision.tier, decision.upstream) == (
        "frontier-5.6", "limited_partner", True, "vetted_partner", "default")


def test_matches_say_which_place_and_group(reference_policy: Policy) -> None:
    decision = decide(reference_policy, Facts(org_id="org-offshore", model="frontier-5.6", observed_country="US"), at("2026-12-01T00:00:00Z"))
    first = decision.matches[0]
    assert (first.reason, first.subject, first.place, first.group) == ("jurisdiction_of_concern", "declared", "CN", "countries_of_concern")


CALLER_REASONS = {"credential_missing", "credential_invalid", "org_unknown", "org_denied", "org_suspended"}


@pytest.mark.parametrize("org", ["org-caisi", "org-acme", "org-kyoto", "org-lapsed", "org-expiring",
                                 "org-verified-br", "org-public", "org-offshore", "org-listed",
                                 "org-nobody"])
def test_decide_caller_settles_exactly_what_the_caller_alone_settles(reference_policy: Policy, org: str) -> None:
    """Decided before the body is read: a denial exactly when decide() would deny for a
    credential or organization reason whatever the model and place, with the same
    status and first reason; never a denial that a model or place could have changed."""
    when = at("2026-12-01T12:00:00Z")
    for credential in ("valid", "missing", "invalid"):
        for country, region in (("US", None), ("CU", None), (None, None), ("UA", "UA-09")):
            caller = decide_caller(reference_policy, Facts(org, None, country, region, credential=credential), when)
            for model in ("small-2", "frontier-5.6", "nextgen-7", "gpt-unknown"):
                full = decide(reference_policy, Facts(org, model, country, region, credential=credential), when)
                if caller is None:
                    assert full.allowed or full.reasons[0] not in CALLER_REASONS, (credential, country, model)
                else:
                    assert not caller.allowed and caller.reasons[0] in CALLER_REASONS
                    assert (caller.status, caller.reasons[0]) == (full.status, full.reasons[0]), (credential, country, model)
                    assert set(caller.reasons) <= set(full.reasons)


def test_decide_caller_keeps_the_model_free_reasons(reference_policy: Policy) -> None:
    decision = decide_caller(reference_policy, Facts("org-listed", None, "CU"), at("2026-12-01T12:00:00Z"))
    assert decision is not None and list(decision.reasons) == ["org_denied", "jurisdiction_embargoed"]


# An expired GeoIP database (gateway/geo/files.py): covered models are unavailable, the
# others decided as usual, and a denial keeps its own reason first.
# (org, model, country, status, reasons)
EXPIRED_GEO = [
    ("org-acme", "frontier-5.6", "US", 503, ["state_unavailable"]),
    ("org-acme", "small-2", "US", 200, []),
    ("org-acme", "not-in-policy", "US", 404, ["model_unknown"]),
    ("org-acme", "frontier-5.6", "CN", 451, ["jurisdiction_of_concern", "jurisdiction_not_permitted", "state_unavailable"]),
]


@pytest.mark.parametrize("org, model, country, status, reasons", EXPIRED_GEO)
def test_an_expired_geoip_database_makes_covered_models_unavailable(
        reference_policy: Policy, org: str, model: str, country: str, status: int, reasons: list[str]) -> None:
    decision = decide(reference_policy, Facts(org, model, country, geo_expired=True), at("2026-12-01T12:00:00Z"))
    assert (decision.status, list(decision.reasons)) == (status, reasons)
    fresh = decide(reference_policy, Facts(org, model, country), at("2026-12-01T12:00:00Z"))
    assert list(fresh.reasons) == [r for r in reasons if r != "state_unavailable"]

"""`gateway policy simulate`: recorded requests replayed under a proposed bundle."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from conftest import REFERENCE_POLICY, at
from gateway.cli import main
from gateway.policy.decision import Facts, decide
from gateway.policy import simulate
from gateway.policy.load import load_bundle
from gateway.policy.snapshot import Policy


def record(policy: Policy, decision_id: str, time: str, org: str | None, model: str | None,
           country: str | None = None, region: str | None = None, anonymizer: bool = False,
           **override: Any) -> dict[str, Any]:
    """An audit record as `Gateway.finish` writes it, from a real decision."""
    entry: dict[str, Any] = {"time": time, "decision_id": decision_id, "org": org, "requested_model": model,
                             "observed_country": country, "observed_region": region, "anonymizer": anonymizer,
                             "policy_version": policy.version}
    if org is not None and model is not None:
        decision = decide(policy, Facts(org, model, country, region, anonymizer), at(time))
        entry |= {"model": decision.model, "stage": decision.stage, "covered": decision.covered,
                  "tier": decision.tier, "decision": decision.verdict, "status": decision.status,
                  "reasons": [str(r) for r in decision.reasons]}
    else:
        entry |= {"model": None, "decision": "deny", "status": 401, "reasons": []}
    return entry | override


@pytest.fixture
def records(reference_policy: Policy) -> list[dict[str, Any]]:
    p = reference_policy
    return [
        record(p, "d-allow-us", "2026-12-01T12:00:00Z", "org-acme", "fr-5.6", "US"),
        record(p, "d-small-kh", "2026-12-01T12:00:00Z", "org-public", "small-2", "KH"),
        record(p, "d-fable-kh", "2026-12-01T12:00:00Z", "org-public", "fable", "KH"),
        record(p, "d-mythos-kh", "2026-12-01T12:00:00Z", "org-kyoto", "mythos", "KH"),
        record(p, "d-fable-us-suspended", "2026-11-10T00:00:00Z", "org-public", "fable", "US"),
        record(p, "d-fable-fr-suspended", "2026-11-10T00:00:00Z", "org-public", "fable", "FR"),
        record(p, "d-offshore", "2026-12-01T12:00:00Z", "org-offshore", "fable", "US"),
        record(p, "d-crimea", "2026-12-01T12:00:00Z", "org-public", "small-latest", "UA", "UA-43"),
        record(p, "d-401", "2026-12-01T12:00:00Z", None, None, credential_id=None),
        record(p, "d-400", "2026-12-01T12:00:00Z", "org-acme", None, status=400, error="invalid_request"),
        # Allowed by the policy, refused by the quota afterwards.
        record(p, "d-429", "2026-12-01T12:00:00Z", "org-acme", "small-2", "US",
               decision="deny", status=429, reasons=["rate_limited"]),
    ]


@pytest.fixture
def proposed(tmp_path: Path) -> Path:
    """KH becomes a country of concern; the Commerce suspension is withdrawn."""
    bundle = tmp_path / "proposed"
    shutil.copytree(REFERENCE_POLICY, bundle)
    path = bundle / "jurisdictions.yaml"
    path.write_text(path.read_text().replace("    countries: [MO]", "    countries: [MO, KH]"))
    (bundle / "suspensions.yaml").write_text("suspensions: []\n")
    return bundle


def test_the_records_are_what_the_reference_decided(records: list[dict[str, Any]]) -> None:
    assert [r["decision"] for r in records[:8]] == ["allow", "allow", "allow", "allow", "allow", "deny", "deny", "deny"]
    assert records[5]["reasons"] == ["export_suspended"]


def test_replay_flips_exactly_the_affected_records(records: list[dict[str, Any]], proposed: Path) -> None:
    result = simulate.simulate(load_bundle(proposed).policy, [*records, None])
    assert (result.records, result.replayed, result.unchanged) == (12, 9, 6)
    assert result.skipped == {"no_org": 1, "no_model": 1, "malformed": 1}
    assert {(f.decision_id, f.direction, f.reason) for f in result.flips} == {
        ("d-fable-kh", "allow_to_deny", "jurisdiction_of_concern"),
        ("d-mythos-kh", "allow_to_deny", "jurisdiction_of_concern"),
        ("d-fable-fr-suspended", "deny_to_allow", "export_suspended"),
    }
    assert result.breakdown("model") == [
        {"model": "fable", "allow_to_deny": 1, "deny_to_allow": 1, "examples": ["d-fable-kh", "d-fable-fr-suspended"]},
        {"model": "mythos", "allow_to_deny": 1, "deny_to_allow": 0, "examples": ["d-mythos-kh"]},
    ]
    assert [(r["country"], r["allow_to_deny"], r["deny_to_allow"]) for r in result.breakdown("country")] == [
        ("KH", 2, 0), ("FR", 0, 1)]
    assert [(r["org"], r["allow_to_deny"] + r["deny_to_allow"]) for r in result.breakdown("org")] == [
        ("org-public", 2), ("org-kyoto", 1)]
    assert [(r["reason"], r["allow_to_deny"], r["deny_to_allow"]) for r in result.breakdown("reason")] == [
        ("jurisdiction_of_concern", 2, 0), ("export_suspended", 0, 1)]


def test_unchanged_bundle_flips_nothing(records: list[dict[str, Any]], reference_policy: Policy) -> None:
    result = simulate.simulate(reference_policy, records)
    assert result.flips == [] and result.unchanged == result.replayed == 9


def test_fixed_time_against_a_baseline(records: list[dict[str, Any]], proposed: Path,
                                       reference_policy: Policy) -> None:
    new = load_bundle(proposed).policy
    # Against the old bundle at each record's time: the same flips as against the records.
    own_time = simulate.simulate(new, records, baseline=reference_policy)
    assert own_time.baseline == reference_policy.version
    assert {f.decision_id for f in own_time.flips} == {"d-fable-kh", "d-mythos-kh", "d-fable-fr-suspended"}
    # On 2026-11-10 the old bundle's suspension denies fable and mythos outside the
    # US, so KH is denied under both bundles; the suspension's withdrawal frees
    # every non-US caller of fable and mythos who is not otherwise denied.
    fixed = simulate.simulate(new, records, at=at("2026-11-10T00:00:00Z"), baseline=reference_policy)
    assert {(f.decision_id, f.direction) for f in fixed.flips} == {("d-fable-fr-suspended", "deny_to_allow")}
    assert fixed.flips[0].time == "2026-11-10T00:00:00Z"


def test_malformed_records_are_counted(proposed: Path) -> None:
    policy = load_bundle(proposed).policy
    result = simulate.simulate(policy, [
        "not an object",
        {"org": "org-acme", "requested_model": "small-2"},  # no time
        {"org": "org-acme", "requested_model": "small-2", "time": "yesterday"},
        {"org": 7, "requested_model": "small-2", "time": "2026-12-01T00:00:00Z"},
        {"org": "org-acme", "requested_model": "small-2", "time": "2026-12-01T00:00:00Z", "observed_country": 1},
        {"org": "org-acme", "requested_model": "small-2", "time": "2026-12-01T00:00:00Z", "observed_country": "US",
         "reasons": []},
    ])
    assert result.skipped == {"no_org": 0, "no_model": 0, "malformed": 5}
    assert (result.replayed, result.unchanged) == (1, 1)


def test_unknown_places_served_before_issue_12_flip_to_denied(reference_policy: Policy) -> None:
    # Recorded when an unknown country was allowed for uncovered models; and from Crimea reported under RU.
    served = record(reference_policy, "d-unknown", "2026-12-01T12:00:00Z", "org-public", "small-2",
                    decision="allow", status=200, reasons=[])
    crimea = record(reference_policy, "d-crimea-ru", "2026-12-01T12:00:00Z", "org-public", "small-2", "RU", "UA-43",
                    decision="allow", status=200, reasons=[])
    result = simulate.simulate(reference_policy, [served, crimea])
    assert {(f.decision_id, f.direction, f.after) for f in result.flips} == {
        ("d-unknown", "allow_to_deny", ("jurisdiction_unknown",)),
        ("d-crimea-ru", "allow_to_deny", ("jurisdiction_embargoed",)),
    }
    assert "an unknown country" in simulate.render(result, bundle="reference", audit="audit.jsonl")


def write_audit(path: Path, records: list[dict[str, Any]]) -> None:
    lines = [json.dumps(r) for r in records]
    lines.insert(3, "{truncated")
    path.write_text("\n".join(lines) + "\n\n")


def test_cli_json(records: list[dict[str, Any]], proposed: Path, tmp_path: Path,
                  capsys: pytest.CaptureFixture[str]) -> None:
    audit = tmp_path / "audit.jsonl"
    write_audit(audit, records)
    assert main(["policy", "simulate", str(proposed), "--audit", str(audit), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert (result["records"], result["replayed"], result["skipped"]) == (
        12, 9, {"no_org": 1, "no_model": 1, "malformed": 1})
    assert result["flips"] == {"allow_to_deny": 2, "deny_to_allow": 1}
    assert result["compared_with"] == "recorded" and result["at"] is None
    assert [r["model"] for r in result["by_model"]] == ["fable", "mythos"]
    assert {e["decision_id"] for e in result["examples"]} == {"d-fable-kh", "d-mythos-kh", "d-fable-fr-suspended"}
    example = next(e for e in result["examples"] if e["decision_id"] == "d-fable-kh")
    assert example["reasons_before"] == [] and example["reasons_after"] == ["jurisdiction_of_concern"]


def test_cli_readable(records: list[dict[str, Any]], proposed: Path, tmp_path: Path,
                      capsys: pytest.CaptureFixture[str]) -> None:
    audit = tmp_path / "audit.jsonl"
    write_audit(audit, records)
    assert main(["policy", "simulate", str(proposed), "--audit", str(audit), "--against", str(REFERENCE_POLICY),
                 "--at", "2026-12-01T12:00:00Z"]) == 0
    out = capsys.readouterr().out
    assert "at 2026-12-01T12:00:00Z, against the baseline bundle" in out
    assert "skipped 3 (no org: 1, no model: 1, malformed: 1)" in out
    assert "Would flip: 2 (allow -> deny: 2, deny -> allow: 0)" in out
    assert "  KH: allow -> deny 2 (e.g. d-fable-kh, d-mythos-kh)" in out
    assert "d-fable-kh 2026-12-01T12:00:00Z org-public fable from KH: allow -> deny (jurisdiction_of_concern)" in out


def test_cli_missing_audit_file(proposed: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["policy", "simulate", str(proposed), "--audit", "/nonexistent/audit.jsonl"])
    assert exit_.value.code == 2 and "is not a file" in capsys.readouterr().err

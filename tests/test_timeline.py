"""Release timelines: `gateway explain --policy DIR --model X` without `--org`."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from conftest import REFERENCE_POLICY, at
from gateway.policy import timeline
from gateway.cli import main
from gateway.policy.load import load_bundle
from gateway.policy.snapshot import Policy

POLICY = str(REFERENCE_POLICY)


def test_limited_rollout(reference_policy: Policy) -> None:
    data = timeline.as_json(reference_policy, "fr-5.6", at("2026-12-01T12:00:00Z"))
    assert (data["model"], data["requested_model"], data["covered"], data["stage"]) == (
        "frontier-5.6", "fr-5.6", True, "limited_partner")
    assert data["coverage"]["decided_by"] == ["training_compute_flop", "cyber_capability_score"]
    assert [(s["stage"], s["from"], s["until"], s["days"], s["status"], s["tiers"], s["jurisdictions"])
            for s in data["stages"]] == [
        ("government_review", "2026-11-01T00:00:00Z", "2026-11-25T00:00:00Z", 24, "past", ["government"], ["us"]),
        ("limited_partner", "2026-11-25T00:00:00Z", "2027-02-01T00:00:00Z", 68, "in_force",
         ["government", "vetted_partner"], ["us", "tier1_allies"]),
        ("general", "2027-02-01T00:00:00Z", None, None, "upcoming",
         ["government", "vetted_partner", "verified", "standard"], None),
    ]
    assert len(data["stages"][1]["countries"]) == 19
    review = data["review"]
    assert (review["days"], review["window_days"], review["remaining_days"]) == (24, 30, 6)
    assert data["next"] == {"at": "2027-02-01T00:00:00Z", "in_days": 61.5, "change": "stage", "stage": "general",
                            "tiers": ["government", "vetted_partner", "verified", "standard"], "jurisdictions": None}
    assert data["rules"]["covered_models"]["deny_jurisdictions"] == ["countries_of_concern"]
    assert data["rules"]["unknown_country"] == "deny"


def test_coverage_decided_by_one_evaluation(reference_policy: Policy) -> None:
    data = timeline.as_json(reference_policy, "mythos", at("2026-11-10T00:00:00Z"))
    assert data["covered"] and data["coverage"]["decided_by"] == ["cyber_capability_score"]
    assert data["review"]["days"] == 30 and data["review"]["remaining_days"] == 0
    [suspension] = data["suspensions"]
    assert (suspension["id"], suspension["status"], suspension["scope"], suspension["groups"]) == (
        "commerce-2026-11-03", "in_force", "deny_outside", ["us"])
    assert data["next"]["change"] == "suspension_ends" and data["next"]["at"] == "2026-11-21T00:00:00Z"


def test_suspension_events(reference_policy: Policy) -> None:
    before = timeline.as_json(reference_policy, "fable", at("2026-10-01T00:00:00Z"))
    assert [(e["change"], e["at"]) for e in before["upcoming"]] == [
        ("suspension_starts", "2026-11-03T00:00:00Z"), ("suspension_ends", "2026-11-21T00:00:00Z")]
    after = timeline.as_json(reference_policy, "fable", at("2026-12-01T00:00:00Z"))
    assert after["suspensions"][0]["status"] == "ended" and after["next"] is None


def test_uncovered_model(reference_policy: Policy) -> None:
    data = timeline.as_json(reference_policy, "small-latest", at("2026-12-01T00:00:00Z"))
    assert (data["model"], data["covered"], data["stage"], data["next"]) == ("small-2", False, "general", None)
    assert data["coverage"]["decided_by"] == ["training_compute_flop", "cyber_capability_score"]
    assert data["review"]["stage"] is False and data["review"]["required"] is False
    # Refused: the reference framework does not allow unknown places (its unknown_country: allow is inert).
    assert "covered_models" not in data["rules"] and data["rules"]["unknown_country"] == "deny"
    allowing = replace(reference_policy, allow_unknown_places=True)
    assert timeline.as_json(allowing, "small-latest", at("2026-12-01T00:00:00Z"))["rules"]["unknown_country"] == "allow"


def test_unreleased_model_with_a_missing_evaluation(reference_policy: Policy) -> None:
    data = timeline.as_json(reference_policy, "nextgen-7", at("2026-12-01T00:00:00Z"))
    assert (data["released"], data["stage"]) == (False, None)
    assert [c["counts_as_met"] for c in data["coverage"]["checks"]] == [False, True]
    assert data["review"]["days"] == 26
    assert [(e["stage"], e["at"]) for e in data["upcoming"]] == [
        ("government_review", "2027-01-10T00:00:00Z"), ("limited_partner", "2027-02-05T00:00:00Z")]
    # In its last stage nothing further is scheduled.
    assert timeline.as_json(reference_policy, "nextgen-7", at("2027-03-01T00:00:00Z"))["next"] is None


def test_unknown_model(reference_policy: Policy) -> None:
    with pytest.raises(KeyError):
        timeline.as_json(reference_policy, "nope", at("2026-12-01T00:00:00Z"))


def test_readable(reference_policy: Policy) -> None:
    text = timeline.render(reference_policy, "frontier-5.6", at("2026-12-01T12:00:00Z"))
    assert "Model frontier-5.6 (aliases: fr-5.6, frontier-5.6-2026-11-01) at 2026-12-01T12:00:00Z" in text
    assert "COVERED (any of: training_compute_flop 3e+26 >= 1e+26; cyber_capability_score 0.72 >= 0.5)." in text
    assert ("  > limited_partner    2026-11-25T00:00:00Z -> 2027-02-01T00:00:00Z (68 days): government, "
            "vetted_partner; in us, tier1_allies (19 places)  [in force]") in text
    assert "Government review: 24 of the 30-day window used (6 days to spare)." in text
    assert "Next: general from 2027-02-01T00:00:00Z (in 61.5 days): every tier; anywhere the rules allow." in text
    unreleased = timeline.render(reference_policy, "nextgen-7", at("2026-12-01T00:00:00Z"))
    assert "No stage is in force yet: the model is not released" in unreleased
    assert "cyber_capability_score not recorded (counts as met: fail closed)" in unreleased
    small = timeline.render(reference_policy, "small-2", at("2026-12-01T00:00:00Z"))
    assert "Government review: none (not covered: not required)." in small
    assert "Next: nothing further is scheduled." in small


def test_open_ended_review(bundle_dir: Path) -> None:
    models = bundle_dir / "models.yaml"
    text = models.read_text()
    models.write_text(text.replace("      - stage: limited_partner\n        from: 2027-02-05T00:00:00Z\n"
                                   "        tiers: [government, vetted_partner]\n        jurisdictions: [us]\n", ""))
    policy = load_bundle(bundle_dir).policy
    review = timeline.as_json(policy, "nextgen-7", at("2027-01-20T00:00:00Z"))["review"]
    assert (review["days"], review["elapsed_days"], review["used"], review["remaining_days"]) == (None, 10, 10, 20)
    assert "open-ended (no later stage scheduled); 10 of the 30-day window elapsed" in timeline.render(
        policy, "nextgen-7", at("2027-01-20T00:00:00Z"))


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    try:
        code = main(list(argv))
    except SystemExit as exit_:
        code = int(exit_.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_timeline(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "explain", "--policy", POLICY, "--model", "fr-5.6", "--at", "2026-12-01T12:00:00Z")
    assert code == 0 and "Release timeline:" in out and "[in force]" in out
    code, out, _ = run(capsys, "explain", "--policy", POLICY, "--model", "fr-5.6", "--at", "2026-12-01T12:00:00Z", "--json")
    assert code == 0 and json.loads(out)["stage"] == "limited_partner"


def test_cli_explain_with_org_is_unchanged(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "explain", "--policy", POLICY, "--org", "org-acme", "--model", "fr-5.6",
                       "--country", "US", "--at", "2026-12-01T12:00:00Z", "--json")
    assert code == 0 and json.loads(out)["decision"] == "allow"


@pytest.mark.parametrize("argv,words", [
    (["--model", "nope"], "not a model or alias"),
    (["--model", "fr-5.6", "--country", "US"], "--country needs --org"),
    (["--model", "fr-5.6", "--anonymizer"], "--anonymizer needs --org"),
])
def test_cli_timeline_usage_errors(capsys: pytest.CaptureFixture[str], argv: list[str], words: str) -> None:
    code, _, err = run(capsys, "explain", "--policy", POLICY, *argv)
    assert code == 2 and words in err

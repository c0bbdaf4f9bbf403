"""`gateway policy diff`: what changed between two bundles, and whose access flips."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import REFERENCE_POLICY, at
from gateway.cli import main
from gateway.policy.countries import ALPHA2
from gateway.policy.decision import Facts, decide
from gateway.policy import diff
from gateway.policy.load import load_bundle
from gateway.policy.schema import TIERS
from gateway.policy.snapshot import Policy

COVERED_GA = ("fable", "frontier-5.6", "mythos")  # covered and generally available on 2027-03-01
AFTER_GA = at("2027-03-01T00:00:00Z")


@pytest.fixture
def bundles(tmp_path: Path) -> tuple[Path, Path]:
    old, new = tmp_path / "old", tmp_path / "new"
    shutil.copytree(REFERENCE_POLICY, old)
    shutil.copytree(REFERENCE_POLICY, new)
    return old, new


def edit(bundle: Path, file: str, old: str, new: str) -> None:
    path = bundle / file
    text = path.read_text()
    if old not in text:
        raise ValueError(f"{old!r} not in {file}")
    path.write_text(text.replace(old, new, 1))


def compare(old: Path, new: Path, when: str | None = None, **options: object) -> diff.PolicyDiff:
    return diff.diff(load_bundle(old).policy, load_bundle(new).policy, at(when) if when else AFTER_GA, **options)  # type: ignore[arg-type]


def cells(result: diff.PolicyDiff) -> set[tuple[str, str, str, str]]:
    """Every flipped cell: (model, tier, direction, place)."""
    return {(f.model, f.who, f.direction, diff.place_name(p)) for f in result.access for p in f.places}


def test_identical_bundles(bundles: tuple[Path, Path]) -> None:
    result = compare(*bundles)
    assert not result.changed and result.access == () and result.org_flips == ()
    assert result.cells == 5 * 4 * len(result.places)
    # Every country, the four UA regions the reference groups name, and unknown.
    assert len(result.places) == len(ALPHA2) + 4 + 1
    assert ("UA", "UA-43") in result.places and diff.UNKNOWN in result.places
    assert "No semantic change." in diff.render(result)
    assert "No decision flips" in diff.render(result)


def test_adding_kh_to_countries_of_concern_flips_exactly_the_covered_kh_cells(bundles: tuple[Path, Path]) -> None:
    old, new = bundles
    edit(new, "jurisdictions.yaml", "    countries: [MO]", "    countries: [MO, KH]")
    result = compare(old, new)
    assert [(g.name, g.change, g.gained, g.lost) for g in result.groups] == [
        ("countries_of_concern", "changed", ("KH",), ())]
    assert (result.models, result.organizations, result.suspensions, result.framework) == ((), (), (), ())
    assert cells(result) == {(model, tier, "allow_to_deny", "KH") for model in COVERED_GA for tier in TIERS}
    assert {reason for f in result.access for reason in f.reasons} == {"jurisdiction_of_concern"}
    text = diff.render(result)
    assert "~ countries_of_concern: gains KH" in text
    assert "  fable [government, vetted_partner, verified, standard] allow -> deny:\n      jurisdiction_of_concern: KH" in text


def test_a_change_to_an_included_mirror_shows_in_every_group_that_includes_it(bundles: tuple[Path, Path]) -> None:
    old, new = bundles
    edit(new, "jurisdictions.yaml", "countries: [IR, KP, SY]", "countries: [IR, KP, SY, KH]")
    result = compare(old, new)
    assert [(g.name, g.gained) for g in result.groups] == [("countries_of_concern", ("KH",)), ("ear_e1", ("KH",))]
    assert cells(result) == {(model, tier, "allow_to_deny", "KH") for model in COVERED_GA for tier in TIERS}


def test_removing_a_country_flips_deny_to_allow(bundles: tuple[Path, Path]) -> None:
    old, new = bundles
    edit(new, "jurisdictions.yaml", "    countries: [MO]", "    countries: []")
    result = compare(old, new)
    assert [(g.name, g.lost) for g in result.groups] == [("countries_of_concern", ("MO",))]
    assert cells(result) == {(model, tier, "deny_to_allow", "MO") for model in COVERED_GA for tier in TIERS}
    assert {reason for f in result.access for reason in f.reasons} == {"jurisdiction_of_concern"}


def test_a_region_named_by_the_new_bundle_is_in_the_grid(bundles: tuple[Path, Path]) -> None:
    old, new = bundles
    edit(new, "jurisdictions.yaml", "regions: [UA-43, UA-40, UA-14, UA-09]", "regions: [UA-43, UA-40, UA-14, UA-09, UA-30]")
    result = compare(old, new)
    assert [(g.name, g.gained) for g in result.groups] == [("embargoed", ("UA-30",))]
    # Every released model is embargoed there now; nextgen-7 is open to US callers only.
    released = ("fable", "frontier-5.6", "mythos", "small-2")
    assert cells(result) == {(model, tier, "allow_to_deny", "UA-30") for model in released for tier in TIERS}


def test_moving_a_stage_date(bundles: tuple[Path, Path]) -> None:
    old, new = bundles
    edit(new, "models.yaml", "from: 2027-02-01T00:00:00Z", "from: 2027-02-10T00:00:00Z")
    result = compare(old, new, "2027-02-05T00:00:00Z")
    [model] = result.models
    assert (model.name, model.change, model.covered) == ("frontier-5.6", "changed", None)
    assert [(s.stage, [(f.field, f.old, f.new) for f in s.fields]) for s in model.stages] == [
        ("general", [("from", "2027-02-01T00:00:00Z", "2027-02-10T00:00:00Z")])]
    flipped = cells(result)
    assert {model for model, *_ in flipped} == {"frontier-5.6"}
    assert {direction for _, _, direction, _ in flipped} == {"allow_to_deny"}
    # Back in the limited rollout: verified and standard lose everything they had,
    # government and vetted partners keep the US and allies only.
    policy = load_bundle(old).policy
    probe = diff.with_probes(policy, {"US", "FR", "BR"})
    for tier in TIERS:
        for country in ("US", "FR", "BR"):
            was = decide(probe, Facts(diff._probe_id(tier, country), "frontier-5.6", country), at("2027-02-05T00:00:00Z"))
            assert was.allowed
            expected = tier in ("verified", "standard") or country == "BR"
            assert (("frontier-5.6", tier, "allow_to_deny", country) in flipped) == expected
    reasons = {tier: set(f.reasons) for f in result.access for tier in [f.who]}
    assert reasons["standard"] == {"tier_not_permitted"}
    assert reasons["government"] == {"jurisdiction_not_permitted"}
    # Once both bundles are past the new date nothing differs.
    assert compare(old, new, "2027-02-10T00:00:00Z").access == ()
    assert "stage general: from 2027-02-01T00:00:00Z -> 2027-02-10T00:00:00Z" in diff.render(result)


def test_coverage_change(bundles: tuple[Path, Path]) -> None:
    old, new = bundles
    edit(new, "models.yaml", "training_compute_flop: 2.0e26\n      cyber_capability_score: 0.81",
         "training_compute_flop: 2.0e24\n      cyber_capability_score: 0.31")
    result = compare(old, new)
    [model] = result.models
    assert (model.name, model.covered) == ("fable", (True, False))
    assert [(f.field, f.old, f.new) for f in model.fields] == [
        ("evaluations.cyber_capability_score", 0.81, 0.31), ("evaluations.training_compute_flop", 2e26, 2e24)]
    flipped = cells(result)
    assert {(m, d) for m, _, d, _ in flipped} == {("fable", "deny_to_allow")}
    # No longer covered: countries of concern are allowed; embargoed places still are not,
    # nor is an unknown place (refused for every model).
    assert {("fable", "standard", "deny_to_allow", p) for p in ("CN", "MO")} <= flipped
    assert not {p for *_, p in flipped} & {"US", "CU", "UA-43", "unknown"}
    assert "covered: yes -> no" in diff.render(result)


def test_framework_change(bundles: tuple[Path, Path]) -> None:
    old, new = bundles
    edit(new, "framework.yaml", "unknown_models: deny", "unknown_models: deny\nallow_unknown_places: true")
    result = compare(old, new)
    assert [(f.field, f.old, f.new) for f in result.framework] == [("allow_unknown_places", False, True)]
    # Only the uncovered model lets an unknown place through (covered_models.unknown_country: deny).
    assert cells(result) == {("small-2", tier, "deny_to_allow", "unknown") for tier in TIERS}
    edit(new, "framework.yaml", "unknown_country: allow ", "unknown_country: deny ")
    assert cells(compare(old, new)) == set()


def test_unknown_country_alone_changes_nothing(bundles: tuple[Path, Path]) -> None:
    old, new = bundles
    edit(new, "framework.yaml", "unknown_country: allow ", "unknown_country: deny ")
    result = compare(old, new)
    assert [(f.field, f.old, f.new) for f in result.framework] == [("unknown_country", "allow", "deny")]
    assert result.access == ()


def test_adding_and_removing_organizations(bundles: tuple[Path, Path]) -> None:
    old, new = bundles
    edit(new, "organizations.yaml", "  org-public:\n    name: Public Developer\n    country: US\n    tier: standard\n", "")
    edit(new, "organizations.yaml", "organizations:\n",
         "organizations:\n  org-new:\n    name: New Lab\n    country: FR\n    tier: verified\n")
    edit(new, "organizations.yaml", "vetted_until: 2027-03-31", "vetted_until: 2027-02-28")
    result = compare(old, new)
    assert [(o.name, o.change) for o in result.organizations] == [
        ("org-kyoto", "changed"), ("org-new", "added"), ("org-public", "removed")]
    assert [(f.field, f.old, f.new) for f in result.organizations[0].fields] == [
        ("vetted_until", "2027-03-31", "2027-02-28")]
    assert result.access == ()  # the tier grid uses its own organizations
    org_cells = {(f.who, f.model, f.direction, diff.place_name(p)) for f in result.org_flips for p in f.places}
    released = ("fable", "frontier-5.6", "mythos", "small-2")
    assert org_cells == (
        {("org-new", m, "deny_to_allow", "FR") for m in released}
        | {("org-public", m, "allow_to_deny", "US") for m in released}
        # org-kyoto's vetting has lapsed by 2027-03-01 in the new bundle: nextgen-7 is
        # limited to US vetted partners, so JP was denied anyway; nothing flips for it.
    )
    assert {r for f in result.org_flips if f.who == "org-public" for r in f.reasons} == {"org_unknown"}
    text = diff.render(result)
    assert "+ org-new: country FR; name New Lab; status active; tier verified" in text
    assert "- org-public: country US; name Public Developer; status active; tier standard" in text
    assert "~ org-kyoto: vetted_until 2027-03-31 -> 2027-02-28" in text


def test_a_region_named_only_by_a_suspension_is_in_the_grid(bundles: tuple[Path, Path]) -> None:
    old, new = bundles
    edit(new, "suspensions.yaml", "models: [fable, mythos]\n    deny_outside: [us]", "models: [small-2]\n    deny_in: [UA-30]")
    result = compare(old, new, "2026-11-10T00:00:00Z")
    assert ("UA", "UA-30") in result.places and ("UA", "UA-30") not in compare(old, old).places
    assert {(m, d, p) for m, _, d, p in cells(result) if m == "small-2"} == {("small-2", "allow_to_deny", "UA-30")}


def test_changing_a_suspension(bundles: tuple[Path, Path]) -> None:
    old, new = bundles
    edit(new, "suspensions.yaml", "until: 2026-11-21T00:00:00Z", "until: 2026-12-21T00:00:00Z")
    result = compare(old, new, "2026-12-01T00:00:00Z")
    assert [(s.name, s.change, [(f.field, f.old, f.new) for f in s.fields]) for s in result.suspensions] == [
        ("commerce-2026-11-03", "changed", [("until", "2026-11-21T00:00:00Z", "2026-12-21T00:00:00Z")])]
    flipped = cells(result)
    assert {(m, d) for m, _, d, _ in flipped} == {("fable", "allow_to_deny"), ("mythos", "allow_to_deny")}
    assert {reason for f in result.access for reason in f.reasons} == {"export_suspended"}
    places = {p for *_, p in flipped}
    assert "US" not in places and "CN" not in places  # CN was denied already (country of concern)
    assert {"FR", "JP", "BR", "UA"} <= places
    assert ("UA-43" not in places) and ("unknown" not in places)  # embargoed / unknown: denied before
    # While both bundles suspend, nothing differs.
    assert compare(old, new, "2026-11-10T00:00:00Z").access == ()
    assert "every place but" in diff.render(result)


def test_adding_and_removing_a_suspension_and_a_model(bundles: tuple[Path, Path]) -> None:
    old, new = bundles
    (new / "suspensions.yaml").write_text("suspensions: []\n")
    edit(new, "models.yaml", "  small-2:\n", "  small-3:\n    evaluations: {training_compute_flop: 1.0e20, cyber_capability_score: 0.0}\n"
                                             "    release: [{stage: general, from: 2025-01-01T00:00:00Z}]\n  small-2:\n")
    result = compare(old, new, "2026-11-10T00:00:00Z")
    assert [(s.name, s.change) for s in result.suspensions] == [("commerce-2026-11-03", "removed")]
    assert [(m.name, m.change, m.covered) for m in result.models] == [("small-3", "added", (None, False))]
    flipped = cells(result)
    assert {(m, d) for m, _, d, _ in flipped} == {
        ("fable", "deny_to_allow"), ("mythos", "deny_to_allow"), ("small-3", "deny_to_allow")}
    assert {r for f in result.access if f.model == "small-3" for r in f.reasons} == {"model_unknown"}


def test_model_filter(bundles: tuple[Path, Path]) -> None:
    old, new = bundles
    edit(new, "jurisdictions.yaml", "    countries: [MO]", "    countries: [MO, KH]")
    result = compare(old, new, models=["fr-5.6"])
    assert result.models_compared == ("frontier-5.6",)
    assert result.cells == 4 * len(result.places)
    assert cells(result) == {("frontier-5.6", tier, "allow_to_deny", "KH") for tier in TIERS}
    with pytest.raises(KeyError):
        compare(old, new, models=["nope"])


def test_anonymizer_grid(reference_policy: Policy) -> None:
    result = diff.diff(reference_policy, reference_policy, AFTER_GA, anonymizer=True)
    assert result.access == () and result.anonymizer


def test_cli(bundles: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    old, new = bundles
    edit(new, "jurisdictions.yaml", "    countries: [MO]", "    countries: [MO, KH]")
    assert main(["policy", "diff", str(old), str(new), "--at", "2027-03-01T00:00:00Z", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["changes"]["groups"] == [
        {"name": "countries_of_concern", "change": "changed", "gained": ["KH"], "lost": [], "fields": []}]
    assert result["access"]["grid"]["cells"] == 5 * 4 * 255
    assert "declared country = observed country" in result["access"]["grid"]["organization"]
    assert sorted((f["model"], f["tier"], f["direction"], f["places"][0]) for f in result["access"]["flips"]) == sorted(
        (m, t, "allow_to_deny", "KH") for m in COVERED_GA for t in TIERS)
    assert all(f["reasons"] == {"jurisdiction_of_concern": ["KH"]} for f in result["access"]["flips"])
    assert main(["policy", "diff", str(old), str(new), "--at", "2027-03-01T00:00:00Z", "--model", "small-latest"]) == 0
    out = capsys.readouterr().out
    assert "gains KH" in out and "1 model(s) x 4 tiers" in out and "No decision flips" in out
    with pytest.raises(SystemExit) as exit_:
        main(["policy", "diff", str(old), str(new), "--model", "nope"])
    assert exit_.value.code == 2 and "in neither bundle" in capsys.readouterr().err


def test_a_group_put_in_shadow_mode_stops_denying(bundles: tuple[Path, Path]) -> None:
    old, new = bundles
    edit(new, "jurisdictions.yaml", "    countries: [MO]\n", "    countries: [MO]\n    mode: shadow\n")
    result = compare(old, new)
    [group] = result.groups
    assert (group.name, group.gained, group.lost) == ("countries_of_concern", (), ())
    assert [(f.field, f.old, f.new) for f in group.fields] == [("mode", "enforce", "shadow")]
    flipped = cells(result)
    assert {(m, d) for m, _, d, _ in flipped} == {(m, "deny_to_allow") for m in COVERED_GA}
    assert ("fable", "standard", "deny_to_allow", "MO") in flipped
    assert ("fable", "standard", "deny_to_allow", "CU") not in flipped  # still embargoed

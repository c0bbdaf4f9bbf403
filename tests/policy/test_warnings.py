"""Legal but suspicious bundles load, with a warning naming file, line and key path."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import pytest

from conftest import REFERENCE_POLICY, at
from gateway.cli import main
from gateway.policy.issues import Issue
from gateway.policy.load import load_bundle


def edit(bundle: Path, file: str, old: str, new: str) -> None:
    path = bundle / file
    text = path.read_text()
    if old not in text:
        raise ValueError(f"{old!r} not in {file}")
    path.write_text(text.replace(old, new, 1))


def line_of(bundle: Path, file: str, needle: str) -> int:
    for number, line in enumerate((bundle / file).read_text().splitlines(), 1):
        if needle in line:
            return number
    raise ValueError(needle)


def warnings_of(bundle: Path, now: datetime | None = None) -> list[Issue]:
    warnings = list(load_bundle(bundle, now=now).warnings)
    assert all(w.severity == "warning" for w in warnings)
    return warnings


# The reference framework still says `unknown_country: allow  # for models that are not covered`,
# which has no effect since unknown places are refused unless `allow_unknown_places` (issue 12).
INERT_ALLOW = "unknown_country: allow               # for models that are not covered\n"
INERT = ("framework.yaml", "unknown_country")


@pytest.fixture
def bundle_dir(bundle_dir: Path) -> Path:
    """The reference bundle without its inert key, so that each case shows only its own warning."""
    edit(bundle_dir, "framework.yaml", INERT_ALLOW, "")
    return bundle_dir


def test_reference_bundle_has_one_timeless_warning() -> None:
    [warning] = warnings_of(REFERENCE_POLICY)
    assert (warning.file, warning.path) == INERT
    assert warning.line == line_of(REFERENCE_POLICY, "framework.yaml", INERT_ALLOW.strip())
    assert "no effect while unknown places are refused" in warning.message


def test_a_bundle_without_it_has_none(bundle_dir: Path) -> None:
    assert warnings_of(bundle_dir) == []
    # As written, or as the default: refused unknown places are the safe setting, nothing to warn.
    edit(bundle_dir, "framework.yaml", "unknown_models: deny", "unknown_models: deny\nallow_unknown_places: false")
    assert warnings_of(bundle_dir) == []
    edit(bundle_dir, "framework.yaml", "unknown_models: deny", "unknown_models: deny\nunknown_country: deny")
    assert warnings_of(bundle_dir) == []


def test_allowing_unknown_places_is_warned(bundle_dir: Path) -> None:
    edit(bundle_dir, "framework.yaml", "unknown_models: deny", "unknown_models: deny\nallow_unknown_places: true")
    [warning] = warnings_of(bundle_dir)
    assert (warning.file, warning.path) == ("framework.yaml", "allow_unknown_places")
    assert warning.line == line_of(bundle_dir, "framework.yaml", "allow_unknown_places: true")
    assert "unknown places are allowed" in warning.message
    # With unknown places allowed, unknown_country: allow does take effect: not warned as inert.
    edit(bundle_dir, "framework.yaml", "unknown_models: deny", "unknown_models: deny\nunknown_country: allow")
    assert [w.path for w in warnings_of(bundle_dir)] == ["allow_unknown_places"]


def test_every_inert_allow_is_warned(bundle_dir: Path) -> None:
    edit(bundle_dir, "framework.yaml", "    unknown_country: deny\n", "    unknown_country: allow\n")
    edit(bundle_dir, "framework.yaml", "deny_jurisdictions: [embargoed]\n",
         "deny_jurisdictions: [embargoed]\n    unknown_country: allow\n")
    edit(bundle_dir, "framework.yaml", "unknown_models: deny", "unknown_models: deny\nunknown_country: allow")
    assert sorted(w.path for w in warnings_of(bundle_dir)) == [
        "rules.all_models.unknown_country", "rules.covered_models.unknown_country", "unknown_country"]


def test_reference_bundle_at_a_fixed_time() -> None:
    # 2026-12-02: the Commerce suspension ended on 2026-11-21, org-lapsed's vetting
    # ended on 2026-10-31 and org-expiring's lapses after 2026-12-15 (14 days).
    found = {(w.file, w.path): w for w in warnings_of(REFERENCE_POLICY, at("2026-12-02T00:00:00Z"))}
    assert set(found) == {
        INERT,
        ("suspensions.yaml", "suspensions[0].until"),
        ("organizations.yaml", "organizations.org-lapsed.vetted_until"),
        ("organizations.yaml", "organizations.org-expiring.vetted_until"),
    }
    assert "already expired at 2026-11-21T00:00:00Z" in found["suspensions.yaml", "suspensions[0].until"].message
    assert "lapses in 14 days" in found["organizations.yaml", "organizations.org-expiring.vetted_until"].message
    assert "counts as standard" in found["organizations.yaml", "organizations.org-lapsed.vetted_until"].message
    assert str(found["suspensions.yaml", "suspensions[0].until"]).startswith("suspensions.yaml:9: ")


def test_time_does_not_change_the_snapshot(bundle_dir: Path) -> None:
    plain = load_bundle(bundle_dir).policy
    timed = load_bundle(bundle_dir, now=at("2026-12-02T00:00:00Z")).policy
    assert plain.version == timed.version


# (case, file, old, new, key path, words, line marker)
SUSPICIOUS = [
    ("group nothing uses", "jurisdictions.yaml", "groups:\n", "groups:\n  spare:\n    countries: [FR]\n    source: x\n",
     "groups.spare", "group is not used", "spare:"),
    ("empty stage jurisdictions", "models.yaml", "jurisdictions: [us]\n      - stage: general\n        from: 2026-08-25",
     "jurisdictions: []\n      - stage: general\n        from: 2026-08-25",
     "models.fable.release[0].jurisdictions", "empty jurisdictions admit no one", "jurisdictions: []"),
    ("empty stage tiers", "models.yaml", "tiers: [government, vetted_partner]\n        jurisdictions: [us, tier1_allies]",
     "tiers: []\n        jurisdictions: [us, tier1_allies]",
     "models.frontier-5.6.release[1].tiers", "empty tiers admit no one", "tiers: []"),
    ("stage open only where a covered model is denied", "models.yaml",
     "jurisdictions: [us]\n      - stage: general\n        from: 2026-08-25",
     "jurisdictions: [ear_e1]\n      - stage: general\n        from: 2026-08-25", "models.fable.release[0].jurisdictions",
     "denied by rules.all_models / rules.covered_models: the stage is never open", "jurisdictions: [ear_e1]"),
    ("stage open only in embargoed places", "models.yaml", "      - stage: general\n        from: 2025-01-01T00:00:00Z",
     "      - stage: general\n        from: 2025-01-01T00:00:00Z\n        jurisdictions: [embargoed]",
     "models.small-2.release[0].jurisdictions", "denied by rules.all_models: the stage is never open",
     "jurisdictions: [embargoed]"),
    ("limited partner stage without tiers", "models.yaml",
     "        tiers: [government, vetted_partner]\n      - stage: general\n        from: 2026-10-01",
     "      - stage: general\n        from: 2026-10-01",
     "models.mythos.release[1]", "limited_partner stage without tiers admits every tier", None),
    ("deny_outside nothing", "suspensions.yaml", "deny_outside: [us]", "deny_outside: []",
     "suspensions[0].deny_outside", "denies everywhere", "deny_outside: []"),
    ("deny_in nothing", "suspensions.yaml", "deny_outside: [us]", "deny_in: []",
     "suspensions[0].deny_in", "does nothing", "deny_in: []"),
    ("vetted partner that never lapses", "organizations.yaml", "    vetted_until: 2027-06-30\n", "",
     "organizations.org-acme.tier", "vetted_partner without vetted_until", None),
    ("vetting on a standard org", "organizations.yaml", "    tier: standard\n    status: denied",
     "    tier: standard\n    vetted_until: 2027-01-01\n    status: denied",
     "organizations.org-listed.vetted_until", "no effect on a standard organization", "vetted_until: 2027-01-01"),
]


@pytest.mark.parametrize("case,file,old,new,path,words,marker", SUSPICIOUS, ids=[s[0] for s in SUSPICIOUS])
def test_suspicious_bundle_loads_with_a_warning(bundle_dir: Path, case: str, file: str, old: str, new: str,
                                                path: str, words: str, marker: str | None) -> None:
    edit(bundle_dir, file, old, new)
    warnings = warnings_of(bundle_dir)  # loads: warnings never refuse a bundle
    named = [w for w in warnings if w.file == file and w.path == path and words in w.message]
    assert named, "\n".join(map(str, warnings))
    assert named[0].line is not None
    if marker is not None:
        assert named[0].line == line_of(bundle_dir, file, marker)
    assert len(warnings) == 1, "\n".join(map(str, warnings))


def test_included_groups_count_as_used(bundle_dir: Path) -> None:
    # ear_d5/ear_e1/ear_e2 are used only through countries_of_concern's include.
    edit(bundle_dir, "jurisdictions.yaml", "groups:\n", "groups:\n  outer:\n    include: [inner]\n    source: x\n"
                                                        "  inner:\n    countries: [FR]\n    source: x\n")
    paths = {w.path for w in warnings_of(bundle_dir)}
    assert paths == {"groups.outer", "groups.inner"}
    edit(bundle_dir, "suspensions.yaml", "deny_outside: [us]", "deny_outside: [us, outer]")
    assert warnings_of(bundle_dir) == []


def test_stage_open_somewhere_is_not_warned(bundle_dir: Path) -> None:
    # ear_e1 (IR, KP, SY): SY is not embargoed, so an uncovered model could be used there.
    edit(bundle_dir, "models.yaml", "      - stage: general\n        from: 2025-01-01T00:00:00Z",
         "      - stage: general\n        from: 2025-01-01T00:00:00Z\n        jurisdictions: [ear_e1]")
    assert warnings_of(bundle_dir) == []


@pytest.mark.parametrize("now,expected", [
    (None, None),
    ("2026-11-20T23:59:59Z", None),
    ("2026-11-21T00:00:00Z", "already expired at 2026-11-21T00:00:00Z"),  # until is exclusive
])
def test_expired_suspension(now: str | None, expected: str | None) -> None:
    warnings = [w for w in warnings_of(REFERENCE_POLICY, at(now) if now else None) if w.file == "suspensions.yaml"]
    assert [w.message.split(":")[0] for w in warnings] == ([expected.split(":")[0]] if expected else [])


@pytest.mark.parametrize("now,words", [
    (None, None),
    ("2026-11-30T23:59:59Z", None),  # lapses 2026-12-16T00:00Z: more than 14 days ahead
    ("2026-12-02T00:00:00Z", "lapses in 14 days (valid through 2026-12-15)"),
    ("2026-12-15T12:00:00Z", "lapses in 0.5 days"),
    ("2026-12-16T00:00:00Z", "vetting lapsed after 2026-12-15: the organization counts as standard, not vetted_partner"),
])
def test_vetting_lapsing_within_14_days(now: str | None, words: str | None) -> None:
    warnings = [w for w in warnings_of(REFERENCE_POLICY, at(now) if now else None)
                if w.path == "organizations.org-expiring.vetted_until"]
    if words is None:
        assert warnings == []
    else:
        assert len(warnings) == 1 and words in warnings[0].message


def test_denied_org_vetting_is_not_warned(bundle_dir: Path) -> None:
    edit(bundle_dir, "organizations.yaml", "    tier: standard\n    status: denied",
         "    tier: vetted_partner\n    vetted_until: 2026-01-01\n    status: denied")
    assert not [w for w in warnings_of(bundle_dir, at("2026-12-02T00:00:00Z")) if "org-listed" in w.path]


def test_validate_cli_reports_warnings_at_a_time(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["policy", "validate", str(REFERENCE_POLICY), "--at", "2026-12-02T00:00:00Z"])
    out = capsys.readouterr().out
    assert code == 0
    assert "warning: suspensions.yaml:9: suspensions[0].until: already expired" in out
    assert "valid, version" in out
    code = main(["policy", "validate", str(REFERENCE_POLICY), "--at", "2026-11-10T00:00:00Z", "--json"])
    result = json.loads(capsys.readouterr().out)
    assert code == 0 and result["valid"] is True
    assert [(i["path"], i["severity"]) for i in result["issues"]] == [
        ("unknown_country", "warning"), ("organizations.org-lapsed.vetted_until", "warning")]

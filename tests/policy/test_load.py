"""Broken bundles are refused with every error named by file, key path and line."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.policy.issues import Issue, PolicyError
from gateway.policy.load import load_bundle


def edit(bundle: Path, file: str, old: str, new: str) -> None:
    path = bundle / file
    text = path.read_text()
    if old not in text:
        raise ValueError(f"{old!r} not in {file}")
    path.write_text(text.replace(old, new, 1))


def errors_of(bundle: Path) -> list[Issue]:
    with pytest.raises(PolicyError) as refused:
        load_bundle(bundle)
    return list(refused.value.errors)


def line_of(bundle: Path, file: str, needle: str) -> int:
    for number, line in enumerate((bundle / file).read_text().splitlines(), 1):
        if needle in line:
            return number
    raise ValueError(needle)


# (case, file, old text, new text, expected key path, words in the message, line marker)
BROKEN = [
    ("include cycle", "jurisdictions.yaml", "groups:\n", "groups:\n  loop_a: {include: [loop_b], source: x}\n  loop_b: {include: [loop_a], source: x}\n",
     "groups.loop_a.include", "include cycle: loop_a -> loop_b -> loop_a", "loop_a: {"),
    ("unknown included group", "jurisdictions.yaml", "include: [ear_d5, ear_e1, ear_e2]", "include: [ear_d5, ear_e9]",
     "groups.countries_of_concern.include[1]", "unknown jurisdiction group 'ear_e9'", "include: [ear_d5, ear_e9]"),
    ("bad country code", "jurisdictions.yaml", "countries: [US]", "countries: [USA]",
     "groups.us.countries[0]", "'USA' is not an ISO 3166-1 alpha-2 code", "countries: [USA]"),
    ("lower-case country code", "jurisdictions.yaml", "countries: [US]", "countries: [us]",
     "groups.us.countries[0]", "not an ISO 3166-1", "countries: [us]"),
    ("yes is not a boolean", "framework.yaml", "check_declared_country: true", "check_declared_country: yes",
     "rules.covered_models.check_declared_country", "valid boolean", "check_declared_country: yes"),
    ("a score must be a number", "models.yaml", "cyber_capability_score: 0.81", "cyber_capability_score: \"0.81\"",
     "models.fable.evaluations.cyber_capability_score", "valid number", "cyber_capability_score: \"0.81\""),
    ("bad region code", "jurisdictions.yaml", "UA-43", "UA43",
     "groups.embargoed.regions[0]", "not an ISO 3166-2 code", "regions: [UA43"),
    ("region of an unassigned country", "jurisdictions.yaml", "UA-43", "QQ-43",
     "groups.embargoed.regions[0]", "not an ISO 3166-2 code", "regions: [QQ-43"),
    ("group without a source", "jurisdictions.yaml", "    source: United States\n", "",
     "groups.us.source", "Field required", "  us:"),
    ("unknown tier", "organizations.yaml", "    tier: government", "    tier: goverment",
     "organizations.org-caisi.tier", "government", "tier: goverment"),
    ("unknown org status", "organizations.yaml", "status: denied", "status: blocked",
     "organizations.org-listed.status", "denied", "status: blocked"),
    ("org country code", "organizations.yaml", "country: BR", "country: Brazil",
     "organizations.org-verified-br.country", "not an ISO 3166-1", "country: Brazil"),
    ("unknown key", "organizations.yaml", "    tier: government", "    tier: government\n    tierr: x",
     "organizations.org-caisi.tierr", "unknown key", "tierr: x"),
    ("unknown stage name", "models.yaml", "stage: limited_partner\n        from: 2026-11-25", "stage: partner_preview\n        from: 2026-11-25",
     "models.frontier-5.6.release[1].stage", "limited_partner", "stage: partner_preview"),
    ("stage order", "models.yaml", "      - stage: general\n        from: 2026-10-01T00:00:00Z", "      - stage: government_review\n        from: 2026-10-01T00:00:00Z",
     "models.mythos.release[2].stage", "cannot follow 'limited_partner'", None),
    ("stage starts not increasing", "models.yaml", "from: 2026-11-25T00:00:00Z", "from: 2026-10-25T00:00:00Z",
     "models.frontier-5.6.release[1].from", "later than the previous stage", "from: 2026-10-25T00:00:00Z"),
    ("stage time without a timezone", "models.yaml", "from: 2027-02-01T00:00:00Z", "from: 2027-02-01T00:00:00",
     "models.frontier-5.6.release[2].from", "timezone", "from: 2027-02-01T00:00:00"),
    ("stage tier unknown", "models.yaml", "tiers: [government, vetted_partner]\n        jurisdictions: [us, tier1_allies]", "tiers: [government, partner]\n        jurisdictions: [us, tier1_allies]",
     "models.frontier-5.6.release[1].tiers[1]", "government", "tiers: [government, partner]"),
    ("stage jurisdiction unknown", "models.yaml", "jurisdictions: [us, tier1_allies]", "jurisdictions: [us, tier_one]",
     "models.frontier-5.6.release[1].jurisdictions[1]", "unknown jurisdiction group 'tier_one'", "jurisdictions: [us, tier_one]"),
    ("review stage open to partners", "models.yaml", "tiers: [government]\n        jurisdictions: [us]\n      - stage: limited_partner\n        from: 2026-11-25", "tiers: [government, vetted_partner]\n        jurisdictions: [us]\n      - stage: limited_partner\n        from: 2026-11-25",
     "models.frontier-5.6.release[0].tiers", "only the government tier", None),
    ("review longer than the window", "models.yaml", "from: 2026-11-25T00:00:00Z", "from: 2026-12-01T00:00:01Z",
     "models.frontier-5.6.release[0]", "longer than the framework's 30-day window", None),
    ("covered model skips review", "models.yaml", "      - stage: government_review\n        from: 2026-08-01T00:00:00Z\n        tiers: [government]\n        jurisdictions: [us]\n      - stage: general\n        from: 2026-08-25", "      - stage: general\n        from: 2026-08-25",
     "models.fable.release", "without a government_review stage", None),
    ("alias collides with another model", "models.yaml", "aliases: [small-latest]", "aliases: [FR-5.6]",
     "models.small-2.aliases[0]", "already used by model 'frontier-5.6'", "aliases: [FR-5.6]"),
    ("evaluation not a number", "models.yaml", "cyber_capability_score: 0.81", "cyber_capability_score: high",
     "models.fable.evaluations.cyber_capability_score", "number", "cyber_capability_score: high"),
    ("framework group unknown", "framework.yaml", "deny_jurisdictions: [embargoed]", "deny_jurisdictions: [embargo]",
     "rules.all_models.deny_jurisdictions[0]", "unknown jurisdiction group 'embargo'", "deny_jurisdictions: [embargo]"),
    ("framework window not a number", "framework.yaml", "review_window_max_days: 30", "review_window_max_days: thirty",
     "review_window_max_days", "integer", "review_window_max_days: thirty"),
    ("framework unknown verdict", "framework.yaml", "unknown_models: deny", "unknown_models: maybe",
     "unknown_models", "'allow' or 'deny'", "unknown_models: maybe"),
    ("suspension of an unknown model", "suspensions.yaml", "models: [fable, mythos]", "models: [fable, mythic]",
     "suspensions[0].models[1]", "unknown model 'mythic'", "models: [fable, mythic]"),
    ("suspension ending before it starts", "suspensions.yaml", "until: 2026-11-21T00:00:00Z", "until: 2026-11-01T00:00:00Z",
     "suspensions[0].until", "later than 'from'", "until: 2026-11-01"),
    ("suspension with both scopes", "suspensions.yaml", "deny_outside: [us]", "deny_outside: [us]\n    deny_in: [embargoed]",
     "suspensions[0]", "exactly one of deny_outside or deny_in", "- id: commerce"),
    ("suspension with an unknown group", "suspensions.yaml", "deny_outside: [us]", "deny_outside: [usa]",
     "suspensions[0].deny_outside[0]", "unknown jurisdiction group 'usa'", "deny_outside: [usa]"),
    # Codes are upper-case: a lower-case one is a group name, and an unknown one.
    ("suspension with a lower-case country code", "suspensions.yaml", "deny_outside: [us]", "deny_outside: [us, jp]",
     "suspensions[0].deny_outside[1]", "unknown jurisdiction group 'jp', nor an ISO 3166 code (did you mean 'JP'?)",
     "deny_outside: [us, jp]"),
    ("suspension with an unassigned country code", "suspensions.yaml", "deny_outside: [us]", "deny_outside: [ZZ]",
     "suspensions[0].deny_outside[0]", "unknown jurisdiction group 'ZZ', nor an ISO 3166 code", "deny_outside: [ZZ]"),
    # A group named like a code would make a suspension's entry ambiguous.
    ("group named like a country code", "jurisdictions.yaml", "  tier1_allies:", "  JP: {countries: [JP], source: x}\n  tier1_allies:",
     "groups.JP", "group name 'JP' is an ISO 3166 code", "JP: {"),
    ("group named like a region code", "jurisdictions.yaml", "  tier1_allies:", "  UA-43: {regions: [UA-43], source: x}\n  tier1_allies:",
     "groups.UA-43", "group name 'UA-43' is an ISO 3166 code", "UA-43: {"),
    ("duplicate key", "models.yaml", "    upstream: default\n    evaluations:\n      training_compute_flop: 2.0e26", "    upstream: default\n    upstream: other\n    evaluations:\n      training_compute_flop: 2.0e26",
     "models.fable.upstream", "duplicate key 'upstream'", "upstream: other"),
]


@pytest.mark.parametrize("case,file,old,new,path,words,marker", BROKEN, ids=[b[0] for b in BROKEN])
def test_broken_bundle_is_refused_with_the_error_named(bundle_dir: Path, case: str, file: str, old: str, new: str,
                                                       path: str, words: str, marker: str | None) -> None:
    edit(bundle_dir, file, old, new)
    errors = errors_of(bundle_dir)
    named = [e for e in errors if e.file == file and e.path == path and words in e.message]
    assert named, "\n".join(map(str, errors))
    assert named[0].line is not None
    if marker is not None:
        assert named[0].line == line_of(bundle_dir, file, marker)


def test_every_error_is_reported_at_once(bundle_dir: Path) -> None:
    edit(bundle_dir, "jurisdictions.yaml", "countries: [US]", "countries: [XX]")
    edit(bundle_dir, "organizations.yaml", "    tier: government", "    tier: emperor")
    edit(bundle_dir, "models.yaml", "from: 2026-11-25T00:00:00Z", "from: 2026-12-31T00:00:00Z")
    edit(bundle_dir, "suspensions.yaml", "models: [fable, mythos]", "models: [fable, nope]")
    files = {e.file for e in errors_of(bundle_dir)}
    assert files == {"jurisdictions.yaml", "organizations.yaml", "models.yaml", "suspensions.yaml"}


def test_a_broken_entry_does_not_hide_errors_in_others(bundle_dir: Path) -> None:
    edit(bundle_dir, "models.yaml", "cyber_capability_score: 0.81", "cyber_capability_score: high")
    edit(bundle_dir, "models.yaml", "jurisdictions: [us, tier1_allies]", "jurisdictions: [us, nowhere]")
    paths = {e.path for e in errors_of(bundle_dir)}
    assert {"models.fable.evaluations.cyber_capability_score", "models.frontier-5.6.release[1].jurisdictions[1]"} <= paths


def test_references_to_a_broken_group_are_not_reported_twice(bundle_dir: Path) -> None:
    edit(bundle_dir, "jurisdictions.yaml", "    source: \"OFAC comprehensive", "    sauce: \"OFAC comprehensive")
    errors = errors_of(bundle_dir)
    assert not [e for e in errors if "unknown jurisdiction group 'embargoed'" in e.message], errors


@pytest.mark.parametrize("content,words", [
    ("", "file is empty"),
    ("models: [1\n", "YAML syntax error"),
    ("- just\n- a list\n", "must be a mapping"),
    ("modles: {}\n", "unknown key"),
])
def test_malformed_file(bundle_dir: Path, content: str, words: str) -> None:
    (bundle_dir / "models.yaml").write_text(content)
    assert any(e.file == "models.yaml" and words in e.message for e in errors_of(bundle_dir))


def test_missing_required_file(bundle_dir: Path) -> None:
    (bundle_dir / "framework.yaml").unlink()
    assert [str(e) for e in errors_of(bundle_dir)] == ["framework.yaml: required file is missing"]


def test_suspensions_file_is_optional(bundle_dir: Path) -> None:
    (bundle_dir / "suspensions.yaml").unlink()
    assert load_bundle(bundle_dir).policy.suspensions == ()


def test_unknown_file_is_an_error(bundle_dir: Path) -> None:
    (bundle_dir / "model.yaml").write_text("models: {}\n")
    assert any(e.file == "model.yaml" and "unknown policy file" in e.message for e in errors_of(bundle_dir))


def test_missing_directory() -> None:
    with pytest.raises(PolicyError, match="1 error"):
        load_bundle("/nonexistent/policy")


def test_review_waiver_allows_skipping_review(bundle_dir: Path) -> None:
    edit(bundle_dir, "models.yaml",
         "      - stage: government_review\n        from: 2026-08-01T00:00:00Z\n        tiers: [government]\n        jurisdictions: [us]\n      - stage: general\n        from: 2026-08-25",
         "      - stage: general\n        from: 2026-08-25")
    edit(bundle_dir, "models.yaml", "  fable:\n", "  fable:\n    review_waiver: {reason: \"Reviewed under the 2026-07 interim arrangement\"}\n")
    assert load_bundle(bundle_dir).policy.models["fable"].stages[0].name == "general"


def test_review_of_exactly_the_window_is_allowed(bundle_dir: Path) -> None:
    edit(bundle_dir, "models.yaml", "from: 2026-11-25T00:00:00Z", "from: 2026-12-01T00:00:00Z")
    load_bundle(bundle_dir)


def test_alias_expansion_bomb_is_refused(bundle_dir: Path) -> None:
    bomb = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]\n"
        for i in range(8)
    )
    (bundle_dir / "suspensions.yaml").write_text(bomb)
    assert any("values" in e.message for e in errors_of(bundle_dir))


def test_scalars_follow_yaml_1_2(bundle_dir: Path) -> None:
    edit(bundle_dir, "jurisdictions.yaml", '"NO"', "NO")  # Norway, not false
    edit(bundle_dir, "models.yaml", "training_compute_flop: 3.0e26", "training_compute_flop: 3e26")
    policy = load_bundle(bundle_dir).policy
    assert policy.groups["tier1_allies"].match("NO") == "tier1_allies"
    assert policy.models["frontier-5.6"].evaluations["training_compute_flop"] == 3e26


class TestVersion:
    def test_formatting_and_comments_do_not_change_the_version(self, bundle_dir: Path) -> None:
        before = load_bundle(bundle_dir).policy.version
        edit(bundle_dir, "models.yaml", "  fable:\n", "  # a comment\n  fable:   \n")
        edit(bundle_dir, "jurisdictions.yaml", "countries: [US]", "countries:\n      - US")
        assert load_bundle(bundle_dir).policy.version == before

    def test_content_changes_the_version(self, bundle_dir: Path) -> None:
        before = load_bundle(bundle_dir).policy.version
        edit(bundle_dir, "jurisdictions.yaml", "countries: [CU]", "countries: [CU, VE]")
        assert load_bundle(bundle_dir).policy.version != before


def test_suspensions_in_the_files_name_groups_and_iso_codes_together(bundle_dir: Path) -> None:
    edit(bundle_dir, "suspensions.yaml", "deny_outside: [us]", "deny_outside: [us, JP, UA-65]")
    [suspension] = load_bundle(bundle_dir).policy.suspensions
    assert suspension.groups.names == ("us", "JP", "UA-65")
    assert suspension.groups.admits("JP") and suspension.groups.admits("RU", "UA-65")
    assert not suspension.groups.admits("GB") and not suspension.groups.admits("UA", "UA-43")

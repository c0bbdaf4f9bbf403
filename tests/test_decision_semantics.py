"""docs/policy.md semantics that the reference bundle does not exercise, on small
variants of it: internal stages, concealment off, deny_in suspensions, shadow
suspensions, unknown models allowed, suspended orgs, restricted GA tiers,
unknown places allowed, allow lists and regions filed under another country."""

from __future__ import annotations

import pytest

from conftest import REFERENCE_POLICY, at
from gateway.policy.decision import Facts, decide, decide_listing
from gateway.policy.load import load_texts
from gateway.policy.snapshot import Policy

REFERENCE_TEXTS = {path.name: path.read_text() for path in REFERENCE_POLICY.glob("*.yaml")}

EXTRA_MODELS = """
  lab-internal:
    upstream: default
    evaluations: {training_compute_flop: 1.0e20, cyber_capability_score: 0.0}
    release:
      - {stage: internal, from: 2026-01-01T00:00:00Z}
  ru-market:
    upstream: default
    evaluations: {training_compute_flop: 1.0e20, cyber_capability_score: 0.0}
    release:
      - {stage: general, from: 2026-01-01T00:00:00Z, jurisdictions: [ru_only]}
  ru-ua-market:
    upstream: default
    evaluations: {training_compute_flop: 1.0e20, cyber_capability_score: 0.0}
    release:
      - {stage: general, from: 2026-01-01T00:00:00Z, jurisdictions: [ru_only, ua_only]}
  partners-only-ga:
    upstream: default
    evaluations: {training_compute_flop: 1.0e20, cyber_capability_score: 0.0}
    release:
      - {stage: general, from: 2026-01-01T00:00:00Z, tiers: [government, vetted_partner], jurisdictions: [crimea_only, us]}
"""
EXTRA_GROUPS = """
  crimea_only:
    regions: [UA-43]
    source: test
  ru_only:
    countries: [RU]
    source: test
  ua_only:
    countries: [UA]
    source: test
"""
EXTRA_ORGS = """
  org-paused:
    name: Paused Org
    country: US
    tier: vetted_partner
    status: suspended
  org-ua:
    name: Kyiv Lab
    country: UA
    tier: vetted_partner
"""


def variant(file: str = "", old: str = "", new: str = "", *more: tuple[str, str, str]) -> Policy:
    """The reference bundle plus the extras above, with text edits (file, old, new)."""
    texts = dict(REFERENCE_TEXTS)
    texts["models.yaml"] += EXTRA_MODELS
    texts["jurisdictions.yaml"] += EXTRA_GROUPS
    texts["organizations.yaml"] += EXTRA_ORGS
    for file, old, new in [(file, old, new), *more] if file else more:
        if old not in texts[file]:
            raise ValueError(f"{old!r} not in {file}")
        texts[file] = texts[file].replace(old, new)
    return load_texts(texts).policy


BASE = variant()
NO_CONCEAL = variant("framework.yaml", "conceal_unreleased: true", "conceal_unreleased: false")
UNKNOWN_ALLOWED = variant("framework.yaml", "unknown_models: deny", "unknown_models: allow")
# allow_unknown_places: true lets the `unknown_country` verdicts decide, as they did before issue 12.
ALLOW_PLACES = ("framework.yaml", "unknown_models: deny", "unknown_models: deny\nallow_unknown_places: true")
ALL_MODELS_UNKNOWN_DENIED = ("framework.yaml", "deny_jurisdictions: [embargoed]",
                             "deny_jurisdictions: [embargoed]\n    unknown_country: deny")
COVERED_UNKNOWN_ALLOWED = ("framework.yaml", "    unknown_country: deny\n", "    unknown_country: allow\n")
UNKNOWN_PLACES = variant(*ALLOW_PLACES)
UNKNOWN_DENIED_FOR_ALL = variant(*ALLOW_PLACES, ALL_MODELS_UNKNOWN_DENIED)
UNKNOWN_DENIED_FOR_ALL_REFUSED = variant(*ALL_MODELS_UNKNOWN_DENIED)
EVERY_UNKNOWN_VERDICT_ALLOW = variant(*COVERED_UNKNOWN_ALLOWED)
DENY_IN = variant("suspensions.yaml", "deny_outside: [us]", "deny_in: [tier1_allies]")
SHADOW = variant("suspensions.yaml", "reference: \"BIS order 2026-11-03\"", "reference: \"BIS order 2026-11-03\"\n    mode: shadow")
OPEN_ENDED = variant("suspensions.yaml", "    until: 2026-11-21T00:00:00Z\n", "")

CASES = [
    ("internal stage admits no tier", BASE, "org-caisi", "lab-internal", "US", None, "2026-12-01T00:00:00Z", 404, ["tier_not_permitted"]),
    ("restricted GA tiers are a plain 403", BASE, "org-public", "partners-only-ga", "US", None, "2026-12-01T00:00:00Z", 403, ["tier_not_permitted"]),
    ("jurisdiction outranks a plain tier denial", BASE, "org-public", "partners-only-ga", "GB", None, "2026-12-01T00:00:00Z", 451, ["jurisdiction_not_permitted", "tier_not_permitted"]),
    ("a region-only allow group admits that region", BASE, "org-acme", "partners-only-ga", "UA", "UA-43", "2026-12-01T00:00:00Z", 451, ["jurisdiction_embargoed"]),
    ("a region-only allow group needs the region", BASE, "org-acme", "partners-only-ga", "UA", "UA-30", "2026-12-01T00:00:00Z", 451, ["jurisdiction_not_permitted"]),
    ("uncovered model: declared country is not checked", BASE, "org-ua", "partners-only-ga", "US", None, "2026-12-01T00:00:00Z", 200, []),
    ("suspended org", BASE, "org-paused", "small-2", "US", None, "2026-12-01T00:00:00Z", 403, ["org_suspended"]),
    ("concealment off: pre-GA tier denial is 403", NO_CONCEAL, "org-public", "frontier-5.6", "US", None, "2026-12-01T00:00:00Z", 403, ["tier_not_permitted"]),
    ("concealment off: jurisdiction outranks tier", NO_CONCEAL, "org-public", "frontier-5.6", "IR", None, "2026-12-01T00:00:00Z", 451,
     ["jurisdiction_embargoed", "jurisdiction_of_concern", "jurisdiction_not_permitted", "tier_not_permitted"]),
    ("concealment off: not released is still 404", NO_CONCEAL, "org-caisi", "frontier-5.6", "US", None, "2026-10-01T00:00:00Z", 404, ["model_not_released"]),
    ("unknown models allowed get the covered rules", UNKNOWN_ALLOWED, "org-public", "gpt-unknown", "US", None, "2026-12-01T00:00:00Z", 200, []),
    ("unknown models allowed: unknown country denied", UNKNOWN_ALLOWED, "org-public", "gpt-unknown", None, None, "2026-12-01T00:00:00Z", 451, ["jurisdiction_unknown"]),
    ("unknown models allowed: countries of concern denied", UNKNOWN_ALLOWED, "org-public", "gpt-unknown", "CN", None, "2026-12-01T00:00:00Z", 451, ["jurisdiction_of_concern"]),
    ("all_models unknown_country deny reaches uncovered models", UNKNOWN_DENIED_FOR_ALL, "org-public", "small-2", None, None, "2026-12-01T00:00:00Z", 451, ["jurisdiction_unknown"]),
    # Unknown places: refused for every model by default, whatever the unknown_country keys say.
    ("unknown place refused for an uncovered model", BASE, "org-public", "small-2", None, None, "2026-12-01T00:00:00Z", 451, ["jurisdiction_unknown"]),
    ("unknown place refused though every unknown_country says allow", EVERY_UNKNOWN_VERDICT_ALLOW, "org-public", "frontier-5.6", None, None, "2027-02-02T00:00:00Z", 451, ["jurisdiction_unknown"]),
    ("unknown place refused, all_models deny too: one reason", UNKNOWN_DENIED_FOR_ALL_REFUSED, "org-public", "small-2", None, None, "2026-12-01T00:00:00Z", 451, ["jurisdiction_unknown"]),
    ("unknown place refused for a model allowed through unknown_models", UNKNOWN_ALLOWED, "org-public", "gpt-unknown", None, None, "2026-12-01T00:00:00Z", 451, ["jurisdiction_unknown"]),
    ("unknown place refused by a stage allow list too", BASE, "org-public", "ru-market", None, None, "2026-12-01T00:00:00Z", 451, ["jurisdiction_unknown", "jurisdiction_not_permitted"]),
    # allow_unknown_places: the unknown_country keys decide as written.
    ("unknown places allowed: uncovered model served", UNKNOWN_PLACES, "org-public", "small-2", None, None, "2026-12-01T00:00:00Z", 200, []),
    ("unknown places allowed: covered_models unknown_country deny", UNKNOWN_PLACES, "org-public", "frontier-5.6", None, None, "2027-02-02T00:00:00Z", 451, ["jurisdiction_unknown"]),
    ("unknown places allowed: every verdict allow", variant(*ALLOW_PLACES, COVERED_UNKNOWN_ALLOWED), "org-public", "frontier-5.6", None, None, "2027-02-02T00:00:00Z", 200, []),
    ("unknown places allowed: still outside every allow list", UNKNOWN_PLACES, "org-public", "ru-market", None, None, "2026-12-01T00:00:00Z", 451, ["jurisdiction_not_permitted"]),
    ("unknown places allowed: still outside a deny_outside suspension", UNKNOWN_PLACES, "org-public", "fable", None, None, "2026-11-10T00:00:00Z", 451, ["export_suspended", "jurisdiction_unknown"]),
    # Allow lists and regions: a region names its own country.
    ("allow list of RU admits a Russian region", BASE, "org-public", "ru-market", "RU", "RU-MOW", "2026-12-01T00:00:00Z", 200, []),
    ("allow list of RU admits RU without a region", BASE, "org-public", "ru-market", "RU", None, "2026-12-01T00:00:00Z", 200, []),
    ("allow list of RU does not admit a UA region reported under RU", BASE, "org-public", "ru-market", "RU", "UA-23", "2026-12-01T00:00:00Z", 451, ["jurisdiction_not_permitted"]),
    ("allow list of RU does not admit Crimea reported under RU", BASE, "org-public", "ru-market", "RU", "UA-43", "2026-12-01T00:00:00Z", 451, ["jurisdiction_embargoed", "jurisdiction_not_permitted"]),
    ("allow list of RU and UA admits a UA region reported under RU", BASE, "org-public", "ru-ua-market", "RU", "UA-23", "2026-12-01T00:00:00Z", 200, []),
    ("allow list of UA does not admit a UA region reported under JP", BASE, "org-public", "ru-ua-market", "JP", "UA-23", "2026-12-01T00:00:00Z", 451, ["jurisdiction_not_permitted"]),
    ("a region listed by name is admitted whatever country reports it", BASE, "org-acme", "partners-only-ga", "RU", "UA-43", "2026-12-01T00:00:00Z", 451, ["jurisdiction_embargoed"]),
    ("a listed region under its own country", BASE, "org-acme", "partners-only-ga", "US", "US-CA", "2026-12-01T00:00:00Z", 200, []),
    ("deny_in matches the region's country", variant("suspensions.yaml", "deny_outside: [us]", "deny_in: [ua_only]"), "org-public", "fable", "RU", "UA-23", "2026-11-10T00:00:00Z", 451, ["export_suspended", "jurisdiction_of_concern"]),
    ("deny_in matches the reported country", variant("suspensions.yaml", "deny_outside: [us]", "deny_in: [ru_only]"), "org-public", "fable", "RU", "UA-23", "2026-11-10T00:00:00Z", 451, ["export_suspended", "jurisdiction_of_concern"]),
    ("deny_outside of RU does not admit a UA region under RU", variant("suspensions.yaml", "deny_outside: [us]", "deny_outside: [ru_only]"), "org-kyoto", "mythos", "RU", "UA-23", "2026-11-10T00:00:00Z", 451, ["export_suspended", "jurisdiction_of_concern"]),
    ("deny_in suspends inside the groups", DENY_IN, "org-public", "fable", "JP", None, "2026-11-10T00:00:00Z", 451, ["export_suspended"]),
    ("deny_in leaves the rest", DENY_IN, "org-public", "fable", "BR", None, "2026-11-10T00:00:00Z", 200, []),
    ("deny_in checks the declared country of a covered model", DENY_IN, "org-kyoto", "fable", "US", None, "2026-11-10T00:00:00Z", 451, ["export_suspended"]),
    ("shadow suspension is not enforced", SHADOW, "org-public", "fable", "JP", None, "2026-11-10T00:00:00Z", 200, []),
    ("suspension without until lasts until lifted", OPEN_ENDED, "org-public", "fable", "JP", None, "2030-01-01T00:00:00Z", 451, ["export_suspended"]),
]


@pytest.mark.parametrize("name,policy,org,model,country,region,when,status,reasons", CASES, ids=[c[0] for c in CASES])
def test_semantics(name: str, policy: Policy, org: str, model: str, country: str | None, region: str | None,
                   when: str, status: int, reasons: list[str]) -> None:
    facts = Facts(org_id=org, model=model, observed_country=country, observed_region=region)
    decision = decide(policy, facts, at(when))
    assert (decision.status, list(decision.reasons)) == (status, reasons)


SHADOW_GROUP = load_texts({**{n: t for n, t in REFERENCE_TEXTS.items()},
                           "jurisdictions.yaml": REFERENCE_TEXTS["jurisdictions.yaml"] + EXTRA_GROUPS
                           + "  trial_list:\n    countries: [BR, VN]\n    source: trial\n    mode: shadow\n",
                           "models.yaml": REFERENCE_TEXTS["models.yaml"] + EXTRA_MODELS,
                           "organizations.yaml": REFERENCE_TEXTS["organizations.yaml"] + EXTRA_ORGS,
                           "framework.yaml": REFERENCE_TEXTS["framework.yaml"].replace(
                               "deny_jurisdictions: [embargoed]", "deny_jurisdictions: [embargoed, trial_list]")}).policy
SHADOW_RULES = variant("framework.yaml", "    deny_anonymizers: true\n", "    deny_anonymizers: true\n    mode: shadow\n")
SHADOW_RULES_UNKNOWN_PLACES = variant(
    "framework.yaml", "    deny_anonymizers: true\n", "    deny_anonymizers: true\n    mode: shadow\n", ALLOW_PLACES)


@pytest.mark.parametrize("name,policy,org,model,country,anonymizer,when,status,reasons,shadow", [
    ("shadow group: reported, not enforced", SHADOW_GROUP, "org-public", "small-2", "BR", False, "2026-12-01T00:00:00Z", 200, [], ["jurisdiction_embargoed"]),
    ("shadow group beside an enforced one", SHADOW_GROUP, "org-public", "small-2", "IR", False, "2026-12-01T00:00:00Z", 451, ["jurisdiction_embargoed"], []),
    ("shadow suspension", SHADOW, "org-public", "fable", "JP", False, "2026-11-10T00:00:00Z", 200, [], ["export_suspended"]),
    ("shadow covered rules: concern", SHADOW_RULES, "org-public", "frontier-5.6", "CN", False, "2027-02-02T00:00:00Z", 200, [], ["jurisdiction_of_concern"]),
    ("shadow covered rules: anonymizer", SHADOW_RULES, "org-public", "frontier-5.6", "US", True, "2027-02-02T00:00:00Z", 200, [], ["anonymizer"]),
    ("shadow covered rules: unknown country", SHADOW_RULES_UNKNOWN_PLACES, "org-public", "frontier-5.6", None, False, "2027-02-02T00:00:00Z", 200, [], ["jurisdiction_unknown"]),
    ("shadow rules do not lift the refusal of unknown places", SHADOW_RULES, "org-public", "frontier-5.6", None, False, "2027-02-02T00:00:00Z", 451, ["jurisdiction_unknown"], []),
    ("shadow rules do not lift enforced ones", SHADOW_RULES, "org-public", "small-2", "IR", False, "2027-02-02T00:00:00Z", 451, ["jurisdiction_embargoed"], []),
])
def test_shadow_mode(name: str, policy: Policy, org: str, model: str, country: str | None, anonymizer: bool, when: str,
                     status: int, reasons: list[str], shadow: list[str]) -> None:
    decision = decide(policy, Facts(org, model, country, None, anonymizer), at(when))
    assert (decision.status, list(decision.reasons), list(decision.shadow)) == (status, reasons, shadow)


@pytest.mark.parametrize("name,policy,country,region,status,reasons", [
    ("unknown place: the listing is refused", BASE, None, None, 451, ["jurisdiction_unknown"]),
    ("unknown place refused though every unknown_country says allow", EVERY_UNKNOWN_VERDICT_ALLOW, None, None, 451, ["jurisdiction_unknown"]),
    ("unknown places allowed: listed (and filtered model by model)", UNKNOWN_PLACES, None, None, 200, []),
    ("unknown places allowed, all_models unknown_country deny", UNKNOWN_DENIED_FOR_ALL, None, None, 451, ["jurisdiction_unknown"]),
    ("a located caller", BASE, "US", None, 200, []),
    ("Crimea reported under RU", BASE, "RU", "UA-43", 451, ["jurisdiction_embargoed"]),
])
def test_listing(name: str, policy: Policy, country: str | None, region: str | None, status: int,
                 reasons: list[str]) -> None:
    decision = decide_listing(policy, Facts("org-public", None, country, region), at("2026-12-01T00:00:00Z"))
    assert (decision.status, list(decision.reasons)) == (status, reasons)


def test_the_refusal_names_the_framework_setting() -> None:
    decision = decide(BASE, Facts("org-public", "small-2"), at("2026-12-01T00:00:00Z"))
    [match] = decision.matches
    assert (match.rule, match.subject) == ("framework.allow_unknown_places", "observed")


def test_a_region_kept_out_of_an_allow_list_is_named_in_the_match() -> None:
    decision = decide(BASE, Facts("org-public", "ru-market", "RU", "UA-23"), at("2026-12-01T00:00:00Z"))
    [match] = decision.matches
    assert (match.rule, match.place) == ("release.general.jurisdictions", "UA-23")
    assert [m.place for m in decide(BASE, Facts("org-public", "ru-market", "JP", "JP-13"),
                                    at("2026-12-01T00:00:00Z")).matches] == ["JP"]

"""`gateway policy prove`: the shipped assertions hold, deliberately broken bundles
each yield the counterexample their break allows, and for random bundles the
prover agrees with `decide()` (PROVED: no random fact violates; VIOLATED: the
counterexample does)."""

from __future__ import annotations

import random
import shutil
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from types import MappingProxyType

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.cli import main
from gateway.policy.countries import ALPHA2
from gateway.policy.decision import Facts, decide
from gateway.policy import prove
from gateway.policy.load import lapse_time, load_bundle, load_texts
from gateway.policy.snapshot import Organization, Policy

SHIPPED = Path(__file__).parents[2] / "policies"
NOW = datetime(2026, 12, 3, tzinfo=UTC)
OVERLAY = ("UA-09", "UA-14", "UA-23", "UA-40", "UA-43", "UA-65")


@pytest.fixture
def shipped(tmp_path: Path) -> Path:
    target = tmp_path / "policies"
    shutil.copytree(SHIPPED, target)
    return target


def edit(bundle: Path, file: str, old: str, new: str) -> None:
    text = (bundle / file).read_text()
    assert old in text, f"{old!r} not in {file}"
    (bundle / file).write_text(text.replace(old, new, 1))


def outcomes(bundle: Path) -> dict[str, prove.Outcome]:
    policy = load_bundle(bundle).policy
    return {o.assertion.name: o for o in prove.prove(policy, NOW, regions=OVERLAY)}


def check_counterexample(policy: Policy, outcome: prove.Outcome) -> prove.Counterexample:
    """A counterexample is a real fact in scope on which decide() breaks the assertion."""
    example = outcome.counterexample
    assert example is not None, f"{outcome.assertion.name} was proved"
    extended = prove.Partition.of(policy).policy
    decision = decide(extended, example.facts, example.at)
    assert prove.violates(outcome.assertion, decision)
    assert prove.in_scope(outcome.assertion, extended, example.facts, example.at.timestamp())
    return example


def test_the_shipped_assertions_prove(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["policy", "prove", str(SHIPPED), "--at", "2026-12-03T00:00:00Z"]) == 0
    out = capsys.readouterr().out
    assert out.count("PROVED") == 5 and "VIOLATED" not in out


def test_without_assertions_there_is_nothing_to_prove(tmp_path: Path, shipped: Path) -> None:
    (shipped / "assertions.yaml").unlink()
    assert prove.prove(load_bundle(shipped).policy, NOW) == []


def test_a_group_dropped_from_the_embargo_reaches_an_embargoed_place(shipped: Path) -> None:
    edit(shipped, "framework.yaml", "deny_jurisdictions: [embargoed]", "deny_jurisdictions: []")
    result = outcomes(shipped)
    example = check_counterexample(load_bundle(shipped).policy, result["embargo-holds"])
    place = example.facts.observed_region or example.facts.observed_country
    assert place in {"UA-09", "UA-14", "UA-40", "UA-43"}  # CU, IR, KP are also countries of concern
    assert example.decision.allowed
    assert result["covered-stay-with-us-and-allies-until-ga"].proved


def test_an_embargoed_region_dropped_is_found_even_when_reported_under_another_country(shipped: Path) -> None:
    edit(shipped, "jurisdictions.yaml", "      - UA-43   # Crimea (Autonomous Republic of Crimea)\n", "")
    edit(shipped, "assertions.yaml", "      jurisdictions: [embargoed]", "      jurisdictions: [UA-43]")
    example = check_counterexample(load_bundle(shipped).policy, outcomes(shipped)["embargo-holds"])
    assert example.facts.observed_region == "UA-43"


def test_a_stage_opened_early_is_caught_at_the_instant_it_opens(shipped: Path) -> None:
    edit(shipped, "assertions.yaml", "assertions:\n", """assertions:
  frontier-2-stays-home-until-february:
    description: "example-frontier-2 stays with the US and allies until 2027-02-15"
    never_allow:
      models: [example-frontier-2]
      outside: [us, tier1_allies]
      until: 2027-02-15T00:00:00Z
""")
    assert outcomes(shipped)["frontier-2-stays-home-until-february"].proved
    edit(shipped, "models.yaml", "from: 2027-02-15T00:00:00Z", "from: 2027-01-20T00:00:00Z")
    example = check_counterexample(load_bundle(shipped).policy, outcomes(shipped)["frontier-2-stays-home-until-february"])
    assert example.at == datetime(2027, 1, 20, tzinfo=UTC)
    assert example.decision.stage == "general"


def test_a_widened_tier_lets_a_verified_organization_in_before_ga(shipped: Path) -> None:
    edit(shipped, "models.yaml", "        tiers: [government, vetted_partner]\n        jurisdictions: [us, tier1_allies]",
         "        tiers: [government, vetted_partner, verified]\n        jurisdictions: [us, tier1_allies]")
    result = outcomes(shipped)
    example = check_counterexample(load_bundle(shipped).policy, result["covered-pre-ga-for-government-and-vetted-partners"])
    assert example.organization.tier == "verified" and example.facts.model == "example-frontier-2"
    assert result["lapsed-vetting-loses-covered-access"].proved  # lapsed means standard, still out


def test_a_gap_between_two_suspensions_is_found(shipped: Path) -> None:
    (shipped / "suspensions.yaml").write_text("""suspensions:
  - {id: first, models: [example-frontier-1], deny_outside: [us], from: 2026-12-05T00:00:00Z,
     until: 2026-12-10T00:00:00Z, reason: "order, part one"}
  - {id: second, models: [example-frontier-1], deny_outside: [us], from: 2026-12-11T00:00:00Z,
     until: 2026-12-31T00:00:00Z, reason: "order, part two"}
""")
    edit(shipped, "assertions.yaml", "assertions:\n", """assertions:
  frontier-1-us-only-in-december:
    description: "example-frontier-1 is served only in the US during the December order"
    never_allow:
      models: [example-frontier-1]
      outside: [us]
      from: 2026-12-05T00:00:00Z
      until: 2026-12-31T00:00:00Z
""")
    example = check_counterexample(load_bundle(shipped).policy, outcomes(shipped)["frontier-1-us-only-in-december"])
    assert example.at == datetime(2026, 12, 10, tzinfo=UTC)
    assert example.facts.observed_country not in (None, "US")


def test_a_suspension_in_the_us_during_review_breaks_the_government_promise(shipped: Path) -> None:
    (shipped / "suspensions.yaml").write_text("""suspensions:
  - {id: halt, models: [example-frontier-3], deny_in: [us], from: 2027-01-20T00:00:00Z, reason: halt}
""")
    example = check_counterexample(load_bundle(shipped).policy, outcomes(shipped)["government-keeps-review-access"])
    assert example.at == datetime(2027, 1, 20, tzinfo=UTC)
    assert [str(r) for r in example.decision.reasons] == ["export_suspended"]


def test_an_unlisted_organization_class_is_a_counterexample(shipped: Path) -> None:
    """No listed org is a suspended government: the promise is still checked for one."""
    edit(shipped, "assertions.yaml", "      statuses: [active]\n", "")
    example = check_counterexample(load_bundle(shipped).policy, outcomes(shipped)["government-keeps-review-access"])
    assert prove.is_abstract(example.organization.id)
    assert example.organization.status in ("suspended", "denied")


def test_a_violation_exits_1_with_the_counterexample_as_json(shipped: Path, capsys: pytest.CaptureFixture[str]) -> None:
    edit(shipped, "framework.yaml", "deny_jurisdictions: [embargoed]", "deny_jurisdictions: []")
    assert main(["policy", "prove", str(shipped), "--at", "2026-12-03T00:00:00Z", "--json"]) == 1
    import json
    report = json.loads(capsys.readouterr().out)
    assert report["proved"] is False
    violated = [a for a in report["assertions"] if a["state"] == "VIOLATED"]
    assert [a["name"] for a in violated] == ["embargo-holds"]
    example = violated[0]["counterexample"]
    assert example["decision"] == "allow" and example["explain"]["decision"] == "allow"


def test_a_window_outside_the_horizon_is_proved_vacuously(shipped: Path) -> None:
    edit(shipped, "assertions.yaml", "    never_allow:\n      jurisdictions: [embargoed]",
         "    never_allow:\n      jurisdictions: [embargoed]\n      from: 2030-01-01T00:00:00Z")
    edit(shipped, "framework.yaml", "deny_jurisdictions: [embargoed]", "deny_jurisdictions: []")
    outcome = outcomes(shipped)["embargo-holds"]
    assert outcome.proved and outcome.window is None


# Random bundles: the prover agrees with decide() on random facts.

POOL = ["US", "GB", "JP", "CN", "CU", "RU", "BR", "UA"]
REGIONS = ["UA-43", "UA-14", "RU-MOW"]
TIERS = ["government", "vetted_partner", "verified", "standard"]
STAGES = ["internal", "government_review", "limited_partner", "general"]
BASE = datetime(2027, 1, 1, tzinfo=UTC)


def _day(n: int) -> datetime:
    return BASE + timedelta(days=n)


@st.composite
def bundles(draw: st.DrawFn) -> dict[str, str]:
    places = st.sampled_from(POOL + REGIONS)
    groups = {f"g{i}": {"countries": draw(st.lists(st.sampled_from(POOL), max_size=4, unique=True)),
                        "regions": draw(st.lists(st.sampled_from(REGIONS), max_size=2, unique=True)),
                        "source": "test"} for i in range(3)}
    names = st.lists(st.sampled_from(list(groups)), max_size=2, unique=True)
    rules = {"all_models": {"deny_jurisdictions": draw(names), "deny_anonymizers": draw(st.booleans())},
             "covered_models": {"deny_jurisdictions": draw(names), "check_declared_country": draw(st.booleans()),
                                "deny_anonymizers": draw(st.booleans())}}
    framework = {"covered_model": {"any": [{"evaluation": "score", "at_least": 0.5}]}, "review_window_max_days": 366,
                 "rules": rules, "allow_unknown_places": draw(st.booleans()),
                 "unknown_models": draw(st.sampled_from(["allow", "deny"]))}
    models = {}
    for index in range(draw(st.integers(1, 3))):
        chosen = sorted(draw(st.lists(st.sampled_from(range(4)), min_size=1, max_size=4, unique=True)))
        days = sorted(draw(st.lists(st.integers(-20, 60), min_size=len(chosen), max_size=len(chosen), unique=True)))
        release = []
        for stage, day in zip(chosen, days):
            entry: dict[str, object] = {"stage": STAGES[stage], "from": _day(day)}
            if draw(st.booleans()):
                entry["tiers"] = draw(st.lists(st.sampled_from(["government"] if STAGES[stage] == "government_review" else TIERS), max_size=3, unique=True))
            if draw(st.booleans()):
                entry["jurisdictions"] = draw(names)
            release.append(entry)
        models[f"m{index}"] = {"evaluations": {"score": draw(st.sampled_from([0.1, 0.9]))}, "release": release,
                               "review_waiver": {"reason": "test"}}
    orgs = {f"o{i}": {"name": "x", "country": draw(st.sampled_from(POOL)), "tier": draw(st.sampled_from(TIERS)),
                      "status": draw(st.sampled_from(["active", "active", "suspended", "denied"]))}
            | ({"vetted_until": (BASE + timedelta(days=draw(st.integers(-5, 40)))).date()}
               if draw(st.booleans()) else {})
            for i in range(draw(st.integers(1, 4)))}
    suspensions = []
    for index in range(draw(st.integers(0, 2))):
        start = draw(st.integers(-5, 50))
        suspensions.append({"id": f"s{index}", "models": [draw(st.sampled_from(list(models)))],
                            draw(st.sampled_from(["deny_in", "deny_outside"])): draw(st.lists(places, max_size=2, unique=True)),
                            "from": _day(start), "until": _day(start + draw(st.integers(1, 20))), "reason": "test"})
    assertions = {}
    for index in range(draw(st.integers(1, 3))):
        scope: dict[str, object] = {}
        if draw(st.booleans()):
            scope["covered"] = draw(st.booleans())
        if draw(st.booleans()):
            scope["stages"] = draw(st.lists(st.sampled_from(STAGES), min_size=1, max_size=2, unique=True))
        if draw(st.booleans()):
            scope["tiers"] = draw(st.lists(st.sampled_from(TIERS), min_size=1, max_size=2, unique=True))
        if draw(st.booleans()):
            scope["statuses"] = ["active"]
        if draw(st.booleans()):
            scope["vetting"] = draw(st.sampled_from(["current", "lapsed"]))
        key = draw(st.sampled_from(["jurisdictions", "outside", "declared", None]))
        if key is not None:
            scope[key] = draw(st.lists(st.sampled_from(list(groups) + POOL), min_size=1, max_size=2, unique=True))
        if draw(st.booleans()):
            scope["anonymizer"] = draw(st.booleans())
        if draw(st.booleans()):
            scope["from"] = _day(draw(st.integers(-5, 30)))
        kind = draw(st.sampled_from(["never_allow", "always_allow"]))
        assertions[f"a{index}"] = {"description": "test", kind: scope}
    documents = {"jurisdictions.yaml": {"groups": groups}, "framework.yaml": framework,
                 "models.yaml": {"models": models}, "organizations.yaml": {"organizations": orgs},
                 "suspensions.yaml": {"suspensions": suspensions}, "assertions.yaml": {"assertions": assertions}}
    return {name: yaml.safe_dump(doc) for name, doc in documents.items()}


def _random_org(rng: random.Random) -> Organization:
    vetted = rng.choice([None, (BASE + timedelta(days=rng.randint(-10, 50))).date()])
    return Organization("~random", "x", rng.choice(sorted(ALPHA2)), rng.choice(TIERS),  # type: ignore[arg-type]
                        rng.choice(["active", "suspended", "denied"]), None, vetted, lapse_time(vetted))


def _random_facts(rng: random.Random, policy: Policy) -> Facts:
    country = rng.choice([None, *POOL, rng.choice(sorted(ALPHA2))])
    region = None if country is None else rng.choice([None, None, *REGIONS, f"{rng.choice(POOL)}-Q9"])
    model = rng.choice([*policy.models, "not-a-model"])
    org = rng.choice([*policy.organizations, "~random"])
    return Facts(org, model, country, region, rng.random() < 0.3)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                                             HealthCheck.large_base_example])
@given(texts=bundles(), seed=st.integers(0, 2**32))
def test_random_bundles_the_prover_agrees_with_decide(texts: dict[str, str], seed: int) -> None:
    rng = random.Random(seed)
    policy = load_texts(texts).policy
    start = BASE - timedelta(days=10)
    horizon = 80
    results = prove.prove(policy, start, horizon_days=horizon, regions=["UA-43"])
    for outcome in results:
        if not outcome.proved:
            check_counterexample(policy, outcome)
    points = [p for p in prove.breakpoints(policy) if start.timestamp() < p < start.timestamp() + horizon * 86400]
    # Random facts, including an organization the registry does not list yet.
    extra = _random_org(rng)
    tried = replace(policy, organizations=MappingProxyType({**policy.organizations, extra.id: extra}))
    for _ in range(300):
        facts = _random_facts(rng, policy)
        moment = start + timedelta(seconds=rng.randint(0, horizon * 86400 - 1))
        if points and rng.random() < 0.3:  # the instants where decisions change, and just before them
            moment = datetime.fromtimestamp(rng.choice(points), UTC) - timedelta(seconds=rng.choice([0, 1]))
        decision = decide(tried, facts, moment)
        for outcome in results:
            assertion = outcome.assertion
            if outcome.proved and prove.in_scope(assertion, tried, facts, moment.timestamp()):
                assert not prove.violates(assertion, decision), (assertion.name, facts, moment, decision)


def test_validate_refuses_a_bundle_that_breaks_an_assertion(shipped: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["policy", "validate", str(SHIPPED), "--at", "2026-12-03T00:00:00Z"]) == 0
    capsys.readouterr()
    edit(shipped, "framework.yaml", "deny_jurisdictions: [embargoed]", "deny_jurisdictions: []")
    assert main(["policy", "validate", str(shipped), "--at", "2026-12-03T00:00:00Z"]) == 1
    assert "assertions.yaml: assertions.embargo-holds: violated: counterexample:" in capsys.readouterr().err


def test_diff_names_the_assertions_that_change_state(shipped: Path, capsys: pytest.CaptureFixture[str]) -> None:
    edit(shipped, "framework.yaml", "deny_jurisdictions: [embargoed]", "deny_jurisdictions: []")
    assert main(["policy", "diff", str(SHIPPED), str(shipped), "--at", "2026-12-03T00:00:00Z"]) == 0
    assert "Assertions that change state:\n  embargo-holds: PROVED -> VIOLATED" in capsys.readouterr().out

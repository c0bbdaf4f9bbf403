"""Property tests of `decide()` over the reference bundle (docs/policy.md).

The table tests pin single decisions; these check laws that must hold for every
request the strategies can draw: what a policy edit may change, what time may
change, what a model's spelling may change, and how status and reasons relate.
Each property compares `decide()` with itself (on a variant policy, another
time, another spelling), so it needs no second implementation of the rules;
where one is needed (precedence, status), it is written here from the docs/policy.md
table rather than imported.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterable, Mapping
from datetime import UTC, date, datetime, time, timedelta, timezone
from pathlib import Path
from unittest import mock

import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.policy.countries import ALPHA2
from gateway.policy.decision import Decision, Facts, decide
from gateway.policy.load import FILES, SUSPENSIONS, load_texts
from gateway.policy.snapshot import Policy
from gateway.policy.reasons import Reason

REFERENCE = Path(__file__).parent / "fixtures" / "reference" / "policy"

SETTINGS = settings(max_examples=200, deadline=None)


# The bundle, loaded once; variants are loaded once per distinct edit.


@functools.cache
def reference_texts() -> Mapping[str, str]:
    return {name: (REFERENCE / name).read_text(encoding="utf-8") for name in FILES if (REFERENCE / name).exists()}


@functools.cache
def reference_raw() -> Mapping[str, object]:
    """The reference files as plain YAML data: an oracle independent of the loader."""
    return {name: yaml.safe_load(text) for name, text in reference_texts().items()}


def load(texts: Mapping[str, str]) -> Policy:
    return load_texts(texts).policy


@functools.cache
def reference() -> Policy:
    return load(reference_texts())


@functools.cache
def reference_copy() -> Policy:
    """A second, separately loaded snapshot of the same texts."""
    return load(dict(reference_texts()))


POLICY = reference()
RAW = reference_raw()
ORG_IDS = sorted(RAW["organizations.yaml"]["organizations"])
MODEL_IDS = sorted(RAW["models.yaml"]["models"])
ALIASES = {m: tuple(spec.get("aliases", ())) for m, spec in RAW["models.yaml"]["models"].items()}
GROUPS = RAW["jurisdictions.yaml"]["groups"]
COUNTRIES = sorted(ALPHA2)
# Countries the policy names somewhere (groups, org registry): drawn more often
# than the other ~230, so that the rules actually fire.
NAMED_COUNTRIES = sorted(
    {c for g in GROUPS.values() for c in g.get("countries", ())}
    | {o["country"] for o in RAW["organizations.yaml"]["organizations"].values()}
)
NAMED_REGIONS = sorted({r for g in GROUPS.values() for r in g.get("regions", ())})
UNKNOWN_ORG = "org-nobody"
UNKNOWN_MODELS = ("gpt-unknown", "frontier-5.6-preview", "", "   ")

NOW_MIN = datetime(2025, 1, 1)
NOW_MAX = datetime(2028, 12, 31, 23, 59, 59, 999999)
MICROSECOND = timedelta(microseconds=1)


def _as_utc(moment: datetime) -> datetime:
    return moment.astimezone(UTC)


def _lapse(vetted_until: date) -> datetime:
    """vetted_until is valid through the end of its day (docs/policy.md)."""
    return datetime.combine(vetted_until + timedelta(days=1), time(), tzinfo=UTC)


def event_times(raw: Mapping[str, object], org_ids: Iterable[str], models: Iterable[str]) -> list[datetime]:
    """Every instant at which a decision for these orgs and models may change:
    the models' stage starts, every suspension's bounds, the orgs' vetting lapses."""
    events: set[datetime] = set()
    for model in models:
        events.update(_as_utc(stage["from"]) for stage in raw["models.yaml"]["models"][model]["release"])
    for suspension in (raw.get(SUSPENSIONS) or {}).get("suspensions") or ():
        events.update(_as_utc(suspension[key]) for key in ("from", "until") if suspension.get(key))
    for org_id in org_ids:
        vetted_until = raw["organizations.yaml"]["organizations"][org_id].get("vetted_until")
        if vetted_until:
            events.add(_lapse(vetted_until))
    return sorted(events)


ALL_EVENTS = event_times(RAW, ORG_IDS, MODEL_IDS)


def canonical_model(requested: str | None) -> str | None:
    """The model id a request names, by the docs/policy.md rule (trim, case-fold)."""
    if requested is None:
        return None
    key = requested.strip().casefold()
    for model in MODEL_IDS:
        if key in {n.casefold() for n in (model, *ALIASES[model])}:
            return model
    return None


# Strategies


def nows() -> st.SearchStrategy[datetime]:
    """Any instant of 2025-2028 (UTC); as often, one within a month of a policy
    event, an event time itself, or the microsecond before one (where
    off-by-ones live)."""
    events = st.sampled_from(ALL_EVENTS)
    month = st.integers(-30 * 86400, 30 * 86400).map(lambda s: timedelta(seconds=s))
    return st.one_of(
        st.datetimes(NOW_MIN, NOW_MAX, timezones=st.just(UTC)),
        st.builds(lambda t, d: t + d, events, month),
        events,
        events.map(lambda t: t - MICROSECOND),
    )


def spelling_of(name: str) -> st.SearchStrategy[str]:
    """`name` with its letters' case flipped at random and whitespace around it."""
    pads = st.text(alphabet=" \t\n\r\u00a0\u2003", max_size=3)
    flips = st.lists(st.booleans(), min_size=len(name), max_size=len(name))
    return st.builds(
        lambda before, flip, after: before + "".join(c.swapcase() if f else c for c, f in zip(name, flip)) + after,
        pads,
        flips,
        pads,
    )


def model_names() -> st.SearchStrategy[str | None]:
    known = st.sampled_from([n for m in MODEL_IDS for n in (m, *ALIASES[m])])
    return st.one_of(known, known.flatmap(spelling_of), st.sampled_from([*UNKNOWN_MODELS, None]))


def countries() -> st.SearchStrategy[str | None]:
    return st.one_of(st.none(), st.sampled_from(COUNTRIES), st.sampled_from(NAMED_COUNTRIES))


@st.composite
def facts(draw: st.DrawFn, *, credentials: bool = False) -> Facts:
    """A request's facts; `credentials`: sometimes a missing or invalid one."""
    observed = draw(countries())
    region = None
    if observed is not None:
        region = draw(
            st.one_of(
                st.none(),
                st.sampled_from(NAMED_REGIONS),
                st.from_regex(r"[0-9A-Z]{1,3}", fullmatch=True).map(lambda s: f"{observed}-{s}"),
            )
        )
    credential = "valid"
    if credentials:
        credential = draw(st.sampled_from(["valid"] * 8 + ["missing", "invalid"]))
    return Facts(
        org_id=draw(st.sampled_from([*ORG_IDS, UNKNOWN_ORG, None])),
        model=draw(model_names()),
        observed_country=observed,
        observed_region=region,
        anonymizer=draw(st.booleans()),
        credential=credential,  # type: ignore[arg-type]
    )


def same_request(decision: Decision) -> Decision:
    """A decision with the policy version blanked: two bundles that differ in
    one entry have different versions but may reach the same decision."""
    return dataclasses.replace(decision, policy_version="")


def declared_country(org_id: str | None) -> str | None:
    org = RAW["organizations.yaml"]["organizations"].get(org_id) if org_id else None
    return org["country"] if org else None


# Adding a country to a deny group


def _deny_groups() -> tuple[str, ...]:
    """Groups whose members only ever feed deny rules: the framework's
    deny_jurisdictions, suspension deny_in, and what they include, but nothing an
    allow list (stage jurisdictions, suspension deny_outside) reaches."""

    def closure(names: set[str]) -> set[str]:
        found: set[str] = set()
        todo = list(names)
        while todo:
            name = todo.pop()
            if name not in found:
                found.add(name)
                todo.extend(GROUPS[name].get("include", ()))
        return found

    rules = RAW["framework.yaml"].get("rules", {})
    deny = {g for r in rules.values() for g in r.get("deny_jurisdictions", ())}
    allow: set[str] = set()
    for spec in RAW["models.yaml"]["models"].values():
        for stage in spec["release"]:
            allow.update(stage.get("jurisdictions") or ())
    for suspension in (RAW.get(SUSPENSIONS) or {}).get("suspensions") or ():
        deny.update(suspension.get("deny_in") or ())
        allow.update(suspension.get("deny_outside") or ())
    return tuple(sorted(closure(deny) - closure(allow)))


DENY_GROUPS = _deny_groups()


def test_deny_groups_premise() -> None:
    # The property below is only a law for groups no allow list reads.
    assert {"embargoed", "countries_of_concern"} <= set(DENY_GROUPS)


@functools.cache
def with_country_denied(group: str, country: str) -> Policy:
    jurisdictions = yaml.safe_load(reference_texts()["jurisdictions.yaml"])
    listed = jurisdictions["groups"][group].setdefault("countries", [])
    if country not in listed:
        listed.append(country)
    texts = dict(reference_texts())
    texts["jurisdictions.yaml"] = yaml.safe_dump(jurisdictions, sort_keys=False)
    return load(texts)


@SETTINGS
@given(data=st.data(), group=st.sampled_from(DENY_GROUPS), request=facts(), now=nows())
def test_denying_a_country_only_denies_requests_involving_it(
    data: st.DataObject, group: str, request: Facts, now: datetime
) -> None:
    # Any country, or (as often) the one the request comes from or its org declares.
    places = (request.observed_country, declared_country(request.org_id))
    own = [c for c in places if c] or COUNTRIES
    added = data.draw(st.sampled_from(COUNTRIES) | st.sampled_from(own), label="added")
    before = decide(POLICY, request, now)
    after = decide(with_country_denied(group, added), request, now)

    # Rules only add reasons: nothing that denied before stops denying.
    assert set(before.reasons) <= set(after.reasons)
    assert before.allowed or not after.allowed
    if added not in places:
        assert same_request(after) == same_request(before)


# Time within one stage


@SETTINGS
@given(data=st.data(), request=facts())
def test_decision_is_constant_between_event_times(data: st.DataObject, request: Facts) -> None:
    model = canonical_model(request.model)
    org = request.org_id if request.org_id in ORG_IDS else None
    events = event_times(RAW, [org] if org else [], [model] if model else [])
    bounds = sorted({NOW_MIN.replace(tzinfo=UTC), *events, NOW_MAX.replace(tzinfo=UTC)})
    index = data.draw(st.integers(0, len(bounds) - 2), label="interval")
    start, end = bounds[index], bounds[index + 1]  # [start, end): nothing happens inside
    last = end - MICROSECOND
    inside = start + timedelta(microseconds=data.draw(st.integers(0, (last - start) // MICROSECOND), label="inside"))
    # Both ends are checked every time: the interval is closed at `start` and open at `end`.
    decision = decide(POLICY, request, start)
    assert decide(POLICY, request, inside) == decision
    assert decide(POLICY, request, last) == decision


# Names


@SETTINGS
@given(data=st.data(), model=st.sampled_from(MODEL_IDS), request=facts(), now=nows())
def test_aliases_and_spellings_decide_as_the_canonical_id(
    data: st.DataObject, model: str, request: Facts, now: datetime
) -> None:
    name = data.draw(st.sampled_from((model, *ALIASES[model])).flatmap(spelling_of), label="name")
    canonical = decide(POLICY, dataclasses.replace(request, model=model), now)
    spelled = decide(POLICY, dataclasses.replace(request, model=name), now)
    assert spelled == canonical
    assert spelled.model == model


# Removing suspensions

# Extra suspensions on top of the reference one, so that removing one of several
# (and a deny_in, an open-ended and a shadow suspension) is exercised too.
EXTRA_SUSPENSIONS = yaml.safe_load(
    """
- id: extra-deny-in-concern
  models: [small-2, frontier-5.6]
  deny_in: [countries_of_concern]
  from: 2025-06-01T00:00:00Z
  until: 2027-06-01T00:00:00Z
  reason: property-test suspension
- id: extra-open-ended
  models: [small-latest, nextgen-7]
  deny_outside: [us, tier1_allies]
  from: 2027-03-01T00:00:00Z
  reason: property-test suspension
- id: extra-shadow
  models: [mythos]
  deny_in: [us]
  reason: property-test suspension
  mode: shadow
"""
)
REFERENCE_SUSPENSIONS = list((RAW.get(SUSPENSIONS) or {}).get("suspensions") or ())
ALL_SUSPENSIONS = [*REFERENCE_SUSPENSIONS, *EXTRA_SUSPENSIONS]
ALL_KEPT = (True,) * len(ALL_SUSPENSIONS)


def _suspension_texts(keep: tuple[bool, ...] | None) -> dict[str, str]:
    """The reference with the suspensions flagged in `keep`; None: no file at all."""
    texts = dict(reference_texts())
    if keep is None:
        texts.pop(SUSPENSIONS, None)
    else:
        kept = [s for s, k in zip(ALL_SUSPENSIONS, keep) if k]
        texts[SUSPENSIONS] = yaml.safe_dump({"suspensions": kept}, sort_keys=False)
    return texts


@functools.cache
def with_suspensions(keep: tuple[bool, ...] | None) -> Policy:
    return load(_suspension_texts(keep))


def test_suspension_variants_load() -> None:
    # yaml.safe_dump writes datetimes as "2026-11-03 00:00:00+00:00": still aware.
    assert len(with_suspensions(ALL_KEPT).suspensions) == len(ALL_SUSPENSIONS)


def suspension_edits() -> st.SearchStrategy[tuple[Policy, Policy, list[dict]]]:
    """(before, after, removed): the reference without its suspensions.yaml, or
    the extended list with some suspensions (or the whole file) removed."""
    reference_minus_file = st.just((POLICY, with_suspensions(None), REFERENCE_SUSPENSIONS))
    flags = st.lists(st.booleans(), min_size=len(ALL_SUSPENSIONS), max_size=len(ALL_SUSPENSIONS))
    extended = st.one_of(st.none(), flags.map(tuple)).map(
        lambda keep: (
            with_suspensions(ALL_KEPT),
            with_suspensions(keep),
            [s for i, s in enumerate(ALL_SUSPENSIONS) if keep is None or not keep[i]],
        )
    )
    return st.one_of(reference_minus_file, extended)


@SETTINGS
@given(edit=suspension_edits(), request=facts(), now=nows())
def test_removing_suspensions_never_denies(
    edit: tuple[Policy, Policy, list[dict]], request: Facts, now: datetime
) -> None:
    before_policy, after_policy, removed = edit
    before = decide(before_policy, request, now)
    after = decide(after_policy, request, now)
    assert set(after.reasons) <= set(before.reasons)
    assert after.allowed or not before.allowed
    touched = {canonical_model(m) for s in removed for m in s["models"]}
    if canonical_model(request.model) not in touched:
        assert same_request(after) == same_request(before)


# Status and reasons (docs/policy.md table, written out here as the oracle)

REFERENCE_PRECEDENCE = (
    ("credential_missing", 401),
    ("credential_invalid", 401),
    ("org_unknown", 403),
    ("org_denied", 403),
    ("org_suspended", 403),
    ("model_unknown", 404),
    ("model_not_released", 404),
    ("tier_not_permitted (concealed)", 404),
    ("jurisdiction_embargoed", 451),
    ("export_suspended", 451),
    ("jurisdiction_of_concern", 451),
    ("anonymizer", 451),
    ("jurisdiction_unknown", 451),
    ("jurisdiction_not_permitted", 451),
    ("tier_not_permitted", 403),
    ("rate_limited", 429),
    ("state_unavailable", 503),
)


def spec_key(reason: str, decision: Decision) -> str:
    concealed = RAW["framework.yaml"].get("conceal_unreleased", True) and decision.stage not in (None, "general")
    return f"{reason} (concealed)" if reason == "tier_not_permitted" and concealed else reason


@SETTINGS
@given(extended=st.booleans(), request=facts(credentials=True), now=nows())
def test_status_comes_from_the_first_reason_and_reasons_follow_precedence(
    extended: bool, request: Facts, now: datetime
) -> None:
    # The extended suspensions make export_suspended meet the other 451 reasons.
    decision = decide(with_suspensions(ALL_KEPT) if extended else POLICY, request, now)
    rank = {name: index for index, (name, _) in enumerate(REFERENCE_PRECEDENCE)}
    status = dict(REFERENCE_PRECEDENCE)

    assert decision.allowed == (not decision.reasons) == (decision.status == 200)
    assert decision.verdict == ("allow" if decision.allowed else "deny")
    assert all(isinstance(r, Reason) for r in decision.reasons)
    assert len(set(decision.reasons)) == len(decision.reasons)
    ranks = [rank[spec_key(r, decision)] for r in decision.reasons]
    assert ranks == sorted(ranks)
    if decision.reasons:
        assert decision.status == status[spec_key(decision.reasons[0], decision)]
        assert decision.reason == decision.reasons[0]
    # Every reason is explained by an enforced match, and every enforced match gives a
    # reported reason; shadow matches give only would-deny reasons.
    assert {m.reason for m in decision.matches if not m.shadow} == set(decision.reasons)
    assert {m.reason for m in decision.matches if m.shadow} == set(decision.shadow)


# Determinism


@SETTINGS
@given(
    request=facts(credentials=True),
    other=facts(credentials=True),
    now=nows(),
    offset=st.integers(-12 * 60, 14 * 60),
)
def test_decide_depends_only_on_its_arguments(request: Facts, other: Facts, now: datetime, offset: int) -> None:
    first = decide(POLICY, request, now)
    decide(POLICY, other, now + timedelta(days=400))  # interleaved work leaves no trace
    # Equal (not identical) arguments: another snapshot of the same texts, a
    # rebuilt Facts, the same instant in another timezone, and a clock that lies.
    again = Facts(**{field.name: getattr(request, field.name) for field in dataclasses.fields(Facts)})
    elsewhere = now.astimezone(timezone(timedelta(minutes=offset)))
    with mock.patch("time.time", return_value=0.0), mock.patch("time.time_ns", return_value=0):
        second = decide(reference_copy(), again, elsewhere)
    assert second == first
    assert decide(POLICY, request, now) == first

"""The request path's memo of decisions (gateway/request/decisions.py) is exact: for any
sequence of requests, at any instants (breakpoints, the microsecond before one, time
running backwards) and across policy swaps, it answers what the decision core
answers, and it never holds more than its bound."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from types import MappingProxyType

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.policy.decision import Facts, changes, decide, decide_caller, decide_listing
from gateway.policy.snapshot import Policy
from gateway.request.decisions import Decisions
from test_properties import ALL_EVENTS, POLICY, facts, nows

SIZE = 8  # small, so that the examples fill it and it is emptied often


def _with_org_status(policy: Policy, org_id: str, status: str) -> Policy:
    organizations = dict(policy.organizations)
    organizations[org_id] = dataclasses.replace(organizations[org_id], status=status)
    return dataclasses.replace(policy, organizations=MappingProxyType(organizations))


# Snapshots that decide some facts differently: the memo must notice each swap.
POLICIES = (POLICY, _with_org_status(POLICY, "org-acme", "suspended"),
            dataclasses.replace(POLICY, conceal_unreleased=not POLICY.conceal_unreleased))
FUNCTIONS = {"decide": (decide, Decisions.decide), "caller": (decide_caller, Decisions.caller),
             "listing": (decide_listing, Decisions.listing)}


def requests() -> st.SearchStrategy[list[tuple[str, Policy, object, datetime]]]:
    """A few facts asked again and again, at instants that cross breakpoints."""
    asked = st.lists(facts(credentials=True), min_size=1, max_size=4)
    return asked.flatmap(lambda pool: st.lists(
        st.tuples(st.sampled_from(sorted(FUNCTIONS)), st.sampled_from(POLICIES), st.sampled_from(pool), nows()),
        min_size=1, max_size=40))


@settings(max_examples=300, deadline=None)
@given(requests())
def test_the_memo_answers_what_the_core_answers(sequence: list[tuple[str, Policy, object, datetime]]) -> None:
    memo = Decisions(size=SIZE)
    for kind, policy, fact, now in sequence:
        direct, memoized = FUNCTIONS[kind]
        assert memoized(memo, policy, fact, now) == direct(policy, fact, now), (kind, fact, now)
        assert len(memo) <= SIZE


@settings(max_examples=100, deadline=None)
@given(facts(), st.sampled_from(ALL_EVENTS))
def test_a_decision_before_a_breakpoint_is_not_reused_at_it(fact: object, event: datetime) -> None:
    memo = Decisions()
    before = event - timedelta(microseconds=1)
    assert memo.decide(POLICY, fact, before) == decide(POLICY, fact, before)
    assert memo.decide(POLICY, fact, event) == decide(POLICY, fact, event)
    assert memo.decide(POLICY, fact, before) == decide(POLICY, fact, before)


def test_every_event_of_the_reference_bundle_is_a_breakpoint() -> None:
    assert {event.timestamp() for event in ALL_EVENTS} <= changes(POLICY)


def test_the_same_facts_in_one_interval_are_decided_once(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    monkeypatch.setattr("gateway.request.decisions.decide", lambda *args: calls.append(args) or decide(*args))
    memo, fact = Decisions(), Facts("org-acme", "frontier-5.6", "US")
    start = datetime(2027, 3, 1, tzinfo=UTC)
    for second in range(3):
        memo.decide(POLICY, fact, start + timedelta(seconds=second))
    assert len(calls) == 1
    memo.decide(dataclasses.replace(POLICY), fact, start)  # another snapshot, equal or not
    assert len(calls) == 2


def test_a_full_memo_starts_afresh() -> None:
    memo, now = Decisions(size=2), datetime(2027, 3, 1, tzinfo=UTC)
    for model in ("frontier-5.6", "small-2", "fable"):
        memo.decide(POLICY, Facts("org-acme", model, "US"), now)
    assert len(memo) == 1


def test_equal_facts_are_one_object_and_stay_bounded() -> None:
    memo = Decisions(size=2)
    first = memo.facts("org-acme", "small-2", "US", "US-CA", False)
    assert first == Facts("org-acme", "small-2", "US", "US-CA", False)
    assert memo.facts("org-acme", "small-2", "US", "US-CA", False) is first
    assert memo.facts("org-acme", "small-2", "US", None, False, True) == Facts("org-acme", "small-2", "US", None,
                                                                               geo_expired=True)
    for model in ("a", "b", "c"):
        memo.facts("org-acme", model, "US", None, False)
    assert len(memo._facts) <= 2

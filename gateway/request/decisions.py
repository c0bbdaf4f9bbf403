"""Decisions already made, reused for as long as they cannot change.

The decision core is pure (`decide(policy, facts, now)`), and `now` enters it only
through the policy's breakpoints (gateway/policy/decision.py `changes`): between two
consecutive ones every decision is the same. So the decision for a policy snapshot
and some facts, made at an instant of the interval in force, is the decision at
every instant of it, and the request path, which asks the same few questions all
day (one org, one model, one place), answers them with a dict lookup.

Exact, not approximate: the memo holds decisions of one snapshot (snapshots are
replaced whole, never edited) and one interval, and is emptied when either
changes. Bounded: when full it is emptied, so that a flood of distinct facts
costs a decision each, as it would without it.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable
from datetime import datetime

from gateway.policy.decision import Decision, Facts, changes, decide, decide_caller, decide_listing
from gateway.policy.snapshot import Policy

Decide = Callable[[Policy, Facts, datetime], Decision | None]
_ABSENT = object()  # decide_caller's None (no refusal) is an answer worth keeping


class Decisions:
    """`decide`, `decide_caller` and `decide_listing`, memoized per snapshot and interval."""

    def __init__(self, size: int = 4096) -> None:
        self.size = size
        self._policy: Policy | None = None  # held, so that its id is never another's
        self._breakpoints: tuple[float, ...] = ()
        self._start = self._end = 0.0  # the interval [start, end) the memo's decisions hold for
        self._memo: dict[tuple[Decide, Facts], Decision | None] = {}
        self._facts: dict[tuple[str | None, str | None, str | None, str | None, bool, bool], Facts] = {}

    def __len__(self) -> int:
        return len(self._memo)

    def facts(self, org_id: str | None, model: str | None, country: str | None, region: str | None,
              anonymizer: bool, geo_expired: bool = False) -> Facts:
        """The facts of a request with a valid credential, one object for equal ones: a
        memo hit then costs neither building them nor comparing them field by field."""
        key = (org_id, model, country, region, anonymizer, geo_expired)
        found = self._facts.get(key)
        if found is None:
            if len(self._facts) >= self.size:
                self._facts.clear()
            found = self._facts[key] = Facts(org_id, model, country, region, anonymizer, geo_expired=geo_expired)
        return found

    def decide(self, policy: Policy, facts: Facts, now: datetime) -> Decision:
        return self._memoized(decide, policy, facts, now)  # type: ignore[return-value]

    def caller(self, policy: Policy, facts: Facts, now: datetime) -> Decision | None:
        return self._memoized(decide_caller, policy, facts, now)

    def listing(self, policy: Policy, facts: Facts, now: datetime) -> Decision:
        return self._memoized(decide_listing, policy, facts, now)  # type: ignore[return-value]

    def _memoized(self, function: Decide, policy: Policy, facts: Facts, now: datetime) -> Decision | None:
        instant = now.timestamp()  # the float the decision compares with its breakpoints
        if policy is not self._policy or not self._start <= instant < self._end:
            self._enter(policy, instant)
        key = (function, facts)
        decision = self._memo.get(key, _ABSENT)
        if decision is _ABSENT:
            decision = function(policy, facts, now)
            if len(self._memo) >= self.size:
                self._memo.clear()
            self._memo[key] = decision
        return decision  # type: ignore[return-value]

    def _enter(self, policy: Policy, instant: float) -> None:
        """Start afresh for `policy` and the interval between its breakpoints that holds `instant`."""
        if policy is not self._policy:
            self._policy = policy
            self._breakpoints = tuple(sorted(changes(policy)))
        points = self._breakpoints
        index = bisect_right(points, instant)  # points[index - 1] <= instant < points[index]
        self._start = points[index - 1] if index > 0 else float("-inf")
        self._end = points[index] if index < len(points) else float("inf")
        self._memo.clear()

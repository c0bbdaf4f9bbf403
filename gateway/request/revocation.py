"""In-flight revocation: a request allowed when it started is ended once the
policy in force would deny it (issue 8).

A suspension, an organization's new status or a suspended credential must reach
the model streams already running, not only new requests: a stream started a
minute before an export suspension must not run on for minutes after it. So the
gateway registers every request it forwards here while it is being answered,
and each registered request is decided again with the pure `decide()`:

- at once, whenever the policy in force changes (`LiveState.on_change`: a live
  change made here, one announced by another replica, a policy reload);
- every `check_interval_s` while requests are registered: when a time the
  policy names has passed (a stage start, a suspension's `from` or `until`, a
  vetting lapse: the only ways `decide()` reads `now`), and once for every
  request registered since the last check (it may have been decided under a
  policy, or at a time, that the checks before it did not see).

A request now denied is ended: its task is cancelled, which closes the upstream
response and its connection, and the forward loop (`Gateway.end_revoked`)
answers with the denial the request would now get: as the response when none
has started, as an error event in the stream's own format when one has
(`responses.sse_event`), and otherwise by leaving the body incomplete, so that the listener
closes the connection and the client sees it cut short.

The request path pays one dict insert and one dict pop; the check never runs
while nothing is registered.
"""

from __future__ import annotations

import asyncio
import logging
from bisect import bisect_right
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Protocol

from gateway.request import responses
from gateway.policy.decision import Decision, Facts, decide
from gateway.geo.reader import Place
from gateway.identity.principal import Principal
from gateway.live.state import PolicyState
from gateway.metrics import Metrics
from gateway.policy.snapshot import Policy
from gateway.policy.reasons import Reason

log = logging.getLogger("gateway.revocation")

REVOKED = "revoked"  # the audit record's `error` for a request ended this way


class Exchange(Protocol):
    """What revocation reads and marks of a request being answered. The request path's
    `gateway.request.app.Exchange` is one; naming only these fields here keeps this module free
    of the request path, which imports it."""

    decision_id: str
    principal: Principal | None
    place: Place
    requested_model: str | None
    other_models: tuple[str, ...]
    completed: bool
    error: str | None
    extra: dict[str, Any]


def policy_times(policy: Policy) -> tuple[float, ...]:
    """Every time at which a decision under `policy` can change with no change to
    the policy: `decide()` reads `now` only through stage starts, suspension
    bounds and vetting lapses (tests/test_revocation.py holds it to that)."""
    times = {start for model in policy.models.values() for start in model.stage_starts}
    times.update(t for s in policy.suspensions for t in (s.starts, s.ends) if t is not None)
    times.update(org.lapses_at for org in policy.organizations.values() if org.lapses_at is not None)
    return tuple(sorted(times))


def denial(exchange: Exchange) -> responses.Denial:
    """The answer the revoked request would now get as a new request."""
    revoked = exchange.extra[REVOKED]
    return responses.for_reason(Reason(revoked["reasons"][0]), revoked["status"],
                                token=exchange.extra.get("token", False))


class Revocations:
    """The requests being answered, by decision id, each with the task answering it."""

    def __init__(self, state: PolicyState, metrics: Metrics, *, clock: Callable[[], float],
                 check_interval_s: float) -> None:
        self.state = state
        self.metrics = metrics
        self.clock = clock
        self.check_interval_s = check_interval_s
        self.flights: dict[str, tuple[Exchange, asyncio.Task[Any]]] = {}
        self._busy = asyncio.Event()
        self._policy: Policy | None = None  # the policy of the last check
        self._times: tuple[float, ...] = ()
        self._checked_at = 0.0             # the decision clock at the last check
        self._checked: set[str] = set()    # requests the last check saw
        self._task: asyncio.Task[None] | None = None

    # The request path

    def track(self, exchange: Exchange, task: asyncio.Task[Any] | None) -> None:
        """Register `exchange`, answered by `task` (the caller's), until untrack."""
        if task is not None:
            self.flights[exchange.decision_id] = (exchange, task)
            if not self._busy.is_set():
                self._busy.set()

    def untrack(self, exchange: Exchange) -> None:
        self.flights.pop(exchange.decision_id, None)

    # Checking

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._watch())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def policy_changed(self, policy: Policy) -> None:
        """LiveState's change hook: re-decide at once, before the change is acknowledged."""
        if self.flights:
            try:
                self.check(policy, self.clock(), list(self.flights.values()))
            except Exception:  # never a reason to refuse the change itself
                log.exception("in-flight requests could not be checked against policy %s", policy.version)

    async def _watch(self) -> None:
        while True:
            await self._busy.wait()
            await asyncio.sleep(self.check_interval_s)
            if not self.flights:
                self._busy.clear()
                continue
            try:
                self.tick()
            except Exception:
                log.exception("in-flight requests could not be checked")

    def tick(self) -> None:
        policy, now = self.state.policy, self.clock()
        if policy is None:
            return
        if policy is not self._policy or self._crossed(now):
            flights = list(self.flights.values())
        else:
            flights = [flight for key, flight in self.flights.items() if key not in self._checked]
        self.check(policy, now, flights)

    def _crossed(self, now: float) -> bool:
        """A policy time lies between the last check and now (either way: clocks step back)."""
        low, high = sorted((self._checked_at, now))
        return bisect_right(self._times, low) != bisect_right(self._times, high)

    def check(self, policy: Policy, now: float, flights: list[tuple[Exchange, asyncio.Task[Any]]]) -> None:
        if policy is not self._policy:
            self._policy, self._times = policy, policy_times(policy)
        self._checked_at = now
        self._checked = set(self.flights)
        moment = datetime.fromtimestamp(now, UTC)
        for exchange, task in flights:
            # Finished, failed, or ending already (the client went away): nothing to end.
            if exchange.completed or exchange.error is not None or task.cancelling():
                continue
            # Every model the request named (gateway/request/body_models.py) must still be allowed.
            for model in (exchange.requested_model, *exchange.other_models):
                decision = decide(policy, _facts(exchange, policy, model), moment)
                if not decision.allowed:
                    self.revoke(exchange, task, decision)
                    break

    def revoke(self, exchange: Exchange, task: asyncio.Task[Any], decision: Decision) -> None:
        exchange.error = REVOKED
        exchange.extra[REVOKED] = {"reasons": [str(r) for r in decision.reasons], "status": decision.status,
                                   "policy_version": decision.policy_version}
        self.metrics.revocations.labels(str(decision.reasons[0])).inc()
        log.info("request %s revoked under policy %s: %s", exchange.decision_id, decision.policy_version,
                 ", ".join(map(str, decision.reasons)))
        task.cancel()


def _facts(exchange: Exchange, policy: Policy, model: str | None) -> Facts:
    """The facts `model` was decided on, with the credential as the policy now has it."""
    principal, place = exchange.principal, exchange.place
    if principal is None:  # never registered without one; deny rather than guess
        return Facts(None, model, credential="invalid")
    credential = "invalid" if principal.credential_id in policy.suspended_credentials else "valid"
    return Facts(principal.org_id, model, place.country, place.region, place.anonymizer, credential)

"""Change control (issue 14): tightening takes effect at once, loosening needs a second person.

Every change made through the admin API comes here first. It is prepared
against the live state (`LiveState.prepare_*`: checked, nothing written) and
classified by its access delta (gateway/live/access_delta.py):

- a tightening is applied at once and recorded as awaiting a countersignature
  by another operator within `countersign_within` (overdue ones are counted in
  a metric and alerted on, never reverted);
- a loosening becomes a proposal (gateway/live/proposals.py) with its diff, its
  access delta and a simulation over the recent audit records, applied once
  `approvals` operators other than the proposer approve it.

A proposal is bound to the policy version it was computed against: when the
live policy moved, it is computed again, and its approvals are cleared if its
access delta changed. `approvals: 0` applies everything at once (a lab's choice).
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from itertools import islice
from pathlib import Path
from typing import Any

from gateway.audit import lines_backwards
from gateway.config import ChangeControlConfig
from gateway.identity.apikeys import ApiKeyAdmin
from gateway.live import key_changes
from gateway.live import proposals as rules
from gateway.live.access_delta import AccessDelta, as_json, classify
from gateway.live.overlay import ChangeError
from gateway.live.proposals import ProposalStore, StaleProposal
from gateway.live.state import LiveState, Prepared, new_change_id
from gateway.metrics import Metrics
from gateway.policy import diff, simulate
from gateway.policy.snapshot import Policy

log = logging.getLogger("gateway.live")

KINDS = ("suspension.create", "suspension.lift", "organization.update", "policy.replace", "credential.reinstate",
         key_changes.CREATE, key_changes.REVOKE)
# Kinds whose body names the change's target by "id" (a suspension's new id is part of its document).
_TARGETED = frozenset({"suspension.lift", "organization.update", "credential.reinstate", key_changes.REVOKE})
FILES_ACTOR, FILES_REASON = "policy_dir", "the policy files changed"
SIMULATION_RECORDS = 10_000
METRICS_EVERY_S = 5.0


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class ChangeControl:
    def __init__(self, live: LiveState, store: ProposalStore, config: ChangeControlConfig, metrics: Metrics,
                 audit_path: str | None = None, *, keys: ApiKeyAdmin | None = None) -> None:
        """`keys`: where API keys created and revoked through the admin API go (None: API keys are off)."""
        self.live = live
        self.keys = keys
        if config.file_reloads == "propose":  # changed policy files are reviewed like any change
            live.files_gate = self.files_changed
        self.store = store
        self.config = config
        self.metrics = metrics
        self.audit_path = audit_path
        self._task: asyncio.Task[None] | None = None

    # Submitting a change

    async def submit(self, kind: str, target: str | None, body: dict[str, Any], actor: str, *,
                     reason: str | None = None, reference: str | None = None) -> tuple[int, dict[str, Any]]:
        """Apply a tightening (200) or propose a loosening (202), as the direct endpoints answer."""
        prepared = await self.prepare(kind, target, body)
        if self.config.approvals == 0:  # one operator's word suffices: nothing to classify
            return 200, await self.live.commit(prepared, actor, reason=reason, reference=reference)
        delta = await self._classify(prepared)
        notes = {"reason": reason, "reference": reference, "access": delta.kind}
        if delta.loosens:
            return 202, await self._propose(kind, target, body, actor, prepared, delta, reason, reference)
        return 200, await self._apply_tightening(prepared, actor, notes)

    async def files_changed(self, texts: dict[str, str], policy: Policy) -> dict[str, Any]:
        """`file_reloads: propose`: new files in policy_dir, checked whole, from `policy_dir` as
        the actor. A tightening applies at once and awaits a countersignature; a loosening
        becomes one proposal (every replica sees the same files: the first one proposes)."""
        prepared = self.live.prepare_bundle(texts, policy, from_files=True)
        if self.config.approvals == 0:
            return await self.live.commit(prepared, FILES_ACTOR)
        delta = await self._classify(prepared)
        if not delta.loosens:
            return await self._apply_tightening(prepared, FILES_ACTOR, {"reason": FILES_REASON, "access": delta.kind})
        now = datetime.now(UTC)
        for proposal in await self.store.all():
            if rules.state_of(proposal, now) == rules.OPEN and proposal["proposer"] == FILES_ACTOR \
                    and proposal["resulting_policy_version"] == prepared.after.version:
                return self.public(proposal)
        body = {"files": texts, "from_files": True}
        proposal = await self._propose("policy.replace", None, body, FILES_ACTOR, prepared, delta, FILES_REASON, None)
        log.warning("policy files in %s grant access: not applied, proposed as %s for approval",
                    self.live.policy_dir, proposal["id"])
        return proposal

    async def propose(self, body: dict[str, Any], actor: str) -> tuple[int, dict[str, Any]]:
        """POST /admin/proposals: a change in the direct endpoints' JSON plus its `kind`."""
        kind, target, change, reason, reference = split_proposal(body)
        prepared = await self.prepare(kind, target, change)
        delta = await self._classify(prepared)
        return 201, await self._propose(kind, target, change, actor, prepared, delta, reason, reference)

    async def prepare(self, kind: str, target: str | None, body: dict[str, Any]) -> Prepared:
        """The change checked as the live policy stands, assertions included: a change
        that breaks one is refused before it is applied or proposed."""
        prepared = await self._prepare(kind, target, body)
        # A bundle was proved as it was read; a credential or key change leaves the policy as it is.
        if prepared.bundle is None and kind not in ("credential.reinstate", key_changes.CREATE, key_changes.REVOKE):
            await self.live.prove(prepared.after)
        return prepared

    async def _prepare(self, kind: str, target: str | None, body: dict[str, Any]) -> Prepared:
        live = self.live
        if kind == "suspension.create":
            return live.prepare_suspension(body)
        if kind == key_changes.CREATE:
            return await key_changes.prepare_create(self.keys, self._in_force(), body)
        if kind == "policy.replace":
            return await live.prepare_policy(body["files"], lift=tuple(body.get("lift", ())),
                                             reset=tuple(body.get("reset_organizations", ())),
                                             from_files=bool(body.get("from_files")))
        if target is None:
            raise ChangeError([f"id: a {kind} names what it changes"])
        if kind == "suspension.lift":
            return live.prepare_lift(target)
        if kind == "organization.update":
            return live.prepare_org_patch(target, body)
        if kind == "credential.reinstate":
            return live.prepare_reinstate_credential(target)
        if kind == key_changes.REVOKE:
            return await key_changes.prepare_revoke(self.keys, self._in_force(), target)
        raise ChangeError([f"kind: one of {', '.join(KINDS)}"])

    def _in_force(self) -> Policy:
        if self.live.state.policy is None:
            raise ChangeError(["no valid policy is loaded"], status=503)
        return self.live.state.policy

    async def _classify(self, prepared: Prepared) -> AccessDelta:
        current = self.live.state.policy
        if current is None:
            raise ChangeError(["no valid policy is loaded"], status=503)
        # Off the event loop: a bundle's grid takes a while, and requests share this loop.
        delta = await asyncio.to_thread(classify, current, prepared.after, datetime.now(UTC))
        action, target = prepared.change["action"], prepared.change["target"]
        if action == key_changes.CREATE:
            return replace(delta, keys_created=(target,))
        return replace(delta, keys_revoked=(target,)) if action == key_changes.REVOKE else delta

    async def _apply_tightening(self, prepared: Prepared, actor: str, notes: dict[str, Any]) -> dict[str, Any]:
        due = _iso(datetime.now(UTC) + timedelta(seconds=self.config.countersign_within))
        record = await self.live.commit(prepared, actor, **notes, countersign={"state": "awaiting", "due": due})
        entry = {key: record.get(key) for key in ("change_id", "actor", "action", "target", "time", "reason")}
        await self.store.update_pending(record["change_id"], lambda _: entry | {"due": due})
        await self.refresh_metrics()
        return record

    # Proposals

    async def _propose(self, kind: str, target: str | None, body: dict[str, Any], actor: str, prepared: Prepared,
                       delta: AccessDelta, reason: str | None, reference: str | None) -> dict[str, Any]:
        now = datetime.now(UTC)
        if kind == "suspension.create":  # the id it was reviewed under is the id it gets
            body = body | {"id": prepared.change["target"]}
        if kind == key_changes.CREATE:
            body = body | {"key_id": prepared.change["target"]}
        proposal_id = f"prop-{now:%Y%m%d}-{secrets.token_hex(4)}"
        proposal = {
            "id": proposal_id, "kind": kind, "target": target or prepared.change.get("target"), "body": body,
            "reason": reason, "reference": reference, "proposer": actor, "created": _iso(now),
            "expires_at": (now + timedelta(seconds=self.config.proposal_ttl)).isoformat(),
            "state": rules.OPEN, "approvals": [], "approvals_needed": self.config.approvals,
        } | await self._assessment(prepared, delta)
        await self.store.update(proposal_id, lambda _: proposal)
        await self.live.record({"actor": actor, "action": "proposal.create", "target": proposal_id, "before": None,
                                "after": {"kind": kind, "target": proposal["target"], "access": delta.kind},
                                "reason": reason, "reference": reference})
        await self.refresh_metrics()
        return self.public(proposal)

    async def _assessment(self, prepared: Prepared, delta: AccessDelta) -> dict[str, Any]:
        """What a reviewer reads: the diff, the access delta, the simulation; and the version they hold for."""
        before = self.live.state.policy
        assert before is not None  # _classify refused without one
        now = datetime.now(UTC)
        changes = None
        if prepared.bundle is not None:
            changes = diff.as_json(diff.diff(before, prepared.after, now, models=()))["changes"]
        simulation = await asyncio.to_thread(self._simulate, prepared, now)
        return {
            "policy_version": before.version,
            "resulting_policy_version": prepared.after.version,
            "diff": {"action": prepared.change["action"], "before": prepared.change.get("before"),
                     "after": prepared.change.get("after"), "changes": changes},
            "access_delta": as_json(delta),
            "signature": delta.signature(),
            "simulation": simulation,
        }

    def _simulate(self, prepared: Prepared, now: datetime) -> dict[str, Any]:
        records = list(islice(self._audit_records(), SIMULATION_RECORDS))
        result = simulate.simulate(prepared.after, records, at=now, baseline=self.live.state.policy)
        return {"records": result.records, "replayed": result.replayed,
                "would_flip": {d: result.count(d) for d in simulate.DIRECTIONS},
                "by_org": result.breakdown("org"), "by_country": result.breakdown("country"),
                "source": "the most recent records of this replica's audit file, decided now"}

    def _audit_records(self) -> Iterator[Any]:
        if self.audit_path is None or not Path(self.audit_path).exists():
            return
        for line in lines_backwards(Path(self.audit_path)):
            try:
                yield json.loads(line)
            except ValueError:
                yield None

    async def get(self, proposal_id: str) -> dict[str, Any]:
        proposal = await self.store.get(proposal_id)
        if proposal is None:
            raise ChangeError([f"no proposal {proposal_id!r}"], status=404)
        try:
            proposal, _ = await self._refresh(proposal)
        except ChangeError as refused:  # it no longer fits the live state: shown with why
            proposal = proposal | {"problems": refused.problems}
        return self.public(proposal)

    async def list(self, state: str | None = None) -> list[dict[str, Any]]:
        now = datetime.now(UTC)
        found = [self.public(p, now) for p in await self.store.all()]
        return sorted((p for p in found if state is None or p["state"] == state), key=lambda p: p["created"], reverse=True)

    def public(self, proposal: dict[str, Any], now: datetime | None = None) -> dict[str, Any]:
        return proposal | {"state": rules.state_of(proposal, now or datetime.now(UTC))}

    async def _refresh(self, proposal: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        """Recompute an open proposal made against an older policy version; (it, approvals cleared)."""
        current = self.live.state.policy
        if current is None or rules.state_of(proposal, datetime.now(UTC)) != rules.OPEN \
                or proposal["policy_version"] == current.version:
            return proposal, False
        prepared = await self.prepare(proposal["kind"], proposal["target"], proposal["body"])
        delta = await self._classify(prepared)
        assessment = await self._assessment(prepared, delta)
        moved_from = proposal["policy_version"]

        def recompute(found: dict[str, Any] | None) -> dict[str, Any] | None:
            if found is None or found["policy_version"] != moved_from:
                return found  # gone, or recomputed meanwhile by another call
            cleared = found["signature"] != assessment["signature"] and bool(found["approvals"])
            return found | assessment | {"approvals": [] if cleared else found["approvals"], "recomputed": {
                "time": _iso(datetime.now(UTC)), "from_policy_version": moved_from,
                "access_delta_changed": found["signature"] != assessment["signature"], "approvals_cleared": cleared}}

        _, after = await self.store.update(proposal["id"], recompute)
        if after is None:
            raise ChangeError([f"no proposal {proposal['id']!r}"], status=404)
        cleared = after.get("recomputed", {}).get("from_policy_version") == moved_from \
            and after["recomputed"]["approvals_cleared"]
        if cleared:
            await self.live.record({"actor": "change-control", "action": "proposal.recompute", "target": after["id"],
                                    "before": {"policy_version": moved_from, "approvals": proposal["approvals"]},
                                    "after": {"policy_version": after["policy_version"], "approvals": []},
                                    "reason": "the live policy changed and so did the proposal's access delta"})
        return after, cleared

    async def approve(self, proposal_id: str, actor: str, reason: str | None) -> dict[str, Any]:
        for _ in range(5):
            proposal = await self.store.get(proposal_id)
            proposal, cleared = await self._refresh(proposal) if proposal else (None, False)
            if cleared:
                raise ChangeError(["the live policy changed since this proposal was made and its access delta changed "
                                   "with it: it was recomputed and its approvals cleared; review it again"], status=409)
            version = self.live.state.policy.version if self.live.state.policy else ""
            now = datetime.now(UTC)
            try:
                before, after = await self.store.update(
                    proposal_id, lambda p: rules.approve(p, actor, reason, version, now, _iso(now)))
            except StaleProposal:
                continue  # the policy moved between the refresh and the approval
            break
        else:
            raise ChangeError(["the live policy keeps changing; try again"], status=409)
        assert before is not None and after is not None
        await self.live.record({"actor": actor, "action": "proposal.approve", "target": proposal_id, "before": None,
                                "after": {"approvals": len(after["approvals"]), "needed": after["approvals_needed"]},
                                "reason": reason})
        if before["state"] == rules.OPEN and after["state"] == rules.APPROVED:  # this call made the transition
            after = await self._apply(after)
        await self.refresh_metrics()
        return self.public(after)

    async def _apply(self, proposal: dict[str, Any]) -> dict[str, Any]:
        try:
            prepared = await self.prepare(proposal["kind"], proposal["target"], proposal["body"])
            record = await self.live.commit(
                prepared, proposal["proposer"], reason=proposal["reason"], reference=proposal["reference"],
                access="loosening", proposal=proposal["id"], approved_by=[a["actor"] for a in proposal["approvals"]])
        except ChangeError as refused:
            await self.store.update(proposal["id"], lambda p: (p or proposal) | {"state": rules.FAILED,
                                                                                 "problems": refused.problems})
            raise
        applied = {"state": rules.APPLIED, "change_id": record["change_id"], "applied": {
            "time": record["time"], "policy_version": record["policy_version"]}}
        _, after = await self.store.update(proposal["id"], lambda p: (p or proposal) | applied)
        return after or proposal | applied

    async def close(self, proposal_id: str, state: str, actor: str, reason: str | None) -> dict[str, Any]:
        now = datetime.now(UTC)
        _, after = await self.store.update(proposal_id, lambda p: rules.close(p, state, actor, reason, now, _iso(now)))
        assert after is not None
        action = "proposal.reject" if state == rules.REJECTED else "proposal.withdraw"
        await self.live.record({"actor": actor, "action": action, "target": proposal_id, "before": None,
                                "after": {"state": state}, "reason": reason})
        await self.refresh_metrics()
        return self.public(after)

    # Countersignatures

    async def countersign(self, change_id: str, actor: str, reason: str | None) -> dict[str, Any]:
        def take(entry: dict[str, Any] | None) -> None:
            if entry is None:
                raise ChangeError([f"no change {change_id!r} is awaiting a countersignature"], status=404)
            if entry["actor"] == actor:
                raise ChangeError([f"{actor} made this change: another operator must countersign it"], status=403)
            return None

        before, _ = await self.store.update_pending(change_id, take)
        record = await self.live.record({"actor": actor, "action": "change.countersign", "target": change_id,
                                         "before": before, "after": None, "reason": reason})
        await self.refresh_metrics()
        return record

    async def awaiting(self) -> list[dict[str, Any]]:
        now = _iso(datetime.now(UTC))
        return sorted(({**e, "overdue": e["due"] <= now} for e in await self.store.pending()), key=lambda e: e["time"])

    # Metrics

    async def refresh_metrics(self) -> None:
        pending = await self.awaiting()
        self.metrics.changes_awaiting_countersign.set(len(pending))
        self.metrics.changes_countersign_overdue.set(sum(1 for e in pending if e["overdue"]))
        now = datetime.now(UTC)
        self.metrics.proposals_open.set(sum(1 for p in await self.store.all() if rules.state_of(p, now) == rules.OPEN))

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._metrics_forever())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait([self._task], timeout=3)

    async def _metrics_forever(self) -> None:
        while True:
            try:
                await self.refresh_metrics()
            except asyncio.CancelledError:
                raise
            except Exception as error:  # the store is down: the gauges keep their last values
                log.warning("change control metrics not refreshed: %r", error)
            await asyncio.sleep(METRICS_EVERY_S)


def split_proposal(body: dict[str, Any]) -> tuple[str, str | None, dict[str, Any], str | None, str | None]:
    """(kind, target, the direct endpoint's body, reason, reference) of a POST /admin/proposals body."""
    body = dict(body)
    kind = body.pop("kind", None)
    if kind not in KINDS:
        raise ChangeError([f"kind: one of {', '.join(KINDS)}"])
    target = body.pop("id", None) if kind in _TARGETED else None
    if kind in _TARGETED and not isinstance(target, str):
        raise ChangeError([f"id: a {kind} names what it changes"])
    if kind == "suspension.create":  # its reason and reference are the suspension's own
        return kind, None, body, _text(body.get("reason")), _text(body.get("reference"))
    reason, reference = _text(body.pop("reason", None)), _text(body.pop("reference", None))
    if kind == key_changes.CREATE:
        body = key_changes.request_of(body)
    if kind == "policy.replace":
        body.pop("from_files", None)  # only a reload of policy_dir makes the files the policy's source
        files = body.get("files")
        if not isinstance(files, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in files.items()):
            raise ChangeError(['files: expected {"<name>.yaml": "<YAML text>", ...}'])
        for key in ("lift", "reset_organizations"):
            ids = body.get(key, [])
            if not isinstance(ids, list) or not all(isinstance(item, str) for item in ids):
                raise ChangeError([f"{key}: expected a list of ids"])
    return kind, target, body, reason, reference


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None

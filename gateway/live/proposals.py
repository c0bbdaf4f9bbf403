"""Proposals and countersignatures: their rules, and where they are kept.

A proposal is a loosening change waiting for `approvals` distinct operators
other than its proposer. Its life, as a table a reviewer can read:

    open --approve (enough)--> approved --applied--> applied
    open --approve (apply refused)-----------------> failed
    open --reject-----> rejected      open --withdraw (proposer)--> withdrawn
    open --(proposal_ttl passes)--> expired

Only `open` moves. A tightening applies at once and waits for a countersignature
by another operator; an entry stays pending until countersigned (never reverted).

The rules are pure (`approve`, `close`, `state_of`); the stores keep the
documents. `LocalProposals` (embedded mode) keeps them in a file under
`state_dir`; `RedisProposals` (fleet mode) in two Redis hashes under the store's
hash tag, every update a WATCH/MULTI compare-and-set, so two replicas
approving one proposal at once serialise and exactly one sees the transition
to `approved` (and applies it).
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from gateway.live.overlay import ChangeError

Document = dict[str, Any]
Step = Callable[[Document | None], Document | None]

OPEN, APPROVED, APPLIED, FAILED = "open", "approved", "applied", "failed"
REJECTED, WITHDRAWN, EXPIRED = "rejected", "withdrawn", "expired"
CAS_ATTEMPTS = 50


# The rules (pure)


def state_of(proposal: Document, now: datetime) -> str:
    """The state in force: an open proposal past its expiry is expired."""
    if proposal["state"] == OPEN and now.isoformat() >= proposal["expires_at"]:
        return EXPIRED
    return str(proposal["state"])


def _require_open(proposal: Document | None, now: datetime) -> Document:
    if proposal is None:
        raise ChangeError(["no such proposal"], status=404)
    state = state_of(proposal, now)
    if state != OPEN:
        raise ChangeError([f"the proposal is {state}, not open"], status=409)
    return proposal


def approve(proposal: Document | None, actor: str, reason: str | None, version: str, now: datetime,
            stamp: str) -> Document:
    """The proposal with `actor`'s approval; `approved` once it has enough. Refused when
    the actor proposed it or approved already, or it was computed against another
    policy version than `version` (it must be recomputed first)."""
    proposal = _require_open(proposal, now)
    if actor == proposal["proposer"]:
        raise ChangeError([f"{actor} proposed this change and cannot approve it: another operator must"], status=403)
    if any(a["actor"] == actor for a in proposal["approvals"]):
        raise ChangeError([f"{actor} has approved this proposal already"], status=409)
    if proposal["policy_version"] != version:
        raise StaleProposal()
    approvals = [*proposal["approvals"], {"actor": actor, "time": stamp, "reason": reason}]
    state = APPROVED if len(approvals) >= proposal["approvals_needed"] else OPEN
    return proposal | {"approvals": approvals, "state": state}


def close(proposal: Document | None, state: str, actor: str, reason: str | None, now: datetime, stamp: str) -> Document:
    """Reject (any operator) or withdraw (the proposer only) an open proposal."""
    proposal = _require_open(proposal, now)
    if state == WITHDRAWN and actor != proposal["proposer"]:
        raise ChangeError([f"only the proposer ({proposal['proposer']}) can withdraw it; reject it instead"], status=403)
    return proposal | {"state": state, "closed": {"actor": actor, "time": stamp, "reason": reason}}


class StaleProposal(Exception):
    """The live policy changed since the proposal was computed."""


# Where they are kept


class ProposalStore(Protocol):
    async def get(self, proposal_id: str) -> Document | None: ...

    async def all(self) -> list[Document]: ...

    async def update(self, proposal_id: str, step: Step) -> tuple[Document | None, Document | None]: ...

    async def pending(self) -> list[Document]: ...

    async def update_pending(self, change_id: str, step: Step) -> tuple[Document | None, Document | None]: ...


class LocalProposals:
    """Embedded mode: one JSON file under `state_dir/live/`; one process, so a lock suffices."""

    def __init__(self, state_dir: str | Path) -> None:
        self.path = Path(state_dir) / "live" / "control.json"
        self.lock = asyncio.Lock()

    def _read(self) -> dict[str, dict[str, Document]]:
        data = json.loads(self.path.read_text()) if self.path.exists() else {}
        return {"proposals": data.get("proposals", {}), "pending": data.get("pending", {})}

    def _save(self, data: dict[str, dict[str, Document]]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        temporary = self.path.with_suffix(".tmp")
        temporary.write_text(json.dumps(data, sort_keys=True))
        os.replace(temporary, self.path)

    async def get(self, proposal_id: str) -> Document | None:
        return self._read()["proposals"].get(proposal_id)

    async def all(self) -> list[Document]:
        return list(self._read()["proposals"].values())

    async def pending(self) -> list[Document]:
        return list(self._read()["pending"].values())

    async def update(self, proposal_id: str, step: Step) -> tuple[Document | None, Document | None]:
        return await self._update("proposals", proposal_id, step)

    async def update_pending(self, change_id: str, step: Step) -> tuple[Document | None, Document | None]:
        return await self._update("pending", change_id, step)

    async def _update(self, table: str, key: str, step: Step) -> tuple[Document | None, Document | None]:
        async with self.lock:
            data = self._read()
            before = data[table].get(key)
            after = step(before)
            if after is None:
                data[table].pop(key, None)
            else:
                data[table][key] = after
            self._save(data)
            return before, after


class RedisProposals:
    """Fleet mode: `{ns}:proposals` and `{ns}:countersign`, hashes of JSON documents."""

    def __init__(self, redis: Any, namespace: str) -> None:
        self.redis = redis
        tag = "{" + namespace + "}"
        self.keys = {"proposals": f"{tag}:proposals", "pending": f"{tag}:countersign"}

    async def get(self, proposal_id: str) -> Document | None:
        text = await self.redis.hget(self.keys["proposals"], proposal_id)
        return json.loads(text) if text else None

    async def all(self) -> list[Document]:
        return [json.loads(v) for v in (await self.redis.hgetall(self.keys["proposals"])).values()]

    async def pending(self) -> list[Document]:
        return [json.loads(v) for v in (await self.redis.hgetall(self.keys["pending"])).values()]

    async def update(self, proposal_id: str, step: Step) -> tuple[Document | None, Document | None]:
        return await self._update(self.keys["proposals"], proposal_id, step)

    async def update_pending(self, change_id: str, step: Step) -> tuple[Document | None, Document | None]:
        return await self._update(self.keys["pending"], change_id, step)

    async def _update(self, key: str, field: str, step: Step) -> tuple[Document | None, Document | None]:
        """Compare-and-set one field: `step` sees the current document and returns the
        next (None deletes it); rerun when another writer changed the hash meanwhile."""
        from redis.exceptions import WatchError

        for _ in range(CAS_ATTEMPTS):
            try:
                async with self.redis.pipeline(transaction=True) as pipe:
                    await pipe.watch(key)
                    text = await pipe.hget(key, field)
                    before = json.loads(text) if text else None
                    after = step(before)
                    pipe.multi()
                    if after is None:
                        pipe.hdel(key, field)
                    else:
                        pipe.hset(key, field, json.dumps(after, sort_keys=True))
                    await pipe.execute()
                    return before, after
            except WatchError:
                await asyncio.sleep(0.005)
        raise ChangeError(["too many concurrent changes to this proposal; try again"], status=409)

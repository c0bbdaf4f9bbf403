"""The live policy of one replica: a mirror of the shared state, kept current.

Requests never wait on the store: they read `PolicyState.policy`, which this
class replaces whole whenever the shared revision moves. It learns of changes
three ways: a change made here is applied at once; other replicas' changes are
announced on pub/sub; and a resync every `RESYNC_S` catches anything missed and
doubles as the store's health check. When the store cannot be read for longer
than `max_staleness_s`, `PolicyState.usable()` turns false and the gateway
answers 503 until a resync succeeds (fail closed: docs/errors.md, 503).

Policy files are watched too (`policy_dir`, polled, or SIGHUP): a valid new
bundle is published to the store; an invalid, empty or truncated one is
refused with its errors logged, and the running snapshot stays.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from gateway.audit.verification import Verification, verify_change_log
from gateway.live import overlay as overlays
from gateway.live.overlay import ChangeError, Overlay
from gateway.config import Config
from gateway.live.store import Shared, Store
from gateway.metrics import Metrics
from gateway.policy.issues import Issue, PolicyError
from gateway.policy.load import FILES, Loaded, load_texts, read_bundle
from gateway.policy.snapshot import Policy

log = logging.getLogger("gateway.live")

RESYNC_S = 0.5
FILE_POLL_S = 1.0


class PolicyState:
    """The snapshot in force and how fresh it is; replaced whole, never edited."""

    def __init__(self, policy: Policy | None = None, *, max_staleness_s: float | None = None) -> None:
        self.policy = policy
        self.max_staleness_s = max_staleness_s
        self.synced_at = time.monotonic()

    def usable(self) -> bool:
        if self.policy is None:
            return False
        return self.max_staleness_s is None or time.monotonic() - self.synced_at <= self.max_staleness_s


@dataclass(frozen=True)
class Prepared:
    """A change checked against the state in force and not yet written: what it
    records (action, target, before, after), the policy it would put in force,
    and the store writes that make it so."""

    change: Mapping[str, Any]
    after: Policy
    set_fields: Mapping[str, str] = field(default_factory=dict)
    delete_fields: tuple[str, ...] = ()
    bundle: dict[str, Any] | None = None
    answer: Mapping[str, Any] = field(default_factory=dict)  # added to the admin API's answer
    # A write outside the live state (an API key), made just before the record.
    effect: Callable[[], Awaitable[Mapping[str, Any]]] | None = None


def new_change_id() -> str:
    return f"chg-{secrets.token_hex(6)}"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class LiveState:
    def __init__(self, state: PolicyState, store: Store, metrics: Metrics, policy_dir: str, *,
                 on_change: Callable[[Policy], None] | None = None) -> None:
        self.state = state
        self.store = store
        self.metrics = metrics
        self.policy_dir = policy_dir
        self.on_change = on_change
        self.base: Policy | None = None
        self.base_version: str | None = None
        self.files_version: str | None = None
        self.overlay = Overlay()
        self._proved: str | None = None  # the version of the last policy found to keep every assertion
        self.epoch: str | None = None
        self.revision = -1
        self._base_texts: dict[str, str] = {}
        self._publish_pending = False
        self._files_stamp: tuple[tuple[str, int, int], ...] = ()
        self._tasks: list[asyncio.Task[None]] = []
        self._sync_lock = asyncio.Lock()
        self.reload_requested = asyncio.Event()
        # Set by change control for `file_reloads: propose`: new policy files are handed to it
        # instead of being published (it applies a tightening, proposes a loosening).
        self.files_gate: Callable[[dict[str, str], Policy], Awaitable[dict[str, Any]]] | None = None

    @property
    def bundle_files(self) -> dict[str, str]:
        """The YAML texts of the bundle in force (before live changes)."""
        return dict(self._base_texts)

    # Starting and stopping

    async def start(self) -> None:
        try:
            await self.reload_files(initial=True)
        except Exception as error:  # the store is down: publish once it answers
            self._publish_pending = True
            log.error("cannot publish the policy files: %r", error)
        try:
            await self.resync(force=True)
        except Exception as error:  # the store is down at start: not ready until it answers
            log.error("cannot read the shared state: %r", error)
            self.metrics.redis_up.set(0)
        self._tasks = [asyncio.ensure_future(loop()) for loop in (self._listen, self._resync_forever, self._watch_files)]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        # Bounded: a Redis client caught mid-reconnect can swallow a cancellation.
        await asyncio.wait(self._tasks, timeout=3) if self._tasks else None
        await self.store.close()

    # Following the shared state

    async def resync(self, *, force: bool = False) -> None:
        async with self._sync_lock:
            epoch, revision = await self.store.stamp()
            if self._store_lost_state(epoch, revision) and await self._restore():
                epoch, revision = await self.store.stamp()
            if force or (epoch, revision) != (self.epoch, self.revision):
                await self._apply(await self.store.read())
            self.state.synced_at = time.monotonic()
            self.metrics.redis_up.set(1)

    def _store_lost_state(self, epoch: str | None, revision: int) -> bool:
        """The store is empty (e.g. Redis restarted without persistence), or was
        restored by a replica that had not seen the latest change."""
        if self.base is None or self.epoch is None:
            return False
        return epoch is None or (epoch == self.epoch and revision < self.revision)

    async def _restore(self) -> bool:
        log.warning("the shared state is missing or older than this replica's (revision %d): restoring it", self.revision)
        mirror = Shared(self.epoch, self.revision, self._base_texts, self.base_version, self.files_version, self.overlay)
        change = {"actor": "replica", "action": "state.restore", "target": "shared state", "time": _now(),
                  "before": None, "after": {"bundle_version": self.base_version, "revision": self.revision},
                  "policy_version": self.state.policy.version if self.state.policy else None}
        return await self.store.restore(mirror, change)

    async def _apply(self, shared: Shared) -> None:
        if shared.bundle is not None and shared.bundle_version != self.base_version:
            try:
                loaded = await asyncio.to_thread(load_texts, shared.bundle)
            except PolicyError as error:
                log.error("the shared bundle %s is invalid here: %s", shared.bundle_version, error.report())
            else:
                self.base, self.base_version = loaded.policy, shared.bundle_version
                self._base_texts = dict(shared.bundle)
        self.files_version = shared.files_version or self.files_version
        self.overlay = shared.overlay
        self.epoch, self.revision = shared.epoch, shared.revision
        if self.base is not None:
            policy = overlays.apply(self.base, self.overlay)  # skips, and logs, entries that do not fit
            if self.state.policy is None or policy.version != self.state.policy.version:
                previous = self.state.policy.version if self.state.policy is not None else None
                log.info("policy %s in force (was %s)", policy.version, previous,
                         extra={"policy_version": policy.version, "previous_version": previous})
                self.state.policy = policy
                self.metrics.policy_loaded(policy.version)
                self.metrics.suspensions_active.set(len(policy.suspensions))
                if self.on_change is not None:
                    self.on_change(policy)

    async def _listen(self) -> None:
        while True:
            try:
                async for _ in self.store.notifications():
                    await self.resync()
            except asyncio.CancelledError:
                raise
            except Exception as error:
                log.warning("change notifications interrupted: %r", error)
            await asyncio.sleep(RESYNC_S)

    async def _resync_forever(self) -> None:
        while True:
            await asyncio.sleep(RESYNC_S)
            try:
                await self.resync()
            except asyncio.CancelledError:
                raise
            except Exception as error:
                self.metrics.redis_up.set(0)
                log.warning("shared state unreachable: %r", error)

    # Policy files

    def _stamp(self) -> tuple[tuple[str, int, int], ...]:
        try:
            entries = sorted(os.scandir(self.policy_dir), key=lambda e: e.name)
            return tuple((e.name, e.stat().st_mtime_ns, e.stat().st_size) for e in entries if e.name.endswith((".yaml", ".yml")))
        except OSError:
            return ()

    async def _watch_files(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self.reload_requested.wait(), FILE_POLL_S)
            except TimeoutError:
                pass
            forced = self.reload_requested.is_set()
            self.reload_requested.clear()
            if forced or self._publish_pending or self._stamp() != self._files_stamp:
                try:
                    await self.reload_files(initial=self._publish_pending, force=forced)
                    self._publish_pending = False
                except Exception as error:
                    self._publish_pending = True
                    log.error("policy reload could not be published: %r", error)

    async def reload_files(self, *, initial: bool = False, force: bool = False) -> bool:
        """`reload`, for the watcher: False when the files were refused (logged and counted)."""
        try:
            await self.reload(initial=initial, force=force)
        except (PolicyError, ChangeError):
            return False
        return True

    async def reload(self, *, initial: bool = False, force: bool = False) -> dict[str, Any] | None:
        """Validate policy_dir; publish it if it is new (or `force`d: an operator's
        reload makes the files the policy again, even after a PUT), or hand it to
        `files_gate`. Refused whole, the running policy staying: PolicyError for invalid
        files, ChangeError (409) for files that would leave a live control naming what
        they no longer define. Returns the change or proposal made, if any."""
        self._files_stamp = self._stamp()
        try:
            texts, problems = await asyncio.to_thread(read_bundle, self.policy_dir)
            loaded: Loaded = await asyncio.to_thread(load_texts, texts, extra_issues=problems)
        except PolicyError as error:
            self.metrics.policy_reloads.labels("failure").inc()
            log.error("policy %s refused, the running policy stays:\n%s", self.policy_dir, error.report())
            raise
        version = loaded.policy.version
        shared = await self._read_or_none() if initial else None
        if initial:
            # Adopt the shared bundle (it may have been set through the admin API)
            # unless these files are new since they were last published.
            if shared is not None and shared.bundle is not None and shared.files_version == version:
                self.metrics.policy_reloads.labels("success").inc()
                return None
            if self.files_gate is not None and shared is not None and shared.bundle is not None:
                # Reviewed like any change, once this replica runs: the watcher's next look does it.
                self._files_stamp = ()
                return None
        elif version == self.files_version and not (force and version != self.base_version):
            self.metrics.policy_reloads.labels("success").inc()
            return None
        try:
            await asyncio.to_thread(overlays.check_bundle, loaded.policy,
                                    shared.overlay if shared is not None else self.overlay, datetime.now(UTC))
        except ChangeError as refused:
            self.metrics.policy_reloads.labels("failure").inc()
            log.error("policy %s refused, the running policy stays: it would drop live controls or break an "
                      "assertion\n  %s", self.policy_dir, "\n  ".join(refused.problems))
            raise
        self.metrics.policy_reloads.labels("success").inc()
        if self.files_gate is not None and not initial:
            made = await self.files_gate(texts, loaded.policy)
        else:
            made = await self.publish_bundle(texts, loaded.policy, actor="policy_dir", from_files=True)
        result = "proposed" if made is not None and "proposer" in made else "applied"
        log.info("policy files in %s reloaded (bundle %s): %s", self.policy_dir, version, result,
                 extra={"policy_version": version, "action": "policy.reload", "result": result})
        return made

    async def _read_or_none(self) -> Shared | None:
        try:
            shared = await self.store.read()
            self.epoch = shared.epoch if self.epoch is None else self.epoch
            return shared
        except Exception as error:
            log.error("cannot read the shared state: %r", error)
            return None

    # Changes (the admin API calls these)

    def _require_base(self) -> Policy:
        if self.base is None:
            raise ChangeError(["no valid policy is loaded"], status=503)
        return self.base

    async def _write(self, change: dict[str, Any], after: Policy, *, set_fields: dict[str, str] | None = None,
                     delete_fields: list[str] | None = None, bundle: dict[str, Any] | None = None) -> dict[str, Any]:
        """Record and store one change; `after` is the policy it puts in force. A live
        change that would break an assertion is refused here (a bundle already was)."""
        before = self.state.policy.version if self.state.policy else None
        if bundle is None and after.version != before and not str(change.get("action", "")).startswith("credential."):
            await self.prove(after)
        record = {"change_id": new_change_id()} | change | {"time": _now(), "policy_version_before": before, "policy_version": after.version}
        await self.store.write(set_fields=set_fields or {}, delete_fields=delete_fields or [], bundle=bundle,
                               change=record, epoch=self.epoch)
        await self.resync()
        return record

    async def prove(self, policy: Policy) -> None:
        """Refuse (ChangeError, with a counterexample) a policy that breaks an assertion.
        A change is proved when proposed and again when applied: the last policy proved
        is remembered, so that an unchanged one is not proved twice."""
        if policy.version == self._proved:
            return
        await asyncio.to_thread(overlays.check_assertions, policy, datetime.now(UTC))
        self._proved = policy.version

    async def commit(self, prepared: Prepared, actor: str, **details: Any) -> dict[str, Any]:
        """Write a prepared change as `actor`; `details` go into its record (reason, proposal, ...)."""
        change = {"actor": actor, **prepared.change, **details}
        if prepared.effect is not None:
            await prepared.effect()
        record = await self._write(change, prepared.after, set_fields=dict(prepared.set_fields),
                                   delete_fields=list(prepared.delete_fields), bundle=prepared.bundle)
        return record | prepared.answer

    async def record(self, change: dict[str, Any]) -> dict[str, Any]:
        """Put a record that changes no policy in the change log (an approval, a countersignature)."""
        if self.state.policy is None:
            raise ChangeError(["no valid policy is loaded"], status=503)
        return await self._write(change, self.state.policy)

    def _with(self, **changes: Any) -> Policy:
        """The effective policy once the overlay is changed as given."""
        base = self._require_base()
        current = self.overlay
        updated = Overlay(
            changes.get("suspensions", current.suspensions),
            changes.get("lifted", current.lifted),
            changes.get("organizations", current.organizations),
            changes.get("credentials", current.credentials),
        )
        return overlays.apply(base, updated)

    def prepare_bundle(self, texts: dict[str, str], policy: Policy, *, from_files: bool = False,
                       lift: tuple[str, ...] = (), reset: tuple[str, ...] = ()) -> Prepared:
        """A bundle to put in force, lifting the live suspensions `lift` and resetting the
        organization overrides `reset` in the same write."""
        version = policy.version
        bundle = {"files": texts, "version": version, "files_version": version if from_files else self.files_version}
        change = {"action": "policy.replace", "target": "policy",
                  "before": {"bundle_version": self.base_version}, "after": {"bundle_version": version}}
        if lift or reset:
            change["before"] |= {"suspensions": {i: self.overlay.suspensions[i] for i in lift},
                                 "organizations": {o: self.overlay.organizations[o] for o in reset}}
            change["after"] |= {"lifted": list(lift), "reset": list(reset)}
        remaining = self._overlay_without(lift, reset)
        deleted = tuple(f"susp:{i}" for i in lift) + tuple(
            f"org:{o}:{name}" for o in reset for name in self.overlay.organizations[o])
        return Prepared(change, overlays.apply(policy, remaining), delete_fields=deleted, bundle=bundle)

    async def publish_bundle(self, texts: dict[str, str], policy: Policy, *, actor: str,
                             from_files: bool = False) -> dict[str, Any]:
        return await self.commit(self.prepare_bundle(texts, policy, from_files=from_files), actor)

    def _overlay_without(self, lift: tuple[str, ...], reset: tuple[str, ...]) -> Overlay:
        current = self.overlay
        return Overlay({k: v for k, v in current.suspensions.items() if k not in lift}, current.lifted,
                       {k: v for k, v in current.organizations.items() if k not in reset}, current.credentials)

    async def prepare_policy(self, texts: dict[str, str], *, lift: tuple[str, ...] = (),
                             reset: tuple[str, ...] = (), from_files: bool = False) -> Prepared:
        """A bundle replacing the current one; refused whole (nothing changes) when it is
        invalid, or when it would leave a live control naming what it lacks and
        `lift`/`reset` do not remove that control with it."""
        unknown = [Issue(name, "", "unknown policy file") for name in texts if name not in FILES]
        if unknown:
            raise PolicyError(unknown)
        loaded = await asyncio.to_thread(load_texts, texts)  # PolicyError: refused whole, nothing changes
        absent = [f"lift: no live suspension {i!r}" for i in lift if i not in self.overlay.suspensions]
        absent += [f"reset: organization {o!r} has no live override" for o in reset if o not in self.overlay.organizations]
        if absent:
            raise ChangeError(absent)
        await asyncio.to_thread(overlays.check_bundle, loaded.policy, self._overlay_without(lift, reset),
                                datetime.now(UTC))
        return self.prepare_bundle(texts, loaded.policy, from_files=from_files, lift=lift, reset=reset)

    async def put_policy(self, texts: dict[str, str], actor: str, *, lift: tuple[str, ...] = (),
                         reset: tuple[str, ...] = ()) -> dict[str, Any]:
        return await self.commit(await self.prepare_policy(texts, lift=lift, reset=reset), actor)

    def prepare_suspension(self, data: dict[str, Any]) -> Prepared:
        base = self._require_base()
        new_id = str(data.get("id") or f"susp-{datetime.now(UTC):%Y%m%d}-{secrets.token_hex(3)}")
        document = overlays.check_suspension(base, self.overlay, {k: v for k, v in data.items() if k != "id"}, new_id)
        change = {"action": "suspension.create", "target": new_id, "before": None, "after": document}
        after = self._with(suspensions={**self.overlay.suspensions, new_id: document})
        return Prepared(change, after, set_fields={f"susp:{new_id}": _json(document)}, answer={"suspension": document})

    async def suspend(self, data: dict[str, Any], actor: str) -> dict[str, Any]:
        return await self.commit(self.prepare_suspension(data), actor)

    def prepare_lift(self, suspension_id: str) -> Prepared:
        base = self._require_base()
        if suspension_id in self.overlay.suspensions:
            before = self.overlay.suspensions[suspension_id]
            change = {"action": "suspension.lift", "target": suspension_id, "before": before, "after": None}
            remaining = {k: v for k, v in self.overlay.suspensions.items() if k != suspension_id}
            return Prepared(change, self._with(suspensions=remaining), delete_fields=(f"susp:{suspension_id}",))
        in_bundle = next((s for s in base.suspensions if s.id == suspension_id), None)
        if in_bundle is None or suspension_id in self.overlay.lifted:
            raise ChangeError([f"no suspension {suspension_id!r} is in force"], status=404)
        change = {"action": "suspension.lift", "target": suspension_id,
                  "before": {"id": suspension_id, "source": "policy files", "reason": in_bundle.reason}, "after": None}
        after = self._with(lifted=self.overlay.lifted | {suspension_id})
        return Prepared(change, after, set_fields={f"lift:{suspension_id}": "1"})

    async def lift(self, suspension_id: str, actor: str) -> dict[str, Any]:
        return await self.commit(self.prepare_lift(suspension_id), actor)

    def prepare_org_patch(self, org_id: str, data: dict[str, Any]) -> Prepared:
        base = self._require_base()
        fields = overlays.with_resets(overlays.check_org_patch(base, org_id, data), self.overlay.organizations.get(org_id, {}))
        current = self.state.policy.organizations[org_id] if self.state.policy else base.organizations[org_id]
        before = {name: _plain(getattr(current, name)) for name in fields}
        change = {"action": "organization.update", "target": org_id, "before": before, "after": fields}
        override = {**self.overlay.organizations.get(org_id, {}), **fields}
        override = {name: value for name, value in override.items() if value is not None}
        organizations = {k: v for k, v in self.overlay.organizations.items() if k != org_id}
        after = self._with(organizations=organizations | ({org_id: override} if override else {}))
        # null resets a field to the bundle's value.
        return Prepared(
            change, after,
            set_fields={f"org:{org_id}:{name}": _json(value) for name, value in fields.items() if value is not None},
            delete_fields=tuple(f"org:{org_id}:{name}" for name, value in fields.items() if value is None),
            answer={"remaining": override},  # the overrides still in force, so a reset says what it left
        )

    async def patch_organization(self, org_id: str, data: dict[str, Any], actor: str) -> dict[str, Any]:
        return await self.commit(self.prepare_org_patch(org_id, data), actor)

    async def suspend_credential(self, credential_id: str, why: dict[str, Any], actor: str) -> dict[str, Any]:
        if credential_id in self.overlay.credentials:
            return {"credential": credential_id, "already": True}
        change = {"actor": actor, "action": "credential.suspend", "target": credential_id, "before": None, "after": why}
        after = self._with(credentials={**self.overlay.credentials, credential_id: why})
        return await self._write(change, after, set_fields={f"cred:{credential_id}": _json(why)})

    def prepare_reinstate_credential(self, credential_id: str) -> Prepared:
        if credential_id not in self.overlay.credentials:
            raise ChangeError([f"credential {credential_id!r} is not suspended"], status=404)
        before = self.overlay.credentials[credential_id]
        change = {"action": "credential.reinstate", "target": credential_id, "before": before, "after": None}
        remaining = {k: v for k, v in self.overlay.credentials.items() if k != credential_id}
        return Prepared(change, self._with(credentials=remaining), delete_fields=(f"cred:{credential_id}",))

    async def reinstate_credential(self, credential_id: str, actor: str) -> dict[str, Any]:
        return await self.commit(self.prepare_reinstate_credential(credential_id), actor)

    async def changes(self, limit: int = 100) -> list[dict[str, Any]]:
        return await self.store.changes(limit)

    async def verify_changes(self) -> Verification:
        """The change log's hash chain checked whole, against the store's head."""
        found = await self.store.change_log()
        return await asyncio.to_thread(verify_change_log, found.lines, found.source, head=found.head,
                                       complete=found.complete)


async def record_local(config: Config, change: dict[str, Any]) -> None:
    """Record a change made outside a running gateway (`gateway keys`) in the change log of
    the store `config` names, as a running gateway records its own."""
    from gateway.live.store import LocalStore, RedisStore, record_only

    redis = config.redis
    store: Store = (RedisStore(redis.url, namespace=redis.namespace, timeout_s=redis.timeout_s, cluster=redis.cluster)
                    if redis.url else LocalStore(config.state_dir))
    try:
        await record_only(store, {"change_id": new_change_id()} | change | {
            "time": _now(), "policy_version_before": None, "policy_version": None})
    finally:
        await store.close()


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


def _plain(value: Any) -> Any:
    return value.isoformat() if hasattr(value, "isoformat") else value


def watch_sighup(live: LiveState) -> None:
    """SIGHUP asks for a policy reload, as operators expect of a daemon."""
    import signal

    asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, live.reload_requested.set)



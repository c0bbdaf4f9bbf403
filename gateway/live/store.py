"""Where the live state is kept: the active bundle, the overlay of live changes,
a revision counter and the change log (SPEC §4, §7).

`LocalStore` (embedded mode) keeps them under `state_dir`, so a restart loses
nothing. `RedisStore` (fleet mode) keeps them in Redis under one hash tag, so
every multi-key write is one MULTI transaction even on Redis Cluster, and
announces each change on a pub/sub channel. Both store the overlay as flat
fields (`susp:<id>`, `lift:<id>`, `org:<id>:<field>`), so two operators
changing different fields of one org never overwrite each other.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from gateway.live.overlay import Overlay

CHANGE_LOG_MAX = 100_000


def keys(namespace: str) -> dict[str, str]:
    """Key names under one hash tag, `{namespace}`: one Cluster slot for every
    multi-key transaction. Several gateways (or tests) can share a Redis by name."""
    tag = "{" + namespace + "}"
    return {name: f"{tag}:{name}" for name in ("bundle", "overlay", "revision", "changes", "events")}


@dataclass(frozen=True)
class Shared:
    revision: int
    bundle: dict[str, str] | None  # file name -> YAML text; None until one is published
    bundle_version: str | None
    files_version: str | None  # version of the last bundle published from policy_dir
    overlay: Overlay


def overlay_from_fields(fields: dict[str, str]) -> Overlay:
    suspensions: dict[str, Any] = {}
    lifted: set[str] = set()
    organizations: dict[str, dict[str, Any]] = {}
    for key, value in fields.items():
        kind, _, rest = key.partition(":")
        if kind == "susp":
            suspensions[rest] = json.loads(value)
        elif kind == "lift":
            lifted.add(rest)
        elif kind == "org":
            org_id, _, name = rest.rpartition(":")
            organizations.setdefault(org_id, {})[name] = json.loads(value)
    return Overlay(suspensions, frozenset(lifted), organizations)


class Store(Protocol):
    async def read(self) -> Shared: ...

    async def revision(self) -> int: ...

    async def write(self, *, set_fields: dict[str, str], delete_fields: list[str], bundle: dict[str, str] | None,
                    change: dict[str, Any]) -> int: ...

    async def changes(self, limit: int) -> list[dict[str, Any]]: ...

    def notifications(self) -> AsyncIterator[None]: ...

    async def close(self) -> None: ...


class LocalStore:
    """Embedded mode: files under `state_dir/live/`, written atomically."""

    def __init__(self, state_dir: str | Path) -> None:
        self.directory = Path(state_dir) / "live"

    def _read_json(self, name: str, default: Any) -> Any:
        path = self.directory / name
        return json.loads(path.read_text()) if path.exists() else default

    def _write_json(self, name: str, value: Any) -> None:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        temporary = self.directory / f".{name}.tmp"
        temporary.write_text(json.dumps(value, sort_keys=True))
        os.replace(temporary, self.directory / name)

    async def read(self) -> Shared:
        state = self._read_json("state.json", {"revision": 0, "bundle": None, "fields": {}})
        bundle = state["bundle"] or {}
        return Shared(state["revision"], bundle.get("files"), bundle.get("version"), bundle.get("files_version"),
                      overlay_from_fields(state["fields"]))

    async def revision(self) -> int:
        return int(self._read_json("state.json", {"revision": 0})["revision"])

    async def write(self, *, set_fields: dict[str, str], delete_fields: list[str], bundle: dict[str, Any] | None,
                    change: dict[str, Any]) -> int:
        state = self._read_json("state.json", {"revision": 0, "bundle": None, "fields": {}})
        state["fields"].update(set_fields)
        for name in delete_fields:
            state["fields"].pop(name, None)
        if bundle is not None:
            state["bundle"] = bundle
        state["revision"] += 1
        self._write_json("state.json", state)
        self.directory.joinpath("changes.jsonl").open("a").write(json.dumps(change | {"revision": state["revision"]}) + "\n")
        return int(state["revision"])

    async def changes(self, limit: int) -> list[dict[str, Any]]:
        path = self.directory / "changes.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines()[-limit:]][::-1]

    async def notifications(self) -> AsyncIterator[None]:
        # One process: changes are applied where they are made.
        return
        yield

    async def close(self) -> None:
        return None


class RedisStore:
    """Fleet mode: the shared state in Redis; replicas mirror it in memory."""

    def __init__(self, url: str, *, namespace: str = "fgw", timeout_s: float = 0.5) -> None:
        import redis.asyncio as redis

        self.redis = redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
                                          decode_responses=True)
        self.namespace = namespace
        self.keys = keys(namespace)

    async def read(self) -> Shared:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.get(self.keys["revision"]).hgetall(self.keys["bundle"]).hgetall(self.keys["overlay"])
            revision, bundle, fields = await pipe.execute()
        files = json.loads(bundle["files"]) if bundle.get("files") else None
        return Shared(int(revision or 0), files, bundle.get("version"), bundle.get("files_version"),
                      overlay_from_fields(fields))

    async def revision(self) -> int:
        return int(await self.redis.get(self.keys["revision"]) or 0)

    async def write(self, *, set_fields: dict[str, str], delete_fields: list[str], bundle: dict[str, Any] | None,
                    change: dict[str, Any]) -> int:
        async with self.redis.pipeline(transaction=True) as pipe:
            if set_fields:
                pipe.hset(self.keys["overlay"], mapping=set_fields)
            if delete_fields:
                pipe.hdel(self.keys["overlay"], *delete_fields)
            if bundle is not None:
                pipe.hset(self.keys["bundle"], mapping={
                    "files": json.dumps(bundle["files"]), "version": bundle["version"],
                    "files_version": bundle.get("files_version") or ""})
            # The change record is part of the same transaction: no change without its record.
            pipe.xadd(self.keys["changes"], {"change": json.dumps(change)}, maxlen=CHANGE_LOG_MAX, approximate=True)
            pipe.incr(self.keys["revision"])
            results = await pipe.execute()
        revision = int(results[-1])
        await self.redis.publish(self.keys["events"], str(revision))
        return revision

    async def changes(self, limit: int) -> list[dict[str, Any]]:
        entries = await self.redis.xrevrange(self.keys["changes"], count=limit)
        return [json.loads(fields["change"]) | {"id": entry_id} for entry_id, fields in entries]

    async def notifications(self) -> AsyncIterator[None]:
        """Yields once per announced change; raises when the connection fails."""
        pubsub = self.redis.pubsub()
        try:
            await pubsub.subscribe(self.keys["events"])
            while True:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                if message is not None:
                    yield None
        finally:
            await pubsub.aclose()

    async def close(self) -> None:
        await self.redis.aclose()

"""API keys in Redis, for fleets: every replica accepts a key the moment it exists (docs/operators.md, "API keys").

`RedisApiKeyStore` implements both `ApiKeyLookup` (the request path) and
`ApiKeyAdmin` (the `gateway keys` CLI). Its keys, under the `{namespace}` hash
tag like the live state (gateway/live/store.py), so every write is one MULTI
even on Redis Cluster:

  {ns}:apikeys          hash: sha256 hex -> JSON {key_id, org_id, created_at, revoked_at, label}
  {ns}:apikey-ids       hash: key_id -> sha256 hex
  {ns}:apikeys-version  counter, moved by every write in the same MULTI (writers WATCH it); a new
                        counter starts at a random value
  {ns}:apikeys-events   pub/sub channel: {"version": n, "sha256": hex} after each write

Secrets are never stored, only their SHA-256 (as in the file store: 32 random
bytes cannot be brute-forced from their hash).

The request path never waits on Redis: `lookup` reads an in-memory mirror.
`start()` loads it; each announcement updates it (one record when exactly that
write is new to this replica, a full reload otherwise); every `resync_s` the
version counter is read and the mirror reloaded when it moved, which catches a
missed announcement (a subscriber reconnecting, a writer that died between
EXEC and PUBLISH) within about a second; every `full_resync_s` it is reloaded
regardless, for edits made behind the counter's back. All updates of the mirror
are serialized, so a slow full reload can never put back a key that a newer
read has revoked.

When Redis is unreachable the mirror keeps serving what it last saw; the
gateway's staleness budget (`redis.max_staleness_s`) decides when to stop. If
Redis comes back empty (restarted without persistence), the version counter
has moved, the mirror is reloaded and every key is refused: keys are not
restored from a replica's memory, since that could bring back revoked keys.

The admin methods are synchronous (the CLI is), on their own blocking client;
from an event loop call them through `asyncio.to_thread`.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import random
import secrets
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any, TypeVar

import redis
import redis.asyncio as aioredis

from gateway.identity.apikeys import (
    KEY_ID,
    SHA256_HEX,
    ApiKeyInfo,
    ApiKeyRecord,
    ApiKeyStoreError,
    _new_key_id,
    check_new_key,
    hash_secret,
    new_secret,
)
from gateway.identity.principal import Principal
from gateway.live.redis_connect import before_pubsub, connect_url, describe

log = logging.getLogger("gateway.identity")

RESYNC_S = 1.0
FULL_RESYNC_S = 60.0
WRITE_ATTEMPTS = 50  # optimistic transactions retried on a concurrent write

T = TypeVar("T")


def key_names(namespace: str) -> dict[str, str]:
    tag = "{" + namespace + "}"
    return {"keys": f"{tag}:apikeys", "ids": f"{tag}:apikey-ids", "version": f"{tag}:apikeys-version",
            "events": f"{tag}:apikeys-events"}


class RedisApiKeyStore:
    """API keys shared by a fleet through Redis; lookups served from memory."""

    def __init__(self, redis_url: str, *, namespace: str = "fgw", timeout_s: float = 0.5,
                 resync_s: float = RESYNC_S, full_resync_s: float = FULL_RESYNC_S,
                 clock: Callable[[], float] = time.time, cluster: bool = False) -> None:
        self.redis_url = redis_url
        self.cluster = cluster  # a Redis Cluster reached through redis_url (gateway/live/redis_connect.py)
        self.namespace = namespace
        self.timeout_s = timeout_s
        self.resync_s = resync_s
        self.full_resync_s = full_resync_s
        self.keys = key_names(namespace)
        self._clock = clock
        # Created lazily: the CLI needs only the blocking client, a replica only the async one.
        self._async: aioredis.Redis | None = None
        self._sync: redis.Redis | None = None
        self._by_hash: dict[str, ApiKeyRecord] = {}
        self._version = 0  # of the mirror; Redis's counter, 0 when it does not exist
        self._lock = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []
        self._full_at = 0.0
        self._healthy = True
        self._closing = False
        self.synced_at: float | None = None  # time.monotonic() of the last successful read

    # -- the request path

    async def lookup(self, secret: str) -> Principal | None:
        return self.find(secret)

    def find(self, secret: str) -> Principal | None:
        digest = hash_secret(secret)
        record = self._by_hash.get(digest)
        # As in the file store: found by hash, authenticated by a constant-time comparison.
        if record is None or not hmac.compare_digest(record.sha256, digest) or record.revoked_at is not None:
            return None
        return Principal(f"apikey:{record.key_id}", record.org_id, credential_id=record.key_id, kind="api_key")

    def __len__(self) -> int:
        return len(self._by_hash)

    # -- following Redis

    @property
    def client(self) -> aioredis.Redis:
        if self._async is None:
            self._async = connect_url(self.redis_url, cluster=self.cluster, timeout_s=self.timeout_s)
        return self._async

    async def start(self) -> None:
        """Load the mirror and follow Redis. Redis down at start: every key is refused until it answers."""
        try:
            await self.sync(full=True)
        except Exception as error:
            self._failed(error)
        self._closing = False
        self._tasks = [asyncio.ensure_future(self._listen_forever()), asyncio.ensure_future(self._poll_forever())]

    async def close(self) -> None:
        self._closing = True
        pending = set(self._tasks)
        for _ in range(3):
            if not pending:
                break
            for task in pending:
                task.cancel()
            # redis-py can turn a cancellation into a timeout or connection error, which the loops
            # would survive; they also stop on `_closing`, at the latest after one read timeout.
            _, pending = await asyncio.wait(pending, timeout=1.5)
        if pending:
            log.warning("API keys: %d Redis task(s) did not stop", len(pending))
        self._tasks = []
        if self._async is not None:
            await self._async.aclose()
            self._async = None
        if self._sync is not None:
            self._sync.close()
            self._sync = None

    stop = close

    async def sync(self, *, full: bool = False) -> None:
        """Bring the mirror up to date: reload it if the version moved (or `full`). Raises on Redis errors."""
        async with self._lock:
            if full or time.monotonic() - self._full_at >= self.full_resync_s:
                await self._reload()
                return
            version = _version(await self.client.get(self.keys["version"]))
            if version != self._version:
                await self._reload()
            else:
                self._synced()

    async def _reload(self) -> None:
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.get(self.keys["version"]).hgetall(self.keys["keys"])
            version, fields = await pipe.execute()
        # Parsed off the event loop: 10^5 records take a noticeable fraction of a second.
        self._by_hash = await asyncio.to_thread(_mirror, fields)
        self._version = _version(version)
        self._full_at = time.monotonic()
        self._synced()

    async def _apply(self, data: str) -> None:
        """One announcement: apply its record if it is the only write this mirror lacks, else reload."""
        try:
            message = json.loads(data)
            announced, digest = int(message["version"]), str(message["sha256"])
            if not SHA256_HEX.fullmatch(digest):
                raise ValueError(digest)
        except (ValueError, TypeError, KeyError):
            log.warning("malformed API-key announcement %.100r; reloading the keys", data)
            await self.sync(full=True)
            return
        async with self._lock:
            async with self.client.pipeline(transaction=True) as pipe:
                pipe.get(self.keys["version"]).hget(self.keys["keys"], digest)
                version, text = await pipe.execute()
            current = _version(version)
            if current == self._version:  # already in the mirror
                self._synced()
            elif current == self._version + 1 == announced:
                record = _parse(digest, text) if text is not None else None
                if record is None:
                    self._by_hash.pop(digest, None)
                else:
                    self._by_hash[digest] = record
                self._version = current
                self._synced()
            else:
                await self._reload()

    def _stop_requested(self) -> None:
        """Raise CancelledError if this task was cancelled, even if redis-py swallowed the cancellation."""
        task = asyncio.current_task()
        if self._closing or (task is not None and task.cancelling()):
            raise asyncio.CancelledError

    async def _listen_forever(self) -> None:
        while True:
            self._stop_requested()
            pubsub = self.client.pubsub()
            try:
                await before_pubsub(self.client)
                await pubsub.subscribe(self.keys["events"])
                await self.sync()  # whatever was announced while not subscribed
                while True:
                    self._stop_requested()
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                    if message is not None and message["type"] == "message":
                        await self._apply(message["data"])
            except asyncio.CancelledError:
                raise
            except Exception as error:
                self._failed(error)
            finally:
                try:
                    await pubsub.aclose()
                except Exception:
                    pass
            await asyncio.sleep(self.resync_s)

    async def _poll_forever(self) -> None:
        while True:
            self._stop_requested()
            await asyncio.sleep(self.resync_s)
            self._stop_requested()
            try:
                await self.sync()
            except asyncio.CancelledError:
                raise
            except Exception as error:
                self._failed(error)

    def _synced(self) -> None:
        self.synced_at = time.monotonic()
        if not self._healthy:
            self._healthy = True
            log.warning("API keys: Redis answers again; %d keys loaded", len(self._by_hash))

    def _failed(self, error: Exception) -> None:
        if self._healthy:
            self._healthy = False
            log.error("API keys: cannot read Redis at %s (%r); serving the %d keys loaded before",
                      _where(self.redis_url), error, len(self._by_hash))

    # -- management (the CLI; blocking)

    def _admin_client(self) -> redis.Redis:
        if self._sync is None:
            self._sync = connect_url(self.redis_url, cluster=self.cluster, timeout_s=self.timeout_s, asyncio=False)
        return self._sync

    def create(self, org_id: str, label: str | None = None) -> tuple[str, str]:
        """A new key for `org_id`: (key id, secret). The secret exists only in this return value."""
        check_new_key(org_id, label)
        secret = new_secret()
        return self.register(org_id, hash_secret(secret), label), secret

    def register(self, org_id: str, digest: str, label: str | None = None, key_id: str | None = None) -> str:
        """A key known only by the SHA-256 of its secret; its id, `key_id` if given.
        ValueError when the id or hash is taken."""
        check_new_key(org_id, label, digest, key_id)
        created_at = self._now()
        chosen = key_id

        def attempt(pipe: redis.client.Pipeline) -> tuple[str, int]:
            version = _version(pipe.get(self.keys["version"]))
            if pipe.hexists(self.keys["keys"], digest) or (chosen and pipe.hexists(self.keys["ids"], chosen)):
                pipe.reset()
                raise ValueError("a key with this id or secret exists")
            key_id = chosen or _new_key_id(set())
            while not chosen and pipe.hexists(self.keys["ids"], key_id):
                key_id = _new_key_id(set())
            record = ApiKeyRecord(key_id, org_id, digest, created_at, None, label)
            pipe.multi()
            pipe.hset(self.keys["keys"], digest, _dump(record))
            pipe.hset(self.keys["ids"], key_id, digest)
            pipe.set(self.keys["version"], _next(version))
            pipe.execute()
            return key_id, _next(version)

        key_id, version = self._transaction(attempt)
        self._announce(version, digest)
        return key_id

    def revoke(self, key_id: str) -> bool:
        """Revoke a key; False if there is no such key. Revoking twice keeps the first time."""
        if not isinstance(key_id, str) or not KEY_ID.fullmatch(key_id):
            return False

        def attempt(pipe: redis.client.Pipeline) -> tuple[bool, int | None, str | None]:
            version = _version(pipe.get(self.keys["version"]))
            digest = pipe.hget(self.keys["ids"], key_id)
            text = pipe.hget(self.keys["keys"], digest) if digest is not None else None
            record = _parse(digest, text) if text is not None else None
            if record is None:
                pipe.reset()
                return False, None, None
            if record.revoked_at is not None:
                pipe.reset()
                return True, None, None
            pipe.multi()
            pipe.hset(self.keys["keys"], digest, _dump(replace(record, revoked_at=self._now())))
            pipe.set(self.keys["version"], _next(version))
            pipe.execute()
            return True, _next(version), digest

        found, version, digest = self._transaction(attempt)
        if version is not None and digest is not None:
            self._announce(version, digest)
        return found

    def _transaction(self, attempt: Callable[[redis.client.Pipeline], T]) -> T:
        """Run `attempt` under WATCH of the version counter, which every write moves, retrying on conflict."""
        try:
            with self._admin_client().pipeline(transaction=True) as pipe:
                for tries in range(WRITE_ATTEMPTS):
                    try:
                        pipe.watch(self.keys["version"])
                        return attempt(pipe)
                    except redis.WatchError:
                        time.sleep(random.uniform(0, 0.002 * (tries + 1)))
        except redis.RedisError as error:
            raise ApiKeyStoreError(f"cannot write API keys to Redis at {_where(self.redis_url)}: {error}") from None
        raise ApiKeyStoreError(f"API keys in Redis at {_where(self.redis_url)}: too many concurrent writes, try again")

    def _announce(self, version: int, digest: str) -> None:
        # Outside the MULTI (as the live store does): a lost announcement is caught by the version poll.
        try:
            self._admin_client().publish(self.keys["events"], json.dumps({"version": version, "sha256": digest}))
        except redis.RedisError as error:
            log.warning("API key change written but not announced (%r); replicas see it within %ss",
                        error, self.resync_s)

    def _now(self) -> str:
        return datetime.fromtimestamp(self._clock(), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

    def list(self) -> list[ApiKeyInfo]:  # last: the name would shadow `list` in annotations below it
        try:
            fields = self._admin_client().hgetall(self.keys["keys"])
        except redis.RedisError as error:
            raise ApiKeyStoreError(f"cannot read API keys from Redis at {_where(self.redis_url)}: {error}") from None
        records = [record for digest, text in fields.items() if (record := _parse(digest, text)) is not None]
        return [record.info() for record in sorted(records, key=lambda r: (r.created_at, r.key_id))]


def _version(value: Any) -> int:
    return int(value) if value is not None else 0


def _next(version: int) -> int:
    """The version after `version`. A new counter starts at a random point, so a mirror of a Redis that
    has since lost its data cannot mistake the new counter's values for its own successors."""
    return version + 1 if version else secrets.randbelow(2**48) + 1


def _mirror(fields: dict[str, str]) -> dict[str, ApiKeyRecord]:
    return {digest: record for digest, text in fields.items() if (record := _parse(digest, text)) is not None}


def _dump(record: ApiKeyRecord) -> str:
    return json.dumps({"key_id": record.key_id, "org_id": record.org_id, "created_at": record.created_at,
                       "revoked_at": record.revoked_at, "label": record.label}, separators=(",", ":"))


def _parse(digest: str, text: str) -> ApiKeyRecord | None:
    """A record from Redis, or None (logged) if it is malformed: that one key is refused."""
    try:
        entry = json.loads(text)
        record = ApiKeyRecord(entry["key_id"], entry["org_id"], digest, entry["created_at"], entry.get("revoked_at"),
                              entry.get("label"))
        if not SHA256_HEX.fullmatch(digest) or not KEY_ID.fullmatch(str(record.key_id)):
            raise ValueError("malformed key_id or sha256")
        if not isinstance(record.org_id, str) or not record.org_id:
            raise ValueError("org_id is not a non-empty string")
        if record.revoked_at is not None and not isinstance(record.revoked_at, str):
            raise ValueError("revoked_at is not a string")
    except (ValueError, TypeError, KeyError, AttributeError) as error:
        log.error("API key record %.16s… in Redis is malformed (%s); that key is refused", digest, error)
        return None
    return record


def _where(url: str) -> str:
    """The servers a Redis URL names (host:port, sentinels, cluster nodes), never its password."""
    return describe(url)

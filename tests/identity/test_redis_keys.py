"""API keys in Redis (fleet mode), against a real Redis: run under scripts/with-redis.

Each test uses its own namespace, so tests (and their replicas) share one server
without seeing each other. A "replica" is a second `RedisApiKeyStore` on the
same namespace, with its own connection and its own in-memory mirror.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import redis.asyncio as aioredis

from conftest import REFERENCE_POLICY
from gateway.identity.apikeys import hash_secret
from gateway.identity.principal import Principal
from gateway.identity.redis_keys import RedisApiKeyStore, key_names

REDIS_URL = os.environ.get("REDIS_URL")
pytestmark = [
    pytest.mark.anyio,
    pytest.mark.skipif(REDIS_URL is None, reason="needs a real Redis: run under scripts/with-redis"),
]

Stores = Callable[..., Awaitable[RedisApiKeyStore]]


@pytest.fixture
def namespace() -> str:
    return f"test-{uuid.uuid4().hex}"


@pytest.fixture
async def stores(namespace: str) -> AsyncIterator[Stores]:
    """Starts replicas on the test's namespace (or another); closes them all at the end."""
    started: list[RedisApiKeyStore] = []

    async def start(url: str | None = None, *, ns: str | None = None, **options: float) -> RedisApiKeyStore:
        store = RedisApiKeyStore(url or REDIS_URL, namespace=ns or namespace, **options)  # type: ignore[arg-type]
        await store.start()
        started.append(store)
        return store

    yield start
    for store in started:
        await store.close()


@pytest.fixture
async def raw(namespace: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(REDIS_URL, decode_responses=True)  # type: ignore[arg-type]
    yield client
    await client.aclose()


async def eventually(check: Callable[[], Awaitable[bool]], within: float = 1.0) -> float:
    """Seconds until `check` holds; fails if it does not within `within`."""
    start = time.monotonic()
    while not await check():
        if time.monotonic() - start > within:
            raise AssertionError(f"not within {within}s")
        await asyncio.sleep(0.01)
    return time.monotonic() - start


def accepted(store: RedisApiKeyStore, secret: str) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return await store.lookup(secret) is not None
    return check


def refused(store: RedisApiKeyStore, secret: str) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return await store.lookup(secret) is None
    return check


# Replicas


async def test_key_created_on_one_replica_is_accepted_by_another_within_a_second(stores: Stores) -> None:
    writer, replica = await stores(), await stores()
    key_id, secret = await asyncio.to_thread(writer.create, "acme", "ci")
    assert re.fullmatch(r"key_[0-9a-f]{12}", key_id)
    assert re.fullmatch(r"fgw_[A-Za-z0-9_-]{43}", secret)
    await eventually(accepted(replica, secret))
    expected = Principal(subject=f"apikey:{key_id}", org_id="acme", credential_id=key_id, kind="api_key")
    assert await replica.lookup(secret) == expected
    await eventually(accepted(writer, secret))  # the writer's own mirror follows the same way
    # A replica started later loads it at start.
    assert await (await stores()).lookup(secret) == expected


async def test_revoke_on_one_replica_is_refused_on_the_other_within_a_second(stores: Stores) -> None:
    writer, replica = await stores(), await stores()
    key_id, secret = await asyncio.to_thread(writer.create, "acme")
    _, other = await asyncio.to_thread(writer.create, "acme")
    await eventually(accepted(replica, secret))
    await eventually(accepted(replica, other))
    assert await asyncio.to_thread(writer.revoke, key_id) is True
    await eventually(refused(replica, secret))
    await eventually(refused(writer, secret))
    assert await replica.lookup(other) is not None
    first = next(info for info in writer.list() if info.key_id == key_id).revoked_at
    assert first is not None
    await asyncio.sleep(1.1)  # the next second: a second revocation must not move the time
    assert await asyncio.to_thread(writer.revoke, key_id) is True
    assert next(info for info in writer.list() if info.key_id == key_id).revoked_at == first
    assert await asyncio.to_thread(writer.revoke, "key_000000000000") is False
    assert await asyncio.to_thread(writer.revoke, "not a key id") is False
    assert await replica.lookup(secret) is None


async def test_a_missed_announcement_is_caught_by_the_version_poll(stores: Stores, monkeypatch: pytest.MonkeyPatch) -> None:
    writer, replica = await stores(), await stores()
    # As if the CLI died between its EXEC and its PUBLISH.
    monkeypatch.setattr(RedisApiKeyStore, "_announce", lambda self, version, digest: None)
    key_id, secret = await asyncio.to_thread(writer.create, "acme")
    await eventually(accepted(replica, secret), within=1.5)
    await asyncio.to_thread(writer.revoke, key_id)
    await eventually(refused(replica, secret), within=1.5)


async def test_concurrent_creates_from_two_replicas_keep_every_key(stores: Stores) -> None:
    first, second = await stores(), await stores()
    made: list[tuple[str, str]] = []
    lock = threading.Lock()

    def create_many(store: RedisApiKeyStore, org: str) -> None:
        for _ in range(25):
            key = store.create(org)
            with lock:
                made.append(key)

    await asyncio.gather(*(asyncio.to_thread(create_many, store, org)
                           for store, org in ((first, "acme"), (second, "globex"), (first, "initech"))))
    assert len(made) == 75
    assert sorted(info.key_id for info in first.list()) == sorted(key_id for key_id, _ in made)
    assert sorted(info.key_id for info in second.list()) == sorted(key_id for key_id, _ in made)
    for store in (first, second):
        for key_id, secret in made:
            await eventually(accepted(store, secret))


# What is stored and shown


async def test_list_shows_no_hashes_or_secrets(stores: Stores) -> None:
    store = await stores()
    key_id, secret = await asyncio.to_thread(store.create, "acme", "batch jobs")
    (info,) = store.list()
    assert (info.key_id, info.org_id, info.label, info.revoked_at) == (key_id, "acme", "batch jobs", None)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", info.created_at)
    assert not hasattr(info, "sha256")
    shown = repr(store.list())
    assert secret not in shown and secret[4:] not in shown and hash_secret(secret) not in shown


async def test_redis_holds_hashes_never_secrets(stores: Stores, raw: aioredis.Redis, namespace: str) -> None:
    names = key_names(namespace)
    pubsub = raw.pubsub()
    await pubsub.subscribe(names["events"])
    store = await stores()
    key_id, secret = await asyncio.to_thread(store.create, "acme", "ci")
    await asyncio.to_thread(store.revoke, key_id)
    records = await raw.hgetall(names["keys"])
    assert list(records) == [hash_secret(secret)]
    assert json.loads(records[hash_secret(secret)]).keys() == {"key_id", "org_id", "created_at", "revoked_at", "label"}
    assert await raw.hgetall(names["ids"]) == {key_id: hash_secret(secret)}
    # Everything under the namespace, and every announcement.
    dump = [str(await raw.hgetall(name)) if await raw.type(name) == "hash" else str(await raw.get(name))
            async for name in raw.scan_iter(match="{" + namespace + "}*")]
    announced = []
    deadline = time.monotonic() + 1.0
    while len(announced) < 2 and time.monotonic() < deadline:
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.1)
        if message is not None:
            announced.append(message["data"])
    await pubsub.aclose()
    assert len(announced) == 2
    for text in dump + announced:
        assert secret not in text and secret[4:] not in text


async def test_a_wrong_secret_is_refused(stores: Stores) -> None:
    store = await stores()
    _, secret = await asyncio.to_thread(store.create, "acme")
    await eventually(accepted(store, secret))
    for wrong in (secret + "x", secret[:-1], secret.upper(), "fgw_" + "A" * 43, "", hash_secret(secret)):
        assert await store.lookup(wrong) is None, wrong


async def test_no_keys_in_redis_means_every_lookup_is_refused(stores: Stores, namespace: str) -> None:
    elsewhere = await stores(ns=namespace + "-other")
    _, secret = await asyncio.to_thread(elsewhere.create, "acme")
    await eventually(accepted(elsewhere, secret))
    empty = await stores()
    assert len(empty) == 0
    for candidate in (secret, "fgw_" + "A" * 43, "anything"):
        assert await empty.lookup(candidate) is None


async def test_keys_lost_from_redis_are_refused_within_about_a_second(stores: Stores, raw: aioredis.Redis,
                                                                      namespace: str) -> None:
    """Redis restarted without persistence: refuse, never serve keys from memory that Redis no longer has."""
    writer, replica = await stores(), await stores()
    _, secret = await asyncio.to_thread(writer.create, "acme")
    await eventually(accepted(replica, secret))
    await raw.delete(*key_names(namespace).values())
    await eventually(refused(replica, secret), within=1.5)
    # A key created after the loss is accepted: the new counter is not taken for the old one's successor.
    _, fresh = await asyncio.to_thread(writer.create, "acme")
    await eventually(accepted(replica, fresh))
    assert await replica.lookup(secret) is None


async def test_a_malformed_record_refuses_only_that_key(stores: Stores, raw: aioredis.Redis, namespace: str) -> None:
    store = await stores()
    _, good = await asyncio.to_thread(store.create, "acme")
    _, bad = await asyncio.to_thread(store.create, "acme")
    await raw.hset(key_names(namespace)["keys"], hash_secret(bad), '{"key_id": "key_1", "org_id": ""}')
    await store.sync(full=True)
    assert await store.lookup(good) is not None
    assert await store.lookup(bad) is None
    assert [info.org_id for info in store.list()] == ["acme"]


# Redis unreachable


class Proxy:
    """A TCP relay to the real Redis that the test can cut and restore."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.target = (parts.hostname or "127.0.0.1", parts.port or 6379)
        self.db = parts.path
        self.port = 0
        self.server: asyncio.base_events.Server | None = None
        self.writers: list[asyncio.StreamWriter] = []

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}{self.db}"

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._relay, "127.0.0.1", self.port)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        self.writers += [writer, up_writer]

        async def pump(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            try:
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                sink.close()

        await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))

    async def cut(self) -> None:
        assert self.server is not None
        self.server.close()
        for writer in self.writers:
            writer.close()
        self.writers = []
        await self.server.wait_closed()


async def test_with_redis_unreachable_the_mirror_keeps_serving(stores: Stores) -> None:
    proxy = Proxy(REDIS_URL)  # type: ignore[arg-type]
    await proxy.start()
    writer = await stores()
    replica = await stores(proxy.url, resync_s=0.2)
    key_id, secret = await asyncio.to_thread(writer.create, "acme")
    await eventually(accepted(replica, secret))
    await proxy.cut()
    await asyncio.sleep(0.5)
    synced_at = replica.synced_at
    started = time.monotonic()
    assert await replica.lookup(secret) is not None  # from memory, without waiting on Redis
    assert time.monotonic() - started < 0.01
    await asyncio.to_thread(writer.revoke, key_id)
    await asyncio.sleep(0.5)
    assert replica.synced_at == synced_at  # nothing read: the gateway's staleness budget can see it
    await proxy.start()  # Redis reachable again: the revocation arrives
    await eventually(refused(replica, secret), within=2.0)
    assert replica.synced_at is not None and synced_at is not None and replica.synced_at > synced_at


async def test_with_redis_unreachable_at_start_every_key_is_refused(stores: Stores) -> None:
    writer = await stores()
    _, secret = await asyncio.to_thread(writer.create, "acme")
    proxy = Proxy(REDIS_URL)  # type: ignore[arg-type]
    await proxy.start()
    await proxy.cut()
    replica = await stores(proxy.url, resync_s=0.2)
    assert await replica.lookup(secret) is None
    await proxy.start()
    await eventually(accepted(replica, secret), within=2.0)


# The CLI and the gateway


def gateway(*argv: str, config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", "keys", *argv, "--config", str(config)],
                          capture_output=True, text=True, timeout=60)


def fleet_config(tmp_path: Path, url: str, namespace: str) -> Path:
    config = tmp_path / "gateway.yaml"
    config.write_text(f"state_dir: state\npolicy_dir: {REFERENCE_POLICY}\nredis: {{url: '{url}', namespace: '{namespace}'}}\n")
    return config


async def test_gateway_keys_create_with_redis_url_writes_to_redis(tmp_path: Path, stores: Stores, namespace: str) -> None:
    config = fleet_config(tmp_path, REDIS_URL, namespace)  # type: ignore[arg-type]
    replica = await stores()
    created = await asyncio.to_thread(gateway, "create", "--org", "acme", "--force", "--label", "ci", "--json",
                                      config=config)
    assert created.returncode == 0, created.stderr
    output = json.loads(created.stdout)
    key_id, secret = output["key_id"], output["secret"]
    await eventually(accepted(replica, secret))
    assert (await replica.lookup(secret)).org_id == "acme"  # type: ignore[union-attr]
    assert not (tmp_path / "state" / "api_keys.json").exists()  # not the embedded file

    listed = await asyncio.to_thread(gateway, "list", "--json", config=config)
    assert [(k["key_id"], k["label"], k["revoked_at"]) for k in json.loads(listed.stdout)] == [(key_id, "ci", None)]
    assert secret not in listed.stdout

    revoked = await asyncio.to_thread(gateway, "revoke", key_id, config=config)
    assert revoked.returncode == 0, revoked.stderr
    await eventually(refused(replica, secret))


async def test_gateway_keys_with_redis_down_fails_without_showing_the_password(tmp_path: Path) -> None:
    config = fleet_config(tmp_path, "redis://:hunter2@127.0.0.1:1/0", "x")
    result = await asyncio.to_thread(gateway, "create", "--org", "acme", "--force", config=config)
    assert result.returncode == 1
    assert "cannot write API keys to Redis at 127.0.0.1:1" in result.stderr
    assert "hunter2" not in result.stderr + result.stdout and "Secret" not in result.stdout


def test_two_gateway_replicas_accept_and_refuse_a_key_made_by_the_cli(tmp_path: Path) -> None:
    """Two real gateways (`Service`) sharing a Redis namespace; the key comes from `gateway keys`."""
    from e2e import US_IP, Stack

    namespace = f"test-{uuid.uuid4().hex}"
    redis_config = f"redis: {{url: '{REDIS_URL}', namespace: '{namespace}'}}"
    replicas = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        replicas.append(Stack(tmp_path / name, extra_config=redis_config))
    try:
        config = fleet_config(tmp_path, REDIS_URL, namespace)  # type: ignore[arg-type]
        created = gateway("create", "--org", "org-public", "--json", config=config)
        assert created.returncode == 0, created.stderr
        key_id, secret = json.loads(created.stdout)["key_id"], json.loads(created.stdout)["secret"]

        def status(stack: Stack, credential: str) -> int:
            body = json.dumps({"model": "small-2", "messages": [{"role": "user", "content": "hi"}]}).encode()
            call = urllib.request.Request(f"{stack.url}/v1/chat/completions", body, {
                "Authorization": f"Bearer {credential}", "Content-Type": "application/json", "X-Forwarded-For": US_IP})
            try:
                with urllib.request.urlopen(call, timeout=5) as reply:
                    return reply.status
            except urllib.error.HTTPError as error:
                return error.code

        def within(seconds: float, condition: Callable[[], bool]) -> None:
            deadline = time.monotonic() + seconds
            while not condition():
                assert time.monotonic() < deadline, f"not within {seconds}s"
                time.sleep(0.02)

        for stack in replicas:
            within(1.0, lambda: status(stack, secret) == 200)
            # The embedded key file is not consulted in fleet mode.
            assert status(stack, stack.api_key("org-public")) == 401
        assert gateway("revoke", key_id, config=config).returncode == 0
        for stack in replicas:
            within(1.0, lambda: status(stack, secret) == 401)
    finally:
        for stack in replicas:
            stack.close()

"""Console sessions in memory and in a real Redis: stored under the id's hash, expiring, and
never revived from something else someone wrote there."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
import redis.asyncio as aioredis

from gateway.config import AdminToken
from gateway.console.sessions import MemorySessions, RedisSessions, Session, storage_key, token_by_secret, token_for

ALICE = AdminToken(name="ops-alice", sha256="a" * 64, role="operator")


def run(coroutine: Any) -> Any:
    return asyncio.run(coroutine)


def test_memory_sessions_keep_what_they_were_given_and_forget_on_delete() -> None:
    sessions = MemorySessions(clock=lambda: 100.0)
    session = Session(ALICE.sha256, 100.0, 200.0)
    run(sessions.put("id-1", session))
    assert run(sessions.get("id-1")) == session and run(sessions.get("id-2")) is None
    assert "id-1" not in str(sessions.sessions)  # only the id's hash is kept
    run(sessions.delete("id-1"))
    assert run(sessions.get("id-1")) is None


def test_memory_sessions_are_bounded_and_drop_expired_ones_first() -> None:
    from gateway.console import sessions as module

    now = [0.0]
    store = MemorySessions(clock=lambda: now[0])
    run(store.put("old", Session("", 0.0, 1.0)))
    now[0] = 5.0
    for n in range(module.MAX_SESSIONS + 10):
        run(store.put(f"s{n}", Session("", 5.0, 50.0)))
    assert len(store.sessions) == module.MAX_SESSIONS
    assert run(store.get("old")) is None and run(store.get("s0")) is None  # the expired one, then the oldest
    assert run(store.get(f"s{module.MAX_SESSIONS + 9}")) is not None


def test_redis_sessions_round_trip_expire_and_refuse_garbage(redis_url: str) -> None:
    async def scenario() -> None:
        client = aioredis.from_url(redis_url, decode_responses=True)
        namespace = f"sessions-{uuid.uuid4().hex[:8]}"
        store = RedisSessions(client, namespace)
        jwt_session = Session("", 1000.0, 1060.0, "user@org", "viewer")
        await store.put("cookie-id", jwt_session)
        key = "{" + namespace + "}:console:session:" + storage_key("cookie-id")
        assert await store.get("cookie-id") == jwt_session
        assert 55 <= await client.ttl(key) <= 60  # Redis forgets it with the session
        await client.set(key, '{"token_sha256": 5}')
        assert await store.get("cookie-id") is None
        await client.set(key, "not json")
        assert await store.get("cookie-id") is None
        await store.delete("cookie-id")
        assert await client.exists(key) == 0
        await client.aclose()

    run(scenario())


@pytest.mark.parametrize("secret, found", [("right", True), (" right\n", True), ("wrong", False), ("", False)])
def test_a_token_is_known_by_its_hash_only(secret: str, found: bool) -> None:
    import hashlib

    token = AdminToken(name="ops-alice", sha256=hashlib.sha256(b"right").hexdigest(), role="operator")
    assert (token_by_secret([token], secret) is token) is found
    assert token_for([token], Session(token.sha256, 0, 1)) is token
    assert token_for([], Session(token.sha256, 0, 1)) is None  # removed from the configuration


def test_jwt_sign_in_without_a_jwt_issuer_is_refused_before_serving(tmp_path: Any) -> None:
    from gateway.config import load_config
    from gateway.server import check_admin

    path = tmp_path / "gateway.yaml"
    path.write_text("console: {jwt_role_claim: gateway_role}\n")
    with pytest.raises(ValueError, match="console.jwt_role_claim is set but identity.jwt is not"):
        check_admin(load_config(path, {}))

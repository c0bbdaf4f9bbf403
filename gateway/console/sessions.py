"""Console sessions: who signed in, with which admin token, until when.

The browser holds only a random session id (the cookie); the server keeps the session
under the id's SHA-256, so a copy of the store yields no usable cookie. Embedded mode
keeps sessions in memory (a restart signs everyone out, which fails safe); fleet mode
keeps them in Redis with the session's lifetime as the key's TTL, so any replica behind
a load balancer serves any session and sign-out ends it on every replica at once. A
signed stateless cookie would need the same shared store to honour sign-out, so the
store is the simpler whole.

A session names its token by the token's SHA-256, never by the name it had: on every
request the token is looked up in the configuration in force, so removing a token (or
changing its role) takes effect on the sessions made with it. A session made with a JWT
(`console.jwt_role_claim`) keeps the role its claim gave, ends with the JWT at the latest,
and ends when that setting is removed.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import secrets
import time
from dataclasses import asdict, dataclass
from typing import Any, Protocol

from gateway.config import AdminToken

COOKIE = "fgw_console"
MAX_SESSIONS = 10_000  # in memory: beyond this the oldest go first (a sign-in flood cannot grow memory)


@dataclass(frozen=True)
class Session:
    token_sha256: str  # the admin token's; "" for a JWT sign-in
    created: float
    expires: float
    subject: str | None = None  # a JWT sign-in's `sub`, with the role its claim gave
    role: str | None = None

    def alive(self, now: float) -> bool:
        return self.created <= now < self.expires


@dataclass(frozen=True)
class Actor:
    """The signed-in person as the pages see them: the token's name and role in force now."""
    name: str
    role: str
    session_id: str

    @property
    def can_change(self) -> bool:
        return self.role == "operator"


def new_session_id() -> str:
    return secrets.token_urlsafe(32)


def storage_key(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


def token_for(tokens: list[AdminToken], session: Session) -> AdminToken | None:
    """The configured token the session was made with, if it is still configured."""
    for token in tokens:
        if secrets.compare_digest(token.sha256, session.token_sha256):
            return token
    return None


def token_by_secret(tokens: list[AdminToken], secret: str) -> AdminToken | None:
    """The token whose SHA-256 matches `secret`, compared with every token in constant time."""
    digest = hashlib.sha256(secret.strip().encode()).hexdigest()
    found = None
    for token in tokens:
        if secrets.compare_digest(digest, token.sha256):
            found = token
    return found


class SessionStore(Protocol):
    async def put(self, session_id: str, session: Session) -> None: ...

    async def get(self, session_id: str) -> Session | None: ...

    async def delete(self, session_id: str) -> None: ...


class MemorySessions:
    """One process's sessions (embedded mode)."""

    def __init__(self, clock: Any = time.time) -> None:
        self.sessions: dict[str, Session] = {}
        self.clock = clock

    async def put(self, session_id: str, session: Session) -> None:
        if len(self.sessions) >= MAX_SESSIONS:  # full: the expired go, then the oldest
            now = self.clock()
            self.sessions = {k: s for k, s in self.sessions.items() if s.alive(now)}
            while len(self.sessions) >= MAX_SESSIONS:
                del self.sessions[next(iter(self.sessions))]
        self.sessions[storage_key(session_id)] = session

    async def get(self, session_id: str) -> Session | None:
        return self.sessions.get(storage_key(session_id))

    async def delete(self, session_id: str) -> None:
        self.sessions.pop(storage_key(session_id), None)


class RedisSessions:
    """The fleet's sessions, one Redis key each, expiring with the session."""

    def __init__(self, redis: Any, namespace: str, *, timeout_s: float = 1.0) -> None:
        self.redis = redis
        self.prefix = "{" + namespace + "}:console:session:"
        self.timeout_s = timeout_s

    async def put(self, session_id: str, session: Session) -> None:
        ttl = max(1, int(session.expires - session.created))
        await asyncio.wait_for(self.redis.set(self.prefix + storage_key(session_id), json.dumps(asdict(session)), ex=ttl),
                               self.timeout_s)

    async def get(self, session_id: str) -> Session | None:
        raw = await asyncio.wait_for(self.redis.get(self.prefix + storage_key(session_id)), self.timeout_s)
        if raw is None:
            return None
        try:
            data = json.loads(raw)
            subject, role = data.get("subject"), data.get("role")
            return Session(str(data["token_sha256"]), float(data["created"]), float(data["expires"]),
                           subject if isinstance(subject, str) else None, role if isinstance(role, str) else None)
        except (ValueError, KeyError, TypeError):
            return None  # not a session we wrote: no session

    async def delete(self, session_id: str) -> None:
        await asyncio.wait_for(self.redis.delete(self.prefix + storage_key(session_id)), self.timeout_s)

"""Shared pieces for identity tests: keys, a token forge, a settable clock, a JWKS server.

Tokens are assembled by hand (header and payload as dicts or raw JSON text) and
signed with joserfc's algorithm implementations, so tests can build exactly the
malformed and hostile tokens the verifier must refuse.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from joserfc.jwk import Key, generate_key
from joserfc.jws import JWSRegistry

from gateway.identity.jwt import JwtVerifier

ISSUER = "https://idp.test/"
AUDIENCE = "frontier-gateway"
NOW = 1_800_000_000.0


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Clock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Settings:
    jwks_file: str | None = None
    jwks_url: str | None = None
    issuer: str = ISSUER
    audience: str = AUDIENCE
    algorithms: list[str] = field(default_factory=lambda: ["RS256", "ES256"])
    org_claim: str = "org_id"
    leeway_s: float = 30


def b64(data: bytes | str) -> str:
    raw = data.encode() if isinstance(data, str) else data
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def sign(key: Key, header: dict[str, Any] | str, claims: dict[str, Any] | str, alg: str | None = None) -> str:
    """A compact JWS; a str header/claims is used verbatim (for duplicate names and the like)."""
    header_text = header if isinstance(header, str) else json.dumps(header)
    claims_text = claims if isinstance(claims, str) else json.dumps(claims)
    if alg is None:
        alg = json.loads(header_text)["alg"]
    signing_input = f"{b64(header_text)}.{b64(claims_text)}"
    signature = JWSRegistry.algorithms[alg].sign(signing_input.encode(), key)
    return f"{signing_input}.{b64(signature)}"


def claims(now: float = NOW, **overrides: Any) -> dict[str, Any]:
    """Valid claims; an override of None removes the claim."""
    base: dict[str, Any] = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "user-1",
        "org_id": "acme",
        "iat": int(now),
        "exp": int(now) + 600,
    }
    base.update(overrides)
    return {name: value for name, value in base.items() if value is not None}


def public_jwks(*keys: Key, **extra: Any) -> dict[str, Any]:
    return {"keys": [{**key.as_dict(private=False), **extra} for key in keys]}


@dataclass
class Keys:
    rsa: Key
    rsa2: Key
    ec: Key
    ed: Key

    def token(self, key: Key | None = None, *, header: dict[str, Any] | None = None, **claim_overrides: Any) -> str:
        key = key or self.rsa
        alg = {"RSA": "RS256", "EC": "ES256", "OKP": "EdDSA"}[key.key_type]
        return sign(key, {"alg": alg, "kid": key.kid, **(header or {})}, claims(**claim_overrides))


@pytest.fixture(scope="session")
def keys() -> Keys:
    return Keys(
        rsa=generate_key("RSA", 2048, {"kid": "rsa-1"}),
        rsa2=generate_key("RSA", 2048, {"kid": "rsa-2"}),
        ec=generate_key("EC", "P-256", {"kid": "ec-1"}),
        ed=generate_key("OKP", "Ed25519", {"kid": "ed-1"}),
    )


def write_jwks(path: Path, document: dict[str, Any] | str) -> None:
    path.write_text(document if isinstance(document, str) else json.dumps(document))


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def file_verifier(tmp_path: Path, keys: Keys, clock: Clock) -> AsyncIterator[JwtVerifier]:
    """A verifier over a JWKS file holding the RSA and EC public keys."""
    path = tmp_path / "jwks.json"
    write_jwks(path, public_jwks(keys.rsa, keys.ec))
    verifier = JwtVerifier(Settings(jwks_file=str(path)), clock=clock)
    await verifier.start()
    yield verifier
    await verifier.close()


class JwksServer:
    """A real loopback HTTP server publishing a JWKS; counts the fetches."""

    def __init__(self) -> None:
        self.document: dict[str, Any] | str = {"keys": []}
        self.status = 200
        self.delay_s = 0.0
        self.hits = 0
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def _handle(self, request: web.Request) -> web.Response:
        self.hits += 1
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        body = self.document if isinstance(self.document, str) else json.dumps(self.document)
        return web.Response(status=self.status, text=body, content_type="application/json")

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/jwks.json", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}/jwks.json"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


@pytest.fixture
async def jwks_server() -> AsyncIterator[JwksServer]:
    server = JwksServer()
    await server.start()
    yield server
    await server.stop()

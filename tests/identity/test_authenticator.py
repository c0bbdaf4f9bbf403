"""Authenticator: where the credential is, what kind it is, and who it names.

A table of (Authorization, x-api-key) -> outcome, over a real JWT verifier and a
real key store. `{key}` and `{jwt}` in a header stand for a valid API key and a
valid JWT.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.identity.apikeys import ApiKeyStore
from gateway.identity.authenticator import Authenticator, is_jwt
from gateway.identity.jwt import JwtVerifier
from gateway.identity.principal import CredentialError
from gateway.policy.reasons import Reason

from .conftest import Clock, Keys, Settings, b64, public_jwks, write_jwks

pytestmark = pytest.mark.anyio

MISSING, INVALID = Reason.CREDENTIAL_MISSING, Reason.CREDENTIAL_INVALID


class World:
    def __init__(self, authenticator: Authenticator, api_key: str, jwt: str) -> None:
        self.authenticator = authenticator
        self.api_key = api_key
        self.jwt = jwt

    def fill(self, header: str | None) -> str | None:
        return None if header is None else header.format(key=self.api_key, jwt=self.jwt)


@pytest.fixture
async def world(tmp_path: Path, keys: Keys, clock: Clock) -> AsyncIterator[World]:
    path = tmp_path / "jwks.json"
    write_jwks(path, public_jwks(keys.rsa))
    verifier = JwtVerifier(Settings(jwks_file=str(path)), clock=clock)
    store = ApiKeyStore(tmp_path / "state", clock=clock)
    _, secret = store.create("acme-keys")
    authenticator = Authenticator(verifier, store)
    await authenticator.start()
    yield World(authenticator, secret, keys.token())
    await authenticator.close()


ACCEPTED = [
    ("bearer api key", "Bearer {key}", None, "api_key"),
    ("scheme lower case", "bearer {key}", None, "api_key"),
    ("scheme upper case", "BEARER {key}", None, "api_key"),
    ("x-api-key", None, "{key}", "api_key"),
    ("both, same key", "Bearer {key}", "{key}", "api_key"),
    ("bearer JWT", "Bearer {jwt}", None, "jwt"),
    ("JWT in x-api-key", None, "{jwt}", "jwt"),
    ("both, same JWT", "Bearer {jwt}", "{jwt}", "jwt"),
]


@pytest.mark.parametrize(("authorization", "x_api_key", "kind"), [c[1:] for c in ACCEPTED], ids=[c[0] for c in ACCEPTED])
async def test_accepted(world: World, authorization: str | None, x_api_key: str | None, kind: str) -> None:
    principal = await world.authenticator.authenticate(world.fill(authorization), world.fill(x_api_key))
    assert principal.kind == kind
    assert principal.org_id == ("acme-keys" if kind == "api_key" else "acme")


REFUSED = [
    ("nothing", None, None, MISSING, "no Authorization or x-api-key"),
    ("empty Authorization", "", None, INVALID, "not 'Bearer <credential>'"),
    ("empty x-api-key", None, "", INVALID, "empty"),
    ("scheme only", "Bearer", None, INVALID, "not 'Bearer <credential>'"),
    ("scheme and space", "Bearer ", None, INVALID, "not 'Bearer <credential>'"),
    ("two spaces", "Bearer  {key}", None, INVALID, "not 'Bearer <credential>'"),
    ("tab", "Bearer\t{key}", None, INVALID, "not 'Bearer <credential>'"),
    ("trailing token", "Bearer {key} extra", None, INVALID, "not 'Bearer <credential>'"),
    ("Basic", "Basic dXNlcjpwYXNz", None, INVALID, "scheme 'Basic' is not Bearer"),
    ("Token scheme", "Token {key}", None, INVALID, "not Bearer"),
    ("conflicting keys", "Bearer {key}", "fgw_other", INVALID, "different credentials"),
    ("JWT and key", "Bearer {jwt}", "{key}", INVALID, "different credentials"),
    ("Basic plus a good x-api-key", "Basic dXNlcjpwYXNz", "{key}", INVALID, "not Bearer"),
    ("unknown key", "Bearer fgw_nope", None, INVALID, "unknown or revoked API key"),
    ("non-ASCII", "Bearer fgw_\u00e9t\u00e9", None, INVALID, "visible ASCII"),
    ("oversized", "Bearer " + "a" * 8193, None, INVALID, "longer than 8192"),
    ("oversized x-api-key", None, "a" * 8193, INVALID, "longer than 8192"),
    ("two parts is an API key", "Bearer aaaa.bbbb", None, INVALID, "API key"),
    ("four parts is an API key", "Bearer aaaa.bbbb.cccc.dddd", None, INVALID, "API key"),
    ("alg none with empty signature is an API key", "Bearer " + b64('{"alg":"none"}') + "." + b64('{"sub":"x"}') + ".", None, INVALID, "API key"),
    ("bad JWT", "Bearer aaaa.bbbb.cccc", None, INVALID, "malformed token"),
]


@pytest.mark.parametrize(
    ("authorization", "x_api_key", "reason", "detail"), [c[1:] for c in REFUSED], ids=[c[0] for c in REFUSED]
)
async def test_refused(world: World, authorization: str | None, x_api_key: str | None, reason: Reason, detail: str) -> None:
    with pytest.raises(CredentialError) as caught:
        await world.authenticator.authenticate(world.fill(authorization), world.fill(x_api_key))
    assert caught.value.reason is reason
    assert detail in caught.value.detail


async def test_disabled_credential_kinds_are_invalid(world: World) -> None:
    assert world.authenticator.jwt is not None and world.authenticator.api_keys is not None
    jwt_only = Authenticator(world.authenticator.jwt, None)
    keys_only = Authenticator(None, world.authenticator.api_keys)
    with pytest.raises(CredentialError, match="API keys are disabled"):
        await jwt_only.authenticate(f"Bearer {world.api_key}", None)
    with pytest.raises(CredentialError, match="no JWT issuer is configured"):
        await keys_only.authenticate(f"Bearer {world.jwt}", None)
    assert (await keys_only.authenticate(None, world.api_key)).kind == "api_key"


@pytest.mark.parametrize(
    ("credential", "jwt"),
    [("a.b.c", True), ("a.b", False), ("a.b.c.d", False), ("a..c", False), (".b.c", False), ("a.b.", False), ("fgw_x", False)],
)
def test_jwt_shape(credential: str, jwt: bool) -> None:
    assert is_jwt(credential) is jwt

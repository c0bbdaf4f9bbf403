"""From request headers to a `Principal` (docs/configuration.md, `identity`).

Where the credential is: `Authorization: Bearer <credential>` (RFC 6750 §2.1;
the scheme is case-insensitive, RFC 9110 §11.1) or Anthropic's
`x-api-key: <credential>`. If both are sent they must carry the same
credential: two different ones leave it ambiguous who is calling, and the
upstream might act on the one we did not check.

What it is: three non-empty dot-separated parts make a JWT (RFC 7515 §7.1);
anything else is an API key. A JWT never falls back to the API-key store, nor
the reverse, so the two cannot be played against each other.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from gateway.identity.apikeys import ApiKeyLookup, ApiKeyStore
from gateway.identity.jwt import JwtSettings, JwtVerifier
from gateway.identity.principal import Principal, invalid, missing

MAX_CREDENTIAL_BYTES = 8 * 1024
# Visible ASCII only: covers RFC 6750's b64token and every key we issue, and
# keeps control characters and spaces out of everything downstream.
_VISIBLE = bytes(range(0x21, 0x7F))


class IdentitySettings(Protocol):
    """The `identity` config section (docs/configuration.md)."""

    @property
    def jwt(self) -> JwtSettings | None: ...

    @property
    def api_keys(self) -> bool: ...


class Authenticator:
    def __init__(self, jwt: JwtVerifier | None, api_keys: ApiKeyLookup | None) -> None:
        self.jwt = jwt
        self.api_keys = api_keys

    @classmethod
    def from_config(cls, identity: IdentitySettings, state_dir: str | Path, *,
                    api_keys: ApiKeyLookup | None = None,
                    on_jwks_failure: Callable[[], object] = lambda: None) -> Authenticator:
        """A JWT verifier if configured; if API keys are enabled, `api_keys` (fleet mode: the
        Redis store) or else the state directory's key file (embedded mode). `on_jwks_failure`
        is called for each failed fetch or re-read of the JWKS."""
        jwt = JwtVerifier(identity.jwt, on_jwks_failure=on_jwks_failure) if identity.jwt is not None else None
        keys = (api_keys if api_keys is not None else ApiKeyStore(state_dir)) if identity.api_keys else None
        return cls(jwt, keys)

    async def start(self) -> None:
        if self.jwt is not None:
            await self.jwt.start()

    async def close(self) -> None:
        if self.jwt is not None:
            await self.jwt.close()

    async def authenticate(self, authorization: str | None, x_api_key: str | None) -> Principal:
        credential = _credential(authorization, x_api_key)
        if is_jwt(credential):
            if self.jwt is None:
                raise invalid("JWT presented but no JWT issuer is configured")
            return await self.jwt.verify(credential)
        if self.api_keys is None:
            raise invalid("API key presented but API keys are disabled")
        principal = await self.api_keys.lookup(credential)
        if principal is None:
            raise invalid("unknown or revoked API key")
        return principal


def is_jwt(credential: str) -> bool:
    parts = credential.split(".")
    return len(parts) == 3 and all(parts)


def _credential(authorization: str | None, x_api_key: str | None) -> str:
    if authorization is None:
        if x_api_key is None:
            raise missing("no Authorization or x-api-key header")
        _check(x_api_key, "x-api-key")
        return x_api_key
    credential = _bearer(authorization)
    if x_api_key is not None and x_api_key != credential:
        raise invalid("Authorization and x-api-key carry different credentials")
    return credential


def _bearer(value: str) -> str:
    parts = value.split(" ")
    if len(parts) != 2 or not parts[0] or not parts[1]:
        raise invalid("Authorization is not 'Bearer <credential>'")
    scheme, credential = parts
    if scheme.lower() != "bearer":
        raise invalid(f"Authorization scheme {scheme[:20]!r} is not Bearer")
    _check(credential, "Authorization")
    return credential


def _check(credential: str, header: str) -> None:
    if len(credential) > MAX_CREDENTIAL_BYTES:
        raise invalid(f"{header} credential longer than {MAX_CREDENTIAL_BYTES} bytes")
    if not _visible(credential):
        raise invalid(f"{header} credential is empty or has characters outside visible ASCII")


def _visible(credential: str) -> bool:
    """Non-empty and visible ASCII only; deleting those bytes in C costs half a regex match."""
    return bool(credential) and credential.isascii() and not credential.encode("ascii").translate(None, _VISIBLE)

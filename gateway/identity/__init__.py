"""Identity: who is calling (docs/configuration.md, `identity`).

`Authenticator.authenticate(authorization, x_api_key)` returns a `Principal`
or raises `CredentialError` with reason `credential_missing` or
`credential_invalid`. JWTs are verified by `JwtVerifier` against the
provider's JWKS; API keys are looked up by hash through an `ApiKeyLookup`,
in embedded mode the file-backed `ApiKeyStore`.
"""

from gateway.identity.apikeys import ApiKeyAdmin, ApiKeyInfo, ApiKeyLookup, ApiKeyStore, ApiKeyStoreError
from gateway.identity.authenticator import Authenticator
from gateway.identity.jwt import JwtConfigError, JwtSettings, JwtVerifier
from gateway.identity.principal import CredentialError, Principal

__all__ = [
    "ApiKeyAdmin",
    "ApiKeyInfo",
    "ApiKeyLookup",
    "ApiKeyStore",
    "ApiKeyStoreError",
    "Authenticator",
    "CredentialError",
    "JwtConfigError",
    "JwtSettings",
    "JwtVerifier",
    "Principal",
]

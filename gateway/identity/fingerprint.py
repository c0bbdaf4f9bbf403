"""A short fingerprint of a credential that was refused, for its audit record, so that
"a revoked key is still being used, and from where" can be answered without ever
writing the credential down (issue 16).

The fingerprint is the first 12 hex digits (48 bits) of the plain SHA-256 of the
credential exactly as presented: the hash the key store keeps of an API key
(gateway/identity/apikeys.py), so a 401 record's fingerprint is the start of a
stored key's `sha256`, and the same credential has the same fingerprint on every
replica and after every restart.

A plain hash of a guessable secret would give it away to whoever reads the records:
hash candidate passwords and compare. So only credentials too long to guess get a
fingerprint: a JWT whose signature has at least 256 bits (HS256's, the shortest;
a JWT is no secret once expired, and a live one is a signed token no dictionary
holds), or an opaque credential of at least MIN_OPAQUE characters (the gateway's
own keys have 47: `fgw_` and 32 random bytes). Anything shorter, such as a
password pasted into the header by mistake, is recorded as `short` with no
fingerprint. A keyed hash (HMAC) would hide short secrets as well, but its
fingerprints could not be matched against the key store, nor across deployments
with different keys.
"""

from __future__ import annotations

import hashlib

from gateway.identity.authenticator import is_jwt

DIGITS = 12
MIN_OPAQUE = 32
MIN_SIGNATURE = 43  # base64url characters of a 256-bit signature


def presented(authorization: str | None, x_api_key: str | None) -> str | None:
    """The credential a request carries, however malformed the rest of the header:
    the part after `Bearer `, else the x-api-key value."""
    if authorization is not None:
        scheme, _, credential = authorization.partition(" ")
        return credential.strip() or None if scheme.lower() == "bearer" else None
    return x_api_key or None


def fingerprint(credential: str | None) -> tuple[str, str | None]:
    """(kind, fingerprint): kind is `none`, `jwt`, `opaque` or `short`; the fingerprint
    is None for `none` and `short` (see the module doc)."""
    if not credential:
        return "none", None
    if is_jwt(credential):
        kind, long_enough = "jwt", len(credential.rsplit(".", 1)[1]) >= MIN_SIGNATURE
    else:
        kind, long_enough = "opaque", len(credential) >= MIN_OPAQUE
    if not long_enough:
        return "short", None
    return kind, hashlib.sha256(credential.encode("utf-8", "surrogatepass")).hexdigest()[:DIGITS]

"""Verifying a JWT from the configured identity provider (docs/configuration.md, `identity.jwt`).

The order of checks, each failing closed with `credential_invalid`:

1. size and shape: at most 8 KiB, three canonical unpadded base64url parts;
2. header: strict JSON, `alg` in the configured allow-list, none of the headers
   that let a token choose its own key or demand extensions we do not
   implement (`jku`, `x5u`, `jwk`, `x5c`, `crit`; RFC 8725 §3.10 and
   RFC 7515 §4.1.11), and `b64`, which changes what the signature covers
   (RFC 7797; never valid without `crit`, and never for JWTs, §7);
3. payload: strict JSON object (no duplicate claim names);
4. key: the JWKS entry named by `kid` (a new `kid` triggers one rate-limited
   refetch), whose type, curve and declared `alg` fit the header's `alg`
   (RFC 8725 §3.1: the key, not the token, determines the algorithm);
5. signature, by joserfc's implementation of the header's algorithm;
6. claims: `exp` required, `nbf`/`iat` not in the future, all with leeway;
   `iss` and `aud` ours; `sub` and the org claim non-empty strings.

Steps 1-4 and 6 are ours, so the rules above hold whatever the JOSE library
accepts by default; joserfc only computes the signature (step 5). Claims are
checked here because a JWT library's claim checks typically treat `exp` as
optional and accept a token at exactly `exp` + leeway; RFC 7519 §4.1.4 says
the current time must be *before* `exp`.
"""

from __future__ import annotations

import hashlib
import math
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from joserfc.errors import SecurityWarning
from joserfc.jws import JWSAlgModel, JWSRegistry

from gateway.identity.cache import VerifiedTokens
from gateway.identity.encoding import EncodingError, b64url_decode, json_object
from gateway.identity.jwks import ALGORITHMS, Jwks, JwksFile, JwksUrl, KeySource, PublicKey
from gateway.identity.principal import Principal, invalid
from gateway.identity.watch import Clock

MAX_TOKEN_BYTES = 8 * 1024
FORBIDDEN_HEADERS = ("jku", "x5u", "jwk", "x5c", "crit", "b64")
# NumericDate bounds (RFC 7519 §2): non-negative and exactly representable as a float.
MAX_NUMERIC_DATE = 2**53


class JwtSettings(Protocol):
    """The `identity.jwt` config section (docs/configuration.md); `gateway.config.JwtConfig` is one."""

    # Read-only properties, so that any object with these attributes fits.
    @property
    def jwks_file(self) -> str | None: ...
    @property
    def jwks_url(self) -> str | None: ...
    @property
    def issuer(self) -> str: ...
    @property
    def audience(self) -> str: ...
    @property
    def algorithms(self) -> Sequence[str]: ...
    @property
    def org_claim(self) -> str: ...
    @property
    def leeway_s(self) -> float: ...


class JwtConfigError(ValueError):
    """The `identity.jwt` settings cannot be used; the message names the key."""


class JwtVerifier:
    def __init__(
        self,
        config: JwtSettings,
        *,
        clock: Clock = time.time,
        source: KeySource | None = None,
        cache_size: int = 10_000,
        on_jwks_failure: Callable[[], object] = lambda: None,
    ) -> None:
        self._algorithms = _allowed(config.algorithms)
        _require_text(config, "issuer", "audience", "org_claim")
        if not 0 <= config.leeway_s <= 300:
            raise JwtConfigError(f"identity.jwt.leeway_s: {config.leeway_s!r} is not between 0 and 300 seconds")
        self._issuer = config.issuer
        self._audience = config.audience
        self._org_claim = config.org_claim
        self._leeway = float(config.leeway_s)
        self._clock = clock
        self._source = source or _key_source(config, self._algorithms, clock, on_jwks_failure)
        self._signatures = _signature_algorithms(self._algorithms)
        self.cache = VerifiedTokens(cache_size)

    async def start(self) -> None:
        """Load the keys: raises for a bad JWKS file; a JWKS URL that fails is retried later."""
        await self._source.start()

    async def close(self) -> None:
        await self._source.close()

    async def verify(self, token: str) -> Principal:
        if len(token) > MAX_TOKEN_BYTES:
            raise invalid(f"token longer than {MAX_TOKEN_BYTES} bytes")
        keys = await self._source.current()
        cached = self.cache.get(token, keys.revision, self._clock())
        if cached is not None:
            return cached
        header, claims, signature = _decode(token, self._algorithms)
        keys, key = await self._key_for(keys, header)
        self._check_signature(token, self._signatures[header["alg"]], signature, key)
        now = self._clock()
        principal, expires_at = self._principal(claims, now, token)
        self.cache.put(token, keys.revision, principal, expires_at)
        return principal

    async def verify_with_claims(self, token: str) -> tuple[Principal, dict[str, Any], float]:
        """As `verify`, uncached, also giving the token's claims and when it stops being valid:
        for the console's sign-in, which maps a claim to an admin role (docs/console.md)."""
        if len(token) > MAX_TOKEN_BYTES:
            raise invalid(f"token longer than {MAX_TOKEN_BYTES} bytes")
        header, claims, signature = _decode(token, self._algorithms)
        _, key = await self._key_for(await self._source.current(), header)
        self._check_signature(token, self._signatures[header["alg"]], signature, key)
        principal, expires_at = self._principal(claims, self._clock(), token)
        return principal, claims, expires_at

    async def _key_for(self, keys: Jwks, header: dict[str, Any]) -> tuple[Jwks, PublicKey]:
        kid, alg = header.get("kid"), header["alg"]
        found = _select(keys, kid, alg)
        if found is None:
            keys = await self._source.refresh()
            found = _select(keys, kid, alg)
        if found is None:
            raise invalid(f"no key with kid {kid!r} for {alg}")
        if isinstance(found, str):
            raise invalid(found)
        return keys, found

    def _check_signature(self, token: str, algorithm: JWSAlgModel, signature: bytes, key: PublicKey) -> None:
        signing_input = token.rpartition(".")[0].encode("ascii")  # _decode allowed only base64url characters
        try:
            algorithm.check_key(key.key)
            verified = algorithm.verify(signing_input, signature, key.key)
        except Exception as exc:  # the joserfc boundary: key errors and whatever cryptography raises
            raise invalid(f"signature not verified ({type(exc).__name__})") from None
        if not verified:
            raise invalid("signature not verified (bad signature)")

    def _principal(self, claims: dict[str, Any], now: float, token: str) -> tuple[Principal, float]:
        leeway = self._leeway
        exp = _numeric_date(claims, "exp")
        if exp is None:
            raise invalid("exp is missing")
        if now >= exp + leeway:
            raise invalid(f"expired at {exp:.0f} (now {now:.0f}, leeway {leeway:g}s)")
        for name in ("nbf", "iat"):
            moment = _numeric_date(claims, name)
            if moment is not None and moment > now + leeway:
                raise invalid(f"{name} {moment:.0f} is in the future (now {now:.0f}, leeway {leeway:g}s)")
        if claims.get("iss") != self._issuer:
            raise invalid(f"iss {claims.get('iss')!r} is not {self._issuer!r}")
        if not _audience_matches(claims.get("aud"), self._audience):
            raise invalid(f"aud {claims.get('aud')!r} does not include {self._audience!r}")
        subject = _text_claim(claims, "sub")
        org_id = _text_claim(claims, self._org_claim)
        jti = claims.get("jti")
        if jti is not None and (not isinstance(jti, str) or not jti):
            raise invalid("jti is not a non-empty string")
        credential_id = "jwt:" + (jti if jti is not None else _digest(token)[:16])
        return Principal(subject, org_id, credential_id, "jwt"), exp + leeway


def _digest(token: str) -> str:
    """What names a token without a `jti`: its SHA-256, never the token."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def _allowed(algorithms: Sequence[str]) -> tuple[str, ...]:
    if isinstance(algorithms, str) or not algorithms:
        raise JwtConfigError("identity.jwt.algorithms: give a non-empty list, e.g. [RS256, ES256]")
    unknown = [name for name in algorithms if name not in ALGORITHMS]
    if unknown:
        raise JwtConfigError(
            f"identity.jwt.algorithms: {', '.join(map(repr, unknown))} not allowed; "
            f"choose from {', '.join(ALGORITHMS)} (keys come from a public JWKS, so never HS* or none)"
        )
    return tuple(dict.fromkeys(algorithms))


def _signature_algorithms(allowed: tuple[str, ...]) -> dict[str, JWSAlgModel]:
    """joserfc's implementation of each allowed algorithm, looked up once rather than per token."""
    registry = JWSRegistry(algorithms=allowed)
    with warnings.catch_warnings():
        # joserfc warns that RFC 9864 deprecates the name "EdDSA" (for "Ed25519"/"Ed448");
        # identity providers still sign with it, and the key's curve is checked in _select.
        warnings.simplefilter("ignore", SecurityWarning)
        return {name: registry.get_alg(name) for name in allowed}


def _require_text(config: JwtSettings, *names: str) -> None:
    for name in names:
        value = getattr(config, name)
        if not isinstance(value, str) or not value:
            raise JwtConfigError(f"identity.jwt.{name}: {value!r} is not a non-empty string")


def _key_source(config: JwtSettings, algorithms: tuple[str, ...], clock: Clock,
                on_failure: Callable[[], object]) -> KeySource:
    if (config.jwks_file is None) == (config.jwks_url is None):
        raise JwtConfigError("identity.jwt: give exactly one of jwks_file or jwks_url")
    if config.jwks_file is not None:
        return JwksFile(config.jwks_file, algorithms, clock, on_failure=on_failure)
    return JwksUrl(str(config.jwks_url), algorithms, clock, on_failure=on_failure)


def _decode(token: str, algorithms: tuple[str, ...]) -> tuple[dict[str, Any], dict[str, Any], bytes]:
    """Header, claims and signature bytes of a compact JWS, strictly decoded; the signature is not checked here."""
    parts = token.split(".")
    if len(parts) != 3:
        raise invalid(f"{len(parts)} parts, not 3")
    try:
        header = json_object(b64url_decode(parts[0]))
        claims = json_object(b64url_decode(parts[1]))
        signature = b64url_decode(parts[2])
    except EncodingError as exc:
        raise invalid(f"malformed token: {exc}") from None
    alg = header.get("alg")
    if alg not in algorithms:
        raise invalid(f"alg {alg!r} is not allowed")
    present = [name for name in FORBIDDEN_HEADERS if name in header]
    if present:
        raise invalid(f"header {', '.join(present)} refused")
    kid = header.get("kid")
    if kid is not None and not isinstance(kid, str):
        raise invalid("kid is not a string")
    return header, claims, signature


def _select(keys: Jwks, kid: str | None, alg: str) -> PublicKey | str | None:
    """The one key for this token; None when the set lacks it (worth a refetch); a reason when unusable."""
    if kid is None:
        fitting = [key for key in keys.keys if key.fits(alg)]
        if not fitting:
            return None
        if len(fitting) > 1:
            return f"token has no kid and {len(fitting)} keys fit {alg}"
        return fitting[0]
    named = [key for key in keys.keys if key.kid == kid]
    if not named:
        return None
    fitting = [key for key in named if key.fits(alg)]
    if len(fitting) != 1:
        return f"{len(fitting)} keys with kid {kid!r} fit {alg} (key types: {', '.join(k.kty for k in named)})"
    return fitting[0]


def _numeric_date(claims: dict[str, Any], name: str) -> float | None:
    """A NumericDate claim (RFC 7519 §2), or None when absent."""
    if name not in claims:
        return None
    value = claims[name]
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise invalid(f"{name} is not a number")
    if not 0 <= value <= MAX_NUMERIC_DATE:
        raise invalid(f"{name} {value} is out of range")
    return float(value)


def _audience_matches(aud: object, ours: str) -> bool:
    if isinstance(aud, str):
        return aud == ours
    return isinstance(aud, list) and all(isinstance(item, str) for item in aud) and ours in aud


def _text_claim(claims: dict[str, Any], name: str) -> str:
    value = claims.get(name)
    if not isinstance(value, str) or not value:
        raise invalid(f"claim {name!r} is {'missing' if value is None else 'not a non-empty string'}")
    return value

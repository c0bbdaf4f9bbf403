"""The identity provider's public keys: parsing a JWKS, and keeping it current.

A JWKS (RFC 7517 §5) comes from a file or a URL. Either way the gateway holds
one immutable `Jwks` snapshot whose `revision` is a hash of the public key
material it uses, so a verified-token cache can tell when keys changed.

Only public key material is ever imported: an entry that also carries private
parameters (`d`, `p`, `q`, ...) is reduced to its public fields first, so a
mistakenly published private key still only verifies. Entries the gateway
cannot use for any allowed algorithm (`oct`, encryption keys, unknown curves,
RSA under 2048 bits) are skipped, with a note for the log.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import warnings
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import aiohttp
from joserfc.errors import SecurityWarning
from joserfc.jwk import Key, import_key

from gateway.identity.encoding import EncodingError, json_object
from gateway.identity.watch import Clock, FileStamp, Throttle, stamp

log = logging.getLogger("gateway.identity")

# alg -> (kty, curves); RFC 7518 §3.1 and RFC 8037 §3.1. Symmetric (HS*) and
# "none" are absent on purpose: keys come from a published JWKS, and a public
# key used as an HMAC secret is the classic algorithm-confusion forgery.
ALGORITHMS: dict[str, tuple[str, frozenset[str] | None]] = {
    "RS256": ("RSA", None),
    "RS384": ("RSA", None),
    "RS512": ("RSA", None),
    "PS256": ("RSA", None),
    "PS384": ("RSA", None),
    "PS512": ("RSA", None),
    "ES256": ("EC", frozenset({"P-256"})),
    "ES384": ("EC", frozenset({"P-384"})),
    "ES512": ("EC", frozenset({"P-521"})),
    "EdDSA": ("OKP", frozenset({"Ed25519", "Ed448"})),
}
PUBLIC_FIELDS = {"RSA": ("n", "e"), "EC": ("crv", "x", "y"), "OKP": ("crv", "x")}
MIN_RSA_BITS = 2048  # NIST SP 800-131A: RSA below 2048 bits is disallowed for signatures
MAX_JWKS_BYTES = 512 * 1024


class JwksError(Exception):
    """A key set could not be read or contains no usable key."""


@dataclass(frozen=True, slots=True)
class PublicKey:
    kid: str | None
    kty: str
    crv: str | None
    alg: str | None  # the JWK's own `alg`, if it declares one
    key: Key  # joserfc key holding public material only

    def fits(self, alg: str) -> bool:
        """May this key verify a signature made with `alg`?"""
        kty, curves = ALGORITHMS[alg]
        return self.kty == kty and (curves is None or self.crv in curves) and self.alg in (None, alg)


@dataclass(frozen=True, slots=True)
class Jwks:
    revision: str
    keys: tuple[PublicKey, ...]


EMPTY = Jwks(revision="", keys=())


def parse_jwks(data: bytes, algorithms: Collection[str]) -> tuple[Jwks, list[str]]:
    """The usable keys of a JWKS document and a note per skipped entry."""
    try:
        document = json_object(data)
    except EncodingError as exc:
        raise JwksError(f"not a JWKS: {exc}") from None
    entries = document.get("keys")
    if not isinstance(entries, list):
        raise JwksError('not a JWKS: no "keys" list')
    keys: list[PublicKey] = []
    canonical: list[dict[str, Any]] = []
    notes: list[str] = []
    for index, entry in enumerate(entries):
        try:
            key, public = _public_key(entry, algorithms)
        except JwksError as exc:
            notes.append(f"keys[{index}] skipped: {exc}")
            continue
        keys.append(key)
        canonical.append(public)
    if not keys:
        raise JwksError("no usable key for algorithms " + ", ".join(sorted(algorithms)) + _joined(notes))
    digest = hashlib.sha256(json.dumps(canonical, sort_keys=True).encode()).hexdigest()
    return Jwks(revision=digest[:16], keys=tuple(keys)), notes


def _joined(notes: list[str]) -> str:
    return "".join(f"; {note}" for note in notes)


def _public_key(entry: object, algorithms: Collection[str]) -> tuple[PublicKey, dict[str, Any]]:
    if not isinstance(entry, dict):
        raise JwksError("not an object")
    kty = entry.get("kty")
    if kty not in PUBLIC_FIELDS:
        raise JwksError(f"kty {kty!r} is not a signature key type")
    kid, alg, use, ops = (entry.get(name) for name in ("kid", "alg", "use", "key_ops"))
    if kid is not None and not isinstance(kid, str):
        raise JwksError("kid is not a string")
    if use is not None and use != "sig":
        raise JwksError(f"use is {use!r}, not 'sig'")
    if ops is not None and (not isinstance(ops, list) or "verify" not in ops):
        raise JwksError("key_ops does not include 'verify'")
    if alg is not None and alg not in algorithms:
        raise JwksError(f"alg {alg!r} is not allowed")
    public = {name: entry.get(name) for name in PUBLIC_FIELDS[kty]}
    if not all(isinstance(value, str) for value in public.values()):
        raise JwksError(f"{kty} key without " + "/".join(PUBLIC_FIELDS[kty]))
    public["kty"] = kty
    key = PublicKey(kid, kty, public.get("crv"), alg, _import(public))
    if not any(key.fits(name) for name in algorithms):
        raise JwksError(f"{kty} {public.get('crv') or ''} key fits no allowed algorithm")
    return key, {**public, "kid": kid, "alg": alg}


def _import(public: dict[str, Any]) -> Key:
    try:
        with warnings.catch_warnings():
            # joserfc warns of RSA keys under 2048 bits; they are refused below, with a note for the log.
            warnings.simplefilter("ignore", SecurityWarning)
            key = import_key(dict(public), public["kty"])
        raw = key.public_key  # loads and validates the numbers now, not on the first request
    except Exception as exc:  # joserfc and cryptography raise many types for bad key material
        raise JwksError(f"bad key material ({type(exc).__name__})") from None
    if public["kty"] == "RSA" and raw.key_size < MIN_RSA_BITS:
        raise JwksError(f"RSA key of {raw.key_size} bits (minimum {MIN_RSA_BITS})")
    return key


class KeySource(Protocol):
    async def start(self) -> None: ...

    async def current(self) -> Jwks:
        """The key set in force, after whatever periodic check is due."""
        ...

    async def refresh(self) -> Jwks:
        """A token named a key we lack: look again, if the rate limit allows."""
        ...

    async def close(self) -> None: ...


class JwksFile:
    """A JWKS file, re-read when it changes (checked at most once per second).

    An unreadable or invalid file at `start()` is a configuration error and
    raises; later, a bad rewrite keeps the last good set.
    """

    def __init__(
        self, path: str | Path, algorithms: Collection[str], clock: Clock, check_interval_s: float = 1.0,
        *, on_failure: Callable[[], object] = lambda: None,
    ) -> None:
        self.path = Path(path)
        self.on_failure = on_failure  # counted: gateway_jwks_fetch_failures_total
        self._algorithms = tuple(algorithms)
        self._throttle = Throttle(check_interval_s, clock)
        self._stamp: FileStamp | None = None
        self._jwks = EMPTY

    async def start(self) -> None:
        self._throttle.ready()
        self._stamp = stamp(self.path)
        self._jwks = self._read()

    async def current(self) -> Jwks:
        if self._throttle.ready():
            now = stamp(self.path)
            if now != self._stamp:
                self._stamp = now
                try:
                    self._jwks = self._read()
                except JwksError as exc:
                    self.on_failure()
                    log.error("JWKS file %s: %s; keeping the previous keys", self.path, exc)
        return self._jwks

    async def refresh(self) -> Jwks:
        return await self.current()

    async def close(self) -> None:
        pass

    def _read(self) -> Jwks:
        try:
            data = self.path.read_bytes()
        except OSError as exc:
            raise JwksError(f"cannot read {self.path}: {exc.strerror}") from None
        jwks, notes = parse_jwks(data, self._algorithms)
        for note in notes:
            log.warning("JWKS file %s: %s", self.path, note)
        return jwks


class JwksUrl:
    """A JWKS fetched over HTTP(S) and cached.

    Fetches happen at `start()`; when a token names an unknown `kid` (at most
    once per `refetch_interval_s`, so unknown kids cannot make us hammer the
    identity provider); and when the set is older than `max_age_s`, so that a
    key the provider withdrew stops verifying. A failed fetch keeps the last
    good set. Until a first fetch succeeds there are no keys, every token is
    invalid, and fetches are retried at most once per `retry_interval_s`.
    """

    def __init__(
        self,
        url: str,
        algorithms: Collection[str],
        clock: Clock,
        *,
        timeout_s: float = 5.0,
        refetch_interval_s: float = 60.0,
        retry_interval_s: float = 5.0,
        max_age_s: float = 300.0,
        on_failure: Callable[[], object] = lambda: None,
    ) -> None:
        self.url = url
        self.on_failure = on_failure  # counted: gateway_jwks_fetch_failures_total
        self._algorithms = tuple(algorithms)
        self._clock = clock
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._refetch_interval_s = refetch_interval_s
        self._retry_interval_s = retry_interval_s
        self._max_age_s = max_age_s
        self._jwks = EMPTY
        self._fetched_at: float | None = None
        self._attempted_at: float | None = None
        self._lock = asyncio.Lock()
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        await self._fetch_if_due(0.0)

    async def current(self) -> Jwks:
        fetched = self._fetched_at
        if fetched is None:
            await self._fetch_if_due(self._retry_interval_s)
        elif abs(self._clock() - fetched) >= self._max_age_s and not self._lock.locked():
            # Stale: one request refreshes; the others meanwhile use the set we have.
            await self._fetch_if_due(self._refetch_interval_s)
        return self._jwks

    async def refresh(self) -> Jwks:
        interval = self._retry_interval_s if self._fetched_at is None else self._refetch_interval_s
        await self._fetch_if_due(interval)
        return self._jwks

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _fetch_if_due(self, interval_s: float) -> None:
        # Callers queue on the lock, so a burst of tokens with a new kid causes
        # one fetch and every one of them then sees its result.
        async with self._lock:
            now = self._clock()
            last = self._attempted_at
            if last is not None and 0 <= now - last < interval_s:
                return
            self._attempted_at = now
            try:
                jwks, notes = parse_jwks(await self._download(), self._algorithms)
            except Exception as exc:  # network, HTTP, JSON or key errors alike keep the last good set
                kept = len(self._jwks.keys)
                self.on_failure()
                log.error("JWKS %s: fetch failed (%s: %s); keeping %d key(s)", self.url, type(exc).__name__, exc, kept)
                return
            for note in notes:
                log.warning("JWKS %s: %s", self.url, note)
            self._jwks, self._fetched_at = jwks, now

    async def _download(self) -> bytes:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        # No redirects: the configured URL is the one trusted to name the keys.
        headers = {"Accept": "application/json"}
        async with self._session.get(self.url, allow_redirects=False, headers=headers) as response:
            if response.status != 200:
                raise JwksError(f"HTTP {response.status}")
            body = bytearray()
            async for chunk in response.content.iter_chunked(64 * 1024):
                body += chunk
                if len(body) > MAX_JWKS_BYTES:
                    raise JwksError(f"larger than {MAX_JWKS_BYTES} bytes")
            return bytes(body)

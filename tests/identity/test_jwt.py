"""JwtVerifier against a JWKS file: what it accepts, and every way a token must fail.

Each refusal names the check that should catch it (a fragment of the logged
detail), so a case cannot pass by failing for some other reason.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from gateway.identity.cache import VerifiedTokens
from gateway.identity.jwks import JwksError, parse_jwks
from gateway.identity.jwt import JwtConfigError, JwtVerifier
from gateway.identity.principal import CredentialError, Principal
from gateway.policy.reasons import Reason

from .conftest import NOW, Clock, Keys, Settings, b64, claims, public_jwks, sign, write_jwks

pytestmark = pytest.mark.anyio


async def refused(verifier: JwtVerifier, token: str) -> str:
    with pytest.raises(CredentialError) as caught:
        await verifier.verify(token)
    assert caught.value.reason is Reason.CREDENTIAL_INVALID
    return caught.value.detail


# -- accepted


async def test_rs256_token_gives_its_principal(file_verifier: JwtVerifier, keys: Keys) -> None:
    principal = await file_verifier.verify(keys.token(jti="t-1"))
    assert principal == Principal(subject="user-1", org_id="acme", credential_id="jwt:t-1", kind="jwt")


async def test_es256_token_is_accepted(file_verifier: JwtVerifier, keys: Keys) -> None:
    assert (await file_verifier.verify(keys.token(keys.ec))).org_id == "acme"


async def test_without_jti_the_credential_id_is_a_short_token_hash(file_verifier: JwtVerifier, keys: Keys) -> None:
    token = keys.token()
    principal = await file_verifier.verify(token)
    assert principal.credential_id == "jwt:" + hashlib.sha256(token.encode()).hexdigest()[:16]


@pytest.mark.parametrize("alg", ["PS256", "RS512", "EdDSA"])
async def test_other_allowed_algorithms(tmp_path: Path, keys: Keys, clock: Clock, alg: str) -> None:
    key = keys.ed if alg == "EdDSA" else keys.rsa
    path = tmp_path / "jwks.json"
    write_jwks(path, public_jwks(key))
    verifier = JwtVerifier(Settings(jwks_file=str(path), algorithms=[alg]), clock=clock)
    await verifier.start()
    assert (await verifier.verify(sign(key, {"alg": alg, "kid": key.kid}, claims()))).subject == "user-1"


async def test_aud_may_be_a_list_containing_ours(file_verifier: JwtVerifier, keys: Keys) -> None:
    await file_verifier.verify(keys.token(aud=["other", "frontier-gateway"]))


async def test_org_claim_name_is_configurable(tmp_path: Path, keys: Keys, clock: Clock) -> None:
    path = tmp_path / "jwks.json"
    write_jwks(path, public_jwks(keys.rsa))
    verifier = JwtVerifier(Settings(jwks_file=str(path), org_claim="https://idp.test/org"), clock=clock)
    await verifier.start()
    overrides: dict[str, Any] = {"org_id": None, "https://idp.test/org": "globex"}
    principal = await verifier.verify(keys.token(**overrides))
    assert principal.org_id == "globex"
    assert "'https://idp.test/org' is missing" in await refused(verifier, keys.token())


async def test_token_without_kid_uses_the_only_key_of_its_type(file_verifier: JwtVerifier, keys: Keys) -> None:
    # The set holds one RSA and one EC key: an RS256 token without kid has one candidate.
    token = sign(keys.rsa, {"alg": "RS256"}, claims())
    assert (await file_verifier.verify(token)).subject == "user-1"


async def test_token_without_kid_is_refused_when_several_keys_fit(tmp_path: Path, keys: Keys, clock: Clock) -> None:
    path = tmp_path / "jwks.json"
    write_jwks(path, public_jwks(keys.rsa, keys.rsa2))
    verifier = JwtVerifier(Settings(jwks_file=str(path)), clock=clock)
    await verifier.start()
    assert "no kid and 2 keys fit" in await refused(verifier, sign(keys.rsa, {"alg": "RS256"}, claims()))


# -- refused: the table

def _hs256_with_public_pem(keys: Keys) -> str:
    """The algorithm-confusion forgery: HMAC keyed with the RSA public key's PEM."""
    pem = keys.rsa.public_key.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    signing_input = f"{b64(json.dumps({'alg': 'HS256', 'kid': 'rsa-1'}))}.{b64(json.dumps(claims()))}"
    return f"{signing_input}.{b64(hmac.new(pem, signing_input.encode(), hashlib.sha256).digest())}"


def _alg_none(keys: Keys) -> str:
    # With the usual empty signature the token has an empty part and is taken
    # for an API key before it gets here (see test_authenticator); a non-empty one reaches the verifier.
    return f"{b64(json.dumps({'alg': 'none', 'kid': 'rsa-1'}))}.{b64(json.dumps(claims()))}.{b64(b'sig')}"


def _replace_segment(token: str, index: int, change: Callable[[str], str]) -> str:
    parts = token.split(".")
    parts[index] = change(parts[index])
    return ".".join(parts)


def _noncanonical_signature(keys: Keys) -> str:
    """Same signature bytes, different spelling: set an unused trailing bit."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    token = keys.token()
    signature = token.rsplit(".", 1)[1]
    assert len(signature) % 4 == 2  # 256 bytes: the last character carries 4 unused bits
    last = alphabet[alphabet.index(signature[-1]) ^ 1]
    return token[:-1] + last


def _raw_claims(**overrides: object) -> str:
    return json.dumps(claims(**overrides))  # type: ignore[arg-type]


RS = {"alg": "RS256", "kid": "rsa-1"}

REFUSALS: list[tuple[str, Callable[[Keys], str], str]] = [
    ("alg none", _alg_none, "alg 'none' is not allowed"),
    ("HS256 keyed with the RSA public PEM", _hs256_with_public_pem, "alg 'HS256' is not allowed"),
    ("alg outside the allow-list", lambda k: sign(k.rsa, {"alg": "RS512", "kid": "rsa-1"}, claims()), "alg 'RS512' is not allowed"),
    ("alg missing", lambda k: sign(k.rsa, {"kid": "rsa-1"}, claims(), alg="RS256"), "alg None is not allowed"),
    ("ES256 header naming the RSA key", lambda k: sign(k.ec, {"alg": "ES256", "kid": "rsa-1"}, claims()), "0 keys with kid 'rsa-1' fit ES256"),
    ("signed by another key under our kid", lambda k: sign(k.rsa2, RS, claims()), "signature not verified"),
    ("payload changed after signing", lambda k: _replace_segment(k.token(), 1, lambda _: b64(json.dumps(claims(org_id="globex")))), "signature not verified"),
    ("unknown kid", lambda k: sign(k.rsa2, {"alg": "RS256", "kid": "rsa-2"}, claims()), "no key with kid 'rsa-2'"),
    ("kid not a string", lambda k: sign(k.rsa, {"alg": "RS256", "kid": 7}, claims()), "kid is not a string"),
    ("jku header", lambda k: k.token(header={"jku": "https://evil.test/jwks"}), "header jku refused"),
    ("x5u header", lambda k: k.token(header={"x5u": "https://evil.test/cert"}), "header x5u refused"),
    ("jwk header", lambda k: k.token(header={"jwk": k.rsa.as_dict(private=False)}), "header jwk refused"),
    ("x5c header", lambda k: k.token(header={"x5c": ["MIIB"]}), "header x5c refused"),
    ("crit header", lambda k: k.token(header={"crit": ["exp"], "exp": 1}), "header crit refused"),
    ("empty crit header", lambda k: k.token(header={"crit": []}), "header crit refused"),
    ("b64 header without crit", lambda k: k.token(header={"b64": False}), "header b64 refused"),
    ("duplicate header name", lambda k: sign(k.rsa, '{"alg":"RS256","kid":"rsa-1","kid":"ec-1"}', claims(), alg="RS256"), "duplicate member name 'kid'"),
    ("duplicate claim name", lambda k: sign(k.rsa, RS, _raw_claims()[:-1] + ', "org_id": "globex"}'), "duplicate member name 'org_id'"),
    ("duplicate nested name", lambda k: sign(k.rsa, RS, _raw_claims(ctx={"a": 1})[:-1].replace('"a": 1', '"a": 1, "a": 2') + "}"), "duplicate member name 'a'"),
    ("payload not an object", lambda k: sign(k.rsa, RS, "[1, 2]"), "not a JSON object"),
    ("payload not JSON", lambda k: sign(k.rsa, RS, "exp=1"), "not JSON"),
    ("NaN exp", lambda k: sign(k.rsa, RS, _raw_claims(exp=0).replace('"exp": 0', '"exp": NaN')), "NaN is not JSON"),
    ("oversized", lambda k: k.token(pad="x" * 9000), "longer than 8192"),
    ("padding", lambda k: _replace_segment(k.token(), 0, lambda s: s + "="), "not unpadded base64url"),
    ("standard base64 alphabet", lambda k: _replace_segment(k.token(), 2, lambda s: "+/" + s[2:]), "not unpadded base64url"),
    ("space inside", lambda k: _replace_segment(k.token(), 1, lambda s: s[:10] + " " + s[10:]), "not unpadded base64url"),
    ("impossible length", lambda k: _replace_segment(k.token(), 2, lambda s: s + "A" * (5 - len(s) % 4)), "not unpadded base64url"),
    ("non-canonical base64url", _noncanonical_signature, "non-canonical"),
    ("expired", lambda k: k.token(exp=int(NOW) - 600), "expired"),
    ("exp missing", lambda k: k.token(exp=None), "exp is missing"),
    ("exp a string", lambda k: k.token(exp=str(int(NOW) + 600)), "exp is not a number"),
    ("exp a boolean", lambda k: k.token(exp=True), "exp is not a number"),
    ("exp beyond any date", lambda k: k.token(exp=10**30), "out of range"),
    ("nbf in the future", lambda k: k.token(nbf=int(NOW) + 3600), "nbf"),
    ("iat in the future", lambda k: k.token(iat=int(NOW) + 3600), "iat"),
    ("wrong iss", lambda k: k.token(iss="https://evil.test/"), "iss 'https://evil.test/'"),
    ("iss missing", lambda k: k.token(iss=None), "iss None"),
    ("wrong aud", lambda k: k.token(aud="someone-else"), "aud 'someone-else'"),
    ("aud list without ours", lambda k: k.token(aud=["a", "b"]), "aud ['a', 'b']"),
    ("aud missing", lambda k: k.token(aud=None), "aud None"),
    ("sub missing", lambda k: k.token(sub=None), "'sub' is missing"),
    ("sub empty", lambda k: k.token(sub=""), "'sub' is not a non-empty string"),
    ("org missing", lambda k: k.token(org_id=None), "'org_id' is missing"),
    ("org empty", lambda k: k.token(org_id=""), "'org_id' is not a non-empty string"),
    ("org not a string", lambda k: k.token(org_id=42), "'org_id' is not a non-empty string"),
    ("org a list", lambda k: k.token(org_id=["acme"]), "'org_id' is not a non-empty string"),
    ("jti not a string", lambda k: k.token(jti=5), "jti"),
]


@pytest.mark.parametrize(("build", "detail"), [case[1:] for case in REFUSALS], ids=[case[0] for case in REFUSALS])
async def test_refused(file_verifier: JwtVerifier, keys: Keys, build: Callable[[Keys], str], detail: str) -> None:
    assert detail in await refused(file_verifier, build(keys))


# -- time, at the edges of the leeway (30 s)

EDGES = [
    ("exp 29 s ago", {"exp": int(NOW) - 29}, True),
    ("exp exactly leeway ago", {"exp": int(NOW) - 30}, False),
    ("exp 31 s ago", {"exp": int(NOW) - 31}, False),
    ("nbf 30 s ahead", {"nbf": int(NOW) + 30}, True),
    ("nbf 31 s ahead", {"nbf": int(NOW) + 31}, False),
    ("iat 30 s ahead", {"iat": int(NOW) + 30}, True),
    ("iat 31 s ahead", {"iat": int(NOW) + 31}, False),
    ("fractional exp just inside", {"exp": NOW - 29.5}, True),
]


@pytest.mark.parametrize(("overrides", "accepted"), [case[1:] for case in EDGES], ids=[case[0] for case in EDGES])
async def test_leeway_edges(file_verifier: JwtVerifier, keys: Keys, overrides: dict[str, Any], accepted: bool) -> None:
    token = keys.token(**overrides)
    if accepted:
        await file_verifier.verify(token)
    else:
        await refused(file_verifier, token)


# -- configuration


@pytest.mark.parametrize("algorithms", [["HS256"], ["RS256", "HS512"], ["none"], ["ES256K"], [], "RS256"])
def test_unsafe_or_unknown_algorithms_are_refused_at_construction(tmp_path: Path, algorithms: list[str]) -> None:
    with pytest.raises(JwtConfigError, match="identity.jwt.algorithms"):
        JwtVerifier(Settings(jwks_file=str(tmp_path / "jwks.json"), algorithms=algorithms))


@pytest.mark.parametrize(
    ("settings", "key"),
    [
        (Settings(), "exactly one of jwks_file or jwks_url"),
        (Settings(jwks_file="a", jwks_url="http://b"), "exactly one of jwks_file or jwks_url"),
        (Settings(jwks_file="a", issuer=""), "identity.jwt.issuer"),
        (Settings(jwks_file="a", leeway_s=3600), "identity.jwt.leeway_s"),
    ],
)
def test_bad_settings_name_the_key(settings: Settings, key: str) -> None:
    with pytest.raises(JwtConfigError, match=key):
        JwtVerifier(settings)


# -- the JWKS file


async def test_missing_or_unusable_jwks_file_fails_at_start(tmp_path: Path, keys: Keys) -> None:
    path = tmp_path / "jwks.json"
    with pytest.raises(JwksError, match="cannot read"):
        await JwtVerifier(Settings(jwks_file=str(path))).start()
    write_jwks(path, {"keys": [{"kty": "oct", "k": b64(b"secret" * 6), "kid": "hmac"}]})
    with pytest.raises(JwksError, match="no usable key"):
        await JwtVerifier(Settings(jwks_file=str(path))).start()


async def test_private_jwk_entries_are_used_as_public_keys_only(tmp_path: Path, keys: Keys, clock: Clock) -> None:
    path = tmp_path / "jwks.json"
    write_jwks(path, {"keys": [keys.rsa.as_dict(private=True)]})
    verifier = JwtVerifier(Settings(jwks_file=str(path)), clock=clock)
    await verifier.start()
    assert (await verifier.verify(keys.token())).subject == "user-1"
    (loaded,) = parse_jwks(path.read_bytes(), ["RS256"])[0].keys
    assert not loaded.key.is_private and "d" not in loaded.key.as_dict()


def test_unusable_jwks_entries_are_skipped_with_a_note(keys: Keys) -> None:
    from joserfc.errors import SecurityWarning
    from joserfc.jwk import generate_key

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SecurityWarning)  # "Key size should be >= 2048 bits": the point here
        small = generate_key("RSA", 1024, {"kid": "small"})
    document = {
        "keys": [
            {"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"},
            {**small.as_dict(private=False)},
            {**keys.rsa2.as_dict(private=False), "use": "enc"},
            {**keys.ec.as_dict(private=False), "alg": "ES384"},
            {"kty": "RSA", "kid": "broken", "n": "AQAB"},
            keys.rsa.as_dict(private=False),
        ]
    }
    jwks, notes = parse_jwks(json.dumps(document).encode(), ["RS256", "ES256"])
    assert [key.kid for key in jwks.keys] == ["rsa-1"]
    assert len(notes) == 5 and "1024 bits" in notes[1] and "use is 'enc'" in notes[2]


def test_jwks_with_duplicate_names_is_refused(keys: Keys) -> None:
    text = json.dumps(public_jwks(keys.rsa))[:-1] + ', "keys": []}'
    with pytest.raises(JwksError, match="duplicate"):
        parse_jwks(text.encode(), ["RS256"])


async def test_jwk_declaring_another_alg_does_not_verify_this_one(tmp_path: Path, keys: Keys, clock: Clock) -> None:
    path = tmp_path / "jwks.json"
    write_jwks(path, public_jwks(keys.rsa, alg="RS384"))
    verifier = JwtVerifier(Settings(jwks_file=str(path), algorithms=["RS256", "RS384"]), clock=clock)
    await verifier.start()
    assert "0 keys with kid 'rsa-1' fit RS256" in await refused(verifier, keys.token())
    await verifier.verify(sign(keys.rsa, {"alg": "RS384", "kid": "rsa-1"}, claims()))


async def test_changed_jwks_file_is_picked_up_within_a_second(tmp_path: Path, keys: Keys, clock: Clock) -> None:
    path = tmp_path / "jwks.json"
    write_jwks(path, public_jwks(keys.rsa))
    verifier = JwtVerifier(Settings(jwks_file=str(path)), clock=clock)
    await verifier.start()
    old, new = keys.token(), keys.token(keys.rsa2)
    await verifier.verify(old)  # now cached

    write_jwks(path, public_jwks(keys.rsa2))  # rotation: rsa-1 withdrawn
    clock.advance(0.5)
    await verifier.verify(old)  # not looked at yet
    await refused(verifier, new)
    clock.advance(0.5)
    assert (await verifier.verify(new)).subject == "user-1"
    assert "no key with kid 'rsa-1'" in await refused(verifier, old)  # the cache went with the key


async def test_bad_rewrite_of_the_jwks_file_keeps_the_last_good_keys(tmp_path: Path, keys: Keys, clock: Clock) -> None:
    path = tmp_path / "jwks.json"
    write_jwks(path, public_jwks(keys.rsa))
    verifier = JwtVerifier(Settings(jwks_file=str(path)), clock=clock)
    await verifier.start()
    write_jwks(path, '{"keys": [')
    clock.advance(1)
    await verifier.verify(keys.token())


# -- the verified-token cache


async def test_cached_token_still_expires_at_exp_plus_leeway(file_verifier: JwtVerifier, keys: Keys, clock: Clock) -> None:
    token = keys.token(exp=int(NOW) + 60)
    await file_verifier.verify(token)
    assert len(file_verifier.cache) == 1
    clock.advance(60 + 29)
    await file_verifier.verify(token)
    clock.advance(1)
    assert "expired" in await refused(file_verifier, token)


def test_cache_is_bounded_least_recently_used_first() -> None:
    cache = VerifiedTokens(capacity=2)
    principal = Principal("s", "o", "jwt:x", "jwt")
    cache.put("a", "r1", principal, 100)
    cache.put("b", "r1", principal, 100)
    assert cache.get("a", "r1", 0) is principal
    cache.put("c", "r1", principal, 100)
    assert cache.get("b", "r1", 0) is None
    assert cache.get("a", "r1", 0) is principal
    assert cache.get("a", "r2", 0) is None and len(cache) == 0  # a new key set empties it


def test_cache_is_bounded_in_the_tokens_total_size() -> None:
    cache = VerifiedTokens(capacity=10, max_chars=10)
    principal = Principal("s", "o", "jwt:x", "jwt")
    cache.put("aaaa", "r1", principal, 100)
    cache.put("bbbb", "r1", principal, 100)
    cache.put("cccc", "r1", principal, 100)  # 12 characters: the oldest goes
    assert cache.get("aaaa", "r1", 0) is None and len(cache) == 2
    cache.put("bbbb", "r1", principal, 100)  # again: counted once
    cache.put("d" * 11, "r1", principal, 100)  # alone over the budget: kept by no one
    assert len(cache) == 0 and cache.get("d" * 11, "r1", 0) is None

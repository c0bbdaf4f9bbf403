"""JWTs built to be accepted by a careless verifier, sent end to end: each is
refused with 401 (400 for an ambiguous request) in the API's error shape, and
nothing reaches the upstream. tests/identity/test_jwt.py checks the verifier's
reasons one by one; here the question is only what a caller can get through."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from joserfc.jwk import generate_key

from e2e import AUDIENCE, ISSUER

from .conftest import MESSAGES, ORG, PLAIN, Probe, b64, chat_body

ANTHROPIC_BODY = json.dumps({"model": PLAIN, "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}).encode()


@dataclass
class Keys:
    real: Any        # the identity provider's key (kid "test-key"), in the gateway's JWKS
    attacker: Any    # a key of the caller's own, in no JWKS
    twin_a: Any      # two JWKS entries that share kid "twin"
    twin_b: Any

    def claims(self, **overrides: Any) -> dict[str, Any]:
        now = int(time.time())
        claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": "mallory@acme", "org_id": ORG, "iat": now, "exp": now + 600}
        return {k: v for k, v in (claims | overrides).items() if v is not None}

    def sign(self, header: dict[str, Any] | str, claims: dict[str, Any] | str | None = None, key: Any = None) -> str:
        """A compact JWS with exactly these header and payload bytes, RS256-signed by `key` (default: the real one)."""
        header_text = header if isinstance(header, str) else json.dumps(header)
        claims_text = claims if isinstance(claims, str) else json.dumps(self.claims() if claims is None else claims)
        signing_input = f"{b64(header_text)}.{b64(claims_text)}"
        private = (key or self.real).private_key
        signature = private.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        return f"{signing_input}.{b64(signature)}"

    def real_header(self, **extra: Any) -> dict[str, Any]:
        return {"alg": "RS256", "kid": "test-key"} | extra

    def hs256(self, secret: bytes, alg: str = "HS256") -> str:
        signing_input = f"{b64(json.dumps({'alg': alg, 'kid': 'test-key'}))}.{b64(json.dumps(self.claims()))}"
        return f"{signing_input}.{b64(hmac.new(secret, signing_input.encode(), hashlib.sha256).digest())}"

    def unsigned(self, alg: str, signature: str) -> str:
        return f"{b64(json.dumps({'alg': alg, 'kid': 'test-key'}))}.{b64(json.dumps(self.claims()))}.{signature}"

    def public_pem(self) -> bytes:
        return self.real.public_key.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)


def _rsa(kid: str) -> Any:
    return generate_key("RSA", 2048, {"kid": kid})


@pytest.fixture(scope="module")
def keys(stack: Any) -> Keys:
    """The gateway's JWKS gains two entries sharing a kid (and a probe key, to know it reloaded)."""
    keys = Keys(stack.signing.key, _rsa("attacker"), _rsa("twin"), _rsa("twin"))
    probe_key = _rsa("probe")
    extra = [(keys.twin_a, "twin"), (keys.twin_b, "twin"), (probe_key, "probe")]
    document = stack.signing.jwks()
    document["keys"] += [k.as_dict(private=False) | {"kid": kid, "alg": "RS256", "use": "sig"} for k, kid in extra]
    (stack.directory / "jwks.json").write_text(json.dumps(document))
    probe, deadline = Probe(stack), time.monotonic() + 5
    token = keys.sign({"alg": "RS256", "kid": "probe"}, key=probe_key)
    while probe.send(body=chat_body(), credential=token).status != 200:
        assert time.monotonic() < deadline, "the gateway did not reload its JWKS file"
        time.sleep(0.1)
    return keys


Build = Callable[[Keys], str]


def NOW() -> int:  # noqa: N802 (reads as the constant it stands for)
    return int(time.time())

TOKENS: list[tuple[str, Build]] = [
    # Algorithm confusion: the RSA public key, in the forms a verifier might use it, as an HMAC secret.
    ("HS256 keyed with the public PEM", lambda k: k.hs256(k.public_pem())),
    ("HS256 keyed with the public PEM without newline", lambda k: k.hs256(k.public_pem().strip())),
    ("HS256 keyed with the JWK JSON", lambda k: k.hs256(json.dumps(k.real.as_dict(private=False)).encode())),
    ("HS512 keyed with the public PEM", lambda k: k.hs256(k.public_pem(), "HS512")),
    # alg none in its spellings, with an empty (two-part-looking) and a non-empty signature.
    ("alg none, empty signature", lambda k: k.unsigned("none", "")),
    ("alg None, empty signature", lambda k: k.unsigned("None", "")),
    ("alg nOnE, empty signature", lambda k: k.unsigned("nOnE", "")),
    ("alg none, any signature", lambda k: k.unsigned("none", b64(b"x"))),
    ("alg NONE, real signature reused", lambda k: k.unsigned("NONE", k.sign(k.real_header()).rsplit(".", 1)[1])),
    ("alg empty", lambda k: k.unsigned("", b64(b"x"))),
    ("alg null", lambda k: k.sign({"alg": None, "kid": "test-key"})),
    ("alg a list", lambda k: k.sign({"alg": ["RS256"], "kid": "test-key"})),
    # Keys the token brings itself, signed by the caller's key and by the real one.
    ("embedded jwk of the caller's key", lambda k: k.sign({"alg": "RS256", "jwk": k.attacker.as_dict(private=False)}, key=k.attacker)),
    ("embedded jwk of the real key, real signature", lambda k: k.sign(k.real_header(jwk=k.real.as_dict(private=False)))),
    ("jku to the caller's JWKS", lambda k: k.sign({"alg": "RS256", "kid": "attacker", "jku": "http://127.0.0.1:1/jwks.json"}, key=k.attacker)),
    ("jku, real signature", lambda k: k.sign(k.real_header(jku="https://idp.test/.well-known/jwks.json"))),
    ("x5u, real signature", lambda k: k.sign(k.real_header(x5u="https://idp.test/cert.pem"))),
    ("x5c of the caller's cert", lambda k: k.sign({"alg": "RS256", "x5c": ["MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA"]}, key=k.attacker)),
    ("x5t, caller's key", lambda k: k.sign({"alg": "RS256", "kid": "attacker", "x5t": "abc"}, key=k.attacker)),
    ("crit with an unknown extension", lambda k: k.sign(k.real_header(crit=["urn:example:unknown"], **{"urn:example:unknown": 1}))),
    ("crit naming a missing header", lambda k: k.sign(k.real_header(crit=["b64"]))),
    ("b64 false (RFC 7797) without crit", lambda k: k.sign(k.real_header(b64=False))),
    # kid tricks.
    ("kid path traversal", lambda k: k.sign({"alg": "RS256", "kid": "../../../../../../dev/null"}, key=k.attacker)),
    ("kid path traversal to the jwks file", lambda k: k.sign({"alg": "RS256", "kid": "../jwks.json"}, key=k.attacker)),
    ("kid SQL-ish", lambda k: k.sign({"alg": "RS256", "kid": "' OR '1'='1' --"}, key=k.attacker)),
    ("kid command-ish", lambda k: k.sign({"alg": "RS256", "kid": "test-key|cat /etc/passwd"}, key=k.attacker)),
    ("unknown kid", lambda k: k.sign({"alg": "RS256", "kid": "attacker"}, key=k.attacker)),
    ("real kid, caller's key", lambda k: k.sign(k.real_header(), key=k.attacker)),
    ("kid matching two keys, signed by one", lambda k: k.sign({"alg": "RS256", "kid": "twin"}, key=k.twin_a)),
    ("kid matching two keys, signed by the other", lambda k: k.sign({"alg": "RS256", "kid": "twin"}, key=k.twin_b)),
    ("no kid, several RS256 keys", lambda k: k.sign({"alg": "RS256"})),
    ("empty kid", lambda k: k.sign({"alg": "RS256", "kid": ""})),
    ("kid a number", lambda k: k.sign({"alg": "RS256", "kid": 1})),
    ("kid null", lambda k: k.sign({"alg": "RS256", "kid": None})),
    ("kid a list", lambda k: k.sign({"alg": "RS256", "kid": ["test-key"]})),
    ("kid an object", lambda k: k.sign({"alg": "RS256", "kid": {"$ne": ""}})),
    ("kid with NUL", lambda k: k.sign({"alg": "RS256", "kid": "test-key\u0000"})),
    ("kid with trailing space", lambda k: k.sign({"alg": "RS256", "kid": "test-key "})),
    ("kid case-changed", lambda k: k.sign({"alg": "RS256", "kid": "TEST-KEY"})),
    ("kid 4 KB long", lambda k: k.sign({"alg": "RS256", "kid": "k" * 4096}, key=k.attacker)),
    # Lifetime at and past its edges (leeway 30 s; RFC 7519 §4.1.4: valid only *before* exp).
    ("exp exactly leeway ago", lambda k: k.sign(k.real_header(), k.claims(exp=NOW() - 30))),
    ("exp a minute ago", lambda k: k.sign(k.real_header(), k.claims(exp=NOW() - 60))),
    ("exp as a string", lambda k: k.sign(k.real_header(), k.claims(exp=str(NOW() + 600)))),
    ("exp as a numeric string with decimals", lambda k: k.sign(k.real_header(), k.claims(exp=f"{NOW() + 600}.0"))),
    ("exp huge", lambda k: k.sign(k.real_header(), k.claims(exp=10**20))),
    ("exp 1e308", lambda k: k.sign(k.real_header(), json.dumps(k.claims(exp=0)).replace('"exp": 0', '"exp": 1e308'))),
    ("exp 1e999 (inf)", lambda k: k.sign(k.real_header(), json.dumps(k.claims(exp=0)).replace('"exp": 0', '"exp": 1e999'))),
    ("exp 2**53 + 1", lambda k: k.sign(k.real_header(), k.claims(exp=2**53 + 1))),
    ("exp negative", lambda k: k.sign(k.real_header(), k.claims(exp=-1))),
    ("exp null", lambda k: k.sign(k.real_header(), json.dumps(k.claims(exp=0)).replace('"exp": 0', '"exp": null'))),
    ("exp missing", lambda k: k.sign(k.real_header(), {c: v for c, v in k.claims().items() if c != "exp"})),
    ("exp a list", lambda k: k.sign(k.real_header(), k.claims(exp=[NOW() + 600]))),
    ("exp true", lambda k: k.sign(k.real_header(), k.claims(exp=True))),
    ("nbf leeway + 1 ahead", lambda k: k.sign(k.real_header(), k.claims(nbf=NOW() + 32))),
    ("iat an hour ahead", lambda k: k.sign(k.real_header(), k.claims(iat=NOW() + 3600))),
    ("nbf a string", lambda k: k.sign(k.real_header(), k.claims(nbf="0"))),
    ("iss missing", lambda k: k.sign(k.real_header(), {c: v for c, v in k.claims().items() if c != "iss"})),
    ("iss without the trailing slash", lambda k: k.sign(k.real_header(), k.claims(iss=ISSUER.rstrip("/")))),
    ("iss with two trailing slashes", lambda k: k.sign(k.real_header(), k.claims(iss=ISSUER + "/"))),
    ("iss upper-case host", lambda k: k.sign(k.real_header(), k.claims(iss=ISSUER.upper()))),
    ("iss a list with ours", lambda k: k.sign(k.real_header(), k.claims(iss=[ISSUER]))),
    ("aud missing", lambda k: k.sign(k.real_header(), {c: v for c, v in k.claims().items() if c != "aud"})),
    ("aud list without ours", lambda k: k.sign(k.real_header(), k.claims(aud=["other", "frontier-gateway-2"]))),
    ("aud list with ours and a non-string", lambda k: k.sign(k.real_header(), k.claims(aud=[AUDIENCE, 7]))),
    ("aud empty list", lambda k: k.sign(k.real_header(), k.claims(aud=[]))),
    ("aud prefix of ours", lambda k: k.sign(k.real_header(), k.claims(aud=AUDIENCE[:-1]))),
    # Duplicate names: two parsers, two meanings.
    ("duplicate alg in header", lambda k: k.sign('{"alg":"RS256","kid":"test-key","alg":"none"}')),
    ("duplicate kid in header", lambda k: k.sign('{"alg":"RS256","kid":"attacker","kid":"test-key"}')),
    ("duplicate org_id in payload", lambda k: k.sign(k.real_header(), json.dumps(k.claims())[:-1] + ', "org_id": "org-caisi"}')),
    ("duplicate exp in payload", lambda k: k.sign(k.real_header(), json.dumps(k.claims(exp=NOW() - 3600))[:-1] + f', "exp": {NOW() + 600}}}')),
    ("duplicate key differing in escape", lambda k: k.sign(k.real_header(), json.dumps(k.claims())[:-1] + ', "org\\u005fid": "org-caisi"}')),
    # Segments that are not what they claim.
    ("header not JSON", lambda k: k.sign("alg=RS256")),
    ("header a JSON array", lambda k: k.sign('["RS256"]')),
    ("payload invalid UTF-8", lambda k: b64(json.dumps(k.real_header())) + "." + b64(b"\xff\xfe{}") + "." + b64(b"sig")),
    ("payload with a BOM", lambda k: k.sign(k.real_header(), "\ufeff" + json.dumps(k.claims()))),
    ("payload NaN", lambda k: k.sign(k.real_header(), json.dumps(k.claims(exp=0)).replace('"exp": 0', '"exp": NaN'))),
    ("payload nested 10,000 deep", lambda k: k.sign(k.real_header(), json.dumps(k.claims())[:-1] + ', "x": ' + "[" * 3000 + "]" * 3000 + "}")),
    ("two segments", lambda k: ".".join(k.sign(k.real_header()).split(".")[:2])),
    ("four segments", lambda k: k.sign(k.real_header()) + "." + b64(b"x")),
    ("five segments (JWE-like)", lambda k: ".".join([b64('{"alg":"dir","enc":"A128GCM"}'), "", b64(b"iv"), b64(b"ct"), b64(b"tag")])),
    ("empty middle segment", lambda k: k.sign(k.real_header()).split(".")[0] + ".." + k.sign(k.real_header()).split(".")[2]),
    ("only dots", lambda k: ".."),
    ("padded segments", lambda k: ".".join(p + "=" * (-len(p) % 4) for p in k.sign(k.real_header()).split("."))),
    ("standard base64 alphabet", lambda k: k.sign(k.real_header()).replace("-", "+").replace("_", "/")),
    ("percent-encoded segments", lambda k: k.sign(k.real_header()).replace("-", "%2D")),
    ("signature truncated", lambda k: k.sign(k.real_header())[:-4]),
    ("signature of another token", lambda k: k.sign(k.real_header(), k.claims(org_id="org-caisi")).rsplit(".", 1)[0] + "." + k.sign(k.real_header()).rsplit(".", 1)[1]),
    # Size.
    ("token just over 8 KiB", lambda k: k.sign(k.real_header(), k.claims(pad="x" * 8200))),
    ("header of 6 KiB", lambda k: k.sign(k.real_header(pad="x" * 6000))),
]


@pytest.mark.parametrize("build", [t[1] for t in TOKENS], ids=[t[0] for t in TOKENS])
def test_forged_token_is_refused(gw: Probe, keys: Keys, build: Build) -> None:
    token = build(keys)
    # A header field line over 8 KiB is refused by the listener before any credential is read.
    over_line = len("authorization") + len(f"Bearer {token}") > 8 * 1024
    gw.denied(gw.send(body=chat_body(), credential=token), 431 if over_line else 401)


@pytest.mark.parametrize("build", [t[1] for t in TOKENS[:12]], ids=[t[0] for t in TOKENS[:12]])
def test_forged_token_in_x_api_key_is_refused_in_anthropic_shape(gw: Probe, keys: Keys, build: Build) -> None:
    reply = gw.send(path=MESSAGES, body=ANTHROPIC_BODY, credential=None, headers=[("x-api-key", build(keys))])
    gw.denied(reply, 401, api="anthropic")


# Controls: the same builders make tokens that are accepted, so the refusals above are about the forgery.
ACCEPTED: list[tuple[str, Build]] = [
    ("plain", lambda k: k.sign(k.real_header())),
    ("exp exactly now, inside the leeway", lambda k: k.sign(k.real_header(), k.claims(exp=NOW()))),
    ("exp 28 s ago, inside the leeway", lambda k: k.sign(k.real_header(), k.claims(exp=NOW() - 28))),
    ("exp fractional", lambda k: k.sign(k.real_header(), k.claims(exp=time.time() + 600.5))),
    ("nbf 25 s ahead, inside the leeway", lambda k: k.sign(k.real_header(), k.claims(nbf=NOW() + 25))),
    ("aud list with ours", lambda k: k.sign(k.real_header(), k.claims(aud=["other", AUDIENCE]))),
    ("typ JWT and unknown non-crit header", lambda k: k.sign(k.real_header(typ="JWT", x_note="hello"))),
]


@pytest.mark.parametrize("build", [t[1] for t in ACCEPTED], ids=[t[0] for t in ACCEPTED])
def test_genuine_token_is_forwarded_for_its_org(gw: Probe, keys: Keys, build: Build) -> None:
    gw.allowed(gw.send(body=chat_body(), credential=build(keys)))


def test_valid_token_of_an_org_the_policy_does_not_know_is_403(gw: Probe, keys: Keys) -> None:
    gw.denied(gw.send(body=chat_body(), credential=keys.sign(keys.real_header(), keys.claims(org_id="org-nowhere"))), 403)


@pytest.mark.parametrize("org", ["ORG-ACME", " org-acme", "org-acme ", "org-acme\u0000", "org\u2010acme", "org-acm"])
def test_org_claim_is_matched_exactly(gw: Probe, keys: Keys, org: str) -> None:
    gw.denied(gw.send(body=chat_body(), credential=keys.sign(keys.real_header(), keys.claims(org_id=org))), 403)


def test_valid_token_of_a_denied_org_is_403(gw: Probe, keys: Keys) -> None:
    gw.denied(gw.send(body=chat_body(), credential=keys.sign(keys.real_header(), keys.claims(org_id="org-listed"))), 403)


# Where the credential is carried.

def _token(k: Keys) -> str:
    return k.sign(k.real_header())


CARRIERS: list[tuple[str, Callable[[Keys, Probe], list[tuple[str, str]]], tuple[int, ...]]] = [
    ("token and a different API key", lambda k, g: [("Authorization", f"Bearer {_token(k)}"), ("x-api-key", g.key("org-caisi"))], (401,)),
    ("API key and a different token", lambda k, g: [("Authorization", f"Bearer {g.key()}"), ("x-api-key", _token(k))], (401,)),
    ("two different tokens", lambda k, g: [("Authorization", f"Bearer {_token(k)}"), ("x-api-key", k.sign(k.real_header(), k.claims(org_id="org-caisi")))], (401,)),
    ("two Authorization headers, same token", lambda k, g: [("Authorization", f"Bearer {_token(k)}")] * 2, (400,)),
    ("two Authorization headers, token and key", lambda k, g: [("Authorization", f"Bearer {_token(k)}"), ("Authorization", f"Bearer {g.key('org-caisi')}")], (400,)),
    ("one Authorization header, two credentials", lambda k, g: [("Authorization", f"Bearer {_token(k)}, Bearer {g.key()}")], (401,)),
    ("two x-api-key headers", lambda k, g: [("x-api-key", g.key()), ("x-api-key", g.key("org-caisi"))], (400,)),
    ("Basic scheme", lambda k, g: [("Authorization", f"Basic {_token(k)}")], (401,)),
    ("no scheme", lambda k, g: [("Authorization", _token(k))], (401,)),
    ("two spaces after the scheme", lambda k, g: [("Authorization", f"Bearer  {_token(k)}")], (401,)),
    ("tab after the scheme", lambda k, g: [("Authorization", f"Bearer\t{_token(k)}")], (401,)),
    ("trailing junk", lambda k, g: [("Authorization", f"Bearer {_token(k)} x")], (401,)),
    ("non-ASCII credential", lambda k, g: [("Authorization", f"Bearer {_token(k)}é")], (401,)),
    ("credential with a tab inside", lambda k, g: [("x-api-key", g.key()[:8] + "\t" + g.key()[8:])], (401,)),
    ("Bearer with nothing", lambda k, g: [("Authorization", "Bearer")], (401,)),
    ("empty x-api-key", lambda k, g: [("x-api-key", "")], (401,)),
    ("Proxy-Authorization only", lambda k, g: [("Proxy-Authorization", f"Bearer {_token(k)}")], (401,)),
    ("token in a cookie only", lambda k, g: [("Cookie", f"access_token={_token(k)}")], (401,)),
]


@pytest.mark.parametrize(("headers", "statuses"), [c[1:] for c in CARRIERS], ids=[c[0] for c in CARRIERS])
def test_ambiguous_or_misplaced_credentials_are_refused(gw: Probe, keys: Keys,
                                                        headers: Callable[[Keys, Probe], list[tuple[str, str]]],
                                                        statuses: tuple[int, ...]) -> None:
    gw.denied(gw.send(body=chat_body(), credential=None, headers=headers(keys, gw)), *statuses)


@pytest.mark.parametrize("name", ["access_token", "api_key", "key", "token"])
def test_credential_in_the_query_is_not_one(gw: Probe, keys: Keys, name: str) -> None:
    gw.denied(gw.send(path=f"/v1/chat/completions?{name}={_token(keys)}", body=chat_body(), credential=None), 401)


@pytest.mark.parametrize("scheme", ["bearer", "BEARER", "BeArEr"])
def test_bearer_scheme_is_case_insensitive(gw: Probe, keys: Keys, scheme: str) -> None:
    # RFC 9110 §11.1: auth schemes are case-insensitive; the same credential, so no ambiguity.
    gw.allowed(gw.send(body=chat_body(), credential=None, headers=[("Authorization", f"{scheme} {_token(keys)}")]))


def test_same_token_in_both_headers_is_one_credential(gw: Probe, keys: Keys) -> None:
    token = _token(keys)
    gw.allowed(gw.send(body=chat_body(), credential=token, headers=[("x-api-key", token)]))


def test_huge_authorization_header_is_refused_without_500(gw: Probe) -> None:
    reply = gw.send(body=chat_body(), credential="a." + "b" * 200_000 + ".c")
    assert reply.status in (400, 401, 413, 431), reply
    if reply.header("x-gateway-decision-id"):
        gw.denied(reply, 401, 431)
    gw.nothing_forwarded()

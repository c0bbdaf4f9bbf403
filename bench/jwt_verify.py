"""JWT verification cost per token: `JwtVerifier.verify()` on tokens it has not seen
(every token distinct, so each one is decoded, its key selected and its signature
checked) and on tokens it has (the verified-token cache), for RS256 (2048-bit) and
ES256. Tokens are signed with `cryptography` directly, so the same tokens measure
any JOSE library behind the verifier.

    PYTHONPATH=. python bench/jwt_verify.py [--tokens 2000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils

from gateway.identity.jwt import JwtVerifier

NOW = 1_800_000_000.0
ISSUER, AUDIENCE = "https://idp.bench/", "frontier-gateway"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsigned(number: int, size: int | None = None) -> bytes:
    return number.to_bytes(size or (number.bit_length() + 7) // 8, "big")


@dataclass
class Settings:
    jwks_file: str
    jwks_url: str | None = None
    issuer: str = ISSUER
    audience: str = AUDIENCE
    algorithms: list[str] = field(default_factory=lambda: ["RS256", "ES256"])
    org_claim: str = "org_id"
    leeway_s: float = 30


class Signer:
    def __init__(self) -> None:
        self.rsa = rsa.generate_private_key(65537, 2048)
        self.ec = ec.generate_private_key(ec.SECP256R1())

    def jwks(self) -> dict[str, object]:
        rn, en = self.rsa.public_key().public_numbers(), self.ec.public_key().public_numbers()
        return {"keys": [
            {"kty": "RSA", "kid": "RS256", "n": b64(unsigned(rn.n)), "e": b64(unsigned(rn.e))},
            {"kty": "EC", "kid": "ES256", "crv": "P-256", "x": b64(unsigned(en.x, 32)), "y": b64(unsigned(en.y, 32))},
        ]}

    def token(self, alg: str, number: int) -> str:
        claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": f"user-{number}", "org_id": "acme",
                  "iat": int(NOW), "exp": int(NOW) + 600, "jti": f"token-{number}"}
        signing_input = f"{b64(json.dumps({'alg': alg, 'kid': alg}).encode())}.{b64(json.dumps(claims).encode())}"
        if alg == "RS256":
            signature = self.rsa.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        else:
            r, s = utils.decode_dss_signature(self.ec.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256())))
            signature = unsigned(r, 32) + unsigned(s, 32)
        return f"{signing_input}.{b64(signature)}"


async def per_token(verifier: JwtVerifier, tokens: list[str]) -> float:
    started = time.perf_counter()
    for token in tokens:
        await verifier.verify(token)
    return (time.perf_counter() - started) / len(tokens)


async def main(count: int, rounds: int) -> None:
    signer = Signer()
    jwks = Path(tempfile.mkdtemp()) / "jwks.json"
    jwks.write_text(json.dumps(signer.jwks()))
    for alg in ("RS256", "ES256"):
        tokens = [signer.token(alg, number) for number in range(count)]
        fresh, cached = [], []
        for _ in range(rounds):
            verifier = JwtVerifier(Settings(str(jwks)), clock=lambda: NOW)
            await verifier.start()
            fresh.append(await per_token(verifier, tokens))
            cached.append(await per_token(verifier, tokens))
            await verifier.close()
        print(f"{alg}: {min(fresh) * 1e6:.1f} µs per new token, {min(cached) * 1e6:.2f} µs per cached token "
              f"(best of {rounds} rounds of {count})")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    asyncio.run(main(args.tokens, args.rounds))

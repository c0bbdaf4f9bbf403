"""Fingerprints of refused credentials: the credential never, a short hash only of
credentials too long to guess (gateway/identity/fingerprint.py)."""

from __future__ import annotations

import hashlib

import pytest

from gateway.identity.apikeys import hash_secret, new_secret
from gateway.identity.fingerprint import fingerprint, presented

HS256_SIGNATURE = "s" * 43  # a 256-bit signature in base64url


@pytest.mark.parametrize(("authorization", "x_api_key", "expected"), [
    ("Bearer abc", None, "abc"),
    ("bearer  abc ", None, "abc"),
    ("Basic dXNlcjpwYXNzd29yZA==", None, None),  # a password, base64: never fingerprinted
    ("Bearer", None, None),
    (None, "xyz", "xyz"),
    (None, "", None),
    (None, None, None),
    ("Bearer abc", "xyz", "abc"),
])
def test_the_credential_presented(authorization: str | None, x_api_key: str | None, expected: str | None) -> None:
    assert presented(authorization, x_api_key) == expected


def test_an_api_key_fingerprint_is_the_start_of_its_stored_hash() -> None:
    secret = new_secret()
    kind, digest = fingerprint(secret)
    assert (kind, digest) == ("opaque", hash_secret(secret)[:12])


@pytest.mark.parametrize(("credential", "expected"), [
    (None, ("none", None)),
    ("", ("none", None)),
    ("hunter2", ("short", None)),
    ("correct horse battery staple", ("short", None)),     # 28 characters: guessable
    ("a.b.c", ("short", None)),                             # a JWT's shape, no real signature
    (f"e30.e30.{'s' * 42}", ("short", None)),
    (f"e30.e30.{HS256_SIGNATURE}", ("jwt", hashlib.sha256(f"e30.e30.{HS256_SIGNATURE}".encode()).hexdigest()[:12])),
    ("x" * 32, ("opaque", hashlib.sha256(b"x" * 32).hexdigest()[:12])),
])
def test_only_credentials_too_long_to_guess_get_a_fingerprint(credential: str | None,
                                                              expected: tuple[str, str | None]) -> None:
    assert fingerprint(credential) == expected

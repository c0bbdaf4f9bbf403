"""Ed25519 keys for audit checkpoints: the private key the gateway signs with
(`audit.signing_key_file`, made by `gateway audit keygen`) and the public keys a
verifier checks against.

A private key is a PEM file (PKCS#8, unencrypted, mode 0600). A public key is written
as one line, `ed25519:` and the 32 raw bytes in base64: what keygen prints, what
`GET /admin/audit/public-key` serves and what `gateway audit verify --public-key`
takes (the line itself, or a file holding it). A key's id is the first 16 hex digits
of the SHA-256 of its raw bytes; every checkpoint names the key that signed it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

PREFIX = "ed25519:"


class KeyProblem(ValueError):
    """A key file or a public key that cannot be used; the message names it."""


def key_id(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()[:16]


@dataclass(frozen=True)
class PublicKey:
    raw: bytes

    @property
    def id(self) -> str:
        return key_id(self.raw)

    @property
    def text(self) -> str:
        return PREFIX + base64.b64encode(self.raw).decode()

    def verifies(self, signature: str, message: bytes) -> bool:
        try:
            Ed25519PublicKey.from_public_bytes(self.raw).verify(base64.b64decode(signature, validate=True), message)
        except (InvalidSignature, ValueError, binascii.Error):
            return False
        return True


class SigningKey:
    def __init__(self, private: Ed25519PrivateKey) -> None:
        self._private = private
        raw = private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        self.public = PublicKey(raw)

    @classmethod
    def load(cls, path: str | Path) -> SigningKey:
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise KeyProblem(f"audit.signing_key_file {path}: cannot be read: {exc.strerror or exc}") from None
        try:
            private = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError) as exc:
            raise KeyProblem(f"audit.signing_key_file {path}: not an unencrypted PEM private key ({exc})") from None
        if not isinstance(private, Ed25519PrivateKey):
            raise KeyProblem(f"audit.signing_key_file {path}: not an Ed25519 key (make one with `gateway audit keygen`)")
        return cls(private)

    def sign(self, message: bytes) -> str:
        return base64.b64encode(self._private.sign(message)).decode()


def generate(path: str | Path) -> SigningKey:
    """A new key written to `path` (mode 0600; never over an existing file)."""
    private = Ed25519PrivateKey.generate()
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)
    return SigningKey(private)


def parse_public(text: str) -> PublicKey:
    """A public key as printed (`ed25519:BASE64`), or a file holding one (or a PEM public key)."""
    candidate = text.strip()
    if not candidate.startswith(PREFIX) and os.path.isfile(candidate):
        try:
            candidate = Path(candidate).read_text().strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise KeyProblem(f"public key file {text}: cannot be read: {exc}") from None
        if candidate.startswith("-----BEGIN"):
            return _from_pem(text, candidate)
    if not candidate.startswith(PREFIX):
        raise KeyProblem(f"public key {text!r}: expected ed25519:BASE64 (as `gateway audit keygen` prints) or a file")
    try:
        raw = base64.b64decode(candidate[len(PREFIX):], validate=True)
    except binascii.Error:
        raw = b""
    if len(raw) != 32:
        raise KeyProblem(f"public key {text!r}: not 32 bytes of base64 after {PREFIX}")
    return PublicKey(raw)


def _from_pem(name: str, pem: str) -> PublicKey:
    try:
        public = serialization.load_pem_public_key(pem.encode())
    except ValueError as exc:
        raise KeyProblem(f"public key file {name}: not a PEM public key ({exc})") from None
    if not isinstance(public, Ed25519PublicKey):
        raise KeyProblem(f"public key file {name}: not an Ed25519 key")
    return PublicKey(public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))

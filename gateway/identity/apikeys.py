"""API keys: created once, shown once, stored only as SHA-256 hashes (docs/operators.md, "API keys").

The request path needs one operation, `ApiKeyLookup.lookup`; managing keys
(`ApiKeyAdmin`) is separate, so a Redis-backed store for fleets can implement
both later without the request path noticing.

Embedded mode keeps the records in `<state_dir>/api_keys.json`, mode 0600,
rewritten atomically (temp file, fsync, rename) under an exclusive lock so two
CLI invocations cannot lose each other's keys. A running gateway sees keys the
CLI created or revoked in another process: it re-reads the file when its stamp
changes (checked at most once per second) and on a lookup miss (at most once
per second too, so a flood of bad keys costs one read per second).

A key is 32 random bytes, so its unsalted SHA-256 cannot be brute-forced; the
hash is what makes a stolen file useless for calling the gateway.
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import stat
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from gateway.identity.encoding import EncodingError, json_object
from gateway.identity.principal import Principal
from gateway.identity.watch import Clock, FileStamp, Throttle, stamp

log = logging.getLogger("gateway.identity")

FILE_NAME = "api_keys.json"
LOCK_NAME = "api_keys.lock"
SECRET_PREFIX = "fgw_"
KEY_ID = re.compile(r"key_[0-9a-f]{12}")
SHA256_HEX = re.compile(r"[0-9a-f]{64}")
MAX_LABEL = 200


class ApiKeyStoreError(Exception):
    """The key file cannot be read or written; the message names the file."""


@dataclass(frozen=True, slots=True)
class ApiKeyInfo:
    """What `list()` shows about a key: everything but its hash."""

    key_id: str
    org_id: str
    created_at: str  # ISO 8601 UTC
    revoked_at: str | None
    label: str | None


@dataclass(frozen=True, slots=True)
class ApiKeyRecord:
    key_id: str
    org_id: str
    sha256: str  # hex SHA-256 of the whole secret, prefix included
    created_at: str
    revoked_at: str | None
    label: str | None

    def info(self) -> ApiKeyInfo:
        return ApiKeyInfo(self.key_id, self.org_id, self.created_at, self.revoked_at, self.label)


class ApiKeyLookup(Protocol):
    """What the request path needs."""

    async def lookup(self, secret: str) -> Principal | None: ...


class ApiKeyAdmin(Protocol):
    """What the `gateway keys` CLI and the admin plane need."""

    def create(self, org_id: str, label: str | None = None) -> tuple[str, str]: ...

    def register(self, org_id: str, sha256: str, label: str | None = None, key_id: str | None = None) -> str: ...

    def revoke(self, key_id: str) -> bool: ...

    def list(self) -> list[ApiKeyInfo]: ...


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


class ApiKeyStore:
    """The embedded store: one JSON file in the state directory. Implements both protocols."""

    def __init__(self, state_dir: str | Path, *, clock: Clock = time.time, check_interval_s: float = 1.0) -> None:
        self.state_dir = Path(state_dir)
        self.path = self.state_dir / FILE_NAME
        self._clock = clock
        self._stat_check = Throttle(check_interval_s, clock)
        self._miss_reload = Throttle(check_interval_s, clock)
        self._stamp: FileStamp | None = None
        self._by_hash: dict[str, ApiKeyRecord] = {}

    # -- the request path

    async def lookup(self, secret: str) -> Principal | None:
        return self.find(secret)

    def find(self, secret: str) -> Principal | None:
        if self._stat_check.ready():
            self._reload(only_if_changed=True)
        digest = hash_secret(secret)
        record = self._by_hash.get(digest)
        if record is None and self._miss_reload.ready():
            self._reload(only_if_changed=False)
            record = self._by_hash.get(digest)
        # The dict lookup found it by hash; the constant-time comparison is the
        # authentication, kept so that no future index can turn into a timing oracle.
        if record is None or not hmac.compare_digest(record.sha256, digest) or record.revoked_at is not None:
            return None
        return Principal(f"apikey:{record.key_id}", record.org_id, credential_id=record.key_id, kind="api_key")

    def _reload(self, *, only_if_changed: bool) -> None:
        current = stamp(self.path)
        if only_if_changed and current == self._stamp:
            return
        self._stamp = current
        try:
            records = _read(self.path)
        except ApiKeyStoreError as exc:
            log.error("%s; keeping the %d keys loaded before", exc, len(self._by_hash))
            return
        self._by_hash = {record.sha256: record for record in records}

    # -- management (another process, usually)

    def create(self, org_id: str, label: str | None = None) -> tuple[str, str]:
        """A new key for `org_id`: (key id, secret). The secret exists only in this return value."""
        check_new_key(org_id, label)
        secret = new_secret()
        return self.register(org_id, hash_secret(secret), label), secret

    def register(self, org_id: str, sha256: str, label: str | None = None, key_id: str | None = None) -> str:
        """A key known only by the SHA-256 of its secret (the admin API's keys: the requester
        keeps the secret); its id, `key_id` if given. ValueError when the id or hash is taken."""
        check_new_key(org_id, label, sha256, key_id)
        with self._locked():
            records = _read(self.path)
            taken = {record.key_id for record in records}
            if key_id in taken or any(record.sha256 == sha256 for record in records):
                raise ValueError("a key with this id or secret exists")
            key_id = key_id or _new_key_id(taken)
            records.append(ApiKeyRecord(key_id, org_id, sha256, self._now(), None, label))
            self._write(records)
        return key_id

    def revoke(self, key_id: str) -> bool:
        """Revoke a key; False if there is no such key. Revoking twice keeps the first time."""
        with self._locked():
            records = _read(self.path)
            index = next((i for i, record in enumerate(records) if record.key_id == key_id), None)
            if index is None:
                return False
            if records[index].revoked_at is None:
                records[index] = replace(records[index], revoked_at=self._now())
                self._write(records)
        return True

    def _now(self) -> str:
        return datetime.fromtimestamp(self._clock(), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self.state_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def _write(self, records: list[ApiKeyRecord]) -> None:
        document = {"version": 1, "keys": [asdict(record) for record in records]}
        data = (json.dumps(document, indent=2) + "\n").encode()
        temp = self.state_dir / f".{FILE_NAME}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
        try:
            # O_EXCL: never write through a file or symlink someone planted under this name.
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            os.replace(temp, self.path)
        except OSError as exc:
            temp.unlink(missing_ok=True)
            raise ApiKeyStoreError(f"cannot write {self.path}: {exc.strerror}") from None
        _fsync_dir(self.state_dir)
        self._stamp = stamp(self.path)
        self._by_hash = {record.sha256: record for record in records}

    def list(self) -> list[ApiKeyInfo]:  # last: the name would shadow `list` in annotations below it
        return [record.info() for record in _read(self.path)]


def new_secret() -> str:
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def check_new_key(org_id: str, label: str | None, sha256: str | None = None, key_id: str | None = None) -> None:
    """ValueError naming the first field a new key cannot have."""
    _check_text("org_id", org_id, 200)
    if label is not None:
        _check_text("label", label, MAX_LABEL)
    if sha256 is not None and (not isinstance(sha256, str) or not SHA256_HEX.fullmatch(sha256)):
        raise ValueError("sha256: the SHA-256 of the secret, 64 lowercase hex digits")
    if key_id is not None and (not isinstance(key_id, str) or not KEY_ID.fullmatch(key_id)):
        raise ValueError("key_id: key_ followed by 12 lowercase hex digits")


def _new_key_id(taken: set[str]) -> str:
    while True:
        key_id = "key_" + secrets.token_hex(6)
        if key_id not in taken:
            return key_id


def _check_text(name: str, value: str, limit: int) -> None:
    if not isinstance(value, str) or not value.strip() or len(value) > limit or not value.isprintable():
        raise ValueError(f"{name}: {value!r} must be 1-{limit} printable characters")


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _read(path: Path) -> list[ApiKeyRecord]:
    """All records in the file; none if it does not exist yet."""
    try:
        with path.open("rb") as source:
            mode = os.fstat(source.fileno()).st_mode
            data = source.read()
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise ApiKeyStoreError(f"cannot read {path}: {exc.strerror}") from None
    if mode & (stat.S_IWGRP | stat.S_IWOTH):
        # Whoever can write this file can mint keys for any organization.
        raise ApiKeyStoreError(f"{path} is writable by group or others; chmod 600 it")
    try:
        document = json_object(data)
        return _records(document)
    except (EncodingError, ValueError) as exc:
        raise ApiKeyStoreError(f"{path}: {exc}") from None


def _records(document: dict[str, Any]) -> list[ApiKeyRecord]:
    if document.get("version") != 1 or not isinstance(document.get("keys"), list):
        raise ValueError('expected {"version": 1, "keys": [...]}')
    records = []
    for index, entry in enumerate(document["keys"]):
        try:
            record = ApiKeyRecord(**entry)
        except TypeError:
            raise ValueError(f"keys[{index}]: expected fields {', '.join(ApiKeyRecord.__dataclass_fields__)}") from None
        if not KEY_ID.fullmatch(str(record.key_id)) or not SHA256_HEX.fullmatch(str(record.sha256)):
            raise ValueError(f"keys[{index}]: malformed key_id or sha256")
        if not isinstance(record.org_id, str) or not record.org_id:
            raise ValueError(f"keys[{index}]: org_id is not a non-empty string")
        records.append(record)
    return records

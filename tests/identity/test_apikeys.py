"""The embedded API-key store and the `gateway keys` functions, on a real state directory."""

from __future__ import annotations

import argparse
import json
import os
import re
import stat
import threading
from pathlib import Path

import pytest

from gateway.identity.apikeys import ApiKeyStoreError, ApiKeyStore, hash_secret
from gateway.identity.keys_cli import keys_create, keys_list, keys_revoke
from gateway.identity.principal import Principal

from .conftest import Clock


@pytest.fixture
def store(tmp_path: Path, clock: Clock) -> ApiKeyStore:
    return ApiKeyStore(tmp_path / "state", clock=clock)


def test_created_key_looks_up_to_its_org(store: ApiKeyStore) -> None:
    key_id, secret = store.create("acme", label="ci")
    assert re.fullmatch(r"key_[0-9a-f]{12}", key_id)
    assert re.fullmatch(r"fgw_[A-Za-z0-9_-]{43}", secret)
    assert store.find(secret) == Principal(subject=f"apikey:{key_id}", org_id="acme", credential_id=key_id, kind="api_key")
    assert store.find(secret + "x") is None
    assert store.find("fgw_" + "A" * 43) is None


def test_revoked_key_no_longer_looks_up(store: ApiKeyStore, clock: Clock) -> None:
    key_id, secret = store.create("acme")
    other_id, other = store.create("acme")
    assert store.revoke(key_id) is True
    assert store.find(secret) is None
    assert store.find(other) is not None
    first = next(info for info in store.list() if info.key_id == key_id).revoked_at
    clock.advance(3600)
    assert store.revoke(key_id) is True  # idempotent: the first revocation time stays
    assert next(info for info in store.list() if info.key_id == key_id).revoked_at == first
    assert store.revoke("key_000000000000") is False


def test_list_shows_no_hashes(store: ApiKeyStore) -> None:
    key_id, _ = store.create("acme", label="batch jobs")
    (info,) = store.list()
    assert (info.key_id, info.org_id, info.label, info.revoked_at) == (key_id, "acme", "batch jobs", None)
    assert info.created_at == "2027-01-15T08:00:00Z"
    assert not hasattr(info, "sha256")


def test_file_holds_hashes_not_secrets_with_mode_0600(store: ApiKeyStore) -> None:
    _, secret = store.create("acme")
    text = store.path.read_text()
    assert secret not in text and secret[4:] not in text
    assert hash_secret(secret) in text
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600
    assert [p.name for p in store.state_dir.iterdir() if p.name.endswith(".tmp")] == []


def test_keys_created_in_another_process_are_seen_after_the_one_second_check(tmp_path: Path, clock: Clock) -> None:
    gateway = ApiKeyStore(tmp_path, clock=clock)
    cli = ApiKeyStore(tmp_path, clock=clock)  # same directory, separate state: another process
    assert gateway.find("fgw_unknown") is None  # both checks just ran

    key_id, secret = cli.create("acme")
    assert gateway.find(secret) is None  # checked less than a second ago
    clock.advance(1)
    assert gateway.find(secret) is not None

    cli.revoke(key_id)
    clock.advance(0.5)
    assert gateway.find(secret) is not None  # still within the second
    clock.advance(0.5)
    assert gateway.find(secret) is None


def test_a_miss_rereads_even_when_the_file_stamp_looks_unchanged(tmp_path: Path, clock: Clock) -> None:
    gateway = ApiKeyStore(tmp_path, clock=clock)
    cli = ApiKeyStore(tmp_path, clock=clock)
    cli.create("acme")
    assert gateway.find("fgw_unknown") is None
    _, secret = cli.create("acme")
    # Forge the old stamp, as a coarse-mtime filesystem with a reused inode could.
    gateway._stamp = (gateway.path.stat().st_ino, gateway.path.stat().st_mtime_ns, gateway.path.stat().st_size)
    clock.advance(1)
    assert gateway.find(secret) is not None


def test_corrupt_file_keeps_loaded_keys_and_is_never_overwritten(tmp_path: Path, clock: Clock) -> None:
    gateway = ApiKeyStore(tmp_path, clock=clock)
    _, secret = gateway.create("acme")
    gateway.path.write_text('{"version": 1, "keys": [')
    clock.advance(1)
    assert gateway.find(secret) is not None
    with pytest.raises(ApiKeyStoreError, match="api_keys.json"):
        ApiKeyStore(tmp_path).create("acme")
    assert gateway.path.read_text() == '{"version": 1, "keys": ['


def test_group_writable_key_file_is_refused(tmp_path: Path, clock: Clock) -> None:
    store = ApiKeyStore(tmp_path, clock=clock)
    _, secret = store.create("acme")
    os.chmod(store.path, 0o664)
    with pytest.raises(ApiKeyStoreError, match="writable by group or others"):
        store.list()
    assert ApiKeyStore(tmp_path, clock=clock).find(secret) is None


def test_concurrent_creates_lose_nothing(tmp_path: Path) -> None:
    def create_five() -> None:
        store = ApiKeyStore(tmp_path)
        for _ in range(5):
            store.create("acme")

    threads = [threading.Thread(target=create_five) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(ApiKeyStore(tmp_path).list()) == 40


@pytest.mark.parametrize(("org", "label"), [("", None), ("   ", None), ("acme\n", None), ("acme", "a\x00b"), ("acme", "x" * 201)])
def test_create_refuses_bad_org_or_label(store: ApiKeyStore, org: str, label: str | None) -> None:
    with pytest.raises(ValueError):
        store.create(org, label)


# -- the CLI functions


def ns(state_dir: Path, **values: object) -> argparse.Namespace:
    return argparse.Namespace(state_dir=str(state_dir), json=False, **values)


def test_keys_create_prints_the_secret_once_with_a_warning(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert keys_create(ns(tmp_path, org="acme", label=None)) == 0
    out, err = capsys.readouterr()
    secret = re.search(r"fgw_[A-Za-z0-9_-]{43}", out)
    assert secret and "cannot be shown again" in err
    assert ApiKeyStore(tmp_path).find(secret.group()) is not None

    assert keys_create(argparse.Namespace(state_dir=str(tmp_path), json=True, org="acme", label="ci")) == 0
    created = json.loads(capsys.readouterr().out)
    assert created["org_id"] == "acme" and created["secret"].startswith("fgw_") and "warning" in created


def test_keys_list_and_revoke(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key_id, _ = ApiKeyStore(tmp_path).create("acme", label="ci")
    ApiKeyStore(tmp_path).create("globex")
    assert keys_list(argparse.Namespace(state_dir=str(tmp_path), json=True, org="acme")) == 0
    (listed,) = json.loads(capsys.readouterr().out)
    assert listed == {"key_id": key_id, "org_id": "acme", "created_at": listed["created_at"], "revoked_at": None, "label": "ci"}

    assert keys_revoke(ns(tmp_path, key_id=key_id)) == 0
    assert key_id in capsys.readouterr().out
    assert keys_revoke(ns(tmp_path, key_id="key_000000000000")) == 1
    assert "no API key" in capsys.readouterr().err

    assert keys_list(ns(tmp_path)) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["KEY", "ID", "ORG", "CREATED", "REVOKED", "LABEL"] and len(table) == 3
    assert "sha256" not in "".join(table)

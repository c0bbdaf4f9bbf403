"""Shared fixtures: the reference bundle and its decision cases, loaded once; Redis servers."""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.policy.load import load_bundle
from gateway.policy.snapshot import Policy

FIXTURES = Path(__file__).parent / "fixtures"
REFERENCE = FIXTURES / "reference"
REFERENCE_POLICY = REFERENCE / "policy"
GEOIP = FIXTURES / "geoip"
# The fixture databases were built on 2026-02-04: tests not about database age must not
# start refusing covered models as they grow old (geoip.max_age_days, gateway/geo/files.py).
GEOIP_MAX_AGE_DAYS = 3650


def reference_cases() -> list[dict[str, Any]]:
    return yaml.safe_load((REFERENCE / "cases.yaml").read_text())["cases"]


def at(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


@pytest.fixture(scope="session")
def reference_policy() -> Policy:
    return load_bundle(REFERENCE_POLICY).policy


@pytest.fixture
def bundle_dir(tmp_path: Path) -> Path:
    """A writable copy of the reference bundle, for tests that break it."""
    target = tmp_path / "policy"
    target.mkdir()
    for source in REFERENCE_POLICY.glob("*.yaml"):
        (target / source.name).write_text(source.read_text())
    return target


@pytest.fixture
def redis_url() -> str:
    """The Redis of scripts/with-redis (make test), shared by every test that needs one."""
    url = os.environ.get("REDIS_URL")
    if not url:
        pytest.skip("needs a Redis: run under scripts/with-redis (make test)")
    return url


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[Any]:
    """A redis-server of this test's own (no persistence), to stop and start again."""
    from fleet import RedisServer, redis_server_binary  # fleet imports this module

    binary = redis_server_binary()
    if binary is None:
        pytest.skip("no redis-server binary ($REDIS_SERVER_BIN or PATH)")
    server = RedisServer(binary, tmp_path / "redis")
    try:
        server.start()
        yield server
    finally:
        server.close()

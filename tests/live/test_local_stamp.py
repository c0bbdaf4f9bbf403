"""Embedded mode's state file is asked for its revision twice a second; the answer is kept
until the file is replaced, and a change written by another process (`gateway keys`) is
still seen at the next ask."""

from __future__ import annotations

import asyncio
from pathlib import Path

from gateway.live.store import LOCAL_EPOCH, LocalStore


def _write(store: LocalStore, n: int) -> int:
    change = {"change_id": f"chg-{n}", "actor": "ops-alice", "action": "suspension.create", "target": f"s-{n}",
              "time": "2026-12-03T10:00:00.000Z", "before": None, "after": {}, "reason": "test",
              "reference": None, "policy_version": "v1"}
    return asyncio.run(store.write(set_fields={f"susp:s-{n}": "{}"}, delete_fields=[], bundle=None, change=change))


def test_the_revision_follows_writes_from_another_store(tmp_path: Path) -> None:
    reader, writer = LocalStore(tmp_path), LocalStore(tmp_path)
    assert asyncio.run(reader.stamp()) == (LOCAL_EPOCH, 0)  # no file yet
    for n in range(1, 4):
        assert _write(writer, n) == n
        assert asyncio.run(reader.stamp()) == (LOCAL_EPOCH, n)
        assert asyncio.run(reader.stamp()) == (LOCAL_EPOCH, n)  # kept: the file was not replaced


def test_an_unchanged_file_is_not_parsed_again(tmp_path: Path, monkeypatch) -> None:
    store = LocalStore(tmp_path)
    _write(store, 1)
    asyncio.run(store.stamp())
    monkeypatch.setattr(store, "_state", lambda: (_ for _ in ()).throw(AssertionError("parsed again")))
    assert asyncio.run(store.stamp()) == (LOCAL_EPOCH, 1)

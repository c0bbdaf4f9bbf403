"""The change log's hash chain (issue 14), in both stores: the file of embedded mode and
a real Redis for fleets. An edited, removed or reordered record is named by its seq;
replicas writing at once extend one linear chain."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from gateway.audit import render, verify, verify_change_log
from gateway.live.store import LocalStore, RedisStore

pytestmark = pytest.mark.anyio


def change(n: int) -> dict[str, Any]:
    return {"change_id": f"chg-{n:04d}", "actor": "ops-alice", "action": "suspension.create", "target": f"s-{n}",
            "time": "2026-12-03T10:00:00.000Z", "before": None, "after": {"deny_in": ["SE"]},
            "reason": "export order", "reference": "ORDER-1", "policy_version": f"v{n}"}


async def write(store: Any, n: int, epoch: str | None) -> int:
    return int(await store.write(set_fields={f"susp:s-{n}": "{}"}, delete_fields=[], bundle=None,
                                 change=change(n), epoch=epoch))


async def checked(store: Any) -> Any:
    found = await store.change_log()
    return verify_change_log(found.lines, found.source, head=found.head, complete=found.complete)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def redis_stores(redis_url: str) -> AsyncIterator[Callable[[], RedisStore]]:
    """Stores on one fresh namespace, each its own connection: replicas of one fleet."""
    namespace = f"chain-{uuid.uuid4().hex[:8]}"
    made: list[RedisStore] = []

    def make() -> RedisStore:
        made.append(RedisStore(redis_url, namespace=namespace, timeout_s=2.0))
        return made[-1]

    yield make
    await made[0].redis.delete(*made[0].keys.values())
    for store in made:
        await store.close()


# Embedded mode: state_dir/live/changes.jsonl


async def test_local_records_are_chained_and_verify(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    for n in range(1, 4):
        await write(store, n, "local")
    records = [json.loads(line) for line in (tmp_path / "live" / "changes.jsonl").read_text().splitlines()]
    assert [r["seq"] for r in records] == [1, 2, 3]
    assert records[1]["prev"] == records[0]["hash"] and records[0]["prev"] == "0" * 64
    assert records[2]["revision"] == 3 and records[2]["actor"] == "ops-alice"
    result = await checked(store)
    assert result.ok and result.records == 3, render(result)
    # `gateway audit verify` reads the same file.
    assert verify([tmp_path / "live" / "changes.jsonl"]).ok


async def test_local_edited_record_is_named_by_its_seq(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    for n in range(1, 4):
        await write(store, n, "local")
    path = tmp_path / "live" / "changes.jsonl"
    path.write_text(path.read_text().replace('"actor":"ops-alice","after":{"deny_in":["SE"]},"before":null,"change_id":"chg-0002"',
                                             '"actor":"ops-mallory","after":{"deny_in":["SE"]},"before":null,"change_id":"chg-0002"'))
    result = await checked(store)
    assert not result.ok and (result.problem.seq, result.problem.kind) == (2, "edited"), render(result)


@pytest.mark.parametrize("removed, kind, seq", [(0, "removed", 2), (1, "removed", 3), (2, "removed", 3)])
async def test_local_removed_record_is_named_by_its_seq(tmp_path: Path, removed: int, kind: str, seq: int) -> None:
    store = LocalStore(tmp_path)
    for n in range(1, 4):
        await write(store, n, "local")
    path = tmp_path / "live" / "changes.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:removed] + lines[removed + 1:]))
    result = await checked(store)
    assert not result.ok and result.problem.kind == kind, render(result)
    assert result.problem.seq == seq, render(result)  # the first record, a middle one, the last (against the head)


async def test_local_chain_continues_after_records_from_before_it_was_chained(tmp_path: Path) -> None:
    (tmp_path / "live").mkdir()
    (tmp_path / "live" / "changes.jsonl").write_text(json.dumps(change(0) | {"revision": 1}) + "\n")
    store = LocalStore(tmp_path)
    await write(store, 1, "local")
    await write(store, 2, "local")
    result = await checked(store)
    assert result.ok and result.records == 2 and result.unchained == 1, render(result)
    assert "predate the chained change log" in render(result)


# Fleet mode: a Redis stream, its head beside it


async def test_redis_records_are_chained_and_an_edit_or_removal_is_named(redis_stores: Callable[[], RedisStore]) -> None:
    store = redis_stores()
    await write(store, 1, None)
    epoch, _ = await store.stamp()
    for n in range(2, 5):
        await write(store, n, epoch)
    assert [c["seq"] for c in await store.changes(10)] == [4, 3, 2, 1]
    assert (await checked(store)).ok

    entries = await store.redis.xrange(store.keys["changes"])
    third_id, third = entries[2]
    record = json.loads(third["change"]) | {"actor": "ops-mallory"}
    await store.redis.xdel(store.keys["changes"], third_id)
    result = await checked(store)
    assert (result.problem.seq, result.problem.kind) == (4, "removed"), render(result)
    assert "seq 3 missing" in result.problem.message

    # Put an edited copy back in its place (the stream only appends: the fourth after it).
    fourth_id, fourth = entries[3]
    await store.redis.xdel(store.keys["changes"], fourth_id)
    await store.redis.xadd(store.keys["changes"], {"change": json.dumps(record)})
    await store.redis.xadd(store.keys["changes"], fourth)
    result = await checked(store)
    assert (result.problem.seq, result.problem.kind) == (3, "edited"), render(result)


async def test_redis_last_record_removed_is_caught_by_the_head(redis_stores: Callable[[], RedisStore]) -> None:
    store = redis_stores()
    await write(store, 1, None)
    epoch, _ = await store.stamp()
    await write(store, 2, epoch)
    last_id = (await store.redis.xrevrange(store.keys["changes"], count=1))[0][0]
    await store.redis.xdel(store.keys["changes"], last_id)
    result = await checked(store)
    assert (result.problem.seq, result.problem.kind) == (2, "removed"), render(result)


async def test_replicas_writing_at_once_extend_one_linear_chain(redis_stores: Callable[[], RedisStore]) -> None:
    first, second = redis_stores(), redis_stores()
    await write(first, 0, None)
    epoch, _ = await first.stamp()
    await asyncio.gather(*(write(store, n, epoch) for n in range(1, 41) for store in [(first, second)[n % 2]]))
    result = await checked(second)
    assert result.ok and result.records == 41, render(result)
    seqs = sorted(c["seq"] for c in await first.changes(100))
    assert seqs == list(range(1, 42))
    assert int((await first.stamp())[1]) == 41  # every change written once

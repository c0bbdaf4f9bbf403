"""The audit trail: one JSON record per request (SPEC §5), written off the
request's critical path by a single writer task.

The queue is bounded. When it is full, or the file cannot be written, the
gateway must stop serving rather than serve unrecorded traffic: `healthy` turns
False and the request path answers 503 until records flow again.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

from gateway.metrics import Metrics

log = logging.getLogger("gateway.audit")


class AuditLog:
    def __init__(self, path: str | Path, metrics: Metrics, *, capacity: int = 10_000) -> None:
        self.path = Path(path)
        self.metrics = metrics
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(capacity)
        self.failed = False
        self._writer: asyncio.Task[None] | None = None

    @property
    def healthy(self) -> bool:
        return not self.failed and not self.queue.full()

    def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._writer = asyncio.get_running_loop().create_task(self._write_forever())

    def record(self, entry: dict[str, Any]) -> None:
        try:
            self.queue.put_nowait(entry)
        except asyncio.QueueFull:
            self.metrics.audit_lost.inc()
            log.error("audit queue full: record %s lost", entry.get("decision_id"))

    async def _write_forever(self) -> None:
        with self.path.open("a", encoding="utf-8") as out:
            while True:
                batch = [await self.queue.get()]
                while not self.queue.empty():
                    batch.append(self.queue.get_nowait())
                self._write(out, batch)

    def _write(self, out: Any, batch: list[dict[str, Any]]) -> None:
        lines = "".join(json.dumps(entry, separators=(",", ":"), ensure_ascii=False) + "\n" for entry in batch)
        try:
            out.write(lines)
            out.flush()
            self.failed = False
        except OSError as exc:
            self.failed = True
            self.metrics.audit_lost.inc(len(batch))
            log.error("audit write failed, %d records lost: %s", len(batch), exc)

    async def close(self) -> None:
        """Write what is queued, then stop."""
        while not self.queue.empty() and self._writer is not None and not self._writer.done():
            await asyncio.sleep(0.01)
        if self._writer is not None:
            self._writer.cancel()

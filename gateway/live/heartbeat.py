"""Each replica's heartbeat: who it is, which policy it runs, its last hour of requests.

In fleet mode every replica writes its heartbeat every HEARTBEAT_S into one Redis hash
(`{namespace}:replicas`, field = replica id), so the console of any replica can show the
whole fleet: whether every replica runs the same policy version, and the fleet's request
and denial counts. A heartbeat older than STALE_S is a replica gone (stopped, or cut off
from Redis); it is shown as such, and forgotten after FORGET_S. Embedded mode has no
fleet: the console shows the one process.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gateway.request.activity import EMPTY, Activity, Window, window_from_json

log = logging.getLogger("gateway.heartbeat")
HEARTBEAT_S = 10.0
STALE_S = 3 * HEARTBEAT_S
FORGET_S = 3600.0
MAX_REPLICAS = 256  # read at most this many: a hash someone flooded cannot stall the overview


@dataclass(frozen=True)
class Heartbeat:
    replica: str
    policy_version: str | None
    seen_at: float
    window: Window

    def as_json(self) -> str:
        return json.dumps({"replica": self.replica, "policy_version": self.policy_version, "seen_at": self.seen_at,
                           "window": self.window.as_json()}, separators=(",", ":"))


def heartbeat_from_json(text: Any) -> Heartbeat | None:
    """A stored heartbeat, checked; None for anything else (never an exception)."""
    try:
        data = json.loads(text)
        version = data["policy_version"]
        return Heartbeat(str(data["replica"]), version if isinstance(version, str) else None,
                         float(data["seen_at"]), window_from_json(data["window"]) or EMPTY)
    except (TypeError, ValueError, KeyError):
        return None


class Heartbeats:
    """This replica's heartbeat, published to Redis (fleet mode) and read back for the console."""

    def __init__(self, redis: Any, namespace: str, replica: str, activity: Activity,
                 policy_version: Callable[[], str | None], clock: Callable[[], float], *, timeout_s: float = 1.0) -> None:
        self.redis = redis
        self.key = "{" + namespace + "}:replicas"
        self.replica = replica
        self.activity = activity
        self.policy_version = policy_version
        self.clock = clock
        self.timeout_s = timeout_s
        self._task: asyncio.Task[None] | None = None

    def own(self) -> Heartbeat:
        now = self.clock()
        return Heartbeat(self.replica, self.policy_version(), now, self.activity.window(now))

    async def publish(self) -> None:
        await asyncio.wait_for(self.redis.hset(self.key, self.replica, self.own().as_json()), self.timeout_s)

    async def fleet(self) -> list[Heartbeat]:
        """Every replica's last heartbeat (this one's as of now), the long-gone ones forgotten."""
        fields = await asyncio.wait_for(self.redis.hgetall(self.key), self.timeout_s)
        now = self.clock()
        beats = {self.replica: self.own()}
        forgotten = []
        for replica, text in list(fields.items())[:MAX_REPLICAS]:
            beat = heartbeat_from_json(text)
            if beat is None or now - beat.seen_at > FORGET_S:
                forgotten.append(replica)
            elif replica != self.replica:
                beats[replica] = beat
        if forgotten:
            await asyncio.wait_for(self.redis.hdel(self.key, *forgotten), self.timeout_s)
        return sorted(beats.values(), key=lambda beat: beat.replica)

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._beat_forever())

    async def stop(self) -> None:
        """Stop beating and leave the fleet's list: a replica stopped on purpose is not shown as gone."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        try:
            await asyncio.wait_for(self.redis.hdel(self.key, self.replica), self.timeout_s)
        except Exception as failure:  # noqa: BLE001 - Redis away: the entry ages out instead
            log.debug("heartbeat not withdrawn: %r", failure)

    async def _beat_forever(self) -> None:
        while True:
            try:
                await self.publish()
            except Exception as failure:  # noqa: BLE001 - Redis away: the next beat tries again
                log.debug("heartbeat not published: %r", failure)
            await asyncio.sleep(HEARTBEAT_S)

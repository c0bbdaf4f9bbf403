"""Request quotas per organization (SPEC §1.7), counted in this process.

A fixed one-minute window per organization: simple, exact within one replica,
and the shape the fleet's Redis counter (INCR + EXPIRE) will share.
"""

from __future__ import annotations

import math


class LocalQuota:
    def __init__(self) -> None:
        self._windows: dict[str, tuple[int, int]] = {}

    def admit(self, org_id: str, per_minute: int | None, now: float) -> float | None:
        """None when admitted; otherwise the seconds until the window resets."""
        if per_minute is None:
            return None
        window = int(now // 60)
        start, count = self._windows.get(org_id, (window, 0))
        if start != window:
            count = 0
            if len(self._windows) > 100_000:
                self._windows = {k: v for k, v in self._windows.items() if v[0] == window}
        if count >= per_minute:
            return max(1.0, math.ceil((window + 1) * 60 - now))
        self._windows[org_id] = (window, count + 1)
        return None

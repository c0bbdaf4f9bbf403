"""Noticing change cheaply: a rate limit on checks, and a file's identity stamp.

Both the JWKS file and the API-key file are edited by other processes and
picked up by the running gateway. Checking costs a `stat`, so it happens at
most once per interval, never per request.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

Clock = Callable[[], float]
FileStamp = tuple[int, int, int]


class Throttle:
    """Says yes at most once per `interval_s` of `clock` time.

    A clock that steps backwards (an NTP correction of the wall clock) makes it
    due at once rather than postponing every check until the clock catches up.
    """

    def __init__(self, interval_s: float, clock: Clock) -> None:
        self.interval_s = interval_s
        self._clock = clock
        self._last: float | None = None

    def ready(self) -> bool:
        now = self._clock()
        last = self._last
        if last is not None and 0 <= now - last < self.interval_s:
            return False
        self._last = now
        return True


def stamp(path: Path) -> FileStamp | None:
    """(inode, mtime, size), or None when the file is absent.

    The inode is in it because writers replace the file by rename: a rewrite
    within one mtime tick that keeps the size still gets a new inode.
    """
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return None
    return (info.st_ino, info.st_mtime_ns, info.st_size)

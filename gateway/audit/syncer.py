"""`Syncer`: the fsyncs of one audit file (`audit.fsync` batch or always), on a thread
of its own.

Why a thread of its own rather than the audit log's worker thread: handing each
fsync to an executor costs the event loop a timer, a future, a thread hand-off and a
callback back onto the loop for every window, and each hand-off of the GIL between
the loop and a thread is dear on a busy loop. Here the loop's share is one flag test
per write (`wanted()`), one `Event.set()` per window, and nothing else. The thread
fsyncs what was written, then sleeps the window while the next records gather, so
under load it takes the GIL twice per window (after the sleep and after the fsync)
and never waits on an event; only in `always` mode (no window) does it call back onto
the loop, where answers wait for that fsync.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable

from gateway.audit.chain import AuditFile

log = logging.getLogger("gateway.audit")

RETRY_S = (0.05, 2.0)  # after a failed fsync: first and longest wait before the next try


class Syncer:
    def __init__(self, file: AuditFile, *, delay_s: float, loop: asyncio.AbstractEventLoop,
                 on_synced: Callable[[], None] | None = None) -> None:
        """`delay_s`: how long after a write its fsync may come (0: at once); `on_synced`
        is called on `loop` after each fsync."""
        self.file = file
        self.delay_s = delay_s
        self.ok = True              # False while fsync fails: the gateway refuses requests
        self._loop = loop
        self._on_synced = on_synced
        self._asked = False         # a write since the thread last looked (set on the loop)
        self._wake = threading.Event()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name=f"audit-sync-{file.path.name}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def wanted(self) -> None:
        """Something was written (on the loop, after each write): fsync it within delay_s.
        Wakes the thread only on the first write since its last look."""
        if not self._asked:
            self._asked = True
            self._wake.set()

    def stop(self, timeout: float = 2.0) -> None:
        """Blocking (run it off the loop): the thread ends after the fsync under way."""
        self._stopping = True
        self._wake.set()
        self._thread.join(timeout)

    def _run(self) -> None:
        delay = RETRY_S[0]
        while True:
            self._wake.wait()  # blocks only when nothing was written since the last fsync
            if self._stopping:
                return
            # Clear before the fsync reads what was written: a write after this point
            # asks again, and one before it is covered.
            self._wake.clear()
            self._asked = False
            try:
                self.file.sync()
            except OSError as exc:
                if self.ok:
                    log.error("audit file %s cannot be fsynced, refusing requests until it can: %r",
                              self.file.path, exc)
                self.ok = False
                self._asked = True
                self._wake.set()
                time.sleep(delay)
                delay = min(delay * 2, RETRY_S[1])
                continue
            self.ok, delay = True, RETRY_S[0]
            if self._on_synced is not None and not self._loop.is_closed():
                try:
                    self._loop.call_soon_threadsafe(self._on_synced)
                except RuntimeError:  # the loop closed meanwhile
                    return
            if self.delay_s:
                # The records written meanwhile share the next fsync: a record waits at most
                # this long (plus an fsync under way), and after a quiet spell not at all.
                time.sleep(self.delay_s)

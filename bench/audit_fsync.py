"""What each `audit.fsync` mode costs the process, the audit log alone on a busy loop.

    .venv/bin/python bench/audit_fsync.py                      # never, batch, always, batch-noop; 3 rounds
    .venv/bin/python bench/audit_fsync.py --modes never,batch --rounds 5 --seconds 3

Each run is a child process: an event loop (uvloop, as `gateway serve`) where 16
tasks each do a fixed amount of pure-Python work (a stand-in for the rest of a
request) and then `AuditLog.record()` a typical allowed request's record, waiting
for it as the request path does. Printed per run: records a second, the process's
user and system CPU per record, the audit threads' share of it, and the voluntary
context switches (each a thread giving up the CPU, e.g. to wait for the GIL). The
modes alternate, so a machine that gets busier mid-way shifts all of them alike.

`batch-noop` is `batch` with fdatasync(2) replaced by a no-op: the thread hand-offs
without the disk. Against `never` it shows what the hand-offs cost; against `batch`,
what the fsyncs themselves add.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODES = ("never", "batch", "always", "batch-noop")
WORK = 3600  # iterations of the stand-in work per record: ~150-300 µs of CPU on a 2020s core
ENTRY = {"time": "2026-12-03T11:00:00.000000Z", "decision_id": "0" * 32, "method": "POST",
         "path": "/v1/chat/completions", "org": "org-partner-us", "subject": "bench", "credential_id": "jwt:abc",
         "client_ip": "8.8.8.8", "observed_country": "US", "observed_region": None, "declared_country": "US",
         "anonymizer": False, "requested_model": "example-frontier-1", "model": "example-frontier-1",
         "stage": "limited_partner", "covered": True, "tier": "vetted_partner", "decision": "allow", "status": 200,
         "reasons": [], "error": None, "policy_version": "abc123", "decision_us": 12.3, "upstream_status": 200,
         "upstream_bytes": 400, "tokens": 20, "tokens_charged": 20, "credential_misuse": None, "would_deny": None,
         "revoked": None}


def work() -> int:
    total = 0
    for i in range(WORK):
        total += i
    return total


def thread_cpu_s() -> float:
    """CPU seconds of this process's threads other than the main one (the audit threads)."""
    total = 0.0
    main = threading.main_thread().native_id
    for tid in os.listdir("/proc/self/task"):
        if int(tid) == main:
            continue
        fields = Path(f"/proc/self/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


async def child(mode: str, seconds: float, directory: str) -> str:
    from gateway.audit.log import AuditLog
    from gateway.metrics import Metrics

    log = AuditLog(Path(directory) / "audit.jsonl", Metrics(), fsync=mode)  # type: ignore[arg-type]
    await log.start()
    count = 0
    stop = time.monotonic() + seconds

    async def requests() -> None:
        nonlocal count
        while time.monotonic() < stop:
            work()
            written = log.record(dict(ENTRY), wait=True)
            if written is not None:
                await written
            await asyncio.sleep(0)
            count += 1

    threads0, usage0, started = thread_cpu_s(), resource.getrusage(resource.RUSAGE_SELF), time.monotonic()
    await asyncio.gather(*(requests() for _ in range(16)))
    threads1, usage1, elapsed = thread_cpu_s(), resource.getrusage(resource.RUSAGE_SELF), time.monotonic() - started
    await log.close()
    user = (usage1.ru_utime - usage0.ru_utime) / count * 1e6
    system = (usage1.ru_stime - usage0.ru_stime) / count * 1e6
    switches = (usage1.ru_nvcsw - usage0.ru_nvcsw) / elapsed
    return (f"{count / elapsed:>9,.0f} {user:>8.1f} {system:>7.1f} {user + system:>8.1f} "
            f"{(threads1 - threads0) / count * 1e6:>8.1f} {switches:>8,.0f}")


def run_child(mode: str, seconds: float) -> str:
    with tempfile.TemporaryDirectory() as directory:
        code = (f"import asyncio, os, sys, uvloop; sys.path.insert(0, {str(ROOT)!r}); import bench.audit_fsync as b; "
                + ("os.fdatasync = lambda fd: None; " if mode.endswith("-noop") else "")
                + f"print(uvloop.run(b.child({mode.removesuffix('-noop')!r}, {seconds}, {directory!r})))")
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=directory)
        if done.returncode != 0:
            return f"failed: {done.stderr.strip().splitlines()[-1] if done.stderr.strip() else done.returncode}"
        return done.stdout.strip()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma-separated subset of {','.join(MODES)}")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=4.0, help="timed seconds per run")
    args = parser.parse_args(argv)
    modes = args.modes.split(",")
    print(f"audit.fsync cost per record, 16 tasks on one loop; load average {os.getloadavg()[0]:.2f} at the start")
    print(f"  {'time':<9}{'mode':<12}{'records/s':>9} {'user µs':>8} {'sys µs':>7} {'total µs':>8} "
          f"{'threads':>8} {'vcsw/s':>8}")
    for _ in range(args.rounds):
        for mode in modes:
            print(f"  {time.strftime('%H:%M:%S', time.gmtime()):<9}{mode:<12}{run_child(mode, args.seconds)}", flush=True)
    print(f"Load average {os.getloadavg()[0]:.2f} at the end ({os.cpu_count()} cores).")
    return 0


if __name__ == "__main__":
    sys.exit(main())

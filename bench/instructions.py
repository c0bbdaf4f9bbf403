"""Instructions per request, counted by valgrind's callgrind: a figure that does not move
with the machine's speed or load, for comparing two versions of the request path.

    .venv/bin/python bench/instructions.py                        # raw-asgi, gateway, gateway-fleet
    .venv/bin/python bench/instructions.py --targets gateway --seconds 20

The same set-up as bench/proxy.py (the demo upstream, a JWT, X-Forwarded-For 8.8.8.8,
the shipped policies/, audit and metrics). Each target runs under callgrind with its
instrumentation off until it is ready; then wrk keeps `--concurrency` requests in
flight for a warm-up, the counters are zeroed, and after `--seconds` more the
instructions the process executed in user space are divided by the requests answered
meanwhile: of every thread, and of the event loop's thread alone. Work done per
interval of time rather than per request (the audit file's fsync thread every 10 ms, timers)
is amortized over the ~50x fewer requests a second the target answers under callgrind,
so it weighs more here than in production, and more still when the machine is busy: the
event loop's figure leaves the fsync thread out. The kernel's work (system calls) is not counted: a
change that saves round trips or writes saves more than this shows. Under callgrind
the target runs ~50x slower, so a point answers a few hundred requests; repeated
runs agree within about 1%.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench._load import find_wrk, run_wrk, wrk_script  # noqa: E402
from bench.proxy import PATH, prepared, request_bodies, wrk_check  # noqa: E402

TARGETS = ("raw-asgi", "gateway", "gateway-fleet")


def callgrind(directory: Path) -> list[str]:
    return ["valgrind", "--tool=callgrind", "--instr-atstart=no", "--separate-threads=yes",
            f"--callgrind-out-file={directory}/callgrind.%p"]


def control(*argv: str) -> None:
    subprocess.run(["callgrind_control", *argv], check=True, capture_output=True, timeout=120)


def dumped_instructions(directory: Path, pid: int) -> dict[int, int]:
    """Instructions by thread (1 runs the event loop) in the last dump: callgrind writes one
    file per dump and thread, callgrind.<pid>.<dump>-<thread>, each with its `totals:`."""
    last: dict[int, tuple[int, int]] = {}
    for path in directory.glob(f"callgrind.{pid}.*-*"):
        dump, thread = (int(n) for n in path.name.rsplit(".", 1)[1].split("-"))
        match = re.search(r"^(?:totals|summary):\s+(\d+)", path.read_text(errors="replace"), re.MULTILINE)
        if match is None:
            raise RuntimeError(f"no totals in {path}")
        if dump >= last.get(thread, (0, 0))[0]:
            last[thread] = (dump, int(match.group(1)))
    return {thread: count for thread, (_, count) in last.items()}


async def measure(bench, name: str, args: argparse.Namespace,
                  headers: dict[str, str]) -> tuple[dict[int, int], int] | str:
    """(instructions by thread, requests answered) over the timed window, or why the target
    was skipped."""
    running = await bench.start(name)
    if isinstance(running, str):
        return running
    try:
        pid = str(running.servers[0].pid)  # valgrind runs the program in its own process
        url = running.url + PATH
        script = wrk_script("POST", headers, request_bodies()[0], wrk_check(running.gateway))
        control("--instr=on", pid)
        run_wrk(args.wrk, url, script, connections=args.concurrency, duration_s=args.warmup, timeout_s=30)
        control("--zero", pid)
        loaded = run_wrk(args.wrk, url, script, connections=args.concurrency, duration_s=args.seconds, timeout_s=30)
        control("--dump", pid)
        if loaded.failures:
            raise RuntimeError(f"{name}: {loaded.failures} failed checks")
        return dumped_instructions(bench.directory, running.servers[0].pid), loaded.completed
    finally:
        running.stop()


async def run(args: argparse.Namespace, directory: Path) -> int:
    args.install = True
    args.audit_fsync, args.audit_sign = None, False
    bench, headers = prepared(args, directory)
    bench.wrapper = callgrind(directory)
    bench.ready_timeout_s = 600.0
    results: dict[str, float] = {}
    loop_only: dict[str, float] = {}
    try:
        await bench.start_upstream()
        for name in args.targets:
            measured = await measure(bench, name, args, headers)
            if isinstance(measured, str):
                print(f"{name:<15} SKIPPED: {measured}", flush=True)
                continue
            by_thread, requests = measured
            results[name] = sum(by_thread.values()) / max(1, requests)
            loop_only[name] = by_thread.get(1, 0) / max(1, requests)
            print(f"{name:<15} {results[name]:>12,.0f} instructions/request, {loop_only[name]:>12,.0f} on the "
                  f"event loop's thread  ({requests:,} requests, {len(by_thread)} threads)", flush=True)
    finally:
        bench.stop()
    for name, base in (("gateway", "raw-asgi"), ("gateway-fleet", "gateway")):
        if results.get(name) and results.get(base):
            print(f"{name} vs {base}: {results[name] / results[base]:.2f}x "
                  f"(the event loop's thread: {loop_only[name] / loop_only[base]:.2f}x)")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--targets", default=",".join(TARGETS), type=lambda s: s.split(","))
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--seconds", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=5)
    args = parser.parse_args(argv)
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        parser.error("no valgrind: apt-get install valgrind")
    args.wrk = find_wrk()
    if args.wrk is None:
        parser.error("no wrk: apt-get install wrk")

    import uvloop

    with tempfile.TemporaryDirectory(prefix="bench-instructions-") as name:
        return uvloop.run(run(args, Path(name)))


if __name__ == "__main__":
    sys.exit(main())

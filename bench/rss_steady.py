"""Resident memory of `gateway serve` under steady load: flat, or growing?

    VENV=.venv scripts/with-redis .venv/bin/python bench/rss_steady.py --minutes 10              # embedded
    VENV=.venv scripts/with-redis .venv/bin/python bench/rss_steady.py --target gateway-fleet

The set-up of bench/proxy.py (the demo upstream, an RS256 JWT, X-Forwarded-For 8.8.8.8,
the shipped policies/, a quota, the audit file, metrics). wrk keeps `--concurrency`
requests in flight, in 30-second runs back to back (every answer checked by its Lua
script); VmRSS of the gateway's process is read between runs. After `--warmup`
seconds the samples must stay within `--tolerance` of the first one (issue 18: ±5%).
bench/soak.py does the same for a fleet with faults and floods; this is the plain case,
embedded mode included.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench._load import descendants, find_wrk, run_wrk, wrk_script  # noqa: E402
from bench.proxy import PATH, prepared, request_bodies, wrk_check  # noqa: E402

CHUNK_S = 30


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


async def run(args: argparse.Namespace, directory: Path) -> int:
    args.install, args.audit_fsync, args.audit_sign = False, None, False
    bench, headers = prepared(args, directory)
    try:
        await bench.start_upstream()
        running = await bench.start(args.target)
        if isinstance(running, str):
            print(f"{args.target}: {running}")
            return 1
        try:
            script = wrk_script("POST", headers, request_bodies()[0], wrk_check(True))
            pid = descendants(running.servers[0].pid)[-1]
            print(f"{args.target} (pid {pid}) at concurrency {args.concurrency} for {args.minutes:g} min; "
                  f"load average {os.getloadavg()[0]:.2f}", flush=True)
            started, samples, requests = time.monotonic(), [], 0
            while time.monotonic() - started < args.minutes * 60:
                loaded = run_wrk(args.wrk, running.url + PATH, script, connections=args.concurrency, duration_s=CHUNK_S)
                requests += loaded.completed
                at, rss = time.monotonic() - started, rss_kib(pid)
                if loaded.failures:
                    print(f"  {loaded.failures} answers failed their checks")
                    return 1
                if at >= args.warmup:
                    samples.append(rss)
                print(f"  {at:6.0f} s  {loaded.rps:7,.0f} req/s  VmRSS {rss:,} KiB", flush=True)
        finally:
            running.stop()
    finally:
        bench.stop()
    if not samples:
        print("no sample after the warm-up")
        return 1
    first, last, peak = samples[0], samples[-1], max(samples)
    flat = all(abs(s - first) <= first * args.tolerance / 100 for s in samples)
    print(f"{requests:,} requests; VmRSS after {args.warmup:g} s: first {first:,} KiB, last {last:,} "
          f"({(last - first) / first * 100:+.1f}%), max {peak:,} ({(peak - first) / first * 100:+.1f}%), "
          f"{len(samples)} samples: {'FLAT' if flat else 'NOT FLAT'} (±{args.tolerance:g}%); "
          f"load average {os.getloadavg()[0]:.2f} at the end")
    return 0 if flat else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", default="gateway", choices=("gateway", "gateway-fleet"))
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=60.0, help="seconds before the first counted sample")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--tolerance", type=float, default=5.0, help="percent")
    args = parser.parse_args(argv)
    args.wrk = find_wrk(install=False)
    if args.wrk is None:
        print("needs wrk (apt-get install wrk)")
        return 2
    with tempfile.TemporaryDirectory(prefix="bench-rss-") as directory:
        return asyncio.run(run(args, Path(directory)))


if __name__ == "__main__":
    sys.exit(main())

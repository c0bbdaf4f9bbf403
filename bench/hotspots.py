"""Profile `gateway serve` on its full allowed path under load, with py-spy.

    .venv/bin/pip install py-spy              # or: make bench-profile
    .venv/bin/python bench/hotspots.py                      # embedded, concurrency 16, 20 s
    .venv/bin/python bench/hotspots.py --target gateway-fleet --seconds 30 --svg profile.svg

The same set-up as bench/proxy.py (the demo upstream, a JWT, X-Forwarded-For 8.8.8.8,
the shipped policies/, audit and metrics); wrk keeps `--concurrency` requests in
flight while `py-spy record` samples the gateway process (every thread, on-CPU
samples only, `--rate` per second). Printed: the functions with the most self
time (samples where the function itself was running) and the most cumulative time
(samples where it was anywhere on the stack; Python frames only, without the
entry point and event loop frames that are on every stack), as percentages of
all samples, and the same by file. With `--native`, C frames (uvloop, httptools,
libc's write) get their own self time instead of their Python caller's. `--svg` also writes py-spy's flame graph; `--raw` keeps the
collapsed stacks for other tools (speedscope, flamegraph.pl).
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench._load import descendants, find_wrk, run_wrk, wrk_script  # noqa: E402
from bench.proxy import PATH, prepared, request_bodies, wrk_check  # noqa: E402

_FRAME = re.compile(r"^(?P<function>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")
_SITE = re.compile(r"^.*/(site-packages|lib/python3\.\d+)/")


def short(frame: str) -> tuple[str, str]:
    """(`function (file)`, file) for one collapsed-stack frame, paths shortened."""
    match = _FRAME.match(frame)
    if not match:
        return frame, frame
    file = _SITE.sub("", match["file"]).replace(str(ROOT) + "/", "")
    return f"{match['function']} ({file})", file


def aggregate(collapsed: str) -> tuple[int, Counter[str], Counter[str], Counter[str], Counter[str]]:
    """Samples in all; self and cumulative samples by function; the same by file."""
    total = 0
    own, cumulative, own_file, cumulative_file = Counter(), Counter(), Counter(), Counter()
    for line in collapsed.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [short(frame) for frame in stack.split(";")]
        frames = [f for f in frames if not f[0].startswith("process ") and not f[0].startswith("thread ")]
        if not frames:
            continue
        total += n
        own[frames[-1][0]] += n
        own_file[frames[-1][1]] += n
        for name in {name for name, file in frames if file.endswith(".py")}:
            cumulative[name] += n
        for file in {file for _, file in frames if file.endswith(".py")}:
            cumulative_file[file] += n
    # The frames on (almost) every stack say nothing: the entry point and the event loop's run.
    for counts in (cumulative, cumulative_file):
        for name, n in list(counts.items()):
            if n >= 0.97 * total:
                del counts[name]
    return total, own, cumulative, own_file, cumulative_file


def print_top(title: str, counts: Counter[str], total: int, top: int) -> None:
    print(f"\n{title}")
    for rank, (name, n) in enumerate(counts.most_common(top), 1):
        print(f"  {rank:>2}. {n * 100 / total:5.1f}%  {name}")


async def run(args: argparse.Namespace, directory: Path) -> int:
    args.install = True
    args.audit_fsync, args.audit_sign = None, False  # the gateway's defaults (bench/proxy.py can vary them)
    bench, headers = prepared(args, directory)
    try:
        await bench.start_upstream()
        running = await bench.start(args.target)
        if isinstance(running, str):
            print(f"{args.target}: {running}")
            return 1
        try:
            script = wrk_script("POST", headers, request_bodies()[0], wrk_check(True))
            url = running.url + PATH
            run_wrk(args.wrk, url, script, connections=args.concurrency, duration_s=2)  # warm-up
            pid = str(descendants(running.servers[0].pid)[-1])  # the process itself, or its last worker
            raw = Path(args.raw) if args.raw else directory / "profile.txt"
            spy = [args.py_spy, "record", "--pid", pid, "--rate", str(args.rate), "--duration", str(args.seconds),
                   "--format", "raw", "--output", str(raw)] + (["--native"] if args.native else []) + \
                (["--gil"] if args.gil else [])
            sampler = subprocess.Popen(spy, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            loaded = run_wrk(args.wrk, url, script, connections=args.concurrency, duration_s=args.seconds + 1)
            out = sampler.communicate(timeout=60)[0].decode(errors="replace")
            if args.svg:
                subprocess.run([args.py_spy, "record", "--pid", pid, "--rate", str(args.rate), "--duration", "5",
                                "--output", args.svg], capture_output=True)
            if not raw.exists():
                print(f"py-spy wrote no profile:\n{out}")
                return 1
            print(f"{args.target} (pid {pid}) under wrk at concurrency {args.concurrency}: {loaded.rps:,.0f} req/s, "
                  f"p50 {loaded.p50_us:,.0f} µs, {loaded.failures} failed checks (the sampler slows it down)")
            total, own, cumulative, own_file, cumulative_file = aggregate(raw.read_text())
            print(f"{total} samples at {args.rate}/s over {args.seconds} s (on-CPU, "
                  f"{'the thread holding the GIL' if args.gil else 'every thread'}{', with C frames' if args.native else ''})")
            print_top(f"Top {args.top} by self time (the function itself running)", own, total, args.top)
            print_top(f"Top {args.top} by cumulative time (the function anywhere on the stack)", cumulative, total, args.top)
            print_top("Self time by file", own_file, total, args.top)
            print_top("Cumulative time by file", cumulative_file, total, args.top)
            if args.raw:
                print(f"\ncollapsed stacks: {raw}")
            if args.svg:
                print(f"flame graph: {args.svg}")
            return 0
        finally:
            running.stop()
    finally:
        bench.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", default="gateway", choices=("gateway", "gateway-fleet", "raw-asgi", "starlette"))
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second (default 250)")
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--gil", action="store_true",
                        help="sample only the thread holding the GIL (else threads waiting for it count too)")
    parser.add_argument("--native", action="store_true", help="include C frames (uvloop, httptools, the kernel calls)")
    parser.add_argument("--svg", help="also write a flame graph here")
    parser.add_argument("--raw", help="keep the collapsed stacks in this file")
    args = parser.parse_args(argv)
    args.py_spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if args.py_spy is None:
        parser.error("no py-spy: .venv/bin/pip install py-spy (or make bench-profile)")
    args.wrk = find_wrk()
    if args.wrk is None:
        parser.error("no wrk: apt-get install wrk")

    import uvloop

    with tempfile.TemporaryDirectory(prefix="bench-hotspots-") as name:
        return uvloop.run(run(args, Path(name)))


if __name__ == "__main__":
    sys.exit(main())

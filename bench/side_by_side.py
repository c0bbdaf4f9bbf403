"""CPU per request of several proxies loaded at the same time, so that the machine's
drifting speed and other work weigh on each alike.

    .venv/bin/python bench/side_by_side.py                                   # raw-asgi, gateway, gateway-fleet
    .venv/bin/python bench/side_by_side.py --baseline /path/to/other/checkout --rounds 3

On this VM, targets measured one after the other (bench/proxy.py) move by ±20% between
runs of the same code, because the machine's speed drifts. Here every target runs at
once, each with its own wrk at `--concurrency` for `--seconds`, against one shared
upstream; each target's CPU (user + system, /proc) is divided by the requests it
answered in the same window. The targets share the 2 cores, so their requests per
second mean nothing; their CPU per request, and its ratios, are comparable. With
`--baseline DIR`, the gateway targets also run from the checkout in DIR (its gateway/
package, the same config), as `gateway@base` and `gateway-fleet@base`.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench._load import find_wrk, run_wrk, wrk_script  # noqa: E402
from bench.proxy import PATH, Bench, prepared, request_bodies, wrk_check  # noqa: E402


def baseline_bench(bench: Bench, base: Path) -> Bench:
    """The same set-up, with `base`'s gateway/ first on the targets' path."""
    env = dict(bench.env, PYTHONPATH=str(base))
    return Bench(bench.directory / "base", env, bench.token, bench.jwks, bench.args)


async def one_round(targets: dict[str, tuple[Bench, str]], headers: dict[str, str], args: argparse.Namespace,
                    body: bytes) -> dict[str, float]:
    running = {}
    try:
        for label, (bench, name) in targets.items():
            started = await bench.start(name)
            if isinstance(started, str):
                raise SystemExit(f"{label}: {started}")
            running[label] = started
        scripts = {label: wrk_script("POST", headers, body, wrk_check(r.gateway)) for label, r in running.items()}

        def load(label: str, seconds: float) -> object:
            return run_wrk(args.wrk, running[label].url + PATH, scripts[label], connections=args.concurrency,
                           duration_s=seconds)

        with ThreadPoolExecutor(len(running)) as pool:
            list(pool.map(lambda label: load(label, args.warmup), running))
            before = {label: r.proc.cpu_seconds() for label, r in running.items()}
            runs = dict(zip(running, pool.map(lambda label: load(label, args.seconds), running)))
            after = {label: r.proc.cpu_seconds() for label, r in running.items()}
        for label, run in runs.items():
            if run.failures:
                raise SystemExit(f"{label}: {run.failures} failed checks")
        return {label: (after[label] - before[label]) * 1e6 / runs[label].completed for label in running}
    finally:
        for r in running.values():
            r.stop()


async def run(args: argparse.Namespace, directory: Path) -> int:
    args.install, args.audit_fsync, args.audit_sign = True, None, False
    bench, headers = prepared(args, directory)
    try:
        await bench.start_upstream()
        targets: dict[str, tuple[Bench, str]] = {name: (bench, name) for name in args.targets}
        if args.baseline:
            base = baseline_bench(bench, Path(args.baseline).resolve())
            for name in args.targets:
                if name.startswith("gateway"):
                    targets[f"{name}@base"] = (base, name)
        rounds: dict[str, list[float]] = {label: [] for label in targets}
        for number in range(args.rounds):
            # Each round in fresh directories: a target's name is its directory.
            round_targets = {}
            for label, (owner, name) in targets.items():
                sub = Bench(owner.directory / f"round{number}-{label.replace('@', '-')}", owner.env, owner.token,
                            owner.jwks, owner.args)
                sub.directory.mkdir(parents=True)
                (sub.directory / "policy").symlink_to(directory / "policy")
                sub.upstream, sub.upstream_url, sub.redis_url = bench.upstream, bench.upstream_url, bench.ensure_redis()
                round_targets[label] = (sub, name)
            cpu = await one_round(round_targets, headers, args, request_bodies()[0])
            for label, value in cpu.items():
                rounds[label].append(value)
            print(f"round {number + 1}: " + ", ".join(f"{label} {value:,.0f}" for label, value in cpu.items())
                  + " µs CPU/request", flush=True)
    finally:
        bench.stop()
    medians = {label: statistics.median(values) for label, values in rounds.items()}
    print("\nmedian CPU µs/request: " + ", ".join(f"{label} {value:,.0f}" for label, value in medians.items()))
    for suffix in ("", "@base"):
        for name, base, goal in (("gateway", "raw-asgi", 1.5), ("gateway-fleet", "gateway", 1.25)):
            label, base_label = name + suffix, base if base == "raw-asgi" else base + suffix
            if label in rounds and base_label in rounds:
                ratios = sorted(a / b for a, b in zip(rounds[label], rounds[base_label]))
                print(f"{label} vs {base_label}: median {statistics.median(ratios):.2f}x of the rounds' ratios "
                      f"({', '.join(f'{r:.2f}' for r in ratios)}; goal <= {goal}x)")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--targets", default="raw-asgi,gateway,gateway-fleet", type=lambda s: s.split(","))
    parser.add_argument("--baseline", help="another checkout whose gateway/ runs beside this one's")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--warmup", type=float, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    args.wrk = find_wrk()
    if args.wrk is None:
        parser.error("no wrk: apt-get install wrk")

    import uvloop

    with tempfile.TemporaryDirectory(prefix="bench-side-by-side-") as name:
        return uvloop.run(run(args, Path(name)))


if __name__ == "__main__":
    sys.exit(main())

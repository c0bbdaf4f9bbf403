"""Benchmark the request path: the demo upstream called directly, and the same
requests through `gateway serve` on the full allowed path.

    .venv/bin/python bench/proxy.py            # about 2 minutes
    .venv/bin/python bench/proxy.py --quick    # about 20 seconds
    .venv/bin/python bench/proxy.py --duration 30 --warmup 3

Three processes: the demo upstream (`python -m gateway.demo_upstream --port 0`,
which records nothing when run standalone), the gateway (`gateway serve --config
FILE`, the command users run) and this one, the load generator (aiohttp, keep-alive
connections, bench/_load.py). The gateway runs the whole allowed path: a JWT (RS256,
verified against a JWKS file, signed by a key made here), the client address from
X-Forwarded-For (127.0.0.1 is a trusted proxy) looked up in the embedded GeoIP
database (8.8.8.8 -> US), the shipped policies/ at the real clock, the audit trail
to a file and Prometheus metrics. The caller is org-partner-us (a vetted US
partner) asking for example-frontier-1, which that policy allows today.

Points, each a fixed duration after a warm-up, direct and through the gateway in
the same run:

* concurrency 1 and 16: POST /v1/chat/completions: requests/s, latency p50/p99;
* concurrency 1, `"stream": true` (no delay between events): time from sending to
  the first body chunk (TTFB) p50/p99.

For each gateway point, the gateway process's CPU time per request (utime+stime
from /proc/<pid>/stat over the timed window; the upstream's and this process's
too, since all three share the machine's cores) and at the end its peak RSS
(VmHWM). The goal from the issue: the gateway adds at most 1 ms to the median
latency at concurrency 1.

Correctness is checked on every response, warm-up included: status 200, the
demo upstream's own response headers (`x-demo-upstream`, and
`x-demo-saw-gateway-headers` naming the gateway's forwarded `x-gateway-*`
headers, i.e. the upstream received the request from the gateway), an
`x-gateway-decision-id` on each gateway response (all distinct), the expected
body. At the end the audit file and /metrics must account for every request as
allowed, from US, answered 200 by the upstream. Any failure is printed and the
exit status is 1; a missed latency goal is reported, not an error.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402
from multidict import CIMultiDictProxy  # noqa: E402

from bench._load import (  # noqa: E402
    Point, ProcStat, Server, Target, clean_environment, free_port, machine_busy_seconds, run_point, wait_http_ok,
)

GOAL_ADDED_P50_US = 1000.0
NOISY_PERCENT = 15.0  # other processes' CPU use (% of one core) past which a point is flagged
ORG, MODEL, CLIENT_IP, COUNTRY = "org-partner-us", "example-frontier-1", "8.8.8.8", "US"
ISSUER, AUDIENCE, KID = "https://bench-idp.invalid/", "frontier-gateway", "bench"
PATH = "/v1/chat/completions"
PROMPT = "Hello from the proxy benchmark"
_DECISION_ID = re.compile(r"[0-9a-f]{32}")


# --------------------------------------------------------------------------- setup


def signing_key(directory: Path) -> tuple[str, Path]:
    """A fresh RS256 key: its public JWKS written to a file, and a token for ORG signed with it."""
    with warnings.catch_warnings(record=True):  # authlib.jose's deprecation notice (it forces "always")
        from authlib.jose import JsonWebKey, jwt

    key = JsonWebKey.generate_key("RSA", 2048, is_private=True, options={"kid": KID})
    public = key.as_dict(is_private=False) | {"kid": KID, "alg": "RS256", "use": "sig"}
    jwks = directory / "jwks.json"
    jwks.write_text(json.dumps({"keys": [public]}))
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": "bench@partner-us.example", "org_id": ORG,
              "iat": now, "exp": now + 24 * 3600}
    return jwt.encode({"alg": "RS256", "kid": KID}, claims, key).decode(), jwks


def write_config(directory: Path, upstream_url: str, jwks: Path, public: int, admin: int) -> Path:
    path = directory / "gateway.yaml"
    config = {
        "listen": f"127.0.0.1:{public}",
        "admin_listen": f"127.0.0.1:{admin}",
        "policy_dir": str(ROOT / "policies"),
        "state_dir": str(directory / "state"),
        "upstreams": {"default": {"url": upstream_url}},
        "trusted_proxies": ["127.0.0.1/32"],
        # geoip: not set, so the embedded DB-IP country database is used.
        "identity": {"jwt": {"jwks_file": str(jwks), "issuer": ISSUER, "audience": AUDIENCE,
                             "algorithms": ["RS256"]}},
        "audit": {"path": str(directory / "audit.jsonl")},
    }
    path.write_text(json.dumps(config, indent=2))  # JSON is YAML
    return path


def revision() -> str:
    """The commit measured, and whether gateway/ differs from it."""
    try:
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--", "gateway"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown (no git)"
    return f"{head or 'unknown'}" + (" + uncommitted changes in gateway/" if dirty else "")


def gateway_command() -> list[str]:
    script = Path(sys.executable).parent / "gateway"
    return [str(script)] if script.exists() else [sys.executable, "-m", "gateway"]


# --------------------------------------------------------------------------- checks


class Verifier:
    """Checks every response of one kind (direct or gateway) and keeps the tally."""

    def __init__(self, through_gateway: bool) -> None:
        self.through_gateway = through_gateway
        self.decision_ids: set[str] = set()
        self.duplicate_ids = 0
        self.checked = 0

    def __call__(self, stream: bool) -> Callable[[int, CIMultiDictProxy[str], bytes], str | None]:
        def check(status: int, headers: CIMultiDictProxy[str], body: bytes) -> str | None:
            self.checked += 1
            if status != 200:
                return f"status {status}: {body[:300]!r}"
            if self.through_gateway:
                decision_id = headers.get("x-gateway-decision-id", "")
                if not _DECISION_ID.fullmatch(decision_id):
                    return f"no x-gateway-decision-id header ({dict(headers)})"
                if decision_id in self.decision_ids:
                    self.duplicate_ids += 1
                    return f"decision id {decision_id} seen twice"
                self.decision_ids.add(decision_id)
                saw = set(headers.get("x-demo-saw-gateway-headers", "").split(","))
                if not {"x-gateway-decision-id", "x-gateway-org"} <= saw:
                    return f"the upstream did not see the gateway's headers (saw {sorted(saw)})"
            if headers.get("x-demo-upstream") != "demo":
                return f"no x-demo-upstream header: not answered by the demo upstream ({dict(headers)})"
            if stream:
                # One word per event, so the echoed prompt is split across events.
                complete = body.startswith(b"data: {") and body.endswith(b"data: [DONE]\n\n")
                if not complete or b'"finish_reason":"stop"' not in body or b'"content":"You "' not in body:
                    return f"not a complete SSE chat stream: {body[:200]!r}...{body[-60:]!r}"
            elif b"You said: " + PROMPT.encode() not in body:
                return f"unexpected body: {body[:300]!r}"
            return None

        return check


# --------------------------------------------------------------------------- measuring


@dataclass
class Pair:
    title: str
    direct: Point
    gateway: Point
    stream: bool


async def measure(target: Target, check: Any, concurrency: int, args: argparse.Namespace,
                  procs: dict[str, ProcStat]) -> Point:
    readings: dict[str, dict[str, float]] = {}

    def on_window(edge: str) -> None:
        readings[edge] = {name: proc.cpu_seconds() for name, proc in procs.items()}
        readings[edge]["machine"] = machine_busy_seconds()

    point = await run_point(target, concurrency=concurrency, duration_s=args.duration, warmup_s=args.warmup,
                            check=check, on_window=on_window)
    for name in [*procs, "machine"]:
        point.extra[f"cpu_{name}"] = readings["end"][name] - readings["start"][name]
    # What else ran on the machine meanwhile (other tests, builds): it competes for the same cores.
    point.extra["cpu_others"] = max(0.0, point.extra["cpu_machine"] - sum(point.extra[f"cpu_{n}"] for n in procs))
    return point


def cpu_us_per_request(point: Point, name: str) -> float:
    return point.extra[f"cpu_{name}"] / point.requests * 1e6 if point.requests else float("nan")


def cpu_busy(point: Point, name: str) -> float:
    """Percent of one core the process used during the timed window."""
    return point.extra[f"cpu_{name}"] / point.elapsed_s * 100 if point.elapsed_s else float("nan")


def _num(value: float, digits: int = 0) -> str:
    return "-" if value != value else f"{value:,.{digits}f}"  # NaN -> "-"


def print_pair(pair: Pair) -> None:
    d, g = pair.direct, pair.gateway
    print(f"\n== {pair.title}  (concurrency {g.concurrency}, {g.elapsed_s:.1f} s timed after warm-up)")
    rows: list[tuple[str, float, float, bool]] = [  # name, direct, gateway, show ratio
        ("requests (timed)", d.requests, g.requests, False),
        ("requests/s", d.rps, g.rps, True),
        ("latency p50 (µs)", d.latency_us(50), g.latency_us(50), True),
        ("latency p99 (µs)", d.latency_us(99), g.latency_us(99), True),
    ]
    if pair.stream:
        rows += [("TTFB p50 (µs)", d.ttfb_us(50), g.ttfb_us(50), True),
                 ("TTFB p99 (µs)", d.ttfb_us(99), g.ttfb_us(99), True)]
    rows += [
        ("gateway CPU/request (µs)", float("nan"), cpu_us_per_request(g, "gateway"), False),
        ("upstream CPU/request (µs)", cpu_us_per_request(d, "upstream"), cpu_us_per_request(g, "upstream"), True),
        ("client CPU/request (µs)", cpu_us_per_request(d, "client"), cpu_us_per_request(g, "client"), True),
        ("gateway CPU busy (%)", float("nan"), cpu_busy(g, "gateway"), False),
        ("upstream CPU busy (%)", cpu_busy(d, "upstream"), cpu_busy(g, "upstream"), False),
        ("client CPU busy (%)", cpu_busy(d, "client"), cpu_busy(g, "client"), False),
        ("other processes' CPU (%)", cpu_busy(d, "others"), cpu_busy(g, "others"), False),
        ("responses not 200 (all)", d.non_2xx, g.non_2xx, False),  # warm-up included
        ("failed checks (all)", d.failures, g.failures, False),
    ]
    print(f"  {'':28}{'direct':>12}{'gateway':>12}{'ratio':>9}")
    for name, dv, gv, ratio in rows:
        shown = f"{gv / dv:.2f}x" if ratio and dv == dv and dv else ""
        print(f"  {name:28}{_num(dv):>12}{_num(gv):>12}{shown:>9}")
    added = [("added latency p50 (µs)", g.latency_us(50) - d.latency_us(50)),
             ("added latency p99 (µs)", g.latency_us(99) - d.latency_us(99))]
    if pair.stream:
        added += [("added TTFB p50 (µs)", g.ttfb_us(50) - d.ttfb_us(50)),
                  ("added TTFB p99 (µs)", g.ttfb_us(99) - d.ttfb_us(99))]
    for name, value in added:
        print(f"  {name:28}{'':>12}{_num(value):>12}")
    for label, point in (("direct", d), ("gateway", g)):
        if cpu_busy(point, "others") > NOISY_PERCENT:
            print(f"  !! {label}: other processes used {cpu_busy(point, 'others'):.0f}% of a core during this point "
                  f"({os.cpu_count()} cores in all): its figures are pessimistic")
        if point.failures or point.non_2xx:
            print(f"  !! {label}: statuses {dict(point.statuses)}, {point.failures} failed checks, e.g.:")
            for example in point.failure_examples:
                print(f"     {example}")


# --------------------------------------------------------------------------- end-of-run accounting


def read_audit(path: Path, expected: int, timeout_s: float = 5.0) -> list[dict[str, Any]]:
    """The audit records, once `expected` of them are written (or the time is up)."""
    deadline = time.monotonic() + timeout_s
    while True:
        lines = path.read_text().splitlines() if path.exists() else []
        if len(lines) >= expected or time.monotonic() > deadline:
            return [json.loads(line) for line in lines]
        time.sleep(0.05)


def metric_sum(exposition: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in exposition.splitlines():
        if not line.startswith(name) or line.startswith("#"):
            continue
        series, _, value = line.rpartition(" ")
        if series.split("{")[0] != name:
            continue
        if all(f'{k}="{v}"' in series for k, v in labels.items()):
            total += float(value)
    return total


async def account(gateway_sent: int, audit_path: Path, admin_url: str) -> list[str]:
    """Cross-check the gateway's own records against what was sent; the problems found."""
    problems = []
    records = read_audit(audit_path, gateway_sent)
    summary = Counter(
        (r["decision"], r["status"], r["org"], r["observed_country"], r["client_ip"], r["model"], r["upstream_status"])
        for r in records
    )
    print(f"\nAudit trail ({audit_path.name}): {len(records)} records for {gateway_sent} requests sent to the gateway")
    for (decision, status, org, country, ip, model, upstream), count in summary.most_common(5):
        print(f"  {count:>8}  decision={decision} status={status} org={org} client_ip={ip} country={country} "
              f"model={model} upstream_status={upstream}")
    expected = ("allow", 200, ORG, COUNTRY, CLIENT_IP, MODEL, 200)
    if len(records) != gateway_sent:
        problems.append(f"audit has {len(records)} records, {gateway_sent} requests were sent")
    if set(summary) - {expected}:
        problems.append(f"audit records other than {expected}: {dict(summary)}")
    async with aiohttp.ClientSession() as session, session.get(admin_url + "/metrics") as response:
        exposition = await response.text()
    allowed = metric_sum(exposition, "gateway_requests_total", decision="allow")
    denied = metric_sum(exposition, "gateway_requests_total", decision="deny")
    upstream = metric_sum(exposition, "gateway_upstream_seconds_count")
    errors = metric_sum(exposition, "gateway_upstream_errors_total")
    print(f"Metrics: gateway_requests_total allow={allowed:.0f} deny={denied:.0f}, "
          f"gateway_upstream_seconds_count={upstream:.0f}, gateway_upstream_errors_total={errors:.0f}")
    if (allowed, denied, upstream, errors) != (gateway_sent, 0, gateway_sent, 0):
        problems.append(f"metrics do not account for {gateway_sent} allowed, forwarded requests")
    return problems


# --------------------------------------------------------------------------- main


async def run(args: argparse.Namespace, directory: Path) -> int:
    started = time.monotonic()
    env = clean_environment(("GATEWAY_",))  # the bench's config, not the caller's overrides
    # Measure the gateway/ beside this file, whatever the virtual environment has installed.
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    token, jwks = signing_key(directory)
    servers: list[Server] = []
    try:
        upstream = Server("demo upstream", [sys.executable, "-m", "gateway.demo_upstream", "--port", "0"],
                          directory / "upstream.log", env=env, cwd=ROOT)
        servers.append(upstream)
        upstream_url = upstream.wait_for_line(r"listening on (http://\S+)").group(1)
        await wait_http_ok(upstream_url + "/v1/models", server=upstream)

        public, admin = free_port(), free_port()
        config = write_config(directory, upstream_url, jwks, public, admin)
        gateway = Server("gateway", [*gateway_command(), "serve", "--config", str(config)],
                         directory / "gateway.log", env=env, cwd=directory)
        servers.append(gateway)
        gateway_url, admin_url = f"http://127.0.0.1:{public}", f"http://127.0.0.1:{admin}"
        await wait_http_ok(admin_url + "/readyz", server=gateway)

        procs = {"gateway": ProcStat(gateway.pid), "upstream": ProcStat(upstream.pid), "client": ProcStat(os.getpid())}
        rss_ready = procs["gateway"].rss_kib
        print(f"Frontier Gateway proxy benchmark — Python {platform.python_version()}, {os.cpu_count()} CPUs, "
              f"aiohttp {aiohttp.__version__}")
        print(f"  code      {revision()}")
        print(f"  upstream  {upstream_url}  pid {upstream.pid}  (python -m gateway.demo_upstream; records nothing)")
        print(f"  gateway   {gateway_url}  pid {gateway.pid}  ({' '.join(gateway_command()[-1:])} serve --config "
              f"{config.name}), admin {admin_url}")
        print(f"  request   POST {PATH} model={MODEL} as {ORG} (RS256 JWT), X-Forwarded-For {CLIENT_IP} "
              f"(-> {COUNTRY}), policies/ at the real clock")
        print(f"  points    {args.duration:g} s timed after {args.warmup:g} s warm-up; concurrency 1 and "
              f"{args.concurrency}; stream TTFB at concurrency 1")
        print(f"  gateway RSS when ready: {rss_ready / 1024:.1f} MiB; setup took {time.monotonic() - started:.1f} s",
              flush=True)

        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {token}", "X-Forwarded-For": CLIENT_IP}
        plain = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": PROMPT}]}).encode()
        streamed = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": PROMPT}],
                               "stream": True}).encode()
        direct_check, gateway_check = Verifier(False), Verifier(True)
        pairs: list[Pair] = []
        plan = [("chat completion", plain, False, 1), ("chat completion", plain, False, args.concurrency),
                ("streamed chat completion (SSE), time to first byte", streamed, True, 1)]
        for title, body, stream, concurrency in plan:
            direct = await measure(Target("POST", upstream_url + PATH, headers, body, stream), direct_check(stream),
                                   concurrency, args, procs)
            through = await measure(Target("POST", gateway_url + PATH, headers, body, stream), gateway_check(stream),
                                    concurrency, args, procs)
            pair = Pair(title, direct, through, stream)
            pairs.append(pair)
            print_pair(pair)
            sys.stdout.flush()

        peak = procs["gateway"].peak_rss_kib
        gateway_sent = sum(p.gateway.sent for p in pairs)
        direct_sent = sum(p.direct.sent for p in pairs)
        problems = await account(gateway_sent, directory / "audit.jsonl", admin_url)

        failed = {label: sum(getattr(p, label).failures for p in pairs) for label in ("direct", "gateway")}
        statuses: dict[str, Counter[int]] = {"direct": Counter(), "gateway": Counter()}
        for p in pairs:
            statuses["direct"].update(p.direct.statuses)
            statuses["gateway"].update(p.gateway.statuses)
        print(f"\nEvery response checked: direct {direct_sent} sent, statuses {dict(statuses['direct'])}, "
              f"{failed['direct']} failed checks; gateway {gateway_sent} sent, statuses {dict(statuses['gateway'])}, "
              f"{failed['gateway']} failed checks, {len(gateway_check.decision_ids)} distinct decision ids")
        if failed["direct"] or failed["gateway"]:
            problems.append("some responses failed their checks (see the !! lines above)")
        print(f"Gateway memory: RSS {rss_ready / 1024:.1f} MiB when ready, peak (VmHWM) {peak / 1024:.1f} MiB")

        if gateway.process.poll() is not None or upstream.process.poll() is not None:
            problems.append("a server exited during the run")
        c1 = pairs[0]
        added = c1.gateway.latency_us(50) - c1.direct.latency_us(50)
        verdict = ("NOT ASSESSED, the responses were wrong" if problems
                   else "MET" if added <= GOAL_ADDED_P50_US else "NOT MET")
        print(f"\nGoal: the gateway adds <= {GOAL_ADDED_P50_US / 1000:g} ms to p50 latency at concurrency 1: "
              f"{verdict} (added {added / 1000:.3f} ms: gateway p50 "
              f"{c1.gateway.latency_us(50):,.0f} µs - direct p50 {c1.direct.latency_us(50):,.0f} µs)")
        for problem in problems:
            print(f"PROBLEM: {problem}")
        print(f"Total time {time.monotonic() - started:.0f} s.")
        return 1 if problems else 0
    finally:
        for server in reversed(servers):
            server.stop()
        log = directory / "gateway.log"
        text = log.read_text(errors="replace") if log.exists() else ""
        noisy = [line for line in text.splitlines() if " ERROR " in line or "Traceback" in line]
        if noisy:
            print(f"\nThe gateway logged {len(noisy)} error lines, e.g.:\n  " + "\n  ".join(noisy[:5]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="short points (2 s after 0.5 s warm-up): about 20 s")
    parser.add_argument("--duration", type=float, help="seconds timed per point (default 15; --quick 2)")
    parser.add_argument("--warmup", type=float, help="seconds of warm-up per point (default 2; --quick 0.5)")
    parser.add_argument("--concurrency", type=int, default=16, help="the high concurrency point (default 16)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (config, logs, audit)")
    args = parser.parse_args(argv)
    args.duration = args.duration if args.duration is not None else (2.0 if args.quick else 15.0)
    args.warmup = args.warmup if args.warmup is not None else (0.5 if args.quick else 2.0)
    if args.duration <= 0 or args.warmup < 0 or args.concurrency < 1:
        parser.error("--duration must be > 0, --warmup >= 0, --concurrency >= 1")

    import uvloop

    if args.keep:
        directory = Path(tempfile.mkdtemp(prefix="bench-proxy-"))
        print(f"(keeping {directory})")
        return uvloop.run(run(args, directory))
    with tempfile.TemporaryDirectory(prefix="bench-proxy-") as name:
        return uvloop.run(run(args, Path(name)))


if __name__ == "__main__":
    sys.exit(main())

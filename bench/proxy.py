"""Benchmark the request path against its floors, in one run on this machine: the
same fast upstream called directly, through nginx, through bare Python
pass-through proxies, and through `gateway serve` on the full allowed path.

    .venv/bin/python bench/proxy.py --quick    # about 1.5 minutes
    .venv/bin/python bench/proxy.py            # about 6 minutes
    .venv/bin/python bench/proxy.py --targets direct,raw-asgi,gateway --concurrency 16
    make bench-proxy                           # the full run, with Redis for the fleet targets

Targets (each started, measured and stopped in turn; the upstream runs throughout):

  direct            the demo upstream itself (`python -m gateway.demo.upstream`, records nothing)
  nginx             Debian's nginx as a reverse proxy (1 worker, keep-alive upstream, no buffering)
  raw-asgi          bench/floor.py --kind raw: a bare ASGI callable forwarding with aiohttp
  starlette         bench/floor.py --kind starlette: the same through Starlette routing and responses
  gateway           `gateway serve`, embedded mode (local state), the full allowed path
  gateway-fleet     `gateway serve` in fleet mode (Redis: quotas, live state, audit stream), 1 worker
  gateway-fleet-w2  the same with `--workers 2`

The full allowed path: an RS256 JWT verified against a JWKS file, the client
address from X-Forwarded-For (127.0.0.1 is a trusted proxy) looked up in the
embedded GeoIP database (8.8.8.8 -> US), the shipped policies/ at the real clock
(org-partner-us asking for example-frontier-1: allowed) plus a quota for its tier
far above what is sent (requests per minute and tokens per day: both counted on
every request, in Redis in fleet mode), the audit trail to a file (and to the Redis stream in fleet mode) and Prometheus
metrics. The floors and nginx forward the same request untouched.

Points: POST /v1/chat/completions at each concurrency (default 1, 16, 64), by wrk
(one thread, keep-alive connections, a Lua script that checks every response;
`--client aiohttp` uses bench/_load.py's Python generator instead): requests/s,
latency p50/p99, and the CPU time per request of the proxy's processes
(utime+stime from /proc over the timed window, nginx's and the workers' summed
with their parent's). Then per target the time to first byte of a streamed
answer (`"stream": true`, SSE) at concurrency 1 with the aiohttp client (wrk
cannot time a first byte), and the proxy's peak memory (VmHWM, summed over its
processes). The load generator and the upstream share the machine's cores with
the proxy: their CPU per request and what other processes used are printed too.

Correctness, on every response (warm-up included): status 200, answered by the
demo upstream (`x-demo-upstream`), the expected body; through the gateway also a
fresh `x-gateway-decision-id` and the upstream having seen the gateway's
headers. At the end of each gateway target its audit files (one per worker) and
/metrics (one per worker) must account for every request written, each audit
file's hash chain must verify, and every record must be an allowed request from
US answered 200 by the upstream — except those wrk abandoned in flight when its
time ran out, which must be recorded as client disconnects. Any failure is
printed and the exit status is 1; a missed performance goal is reported, not an
error.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402
from multidict import CIMultiDictProxy  # noqa: E402

from bench._load import (  # noqa: E402
    ProcStat, ProcTree, Server, Target, WrkCheck, clean_environment, find_wrk, free_port, machine_busy_seconds,
    run_point, run_wrk, wait_http_ok, wrk_script,
)

TARGETS = ("direct", "nginx", "raw-asgi", "starlette", "gateway", "gateway-fleet", "gateway-fleet-w2")
FLOOR = "raw-asgi"
# The goals of issue 18, as ratios measured in one run (so that the machine's speed cancels):
# the full allowed path against the raw-ASGI floor, and fleet mode against embedded.
GOAL_CPU_VS_FLOOR = 1.5          # embedded CPU per request at concurrency 16, at most
GOAL_RPS_VS_FLOOR = 0.65         # embedded req/s at concurrency 16, at least
GOAL_ADDED_P50_VS_FLOOR = 1.5    # p50 added over direct at concurrency 1, at most
GOAL_TTFB_OVER_FLOOR_US = 300.0  # SSE first byte (p50) later than the floor's, at most
GOAL_FLEET_CPU_VS_EMBEDDED = 1.25  # fleet mode (one worker) CPU per request at concurrency 16, at most
NOISY_PERCENT = 15.0  # other processes' CPU use (% of one core) past which a point is flagged
ORG, TIER, MODEL, CLIENT_IP, COUNTRY = "org-partner-us", "vetted_partner", "example-frontier-1", "8.8.8.8", "US"
ISSUER, AUDIENCE, KID = "https://bench-idp.invalid/", "frontier-gateway", "bench"
PATH = "/v1/chat/completions"
PROMPT = "Hello from the proxy benchmark"
_DECISION_ID = re.compile(r"[0-9a-f]{32}")


# --------------------------------------------------------------------------- setup


def signing_key(directory: Path) -> tuple[str, Path]:
    """A fresh RS256 key: its public JWKS written to a file, and a token for ORG signed with it."""
    from joserfc import jwt
    from joserfc.jwk import generate_key

    key = generate_key("RSA", 2048, {"kid": KID})
    public = key.as_dict(private=False) | {"kid": KID, "alg": "RS256", "use": "sig"}
    jwks = directory / "jwks.json"
    jwks.write_text(json.dumps({"keys": [public]}))
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": "bench@partner-us.example", "org_id": ORG,
              "iat": now, "exp": now + 24 * 3600}
    return jwt.encode({"alg": "RS256", "kid": KID}, claims, key), jwks


def bench_policy(directory: Path) -> Path:
    """The shipped policies/ with a per-tier quota far above what the bench sends, so that every
    request runs the quota step (a request count, and a token count fed from each answer)."""
    policy = directory / "policy"
    shutil.copytree(ROOT / "policies", policy)
    framework = policy / "framework.yaml"
    framework.write_text(framework.read_text() + "\n# bench/proxy.py: every request pays the quota step, none is refused\n"
                         f"quotas:\n  {TIER}: {{requests_per_minute: 1000000000, tokens_per_day: 1000000000000}}\n")
    return policy


def write_config(directory: Path, upstream_url: str, jwks: Path, public: int, admin: int,
                 redis: dict[str, str] | None = None, audit: dict[str, Any] | None = None) -> Path:
    """`audit`: more keys of the audit section (--audit-fsync, --audit-sign)."""
    path = directory / "gateway.yaml"
    config = {
        "listen": f"127.0.0.1:{public}",
        "admin_listen": f"127.0.0.1:{admin}",
        "policy_dir": str(directory.parent / "policy"),
        "state_dir": str(directory / "state"),
        "upstreams": {"default": {"url": upstream_url}},
        "trusted_proxies": ["127.0.0.1/32"],
        # The embedded DB-IP country database (no country_db), whatever its age: the bench
        # measures the request path, not the data's freshness (docs/operators.md).
        "geoip": {"max_age_days": 3650},
        "identity": {"jwt": {"jwks_file": str(jwks), "issuer": ISSUER, "audience": AUDIENCE,
                             "algorithms": ["RS256"]}},
        "audit": {"path": str(directory / "audit.jsonl"), **(audit or {})},
    }
    if redis is not None:
        config["redis"] = redis
    path.write_text(json.dumps(config, indent=2))  # JSON is YAML
    return path


def nginx_config(directory: Path, port: int, upstream_port: int) -> Path:
    """A self-contained reverse proxy: one worker (as the gateway has one process), keep-alive to the
    upstream, no buffering (streams pass as they come), no access log."""
    temp = directory / "temp"
    temp.mkdir(parents=True, exist_ok=True)
    os.chmod(temp, 0o777)  # nginx's worker runs as another user when started as root
    path = directory / "nginx.conf"
    path.write_text(f"""daemon off;
master_process on;
worker_processes 1;
pid {directory}/nginx.pid;
error_log {directory}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {temp}/body;
    proxy_temp_path {temp}/proxy;
    fastcgi_temp_path {temp}/fastcgi;
    uwsgi_temp_path {temp}/uwsgi;
    scgi_temp_path {temp}/scgi;
    keepalive_requests 10000000;
    upstream bench_upstream {{
        server 127.0.0.1:{upstream_port};
        keepalive 128;
        keepalive_requests 10000000;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://bench_upstream;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
        }}
    }}
}}
""")
    return path


def free_ports(count: int) -> int:
    """The first of `count` consecutive free ports (`serve --workers N`: admin port + k)."""
    for _ in range(50):
        first = free_port()
        try:
            for port in range(first, first + count):
                import socket

                with socket.socket() as probe:
                    probe.bind(("127.0.0.1", port))
            return first
        except OSError:
            continue
    raise RuntimeError("no run of free ports")


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


def request_bodies() -> tuple[bytes, bytes]:
    messages = [{"role": "user", "content": PROMPT}]
    return (json.dumps({"model": MODEL, "messages": messages}).encode(),
            json.dumps({"model": MODEL, "messages": messages, "stream": True}).encode())


def wrk_check(through_gateway: bool) -> WrkCheck:
    """bench/_load.py's Lua checks: what `Verifier` checks on a plain answer."""
    if not through_gateway:
        return WrkCheck(body_contains=b"You said: " + PROMPT.encode(), header_equals={"x-demo-upstream": "demo"})
    return WrkCheck(body_contains=b"You said: " + PROMPT.encode(), header_equals={"x-demo-upstream": "demo"},
                    header_contains={"x-demo-saw-gateway-headers": ["x-gateway-decision-id", "x-gateway-org"]},
                    unique_header="x-gateway-decision-id")


class Verifier:
    """Checks every response of one target (aiohttp client) and keeps the tally."""

    def __init__(self, through_gateway: bool) -> None:
        self.through_gateway = through_gateway
        self.decision_ids: set[str] = set()

    def __call__(self, stream: bool) -> Callable[[int, CIMultiDictProxy[str], bytes], str | None]:
        def check(status: int, headers: CIMultiDictProxy[str], body: bytes) -> str | None:
            if status != 200:
                return f"status {status}: {body[:300]!r}"
            if self.through_gateway:
                decision_id = headers.get("x-gateway-decision-id", "")
                if not _DECISION_ID.fullmatch(decision_id):
                    return f"no x-gateway-decision-id header ({dict(headers)})"
                if decision_id in self.decision_ids:
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


# --------------------------------------------------------------------------- targets


@dataclass
class Running:
    """One target's servers, up and ready."""

    name: str
    url: str
    gateway: bool
    servers: list[Server] = field(default_factory=list)
    proc: ProcTree | None = None  # the proxy's processes (None: direct)
    audit_files: list[Path] = field(default_factory=list)
    admin_urls: list[str] = field(default_factory=list)
    rss_ready_kib: int = 0
    describe: str = ""

    def stop(self) -> None:
        for server in reversed(self.servers):
            server.stop()

    def alive(self) -> bool:
        return all(server.process.poll() is None for server in self.servers)


class Bench:
    """The upstream, and every target on demand, in one temporary directory."""

    def __init__(self, directory: Path, env: dict[str, str], token: str, jwks: Path, args: argparse.Namespace) -> None:
        self.directory, self.env, self.token, self.jwks, self.args = directory, env, token, jwks, args
        self.upstream: Server | None = None
        self.upstream_url = ""
        self.redis: Server | None = None
        self.redis_url: str | None = None
        self.notes: list[str] = []
        # A command the Python targets run under (bench/instructions.py: valgrind), and how
        # long they may then take to start.
        self.wrapper: list[str] = []
        self.ready_timeout_s = 30.0

    def audit_options(self) -> dict[str, Any]:
        options: dict[str, Any] = {}
        if self.args.audit_fsync:
            options["fsync"] = self.args.audit_fsync
        if self.args.audit_sign:
            key = self.directory / "audit-signing.pem"
            if not key.exists():
                subprocess.run([sys.executable, "-m", "gateway", "audit", "keygen", "--out", str(key)], env=self.env,
                               check=True, capture_output=True)
            options["signing_key_file"] = str(key)
        return options

    async def start_upstream(self) -> None:
        self.upstream = Server("demo upstream", [sys.executable, "-m", "gateway.demo.upstream", "--port", "0"],
                               self.directory / "upstream.log", env=self.env, cwd=ROOT)
        self.upstream_url = self.upstream.wait_for_line(r"listening on (http://\S+)").group(1)
        await wait_http_ok(self.upstream_url + "/v1/models", server=self.upstream)

    def ensure_redis(self) -> str | None:
        """$REDIS_URL, else a private redis-server, else None (the fleet targets are skipped)."""
        if self.redis_url is None:
            self.redis_url = os.environ.get("REDIS_URL")
        if self.redis_url is None:
            binary = os.environ.get("REDIS_SERVER_BIN") or shutil.which("redis-server")
            if binary is None:
                return None
            port = free_port()
            self.redis = Server("redis", [binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "",
                                          "--appendonly", "no"], self.directory / "redis.log", env=self.env)
            self.redis.wait_for_line(r"Ready to accept connections")
            self.redis_url = f"redis://127.0.0.1:{port}/0"
        return self.redis_url

    def stop(self) -> None:
        for server in (self.upstream, self.redis):
            if server is not None:
                server.stop()

    async def start(self, name: str) -> Running | str:
        """The target, running; or why it was skipped."""
        if name == "direct":
            return Running(name, self.upstream_url, False, describe=f"{self.upstream_url} (the demo upstream)")
        directory = self.directory / name
        directory.mkdir()
        if name == "nginx":
            from devtools.fleet_local import find_nginx, install_nginx

            nginx = find_nginx() or (install_nginx(sys.stdout) if self.args.install else None)
            if nginx is None:
                return "no nginx (apt-get install nginx needs root; or pass --targets without nginx)"
            port = free_port()
            config = nginx_config(directory, port, int(self.upstream_url.rsplit(":", 1)[1]))
            server = Server("nginx", [nginx, "-p", str(directory), "-c", str(config), "-e", str(directory / "error.log")],
                            directory / "nginx.out", env=self.env)
            running = Running(name, f"http://127.0.0.1:{port}", False, [server], describe=f"{nginx}, 1 worker")
            await wait_http_ok(running.url + "/v1/models", server=server)
        elif name in ("raw-asgi", "starlette"):
            port = free_port()
            kind = "raw" if name == "raw-asgi" else "starlette"
            server = Server(name, [*self.wrapper, sys.executable, str(ROOT / "bench" / "floor.py"), "--kind", kind,
                                   "--upstream", self.upstream_url, "--port", str(port)], directory / "floor.log",
                            env=self.env)
            running = Running(name, f"http://127.0.0.1:{port}", False, [server],
                              describe=f"bench/floor.py --kind {kind}")
            await wait_http_ok(running.url + "/v1/models", self.ready_timeout_s, server=server)
        else:
            workers = 2 if name.endswith("-w2") else 1
            redis = None
            if name.startswith("gateway-fleet"):
                url = self.ensure_redis()
                if url is None:
                    return "no Redis (set REDIS_URL, put redis-server on PATH, or run under scripts/with-redis)"
                redis = {"url": url, "namespace": f"bench-{os.getpid()}-{id(self)}-{name}"}
            public, admin = free_port(), free_ports(workers)
            config = write_config(directory, self.upstream_url, self.jwks, public, admin, redis, self.audit_options())
            command = [*self.wrapper, sys.executable, "-m", "gateway"] if self.wrapper else gateway_command()
            argv = [*command, "serve", "--config", str(config)] + (["--workers", str(workers)] if workers > 1 else [])
            server = Server(name, argv, directory / "gateway.log", env=self.env, cwd=directory)
            running = Running(name, f"http://127.0.0.1:{public}", True, [server],
                              admin_urls=[f"http://127.0.0.1:{admin + k}" for k in range(workers)],
                              describe=f"gateway serve{' --workers 2' if workers > 1 else ''}, "
                                       f"{'fleet mode (' + redis['url'] + ')' if redis else 'embedded mode'}")
            running.audit_files = ([directory / "audit.jsonl"] if workers == 1
                                   else [directory / f"audit-w{k}.jsonl" for k in range(workers)])
            for admin_url in running.admin_urls:
                await wait_http_ok(admin_url + "/readyz", self.ready_timeout_s, server=server)
        running.proc = ProcTree(running.servers[0].pid)
        running.rss_ready_kib = running.proc.rss_kib
        return running


# --------------------------------------------------------------------------- measuring


@dataclass
class Measured:
    target: str
    concurrency: int
    requests: int  # timed
    elapsed_s: float
    rps: float
    p50_us: float
    p99_us: float
    cpu: dict[str, float]  # seconds over the timed window: proxy, upstream, client, others
    sent: int = 0  # every request written, warm-up included
    failures: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)

    def cpu_us(self, who: str) -> float:
        value = self.cpu.get(who)
        return value / self.requests * 1e6 if value is not None and self.requests else float("nan")

    def busy(self, who: str) -> float:
        value = self.cpu.get(who)
        return value / self.elapsed_s * 100 if value is not None and self.elapsed_s else float("nan")


class Meter:
    """CPU time of the proxy, the upstream and this process, and the machine's, across a window."""

    def __init__(self, running: Running, upstream: Server) -> None:
        self.procs: dict[str, Any] = {"upstream": ProcStat(upstream.pid), "bench": ProcStat(os.getpid())}
        if running.proc is not None:
            self.procs["proxy"] = running.proc
        self.readings: dict[str, dict[str, float]] = {}

    def __call__(self, edge: str) -> None:
        self.readings[edge] = {name: proc.cpu_seconds() for name, proc in self.procs.items()}
        self.readings[edge]["machine"] = machine_busy_seconds()

    def deltas(self) -> dict[str, float]:
        start, end = self.readings["start"], self.readings["end"]
        return {name: end[name] - start[name] for name in start}


async def measure_wrk(bench: Bench, running: Running, concurrency: int, body: bytes, headers: dict[str, str]) -> Measured:
    args = bench.args
    script = wrk_script("POST", headers, body, wrk_check(running.gateway))
    url = running.url + PATH
    loop = asyncio.get_running_loop()
    warm = None
    if args.warmup > 0:
        warm = await loop.run_in_executor(None, lambda: run_wrk(args.wrk, url, script, connections=concurrency,
                                                                duration_s=args.warmup))
    meter = Meter(running, bench.upstream)
    meter("start")
    timed = await loop.run_in_executor(None, lambda: run_wrk(args.wrk, url, script, connections=concurrency,
                                                             duration_s=args.duration))
    meter("end")
    cpu = meter.deltas()
    cpu["client"] = timed.cpu_s
    cpu["others"] = max(0.0, cpu["machine"] - sum(v for k, v in cpu.items() if k not in ("machine", "bench")) )
    runs = [timed] if warm is None else [warm, timed]
    return Measured(running.name, concurrency, timed.completed, timed.duration_s, timed.rps, timed.p50_us,
                    timed.p99_us, cpu, sent=sum(r.sent for r in runs), failures=sum(r.failures for r in runs),
                    statuses=sum((r.statuses for r in runs), Counter()),
                    examples=[e for r in runs for e in r.examples][:5])


async def measure_aiohttp(bench: Bench, running: Running, concurrency: int, body: bytes, headers: dict[str, str],
                          check: Any, stream: bool, duration: float, warmup: float) -> Measured:
    meter = Meter(running, bench.upstream)
    point = await run_point(Target("POST", running.url + PATH, headers, body, stream), concurrency=concurrency,
                            duration_s=duration, warmup_s=warmup, check=check, on_window=meter)
    cpu = meter.deltas()
    cpu["client"] = cpu.pop("bench")
    cpu["others"] = max(0.0, cpu["machine"] - sum(v for k, v in cpu.items() if k != "machine"))
    measured = Measured(running.name, concurrency, point.requests, point.elapsed_s, point.rps, point.latency_us(50),
                        point.latency_us(99), cpu, sent=point.sent, failures=point.failures, statuses=point.statuses,
                        examples=point.failure_examples)
    if stream:
        measured.p50_us, measured.p99_us = point.ttfb_us(50), point.ttfb_us(99)  # the time to first byte
    return measured


# --------------------------------------------------------------------------- end-of-target accounting


def read_records(paths: list[Path], expected: int, timeout_s: float = 5.0) -> list[dict[str, Any]]:
    """The audit records of all `paths`, once `expected` of them are written (or the time is up)."""
    deadline = time.monotonic() + timeout_s
    while True:
        lines = [line for path in paths if path.exists() for line in path.read_text().splitlines()
                 if '"type":"checkpoint"' not in line]  # signed checkpoints are no requests
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


async def account(running: Running, sent: int, abandoned_max: int, completed_ok: int) -> tuple[list[str], str]:
    """Cross-check the gateway's own records against what was sent: (problems, summary line).

    `sent` counts every request written. wrk abandons at most `abandoned_max` in flight when its
    time runs out: it exits, its kernel resets the connections, and a request the gateway had not
    read yet is lost with the reset (never received); one it had read is recorded as a client
    disconnect. Nothing else may differ: every other record is an allowed request answered 200."""
    from gateway.audit import verify

    problems = []
    records = read_records(running.audit_files, sent)
    clean = ("allow", 200, ORG, COUNTRY, CLIENT_IP, MODEL, 200)
    kinds = Counter((r["decision"], r["status"], r["org"], r["observed_country"], r["client_ip"], r["model"],
                     r["upstream_status"]) for r in records)
    disconnected = [r for r in records if r.get("error") == "client_disconnected"]
    odd = [r for r in records if (r["decision"], r["status"], r["org"], r["observed_country"], r["client_ip"],
                                  r["model"], r["upstream_status"]) != clean and r.get("error") != "client_disconnected"]
    if not sent - abandoned_max <= len(records) <= sent:
        problems.append(f"{running.name}: audit has {len(records)} records, {sent} requests were sent "
                        f"({abandoned_max} at most abandoned in flight)")
    if odd:
        problems.append(f"{running.name}: audit records other than {clean} or a client disconnect: "
                        f"{dict(Counter(json.dumps(r, sort_keys=True)[:300] for r in odd[:3]))}")
    if len(disconnected) + (sent - len(records)) > abandoned_max:
        problems.append(f"{running.name}: {len(disconnected)} client disconnects recorded and "
                        f"{sent - len(records)} requests unrecorded; at most {abandoned_max} were abandoned in flight")
    if kinds[clean] < completed_ok:
        problems.append(f"{running.name}: {kinds[clean]} clean allow records, {completed_ok} checked 200 answers")
    ids = {r["decision_id"] for r in records}
    if len(ids) != len(records):
        problems.append(f"{running.name}: {len(records) - len(ids)} decision ids recorded twice")
    chains = []
    for path in running.audit_files:
        result = verify([path])
        chains.append(f"{path.name}: " + ("chain ok, " if result.ok else "CHAIN BROKEN, ")
                      + ", ".join(f"replica {name} seq {end.first_seq}..{end.last_seq}"
                                  for name, end in result.replicas.items()))
        if not result.ok:
            problems.append(f"{running.name}: {path.name}: the hash chain does not verify: {result.as_json()}")
    if len(running.audit_files) > 1:
        replicas = [name for path in running.audit_files for name in verify([path]).replicas]
        if len(set(replicas)) != len(running.audit_files):
            problems.append(f"{running.name}: audit files do not each hold one distinct replica: {replicas}")
    allowed = denied = upstream = errors = 0.0
    async with aiohttp.ClientSession() as session:
        for admin_url in running.admin_urls:
            async with session.get(admin_url + "/metrics") as response:
                exposition = await response.text()
            allowed += metric_sum(exposition, "gateway_requests_total", decision="allow")
            denied += metric_sum(exposition, "gateway_requests_total", decision="deny")
            upstream += metric_sum(exposition, "gateway_upstream_seconds_count")
            errors += metric_sum(exposition, "gateway_upstream_errors_total")
    if (allowed, denied, errors) != (len(records), 0, 0) or not kinds[clean] <= upstream <= len(records):
        problems.append(f"{running.name}: metrics (allow={allowed:.0f} deny={denied:.0f} upstream={upstream:.0f} "
                        f"upstream errors={errors:.0f}) do not match the {len(records)} audit records")
    summary = (f"{running.name}: {sent} sent; audit {len(records)} records ({kinds[clean]} allowed+200, "
               f"{len(disconnected)} client disconnects and {sent - len(records)} never received, all abandoned "
               f"by wrk in flight at its end); "
               f"{'; '.join(chains)}; metrics allow={allowed:.0f} deny={denied:.0f} upstream answers={upstream:.0f}")
    return problems, summary


# --------------------------------------------------------------------------- printing


def _num(value: float, digits: int = 0) -> str:
    return "-" if value != value else f"{value:,.{digits}f}"  # NaN -> "-"


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if a == a and b == b and b else "-"


def print_points(concurrency: int, points: dict[str, Measured], args: argparse.Namespace) -> None:
    print(f"\n== POST {PATH}, concurrency {concurrency} ({args.duration:g} s timed after {args.warmup:g} s warm-up, "
          f"{args.client})")
    head = (f"  {'target':<17}{'req/s':>8}{'p50 µs':>9}{'p99 µs':>9}{'proxy CPU':>10}{'proxy':>7}{'upstr.':>8}"
            f"{'client':>8}{'others':>7} | {'vs direct:':<10}{'req/s':>7}{'+p50 µs':>9}{'+p99 µs':>9} | "
            f"{'vs raw-asgi:':<12}{'req/s':>7}{'CPU':>7}")
    print(head)
    print(f"  {'':<17}{'':>8}{'':>9}{'':>9}{'µs/req':>10}{'busy%':>7}{'µs/req':>8}{'µs/req':>8}{'busy%':>7} |")
    direct, floor = points.get("direct"), points.get(FLOOR)
    for name, m in points.items():
        vs_direct = ("", "", "")
        if direct is not None and name != "direct":
            vs_direct = (_ratio(m.rps, direct.rps), _num(m.p50_us - direct.p50_us), _num(m.p99_us - direct.p99_us))
        vs_floor = ("", "")
        if floor is not None and name.startswith("gateway"):
            vs_floor = (_ratio(m.rps, floor.rps), _ratio(m.cpu_us("proxy"), floor.cpu_us("proxy")))
        print(f"  {name:<17}{_num(m.rps):>8}{_num(m.p50_us):>9}{_num(m.p99_us):>9}{_num(m.cpu_us('proxy')):>10}"
              f"{_num(m.busy('proxy')):>7}{_num(m.cpu_us('upstream')):>8}{_num(m.cpu_us('client')):>8}"
              f"{_num(m.busy('others')):>7} | {'':<10}{vs_direct[0]:>7}{vs_direct[1]:>9}{vs_direct[2]:>9} | "
              f"{'':<12}{vs_floor[0]:>7}{vs_floor[1]:>7}")
    for name, m in points.items():
        if m.busy("others") > NOISY_PERCENT:
            print(f"  !! {name}: other processes used {m.busy('others'):.0f}% of a core meanwhile "
                  f"({os.cpu_count()} cores in all): its figures are pessimistic")
        if m.failures:
            print(f"  !! {name}: statuses {dict(m.statuses)}, {m.failures} failed checks, e.g.:")
            for example in m.examples:
                print(f"     {example}")


def print_streams(streams: dict[str, Measured], args: argparse.Namespace) -> None:
    print(f"\n== streamed chat completion (SSE): time to first byte, concurrency 1 ({args.stream_duration:g} s timed, "
          f"aiohttp client)")
    print(f"  {'target':<17}{'TTFB p50 µs':>12}{'p99 µs':>9}{'+p50 µs':>9}{'+p99 µs':>9}{'streams/s':>10}")
    direct = streams.get("direct")
    for name, m in streams.items():
        added = (_num(m.p50_us - direct.p50_us), _num(m.p99_us - direct.p99_us)) if direct and name != "direct" else ("", "")
        print(f"  {name:<17}{_num(m.p50_us):>12}{_num(m.p99_us):>9}{added[0]:>9}{added[1]:>9}{_num(m.rps):>10}")
        if m.failures:
            print(f"  !! {name}: statuses {dict(m.statuses)}, {m.failures} failed checks, e.g.: {m.examples[:2]}")


def print_memory(memory: dict[str, tuple[int, int, int]]) -> None:
    print("\n== memory of the proxy's processes (VmRSS when ready, VmHWM peak at the end; summed over processes)")
    print(f"  {'target':<17}{'processes':>10}{'ready MiB':>11}{'peak MiB':>10}")
    for name, (count, ready, peak) in memory.items():
        print(f"  {name:<17}{count:>10}{ready / 1024:>11.1f}{peak / 1024:>10.1f}")


def print_goals(points: dict[int, dict[str, Measured]], streams: dict[str, Measured]) -> None:
    print("\n== goals (issue 18): the full allowed path against the raw-ASGI floor, fleet mode against embedded")

    def line(text: str, met: bool | None, detail: str) -> None:
        print(f"  {text:<62} {'MET' if met else 'NOT MET' if met is not None else 'not measured'}  {detail}")

    def get(c: int, name: str) -> Measured | None:
        return points.get(c, {}).get(name)

    def ratio(what: str, value: float | None, base: float | None, limit: float, *, at_most: bool = True) -> None:
        known = value is not None and base is not None and value == value and base == base and base > 0
        measured = value / base if known else float("nan")  # type: ignore[operator]
        met = None if not known else measured <= limit if at_most else measured >= limit
        line(f"{what} {'<=' if at_most else '>='} {limit:g}x", met,
             f"({_ratio(value, base) if known else '-'}: {_num(value) if value is not None else '-'} vs "
             f"{_num(base) if base is not None else '-'})")

    g16, f16, floor16 = get(16, "gateway"), get(16, "gateway-fleet"), get(16, FLOOR)
    ratio("embedded CPU/req at c16 vs raw-asgi", g16 and g16.cpu_us("proxy"), floor16 and floor16.cpu_us("proxy"),
          GOAL_CPU_VS_FLOOR)
    ratio("embedded req/s at c16 vs raw-asgi", g16 and g16.rps, floor16 and floor16.rps, GOAL_RPS_VS_FLOOR,
          at_most=False)
    g1, floor1, d1 = get(1, "gateway"), get(1, FLOOR), get(1, "direct")
    ratio("added p50 at c1 (over direct) vs raw-asgi's", g1 and d1 and g1.p50_us - d1.p50_us,
          floor1 and d1 and floor1.p50_us - d1.p50_us, GOAL_ADDED_P50_VS_FLOOR)
    gs, fs = streams.get("gateway"), streams.get(FLOOR)
    later = gs.p50_us - fs.p50_us if gs and fs else float("nan")
    line(f"SSE first byte (p50) within +{GOAL_TTFB_OVER_FLOOR_US / 1000:g} ms of raw-asgi's",
         None if later != later else later <= GOAL_TTFB_OVER_FLOOR_US,
         f"({'+' if later >= 0 else ''}{_num(later)} µs: {_num(gs.p50_us) if gs else '-'} vs "
         f"{_num(fs.p50_us) if fs else '-'})")
    ratio("fleet CPU/req at c16 vs embedded", f16 and f16.cpu_us("proxy"), g16 and g16.cpu_us("proxy"),
          GOAL_FLEET_CPU_VS_EMBEDDED)
    for c in sorted(points):
        one, two = get(c, "gateway-fleet"), get(c, "gateway-fleet-w2")
        if one and two:
            line(f"throughput scales with workers (fleet, concurrency {c})", two.rps > one.rps * 1.1,
                 f"(1 worker {_num(one.rps)} req/s, 2 workers {_num(two.rps)} req/s: {_ratio(two.rps, one.rps)}"
                 f" on {os.cpu_count()} cores shared with the upstream and the client)")


# --------------------------------------------------------------------------- main


def prepared(args: argparse.Namespace, directory: Path) -> tuple[Bench, dict[str, str]]:
    """The benchmark's set-up in `directory` (the shipped policies with a quota, an RS256 key and
    its JWKS, the environment the targets run in) and the allowed request's headers; for
    bench/hotspots.py and bench/rss_steady.py too."""
    env = clean_environment(("GATEWAY_",))  # the bench's config, not the caller's overrides
    # Measure the gateway/ beside this file, whatever the virtual environment has installed.
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    token, jwks = signing_key(directory)
    bench_policy(directory)
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {token}", "X-Forwarded-For": CLIENT_IP}
    return Bench(directory, env, token, jwks, args), headers


async def run(args: argparse.Namespace, directory: Path) -> int:
    started = time.monotonic()
    bench, headers = prepared(args, directory)
    plain, streamed = request_bodies()
    points: dict[int, dict[str, Measured]] = {c: {} for c in args.concurrency}
    streams: dict[str, Measured] = {}
    memory: dict[str, tuple[int, int, int]] = {}
    problems: list[str] = []
    accounts: list[str] = []
    skipped: list[str] = []
    load1 = os.getloadavg()[0]
    try:
        await bench.start_upstream()
        print(f"Frontier Gateway proxy benchmark — Python {platform.python_version()}, {os.cpu_count()} CPUs, "
              f"aiohttp {aiohttp.__version__}, load average {load1:.2f} at the start")
        print(f"  code      {revision()}")
        print(f"  upstream  {bench.upstream_url}  (python -m gateway.demo.upstream; records nothing)")
        print(f"  request   POST {PATH} model={MODEL} as {ORG} (RS256 JWT), X-Forwarded-For {CLIENT_IP} "
              f"(-> {COUNTRY}), policies/ at the real clock + a {TIER} quota never reached")
        print(f"  client    {args.client_described}")
        print(f"  points    {args.duration:g} s timed after {args.warmup:g} s warm-up at concurrency "
              f"{', '.join(map(str, args.concurrency))}; SSE first byte {args.stream_duration:g} s at concurrency 1",
              flush=True)
        for name in args.targets:
            running = await bench.start(name)
            if isinstance(running, str):
                print(f"\n-- {name}: SKIPPED: {running}", flush=True)
                skipped.append(f"{name}: {running}")
                continue
            print(f"\n-- {name}: {running.url}  {running.describe}", flush=True)
            try:
                verifier = Verifier(running.gateway)
                sent = abandoned = completed_ok = 0
                for concurrency in args.concurrency:
                    if args.client == "wrk":
                        m = await measure_wrk(bench, running, concurrency, plain, headers)
                        abandoned += 2 * concurrency  # warm-up and timed run
                    else:
                        m = await measure_aiohttp(bench, running, concurrency, plain, headers, verifier(False), False,
                                                  args.duration, args.warmup)
                    points[concurrency][name] = m
                    sent += m.sent
                    completed_ok += sum(m.statuses.values()) - m.failures
                    print(f"   concurrency {concurrency:>3}: {_num(m.rps):>7} req/s, p50 {_num(m.p50_us)} µs, "
                          f"p99 {_num(m.p99_us)} µs, proxy CPU {_num(m.cpu_us('proxy'))} µs/req, "
                          f"{m.failures} failed checks", flush=True)
                s = await measure_aiohttp(bench, running, 1, streamed, headers, verifier(True), True,
                                          args.stream_duration, args.warmup)
                streams[name] = s
                sent += s.sent
                completed_ok += sum(s.statuses.values()) - s.failures
                print(f"   SSE first byte: p50 {_num(s.p50_us)} µs, p99 {_num(s.p99_us)} µs", flush=True)
                failed = sum(p[name].failures for p in points.values() if name in p) + s.failures
                if failed:
                    problems.append(f"{name}: {failed} responses failed their checks (see the !! lines)")
                if running.proc is not None:
                    memory[name] = (running.proc.processes, running.rss_ready_kib, running.proc.peak_rss_kib)
                if running.gateway:
                    found, summary = await account(running, sent, abandoned, completed_ok)
                    problems += found
                    accounts.append(summary)
                if not running.alive():
                    problems.append(f"{name}: a server exited during the run")
            finally:
                running.stop()
                for server in running.servers:
                    text = server.log_text()
                    noisy = [line for line in text.splitlines() if " ERROR " in line or "Traceback" in line]
                    if noisy:
                        print(f"   {server.name} logged {len(noisy)} error lines, e.g.:\n     " + "\n     ".join(noisy[:5]))

        print("\n" + "=" * 100)
        for concurrency in args.concurrency:
            print_points(concurrency, points[concurrency], args)
        print_streams(streams, args)
        print_memory(memory)
        print("\n== accounting (every request the gateway was sent is in its audit trail and /metrics)")
        for line in accounts:
            print(f"  {line}")
        print_goals(points, streams)
        for line in skipped:
            print(f"SKIPPED: {line}")
        load_end = os.getloadavg()[0]
        print(f"Load average {load1:.2f} at the start, {load_end:.2f} at the end ({os.cpu_count()} cores).")
        for problem in problems:
            print(f"PROBLEM: {problem}")
        print(f"Total time {time.monotonic() - started:.0f} s.")
        return 1 if problems else 0
    finally:
        bench.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="short points (1 s after 1 s warm-up): about 1.5 minutes")
    parser.add_argument("--duration", type=float, help="seconds timed per point (default 10; --quick 1)")
    parser.add_argument("--warmup", type=float, help="seconds of warm-up per point (default 2; --quick 1)")
    parser.add_argument("--stream-duration", type=float, help="seconds timed for SSE first byte (default 5; --quick 1)")
    parser.add_argument("--concurrency", default="1,16,64", help="comma-separated (default 1,16,64)")
    parser.add_argument("--targets", default=",".join(TARGETS), help=f"comma-separated subset of {','.join(TARGETS)}")
    parser.add_argument("--client", choices=("auto", "wrk", "aiohttp"), default="auto",
                        help="load generator for the req/s points (auto: wrk when available or installable)")
    parser.add_argument("--no-install", dest="install", action="store_false",
                        help="never apt-get install wrk or nginx (as root they are installed when missing)")
    parser.add_argument("--audit-fsync", choices=("always", "batch", "never"),
                        help="the gateway targets' audit.fsync (default: the gateway's default)")
    parser.add_argument("--audit-sign", action="store_true",
                        help="give the gateway targets an audit signing key (signed checkpoints)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (configs, logs, audit)")
    args = parser.parse_args(argv)
    args.duration = args.duration if args.duration is not None else (1.0 if args.quick else 10.0)
    args.warmup = args.warmup if args.warmup is not None else (1.0 if args.quick else 2.0)
    args.stream_duration = args.stream_duration if args.stream_duration is not None else (1.0 if args.quick else 5.0)
    try:
        args.concurrency = [int(c) for c in args.concurrency.split(",")]
    except ValueError:
        parser.error("--concurrency: comma-separated integers")
    args.targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    unknown = set(args.targets) - set(TARGETS)
    if unknown or args.duration <= 0 or args.warmup < 0 or min(args.concurrency) < 1:
        parser.error(f"unknown targets {sorted(unknown)}" if unknown else
                     "--duration must be > 0, --warmup >= 0, --concurrency >= 1")
    if args.client != "aiohttp":
        args.wrk = find_wrk(install=args.install)
        if args.wrk is None and args.client == "wrk":
            parser.error("--client wrk: no wrk (apt-get install wrk)")
        if args.wrk is None:
            print("bench: no wrk (and it could not be installed): the aiohttp load generator is used instead; "
                  "it costs ~4x the CPU per request on the same cores, so every figure is pessimistic")
        args.client = "wrk" if args.wrk else "aiohttp"
    if args.client == "wrk":
        version = subprocess.run([args.wrk, "-v"], capture_output=True, text=True).stdout.split("\n")[0]
        args.duration = max(1.0, round(args.duration))  # wrk counts whole seconds
        args.warmup = max(1.0, round(args.warmup)) if args.warmup else 0.0
        args.client_described = (f"{version.strip() or 'wrk'} ({args.wrk}): 1 thread, N keep-alive connections, a Lua "
                                 "script checking every answer; SSE first byte: aiohttp (bench/_load.py)")
    else:
        args.client_described = "aiohttp (bench/_load.py): N keep-alive connections, every answer checked"

    import uvloop

    if args.keep:
        directory = Path(tempfile.mkdtemp(prefix="bench-proxy-"))
        print(f"(keeping {directory})")
        return uvloop.run(run(args, directory))
    with tempfile.TemporaryDirectory(prefix="bench-proxy-") as name:
        return uvloop.run(run(args, Path(name)))


if __name__ == "__main__":
    sys.exit(main())

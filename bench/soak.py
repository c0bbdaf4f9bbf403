"""Soak and faults: the `make fleet` topology under steady load for SOAK_MINUTES while
Redis is restarted and paused, the upstream stalls and drops connections, and the
policy is reloaded every 30 s. Run on demand: `make soak` (SOAK_MINUTES=10), or

    .venv/bin/python bench/soak.py --minutes 10 --out soak.json

The fleet is devtools/fleet_local.py's `LocalFleet` (nginx, else its Python load
balancer; N replicas; the demo upstream), with three of its hooks: a private Redis
with an append-only file (a restart keeps the API keys, the policy and the audit
stream, as a production Redis would), the demo upstream's journal (what reached
it, from outside the gateway), and a short upstream read timeout (so a stall is a
504 within seconds). The policy bundle is a copy of policies/ in the work directory.

Load: `--rate` requests per second, at most `--concurrency` in flight, a fixed mix of
classes (CLASSES): allowed chat completions and SSE streams, and requests that must
be denied: an embargoed country (X-Forwarded-For through the trusted balancer), an
org that is not in the policy, a bad credential, an unvetted org asking for a
covered model. Every request is tagged (x-demo-tag) so the upstream's journal shows
its class.

Faults (`--faults`, cycled, one every `--fault-every` s from `--fault-offset`):
redis_restart (stop, `--redis-down` s, start on the same port), redis_pause
(SIGSTOP for `--redis-down` s, SIGCONT), upstream_stall and upstream_drop (for
`--upstream-window` s half of all requests carry x-demo-fault: stall past the read
timeout, or drop mid-response). A fault's window runs from its start to its end plus
`--grace` s (the replicas' staleness budget and resync). Policy reloads every
`--reload-every` s alternate between editing the bundle's files + SIGHUP to one
replica and a live change through one replica's admin API (a suspension of a model
the load never asks for, created, then lifted), and wait until every replica has
the new policy version.

Acceptance (exit status 1 if any fails): no 500; every request of a denied class
denied (status >= 400) and none in the upstream's journal; every decision id the
upstream saw audited as allowed (or forwarded, then failed upstream); each replica's RSS, sampled every `--rss-every` s
after `--warmup` s, flat (last and max within `--rss-tolerance` of the first, and the second half of the run
within a quarter of that: a leak keeps growing where bounded structures have filled);
every answer's x-gateway-decision-id in exactly one record across the replicas'
audit files and exactly once in the Redis audit stream; every chain verifies
(gateway/audit/verification.py); gateway_audit_lost_total 0 on every replica;
every reload in force on every replica. Reported too: requests by class and status,
5xx inside and outside fault windows, achieved requests/s. Results: `--out` (JSON).

Floods (`--floods`: all, off, or a comma-separated list of bench/soak_floods.py's
classes): one cheap client's attacks beside the normal mix, `--flood-rate` requests per
second in flood-on windows of `--flood-window` s that alternate with flood-off windows
of the same length (off first), from a process of their own. Acceptance adds: every
flood request got an answer right for its class (refused as the issue requires, or a
slow or idle connection closed within `--head-deadline`/`--body-deadline` +
`--deadline-slack`); the upstream's journal holds no request of a class that must never
be forwarded, the forwarded header tricks arrived intact, the token-quota org stayed in
its budget (`--quota-tokens` a day, plus one request per replica); no audit record
longer than `--audit-record-max` bytes; the legitimate requests' p99 in flood-on
windows within `--p99-factor` of the flood-off windows' (allowed answers outside fault
windows, `--flood-settle` s after each switch left out); the legitimate load as usual
outside fault windows. Reported: the harness's own CPU and event-loop lag, each fleet
process's CPU, Redis memory.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import itertools
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))  # devtools/ is never installed
from _load import ProcStat, ProcTree  # noqa: E402
from soak_floods import (BY_NAME as FLOODS_BY_NAME, FLOODS, QUOTA_MAX_TOKENS, QUOTA_PROMPT, Spec,  # noqa: E402
                         journal_violations, p99_check, percentile, phase, quota_check, verdict, windows_for)

from gateway.audit.verification import verify, verify_lines  # noqa: E402
from gateway.demo.command import AUDIENCE, IR, ISSUER, SHIPPED_POLICIES, US, bearer, chat  # noqa: E402
from devtools.fleet_local import LB_SOURCE, FleetError, LocalFleet, _redis_answers  # noqa: E402

UNKNOWN_ORG = "org-soak-unregistered"  # a key exists for it; the policy has never heard of it
RELOAD_ORG = "org-soak-reload"  # edited into organizations.yaml by file reloads; the load never uses it
LIVE_MODEL = "example-frontier-3"  # suspended and lifted by admin-API reloads; the load never asks for it
QUOTA_ORG = "org-soak-quota"  # a daily token budget (--quota-tokens); only the quota floods use it


@dataclass(frozen=True)
class Class:
    name: str
    allowed: bool
    weight: int
    expect: int  # the status when nothing is failing


CLASSES = (
    Class("allowed_chat", True, 4, 200),
    Class("allowed_stream", True, 2, 200),
    Class("denied_embargoed_country", False, 1, 451),
    Class("denied_unknown_org", False, 1, 403),
    Class("denied_bad_token", False, 1, 401),
    Class("denied_unvetted_covered_model", False, 1, 404),  # conceal_unreleased: a limited rollout is a 404
)
BY_NAME = {c.name: c for c in CLASSES}


@dataclass
class Settings:
    minutes: float = 10.0
    replicas: int = 2
    lb: str = "auto"
    rate: float = 175.0
    concurrency: int = 256
    # Five minutes: the flood classes' first windows fill the bounded memos (4,096 client
    # addresses per replica) and take the allocator to its high-water mark; growth after
    # that is what a leak looks like.
    warmup: float = 300.0
    rss_every: float = 10.0
    rss_tolerance: float = 0.10
    reload_every: float = 30.0
    faults: list[str] = field(default_factory=lambda: ["redis_restart", "upstream_stall", "upstream_drop", "redis_pause"])
    fault_every: float = 60.0
    fault_offset: float = 40.0
    redis_down: float = 8.0  # past the replicas' 5 s staleness budget: the fail-closed 503s are exercised too
    upstream_window: float = 10.0
    grace: float = 6.0
    read_timeout: float = 2.0
    out: Path = Path("soak.json")
    workdir: Path | None = None
    seed: int = 1
    floods: list[str] = field(default_factory=lambda: [f.name for f in FLOODS])
    flood_rate: float = 60.0  # with --rate 175 and half the time flooded: 205 requests/s on average
    flood_window: float = 20.0  # 45 windows of each kind in 30 minutes; fault and reload periods fall in both
    flood_settle: float = 3.0
    conn_flood: int = 128
    head_deadline: float = 60.0  # nginx's client_header_timeout
    body_deadline: float = 60.0
    deadline_slack: float = 5.0
    endless_bytes: int = 8 * 1024 * 1024
    quota_tokens: int = 500  # spent within the first flood window; the quota floods then test that it holds
    audit_record_max: int = 4096  # a record of a 2048-byte path (the router's limit) fits; a 7 KiB one does not
    p99_factor: float = 2.0
    p99_min_samples: int = 200


@dataclass(slots=True)
class Result:
    cls: str
    started: float  # seconds since the load began
    ended: float
    status: int | None  # None: no answer (a transport error before the status line)
    outcome: str  # ok | cut (the body was cut short) | no_answer
    decision_id: str | None
    fault: str | None


@dataclass
class Window:
    kind: str
    start: float
    end: float  # the fault's own end; the window counted runs to end + grace
    detail: str = ""


@dataclass
class Reload:
    number: int
    kind: str
    at: float
    replica: str
    version: str | None = None
    in_force_after_s: float | None = None
    error: str | None = None


# ---------------------------------------------------------------- requests


class Requests:
    """Builds each class's request, with the fleet's demo credentials."""

    def __init__(self, fleet: LocalFleet, unknown_org_key: str, bad_jwt: str) -> None:
        assert fleet.credentials is not None
        self.keys = fleet.credentials.keys
        self.unknown_org_key = unknown_org_key
        self.bad_jwt = bad_jwt
        self.counter = itertools.count()

    def build(self, cls: str) -> tuple[dict[str, str], dict[str, Any]]:
        n = next(self.counter)
        text = f"soak {cls} {n}"
        if cls == "allowed_chat":
            return bearer(self.keys["org-developer-us"], US), chat("example-small-1", text)
        if cls == "allowed_stream":
            return bearer(self.keys["org-developer-us"], US), chat("example-small-1", text, stream=True)
        if cls == "denied_embargoed_country":
            return bearer(self.keys["org-partner-us"], IR), chat("example-small-1", text)
        if cls == "denied_unknown_org":
            return bearer(self.unknown_org_key, US), chat("example-small-1", text)
        if cls == "denied_bad_token":  # alternately a key that does not exist and a JWT signed by a stranger
            credential = f"fgw_{'x' * 43}" if n % 2 else self.bad_jwt
            return bearer(credential, US), chat("example-small-1", text)
        if cls == "denied_unvetted_covered_model":
            return bearer(self.keys["org-developer-us"], US), chat("example-frontier-2", text)
        raise ValueError(cls)


def stranger_jwt() -> str:
    """A well-formed token for a real org, signed by a key the gateway does not trust (same kid)."""
    from joserfc import jwt
    from joserfc.jwk import generate_key

    key = generate_key("RSA", 2048, {"kid": "demo"})
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": "mallory", "org_id": "org-gov-evaluator", "iat": now,
              "exp": now + 7 * 24 * 3600}
    return jwt.encode({"alg": "RS256", "kid": "demo"}, claims, key)


def api_key(fleet: LocalFleet, org: str) -> str:
    from gateway.identity.redis_keys import RedisApiKeyStore

    assert fleet.redis_url and fleet.namespace
    store = RedisApiKeyStore(fleet.redis_url, namespace=fleet.namespace, timeout_s=2.0)
    try:
        return store.create(org, "soak")[1]
    finally:
        asyncio.run(store.close())


def add_quota_org(policy_dir: Path, tokens_per_day: int) -> None:
    """The org the token-quota floods use, at the top of the soak's copy of the registry (the
    file reloads rewrite only what follows their own marker)."""
    path = policy_dir / "organizations.yaml"
    text = path.read_text()
    entry = (f"  {QUOTA_ORG}:\n    name: \"SOAK token quota\"\n    country: US\n    tier: standard\n"
             f"    quota:\n      tokens_per_day: {tokens_per_day}\n\n")
    path.write_text(text.replace("organizations:\n", "organizations:\n" + entry, 1))


def quota_costs() -> tuple[dict[str, int], int]:
    """Tokens one forwarded request of each quota flood used at the demo upstream (as its usage
    reports them), and one request's most: prompt + max_tokens, all an abandoned one could use."""
    from gateway.demo.upstream import _Reply

    prompt = len(QUOTA_PROMPT.split())
    used = prompt + _Reply("fleet-upstream", "example-small-1", QUOTA_PROMPT, QUOTA_MAX_TOKENS).tokens
    ceiling = prompt + QUOTA_MAX_TOKENS
    return {"flood_quota_gzip": used, "flood_quota_stream_no_usage": used, "flood_quota_disconnect": ceiling}, ceiling


# ---------------------------------------------------------------- the run


class Soak:
    def __init__(self, settings: Settings, fleet: LocalFleet, requests: Requests, quota_key: str = "") -> None:
        self.s = settings
        self.fleet = fleet
        self.requests = requests
        self.quota_key = quota_key
        self.flood_windows = windows_for(settings.minutes * 60, settings.flood_window) if settings.floods else []
        self.flood_records: list[dict[str, Any]] = []
        self.flood_harness: dict[str, Any] = {}
        self.lag: list[tuple[float, float]] = []  # (when, how late) of the load generator's event loop
        self.cpu: dict[str, float] = {}  # CPU seconds each process spent during the load
        self.results: list[Result] = []
        self.windows: list[Window] = []
        self.reloads: list[Reload] = []
        self.rss: dict[str, list[tuple[float, int]]] = defaultdict(list)
        self.rss_before_floods: dict[str, int] = {}
        self.shed = 0  # ticks skipped because `concurrency` requests were already in flight
        self.harness_errors: list[str] = []  # a bug here must fail the run, not pass it silently
        self.upstream_fault: str | None = None
        self.live_suspension: str | None = None  # made by the last admin-API reload, lifted by the next
        self.t0 = 0.0
        self.rng = random.Random(settings.seed)
        self.mix = [c.name for c in CLASSES for _ in range(c.weight)]
        self.redis = next(c for c in fleet.children if c.name == "redis")
        self.redis_port = int(fleet.redis_url.rsplit(":", 1)[1].split("/")[0]) if fleet.redis_url else 0
        self.redis_memory: dict[str, Any] = {}
        self.flood_pid: int | None = None

    def now(self) -> float:
        return time.monotonic() - self.t0

    def log(self, message: str) -> None:
        print(f"soak [{self.now():7.1f}s] {message}", flush=True)

    async def run(self) -> None:
        duration = self.s.minutes * 60
        timeout = aiohttp.ClientTimeout(total=self.s.read_timeout + 30)
        connector = aiohttp.TCPConnector(limit=self.s.concurrency, force_close=False)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            # The flood process starts on the same clock: t0 is a moment both wait for.
            self.t0 = time.monotonic() + (2.0 if self.s.floods else 0.0)
            floods = self.start_floods(duration) if self.s.floods else None
            try:
                await asyncio.sleep(max(0.0, -self.now()))
                cpu = self.cpu_now()
                tasks = [asyncio.create_task(job) for job in (self.faults(duration), self.reloads_loop(duration, session),
                                                               self.sample_rss(duration), self.watch_lag())]
                await self.load(duration, session)
                self.cpu = {name: round(seconds - cpu.get(name, 0.0), 2) for name, seconds in self.cpu_now().items()}
                for task in tasks:
                    task.cancel()
                for outcome in await asyncio.gather(*tasks, return_exceptions=True):
                    if isinstance(outcome, Exception):  # e.g. Redis did not come back: the run is void
                        self.harness_errors.append(f"fault, reload or RSS task: {outcome!r}")
                for window in self.windows:  # a fault cut short by the end of the run
                    window.end = min(window.end, self.now())
                if floods is not None:
                    await self.collect_floods(*floods)
            finally:
                if floods is not None and floods[0].poll() is None:  # the run broke off: so do the floods
                    floods[0].kill()
        await self.repair()

    # -- floods (bench/soak_floods.py, a process of its own)

    def start_floods(self, duration: float) -> tuple[Any, Path]:
        assert self.fleet.credentials is not None
        s, keys = self.s, self.fleet.credentials.keys
        spec = Spec(t0=self.t0, duration=duration, windows=self.flood_windows, rate=s.flood_rate, classes=s.floods,
                    lb_url=self.fleet.lb_url, replicas=[("127.0.0.1", int(r.url.rsplit(":", 1)[1])) for r in self.fleet.replicas],
                    source=LB_SOURCE, keys={"developer": keys["org-developer-us"], "denied": keys["org-entity-listed"],
                                            "quota": self.quota_key},
                    us=US, ir=IR, conn_flood=s.conn_flood, head_deadline=s.head_deadline, body_deadline=s.body_deadline,
                    slack=s.deadline_slack, endless_bytes=s.endless_bytes, seed=s.seed)
        directory = self.fleet.workdir / "floods"
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "spec.json").write_text(json.dumps(asdict(spec)))
        out = directory / "records.jsonl"
        with (directory / "floods.log").open("ab") as log:
            process = subprocess.Popen([sys.executable, str(Path(__file__).with_name("soak_floods.py")),
                                        str(directory / "spec.json"), str(out)], stdout=log, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, start_new_session=True)
        self.flood_pid = process.pid
        return process, out

    async def collect_floods(self, process: Any, out: Path) -> None:
        try:
            code = await asyncio.to_thread(process.wait, 60)
        except subprocess.TimeoutExpired:
            process.kill()
            code = None
        if code != 0 or not out.exists():
            log = (self.fleet.workdir / "floods" / "floods.log").read_text(errors="replace")[-2000:]
            self.harness_errors.append(f"the flood process ended with {code}: {log}")
            return
        for line in out.read_text().splitlines():
            entry = json.loads(line)
            if "harness" in entry:
                self.flood_harness = entry["harness"]
            else:
                self.flood_records.append(entry)
        if any(r["outcome"] == "error" for r in self.flood_records):
            self.harness_errors += [f"flood {r['cls']}: {r['detail']}" for r in self.flood_records if r["outcome"] == "error"][:5]

    # -- what the harness and the fleet cost

    def cpu_now(self) -> dict[str, float]:
        found = {"load generator": time.process_time()}
        pids = {c.name: c.pid for c in self.fleet.children if c.pid is not None}
        if self.flood_pid is not None:
            pids["floods"] = self.flood_pid
        for name, pid in pids.items():
            try:
                found[name] = ProcTree(pid).cpu_seconds() if name in ("lb", "nginx") else ProcStat(pid).cpu_seconds()
            except OSError:
                pass
        return found

    async def watch_lag(self) -> None:
        for n in itertools.count():
            before = time.monotonic()
            await asyncio.sleep(0.05)
            self.lag.append((before - self.t0, time.monotonic() - before - 0.05))
            if n % 100 == 0:
                # The results grow to some 300,000 objects in 30 minutes: a full collection walking
                # them would stall this loop and show up as the gateway's latency. Frozen, they
                # are never walked again.
                gc.freeze()

    async def load(self, duration: float, session: aiohttp.ClientSession) -> None:
        interval = 1.0 / self.s.rate
        inflight: set[asyncio.Task[None]] = set()
        tick = 0
        while (due := tick * interval) < duration:
            delay = due - self.now()
            if delay > 0:
                await asyncio.sleep(delay)
            tick += 1
            if len(inflight) >= self.s.concurrency:
                self.shed += 1
                continue
            task = asyncio.create_task(self.guarded(session, self.rng.choice(self.mix)))
            inflight.add(task)
            task.add_done_callback(inflight.discard)
        if inflight:
            await asyncio.wait(inflight)

    async def guarded(self, session: aiohttp.ClientSession, cls: str) -> None:
        try:
            await self.one(session, cls)
        except Exception as error:
            self.harness_errors.append(f"{cls}: {error!r}")

    async def one(self, session: aiohttp.ClientSession, cls: str) -> None:
        headers, body = self.requests.build(cls)
        headers = {**headers, "x-demo-tag": cls}
        fault = self.upstream_fault if self.upstream_fault and self.rng.random() < 0.5 else None
        if fault:
            headers["x-demo-fault"] = fault
        started = self.now()
        status, outcome, decision_id = None, "no_answer", None
        try:
            async with session.post(self.fleet.lb_url + "/v1/chat/completions", json=body, headers=headers) as response:
                status, decision_id = response.status, response.headers.get("x-gateway-decision-id")
                data = await response.read()
                outcome = "ok" if status != 200 or complete(data, bool(body.get("stream"))) else "cut"
        except aiohttp.ClientPayloadError:
            outcome = "cut"
        except (aiohttp.ClientError, asyncio.TimeoutError):
            outcome = "cut" if status is not None else "no_answer"
        self.results.append(Result(cls, started, self.now(), status, outcome, decision_id, fault))

    # -- faults

    async def faults(self, duration: float) -> None:
        kinds = itertools.cycle(self.s.faults)
        at = self.s.fault_offset
        while self.s.faults:
            kind = next(kinds)
            if at + (self.s.redis_down if kind.startswith("redis") else self.s.upstream_window) >= duration:
                return
            await asyncio.sleep(max(0.0, at - self.now()))
            await self.inject(kind)
            at += self.s.fault_every

    async def inject(self, kind: str) -> None:
        window = Window(kind, self.now(), float("inf"))
        self.windows.append(window)
        self.log(f"fault: {kind}")
        if kind == "redis_restart":
            await asyncio.to_thread(self.redis.stop)
            await asyncio.sleep(self.s.redis_down)
            await asyncio.to_thread(self.start_redis)
        elif kind == "redis_pause":
            self.redis.signal(signal.SIGSTOP)
            try:
                await asyncio.sleep(self.s.redis_down)
            finally:
                self.redis.signal(signal.SIGCONT)
        elif kind in ("upstream_stall", "upstream_drop"):
            self.upstream_fault = f"stall={self.s.read_timeout + 1.5:g}" if kind == "upstream_stall" else "drop"
            try:
                await asyncio.sleep(self.s.upstream_window)
            finally:
                self.upstream_fault = None
        else:
            raise ValueError(f"unknown fault {kind!r}")
        window.end = self.now()
        self.log(f"fault over: {kind} ({window.end - window.start:.1f} s)")

    def start_redis(self) -> None:
        self.redis.start()
        deadline = time.monotonic() + 20
        while not _redis_answers(self.redis_port):
            if time.monotonic() > deadline or not self.redis.alive():
                raise FleetError(f"redis did not come back: {self.redis.log()[-2000:]}")
            time.sleep(0.05)

    async def repair(self) -> None:
        """Leave Redis running and awake, whatever the last fault was doing when cancelled."""
        self.redis.signal(signal.SIGCONT)
        if not self.redis.alive():
            await asyncio.to_thread(self.start_redis)

    # -- policy reloads

    async def reloads_loop(self, duration: float, session: aiohttp.ClientSession) -> None:
        for number in itertools.count(1):
            at = number * self.s.reload_every
            if at >= duration - 2:
                return
            await asyncio.sleep(max(0.0, at - self.now()))
            # Each replica in turn gets each kind: 1 files@r1, 2 admin@r1, 3 files@r2, 4 admin@r2, ...
            replica = self.fleet.replicas[(number - 1) // 2 % len(self.fleet.replicas)]
            reload = Reload(number, "files+SIGHUP" if number % 2 else "admin API", self.now(), replica.name)
            self.reloads.append(reload)
            try:
                if number % 2:
                    reload.version = await self.reload_files(number, replica)
                    reload.in_force_after_s = await self.in_force(session, "bundle_version", reload.version, reload.at)
                else:
                    reload.version = await self.reload_live(number, replica, session)
                    reload.in_force_after_s = await self.in_force(session, "policy_version", reload.version, reload.at)
            except Exception as error:  # recorded; acceptance fails on it
                reload.error = repr(error)[:300]
            self.log(f"reload {number} ({reload.kind} via {replica.name}): version {reload.version}, "
                     f"in force everywhere after {reload.in_force_after_s} s" + (f", ERROR {reload.error}" if reload.error else ""))

    async def reload_files(self, number: int, replica: Any) -> str:
        from gateway.policy.load import load_bundle

        path = self.fleet.policy_dir / "organizations.yaml"
        text = re.sub(r"\n# soak reload .*", "", path.read_text(), flags=re.S)
        text += (f"\n# soak reload {number}\n  {RELOAD_ORG}:\n    name: \"SOAK reload {number}\"\n"
                 "    country: US\n    tier: standard\n")
        temporary = path.with_name(".organizations.yaml.tmp")
        temporary.write_text(text)
        os.replace(temporary, path)  # whole or not at all: the watcher never reads half a file
        version = (await asyncio.to_thread(load_bundle, self.fleet.policy_dir)).policy.version
        replica.child.signal(signal.SIGHUP)
        return version

    async def reload_live(self, number: int, replica: Any, session: aiohttp.ClientSession) -> str:
        """Suspend LIVE_MODEL through the admin API, or lift the suspension made last time. A change
        refused while Redis is away (503, fail closed) is retried for up to 20 s."""
        assert self.fleet.credentials is not None
        auth = {"Authorization": f"Bearer {self.fleet.credentials.operator_token}"}
        deadline = self.now() + 20
        while True:
            if self.live_suspension is None:
                suspension = f"soak-live-{number}"
                request = session.post(replica.admin_url + "/admin/suspensions", headers=auth, json={
                    "id": suspension, "models": [LIVE_MODEL], "deny_outside": ["us"], "reason": "soak drill",
                    "reference": f"SOAK-{number}"})
            else:
                suspension = self.live_suspension
                request = session.delete(f"{replica.admin_url}/admin/suspensions/{suspension}", headers=auth)
            async with request as response:
                answer = await response.json(content_type=None)
            if response.status < 300:
                self.live_suspension = None if self.live_suspension else suspension
                return str(answer["policy_version"])
            if response.status != 503 or self.now() > deadline:
                raise RuntimeError(f"admin API answered {response.status}: {answer}")
            await asyncio.sleep(1.0)

    async def in_force(self, session: aiohttp.ClientSession, which: str, version: str, since: float) -> float:
        """Seconds until every replica has `version` as its `which` (GET /admin/policy) and they
        all have the same policy in force."""
        assert self.fleet.credentials is not None
        auth = {"Authorization": f"Bearer {self.fleet.credentials.operator_token}"}
        deadline = self.now() + 20
        seen: set[Any] = set()
        while self.now() < deadline:
            seen = set()
            for replica in self.fleet.replicas:
                try:
                    async with session.get(replica.admin_url + "/admin/policy", headers=auth) as response:
                        answer = await response.json(content_type=None)
                        seen.add((answer.get(which), answer.get("policy_version")))
                except (aiohttp.ClientError, asyncio.TimeoutError, ValueError):
                    seen.add(None)
            if len(seen) == 1 and None not in seen and next(iter(seen))[0] == version:
                return round(self.now() - since, 2)
            await asyncio.sleep(0.2)
        raise TimeoutError(f"policy {version} not in force on every replica within 20 s (saw {seen})")

    # -- memory

    async def sample_rss(self, duration: float) -> None:
        if self.flood_windows and self.flood_windows[0][0] - 1 < self.s.warmup:
            # For the report only (the check compares samples after the warm-up): before any flood.
            await asyncio.sleep(max(0.0, self.flood_windows[0][0] - 1 - self.now()))
            for replica in self.fleet.replicas:
                with contextlib.suppress(OSError, KeyError):
                    self.rss_before_floods[replica.name] = ProcStat(replica.child.pid or 0).rss_kib
        await asyncio.sleep(max(0.0, self.s.warmup - self.now()))
        while self.now() < duration:
            for replica in self.fleet.replicas:
                if replica.child.pid is not None:
                    try:
                        self.rss[replica.name].append((round(self.now(), 1), ProcStat(replica.child.pid).rss_kib))
                    except (OSError, KeyError):
                        pass
            await asyncio.sleep(self.s.rss_every)


def complete(data: bytes, stream: bool) -> bool:
    """Whether a 200 arrived whole: a stream that reached [DONE], JSON that parses."""
    if stream:
        return data.rstrip().endswith(b"data: [DONE]")
    try:
        json.loads(data)
    except ValueError:
        return False
    return True


# ---------------------------------------------------------------- checking


def metric(text: str, name: str) -> float:
    """The sum of every series of `name` in a Prometheus exposition."""
    return sum(float(m.group(1)) for m in re.finditer(rf"^{re.escape(name)}(?:{{[^}}]*}})? (\S+)$", text, re.M))


def scrape(fleet: LocalFleet) -> dict[str, dict[str, float]]:
    import urllib.request

    found = {}
    for replica in fleet.replicas:
        with urllib.request.urlopen(replica.admin_url + "/metrics", timeout=5) as response:
            text = response.read().decode()
        found[replica.name] = {name: metric(text, name) for name in (
            "gateway_audit_lost_total", "gateway_upstream_errors_total", "gateway_policy_reloads_total",
            "gateway_audit_spooled")}
    return found


def audit_files(path: Path) -> list[Path]:
    """A replica's audit files, oldest first (path.N .. path.1, path), then those of its
    log of requests never authenticated (gateway/audit/log.py AuditLogs) likewise."""
    from gateway.audit import unauthenticated_path

    def rotations(log: Path) -> list[Path]:
        rotated = sorted((p for p in log.parent.glob(log.name + ".*") if p.suffix[1:].isdigit()),
                         key=lambda p: -int(p.suffix[1:]))
        return rotated + ([log] if log.exists() else [])

    return rotations(path) + rotations(unauthenticated_path(path))


def read_stream(fleet: LocalFleet) -> list[bytes]:
    import redis

    assert fleet.redis_url
    client = redis.Redis.from_url(fleet.redis_url, socket_timeout=10)
    lines: list[bytes] = []
    try:
        for name in ("audit", "audit-unauthenticated"):  # the second: requests never authenticated
            key = "{" + str(fleet.namespace) + "}:" + name
            start = "-"
            while True:
                batch = client.xrange(key, min=start, max="+", count=5000)
                if not batch:
                    break
                lines += [fields[b"record"] for _, fields in batch]
                last = batch[-1][0].decode()
                ms, _, seq = last.partition("-")
                start = f"{ms}-{int(seq) + 1}"
        return lines
    finally:
        client.close()


def redis_memory(fleet: LocalFleet) -> dict[str, Any]:
    import redis

    assert fleet.redis_url
    client = redis.Redis.from_url(fleet.redis_url, socket_timeout=10)
    key = "{" + str(fleet.namespace) + "}:audit"
    try:
        info = client.xinfo_stream(key) if client.exists(key) else {}
        return {"used_memory_bytes": client.info("memory")["used_memory"], "audit_stream_entries": info.get("length", 0),
                "audit_stream_added": info.get("entries-added", info.get("length", 0)),
                "audit_stream_bytes": client.memory_usage(key, samples=0) if info else 0}
    finally:
        client.close()


def forwarded(record: dict[str, Any] | None) -> bool:
    """Whether an audit record is of a request the policy allowed (and so was forwarded)."""
    if record is None:
        return False
    return record.get("decision") == "allow" or (not record.get("reasons") and (
        record.get("upstream_status") is not None or str(record.get("error")).startswith("upstream_")
        or record.get("error") == "client_disconnected"))


def in_window(result: Result, windows: list[Window], grace: float) -> bool:
    return in_span(result.started, result.ended, windows, grace)


def in_span(started: float, ended: float, windows: list[Window], grace: float) -> bool:
    return any(started <= w.end + grace and ended >= w.start for w in windows)


# What the checks read of an audit record (a 30-minute run has some 370,000 of them).
RECORD_FIELDS = ("time", "decision", "reasons", "status", "error", "upstream_status")


def check(soak: Soak, fleet: LocalFleet, metrics: dict[str, dict[str, float]], stream: list[bytes],
          journal: list[dict[str, Any]], elapsed: float) -> dict[str, Any]:
    s = soak.s
    duration = s.minutes * 60
    results = soak.results
    floods = soak.flood_records
    answered = [r for r in results if r.status is not None]
    by_status = Counter(str(r.status) if r.status is not None else "no_answer" for r in results)
    by_class: dict[str, Counter[str]] = {c.name: Counter() for c in CLASSES}
    for r in results:
        by_class[r.cls][str(r.status) if r.status is not None else "no_answer"] += 1
        if r.outcome == "cut":
            by_class[r.cls]["cut_short"] += 1

    denied_classes = {c.name for c in CLASSES if not c.allowed}
    denied_requests = [r for r in results if r.cls in denied_classes]
    let_through = [asdict(r) for r in denied_requests if r.status is not None and r.status < 400]
    # Every soak request is tagged: an untagged entry would be a tag lost on the way, so it counts too.
    violations = journal_violations(journal, {c.name for c in CLASSES if c.allowed})
    journal_denied = [e for why, entries in violations.items() for e in entries
                      if why == "denied_or_untagged" or FLOODS_BY_NAME[why].forwards == "never"]
    journal_altered = {why: len(entries) for why, entries in violations.items()
                       if why != "denied_or_untagged" and FLOODS_BY_NAME[why].forwards != "never"}

    # Floods: every request's outcome against what its class must get.
    flood_by_class: dict[str, Counter[str]] = {name: Counter() for name in s.floods}
    flood_wrong: dict[str, Counter[str]] = defaultdict(Counter)
    flood_examples: dict[str, list[dict[str, Any]]] = defaultdict(list)
    closed_after: dict[str, list[float]] = defaultdict(list)
    for r in floods:
        flood = FLOODS_BY_NAME[r["cls"]]
        flood_by_class[r["cls"]][str(r["status"]) if r["status"] is not None else r["outcome"]] += 1
        if flood.slow and r["outcome"] in ("answered", "closed", "reset"):
            closed_after[r["cls"]].append(r["ended"] - r["started"])
        why = verdict(flood, r, in_span(r["started"], r["ended"], soak.windows, s.grace))
        if why:
            flood_wrong[r["cls"]][why.split(":")[0]] += 1
            if len(flood_examples[r["cls"]]) < 3:
                flood_examples[r["cls"]].append({**r, "why": why})
    budget_classes = [name for name in s.floods if FLOODS_BY_NAME[name].forwards == "budget"]
    costs, ceiling = quota_costs()
    quota = quota_check(journal, s.quota_tokens, len(fleet.replicas), costs, ceiling) if budget_classes else None

    # Audit: every answer's decision id once across the files, once in the stream; chains intact.
    class_of = {r.decision_id: r.cls for r in results if r.decision_id}
    class_of |= {r["decision_id"]: r["cls"] for r in floods if r["decision_id"]}
    file_ids: Counter[str] = Counter()
    file_records: dict[str, dict[str, Any]] = {}
    oversized: Counter[str] = Counter()
    largest = 0
    chains = {}
    for replica in fleet.replicas:
        paths = audit_files(replica.audit_path)
        verification = verify(paths)
        chains[replica.name] = {"ok": verification.ok, "records": verification.records,
                                "problem": verification.as_json()["error"],
                                "replicas": list(verification.replicas)}
        for path in paths:
            for line in path.read_bytes().splitlines():
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                file_ids[record.get("decision_id")] += 1
                file_records[record.get("decision_id")] = {k: record.get(k) for k in RECORD_FIELDS}
                largest = max(largest, len(line))
                if len(line) > s.audit_record_max:
                    oversized[class_of.get(record.get("decision_id"), "no client answer")] += 1
    stream_check = verify_lines(stream, "redis stream")
    stream_ids: Counter[str] = Counter()
    stream_start = ""
    for line in stream:
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        stream_ids[entry.get("decision_id")] += 1
        stream_start = min(stream_start or entry.get("time", ""), entry.get("time", ""))
    # A stream capped by length or bytes keeps the newest records: older ones are not lost.
    trimmed = soak.redis_memory.get("audit_stream_added", 0) > soak.redis_memory.get("audit_stream_entries", 0)
    client_ids = [r.decision_id for r in results if r.decision_id] + [r["decision_id"] for r in floods if r["decision_id"]]
    client_id_set = set(client_ids)
    missing_in_files = [d for d in client_ids if file_ids[d] == 0]
    duplicated_in_files = [d for d in client_ids if file_ids[d] > 1]
    missing_in_stream = [d for d in client_ids if stream_ids[d] == 0 and not (
        trimmed and ((file_records.get(d) or {}).get("time") or "") < stream_start)]
    duplicated_in_stream = [d for d in client_ids if stream_ids[d] > 1]
    answered_without_id = [asdict(r) for r in answered if not r.decision_id]
    answered_without_id += [r for r in floods if r["status"] is not None and not r["decision_id"]]
    # The gateway records a forwarded request whose upstream then failed or answered >= 400 as
    # "deny" with no reason; a policy denial always names its reason.
    forwarded_not_allowed = [e for e in journal if not forwarded(file_records.get(e.get("decision_id")))]
    forwarded_recorded_deny = Counter(f"{r['status']}:{r['error']}" for e in journal
                                      if (r := file_records.get(e.get("decision_id"))) and r["decision"] != "allow")

    # 5xx inside and outside fault windows; the legitimate latencies with the floods on and off.
    fives: dict[str, Counter[str]] = {"in_fault_windows": Counter(), "outside": Counter()}
    unexpected_outside: Counter[str] = Counter()
    latencies: dict[str, dict[str, list[float]]] = {"allowed": {"on": [], "off": []}, "all": {"on": [], "off": []}}
    by_window: dict[int, list[float]] = defaultdict(list)  # allowed latencies by flood window (odd: on)
    # The comparison is of floods against none: fault windows and reloads (until in force,
    # plus the settle time) are left out of both sides.
    reloads = [Window("reload", r.at, r.at + (r.in_force_after_s or 0)) for r in soak.reloads]
    for r in results:
        inside = in_window(r, soak.windows, s.grace)
        if r.status is not None and r.status >= 500:
            fives["in_fault_windows" if inside else "outside"][str(r.status)] += 1
        if not inside and (r.status != BY_NAME[r.cls].expect or r.outcome != "ok"):
            unexpected_outside[f"{r.cls}:{r.status}:{r.outcome}"] += 1
        where = phase(r.started, soak.flood_windows, s.flood_settle) if soak.flood_windows else None
        if inside or where is None or r.status is None or in_window(r, reloads, s.flood_settle):
            continue
        latencies["all"][where].append(r.ended - r.started)
        if BY_NAME[r.cls].allowed and r.status == 200 and r.outcome == "ok":
            latencies["allowed"][where].append(r.ended - r.started)
            by_window[int(r.started // s.flood_window)].append(r.ended - r.started)
    p99 = {kind: p99_check(v["on"], v["off"], s.p99_factor, s.p99_min_samples) for kind, v in latencies.items()}
    p99_by_window = [{"window": n, "floods": "on" if n % 2 else "off", "samples": len(v),
                      "p99_ms": _ms(percentile(v, 99))} for n, v in sorted(by_window.items())]
    p99_required = bool(soak.flood_windows) and duration >= 4 * s.flood_window
    lag: dict[str, list[float]] = {"on": [], "off": []}
    for at, late in soak.lag:
        if (where := phase(at, soak.flood_windows, s.flood_settle)) is not None:
            lag[where].append(late)

    rss = {}
    for name, samples in soak.rss.items():
        values = [kib for _, kib in samples]
        first, middle, last, peak = values[0], values[len(values) // 2], values[-1], max(values)
        rss[name] = {"samples": len(values), "before_floods_kib": soak.rss_before_floods.get(name),
                     "first_kib": first, "middle_kib": middle, "last_kib": last, "max_kib": peak,
                     "last_vs_first": round(last / first - 1, 4), "max_vs_first": round(peak / first - 1, 4),
                     "second_half": round(last / middle - 1, 4), "series": samples}
    rss_flat = all(abs(v["last_vs_first"]) <= s.rss_tolerance and v["max_vs_first"] <= s.rss_tolerance
                   and v["second_half"] <= s.rss_tolerance / 4 for v in rss.values())
    flooded_s = sum(end - start for start, end in soak.flood_windows)

    acceptance = {
        "no_500": by_status.get("500", 0) == 0,
        "every_denied_request_denied": not let_through,
        "upstream_never_saw_a_denied_class": not journal_denied,
        "upstream_saw_only_requests_audited_as_allowed": not forwarded_not_allowed,
        "legit_as_usual_outside_fault_windows": not unexpected_outside,
        "rss_flat": bool(rss) and rss_flat if s.minutes * 60 > s.warmup + s.rss_every else True,
        "every_answer_audited_once_in_files": not missing_in_files and not duplicated_in_files and not answered_without_id,
        "every_answer_once_in_redis_stream": not missing_in_stream and not duplicated_in_stream,
        "audit_chains_verify": all(c["ok"] for c in chains.values()) and stream_check.ok,
        "audit_lost_zero": all(m["gateway_audit_lost_total"] == 0 for m in metrics.values()),
        "audit_records_bounded": not oversized,
        "every_reload_in_force": bool(soak.reloads) and all(r.error is None for r in soak.reloads),
        "offered_rate_achieved": len(results) >= 0.95 * s.rate * duration,
        "no_harness_errors": not soak.harness_errors,
    }
    if s.floods:
        acceptance |= {
            "every_flood_request_as_required": bool(floods) and not flood_wrong,
            "forwarded_floods_intact": not journal_altered,
            "token_budget_held": quota is None or quota["held"],
            "legit_p99_within_factor": p99["allowed"]["held"] if p99_required
            else p99["allowed"]["held"] or not p99["allowed"]["measured"],
        }
    return {
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(s).items()},
        "fleet": {"replicas": len(fleet.replicas), "load_balancer": fleet.lb_kind},
        "elapsed_s": round(elapsed, 1),
        "requests": len(results),
        "achieved_rps": round(len(results) / duration, 1) if duration else 0,
        "flood_requests": len(floods),
        "achieved_rps_with_floods": round((len(results) + len(floods)) / duration, 1) if duration else 0,
        "flood_rps_in_flood_windows": round(len(floods) / flooded_s, 1) if flooded_s else 0,
        "shed_by_harness": soak.shed,
        "harness_errors": soak.harness_errors[:20],
        "harness": {"cpu_s_during_load": soak.cpu, "load_duration_s": duration,
                    "load_generator_loop_lag_p99_ms": {k: _ms(percentile(v, 99)) for k, v in lag.items()},
                    "floods": soak.flood_harness, "machine_load_average": os.getloadavg()},
        "by_status": dict(sorted(by_status.items())),
        "by_class": {k: dict(sorted(v.items())) for k, v in by_class.items()},
        "status_500": by_status.get("500", 0),
        "denied": {"requests": len(denied_requests), "let_through": let_through[:20], "let_through_count": len(let_through),
                   "no_answer": sum(1 for r in denied_requests if r.status is None),
                   "in_upstream_journal": len(violations.get("denied_or_untagged", []))},
        "floods": {"windows": soak.flood_windows, "classes": {name: FLOODS_BY_NAME[name].about for name in s.floods},
                   "by_class": {k: dict(sorted(v.items())) for k, v in flood_by_class.items()},
                   "wrong": {k: dict(v) for k, v in flood_wrong.items()}, "examples": dict(flood_examples),
                   "closed_after_s": {k: {"p50": round(percentile(v, 50) or 0, 2), "max": round(max(v), 2)}
                                      for k, v in closed_after.items()},
                   "in_upstream_journal": {k: len(v) for k, v in violations.items()},
                   "journal_examples": {k: v[:3] for k, v in violations.items()},
                   "token_budget": quota},
        "legit_latency": p99 | {"required": p99_required, "allowed_p99_by_window": p99_by_window},
        "upstream_journal": {"requests": len(journal), "by_tag": dict(Counter(str(e.get("tag")) for e in journal)),
                             "not_audited_as_forwarded": len(forwarded_not_allowed),
                             "forwarded_but_audited_deny": dict(forwarded_recorded_deny)},
        "fault_windows": [asdict(w) for w in soak.windows],
        "5xx": {k: dict(v) for k, v in fives.items()},
        "unexpected_outside_fault_windows": dict(unexpected_outside),
        "reloads": [asdict(r) for r in soak.reloads],
        "rss": rss,
        "redis": soak.redis_memory,
        "audit": {"files": chains, "records_in_files": sum(file_ids.values()), "answers_with_id": len(client_ids),
                  "missing_in_files": missing_in_files[:20], "duplicated_in_files": duplicated_in_files[:20],
                  "answered_without_decision_id": answered_without_id[:20],
                  "records_without_a_client_answer": sum(1 for d in file_ids if d not in client_id_set),
                  "largest_record_bytes": largest, "records_over_limit": dict(oversized),
                  "stream_records": len(stream), "stream_trimmed": trimmed, "stream_verifies": stream_check.ok,
                  "stream_problem": stream_check.as_json()["error"],
                  "missing_in_stream": missing_in_stream[:20], "duplicated_in_stream": duplicated_in_stream[:20]},
        "metrics": metrics,
        "acceptance": acceptance,
        "passed": all(acceptance.values()),
    }


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 2)


def summary(report: dict[str, Any]) -> str:
    lines = [f"soak: {report['requests']} requests in {report['elapsed_s']} s = {report['achieved_rps']} req/s "
             f"through {report['fleet']['load_balancer']}, {report['fleet']['replicas']} replicas "
             f"(shed by the harness: {report['shed_by_harness']})",
             f"  by status: {report['by_status']}"]
    for name, counts in report["by_class"].items():
        lines.append(f"  {name:<31} {counts}")
    lines.append(f"  500s: {report['status_500']}   denied requests: {report['denied']['requests']}, let through: "
                 f"{report['denied']['let_through_count']}, in the upstream's journal: {report['denied']['in_upstream_journal']}")
    lines.append(f"  5xx in fault windows: {report['5xx']['in_fault_windows']}   outside: {report['5xx']['outside']}")
    lines.append(f"  not as expected outside fault windows: {report['unexpected_outside_fault_windows'] or 'none'}")
    floods = report["floods"]
    if report["settings"]["floods"]:
        lines.append(f"  floods: {report['flood_requests']} requests, {report['flood_rps_in_flood_windows']} req/s in "
                     f"{len(floods['windows'])} windows; with the normal mix {report['achieved_rps_with_floods']} req/s "
                     "over the run")
        over_budget = floods["token_budget"] and not floods["token_budget"]["held"]
        for name, counts in floods["by_class"].items():
            wrong = floods["wrong"].get(name)
            journal_hits = floods["in_upstream_journal"].get(name)
            closed = floods["closed_after_s"].get(name)
            oversized = report["audit"]["records_over_limit"].get(name)
            budget = over_budget and name.startswith("flood_quota_")
            lines.append(f"  {'FAIL' if wrong or journal_hits or oversized or budget else 'ok  '} {name:<28} {dict(counts)}"
                         + (f" wrong: {wrong}" if wrong else "") + (f" upstream saw {journal_hits}" if journal_hits else "")
                         + (f" audit records over the limit: {oversized}" if oversized else "")
                         + (" token budget exceeded" if budget else "")
                         + (f" closed after p50 {closed['p50']} s, max {closed['max']} s" if closed else ""))
        if floods["token_budget"]:
            q = floods["token_budget"]
            lines.append(f"  token budget {'held' if q['held'] else 'EXCEEDED'}: {q['budget']} a day (+ one request per "
                         f"replica: {q['allowed_with_slack']}); "
                         f"forwarded {q['requests_forwarded_per_day']} requests, {q['tokens_forwarded_per_day']} tokens")
        for kind, p in report["legit_latency"].items():
            if isinstance(p, dict):
                lines.append(f"  legit {kind} latency, floods on/off: p50 {p['p50_on_ms']}/{p['p50_off_ms']} ms, "
                             f"p99 {p['p99_on_ms']}/{p['p99_off_ms']} ms (x{p['ratio']}, {p['samples_on']}/"
                             f"{p['samples_off']} samples{'' if p['measured'] else ', too few to judge'})")
        lines.append("  legit allowed p99 by window (ms): " + " ".join(
            f"{w['floods']}:{w['p99_ms']}" for w in report["legit_latency"]["allowed_p99_by_window"]))
    harness = report["harness"]
    cpu = harness["cpu_s_during_load"]
    lines.append("  CPU during the load (% of one core): " + ", ".join(
        f"{name} {100 * seconds / harness['load_duration_s']:.0f}" for name, seconds in cpu.items())
        + f"; load generator loop lag p99 on/off {harness['load_generator_loop_lag_p99_ms']} ms"
        + (f"; flood process loop lag p99 {harness['floods'].get('loop_lag_p99_ms')} ms" if harness["floods"] else ""))
    journal = report["upstream_journal"]
    lines.append(f"  upstream journal: {journal['requests']} requests {journal['by_tag']}; forwarded but audited "
                 f"'deny': {journal['forwarded_but_audited_deny'] or 'none'}")
    lines.append("  faults: " + ", ".join(f"{w['kind']}@{w['start']:.0f}s" for w in report["fault_windows"]))
    reloads = report["reloads"]
    slowest = max((r["in_force_after_s"] or 0 for r in reloads), default=0)
    lines.append(f"  reloads: {len(reloads)} ({sum(1 for r in reloads if r['error'] is None)} in force everywhere; "
                 f"slowest {slowest} s)")
    for name, v in report["rss"].items():
        lines.append(f"  RSS {name}: first {v['first_kib']} KiB, last {v['last_kib']} ({v['last_vs_first']:+.1%}), "
                     f"max {v['max_kib']} ({v['max_vs_first']:+.1%}), second half {v['second_half']:+.1%}, "
                     f"{v['samples']} samples"
                     + (f" (before the first flood: {v['before_floods_kib']} KiB)" if v["before_floods_kib"] else ""))
    audit = report["audit"]
    lines.append(f"  audit: {audit['answers_with_id']} answers with a decision id, {audit['records_in_files']} records in "
                 f"files, {audit['stream_records']} in the stream; missing in files {len(audit['missing_in_files'])}, "
                 f"in stream {len(audit['missing_in_stream'])}; chains "
                 + ", ".join(f"{k} {'ok' if v['ok'] else 'BROKEN'} ({v['records']})" for k, v in audit["files"].items())
                 + f", stream {'ok' if audit['stream_verifies'] else 'BROKEN'}")
    lines.append(f"  audit lost: {[m['gateway_audit_lost_total'] for m in report['metrics'].values()]}; largest record "
                 f"{audit['largest_record_bytes']} bytes, over the limit: {audit['records_over_limit'] or 'none'}; "
                 f"Redis {report['redis']}")
    for name, ok in report["acceptance"].items():
        lines.append(f"  {'PASS' if ok else 'FAIL'} {name}")
    lines.append("soak: " + ("PASSED" if report["passed"] else "FAILED"))
    return "\n".join(lines)


# ---------------------------------------------------------------- main


def run(settings: Settings) -> dict[str, Any]:
    # A Redis of our own, to restart: never one named by REDIS_URL (scripts/with-redis's, or shared).
    os.environ.pop("REDIS_URL", None)
    keep = settings.workdir is not None
    workdir = settings.workdir or Path(tempfile.mkdtemp(prefix="gateway-soak-"))
    policy_dir = workdir / "policies"
    shutil.copytree(SHIPPED_POLICIES, policy_dir, dirs_exist_ok=True)
    add_quota_org(policy_dir, settings.quota_tokens)
    journal_path = workdir / "upstream-journal.jsonl"
    fleet = LocalFleet(workdir / "fleet", settings.replicas, settings.lb, port=0, policy_dir=policy_dir,
                       prometheus="off", upstream_args=["--journal", str(journal_path)],
                       redis_args=["--appendonly", "yes", "--appendfsync", "everysec"],
                       upstream_read_timeout_s=settings.read_timeout)
    try:
        fleet.start()
        print(f"soak: fleet up in {workdir}: {fleet.lb_kind}, {len(fleet.replicas)} replicas, "
              f"{settings.minutes:g} min at {settings.rate:g} req/s"
              + (f", floods ({len(settings.floods)} classes) at {settings.flood_rate:g} req/s every other "
                 f"{settings.flood_window:g} s" if settings.floods else ", no floods"), flush=True)
        soak = Soak(settings, fleet, Requests(fleet, api_key(fleet, UNKNOWN_ORG), stranger_jwt()), api_key(fleet, QUOTA_ORG))
        started = time.monotonic()
        asyncio.run(soak.run())
        elapsed = time.monotonic() - started
        time.sleep(1.0)  # the replicas' last audit records reach the stream
        metrics = scrape(fleet)
        # Stop the load balancer and the replicas (each writes what it has), then read Redis.
        for child in [fleet.lb_child] + [r.child for r in fleet.replicas]:
            if child is not None:
                child.stop()
        stream = read_stream(fleet)
        soak.redis_memory = redis_memory(fleet)
        fleet.stop()
        journal = [json.loads(line) for line in journal_path.read_text().splitlines() if line.strip()] \
            if journal_path.exists() else []
        if keep:  # for a post-mortem: every request's class, times and answer
            with (workdir / "results.jsonl").open("w") as out:
                out.writelines(json.dumps(asdict(r)) + "\n" for r in soak.results)
        return check(soak, fleet, metrics, stream, journal, elapsed)
    finally:
        fleet.stop()
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)


def parse(argv: list[str] | None = None) -> Settings:
    d = Settings()
    p = argparse.ArgumentParser(prog="bench/soak.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--minutes", type=float, default=float(os.environ.get("SOAK_MINUTES", d.minutes)))
    p.add_argument("--replicas", type=int, default=d.replicas)
    p.add_argument("--lb", choices=("auto", "nginx", "python"), default=d.lb)
    p.add_argument("--rate", type=float, default=d.rate, help="requests per second offered")
    p.add_argument("--concurrency", type=int, default=d.concurrency, help="requests in flight, at most")
    p.add_argument("--warmup", type=float, default=d.warmup, help="seconds before the first RSS sample")
    p.add_argument("--rss-every", type=float, default=d.rss_every)
    p.add_argument("--rss-tolerance", type=float, default=d.rss_tolerance)
    p.add_argument("--reload-every", type=float, default=d.reload_every)
    p.add_argument("--faults", default=",".join(d.faults),
                   help="cycled: redis_restart, redis_pause, upstream_stall, upstream_drop (empty: none)")
    p.add_argument("--fault-every", type=float, default=d.fault_every)
    p.add_argument("--fault-offset", type=float, default=d.fault_offset)
    p.add_argument("--redis-down", type=float, default=d.redis_down, help="seconds Redis is stopped or paused")
    p.add_argument("--upstream-window", type=float, default=d.upstream_window)
    p.add_argument("--grace", type=float, default=d.grace, help="seconds a fault window lasts past the fault")
    p.add_argument("--read-timeout", type=float, default=d.read_timeout, help="the replicas' upstream read timeout")
    p.add_argument("--out", type=Path, default=d.out, help="the JSON report")
    p.add_argument("--workdir", type=Path, help="kept afterwards (default: a temporary directory, removed)")
    p.add_argument("--seed", type=int, default=d.seed)
    f = p.add_argument_group("floods (bench/soak_floods.py)")
    f.add_argument("--floods", default="all", help="all, off, or a comma-separated list of: "
                   + ", ".join(flood.name for flood in FLOODS))
    f.add_argument("--flood-rate", type=float, default=d.flood_rate, help="flood requests per second in a flood window")
    f.add_argument("--flood-window", type=float, default=d.flood_window,
                   help="seconds; flood-off and flood-on windows alternate, off first")
    f.add_argument("--flood-settle", type=float, default=d.flood_settle,
                   help="seconds after each switch left out of the latency comparison")
    f.add_argument("--conn-flood", type=int, default=d.conn_flood, help="idle connections opened at each window's start")
    f.add_argument("--head-deadline", type=float, default=d.head_deadline,
                   help="seconds the gateway may wait for a request head before closing the connection")
    f.add_argument("--body-deadline", type=float, default=d.body_deadline, help="the same for a request body")
    f.add_argument("--deadline-slack", type=float, default=d.deadline_slack)
    f.add_argument("--endless-bytes", type=int, default=d.endless_bytes,
                   help="header bytes an endless header may send before the connection counts as left open")
    f.add_argument("--quota-tokens", type=int, default=d.quota_tokens, help="the quota floods' org's tokens per day")
    f.add_argument("--audit-record-max", type=int, default=d.audit_record_max, help="bytes an audit record may have")
    f.add_argument("--p99-factor", type=float, default=d.p99_factor,
                   help="the legitimate p99 with floods may be at most this times the p99 without")
    f.add_argument("--p99-min-samples", type=int, default=d.p99_min_samples)
    a = p.parse_args(argv)
    faults = [f.strip() for f in a.faults.split(",") if f.strip()]
    unknown = set(faults) - {"redis_restart", "redis_pause", "upstream_stall", "upstream_drop"}
    if unknown:
        p.error(f"unknown faults: {', '.join(sorted(unknown))}")
    floods = {"all": [flood.name for flood in FLOODS], "off": [], "none": [], "": []}.get(
        a.floods.strip(), [name.strip() for name in a.floods.split(",") if name.strip()])
    if unknown := set(floods) - set(FLOODS_BY_NAME):
        p.error(f"unknown floods: {', '.join(sorted(unknown))}")
    return Settings(
        minutes=a.minutes, replicas=a.replicas, lb=a.lb, rate=a.rate, concurrency=a.concurrency, warmup=a.warmup,
        rss_every=a.rss_every, rss_tolerance=a.rss_tolerance, reload_every=a.reload_every, faults=faults,
        fault_every=a.fault_every, fault_offset=a.fault_offset, redis_down=a.redis_down,
        upstream_window=a.upstream_window, grace=a.grace, read_timeout=a.read_timeout, out=a.out, workdir=a.workdir,
        seed=a.seed, floods=floods, flood_rate=a.flood_rate, flood_window=a.flood_window,
        flood_settle=a.flood_settle, conn_flood=a.conn_flood, head_deadline=a.head_deadline,
        body_deadline=a.body_deadline, deadline_slack=a.deadline_slack, endless_bytes=a.endless_bytes,
        quota_tokens=a.quota_tokens, audit_record_max=a.audit_record_max, p99_factor=a.p99_factor,
        p99_min_samples=a.p99_min_samples)


def main(argv: list[str] | None = None) -> int:
    settings = parse(argv)
    try:
        report = run(settings)
    except FleetError as error:
        print(f"soak: the fleet did not start: {error}", file=sys.stderr)
        return 2
    settings.out.write_text(json.dumps(report, indent=2, default=str))
    print(summary(report))
    print(f"soak: report written to {settings.out}")
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())

"""Soak and faults: the `make fleet` topology under steady load for SOAK_MINUTES while
Redis is restarted and paused, the upstream stalls and drops connections, and the
policy is reloaded every 30 s. Run on demand: `make soak` (SOAK_MINUTES=10), or

    .venv/bin/python bench/soak.py --minutes 10 --out soak.json

The fleet is gateway/fleet_local.py's `LocalFleet` (nginx, else its Python load
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
after `--warmup` s, flat (last and max within `--rss-tolerance` of the first);
every answer's x-gateway-decision-id in exactly one record across the replicas'
audit files and exactly once in the Redis audit stream; every chain verifies
(gateway/audit/verification.py); gateway_audit_lost_total 0 on every replica;
every reload in force on every replica. Reported too: requests by class and status,
5xx inside and outside fault windows, achieved requests/s. Results: `--out` (JSON).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import random
import re
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _load import ProcStat  # noqa: E402

from gateway.audit.verification import verify, verify_lines  # noqa: E402
from gateway.demo import AUDIENCE, IR, ISSUER, SHIPPED_POLICIES, US, bearer, chat  # noqa: E402
from gateway.fleet_local import FleetError, LocalFleet, _redis_answers  # noqa: E402

UNKNOWN_ORG = "org-soak-unregistered"  # a key exists for it; the policy has never heard of it
RELOAD_ORG = "org-soak-reload"  # edited into organizations.yaml by file reloads; the load never uses it
LIVE_MODEL = "example-frontier-3"  # suspended and lifted by admin-API reloads; the load never asks for it


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
    rate: float = 40.0
    concurrency: int = 32
    warmup: float = 60.0
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


@dataclass
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
    from gateway.identity._jose import JsonWebKey, jwt

    key = JsonWebKey.generate_key("RSA", 2048, is_private=True, options={"kid": "demo"})
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": "mallory", "org_id": "org-gov-evaluator", "iat": now,
              "exp": now + 7 * 24 * 3600}
    return jwt.encode({"alg": "RS256", "kid": "demo"}, claims, key).decode()


def unknown_org_key(fleet: LocalFleet) -> str:
    from gateway.identity.redis_keys import RedisApiKeyStore

    assert fleet.redis_url and fleet.namespace
    store = RedisApiKeyStore(fleet.redis_url, namespace=fleet.namespace, timeout_s=2.0)
    try:
        return store.create(UNKNOWN_ORG, "soak")[1]
    finally:
        asyncio.run(store.close())


# ---------------------------------------------------------------- the run


class Soak:
    def __init__(self, settings: Settings, fleet: LocalFleet, requests: Requests) -> None:
        self.s = settings
        self.fleet = fleet
        self.requests = requests
        self.results: list[Result] = []
        self.windows: list[Window] = []
        self.reloads: list[Reload] = []
        self.rss: dict[str, list[tuple[float, int]]] = defaultdict(list)
        self.shed = 0  # ticks skipped because `concurrency` requests were already in flight
        self.harness_errors: list[str] = []  # a bug here must fail the run, not pass it silently
        self.upstream_fault: str | None = None
        self.live_suspension: str | None = None  # made by the last admin-API reload, lifted by the next
        self.t0 = 0.0
        self.rng = random.Random(settings.seed)
        self.mix = [c.name for c in CLASSES for _ in range(c.weight)]
        self.redis = next(c for c in fleet.children if c.name == "redis")
        self.redis_port = int(fleet.redis_url.rsplit(":", 1)[1].split("/")[0]) if fleet.redis_url else 0

    def now(self) -> float:
        return time.monotonic() - self.t0

    def log(self, message: str) -> None:
        print(f"soak [{self.now():7.1f}s] {message}", flush=True)

    async def run(self) -> None:
        duration = self.s.minutes * 60
        timeout = aiohttp.ClientTimeout(total=self.s.read_timeout + 30)
        connector = aiohttp.TCPConnector(limit=self.s.concurrency, force_close=False)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            self.t0 = time.monotonic()
            tasks = [asyncio.create_task(job) for job in (self.faults(duration), self.reloads_loop(duration, session),
                                                           self.sample_rss(duration))]
            await self.load(duration, session)
            for task in tasks:
                task.cancel()
            for outcome in await asyncio.gather(*tasks, return_exceptions=True):
                if isinstance(outcome, Exception):  # e.g. Redis did not come back: the run is void
                    self.harness_errors.append(f"fault, reload or RSS task: {outcome!r}")
            for window in self.windows:  # a fault cut short by the end of the run
                window.end = min(window.end, self.now())
        await self.repair()

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


def forwarded(record: dict[str, Any] | None) -> bool:
    """Whether an audit record is of a request the policy allowed (and so was forwarded)."""
    if record is None:
        return False
    return record.get("decision") == "allow" or (not record.get("reasons") and (
        record.get("upstream_status") is not None or str(record.get("error")).startswith("upstream_")
        or record.get("error") == "client_disconnected"))


def in_window(result: Result, windows: list[Window], grace: float) -> bool:
    return any(result.started <= w.end + grace and result.ended >= w.start for w in windows)


def check(soak: Soak, fleet: LocalFleet, metrics: dict[str, dict[str, float]], stream: list[bytes],
          journal: list[dict[str, Any]], elapsed: float) -> dict[str, Any]:
    s = soak.s
    results = soak.results
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
    journal_denied = [e for e in journal if e.get("tag") not in {c.name for c in CLASSES if c.allowed}]

    # Audit: every answer's decision id once across the files, once in the stream; chains intact.
    file_ids: Counter[str] = Counter()
    file_records: dict[str, dict[str, Any]] = {}
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
                file_records[record.get("decision_id")] = record
    stream_check = verify_lines(stream, "redis stream")
    stream_ids: Counter[str] = Counter()
    for line in stream:
        try:
            stream_ids[json.loads(line).get("decision_id")] += 1
        except ValueError:
            pass
    client_ids = [r.decision_id for r in results if r.decision_id]
    client_id_set = set(client_ids)
    missing_in_files = [d for d in client_ids if file_ids[d] == 0]
    duplicated_in_files = [d for d in client_ids if file_ids[d] > 1]
    missing_in_stream = [d for d in client_ids if stream_ids[d] == 0]
    duplicated_in_stream = [d for d in client_ids if stream_ids[d] > 1]
    answered_without_id = [asdict(r) for r in answered if not r.decision_id]
    # The gateway records a forwarded request whose upstream then failed or answered >= 400 as
    # "deny" with no reason; a policy denial always names its reason.
    forwarded_not_allowed = [e for e in journal if not forwarded(file_records.get(e.get("decision_id")))]
    forwarded_recorded_deny = Counter(f"{r['status']}:{r['error']}" for e in journal
                                      if (r := file_records.get(e.get("decision_id"))) and r["decision"] != "allow")

    # 5xx inside and outside fault windows.
    fives: dict[str, Counter[str]] = {"in_fault_windows": Counter(), "outside": Counter()}
    unexpected_outside: Counter[str] = Counter()
    for r in results:
        inside = in_window(r, soak.windows, s.grace)
        if r.status is not None and r.status >= 500:
            fives["in_fault_windows" if inside else "outside"][str(r.status)] += 1
        if not inside and (r.status != BY_NAME[r.cls].expect or r.outcome != "ok"):
            unexpected_outside[f"{r.cls}:{r.status}:{r.outcome}"] += 1

    rss = {}
    for name, samples in soak.rss.items():
        values = [kib for _, kib in samples]
        first, last, peak = values[0], values[-1], max(values)
        rss[name] = {"samples": len(values), "first_kib": first, "last_kib": last, "max_kib": peak,
                     "last_vs_first": round(last / first - 1, 4), "max_vs_first": round(peak / first - 1, 4),
                     "series": samples}
    rss_flat = all(abs(v["last_vs_first"]) <= s.rss_tolerance and v["max_vs_first"] <= s.rss_tolerance
                   for v in rss.values())

    acceptance = {
        "no_500": by_status.get("500", 0) == 0,
        "every_denied_request_denied": not let_through,
        "upstream_never_saw_a_denied_class": not journal_denied,
        "upstream_saw_only_requests_audited_as_allowed": not forwarded_not_allowed,
        "rss_flat": bool(rss) and rss_flat if s.minutes * 60 > s.warmup + s.rss_every else True,
        "every_answer_audited_once_in_files": not missing_in_files and not duplicated_in_files and not answered_without_id,
        "every_answer_once_in_redis_stream": not missing_in_stream and not duplicated_in_stream,
        "audit_chains_verify": all(c["ok"] for c in chains.values()) and stream_check.ok,
        "audit_lost_zero": all(m["gateway_audit_lost_total"] == 0 for m in metrics.values()),
        "every_reload_in_force": bool(soak.reloads) and all(r.error is None for r in soak.reloads),
        "no_harness_errors": not soak.harness_errors,
    }
    return {
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(s).items()},
        "fleet": {"replicas": len(fleet.replicas), "load_balancer": fleet.lb_kind},
        "elapsed_s": round(elapsed, 1),
        "requests": len(results),
        "achieved_rps": round(len(results) / elapsed, 1) if elapsed else 0,
        "shed_by_harness": soak.shed,
        "harness_errors": soak.harness_errors[:20],
        "by_status": dict(sorted(by_status.items())),
        "by_class": {k: dict(sorted(v.items())) for k, v in by_class.items()},
        "status_500": by_status.get("500", 0),
        "denied": {"requests": len(denied_requests), "let_through": let_through[:20], "let_through_count": len(let_through),
                   "no_answer": sum(1 for r in denied_requests if r.status is None),
                   "in_upstream_journal": len(journal_denied)},
        "upstream_journal": {"requests": len(journal), "by_tag": dict(Counter(str(e.get("tag")) for e in journal)),
                             "not_audited_as_forwarded": len(forwarded_not_allowed),
                             "forwarded_but_audited_deny": dict(forwarded_recorded_deny)},
        "fault_windows": [asdict(w) for w in soak.windows],
        "5xx": {k: dict(v) for k, v in fives.items()},
        "unexpected_outside_fault_windows": dict(unexpected_outside),
        "reloads": [asdict(r) for r in soak.reloads],
        "rss": rss,
        "audit": {"files": chains, "records_in_files": sum(file_ids.values()), "answers_with_id": len(client_ids),
                  "missing_in_files": missing_in_files[:20], "duplicated_in_files": duplicated_in_files[:20],
                  "answered_without_decision_id": answered_without_id[:20],
                  "records_without_a_client_answer": sum(1 for d in file_ids if d not in client_id_set),
                  "stream_records": len(stream), "stream_verifies": stream_check.ok,
                  "stream_problem": stream_check.as_json()["error"],
                  "missing_in_stream": missing_in_stream[:20], "duplicated_in_stream": duplicated_in_stream[:20]},
        "metrics": metrics,
        "acceptance": acceptance,
        "passed": all(acceptance.values()),
    }


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
                     f"max {v['max_kib']} ({v['max_vs_first']:+.1%}), {v['samples']} samples")
    audit = report["audit"]
    lines.append(f"  audit: {audit['answers_with_id']} answers with a decision id, {audit['records_in_files']} records in "
                 f"files, {audit['stream_records']} in the stream; missing in files {len(audit['missing_in_files'])}, "
                 f"in stream {len(audit['missing_in_stream'])}; chains "
                 + ", ".join(f"{k} {'ok' if v['ok'] else 'BROKEN'} ({v['records']})" for k, v in audit["files"].items())
                 + f", stream {'ok' if audit['stream_verifies'] else 'BROKEN'}")
    lines.append(f"  audit lost: {[m['gateway_audit_lost_total'] for m in report['metrics'].values()]}")
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
    journal_path = workdir / "upstream-journal.jsonl"
    fleet = LocalFleet(workdir / "fleet", settings.replicas, settings.lb, port=0, policy_dir=policy_dir,
                       prometheus="off", upstream_args=["--journal", str(journal_path)],
                       redis_args=["--appendonly", "yes", "--appendfsync", "everysec"],
                       upstream_read_timeout_s=settings.read_timeout)
    try:
        fleet.start()
        print(f"soak: fleet up in {workdir}: {fleet.lb_kind}, {len(fleet.replicas)} replicas, "
              f"{settings.minutes:g} min at {settings.rate:g} req/s", flush=True)
        soak = Soak(settings, fleet, Requests(fleet, unknown_org_key(fleet), stranger_jwt()))
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
        fleet.stop()
        journal = [json.loads(line) for line in journal_path.read_text().splitlines() if line.strip()] \
            if journal_path.exists() else []
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
    a = p.parse_args(argv)
    faults = [f.strip() for f in a.faults.split(",") if f.strip()]
    unknown = set(faults) - {"redis_restart", "redis_pause", "upstream_stall", "upstream_drop"}
    if unknown:
        p.error(f"unknown faults: {', '.join(sorted(unknown))}")
    return Settings(a.minutes, a.replicas, a.lb, a.rate, a.concurrency, a.warmup, a.rss_every, a.rss_tolerance,
                    a.reload_every, faults, a.fault_every, a.fault_offset, a.redis_down, a.upstream_window, a.grace,
                    a.read_timeout, a.out, a.workdir, a.seed)


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

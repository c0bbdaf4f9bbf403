"""The soak's floods (bench/SOAK.md, "Floods"): what one cheap client throws at the fleet
beside the normal mix, each class at a bounded rate, and what each must get back.

Every flood class (FLOODS) names its transport, the answers that are right for it and
what may reach the upstream:

- `via`: `lb` requests go through the load balancer with aiohttp, as any client's would;
  `direct` ones are written byte by byte on a raw socket to a replica's public port, so
  that nothing in front of it normalises or absorbs what the class is testing (nginx would
  drop underscore headers and `Connection`, and refuse long heads itself). Those that need
  a located caller come from the load balancer's own address (127.0.0.2, the replicas'
  trusted proxy), so the replica believes their `X-Forwarded-For` (a US address unless the
  class is about that header); the rest (slow and endless heads, idle connections, long
  paths) from 127.0.0.1, as an outside caller.
- `expect`: the statuses that are right. A 503 inside a fault window is right too (Redis
  away: the gateway fails closed). `slow` classes (a head or body that never completes,
  an endless header, idle connections) must instead be closed by the gateway, with or
  without an answer, within the deadline (`--head-deadline`, `--body-deadline`) plus
  `--deadline-slack`; the harness gives up on them then and counts them as left open.
- `forwards`: `never` (the upstream's journal must not hold one request of the class),
  `intact` (it may be forwarded, but the upstream must see exactly the JSON content type
  the gateway parsed and no underscore-spelled header), `budget` (token-quota evasion:
  what reaches the upstream must fit the org's daily token budget plus one request per
  replica) or `listing` (a `/v1/models` listing fetches the upstream's catalogue; the
  answer must name no concealed model).

Run by bench/soak.py as a process of its own (`python bench/soak_floods.py SPEC OUT`):
the legitimate load's latencies are then measured on an event loop the floods do not
load. It runs only inside the flood-on windows of the spec, on the parent's clock
(CLOCK_MONOTONIC is system-wide), writes one JSON line per flood request (or connection)
to OUT, then a last line with its own CPU time and event-loop lag. The verdicts
(`verdict`, `journal_violations`, `quota_check`, `p99_check`) are pure functions the
parent applies to those lines, unit-tested in tests/test_soak.py.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import random
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

CONCEALED = ("example-frontier-2", "example-frontier-3")  # for org-developer-us: limited rollout, internal
MODEL = "example-small-1"
QUOTA_PROMPT = "soak quota probe"
QUOTA_MAX_TOKENS = 16
REFUSED_SLOW = frozenset({400, 408, 413, 431, 503})  # answers a slow or idle connection may get before it is closed


@dataclass(frozen=True)
class Flood:
    name: str
    weight: int  # share of --flood-rate; 0: not ticked (flood_connections comes in bursts)
    via: str  # lb | direct
    expect: frozenset[int]
    forwards: str = "never"  # never | intact | budget | listing
    slow: str | None = None  # head | body | endless | idle: the gateway must close it in time
    cap: int = 32  # in flight at most; ticks beyond are shed (counted)
    about: str = ""


FLOODS = (
    Flood("flood_xff_padded", 5, "lb", frozenset({400, 451}),
          about="an embargoed caller (Iran) pads X-Forwarded-For past 64 entries (empty, blank, 'unknown')"),
    Flood("flood_xff_malformed", 4, "direct", frozenset({400, 451}),
          about="the trusted proxy passes an unreadable X-Forwarded-For: over-long, a junk, empty, bracketed or bad-port last entry"),
    Flood("flood_connection_header", 3, "direct", frozenset({200, 400}), "intact",
          about="Connection: content-type (content-length, content-encoding, transfer-encoding, x-gateway-org)"),
    Flood("flood_underscore_headers", 3, "direct", frozenset({200, 400}), "intact",
          about="Content_Type, Content_Encoding, Content_Length, Transfer_Encoding beside the real headers"),
    Flood("flood_multi_model", 4, "lb", frozenset({400, 403, 404, 451}),
          about="models named outside the top-level model: Anthropic batches (with and without one), a Responses tool"),
    Flood("flood_quota_gzip", 2, "lb", frozenset({200, 429}), "budget", cap=16,
          about="a token-quota org, Accept-Encoding: gzip, 4 requests at once"),
    Flood("flood_quota_stream_no_usage", 2, "lb", frozenset({200, 429}), "budget", cap=16,
          about="a token-quota org streams without stream_options.include_usage"),
    Flood("flood_quota_disconnect", 2, "lb", frozenset({200, 429}), "budget", cap=16,
          about="a token-quota org's stream (upstream slow to start) abandoned after 0.5 s, before any usage"),
    Flood("flood_big_headers", 3, "direct", frozenset({400, 431}),
          about="a 16 KiB header line; 40 KiB of headers in 8 lines; 2,500 tiny headers"),
    Flood("flood_long_path", 3, "direct", frozenset({400, 404, 414, 431}),
          about="unauthenticated, paths of 7 KiB and 64 KiB (their audit records must stay bounded)"),
    Flood("flood_slow_head", 1, "direct", REFUSED_SLOW, slow="head", cap=16,
          about="slowloris: a request head one header line a second, never finished"),
    Flood("flood_slow_body", 1, "direct", REFUSED_SLOW, slow="body", cap=16,
          about="an allowed caller's head, then its 4 KiB body one byte a second"),
    Flood("flood_endless_header", 1, "direct", REFUSED_SLOW, slow="endless", cap=1,
          about="one header after another as fast as the gateway reads them, up to --endless-bytes"),
    Flood("flood_connections", 0, "direct", REFUSED_SLOW, slow="idle",
          about="--conn-flood idle connections opened at once at the start of each flood window"),
    Flood("flood_denied_org_4mb", 1, "lb", frozenset({403}), cap=2,
          about="a denied org (Entity List) sends 4 MB bodies: [{},{},...] and an object holding such an array"),
    Flood("flood_unauthenticated", 12, "lb", frozenset({401}),
          about="no credential, unknown keys, garbage and 4 KiB tokens (audit volume)"),
    Flood("flood_models_probe", 4, "lb", frozenset({200, 404}), "listing",
          about="GET /v1/models (must name no concealed model) and GET /v1/models/<concealed> (404, not forwarded)"),
)
BY_NAME = {f.name: f for f in FLOODS}


# ---------------------------------------------------------------- what the parent hands over


@dataclass
class Spec:
    t0: float  # time.monotonic() at which the soak's load starts (shared clock)
    duration: float
    windows: list[tuple[float, float]]  # flood-on windows, seconds since t0
    rate: float
    classes: list[str]
    lb_url: str
    replicas: list[tuple[str, int]]  # public listeners, for the direct classes
    source: str  # the address the replicas trust as their proxy
    keys: dict[str, str]  # developer, quota, denied
    us: str
    ir: str
    conn_flood: int = 128
    head_deadline: float = 60.0
    body_deadline: float = 60.0
    slack: float = 5.0
    endless_bytes: int = 8 * 1024 * 1024
    seed: int = 1


@dataclass
class Record:
    cls: str
    variant: str
    started: float
    ended: float = 0.0
    status: int | None = None
    # answered | closed (by the gateway, no answer) | reset | refused (connect) | timeout |
    # open (a slow class the gateway never closed) | client_closed (by design) | undecided | error
    outcome: str = "error"
    decision_id: str | None = None
    server: str | None = None  # a Server header: nginx answered, not the gateway
    sent: int = 0  # bytes written
    detail: str = ""


def windows_for(duration: float, window: float) -> list[tuple[float, float]]:
    """Flood-on windows: off first (a baseline and the warm-up), then on, off, on, ..."""
    if window <= 0:
        return []
    return [(start, min(start + window, duration)) for start in itertools.takewhile(
        lambda s: s < duration, itertools.count(window, 2 * window))]


def phase(t: float, windows: Sequence[tuple[float, float]], settle: float) -> str | None:
    """'on' or 'off' for a legitimate request started at `t`; None within `settle` s after a
    switch (floods starting or draining)."""
    for start, end in windows:
        if start <= t < end:
            return "on" if t >= start + settle else None
        if end <= t < end + settle:
            return None
    return "off"


# ---------------------------------------------------------------- verdicts (pure)


def verdict(flood: Flood, record: dict[str, Any], in_fault: bool) -> str | None:
    """What is wrong with one flood request's outcome, or None when it is right."""
    outcome, status = record["outcome"], record["status"]
    if outcome in ("error", "timeout"):
        return f"{outcome}: {record.get('detail', '')[:120]}"
    if outcome == "undecided":  # cut by the end of the run before its deadline: no verdict
        return None
    if record.get("server") and record.get("decision_id") is None:
        return f"answered {status} by {record['server']}, not the gateway"
    if flood.slow:
        if outcome == "open":
            return f"left open: {record.get('detail', '')}"
        if status is None or status in flood.expect or (in_fault and status == 503):
            return None
        return f"answered {status}"
    if outcome == "client_closed":
        return None if flood.name == "flood_quota_disconnect" else "client closed"
    if status is None:
        # A head too big to read may be cut off (reset) before its answer can be read.
        return None if flood.name in ("flood_big_headers", "flood_long_path") and outcome in ("closed", "reset") \
            else f"no answer ({outcome})"
    if record.get("detail", "").startswith("leak"):
        return record["detail"]
    expect = flood.expect
    if flood.name == "flood_models_probe":  # the listing is served, a concealed model is not found
        expect = frozenset({200}) if record.get("variant") == "list" else frozenset({404})
    if status in expect or (in_fault and status == 503):
        return None
    return f"answered {status}"


def journal_violations(journal: Iterable[dict[str, Any]], allowed_tags: set[str]) -> dict[str, list[dict[str, Any]]]:
    """The upstream's journal entries that must not be there, by why: a tag (class) that must
    never be forwarded, an `intact` class that arrived altered, a listing probe that fetched
    anything but the catalogue."""
    found: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for entry in journal:
        tag = entry.get("tag")
        flood = BY_NAME.get(str(tag))
        if flood is None:
            if tag not in allowed_tags:
                found["denied_or_untagged"].append(entry)
        elif flood.forwards == "never":
            found[flood.name].append(entry)
        elif flood.forwards == "intact":
            if entry.get("content_type") != "application/json" or entry.get("underscored") \
                    or entry.get("org") != "org-developer-us":
                found[flood.name].append(entry)
        elif flood.forwards == "listing":
            if entry.get("path") != "/v1/models" or entry.get("method") != "GET":
                found[flood.name].append(entry)
    return dict(found)


def quota_check(journal: Iterable[dict[str, Any]], budget: int, replicas: int, cost: dict[str, int],
                ceiling: int) -> dict[str, Any]:
    """Whether the `budget` flood classes' forwarded requests fit the org's daily token budget.
    `cost[class]`: the tokens one forwarded request of the class used at the demo upstream
    (what it reports, or, for one abandoned before its usage, all it could have used);
    `ceiling`: one request's most (prompt + max_tokens). The issue allows one request over
    per replica."""
    per_day: Counter[int] = Counter()
    requests: Counter[int] = Counter()
    for entry in journal:
        tokens = cost.get(str(entry.get("tag")))
        if tokens is not None:
            day = int(float(entry.get("time", 0)) // 86_400)
            per_day[day] += tokens
            requests[day] += 1
    allowed = budget + replicas * ceiling
    worst = max(per_day.values(), default=0)
    return {"budget": budget, "allowed_with_slack": allowed, "tokens_forwarded_per_day": dict(per_day),
            "requests_forwarded_per_day": dict(requests), "worst_day_tokens": worst, "held": worst <= allowed}


def percentile(values: Sequence[float], pct: float) -> float | None:
    """Nearest rank; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(1, math.ceil(pct / 100 * len(ordered))) - 1]


def p99_check(on: Sequence[float], off: Sequence[float], factor: float, min_samples: int) -> dict[str, Any]:
    """The legitimate traffic's p99 with the floods on against off, and whether it is within
    `factor`; `measured` is False when either side has fewer than `min_samples`."""
    p_on, p_off = percentile(on, 99), percentile(off, 99)
    measured = len(on) >= min_samples and len(off) >= min_samples
    ratio = round(p_on / p_off, 3) if p_on is not None and p_off else None
    return {"samples_on": len(on), "samples_off": len(off),
            "p50_on_ms": _ms(percentile(on, 50)), "p50_off_ms": _ms(percentile(off, 50)),
            "p99_on_ms": _ms(p_on), "p99_off_ms": _ms(p_off), "ratio": ratio, "factor": factor,
            "measured": measured, "held": measured and ratio is not None and ratio <= factor}


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 2)


# ---------------------------------------------------------------- raw HTTP/1.1


def head(method: str, target: str, headers: Sequence[tuple[str, str]], body: bytes = b"") -> bytes:
    lines = [f"{method} {target} HTTP/1.1", "Host: gateway", *(f"{k}: {v}" for k, v in headers)]
    if body and not any(k.lower() in ("content-length", "transfer-encoding") for k, _ in headers):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


async def read_answer(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response: status, headers (lower-case names, last wins), body."""
    raw = await reader.readuntil(b"\r\n\r\n")
    lines = raw.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
    if "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    elif "chunked" in headers.get("transfer-encoding", ""):
        chunks = []
        while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
            chunks.append(await reader.readexactly(size))
            await reader.readexactly(2)
        await reader.readuntil(b"\r\n")
        body = b"".join(chunks)
    else:
        body = await reader.read()
    return status, headers, body


def _answered(record: Record, status: int, headers: dict[str, str], body: bytes) -> None:
    record.status, record.outcome = status, "answered"
    record.decision_id = headers.get("x-gateway-decision-id")
    record.server = headers.get("server")
    if status >= 400 and not record.detail:
        record.detail = body[:160].decode("utf-8", "replace")


# ---------------------------------------------------------------- the floods


class Floods:
    def __init__(self, spec: Spec) -> None:
        self.spec = spec
        self.rng = random.Random(spec.seed)
        self.records: list[Record] = []
        self.inflight: Counter[str] = Counter()
        self.shed: Counter[str] = Counter()
        self.tasks: set[asyncio.Task[None]] = set()
        self.turn = itertools.count()
        self.lag: list[float] = []
        self.big_array = b"[" + b"{}," * 1_333_332 + b"{}]"  # 4,000,000 bytes
        self.big_object = b'{"model":"' + MODEL.encode() + b'","messages":[{"role":"user","content":"hi"}],"x":' \
            + self.big_array[: 3_999_940] + b"{}]}"
        self.session: Any = None

    def now(self) -> float:
        return time.monotonic() - self.spec.t0

    def replica(self) -> tuple[str, int]:
        return self.spec.replicas[next(self.turn) % len(self.spec.replicas)]

    async def run(self) -> None:
        import aiohttp

        spec = self.spec
        connector = aiohttp.TCPConnector(limit=256, force_close=False)
        self.session = aiohttp.ClientSession(connector=connector, auto_decompress=False,
                                             timeout=aiohttp.ClientTimeout(total=30))
        lag = asyncio.ensure_future(self.watch_lag())
        try:
            await asyncio.sleep(max(0.0, -self.now()))
            ticking = [f for f in FLOODS if f.name in spec.classes and f.weight > 0]
            mix = [f for f in ticking for _ in range(f.weight)]
            for start, end in spec.windows:
                await asyncio.sleep(max(0.0, start - self.now()))
                if "flood_connections" in spec.classes:
                    for _ in range(spec.conn_flood):
                        self.spawn(BY_NAME["flood_connections"], self.idle_connection())
                if mix and spec.rate > 0:
                    await self.tick(mix, start, end)
            await asyncio.sleep(max(0.0, spec.duration - self.now()))
            await self.drain()
        finally:
            lag.cancel()
            await self.session.close()

    async def tick(self, mix: list[Flood], start: float, end: float) -> None:
        interval = 1.0 / self.spec.rate
        n = 0
        while (due := start + n * interval) < end:
            await asyncio.sleep(max(0.0, due - self.now()))
            flood = self.rng.choice(mix)
            # The gzip quota flood sends 4 at once (concurrent requests against one budget); they
            # take 4 ticks, so that --flood-rate stays the rate of requests.
            burst = 4 if flood.name == "flood_quota_gzip" else 1
            n += burst
            if self.inflight[flood.name] >= flood.cap:
                self.shed[flood.name] += 1
                continue
            for _ in range(burst):
                self.spawn(flood, getattr(self, flood.name.removeprefix("flood_"))())

    def spawn(self, flood: Flood, job: Any) -> None:
        self.inflight[flood.name] += 1
        task = asyncio.ensure_future(self.guarded(flood, job))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def guarded(self, flood: Flood, job: Any) -> None:
        try:
            record = await job
        except Exception as error:  # a bug here must show, not pass silently
            record = Record(flood.name, "", self.now(), self.now(), outcome="error", detail=repr(error)[:300])
        finally:
            self.inflight[flood.name] -= 1
        self.records.append(record)

    async def drain(self) -> None:
        """The run is over: what is still in flight gets a moment, then is cut (undecided, or
        left open if its deadline has passed)."""
        if self.tasks:
            await asyncio.wait(set(self.tasks), timeout=3.0)
        for task in set(self.tasks):
            task.cancel()
        if self.tasks:
            await asyncio.wait(set(self.tasks), timeout=5.0)

    async def watch_lag(self) -> None:
        while True:
            before = time.monotonic()
            await asyncio.sleep(0.05)
            self.lag.append(time.monotonic() - before - 0.05)

    # -- through the load balancer

    async def http(self, cls: str, variant: str, method: str, path: str, headers: dict[str, str],
                   body: bytes | None = None, abandon_after: float | None = None, check_listing: bool = False) -> Record:
        import aiohttp

        record = Record(cls, variant, self.now())
        headers = {**headers, "x-demo-tag": cls}
        if body is not None:
            headers.setdefault("Content-Type", "application/json")

        async def exchange() -> None:
            async with self.session.request(method, self.spec.lb_url + path, headers=headers, data=body,
                                            allow_redirects=False) as response:
                data = await response.read()
                record.sent = len(body or b"")
                _answered(record, response.status, {k.lower(): v for k, v in response.headers.items()}, data)
                if check_listing and response.status == 200:
                    leaked = [m for m in CONCEALED if m.encode() in data]
                    if leaked:
                        record.detail = f"leak: the listing names {', '.join(leaked)}"

        try:
            if abandon_after is None:
                await exchange()
            else:
                try:
                    await asyncio.wait_for(exchange(), abandon_after)
                except TimeoutError:
                    record.outcome = "client_closed"
        except TimeoutError:
            record.outcome = "timeout"
        except aiohttp.ServerDisconnectedError:
            record.outcome = "closed"
        except aiohttp.ClientPayloadError as error:
            record.outcome, record.detail = ("cut" if record.status else "closed"), repr(error)[:200]
        except (aiohttp.ClientError, OSError) as error:
            record.outcome, record.detail = "reset", repr(error)[:200]
        record.ended = self.now()
        return record

    def auth(self, key: str, ip: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {key}", "X-Forwarded-For": ip}

    def chat(self, text: str, model: str = MODEL, **extra: Any) -> bytes:
        return json.dumps({"model": model, "messages": [{"role": "user", "content": text}], **extra}).encode()

    async def xff_padded(self) -> Record:
        n = self.rng.randrange(3)
        padding = (",", " , ", "unknown, ")[n] * 70
        headers = self.auth(self.spec.keys["developer"], padding + self.spec.ir)
        return await self.http("flood_xff_padded", ("commas", "blanks", "unknown")[n], "POST", "/v1/chat/completions",
                               headers, self.chat("flood xff padded"))

    async def multi_model(self) -> Record:
        n = self.rng.randrange(3)
        params = {"max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}
        if n == 2:
            body = {"model": MODEL, "input": "hi", "tools": [{"type": "image_generation", "model": CONCEALED[1]}]}
            path, variant = "/v1/responses", "responses_tool_model"
        else:
            body = {"requests": [{"custom_id": "a", "params": {"model": MODEL, **params}},
                                 {"custom_id": "b", "params": {"model": CONCEALED[1], **params}}]}
            if n == 0:
                body["model"] = MODEL
            path, variant = "/v1/messages/batches", ("batch_with_top_model", "batch_only_nested")[n]
        headers = {"x-api-key": self.spec.keys["developer"], "anthropic-version": "2023-06-01",
                   "X-Forwarded-For": self.spec.us}
        return await self.http("flood_multi_model", variant, "POST", path, headers, json.dumps(body).encode())

    def quota_headers(self) -> dict[str, str]:
        return self.auth(self.spec.keys["quota"], self.spec.us)

    async def quota_gzip(self) -> Record:
        headers = {**self.quota_headers(), "Accept-Encoding": "gzip"}
        return await self.http("flood_quota_gzip", "gzip", "POST", "/v1/chat/completions", headers,
                               self.chat(QUOTA_PROMPT, max_tokens=QUOTA_MAX_TOKENS))

    async def quota_stream_no_usage(self) -> Record:
        return await self.http("flood_quota_stream_no_usage", "stream", "POST", "/v1/chat/completions",
                               self.quota_headers(), self.chat(QUOTA_PROMPT, max_tokens=QUOTA_MAX_TOKENS, stream=True))

    async def quota_disconnect(self) -> Record:
        headers = {**self.quota_headers(), "x-demo-fault": "stall=2"}
        body = self.chat(QUOTA_PROMPT, max_tokens=QUOTA_MAX_TOKENS, stream=True, stream_options={"include_usage": True})
        return await self.http("flood_quota_disconnect", "abandoned", "POST", "/v1/chat/completions", headers, body,
                               abandon_after=0.5)

    async def denied_org_4mb(self) -> Record:
        array = self.rng.random() < 0.5
        return await self.http("flood_denied_org_4mb", "array" if array else "object_with_array", "POST",
                               "/v1/chat/completions", self.auth(self.spec.keys["denied"], self.spec.us),
                               self.big_array if array else self.big_object)

    async def unauthenticated(self) -> Record:
        n = self.rng.randrange(4)
        headers = [{}, {"Authorization": "Bearer fgw_" + "x" * 43}, {"x-api-key": "sk-" + "z" * 40},
                   {"Authorization": "Bearer " + "eyJ" + "A" * 4096}][n]
        headers = {**headers, "X-Forwarded-For": self.spec.us}
        return await self.http("flood_unauthenticated", ("none", "unknown_key", "x_api_key", "4k_token")[n], "POST",
                               "/v1/chat/completions", headers, self.chat("flood unauthenticated"))

    async def models_probe(self) -> Record:
        n = self.rng.randrange(3)
        path = "/v1/models" if n == 0 else f"/v1/models/{CONCEALED[n - 1]}"
        return await self.http("flood_models_probe", ("list", "get_limited", "get_internal")[n], "GET", path,
                               self.auth(self.spec.keys["developer"], self.spec.us), check_listing=n == 0)

    # -- raw, straight to a replica from the trusted proxy's address

    async def connect(self, trusted: bool) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A connection to the next replica: from the trusted proxy's address when the class
        needs a located caller, else from an ordinary one (an outside caller's)."""
        host, port = self.replica()
        return await asyncio.open_connection(host, port, local_addr=(self.spec.source if trusted else host, 0),
                                             limit=1 << 20)

    def direct_headers(self, cls: str, body: bytes, xff: str | None = None) -> list[tuple[str, str]]:
        return [("Authorization", f"Bearer {self.spec.keys['developer']}"), ("X-Forwarded-For", xff or self.spec.us),
                ("Content-Type", "application/json"), ("Content-Length", str(len(body))), ("x-demo-tag", cls)]

    async def raw(self, cls: str, variant: str, data: bytes, timeout: float = 15.0, trusted: bool = True) -> Record:
        """Write a whole request, read one answer."""
        record = Record(cls, variant, self.now())
        if (connection := await self.opened(record, trusted)) is None:
            return record
        reader, writer = connection
        try:
            writer.write(data)
            record.sent = len(data)
            await asyncio.wait_for(writer.drain(), timeout)
            _answered(record, *await asyncio.wait_for(read_answer(reader), timeout))
        except TimeoutError:  # before OSError, of which it is a subclass
            record.outcome = "timeout"
        except asyncio.IncompleteReadError:
            record.outcome = "closed"
        except (ConnectionError, OSError) as error:
            record.outcome, record.detail = "reset", repr(error)[:200]
        finally:
            writer.close()
        record.ended = self.now()
        return record

    async def xff_malformed(self) -> Record:
        ir = self.spec.ir
        variants = {"over_long": "," * 70 + f"{ir}, {ir}", "junk_last": f"{ir}, {ir} garbage",
                    "empty_last": f"{ir}, ", "bracketed_v4": f"[{ir}]", "bad_port": f"{ir}:99999"}
        variant = self.rng.choice(sorted(variants))
        body = self.chat("flood xff malformed")
        data = head("POST", "/v1/chat/completions", self.direct_headers("flood_xff_malformed", body, variants[variant]), body)
        return await self.raw("flood_xff_malformed", variant, data)

    async def connection_header(self) -> Record:
        named = self.rng.choice(["content-type", "keep-alive, Content-Type", "content-length", "content-encoding",
                                 "transfer-encoding", "x-gateway-org"])
        body = self.chat("flood connection header")
        data = head("POST", "/v1/chat/completions",
                    [*self.direct_headers("flood_connection_header", body), ("Connection", named)], body)
        return await self.raw("flood_connection_header", named.split(", ")[-1].lower(), data)

    async def underscore_headers(self) -> Record:
        name, value = self.rng.choice([("Content_Type", "text/plain"), ("Content_Encoding", "gzip"),
                                       ("Content_Length", "5"), ("Transfer_Encoding", "chunked")])
        body = self.chat("flood underscore headers")
        data = head("POST", "/v1/chat/completions",
                    [*self.direct_headers("flood_underscore_headers", body), (name, value)], body)
        return await self.raw("flood_underscore_headers", name.lower(), data)

    async def big_headers(self) -> Record:
        n = self.rng.randrange(3)
        extra = [[("X-Big", "a" * 16 * 1024)], [(f"X-Big-{i}", "b" * 5 * 1024) for i in range(8)],
                 [(f"X-{i}", "1") for i in range(2500)]][n]
        body = self.chat("flood big headers")
        data = head("POST", "/v1/chat/completions", [*self.direct_headers("flood_big_headers", body), *extra], body)
        return await self.raw("flood_big_headers", ("16k_line", "40k_total", "2500_headers")[n], data)

    async def long_path(self) -> Record:
        size = self.rng.choice([7 * 1024, 64 * 1024])
        path = "/v1/chat/completions/" + "a" * size
        data = head("GET", path, [("x-demo-tag", "flood_long_path")])
        return await self.raw("flood_long_path", f"{size // 1024}k", data, trusted=False)

    async def opened(self, record: Record, trusted: bool = True) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        """A connection to a replica, or None (the record says refused) when it would not take one."""
        try:
            return await asyncio.wait_for(self.connect(trusted), 10.0)
        except (OSError, TimeoutError) as error:
            record.outcome, record.detail, record.ended = "refused", repr(error)[:200], self.now()
            return None

    async def until_closed(self, record: Record, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                           trickle: bytes | None, limit: float) -> Record:
        """Wait for the gateway to answer and/or close the connection, writing `trickle` once a
        second meanwhile; give up (open) `limit` s after the record started."""
        async def trickling() -> None:
            while trickle is not None:
                await asyncio.sleep(1.0)
                writer.write(trickle)
                record.sent += len(trickle)
                await writer.drain()

        writing = asyncio.ensure_future(trickling())
        try:
            try:
                _answered(record, *await asyncio.wait_for(read_answer(reader), limit))
                # Answered: the connection must be closed too, not left waiting for more.
                await asyncio.wait_for(reader.read(), max(0.5, limit - (self.now() - record.started)))
            except asyncio.IncompleteReadError as error:
                record.outcome = "answered" if record.status else ("reset" if error.partial else "closed")
            except (ConnectionError, OSError) as error:
                if isinstance(error, TimeoutError):  # a subclass of OSError: the deadline passed
                    raise
                record.outcome = "answered" if record.status else "reset"
                record.detail = record.detail or repr(error)[:120]
        except TimeoutError:
            record.outcome = "open"
            record.detail = f"after {self.now() - record.started:.1f} s, {record.sent} bytes sent"
        except asyncio.CancelledError:
            record.outcome = "open" if self.now() - record.started >= limit else "undecided"
            record.ended = self.now()
            self.records.append(record)
            raise
        finally:
            writing.cancel()
            writer.close()
        record.ended = self.now()
        return record

    async def slow_head(self) -> Record:
        record = Record("flood_slow_head", "one_line_a_second", self.now())
        if (connection := await self.opened(record, trusted=False)) is None:
            return record
        reader, writer = connection
        first = b"POST /v1/chat/completions HTTP/1.1\r\nHost: gateway\r\nx-demo-tag: flood_slow_head\r\n"
        writer.write(first)
        record.sent = len(first)
        return await self.until_closed(record, reader, writer, b"X-Slow: 1\r\n", self.spec.head_deadline + self.spec.slack)

    async def slow_body(self) -> Record:
        record = Record("flood_slow_body", "one_byte_a_second", self.now())
        if (connection := await self.opened(record)) is None:
            return record
        reader, writer = connection
        first = head("POST", "/v1/chat/completions", self.direct_headers("flood_slow_body", b"x" * 4096)) + b"{"
        writer.write(first)
        record.sent = len(first)
        return await self.until_closed(record, reader, writer, b" ", self.spec.body_deadline + self.spec.slack)

    async def idle_connection(self) -> Record:
        record = Record("flood_connections", "idle", self.now())
        if (connection := await self.opened(record, trusted=False)) is None:
            return record
        return await self.until_closed(record, *connection, None, self.spec.head_deadline + self.spec.slack)

    async def endless_header(self) -> Record:
        record = Record("flood_endless_header", "as_fast_as_read", self.now())
        if (connection := await self.opened(record, trusted=False)) is None:
            return record
        reader, writer = connection
        answer = asyncio.ensure_future(read_answer(reader))
        batch = b"POST /v1/chat/completions HTTP/1.1\r\nHost: gateway\r\nx-demo-tag: flood_endless_header\r\n"
        line = b"X-Endless: " + b"e" * 1000 + b"\r\n"
        limit = min(15.0, self.spec.head_deadline + self.spec.slack)
        try:
            try:
                while record.sent < self.spec.endless_bytes and not answer.done():
                    writer.write(batch)
                    record.sent += len(batch)
                    await asyncio.wait_for(writer.drain(), max(0.1, limit - (self.now() - record.started)))
                    batch = line * 64
            except (ConnectionError, OSError, TimeoutError):
                pass  # the gateway closed it, or stopped reading: its answer (or silence) tells which
            await asyncio.wait({answer}, timeout=2.0)
        except asyncio.CancelledError:
            answer.cancel()
            writer.close()
            record.outcome, record.ended = "undecided", self.now()
            self.records.append(record)
            raise
        if not answer.done():
            answer.cancel()
            record.outcome = "open"
            record.detail = f"{record.sent} bytes of header written in {self.now() - record.started:.1f} s, still open"
        elif answer.exception() is None:
            _answered(record, *answer.result())
        else:
            error = answer.exception()
            record.outcome = "closed" if isinstance(error, asyncio.IncompleteReadError) and not error.partial else "reset"
        writer.close()
        record.ended = self.now()
        return record


def main(argv: list[str]) -> int:
    spec_path, out_path = argv
    raw = json.loads(open(spec_path).read())
    spec = Spec(**{**raw, "windows": [tuple(w) for w in raw["windows"]], "replicas": [tuple(r) for r in raw["replicas"]]})
    floods = Floods(spec)
    cpu = time.process_time()
    started = time.monotonic()
    try:
        import uvloop

        uvloop.run(floods.run())
    except ImportError:
        asyncio.run(floods.run())
    with open(out_path, "w") as out:
        for record in floods.records:
            out.write(json.dumps(asdict(record)) + "\n")
        lag = sorted(floods.lag)
        out.write(json.dumps({"harness": {
            "cpu_s": round(time.process_time() - cpu, 2), "wall_s": round(time.monotonic() - started, 2),
            "loop_lag_p99_ms": round((percentile(lag, 99) or 0) * 1000, 2),
            "loop_lag_max_ms": round((lag[-1] if lag else 0) * 1000, 2), "shed": dict(floods.shed)}}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""A small HTTP load generator for the benchmarks, and helpers to run and watch
server processes.

Load, two generators. `run_wrk(...)` drives wrk (C, one thread, keep-alive
connections) with a generated Lua script that checks every response and counts
every request it writes; it is the one to use for throughput and latency, since
it costs ~10x less CPU per request than aiohttp on the cores it shares with the
servers. `run_point(target, concurrency=..., duration_s=..., warmup_s=...)` opens
one aiohttp session with at most `concurrency` keep-alive connections and runs
`concurrency` workers, each sending the same request back to back. After a
warm-up (sent and checked, not timed) every request *started* inside the timed
window is timed from just before it is sent until its whole body has been read,
and, for streams, until its first body chunk arrived (time to first byte).
Every response, warm-up included, goes through `check`, so that a benchmark
never silently measures errors.

Processes: `Server` runs a server process with its output in a file and can
wait for a line matching a pattern; `wait_http_ok` polls a URL until it answers
200; `ProcStat` reads a process's CPU time and resident set from /proc, and
`machine_busy_seconds` the whole machine's (Linux); `ProcTree` the same summed
over a process and its descendants (nginx's workers, `serve --workers N`).
"""

from __future__ import annotations

import asyncio
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from multidict import CIMultiDictProxy

# --------------------------------------------------------------------------- load


@dataclass(frozen=True)
class Target:
    """One request, sent again and again."""

    method: str
    url: str
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes | None = None
    stream: bool = False  # time the first body chunk too


# check(status, headers, body) -> None when the response is right, else what is wrong.
Check = Callable[[int, CIMultiDictProxy[str], bytes], str | None]


def expect_status(status: int = 200) -> Check:
    def check(got: int, headers: CIMultiDictProxy[str], body: bytes) -> str | None:
        return None if got == status else f"status {got}: {body[:200]!r}"

    return check


@dataclass
class Point:
    """What one load point measured."""

    concurrency: int
    requests: int = 0  # timed (started inside the window)
    elapsed_s: float = 0.0  # first timed send to last timed completion
    latencies_ns: list[int] = field(default_factory=list)
    ttfb_ns: list[int] = field(default_factory=list)
    sent: int = 0  # every request, warm-up included
    statuses: Counter[int] = field(default_factory=Counter)  # every response, warm-up included
    failures: int = 0  # responses `check` refused (or that raised), warm-up included
    failure_examples: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)  # for the caller (CPU time, ...)

    @property
    def rps(self) -> float:
        return self.requests / self.elapsed_s if self.elapsed_s > 0 else float("nan")

    def latency_us(self, pct: float) -> float:
        return percentile(self.latencies_ns, pct) / 1000

    def ttfb_us(self, pct: float) -> float:
        return percentile(self.ttfb_ns, pct) / 1000

    @property
    def non_2xx(self) -> int:
        return sum(n for status, n in self.statuses.items() if not 200 <= status < 300)


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile (pct in 0..100); NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


async def run_point(
    target: Target,
    *,
    concurrency: int,
    duration_s: float,
    warmup_s: float,
    check: Check | None = None,
    on_window: Callable[[str], None] | None = None,
    max_examples: int = 5,
    request_timeout_s: float = 30.0,
) -> Point:
    """Load `target` with `concurrency` keep-alive workers; see the module docstring.

    `on_window("start")` is called when the timed window opens (after the
    warm-up, all connections open) and `on_window("end")` once the last timed
    request completed: read process counters there.
    """
    check = check or expect_status(200)
    point = Point(concurrency)
    headers = dict(target.headers)
    clock = time.perf_counter_ns
    window_start = last_done = 0
    stop_at = math.inf  # set when the window opens
    warmed = 0
    window_open = asyncio.Event()

    async def one(session: aiohttp.ClientSession) -> tuple[int, int | None]:
        """Send once and check the answer: (latency ns, time to first body chunk ns or None)."""
        first: int | None = None
        t0 = clock()
        try:
            async with session.request(target.method, target.url, data=target.body, headers=headers) as response:
                if target.stream:
                    chunks = []
                    chunk = await response.content.readany()
                    first = clock() - t0
                    while chunk:
                        chunks.append(chunk)
                        chunk = await response.content.readany()
                    body = b"".join(chunks)
                else:
                    body = await response.read()
                elapsed = clock() - t0
                point.statuses[response.status] += 1
                problem = check(response.status, response.headers, body)
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as error:
            elapsed = clock() - t0
            point.statuses[0] += 1  # 0: no HTTP status at all
            problem = f"client error: {error!r}"
        point.sent += 1
        if problem is not None:
            point.failures += 1
            if len(point.failure_examples) < max_examples:
                point.failure_examples.append(problem)
        return elapsed, first

    def open_window() -> None:
        nonlocal window_start, stop_at
        if on_window is not None:
            on_window("start")
        window_start = clock()
        stop_at = time.monotonic() + duration_s
        window_open.set()

    async def worker(session: aiohttp.ClientSession, warm_until: float) -> None:
        nonlocal warmed, last_done
        # Warm-up: opens this worker's connection and heats the path on both ends.
        # At least one request each, so that every connection is open before timing.
        while True:
            await one(session)
            if time.monotonic() >= warm_until:
                break
        warmed += 1
        if warmed == concurrency:
            open_window()
        await window_open.wait()
        while time.monotonic() < stop_at:
            latency, first = await one(session)
            point.latencies_ns.append(latency)
            if first is not None:
                point.ttfb_ns.append(first)
            last_done = clock()

    connector = aiohttp.TCPConnector(limit=concurrency, keepalive_timeout=60)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=request_timeout_s),
                                     skip_auto_headers=("User-Agent", "Accept-Encoding")) as session:
        warm_until = time.monotonic() + warmup_s
        await asyncio.gather(*(worker(session, warm_until) for _ in range(concurrency)))
        if on_window is not None:
            on_window("end")
    point.requests = len(point.latencies_ns)
    point.elapsed_s = (last_done - window_start) / 1e9 if point.requests else 0.0
    return point


# --------------------------------------------------------------------------- processes


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def clean_environment(drop_prefixes: Sequence[str] = ()) -> dict[str, str]:
    """This process's environment without variables starting with any of `drop_prefixes`."""
    return {k: v for k, v in os.environ.items() if not any(k.startswith(p) for p in drop_prefixes)}


class Server:
    """A server process whose stdout and stderr go to one log file."""

    def __init__(self, name: str, argv: Sequence[str], log_path: Path, *, env: Mapping[str, str] | None = None,
                 cwd: str | Path | None = None) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(self.argv, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                        env=dict(env) if env is not None else None, cwd=cwd)

    @property
    def pid(self) -> int:
        return self.process.pid

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def wait_for_line(self, pattern: str, timeout_s: float = 30.0) -> re.Match[str]:
        """The first match of `pattern` in the log; raises if the process exits or time runs out."""
        compiled = re.compile(pattern)
        deadline = time.monotonic() + timeout_s
        while True:
            match = compiled.search(self.log_text())
            if match:
                return match
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with status {self.process.returncode}:\n{self.tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name}: no line matching {pattern!r} after {timeout_s:.0f} s:\n{self.tail()}")
            time.sleep(0.02)

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def stop(self, timeout_s: float = 10.0) -> int | None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        return self.process.returncode


async def wait_http_ok(url: str, timeout_s: float = 30.0, server: Server | None = None) -> None:
    """Poll `url` until it answers 200."""
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            if server is not None and server.process.poll() is not None:
                raise RuntimeError(f"{server.name} exited with status {server.process.returncode}:\n{server.tail()}")
            try:
                async with session.get(url) as response:
                    body = await response.read()
                    if response.status == 200:
                        return
                    last = f"{response.status} {body[:200]!r}"
            except (aiohttp.ClientError, OSError) as error:
                last = repr(error)
            await asyncio.sleep(0.05)
    raise RuntimeError(f"{url} not ready after {timeout_s:.0f} s: {last}")


_CLOCK_TICK = os.sysconf("SC_CLK_TCK")


class ProcStat:
    """CPU time and memory of one Linux process, from /proc/<pid>."""

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def cpu_seconds(self) -> float:
        """utime + stime (user and system CPU time), in seconds (clock-tick resolution)."""
        with open(f"/proc/{self.pid}/stat", "rb") as f:
            text = f.read()
        fields = text[text.rindex(b")") + 2:].split()
        # After "pid (comm) ": state is field 3, so utime (14) and stime (15) are at 11 and 12.
        return (int(fields[11]) + int(fields[12])) / _CLOCK_TICK

    def status_kib(self, key: str) -> int:
        """A `/proc/<pid>/status` size in KiB, e.g. VmHWM (peak RSS) or VmRSS."""
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
        raise KeyError(key)

    @property
    def peak_rss_kib(self) -> int:
        return self.status_kib("VmHWM")

    @property
    def rss_kib(self) -> int:
        return self.status_kib("VmRSS")


def machine_busy_seconds() -> float:
    """CPU time all cores spent busy since boot (/proc/stat: everything but idle and iowait), in seconds.

    Subtract the benchmark's own processes to see what else loaded the machine."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    user, nice, system, idle, iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / _CLOCK_TICK


def descendants(pid: int) -> list[int]:
    """`pid` and every process below it (Linux: /proc/<pid>/task/<tid>/children)."""
    found, pending = [], [pid]
    while pending:
        current = pending.pop()
        found.append(current)
        try:
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/children") as f:
                    pending.extend(int(child) for child in f.read().split())
        except OSError:
            continue
    return found


class ProcTree:
    """ProcStat summed over a process and its descendants, as they are when asked."""

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def _each(self) -> list[ProcStat]:
        return [ProcStat(pid) for pid in descendants(self.pid)]

    def cpu_seconds(self) -> float:
        total = 0.0
        for proc in self._each():
            try:
                total += proc.cpu_seconds()
            except OSError:
                pass  # exited meanwhile
        return total

    def _sum(self, key: str) -> int:
        total = 0
        for proc in self._each():
            try:
                total += proc.status_kib(key)
            except (OSError, KeyError):
                pass
        return total

    @property
    def peak_rss_kib(self) -> int:
        """The sum of each process's peak (an upper bound on the tree's peak)."""
        return self._sum("VmHWM")

    @property
    def rss_kib(self) -> int:
        return self._sum("VmRSS")

    @property
    def processes(self) -> int:
        return len(descendants(self.pid))


# --------------------------------------------------------------------------- wrk


@dataclass(frozen=True)
class WrkCheck:
    """What every response must be, checked in wrk's Lua `response()`."""

    status: int = 200
    body_contains: bytes = b""
    header_equals: Mapping[str, str] = field(default_factory=dict)  # lower-case names
    header_contains: Mapping[str, Sequence[str]] = field(default_factory=dict)
    unique_header: str | None = None  # must be present, 32 hex digits, never seen twice in one run


@dataclass
class WrkRun:
    connections: int
    completed: int  # responses received (wrk's summary.requests)
    sent: int  # requests written: completed + those still in flight when wrk stopped
    ok: int  # responses that passed every check
    duration_s: float
    p50_us: float
    p99_us: float
    statuses: Counter[int]
    errors: dict[str, int]  # connect / read / write / timeout (socket level)
    examples: list[str]
    cpu_s: float  # wrk's own user+system CPU time

    @property
    def failures(self) -> int:
        return self.completed - self.ok + sum(self.errors.values())

    @property
    def rps(self) -> float:
        return self.completed / self.duration_s if self.duration_s > 0 else float("nan")


def find_wrk(install: bool = True) -> str | None:
    """wrk on PATH, else Debian's (apt-get, as root), else None."""
    found = shutil.which("wrk")
    if found or not install or os.geteuid() != 0 or not shutil.which("apt-get"):
        return found
    print("bench: no wrk found; installing Debian's wrk (apt-get install wrk)", flush=True)
    environ = os.environ | {"DEBIAN_FRONTEND": "noninteractive"}
    for argv in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "wrk"]):
        if subprocess.run(argv, env=environ, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT).returncode != 0:
            return None
    return shutil.which("wrk")


def _lua_string(value: str | bytes) -> str:
    """A Lua string literal (decimal escapes: safe for any byte)."""
    raw = value.encode() if isinstance(value, str) else value
    return '"' + "".join(chr(b) if 32 <= b < 127 and b not in (34, 92) else f"\\{b}" for b in raw) + '"'


def wrk_script(method: str, headers: Mapping[str, str], body: bytes | None, check: WrkCheck) -> str:
    """A wrk Lua script sending one request again and again and checking each answer.

    `request()` counts what is written, so the caller can account for requests wrk
    abandoned in flight when its time ran out; `done()` prints "WRK key value" lines."""
    lines = [f"wrk.method = {_lua_string(method)}"]
    if body is not None:
        lines.append(f"wrk.body = {_lua_string(body)}")
    lines += [f"wrk.headers[{_lua_string(k)}] = {_lua_string(v)}" for k, v in headers.items()]
    equals = ", ".join(f"[{_lua_string(k.lower())}] = {_lua_string(v)}" for k, v in check.header_equals.items())
    contains = ", ".join(f"[{_lua_string(k.lower())}] = {{{', '.join(map(_lua_string, v))}}}"
                         for k, v in check.header_contains.items())
    unique = _lua_string(check.unique_header.lower()) if check.unique_header else "nil"
    lines.append(f"""
local expect_status, expect_body, unique = {check.status}, {_lua_string(check.body_contains)}, {unique}
local equals, contains = {{{equals}}}, {{{contains}}}
sent, ok, statuses, examples = 0, 0, {{}}, {{}}
local seen, req = {{}}, nil
local threads = {{}}

function setup(thread) table.insert(threads, thread) end
function init(args) req = wrk.format() end
function request() sent = sent + 1; return req end

local function problem(text)
  if #examples < 5 then examples[#examples + 1] = text end
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
  if status ~= expect_status then return problem("status " .. status .. ": " .. string.sub(body, 1, 200)) end
  local h = {{}}
  for k, v in pairs(headers) do h[string.lower(k)] = v end
  for k, v in pairs(equals) do
    if h[k] ~= v then return problem(k .. ": " .. tostring(h[k]) .. " (expected " .. v .. ")") end
  end
  for k, words in pairs(contains) do
    for _, word in ipairs(words) do
      if not string.find(h[k] or "", word, 1, true) then return problem(k .. ": " .. tostring(h[k]) .. " lacks " .. word) end
    end
  end
  if not string.find(body, expect_body, 1, true) then return problem("unexpected body: " .. string.sub(body, 1, 200)) end
  if unique then
    local id = h[unique]
    if id == nil or #id ~= 32 or string.find(id, "[^0-9a-f]") then return problem(unique .. ": " .. tostring(id)) end
    if seen[id] then return problem(unique .. " " .. id .. " seen twice") end
    seen[id] = true
  end
  ok = ok + 1
end

function done(summary, latency, requests)
  local total_sent, total_ok = 0, 0
  for _, thread in ipairs(threads) do
    total_sent = total_sent + thread:get("sent")
    total_ok = total_ok + thread:get("ok")
    for status, n in pairs(thread:get("statuses")) do io.write(string.format("WRK status %d %d\\n", status, n)) end
    for _, text in ipairs(thread:get("examples")) do io.write("WRK example " .. string.gsub(text, "\\n", " ") .. "\\n") end
  end
  local e = summary.errors
  io.write(string.format("WRK completed %d\\nWRK sent %d\\nWRK ok %d\\nWRK duration_us %d\\n",
                         summary.requests, total_sent, total_ok, summary.duration))
  io.write(string.format("WRK p50_us %d\\nWRK p99_us %d\\n", latency:percentile(50), latency:percentile(99)))
  io.write(string.format("WRK errors %d %d %d %d\\n", e.connect, e.read, e.write, e.timeout))
end
""")
    return "\n".join(lines)


def run_wrk(wrk: str, url: str, script: str, *, connections: int, duration_s: float,
            timeout_s: float = 10.0) -> WrkRun:
    """One wrk run (one thread): what it measured and counted."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", prefix="bench-wrk-") as lua:
        lua.write(script)
        lua.flush()
        argv = [wrk, "-t1", f"-c{connections}", f"-d{max(1, round(duration_s))}s", f"--timeout={timeout_s:g}s",
                "-s", lua.name, url]
        process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        assert process.stdout is not None
        output = process.stdout.read().decode(errors="replace")
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
    values: dict[str, list[str]] = {}
    statuses: Counter[int] = Counter()
    examples = []
    for line in output.splitlines():
        if line.startswith("WRK status "):
            code, count = line.split()[2:4]
            statuses[int(code)] += int(count)
        elif line.startswith("WRK example "):
            examples.append(line[len("WRK example "):])
        elif line.startswith("WRK "):
            key, *rest = line.split()[1:]
            values[key] = rest
    if process.returncode != 0 or "completed" not in values:
        raise RuntimeError(f"wrk failed (status {process.returncode}): {output[-2000:]}")
    connect, read, write, timeout = (int(v) for v in values["errors"])
    # wrk calls request() once before it starts, to see whether it pipelines (script_verify_request):
    # that request is never written.
    return WrkRun(connections=connections, completed=int(values["completed"][0]), sent=int(values["sent"][0]) - 1,
                  ok=int(values["ok"][0]), duration_s=int(values["duration_us"][0]) / 1e6,
                  p50_us=float(values["p50_us"][0]), p99_us=float(values["p99_us"][0]), statuses=statuses,
                  errors={"connect": connect, "read": read, "write": write, "timeout": timeout},
                  examples=examples, cpu_s=usage.ru_utime + usage.ru_stime)

"""`make fleet`: the docker-compose topology as local processes, for trying a fleet out.

  Redis  <-  N x `gateway serve`  <-  load balancer (nginx, else a small Python one)  <-  you
                     |
              demo upstream            (and Prometheus, when a `prometheus` binary is on PATH)

Every process is started here, in its own session (so Ctrl-C reaches this process alone),
and stopped here in order: load balancer, replicas, upstream, Redis. Redis is `REDIS_URL`
(as `scripts/with-redis` exports it; the fleet takes a namespace of its own) or a private
redis-server started here.

Client addresses, as in production: the load balancer connects to the replicas from
127.0.0.2, the replicas' only trusted proxy (`trusted_proxies: [127.0.0.2/32]`), and
appends the address it saw to X-Forwarded-For. Local callers (127.0.0.1) play the
internet: the load balancer believes their X-Forwarded-For as nginx's realip module
would believe a CDN's, so `-H 'X-Forwarded-For: 217.218.0.1'` plays a caller in Iran. A
request sent straight to a replica, bypassing the load balancer, cannot choose its
country: 127.0.0.1 is not a trusted proxy there.

`python -m devtools.fleet_local --help` for options; `--check` sends the examples through
the load balancer, prints what each answered and exits. The demo credentials and examples
are the compose demo's (gateway/demo/compose.py), made the same way here.
Tests drive `LocalFleet` directly (tests/test_make_fleet.py).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.demo.command import AUDIENCE, CN, IR, ISSUER, JP, SHIPPED_POLICIES, US, Example
from gateway.demo.compose import Credentials, examples, make_credentials

REPO = Path(__file__).resolve().parent.parent
NGINX_PROXY_CONF = REPO / "deploy" / "nginx" / "proxy.conf"
PROMETHEUS_RULES = REPO / "deploy" / "prometheus" / "alerts.yml"
LB_SOURCE = "127.0.0.2"  # the load balancer's address as the replicas see it: their only trusted proxy
EDGE = "127.0.0.1"  # local callers, whose X-Forwarded-For the load balancer believes
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0


class FleetError(Exception):
    """Something the fleet needs could not be started; the message says what and why."""


# ---------------------------------------------------------------- processes


@dataclass
class Child:
    name: str
    argv: list[str]
    log_path: Path
    env: dict[str, str] | None = None
    cwd: Path | None = None
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> Child:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            # Its own session: Ctrl-C in the terminal reaches the fleet, which stops everything in order.
            self.process = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            env=self.env, cwd=self.cwd, start_new_session=True)
        return self

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def signal(self, signum: int) -> None:
        if self.alive():
            assert self.process is not None
            self.process.send_signal(signum)

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> int | None:
        """SIGTERM, then SIGKILL after `timeout`; the exit status."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout)
        return self.process.returncode


def _free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def _port_or_free(port: int) -> int:
    if port == 0:
        return _free_port()
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return _free_port()
    return port


def _http_status(url: str, timeout: float = 1.0) -> int | None:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code
    except (OSError, ValueError):
        return None


def _wait(what: str, check: Any, child: Child | None, timeout: float = START_TIMEOUT_S) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if child is not None and child.process is not None and child.process.poll() is not None:
            raise FleetError(f"{what}: {child.name} exited with status {child.process.returncode}; "
                             f"its log ({child.log_path}) ends:\n{child.log()[-3000:]}")
        found = check()
        if found:
            return found
        time.sleep(0.05)
    tail = f"; its log ({child.log_path}) ends:\n{child.log()[-3000:]}" if child is not None else ""
    raise FleetError(f"{what}: not within {timeout:.0f} s{tail}")


def find_nginx() -> str | None:
    return shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)), None)


def install_nginx(log: Any = sys.stderr) -> str | None:
    """Debian's nginx, when this runs as root with apt-get (as scripts/with-redis installs redis-server).
    No service is started: a policy-rc.d that refuses is put in place for the install if none is."""
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return None
    guard = Path("/usr/sbin/policy-rc.d")
    made_guard = False
    if not guard.exists():
        guard.write_text("#!/bin/sh\n# frontier-gateway fleet: no service starts during this install\nexit 101\n")
        guard.chmod(0o755)
        made_guard = True
    environ = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    try:
        print("fleet: no nginx found; installing Debian's nginx (apt-get install nginx)", file=log, flush=True)
        for argv in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "nginx"]):
            done = subprocess.run(argv, env=environ, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=120)
            if done.returncode != 0:
                print(f"fleet: `{' '.join(argv)}` failed: {done.stderr.strip()[-500:]}", file=log, flush=True)
                return None
    except (OSError, subprocess.TimeoutExpired) as error:
        print(f"fleet: installing nginx failed: {error}", file=log, flush=True)
        return None
    finally:
        if made_guard:
            guard.unlink(missing_ok=True)
    return find_nginx()


def nginx_config(directory: Path, listen_port: int, replica_ports: list[int]) -> str:
    """A self-contained nginx.conf for this fleet; the proxy settings are the deployment's own
    (deploy/nginx/proxy.conf), included as docker-compose.yml includes them."""
    servers = "\n".join(f"        server 127.0.0.1:{port} max_fails=1 fail_timeout=5s;" for port in replica_ports)
    proxy = f"include {NGINX_PROXY_CONF};" if NGINX_PROXY_CONF.exists() else (
        "proxy_http_version 1.1; proxy_set_header Connection \"\"; proxy_set_header Host $host;\n"
        "            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for; proxy_buffering off;\n"
        "            proxy_read_timeout 600s; proxy_next_upstream error timeout;")
    temp = directory / "temp"
    return f"""# Written by devtools/fleet_local.py for one local fleet; deleted with it.
daemon off;
master_process on;
worker_processes 1;
pid {directory}/nginx.pid;
error_log {directory}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log {directory}/access.log;
    client_body_temp_path {temp}/body;
    proxy_temp_path {temp}/proxy;
    fastcgi_temp_path {temp}/fastcgi;
    uwsgi_temp_path {temp}/uwsgi;
    scgi_temp_path {temp}/scgi;
    upstream frontier_gateway {{
{servers}
        keepalive 16;
    }}
    server {{
        listen 127.0.0.1:{listen_port};
        # Local callers play the internet: believe their X-Forwarded-For (production: your CDN/edge only).
        set_real_ip_from {EDGE}/32;
        real_ip_header X-Forwarded-For;
        real_ip_recursive on;
        client_max_body_size 4m;
        # Bodies up to the cap stay in memory: nginx's workers may not reach a temp file under
        # a private directory (pytest's tmp_path is 0700), and would answer 500.
        client_body_buffer_size 4m;
        location / {{
            proxy_pass http://frontier_gateway;
            # The replicas trust exactly this source address.
            proxy_bind {LB_SOURCE};
            {proxy}
        }}
    }}
}}
"""


# ---------------------------------------------------------------- the Python load balancer


HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
                        "transfer-encoding", "upgrade", "content-length", "x-forwarded-for"})


async def run_python_lb(port: int, upstreams: list[str], *, source: str = LB_SOURCE, edge: str = EDGE,
                        ready: asyncio.Event | None = None, stop: asyncio.Event | None = None) -> None:
    """The nginx set-up above in aiohttp, for machines without nginx: round robin over `upstreams`
    (host:port), connections from `source`, the client's X-Forwarded-For passed on with the address
    seen appended (a caller from `edge` is believed, as realip would), a replica that refuses the
    connection skipped for 5 s and the request tried on the next (nothing is resent once sent),
    answers streamed back chunk by chunk."""
    import aiohttp
    from aiohttp import web
    from yarl import URL

    from gateway.request.clientip import ForwardedForError, TrustedProxies, client_ip

    edges = TrustedProxies([f"{edge}/32"])
    connector = aiohttp.TCPConnector(local_addr=(source, 0), limit=0)
    session = aiohttp.ClientSession(connector=connector, auto_decompress=False,
                                    timeout=aiohttp.ClientTimeout(total=None, connect=5, sock_read=600))
    down_until: dict[str, float] = {}
    turn = 0

    async def handle(request: web.Request) -> web.StreamResponse:
        nonlocal turn
        body = await request.read()
        peer = request.transport.get_extra_info("peername")[0] if request.transport else None
        forwarded = request.headers.getall("X-Forwarded-For", [])
        try:
            client = (client_ip(peer, forwarded, edges) if peer and edges.contains(peer) else peer) or peer or "unknown"
        except ForwardedForError:  # as realip, an edge's unreadable header is not believed
            client = peer or "unknown"
        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP]
        headers.append(("X-Forwarded-For", ", ".join([*forwarded, client])))
        now = time.monotonic()
        order = [upstreams[(turn + i) % len(upstreams)] for i in range(len(upstreams))]
        turn += 1
        order.sort(key=lambda target: down_until.get(target, 0) > now)  # healthy first, in turn
        for target in order:
            try:
                upstream = await session.request(request.method, URL(f"http://{target}{request.raw_path}", encoded=True),
                                                 headers=headers, data=body or None, allow_redirects=False,
                                                 skip_auto_headers=("Accept-Encoding", "User-Agent", "Content-Type"))
            except aiohttp.ClientConnectorError:  # refused: nothing was sent, the next replica may take it
                down_until[target] = time.monotonic() + 5
                continue
            except (aiohttp.ClientError, asyncio.TimeoutError):
                return web.Response(status=502, text="bad gateway\n")
            try:
                response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
                for name, value in upstream.headers.items():
                    if name.lower() not in HOP_BY_HOP:
                        response.headers.add(name, value)
                if "Content-Length" in upstream.headers:
                    response.content_length = int(upstream.headers["Content-Length"])
                await response.prepare(request)
                async for chunk in upstream.content.iter_any():
                    await response.write(chunk)
                await response.write_eof()
                return response
            except (aiohttp.ClientError, asyncio.TimeoutError, ConnectionError):
                if response.prepared:  # cut short: the client sees a truncated answer, as with nginx
                    request.transport.close() if request.transport else None
                    return response
                return web.Response(status=502, text="bad gateway\n")
            finally:
                upstream.release()
        return web.Response(status=502, text="no replica answers\n")

    app = web.Application(client_max_size=4 * 1024 * 1024)
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    print(f"python load balancer listening on http://127.0.0.1:{port}", flush=True)
    if ready is not None:
        ready.set()
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
        await session.close()


# ---------------------------------------------------------------- the fleet


@dataclass
class Replica:
    name: str
    child: Child
    config_path: Path
    audit_path: Path
    url: str = ""
    admin_url: str = ""


@dataclass
class LocalFleet:
    """The topology, started by `start()` and stopped by `stop()` (also on any failure in start)."""

    workdir: Path
    replicas_wanted: int = 2
    lb: str = "auto"  # auto | nginx | python
    port: int = 8080  # of the load balancer; taken: a free one
    redis_url: str | None = None  # None: $REDIS_URL, else a private redis-server
    namespace: str | None = None
    policy_dir: Path = SHIPPED_POLICIES
    prometheus: str = "auto"  # auto | off
    install: bool = True  # install nginx with apt-get when missing (root only)
    python: str = sys.executable
    # Hooks for harnesses (bench/soak.py): extra arguments of the demo upstream and of a Redis
    # started here (e.g. persistence, to survive a restart), and the replicas' upstream read timeout.
    upstream_args: list[str] = field(default_factory=list)
    redis_args: list[str] = field(default_factory=list)
    upstream_read_timeout_s: float = 120.0
    replicas: list[Replica] = field(default_factory=list)
    children: list[Child] = field(default_factory=list)
    lb_kind: str = ""
    lb_url: str = ""
    lb_child: Child | None = None
    upstream_url: str = ""
    prometheus_url: str = ""
    credentials: Credentials | None = None
    notes: list[str] = field(default_factory=list)

    # -- starting

    def start(self) -> LocalFleet:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        from gateway.config import RedisConfig

        self.workdir.mkdir(parents=True, exist_ok=True)
        self.namespace = self.namespace or f"fleet-{secrets.token_hex(4)}"
        self.redis_url = self.redis_url or os.environ.get("REDIS_URL") or self._start_redis()
        redis = RedisConfig(url=self.redis_url, namespace=self.namespace, timeout_s=2.0)
        self._start_upstream()
        self.credentials = make_credentials(redis, self.workdir / "demo")
        for index in range(self.replicas_wanted):
            self._start_replica(index)
        deadline = time.monotonic() + START_TIMEOUT_S
        for replica in self.replicas:
            self._wait_replica(replica, deadline)
        self._start_lb()
        if self.prometheus != "off":
            self._start_prometheus()

    def _environ(self) -> dict[str, str]:
        # The replicas read their config file only; GATEWAY_* variables would override it.
        return {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")} | {"PYTHONUNBUFFERED": "1"}

    def _spawn(self, name: str, argv: list[str], **options: Any) -> Child:
        child = Child(name, argv, self.workdir / "logs" / f"{name}.log", **options).start()
        self.children.append(child)
        return child

    def _start_redis(self) -> str:
        binary = os.environ.get("REDIS_SERVER_BIN") or shutil.which("redis-server")
        if not binary:
            raise FleetError("no Redis: set REDIS_URL, or put redis-server on PATH (or run under scripts/with-redis)")
        for _ in range(5):
            port = _free_port()
            directory = self.workdir / "redis"
            directory.mkdir(parents=True, exist_ok=True)
            child = self._spawn("redis", [binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "",
                                          "--appendonly", "no", "--dir", str(directory), *self.redis_args])
            try:
                _wait("redis-server", lambda: _redis_answers(port), child, 10)
                return f"redis://127.0.0.1:{port}/0"
            except FleetError:
                if "already in use" not in child.log():
                    raise
        raise FleetError("redis-server: no free port after 5 attempts")

    def _start_upstream(self) -> None:
        models = ",".join(_policy_models(self.policy_dir))
        child = self._spawn("upstream", [self.python, "-m", "gateway.demo.upstream", "--host", "127.0.0.1", "--port", "0",
                                         "--name", "fleet-upstream", "--models", models, *self.upstream_args],
                            env=self._environ())
        found = _wait("the demo upstream", lambda: re.search(r"listening on (http://\S+)", child.log()), child)
        self.upstream_url = found.group(1)

    def _start_replica(self, index: int) -> None:
        assert self.credentials is not None
        name = f"gateway-{index + 1}"
        home = self.workdir / name
        (home / "state").mkdir(parents=True, exist_ok=True)
        audit_path = home / "audit" / "audit.jsonl"
        config_path = home / "gateway.yaml"
        config_path.write_text(json.dumps({
            "listen": "127.0.0.1:0",
            "admin_listen": "127.0.0.1:0",
            "policy_dir": str(self.policy_dir),
            "state_dir": str(home / "state"),
            "upstreams": {"default": {"url": self.upstream_url, "connect_timeout_s": 2,
                                     "read_timeout_s": self.upstream_read_timeout_s}},
            "trusted_proxies": [f"{LB_SOURCE}/32"],
            # A local fleet runs on whatever database this package embeds, however old:
            # keeping a database fresh is an operator's job (docs/operators.md), not this tool's.
            "geoip": {"max_age_days": 3650},
            "identity": {"jwt": {"jwks_file": str(self.credentials.jwks_path), "issuer": ISSUER, "audience": AUDIENCE,
                                 "algorithms": ["RS256"]}},
            "redis": {"url": self.redis_url, "namespace": self.namespace},
            "audit": {"path": str(audit_path)},
            "admin": {"tokens": [{"name": "fleet-operator", "role": "operator", "sha256": self.credentials.operator_sha256}]},
        }, indent=2))
        child = self._spawn(name, [self.python, "-m", "gateway", "serve", "--config", str(config_path)],
                            env=self._environ(), cwd=home)
        self.replicas.append(Replica(name, child, config_path, audit_path))

    def _wait_replica(self, replica: Replica, deadline: float) -> None:
        found = _wait(f"{replica.name} to listen", lambda: re.search(r"gateway listening on (\d+) \(admin on (\d+)\)",
                                                                      replica.child.log()),
                      replica.child, max(1.0, deadline - time.monotonic()))
        replica.url, replica.admin_url = (f"http://127.0.0.1:{found.group(i)}" for i in (1, 2))
        _wait(f"{replica.name} to be ready (/readyz)", lambda: _http_status(replica.admin_url + "/readyz") == 200,
              replica.child, max(1.0, deadline - time.monotonic()))

    def _start_lb(self) -> None:
        port = _port_or_free(self.port)
        ports = [int(r.url.rsplit(":", 1)[1]) for r in self.replicas]
        nginx = None
        if self.lb in ("auto", "nginx"):
            nginx = find_nginx() or (install_nginx() if self.install else None)
            if nginx is None and self.lb == "nginx":
                raise FleetError("--lb nginx: no nginx binary (and it could not be installed: apt-get needs root)")
            if nginx is None:
                self.notes.append("nginx not found: using the Python load balancer (devtools/fleet_local.py)")
        if nginx is not None:
            directory = self.workdir / "nginx"
            (directory / "temp").mkdir(parents=True, exist_ok=True)
            os.chmod(directory / "temp", 0o777)  # nginx's workers may run as another user when started as root
            config = directory / "nginx.conf"
            config.write_text(nginx_config(directory, port, ports))
            child = self._spawn("nginx", [nginx, "-p", str(directory), "-c", str(config), "-e", str(directory / "error.log")])
            self.lb_kind = f"nginx ({nginx})"
        else:
            upstreams = ",".join(f"127.0.0.1:{p}" for p in ports)
            child = self._spawn("lb", [self.python, "-m", "devtools.fleet_local", "lb", "--port", str(port),
                                       "--upstreams", upstreams], env=self._environ())
            self.lb_kind = "python (devtools/fleet_local.py)"
        self.lb_child = child
        self.lb_url = f"http://127.0.0.1:{port}"
        _wait(f"the load balancer ({self.lb_kind}) on port {port}", lambda: _port_open(port), child, 15)

    def _start_prometheus(self) -> None:
        binary = shutil.which("prometheus")
        if binary is None:
            self.notes.append("Prometheus: no `prometheus` binary on PATH, not started "
                              "(docker compose up runs it; or apt-get install prometheus)")
            return
        directory = self.workdir / "prometheus"
        directory.mkdir(parents=True, exist_ok=True)
        port = _free_port()
        targets = [r.admin_url.removeprefix("http://") for r in self.replicas]
        config = {"global": {"scrape_interval": "5s", "evaluation_interval": "5s"},
                  "rule_files": [str(PROMETHEUS_RULES)] if PROMETHEUS_RULES.exists() else [],
                  "scrape_configs": [{"job_name": "frontier-gateway", "static_configs": [{"targets": targets}]}]}
        (directory / "prometheus.yml").write_text(json.dumps(config, indent=2))
        child = self._spawn("prometheus", [binary, f"--config.file={directory / 'prometheus.yml'}",
                                           f"--storage.tsdb.path={directory / 'data'}",
                                           f"--web.listen-address=127.0.0.1:{port}"])
        self.prometheus_url = f"http://127.0.0.1:{port}"
        try:
            _wait("Prometheus", lambda: _http_status(self.prometheus_url + "/-/ready") == 200, child, 30)
        except FleetError as error:
            self.notes.append(f"Prometheus did not start: {str(error)[:300]}")
            child.stop()
            self.prometheus_url = ""

    # -- using

    def examples(self) -> list[Example]:
        assert self.credentials is not None
        return examples(self.credentials)

    def send(self, example: Example, timeout: float = 10.0) -> tuple[int, dict[str, str], bytes]:
        import http.client

        base = self.replicas[0].url if example.direct else self.lb_url
        host, port = base.removeprefix("http://").split(":")
        connection = http.client.HTTPConnection(host, int(port), timeout=timeout)
        try:
            body = json.dumps(example.body).encode() if example.body is not None else None
            headers = dict(example.headers) | ({"Content-Type": "application/json"} if body is not None else {})
            connection.request("POST" if body is not None else "GET", example.path, body=body, headers=headers)
            response = connection.getresponse()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
        finally:
            connection.close()

    def check(self) -> list[tuple[Example, int]]:
        return [(example, self.send(example)[0]) for example in self.examples()]

    def kill_replica(self, index: int, signum: int = signal.SIGKILL) -> None:
        self.replicas[index].child.signal(signum)
        if self.replicas[index].child.process is not None:
            self.replicas[index].child.process.wait(STOP_TIMEOUT_S)

    def describe(self) -> str:
        assert self.credentials is not None
        lines = [f"Frontier Gateway fleet — {len(self.replicas)} replicas, Redis namespace {self.namespace}",
                 f"  load balancer  {self.lb_url}   ({self.lb_kind}; connects to the replicas from {LB_SOURCE})"]
        for replica in self.replicas:
            lines.append(f"  {replica.name:<13}  {replica.url}   admin {replica.admin_url}   audit {replica.audit_path}")
        lines += [f"  redis          {self.redis_url}",
                  f"  upstream       {self.upstream_url}   (the demo model server)"]
        if self.prometheus_url:
            lines.append(f"  prometheus     {self.prometheus_url}")
        lines += [f"  logs           {self.workdir / 'logs'}", ""]
        lines += [f"  note: {note}" for note in self.notes]
        lines += ["",
                  f"The replicas trust only the load balancer ({LB_SOURCE}). Local callers play the internet: the load",
                  "balancer believes their X-Forwarded-For and appends it, as nginx's realip module would for a CDN",
                  f"({US} is the US, {JP} Japan, {CN} China, {IR} Iran in the embedded country database).", ""]
        for number, example in enumerate(self.examples(), 1):
            base = self.replicas[0].url if example.direct else self.lb_url
            lines += [f"{number}. {example.title} — expect {example.expect}", f"   {example.curl(base)}", ""]
        first = self.replicas[0]
        lines += ["Emergency change through the admin API of any replica (in force on all within a second):",
                  f"   export GATEWAY_ADMIN_URL={first.admin_url} GATEWAY_ADMIN_TOKEN={self.credentials.operator_token}",
                  "   gateway admin suspend --model example-small-1 --deny-outside us --reason 'drill' --reference DRILL-1",
                  "   gateway admin changes",
                  "",
                  f"More API keys: gateway keys create --config {first.config_path} --org org-partner-us"]
        return "\n".join(lines)

    # -- stopping

    def stop(self) -> dict[str, int | None]:
        """Load balancer first (no new requests), then the replicas (each finishes what it has in
        flight and writes its audit records), the upstream, Prometheus and a Redis started here."""
        order = ([self.lb_child] if self.lb_child else []) + [r.child for r in self.replicas]
        order += [c for c in self.children if c not in order]
        codes: dict[str, int | None] = {}
        for child in order:
            try:
                codes[child.name] = child.stop()
            except Exception:
                codes[child.name] = None
        return codes

    def __enter__(self) -> LocalFleet:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _policy_models(policy_dir: Path) -> list[str]:
    from gateway.policy.load import load_bundle

    return sorted(load_bundle(policy_dir).policy.models)


def _redis_answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


# ---------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["lb"]:
        parser = argparse.ArgumentParser(prog="python -m devtools.fleet_local lb")
        parser.add_argument("--port", type=int, required=True)
        parser.add_argument("--upstreams", required=True, help="host:port,host:port")
        parser.add_argument("--source", default=LB_SOURCE)
        args = parser.parse_args(argv[1:])
        asyncio.run(run_python_lb(args.port, args.upstreams.split(","), source=args.source))
        return 0
    parser = argparse.ArgumentParser(prog="python -m devtools.fleet_local",
                                     description="Run a local gateway fleet: Redis, N replicas, a load balancer, "
                                                 "the demo upstream (and Prometheus if installed).")
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--port", type=int, default=8080, help="load balancer port (a free one if taken)")
    parser.add_argument("--lb", choices=("auto", "nginx", "python"), default="auto")
    parser.add_argument("--redis-url", help="default: $REDIS_URL, else a private redis-server")
    parser.add_argument("--policy", type=Path, default=SHIPPED_POLICIES, help="policy bundle directory")
    parser.add_argument("--workdir", type=Path, help="default: a temporary directory, removed at the end")
    parser.add_argument("--no-prometheus", action="store_true")
    parser.add_argument("--no-install", action="store_true", help="never apt-get install nginx")
    parser.add_argument("--check", action="store_true", help="send every example through the load balancer, report, exit")
    args = parser.parse_args(argv)
    if args.replicas < 1:
        parser.error("--replicas must be at least 1")
    keep = args.workdir is not None
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="gateway-fleet-"))
    stop = False

    def interrupted(signum: int, frame: Any) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, interrupted)
    signal.signal(signal.SIGINT, interrupted)
    fleet = LocalFleet(workdir, args.replicas, args.lb, args.port, args.redis_url, policy_dir=args.policy.resolve(),
                       prometheus="off" if args.no_prometheus else "auto", install=not args.no_install)
    status = 0
    try:
        fleet.start()
        print(fleet.describe(), flush=True)
        if not args.check:
            print("\nPress Ctrl-C to stop everything.", flush=True)
        if args.check:
            print("\nChecking every example:")
            for example, got in fleet.check():
                print(f"  {'ok ' if got == example.expect else 'BAD'} {got}  {example.title}")
                status |= got != example.expect
            return status
        while not stop and all(c.alive() for c in fleet.children if c.name != "prometheus"):
            time.sleep(0.2)
        if not stop:
            dead = [c.name for c in fleet.children if not c.alive()]
            print(f"fleet: {', '.join(dead)} stopped; stopping everything", file=sys.stderr)
            status = 1
        return status
    except FleetError as error:
        print(f"fleet: {error}", file=sys.stderr)
        return 1
    finally:
        print("\nstopping the fleet...", file=sys.stderr, flush=True)
        fleet.stop()
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

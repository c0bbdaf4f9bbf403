"""A fleet of real `gateway serve` processes sharing one real Redis, for
tests/test_fleet.py: replicas (each its own ports, state_dir and audit file;
one namespace per fleet), a demo upstream in a thread that records what it
received, a private redis-server that a test may kill and restart, and a tiny
HTTP client that never raises on an HTTP status.

Every process started here is ended by `close()`, which the fixtures call in
their finalizers; every wait is bounded by time.
"""

from __future__ import annotations

import asyncio
import hashlib
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from conftest import GEOIP, GEOIP_MAX_AGE_DAYS, REFERENCE_POLICY
from e2e import AUDIENCE, CATALOGUE, ISSUER, LoopThread, SigningKey
from gateway.demo.upstream import DemoServer, serve as serve_upstream
from gateway.identity import ApiKeyStore

US_IP, CN_IP, SE_IP = "216.160.83.56", "175.16.199.1", "89.160.20.112"
ORGS = ["org-public", "org-acme", "org-caisi", "org-new"]  # org-new is in no bundle until a test adds it
OPERATOR_TOKEN, VIEWER_TOKEN = "operator-" + uuid.uuid4().hex, "viewer-" + uuid.uuid4().hex
# More operators, for change control's second (and third) person.
SECOND_OPERATOR, THIRD_OPERATOR = "operator-2-" + uuid.uuid4().hex, "operator-3-" + uuid.uuid4().hex
# Most fleet tests are about propagation, not who may change what: one operator applies anything.
SINGLE_OPERATOR = {"approvals": 0}
READY_TIMEOUT_S = 20.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# HTTP


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    raw: bytes
    elapsed_s: float

    @property
    def json(self) -> Any:
        return json.loads(self.raw)

    @property
    def code(self) -> str | None:
        """The error code of a denial (OpenAI shape) or of an admin error."""
        try:
            body = json.loads(self.raw)
        except ValueError:
            return None
        error = body.get("error") if isinstance(body, dict) else None
        return error.get("code") if isinstance(error, dict) else None

    @property
    def decision_id(self) -> str | None:
        return self.headers.get("x-gateway-decision-id")

    def __repr__(self) -> str:
        return f"<{self.status} {self.raw[:300]!r}>"


def request(method: str, url: str, body: Any = None, headers: dict[str, str] | None = None,
            timeout: float = 5.0) -> Reply:
    """One HTTP exchange on a fresh connection. `body`: bytes/str sent as is, anything else as JSON."""
    match = re.fullmatch(r"http://([^:/]+):(\d+)(/.*)", url)
    assert match, url
    host, port, path = match.group(1), int(match.group(2)), match.group(3)
    headers = dict(headers or {})
    if body is not None and not isinstance(body, (bytes, str)):
        body = json.dumps(body)
        headers.setdefault("Content-Type", "application/json")
    if isinstance(body, str):
        body = body.encode()
    started = time.monotonic()
    connection = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        raw = response.read()
        return Reply(response.status, {k.lower(): v for k, v in response.getheaders()}, raw, time.monotonic() - started)
    finally:
        connection.close()


# The demo upstream


class Upstream:
    """The demo model server, on its own loop in a thread; remembers what reached it."""

    def __init__(self) -> None:
        self.thread = LoopThread()
        self.server: DemoServer = self.thread.run(serve_upstream("127.0.0.1", 0, models=CATALOGUE))
        self.url = self.server.url

    def decision_ids(self) -> list[str]:
        """X-Gateway-Decision-Id of every request that reached the upstream (read on its own loop)."""
        async def copy() -> list[str]:
            return [dict(r.raw_headers).get(b"x-gateway-decision-id", b"?").decode() for r in self.server.app.received]
        return self.thread.run(copy())

    def close(self) -> None:
        try:
            self.thread.run(self.server.stop(), timeout=10)
        finally:
            self.thread.close()


# A private Redis server


def redis_server_binary() -> str | None:
    found = os.environ.get("REDIS_SERVER_BIN") or shutil.which("redis-server")
    return found if found and os.access(found, os.X_OK) else None


class RedisServer:
    """A throwaway redis-server (no persistence: a restart comes back empty) on a fixed port."""

    def __init__(self, binary: str, directory: Path) -> None:
        self.binary = binary
        self.directory = directory
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> None:
        assert self.process is None or self.process.poll() is not None
        self.directory.mkdir(parents=True, exist_ok=True)
        log = (self.directory / "redis.log").open("ab")
        self.process = subprocess.Popen(
            [self.binary, "--bind", "127.0.0.1", "--port", str(self.port), "--save", "", "--appendonly", "no",
             "--dir", str(self.directory), "--daemonize", "no"],
            stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"redis-server exited: {(self.directory / 'redis.log').read_text()[-2000:]}")
            if self.ping():
                return
            time.sleep(0.02)
        raise AssertionError("redis-server did not come up")

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def kill(self) -> None:
        """Stop it abruptly, as a crash would (SIGKILL), and wait until it is gone."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def close(self) -> None:
        self.kill()


# Policy bundles


def policy_variant(directory: Path, edit: Callable[[dict[str, str]], None] | None = None) -> Path:
    """A copy of the reference bundle, its texts (file name -> YAML) changed by `edit`."""
    texts = reference_texts()
    if edit is not None:
        edit(texts)
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in texts.items():
        (directory / name).write_text(text)
    return directory


def reference_texts() -> dict[str, str]:
    return {path.name: path.read_text() for path in sorted(REFERENCE_POLICY.glob("*.yaml"))}


# Gateway replicas


class Replica:
    """`python -m gateway serve --config FILE` as an operator runs it."""

    def __init__(self, name: str, directory: Path, *, upstream: str, redis_url: str, namespace: str,
                 policy_dir: Path, keys_dir: Path, jwks_file: Path, max_staleness_s: float,
                 change_control: dict[str, Any] | None = None) -> None:
        self.name = name
        self.directory = directory
        directory.mkdir(parents=True)
        (directory / "state").mkdir()
        self.audit_path = directory / "audit.jsonl"
        self.log_path = directory / "gateway.log"
        tokens = [{"name": "ops-alice", "role": "operator", "sha256": hashlib.sha256(OPERATOR_TOKEN.encode()).hexdigest()},
                  {"name": "viewer-bob", "role": "viewer", "sha256": hashlib.sha256(VIEWER_TOKEN.encode()).hexdigest()},
                  {"name": "ops-carol", "role": "operator", "sha256": hashlib.sha256(SECOND_OPERATOR.encode()).hexdigest()},
                  {"name": "ops-dave", "role": "operator", "sha256": hashlib.sha256(THIRD_OPERATOR.encode()).hexdigest()}]
        self.config_path = directory / "gateway.yaml"
        # Port 0: the gateway binds free ports and logs them (no race for a port picked here).
        self.config_path.write_text(json.dumps({
            "listen": "127.0.0.1:0",
            "admin_listen": "127.0.0.1:0",
            "policy_dir": str(policy_dir),
            # One key directory for all replicas (they only read it): see create_keys.
            "state_dir": str(keys_dir),
            "upstreams": {"default": {"url": upstream, "connect_timeout_s": 2, "read_timeout_s": 10}},
            "trusted_proxies": ["127.0.0.1/32"],
            "geoip": {"country_db": str(GEOIP / "GeoIP2-City-Test.mmdb"),
                      "anonymous_ip_db": str(GEOIP / "GeoIP2-Anonymous-IP-Test.mmdb"),
                      "max_age_days": GEOIP_MAX_AGE_DAYS},
            "identity": {"jwt": {"jwks_file": str(jwks_file), "issuer": ISSUER, "audience": AUDIENCE,
                                 "algorithms": ["RS256"]}},
            "redis": {"url": redis_url, "namespace": namespace, "max_staleness_s": max_staleness_s},
            "audit": {"path": str(self.audit_path)},
            "admin": {"tokens": tokens},
            "change_control": change_control if change_control is not None else SINGLE_OPERATOR,
        }, indent=2))
        environ = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
        log = self.log_path.open("wb")
        self.process = subprocess.Popen([sys.executable, "-m", "gateway", "serve", "--config", str(self.config_path)],
                                        env=environ, stdout=log, stderr=subprocess.STDOUT, cwd=directory)
        log.close()
        self.url = self.admin_url = ""
        self.sent: list[Reply] = []

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_ready(self, deadline: float) -> None:
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"replica {self.name} exited {self.process.returncode}:\n{self.log()[-4000:]}")
            if not self.url:
                found = re.search(r"gateway listening on (\d+) \(admin on (\d+)\)", self.log())
                if found:
                    self.url = f"http://127.0.0.1:{found.group(1)}"
                    self.admin_url = f"http://127.0.0.1:{found.group(2)}"
            if self.url:
                try:
                    if request("GET", self.admin_url + "/readyz", timeout=1).status == 200:
                        return
                except OSError:
                    pass
            time.sleep(0.05)
        raise AssertionError(f"replica {self.name} did not become ready:\n{self.log()[-4000:]}")

    # Calls

    def chat(self, key: str, model: str = "small-2", ip: str = US_IP, timeout: float = 5.0) -> Reply:
        """POST /v1/chat/completions from `ip` (X-Forwarded-For from a trusted 127.0.0.1); recorded in `sent`."""
        reply = request("POST", self.url + "/v1/chat/completions",
                        {"model": model, "messages": [{"role": "user", "content": "hello"}]},
                        {"Authorization": f"Bearer {key}", "X-Forwarded-For": ip}, timeout=timeout)
        self.sent.append(reply)
        return reply

    def admin(self, method: str, path: str, body: Any = None, token: str | None = OPERATOR_TOKEN,
              headers: dict[str, str] | None = None) -> Reply:
        headers = dict(headers or {})
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        return request(method, self.admin_url + path, body, headers)

    def readyz(self) -> Reply:
        return request("GET", self.admin_url + "/readyz", timeout=2)

    def policy_version(self) -> str | None:
        return self.readyz().json["policy_version"]

    def pause(self) -> None:
        """SIGSTOP: the process keeps its sockets and memory but does nothing (a replica falling behind)."""
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)

    def stop(self) -> int | None:
        if self.process.poll() is None:
            self.resume()
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        return self.process.returncode


@dataclass
class Fleet:
    replicas: list[Replica]
    upstream: Upstream
    keys: dict[str, str]
    namespace: str
    redis_url: str
    keys_dir: Path
    signing: SigningKey
    closers: list[Callable[[], None]] = field(default_factory=list)

    @property
    def a(self) -> Replica:
        return self.replicas[0]

    @property
    def b(self) -> Replica:
        return self.replicas[1]

    def key(self, org: str) -> str:
        """An API key of `org` that every replica accepts."""
        return self.keys[org]

    def token(self, org: str) -> str:
        """A JWT of `org` (verified against a JWKS file: nothing about it is kept in Redis)."""
        return self.signing.token(org)

    def check_nothing_denied_was_forwarded(self) -> None:
        """What reached the upstream is exactly the requests that were answered 200: no denied
        request was forwarded, and no allowed one was answered without the upstream. Except a
        request allowed and forwarded, then revoked by a change before its answer started
        (gateway/request/revocation.py): it is answered with the denial, and its audit record says so."""
        forwarded = self.upstream.decision_ids()
        records = [json.loads(line) for replica in self.replicas if replica.audit_path.exists()
                   for line in replica.audit_path.read_text().splitlines()]
        revoked = {r["decision_id"] for r in records if r.get("error") == "revoked"}
        answered = [reply for replica in self.replicas for reply in replica.sent if reply.decision_id not in revoked]
        allowed = {reply.decision_id for reply in answered if reply.status == 200}
        denied = {reply.decision_id for reply in answered if reply.status != 200}
        assert len(forwarded) == len(set(forwarded)), "a decision was forwarded twice"
        assert not denied & set(forwarded), f"{len(denied & set(forwarded))} denied requests reached the upstream"
        assert set(forwarded) - revoked == allowed, f"forwarded {len(forwarded)}, answered 200: {len(allowed)}"

    def logs(self) -> str:
        return "\n".join(f"----- replica {r.name} ({r.log_path})\n{r.log()[-6000:]}" for r in self.replicas)

    def close(self) -> dict[str, int | None]:
        codes = {}
        for replica in self.replicas:
            try:
                codes[replica.name] = replica.stop()
            except Exception:  # keep ending the others
                codes[replica.name] = None
        for closer in reversed(self.closers):
            try:
                closer()
            except Exception:
                pass
        return codes


def create_keys(keys_dir: Path, redis_url: str, namespace: str) -> list[dict[str, str]]:
    """One key per org in each store a replica might read, made before start: the state_dir's
    key file (shared by the replicas, which only read it) and, once the gateway has it, the
    fleet's Redis key store. `start_fleet` keeps the set the replicas accept."""
    file_store = ApiKeyStore(keys_dir)
    candidates = [{org: file_store.create(org)[1] for org in ORGS}]
    try:
        from gateway.identity.redis_keys import RedisApiKeyStore
    except ImportError:
        return candidates
    redis_store = RedisApiKeyStore(redis_url, namespace=namespace)
    try:
        candidates.append({org: redis_store.create(org)[1] for org in ORGS})
    finally:
        asyncio.run(redis_store.close())
    return candidates


def start_fleet(directory: Path, *, redis_url: str, size: int = 2, policy_dir: Path = REFERENCE_POLICY,
                max_staleness_s: float = 5.0, upstream: Upstream | None = None,
                change_control: dict[str, Any] | None = None) -> Fleet:
    """`size` replicas on one Redis namespace (unique), one upstream, keys for ORGS made before start.
    The caller must `close()` the fleet (also when this raises: it closes what it started)."""
    namespace = f"fleet-{uuid.uuid4().hex[:12]}"
    directory.mkdir(parents=True, exist_ok=True)
    keys_dir = directory / "keys"
    candidates = create_keys(keys_dir, redis_url, namespace)
    own_upstream = upstream is None
    upstream = upstream or Upstream()
    signing = SigningKey()
    jwks_file = directory / "jwks.json"
    jwks_file.write_text(json.dumps(signing.jwks()))
    fleet = Fleet([], upstream, candidates[0], namespace, redis_url, keys_dir, signing)
    if own_upstream:
        fleet.closers.append(upstream.close)
    try:
        for index in range(size):
            fleet.replicas.append(Replica(chr(ord("A") + index), directory / f"replica-{index}", upstream=upstream.url,
                                          redis_url=redis_url, namespace=namespace, policy_dir=policy_dir,
                                          keys_dir=keys_dir, jwks_file=jwks_file, max_staleness_s=max_staleness_s,
                                          change_control=change_control))
        deadline = time.monotonic() + READY_TIMEOUT_S
        for replica in fleet.replicas:  # they start in parallel
            replica.wait_ready(deadline)
        # Which key store do the replicas read? Probe with an org no test limits (government tier).
        for keys in candidates:
            if all(replica.chat(keys["org-caisi"]).status == 200 for replica in fleet.replicas):
                fleet.keys = keys
                break
        else:
            raise AssertionError("the replicas accept none of the API keys made for them")
    except BaseException:
        fleet.close()
        raise
    return fleet


def wait_for(check: Callable[[], Any], timeout: float, interval: float = 0.0) -> tuple[Any, float]:
    """Call `check` until it returns something truthy; (that value, seconds taken). Raises on timeout."""
    started = time.monotonic()
    last: Any = None
    while True:
        last = check()
        elapsed = time.monotonic() - started
        if last:
            return last, elapsed
        if elapsed > timeout:
            raise AssertionError(f"not within {timeout} s; last: {last!r}")
        if interval:
            time.sleep(interval)


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * fraction // 1))
    return ordered[int(rank) - 1]

"""`gateway serve --workers N`: N real processes on one port, each its own audit replica."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import GEOIP, GEOIP_MAX_AGE_DAYS, REFERENCE_POLICY
from e2e import AUDIENCE, ISSUER, US_IP, LoopThread, SigningKey
from gateway.audit import verify
from gateway.demo.upstream import serve as serve_upstream

REQUESTS = 40


def free_ports(count: int) -> int:
    """The first of `count` consecutive free ports (worker k's admin listener is on the admin port + k)."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            first = probe.getsockname()[1]
        try:
            for port in range(first, first + count):
                with socket.socket() as taken:
                    taken.bind(("127.0.0.1", port))
            return first
        except OSError:
            continue
    raise AssertionError("no run of free ports")


@pytest.fixture
def upstream() -> Iterator[str]:
    thread = LoopThread()
    server = thread.run(serve_upstream("127.0.0.1", 0))
    yield server.url
    thread.run(server.stop())
    thread.close()


def write_config(directory: Path, upstream: str, redis_url: str | None) -> tuple[Path, int, int]:
    public, admin = free_ports(1), free_ports(2)
    signing = SigningKey()
    (directory / "jwks.json").write_text(json.dumps(signing.jwks()))
    (directory / "token").write_text(signing.token("org-public"))
    redis = f"redis: {{url: '{redis_url}', namespace: 'workers-{uuid.uuid4().hex[:8]}'}}" if redis_url else ""
    config = directory / "gateway.yaml"
    config.write_text(f"""
listen: 127.0.0.1:{public}
admin_listen: 127.0.0.1:{admin}
policy_dir: {REFERENCE_POLICY}
state_dir: state
upstreams: {{default: {{url: "{upstream}"}}}}
trusted_proxies: [127.0.0.1/32]
geoip: {{country_db: {GEOIP / "GeoIP2-City-Test.mmdb"}, max_age_days: {GEOIP_MAX_AGE_DAYS}}}
identity:
  jwt: {{jwks_file: jwks.json, issuer: "{ISSUER}", audience: {AUDIENCE}, algorithms: [RS256]}}
audit: {{path: audit.jsonl}}
{redis}
""")
    return config, public, admin


def start(config: Path, workers: int, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        return subprocess.Popen([sys.executable, "-m", "gateway", "serve", "--config", str(config),
                                 "--workers", str(workers)], stdout=out, stderr=subprocess.STDOUT)


def wait_ready(admin_ports: list[int], process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 20
    pending = list(admin_ports)
    while pending and time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(log.read_text())
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{pending[0]}/readyz", timeout=1) as ready:
                assert json.load(ready)["ready"] is True
                pending.pop(0)
        except OSError:
            time.sleep(0.1)
    assert not pending, f"workers' admin ports {pending} not ready:\n{log.read_text()}"


def chat(public: int, token: str) -> int:
    body = json.dumps({"model": "small-2", "messages": [{"role": "user", "content": "hi"}]}).encode()
    call = urllib.request.Request(f"http://127.0.0.1:{public}/v1/chat/completions", body, {
        "Authorization": f"Bearer {token}", "Content-Type": "application/json", "X-Forwarded-For": US_IP})
    with urllib.request.urlopen(call, timeout=5) as reply:  # a new connection each time: the kernel picks a worker
        assert json.load(reply)["model"] == "small-2"
        return reply.status


def allowed_count(admin: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    return sum(float(line.rpartition(" ")[2]) for line in text.splitlines()
               if line.startswith("gateway_requests_total{") and 'decision="allow"' in line)


def test_two_workers_share_the_port_and_each_keeps_its_own_valid_audit_chain(
        tmp_path: Path, upstream: str) -> None:
    redis_url = os.environ.get("REDIS_URL")
    if not redis_url:
        pytest.skip("--workers needs fleet mode: run under scripts/with-redis (make test)")
    config, public, admin = write_config(tmp_path, upstream, redis_url)
    log = tmp_path / "gateway.log"
    process = start(config, 2, log)
    try:
        wait_ready([admin, admin + 1], process, log)
        token = (tmp_path / "token").read_text()
        assert [chat(public, token) for _ in range(REQUESTS)] == [200] * REQUESTS
        counts = [allowed_count(admin), allowed_count(admin + 1)]
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(15)
    assert process.returncode == 0, log.read_text()
    # Both workers served (SO_REUSEPORT spreads connections), each counted only its own.
    assert sum(counts) == REQUESTS and min(counts) > 0, counts
    files = [tmp_path / "audit-w0.jsonl", tmp_path / "audit-w1.jsonl"]
    assert not (tmp_path / "audit.jsonl").exists()
    replicas = set()
    for path, count in zip(files, counts):
        result = verify([path])
        assert result.ok, result.as_json()
        assert [end.records for end in result.replicas.values()] == [count]
        replicas |= set(result.replicas)
    assert len(replicas) == 2 and all(name.endswith(("-w0", "-w1")) for name in replicas), replicas


def test_when_a_worker_dies_the_others_stop_and_serve_exits_non_zero(tmp_path: Path, upstream: str) -> None:
    redis_url = os.environ.get("REDIS_URL")
    if not redis_url:
        pytest.skip("--workers needs fleet mode: run under scripts/with-redis (make test)")
    config, _, admin = write_config(tmp_path, upstream, redis_url)
    log = tmp_path / "gateway.log"
    process = start(config, 2, log)
    try:
        wait_ready([admin, admin + 1], process, log)
        pids = [int(pid) for pid in re.search(r"2 workers \(pids (\d+) (\d+)\)", log.read_text()).groups()]
        os.kill(pids[0], signal.SIGKILL)
        process.wait(15)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 1
    assert "exited with status -9: stopping the others" in log.read_text()
    with pytest.raises(ProcessLookupError):
        os.kill(pids[1], 0)


def test_more_than_one_worker_is_refused_in_embedded_mode(tmp_path: Path, upstream: str) -> None:
    config, _, _ = write_config(tmp_path, upstream, None)
    result = subprocess.run([sys.executable, "-m", "gateway", "serve", "--config", str(config), "--workers", "2"],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert "--workers 2 needs fleet mode (redis.url)" in result.stderr
    assert "limits would multiply" in result.stderr

"""`gateway serve --config FILE` as an operator runs it: a real process."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import GEOIP, GEOIP_MAX_AGE_DAYS, REFERENCE_POLICY
from e2e import US_IP, LoopThread
from gateway.demo.upstream import serve as serve_upstream
from gateway.identity import ApiKeyStore


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def upstream() -> Iterator[str]:
    thread = LoopThread()
    server = thread.run(serve_upstream("127.0.0.1", 0))
    yield server.url
    thread.run(server.stop())
    thread.close()


def wait_ready(admin: str, process: subprocess.Popen[bytes]) -> dict[str, object]:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(process.stderr.read().decode() if process.stderr else "exited")
        try:
            with urllib.request.urlopen(admin + "/readyz", timeout=1) as ready:
                return json.load(ready)
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.1)
    raise AssertionError("gateway did not become ready")


def test_serve_with_environment_override(tmp_path: Path, upstream: str) -> None:
    public, admin = free_port(), free_port()
    config = tmp_path / "gateway.yaml"
    config.write_text(f"""
listen: 127.0.0.1:{public}
admin_listen: 127.0.0.1:{admin}
policy_dir: {REFERENCE_POLICY}
upstreams: {{default: {{url: "http://127.0.0.1:1"}}}}
geoip: {{country_db: {GEOIP / "GeoIP2-City-Test.mmdb"}, max_age_days: {GEOIP_MAX_AGE_DAYS}}}
""")
    key = ApiKeyStore(tmp_path / ".gateway-state").create("org-public")[1]
    environ = os.environ | {"GATEWAY_UPSTREAMS__DEFAULT__URL": upstream}
    process = subprocess.Popen([sys.executable, "-m", "gateway", "serve", "--config", str(config)],
                               env=environ, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL)
    try:
        ready = wait_ready(f"http://127.0.0.1:{admin}", process)
        assert ready["ready"] is True and ready["policy_version"]
        body = json.dumps({"model": "small-2", "messages": [{"role": "user", "content": "hi"}]}).encode()
        call = urllib.request.Request(f"http://127.0.0.1:{public}/v1/chat/completions", body, {
            "Authorization": f"Bearer {key}", "Content-Type": "application/json", "X-Forwarded-For": US_IP})
        with urllib.request.urlopen(call, timeout=5) as reply:
            assert json.load(reply)["model"] == "small-2"
    finally:
        process.terminate()
        process.wait(10)
    assert process.returncode == 0
    assert (tmp_path / "audit.jsonl").read_text().count("\n") == 1


def test_serve_refuses_a_bad_config_naming_the_key(tmp_path: Path) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text("listen: 127.0.0.1:8080\nupstreams: {default: {url: 'http://x:1', read_timeout: 5}}\n")
    result = subprocess.run([sys.executable, "-m", "gateway", "serve", "--config", str(config)],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert "upstreams.default.read_timeout: unknown key" in result.stderr

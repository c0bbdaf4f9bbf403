"""examples/gateway.yaml, the config the README points a new operator to, runs a real
(non-demo) gateway as shipped: loaded as is, and served beside the shipped policies/."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

from gateway.config import load_config
from test_serve import free_port, upstream, wait_ready  # noqa: F401 (upstream is a fixture)

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "gateway.yaml"
US_ADDRESS = "8.8.8.8"  # in the US in the embedded DB-IP database, which the example uses


def test_the_example_loads_as_is_with_the_shipped_policies() -> None:
    config = load_config(EXAMPLE, {})
    assert config.policy_dir == str(ROOT / "policies")
    assert config.geoip.country_db is None and config.redis.url is None
    assert config.audit.path == str(ROOT / ".gateway-state" / "audit.jsonl")


def test_the_example_serves_an_allowed_request(tmp_path: Path, upstream: str) -> None:  # noqa: F811
    # The example and the policies in a copy of their layout, so what the gateway writes
    # (state, audit) stays in tmp_path; only the ports and the upstream come from the
    # environment, so that parallel runs on one machine do not collide.
    shutil.copytree(ROOT / "policies", tmp_path / "policies")
    (tmp_path / "examples").mkdir()
    config = shutil.copy(EXAMPLE, tmp_path / "examples" / "gateway.yaml")
    public, admin = free_port(), free_port()
    environ = os.environ | {"GATEWAY_LISTEN": f"127.0.0.1:{public}", "GATEWAY_ADMIN_LISTEN": f"127.0.0.1:{admin}",
                            "GATEWAY_UPSTREAMS__DEFAULT__URL": upstream}
    created = subprocess.run([sys.executable, "-m", "gateway", "keys", "create", "--config", str(config),
                              "--org", "org-partner-us"], env=environ, capture_output=True, text=True, check=True)
    key = next(word for word in created.stdout.split() if word.startswith("fgw_"))
    process = subprocess.Popen([sys.executable, "-m", "gateway", "serve", "--config", str(config)],
                               env=environ, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL)
    try:
        ready = wait_ready(f"http://127.0.0.1:{admin}", process)
        assert ready["ready"] is True, ready
        body = json.dumps({"model": "example-small-1", "messages": [{"role": "user", "content": "hi"}]}).encode()
        call = urllib.request.Request(f"http://127.0.0.1:{public}/v1/chat/completions", body, {
            "Authorization": f"Bearer {key}", "Content-Type": "application/json", "X-Forwarded-For": US_ADDRESS})
        with urllib.request.urlopen(call, timeout=5) as reply:
            assert reply.status == 200 and json.load(reply)["model"] == "example-small-1"
    finally:
        process.terminate()
        process.wait(10)
    assert process.returncode == 0
    assert (tmp_path / ".gateway-state" / "audit.jsonl").read_text().count("\n") == 1

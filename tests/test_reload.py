"""Hot reload of policy_dir: a changed file takes effect by itself; a truncated,
empty or invalid one is refused, counted, and the running policy stays."""

from __future__ import annotations

import json
import shutil
import time
import urllib.request
from pathlib import Path

from conftest import REFERENCE_POLICY
from e2e import US_IP, Stack
from test_gateway import request


def ready_version(stack: Stack) -> str:
    with urllib.request.urlopen(stack.admin_url + "/readyz") as ready:
        return json.load(ready)["policy_version"]


def reload_failures(stack: Stack) -> float:
    with urllib.request.urlopen(stack.admin_url + "/metrics") as metrics:
        for line in metrics.read().decode().splitlines():
            if line.startswith('gateway_policy_reloads_total{result="failure"}'):
                return float(line.split()[-1])
    return 0.0


def wait_for(condition, seconds: float = 5.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return False


def test_file_changes_are_reloaded_and_bad_ones_refused(tmp_path: Path) -> None:
    policy = tmp_path / "policy"
    shutil.copytree(REFERENCE_POLICY, policy)
    stack = Stack(tmp_path, policy_dir=policy)
    body = json.dumps({"model": "small-2", "messages": [{"role": "user", "content": "hi"}]}).encode()
    headers = {"Authorization": f"Bearer {stack.api_key('org-public')}", "Content-Type": "application/json",
               "X-Forwarded-For": US_IP}
    try:
        first = ready_version(stack)
        assert request(stack, "POST", "/v1/chat/completions", body, headers)[0] == 200

        orgs = policy / "organizations.yaml"
        good = orgs.read_text()
        orgs.write_text(good.replace("  org-public:\n    name: Public Developer\n    country: US\n    tier: standard\n",
                                     "  org-public:\n    name: Public Developer\n    country: US\n    tier: standard\n    status: suspended\n"))
        assert wait_for(lambda: ready_version(stack) != first)
        assert request(stack, "POST", "/v1/chat/completions", body, headers)[0] == 403
        changed = ready_version(stack)

        failures = reload_failures(stack)
        for broken in (good[: len(good) // 2], "", "organizations: [\n"):
            orgs.write_text(broken)
            assert wait_for(lambda: reload_failures(stack) > failures)
            failures = reload_failures(stack)
            assert ready_version(stack) == changed  # the running snapshot stays
            assert request(stack, "POST", "/v1/chat/completions", body, headers)[0] == 403

        orgs.write_text(good)
        assert wait_for(lambda: ready_version(stack) == first)
        assert request(stack, "POST", "/v1/chat/completions", body, headers)[0] == 200
    finally:
        stack.close()

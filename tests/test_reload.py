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


def admin(stack: Stack, method: str, path: str, token: str) -> tuple[int, dict]:  # type: ignore[type-arg]
    import urllib.error

    call = urllib.request.Request(stack.admin_url + path, method=method, data=b"" if method == "POST" else None,
                                  headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(call, timeout=10) as answer:
            return answer.status, json.load(answer)
    except urllib.error.HTTPError as refused:
        return refused.code, json.load(refused)


def test_with_file_reloads_propose_a_loosening_file_change_waits_for_approval_and_a_tightening_applies(
        tmp_path: Path) -> None:
    import hashlib

    policy = tmp_path / "policy"
    shutil.copytree(REFERENCE_POLICY, policy)
    alice, carol = "alice-token", "carol-token"
    digest = lambda token: hashlib.sha256(token.encode()).hexdigest()  # noqa: E731
    stack = Stack(tmp_path, policy_dir=policy, extra_config=f"""admin:
  tokens:
    - {{name: ops-alice, sha256: "{digest(alice)}", role: operator}}
    - {{name: ops-carol, sha256: "{digest(carol)}", role: operator}}
change_control: {{approvals: 1, file_reloads: propose}}
""")
    body = json.dumps({"model": "small-2", "messages": [{"role": "user", "content": "hi"}]}).encode()
    headers = {"Authorization": f"Bearer {stack.api_key('org-public')}", "Content-Type": "application/json",
               "X-Forwarded-For": US_IP}
    try:
        first = ready_version(stack)
        orgs = policy / "organizations.yaml"
        good = orgs.read_text()
        # Suspending an organization removes access: in force at once, awaiting a countersignature.
        orgs.write_text(good.replace("  org-public:\n    name: Public Developer\n    country: US\n    tier: standard\n",
                                     "  org-public:\n    name: Public Developer\n    country: US\n    tier: standard\n    status: suspended\n"))
        assert wait_for(lambda: ready_version(stack) != first)
        assert request(stack, "POST", "/v1/chat/completions", body, headers)[0] == 403
        changes = admin(stack, "GET", "/admin/changes", carol)[1]
        assert [(e["actor"], e["action"]) for e in changes["awaiting_countersign"]] == [("policy_dir", "policy.replace")]

        # Putting it back grants access: a proposal, not in force.
        orgs.write_text(good)
        proposals: list[dict] = []  # type: ignore[type-arg]
        assert wait_for(lambda: proposals.extend(admin(stack, "GET", "/admin/proposals?state=open", carol)[1]["proposals"])
                        or proposals)
        assert [(p["proposer"], p["kind"], p["resulting_policy_version"]) for p in proposals] == [
            ("policy_dir", "policy.replace", first)]
        time.sleep(1.5)  # the watcher has looked again: still one proposal, still refused
        assert request(stack, "POST", "/v1/chat/completions", body, headers)[0] == 403
        status, again = admin(stack, "POST", "/admin/reload", alice)
        assert status == 202 and again["id"] == proposals[0]["id"]
        assert len(admin(stack, "GET", "/admin/proposals?state=open", carol)[1]["proposals"]) == 1

        status, approved = admin(stack, "POST", f"/admin/proposals/{proposals[0]['id']}/approve", carol)
        assert status == 200 and approved["state"] == "applied", approved
        assert ready_version(stack) == first
        assert request(stack, "POST", "/v1/chat/completions", body, headers)[0] == 200
        time.sleep(1.5)  # the files are the policy again: nothing more is proposed
        assert admin(stack, "GET", "/admin/proposals?state=open", carol)[1]["proposals"] == []
    finally:
        stack.close()

"""Shadow mode on live traffic: metrics and audit change, decisions do not."""

from __future__ import annotations

import json
import shutil
import urllib.request
from pathlib import Path

from conftest import REFERENCE_POLICY
from e2e import CN_IP, US_IP, Stack
from test_gateway import request


def test_a_shadow_list_is_trialled_without_enforcing(tmp_path: Path) -> None:
    policy = tmp_path / "policy"
    shutil.copytree(REFERENCE_POLICY, policy)
    groups = policy / "jurisdictions.yaml"
    groups.write_text(groups.read_text() + "  trial_list:\n    countries: [CN]\n    source: trial\n    mode: shadow\n")
    framework = policy / "framework.yaml"
    framework.write_text(framework.read_text().replace("deny_jurisdictions: [embargoed]", "deny_jurisdictions: [embargoed, trial_list]"))
    stack = Stack(tmp_path, policy_dir=policy)
    try:
        body = json.dumps({"model": "small-2", "messages": [{"role": "user", "content": "hi"}]}).encode()
        headers = {"Authorization": f"Bearer {stack.api_key('org-public')}", "Content-Type": "application/json"}
        assert request(stack, "POST", "/v1/chat/completions", body, headers | {"X-Forwarded-For": CN_IP})[0] == 200
        assert request(stack, "POST", "/v1/chat/completions", body, headers | {"X-Forwarded-For": US_IP})[0] == 200
        records = stack.audit_records()[-2:]
        assert [r["would_deny"] for r in records] == [["jurisdiction_embargoed"], None]
        assert [r["decision"] for r in records] == ["allow", "allow"] and len(stack.received) == 2
        with urllib.request.urlopen(stack.admin_url + "/metrics") as metrics:
            assert 'gateway_would_deny_total{reason="jurisdiction_embargoed"} 1.0' in metrics.read().decode()
    finally:
        stack.close()

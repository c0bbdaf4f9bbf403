"""Quotas as a caller meets them: requests per minute and tokens per day, 429 with Retry-After."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator

import pytest

from conftest import REFERENCE_POLICY
from e2e import US_IP, Stack
from test_gateway import request


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    directory = tmp_path_factory.mktemp("quota")
    policy = directory / "policy"
    shutil.copytree(REFERENCE_POLICY, policy)
    framework = policy / "framework.yaml"
    framework.write_text(framework.read_text() + "quotas:\n  standard: {requests_per_minute: 3}\n")
    orgs = policy / "organizations.yaml"
    orgs.write_text(orgs.read_text().replace(
        "    vetted_until: 2027-06-30\n", "    vetted_until: 2027-06-30\n    quota: {tokens_per_day: 30}\n", 1))
    stack = Stack(directory, policy_dir=policy)
    yield stack
    stack.close()


def chat(stack: Stack, org: str) -> tuple[int, dict[str, str], bytes]:
    body = json.dumps({"model": "small-2", "messages": [{"role": "user", "content": "hello there"}]}).encode()
    headers = {"Authorization": f"Bearer {stack.api_key(org)}", "Content-Type": "application/json", "X-Forwarded-For": US_IP}
    return request(stack, "POST", "/v1/chat/completions", body, headers)


def test_requests_per_minute(stack: Stack) -> None:
    stack.upstream.app.reset()
    results = [chat(stack, "org-public") for _ in range(5)]
    statuses = [status for status, _, _ in results]
    if statuses[:3] != [200, 200, 200]:  # the minute rolled over mid-test: the next window admits 3 again
        pytest.skip("minute boundary crossed")
    assert statuses == [200, 200, 200, 429, 429]
    status, headers, body = results[3]
    assert 1 <= int(headers["retry-after"]) <= 60
    assert json.loads(body)["error"]["code"] == "rate_limit_exceeded"
    assert len(stack.received) == 3
    record = stack.audit_records()[-1]
    assert record["reasons"] == ["rate_limited"] and record["status"] == 429


def test_tokens_per_day_count_what_the_upstream_reports(stack: Stack) -> None:
    stack.upstream.app.reset()
    spent, statuses = [], []
    for _ in range(20):
        status, _, body = chat(stack, "org-acme")
        statuses.append(status)
        if status != 200:
            break
        spent.append(json.loads(body)["usage"]["total_tokens"])
    # Admitted while below the limit; refused once the reported usage reached it.
    assert statuses[-1] == 429 and sum(spent) >= 30 > sum(spent[:-1])
    assert len(stack.received) == statuses.count(200)
    assert stack.audit_records()[-2]["tokens"] > 0

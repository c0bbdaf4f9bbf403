"""`models.M.upstream_model`: the forwarded body names the model as its upstream knows
it, decided by the policy; a body is re-serialized only when its model is rewritten."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import REFERENCE_POLICY
from e2e import US_IP, Stack
from gateway.policy.load import load_bundle
from gateway.policy.issues import PolicyError
from test_gateway import request


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    directory = tmp_path_factory.mktemp("aliases")
    policy = directory / "policy"
    shutil.copytree(REFERENCE_POLICY, policy)
    models = policy / "models.yaml"
    models.write_text(models.read_text().replace(
        "  frontier-5.6:\n", "  frontier-5.6:\n    upstream_model: acme/frontier-5.6@2026-11-01\n", 1).replace(
        "  small-2:\n", "  small-2:\n    upstream_model: small-2\n", 1))
    stack = Stack(directory, policy_dir=policy)
    yield stack
    stack.close()


@pytest.fixture(autouse=True)
def fresh_upstream(stack: Stack) -> None:
    stack.upstream.app.reset()


def post(stack: Stack, body: bytes, org: str = "org-acme") -> tuple[int, dict[str, str], bytes]:
    return request(stack, "POST", "/v1/chat/completions", body, {
        "Authorization": f"Bearer {stack.api_key(org)}", "Content-Type": "application/json", "X-Forwarded-For": US_IP})


def chat(model: str, **more: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "héllo"}], **more}


@pytest.mark.parametrize("sent", ["frontier-5.6", "fr-5.6", "FRONTIER-5.6-2026-11-01"])
def test_every_name_of_the_model_reaches_the_upstream_as_its_upstream_model(stack: Stack, sent: str) -> None:
    status, headers, _ = post(stack, json.dumps(chat(sent, temperature=0.25, max_tokens=7)).encode())
    assert status == 200
    [seen] = stack.received
    assert seen.json() == chat("acme/frontier-5.6@2026-11-01", temperature=0.25, max_tokens=7)
    assert seen.header("content-length") == str(len(seen.body))
    [record] = [r for r in stack.audit_records() if r["decision_id"] == headers["x-gateway-decision-id"]]
    assert record["requested_model"] == sent and record["model"] == "frontier-5.6"


def test_a_body_is_forwarded_byte_for_byte_when_nothing_is_rewritten(stack: Stack) -> None:
    # small-2's upstream_model is the name sent: the body is not re-serialized.
    body = b'{ "model" : "small-2",\n  "messages": [{"role": "user", "content": "\\u00e9 1.50"}] }'
    assert post(stack, body)[0] == 200
    assert post(stack, body.replace(b"small-2", b"fable"))[0] == 200  # no upstream_model at all
    assert [seen.body for seen in stack.received] == [body, body.replace(b"small-2", b"fable")]


def test_a_denied_request_is_not_rewritten_or_forwarded(stack: Stack) -> None:
    status, _, answer = post(stack, json.dumps(chat("fr-5.6")).encode(), org="org-public")
    assert status == 404 and b"acme/" not in answer
    assert stack.received == []


def test_a_lone_surrogate_survives_the_rewrite(stack: Stack) -> None:
    body = b'{"model": "fr-5.6", "messages": [{"role": "user", "content": "\\ud800"}]}'
    assert post(stack, body)[0] == 200
    [seen] = stack.received
    assert seen.json()["messages"][0]["content"] == "\ud800" and seen.json()["model"] == "acme/frontier-5.6@2026-11-01"


def test_upstream_model_must_be_a_name(bundle_dir: Path) -> None:
    models = bundle_dir / "models.yaml"
    models.write_text(models.read_text().replace("  fable:\n", "  fable:\n    upstream_model: 'two words'\n", 1))
    with pytest.raises(PolicyError) as refused:
        load_bundle(bundle_dir)
    assert any("models.fable.upstream_model" in str(issue) for issue in refused.value.errors)

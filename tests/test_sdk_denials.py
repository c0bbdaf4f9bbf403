"""Denials as the official SDKs see them: the decision id in `error.request_id`, and
the status of a jurisdiction denial (`denials.jurisdiction_status`) choosing the SDK's
error class."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anthropic
import openai
import pytest

from e2e import CN_IP, US_IP, Stack

CHAT: dict[str, Any] = {"model": "frontier-5.6", "messages": [{"role": "user", "content": "hello"}]}
MESSAGE: dict[str, Any] = {"model": "frontier-5.6", "max_tokens": 10, "messages": [{"role": "user", "content": "x"}]}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    stack = Stack(tmp_path_factory.mktemp("gateway"))
    yield stack
    stack.close()


@pytest.fixture(scope="module")
def stack_403(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    stack = Stack(tmp_path_factory.mktemp("gateway403"), extra_config="denials: {jurisdiction_status: 403}")
    yield stack
    stack.close()


def openai_client(stack: Stack, org: str, ip: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=stack.url + "/v1", api_key=stack.api_key(org), max_retries=0,
                         default_headers={"X-Forwarded-For": ip})


def anthropic_client(stack: Stack, org: str, ip: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=stack.url, api_key=stack.api_key(org), max_retries=0,
                               default_headers={"X-Forwarded-For": ip})


def recorded(stack: Stack, decision_id: str | None) -> dict[str, Any]:
    [record] = [r for r in stack.audit_records() if r["decision_id"] == decision_id]
    return record


class TestRequestId:
    def test_openai_error_request_id_is_the_decision_id(self, stack: Stack) -> None:
        with pytest.raises(openai.APIStatusError) as denied:
            openai_client(stack, "org-kyoto", CN_IP).chat.completions.create(**CHAT)
        assert denied.value.request_id == denied.value.response.headers["x-gateway-decision-id"]
        assert recorded(stack, denied.value.request_id)["decision"] == "deny"

    def test_anthropic_error_request_id_is_the_decision_id(self, stack: Stack) -> None:
        with pytest.raises(anthropic.APIStatusError) as denied:
            anthropic_client(stack, "org-kyoto", CN_IP).messages.create(**MESSAGE)
        assert denied.value.request_id == denied.value.response.headers["x-gateway-decision-id"]
        assert recorded(stack, denied.value.request_id)["decision"] == "deny"

    def test_an_unauthenticated_denial_carries_it_too(self, stack: Stack) -> None:
        client = openai.OpenAI(base_url=stack.url + "/v1", api_key="sk-not-a-key", max_retries=0)
        with pytest.raises(openai.AuthenticationError) as denied:
            client.chat.completions.create(**CHAT)
        assert denied.value.request_id == denied.value.response.headers["x-gateway-decision-id"]


class TestJurisdictionStatus:
    def test_default_is_451_which_the_sdks_do_not_call_permission_denied(self, stack: Stack) -> None:
        with pytest.raises(openai.APIStatusError) as denied:
            openai_client(stack, "org-kyoto", CN_IP).chat.completions.create(**CHAT)
        assert denied.value.status_code == 451
        assert not isinstance(denied.value, openai.PermissionDeniedError)

    def test_403_is_permission_denied_in_openai(self, stack_403: Stack) -> None:
        with pytest.raises(openai.PermissionDeniedError) as denied:
            openai_client(stack_403, "org-kyoto", CN_IP).chat.completions.create(**CHAT)
        assert denied.value.code == "unsupported_country_region_territory"
        assert 'rel="blocked-by"' in denied.value.response.headers["link"]
        assert recorded(stack_403, denied.value.request_id)["status"] == 403
        assert stack_403.received == []

    def test_403_is_permission_denied_in_anthropic(self, stack_403: Stack) -> None:
        with pytest.raises(anthropic.PermissionDeniedError) as denied:
            anthropic_client(stack_403, "org-kyoto", CN_IP).messages.create(**MESSAGE)
        assert denied.value.body["error"]["type"] == "permission_error"
        assert stack_403.received == []

    def test_403_changes_nothing_for_an_allowed_caller(self, stack_403: Stack) -> None:
        reply = openai_client(stack_403, "org-acme", US_IP).chat.completions.create(**CHAT)
        assert reply.choices[0].message.content.startswith("[demo:frontier-5.6]")

"""Adversarial: models named outside the top-level `model`, end to end.

A body can name more models than the one it runs on: a Responses
`image_generation` tool, a `moderation` object, Anthropic's advisor tool and
`fallbacks`, and every request of an Anthropic message batch. Each case goes
over real HTTP to a real gateway in front of the recording upstream and
asserts that a request naming a model the caller may not use never reaches the
upstream, that its denial and audit record are the first denied model's, and
that only the routes the gateway knows how to decide on are served.

The caller is org-acme (a vetted partner) from the US at the harness's decision
time: `small-2` and `fable` are allowed, `nextgen-7` is not yet released (404),
`gpt-image-1` is not in the policy (404); for org-public `frontier-5.6` is
concealed (404).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from gateway.config import ConfigError, load_config

from .conftest import CHAT, CN_IP, MESSAGES, PLAIN, Probe, Reply

RESPONSES = "/v1/responses"
ALLOWED, ALSO_ALLOWED, UNRELEASED, UNKNOWN, CONCEALED = PLAIN, "fable", "nextgen-7", "gpt-image-1", "frontier-5.6"
INPUT = [{"role": "user", "content": "draw a cat"}]
USER = [{"role": "user", "content": "hi"}]


def body(**fields: Any) -> bytes:
    return json.dumps(fields).encode()


def responses(*tools: dict[str, Any], **extra: Any) -> bytes:
    return body(model=ALLOWED, input=INPUT, tools=list(tools), **extra)


def image(model: str | None = None, **extra: Any) -> dict[str, Any]:
    return {"type": "image_generation", **({"model": model} if model is not None else {}), **extra}


def message(**extra: Any) -> bytes:
    return body(model=ALLOWED, max_tokens=16, messages=USER, **extra)


def advisor(model: str) -> dict[str, Any]:
    return {"type": "advisor_20260301", "name": "advisor", "model": model}


def last_record(gw: Probe) -> dict[str, Any]:
    return gw.stack.audit_records()[-1]


def forwarded(gw: Probe, reply: Reply, path: str, sent: bytes) -> None:
    """Forwarded once, exactly as sent (the demo upstream may not serve the path itself)."""
    gw.settle()
    [seen] = gw.stack.received
    assert (seen.method, seen.path, seen.body) == ("POST", path, sent), seen
    assert seen.headers.get("x-gateway-decision-id") == reply.header("x-gateway-decision-id")


def denied_for(gw: Probe, reply: Reply, model: str, reason: str, *, api: str = "openai") -> None:
    """Refused with nothing forwarded, and recorded as the decision on `model`."""
    gw.denied(reply, 404, api=api)
    record = last_record(gw)
    assert (record["decision"], record["requested_model"], record["reasons"][0]) == ("deny", model, reason), record
    assert record["decision_id"] == reply.header("x-gateway-decision-id")


# --- every model named is decided on ------------------------------------------------------


@pytest.mark.parametrize("path", [RESPONSES, "/v1/responses/input_tokens"])
def test_an_image_tool_naming_an_allowed_model_is_forwarded(gw: Probe, path: str) -> None:
    sent = responses(image(ALSO_ALLOWED), {"type": "function", "name": "f", "parameters": {}})
    forwarded(gw, gw.send(path=path, body=sent), path, sent)
    record = last_record(gw)
    assert (record["decision"], record["requested_model"]) == ("allow", ALLOWED)


@pytest.mark.parametrize("path", [RESPONSES, "/v1/responses/input_tokens", "/v1/responses/compact"])
@pytest.mark.parametrize("model,reason", [(UNRELEASED, "model_not_released"), (UNKNOWN, "model_unknown")])
def test_an_image_tool_naming_a_denied_model_is_refused(gw: Probe, path: str, model: str, reason: str) -> None:
    denied_for(gw, gw.send(path=path, body=responses(image(model))), model, reason)


def test_the_first_denied_model_is_the_decision(gw: Probe) -> None:
    sent = responses(image(ALSO_ALLOWED), image(UNRELEASED), image(UNKNOWN),
                     moderation={"model": ALLOWED})
    denied_for(gw, gw.send(path=RESPONSES, body=sent), UNRELEASED, "model_not_released")
    # moderation is read before tools: the table's order, not the body's
    sent = responses(image(UNRELEASED), moderation={"model": UNKNOWN})
    denied_for(gw, gw.send(path=RESPONSES, body=sent), UNKNOWN, "model_unknown")


def test_a_denied_top_level_model_is_the_decision_whatever_the_tools(gw: Probe) -> None:
    sent = body(model=UNRELEASED, input=INPUT, tools=[image(UNKNOWN)])
    denied_for(gw, gw.send(path=RESPONSES, body=sent), UNRELEASED, "model_not_released")


def test_a_concealed_tool_model_gets_the_unknown_models_404(gw: Probe) -> None:
    public = gw.key("org-public")
    concealed = gw.send(path=RESPONSES, body=responses(image(CONCEALED)), credential=public)
    denied_for(gw, concealed, CONCEALED, "tier_not_permitted")
    unknown = gw.send(path=RESPONSES, body=responses(image("no-such-model")), credential=public)
    assert json.loads(concealed.body) == json.loads(unknown.body)


def test_an_embargoed_caller_is_refused_for_every_model_named(gw: Probe) -> None:
    reply = gw.send(path=RESPONSES, body=responses(image(ALSO_ALLOWED)), ip=CN_IP)
    gw.denied(reply, 451)


@pytest.mark.parametrize("path", [CHAT, RESPONSES])
def test_a_moderation_model_is_decided_on(gw: Probe, path: str) -> None:
    fields = {"messages": USER} if path == CHAT else {"input": INPUT}
    denied_for(gw, gw.send(path=path, body=body(model=ALLOWED, moderation={"model": UNKNOWN}, **fields)),
               UNKNOWN, "model_unknown")
    gw.stack.upstream.app.reset()
    sent = body(model=ALLOWED, moderation={"model": ALSO_ALLOWED, "policy": {"input": {"mode": "block"}}}, **fields)
    assert gw.allowed(gw.send(path=path, body=sent), path=path).body == sent


@pytest.mark.parametrize("path", [MESSAGES, "/v1/messages/count_tokens"])
def test_anthropic_advisor_tools_and_fallbacks_are_decided_on(gw: Probe, path: str) -> None:
    denied_for(gw, gw.send(path=path, body=message(tools=[advisor(UNRELEASED)])), UNRELEASED,
               "model_not_released", api="anthropic")
    denied_for(gw, gw.send(path=path, body=message(fallbacks=[{"model": ALSO_ALLOWED}, {"model": UNKNOWN}])),
               UNKNOWN, "model_unknown", api="anthropic")
    gw.stack.upstream.app.reset()
    sent = message(tools=[advisor(ALSO_ALLOWED)], fallbacks=[{"model": ALSO_ALLOWED, "max_tokens": 8}])
    forwarded(gw, gw.send(path=path, body=sent), path, sent)


def test_a_request_naming_too_many_models_is_refused(gw: Probe) -> None:
    sent = responses(*(image(f"m-{i}") for i in range(33)))
    gw.denied(gw.send(path=RESPONSES, body=sent), 400)


# --- read as strictly as the top-level model ------------------------------------------------


@pytest.mark.parametrize("path,sent", [
    # An image tool with no model: the upstream would choose one (gpt-image-1) undecided.
    (RESPONSES, responses(image())),
    (RESPONSES, responses(image(), image(ALSO_ALLOWED))),
    (RESPONSES, responses({"type": "IMAGE_GENERATION"})),
    (RESPONSES, responses({"type": " image_generation"})),
    (RESPONSES, responses(image(None, Type="image_generation") | {"type": "function"})),
    (RESPONSES, responses({"Type": "image_generation", "name": "x"})),
    (RESPONSES, body(model=ALLOWED, input=INPUT, moderation={"policy": {}})),
    (CHAT, body(model=ALLOWED, messages=USER, moderation={})),
    (MESSAGES, message(fallbacks=[{"max_tokens": 5}])),
    # A model that is not a plain name.
    (RESPONSES, responses(image(""))),
    (RESPONSES, responses({"type": "image_generation", "model": None})),
    (RESPONSES, responses({"type": "image_generation", "model": [UNKNOWN]})),
    (RESPONSES, responses({"type": "image_generation", "model": {"id": UNKNOWN}})),
    (RESPONSES, responses(image(ALSO_ALLOWED + "\u0000" + UNKNOWN))),
    (RESPONSES, responses(image("\uff46able"))),  # fullwidth: "fable" to an NFKC-normalising upstream
    (RESPONSES, responses(image("a" * 257))),
    # Look-alike keys, beside the real one or alone: a lenient parser reads them as it.
    (RESPONSES, responses(image(ALSO_ALLOWED, Model=UNKNOWN))),
    (RESPONSES, responses(image(ALSO_ALLOWED, MODEL=UNKNOWN))),
    (RESPONSES, responses({"type": "image_generation", "model\u0000": UNKNOWN, "model": ALSO_ALLOWED})),
    (RESPONSES, responses({"type": "image_generation", "ｍｏｄｅｌ": UNKNOWN, "model": ALSO_ALLOWED})),
    (RESPONSES, responses({"type": "function", "name": "f", " model": UNKNOWN})),
    (RESPONSES, body(model=ALLOWED, input=INPUT, Tools=[image(UNKNOWN)])),
    (RESPONSES, body(model=ALLOWED, input=INPUT, tools=[], TOOLS=[image(UNKNOWN)])),
    (RESPONSES, body(model=ALLOWED, input=INPUT, **{"tools\u0000": [image(UNKNOWN)]})),
    (RESPONSES, body(model=ALLOWED, input=INPUT, **{"ｔｏｏｌｓ": [image(UNKNOWN)]})),
    (RESPONSES, body(model=ALLOWED, input=INPUT, Moderation={"model": UNKNOWN})),
    (CHAT, body(model=ALLOWED, messages=USER, moderatioN={"model": UNKNOWN})),
    (CHAT, body(model=ALLOWED, messages=USER, moderation={"model": ALSO_ALLOWED, "Model": UNKNOWN})),
    (MESSAGES, message(Fallbacks=[{"model": UNKNOWN}])),
    (MESSAGES, message(fallbacks=[{"model": ALSO_ALLOWED, "mOdel": UNKNOWN}])),
    (MESSAGES, message(tools=[{"type": "advisor_20260301", "name": "advisor", "Model": UNKNOWN}])),
    (RESPONSES, body(model=ALLOWED, input=INPUT, Prompt={"id": "pmpt_1"})),
    # Shapes the API does not define: no upstream's reading of them is known.
    (RESPONSES, body(model=ALLOWED, input=INPUT, tools=image(UNKNOWN))),
    (RESPONSES, body(model=ALLOWED, input=INPUT, tools=UNKNOWN)),
    (RESPONSES, body(model=ALLOWED, input=INPUT, tools=[[image(UNKNOWN)]])),
    (RESPONSES, body(model=ALLOWED, input=INPUT, tools=["image_generation"])),
    (RESPONSES, body(model=ALLOWED, input=INPUT, moderation=[{"model": UNKNOWN}])),
    (RESPONSES, body(model=ALLOWED, input=INPUT, moderation=UNKNOWN)),
    (MESSAGES, message(fallbacks="default")),  # the server's own choice of models
    (MESSAGES, message(fallbacks={"model": UNKNOWN})),
    # A stored prompt can set its own model and tools, which the gateway never sees.
    (RESPONSES, body(model=ALLOWED, prompt={"id": "pmpt_1", "version": "2"})),
    (RESPONSES, body(model=ALLOWED, prompt="pmpt_1")),
    ("/v1/responses/input_tokens", body(model=ALLOWED, prompt={"id": "pmpt_1"})),
])
def test_refused_as_ambiguous(gw: Probe, path: str, sent: bytes) -> None:
    gw.denied(gw.send(path=path, body=sent), 400, api="anthropic" if path.startswith(MESSAGES) else "openai")
    assert last_record(gw)["status"] == 400


def test_a_duplicate_model_in_a_tool_is_refused(gw: Probe) -> None:
    sent = ('{"model":"small-2","input":"x","tools":[{"type":"image_generation",'
            '"model":"fable","model":"gpt-image-1"}]}').encode()
    gw.denied(gw.send(path=RESPONSES, body=sent), 400)


@pytest.mark.parametrize("path,sent", [
    # Where these routes name no model, a `model` key is only data.
    (CHAT, body(model=ALLOWED, messages=USER, tools=[{"type": "function", "model": UNKNOWN,
                                                       "function": {"name": "f"}}])),
    (CHAT, body(model=ALLOWED, messages=USER, metadata={"model": UNKNOWN})),
    ("/v1/completions", body(model=ALLOWED, prompt="hi", tools=[image(UNKNOWN)])),
    ("/v1/embeddings", body(model=ALLOWED, input="hi", moderation={"model": UNKNOWN})),
    (RESPONSES, body(model=ALLOWED, input=INPUT, metadata={"model": UNKNOWN}, prompt=None, tools=None)),
    (RESPONSES, responses({"type": "function", "name": "f", "parameters": {"properties": {"Model": {}}}})),
    (RESPONSES, responses({"type": "web_search"})),
    (MESSAGES, message(tools=[{"name": "f", "input_schema": {"properties": {"model": {"type": "string"}}}}])),
])
def test_model_keys_elsewhere_are_data(gw: Probe, path: str, sent: bytes) -> None:
    assert gw.allowed(gw.send(path=path, body=sent), path=path).body == sent


# --- routes the gateway does not decide on -------------------------------------------------


def batch(*models: str) -> bytes:
    requests = [{"custom_id": f"r{i}", "params": {"model": m, "max_tokens": 8, "messages": USER}}
                for i, m in enumerate(models)]
    return body(requests=requests)


@pytest.mark.parametrize("sent", [batch(ALLOWED), batch(ALLOWED, UNRELEASED), batch(UNKNOWN)])
def test_message_batches_are_refused_by_default(gw: Probe, sent: bytes) -> None:
    """A batch runs later, out of the request path: its tokens are never counted, its
    results are read back by id under the gateway's own upstream credential (any org
    could read any batch), and a suspension cannot end it. Refused, allowed models or not."""
    reply = gw.send(path="/v1/messages/batches", body=sent)
    gw.denied(reply, 404, api="anthropic")
    assert last_record(gw)["status"] == 404 and last_record(gw)["requested_model"] is None


@pytest.mark.parametrize("method,path", [
    ("GET", "/v1/messages/batches"), ("GET", "/v1/messages/batches/msgbatch_1"),
    ("GET", "/v1/messages/batches/msgbatch_1/results"), ("POST", "/v1/messages/batches/msgbatch_1/cancel"),
    ("DELETE", "/v1/messages/batches/msgbatch_1"),
    ("GET", "/v1/chat/completions"), ("GET", "/v1/chat/completions/chatcmpl-1"),
    ("POST", "/v1/chat/completions/chatcmpl-1"), ("GET", "/v1/chat/completions/chatcmpl-1/messages"),
    ("GET", "/v1/responses/resp_1"), ("GET", "/v1/responses/resp_1/input_items"),
    ("POST", "/v1/responses/resp_1/cancel"), ("DELETE", "/v1/responses/resp_1"),
])
def test_stored_objects_are_not_served(gw: Probe, method: str, path: str) -> None:
    """Stored completions, responses and batches name no model, and under one upstream
    credential they are every org's: 404, never forwarded."""
    reply = gw.send(method, path, body=message() if method == "POST" else None)
    gw.denied(reply, 404, api="anthropic" if path.startswith(MESSAGES) else "openai")


@pytest.mark.parametrize("prefix", ["/v1/messages/batches", "/v1/batches", "/v1/responses/resp_1"])
def test_the_config_refuses_a_prefix_the_gateway_cannot_decide_on(tmp_path: Path, prefix: str) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text(f"routes: [/v1/messages, {prefix}]\n")
    with pytest.raises(ConfigError) as refused:
        load_config(config, {})
    assert prefix in str(refused.value) and "POST /v1/messages/count_tokens" in str(refused.value)
    with pytest.raises(ConfigError):
        load_config(None, {"GATEWAY_ROUTES": f"[{prefix}]"})

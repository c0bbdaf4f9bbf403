"""The demo upstream speaks well enough for the official SDKs to work unchanged.

The server runs on a real loopback port; the clients are the official `openai`
and `anthropic` packages, sync and async, streaming and not. No mocks.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
import signal
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import aiohttp
import anthropic
import openai
import pytest

from gateway.demo.upstream import ThreadedDemoServer, create_app, serve

USER = [{"role": "user", "content": "Hello there, upstream"}]


@pytest.fixture(scope="module")
def upstream() -> Iterator[ThreadedDemoServer]:
    with ThreadedDemoServer(name="demo") as server:
        yield server


@pytest.fixture
def app(upstream: ThreadedDemoServer) -> Any:
    upstream.app.reset()
    return upstream.app


@pytest.fixture
def oai(upstream: ThreadedDemoServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=upstream.url + "/v1", api_key="sk-test", max_retries=0) as client:
        yield client


@pytest.fixture
def claude(upstream: ThreadedDemoServer) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=upstream.url, api_key="sk-ant-test", max_retries=0) as client:
        yield client


def async_oai(upstream: ThreadedDemoServer) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=upstream.url + "/v1", api_key="sk-test", max_retries=0)


def async_claude(upstream: ThreadedDemoServer) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=upstream.url, api_key="sk-ant-test", max_retries=0)


def raw(upstream: ThreadedDemoServer, method: str, path: str, body: bytes | None = None) -> tuple[int, Any]:
    request = urllib.request.Request(upstream.url + path, data=body, method=method)
    request.add_header("content-type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


# --------------------------------------------------------------------------- OpenAI chat


def test_chat_completion(oai: openai.OpenAI, app: Any) -> None:
    completion = oai.chat.completions.create(model="example-small-1", messages=USER)
    assert completion.object == "chat.completion"
    assert completion.model == "example-small-1"
    assert completion.choices[0].message.role == "assistant"
    assert completion.choices[0].message.content == "[demo:example-small-1] You said: Hello there, upstream"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.created > 0 and completion.id.startswith("chatcmpl-")
    usage = completion.usage
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (3, 6, 9)
    (seen,) = app.received
    assert (seen.method, seen.path) == ("POST", "/v1/chat/completions")
    assert seen.json()["model"] == "example-small-1"
    assert seen.header("authorization") == "Bearer sk-test"


def test_chat_stream_with_usage(oai: openai.OpenAI, app: Any) -> None:
    chunks = list(
        oai.chat.completions.create(
            model="m", messages=USER, stream=True, stream_options={"include_usage": True}
        )
    )
    assert {c.object for c in chunks} == {"chat.completion.chunk"}
    assert {c.model for c in chunks} == {"m"}
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "[demo:m] You said: Hello there, upstream"
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) >= 4
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 6
    assert app.received[-1].outcome == "complete"


def test_chat_stream_without_usage_and_truncated(oai: openai.OpenAI) -> None:
    chunks = list(oai.chat.completions.create(model="m", messages=USER, stream=True, max_tokens=2))
    assert all(c.usage is None for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "[demo:m] You"
    assert chunks[-1].choices[0].finish_reason == "length"


def test_chat_async_and_stream_helper(upstream: ThreadedDemoServer) -> None:
    async def go() -> tuple[str, str, list[str]]:
        async with async_oai(upstream) as client:
            plain = await client.chat.completions.create(
                model="example-frontier-2",
                messages=[
                    {"role": "system", "content": "be terse"},
                    {"role": "user", "content": [{"type": "text", "text": "parts work"}]},
                ],
            )
            deltas = []
            async with client.chat.completions.stream(model="example-frontier-2", messages=USER) as stream:
                async for event in stream:
                    if event.type == "content.delta":
                        deltas.append(event.delta)
                final = await stream.get_final_completion()
            return plain.choices[0].message.content, final.choices[0].message.content, deltas

    plain, final, deltas = asyncio.run(go())
    assert plain == "[demo:example-frontier-2] You said: parts work"
    assert final == "".join(deltas) == "[demo:example-frontier-2] You said: Hello there, upstream"


# --------------------------------------------------------------------------- completions, embeddings


def test_legacy_completions(oai: openai.OpenAI) -> None:
    completion = oai.completions.create(model="m", prompt="Say this is a test")
    assert completion.object == "text_completion"
    assert completion.choices[0].text == "[demo:m] You said: Say this is a test"
    assert completion.usage.prompt_tokens == 5
    streamed = list(oai.completions.create(model="m", prompt=["first", "second"], stream=True))
    assert "".join(c.choices[0].text for c in streamed) == "[demo:m] You said: second"
    assert streamed[-1].choices[0].finish_reason == "stop"


def test_embeddings(oai: openai.OpenAI, app: Any) -> None:
    # The SDK asks for base64 unless told otherwise and decodes it itself.
    default = oai.embeddings.create(model="emb", input=["alpha", "beta"])
    assert app.received[-1].json()["encoding_format"] == "base64"
    floats = oai.embeddings.create(model="emb", input=["alpha", "beta"], encoding_format="float")
    assert [d.index for d in floats.data] == [0, 1]
    assert len(floats.data[0].embedding) == 16
    assert floats.data[0].embedding != floats.data[1].embedding
    assert default.data[0].embedding == pytest.approx(floats.data[0].embedding, abs=1e-6)
    assert sum(v * v for v in floats.data[0].embedding) == pytest.approx(1.0, abs=1e-4)
    assert floats.model == "emb" and floats.usage.prompt_tokens == 2
    explicit = oai.embeddings.create(model="emb", input="alpha", encoding_format="base64", dimensions=4)
    vector = struct.unpack("<4f", base64.b64decode(explicit.data[0].embedding))  # type: ignore[arg-type]
    assert sum(v * v for v in vector) == pytest.approx(1.0, abs=1e-4)
    again = oai.embeddings.create(model="emb", input="alpha", encoding_format="float")
    assert again.data[0].embedding == floats.data[0].embedding


# --------------------------------------------------------------------------- responses


def test_responses(oai: openai.OpenAI) -> None:
    response = oai.responses.create(model="example-frontier-1", input="What is up?", instructions="be kind")
    assert response.object == "response" and response.status == "completed"
    assert response.model == "example-frontier-1"
    assert response.output_text == "[demo:example-frontier-1] You said: What is up?"
    assert (response.usage.input_tokens, response.usage.output_tokens) == (5, 6)
    listed = oai.responses.create(
        model="m", input=[{"role": "user", "content": [{"type": "input_text", "text": "from a list"}]}]
    )
    assert listed.output_text == "[demo:m] You said: from a list"


def test_responses_raw_stream(oai: openai.OpenAI) -> None:
    events = list(oai.responses.create(model="m", input="stream me", stream=True))
    kinds = [e.type for e in events]
    assert kinds[:4] == [
        "response.created", "response.in_progress", "response.output_item.added", "response.content_part.added"
    ]
    assert kinds[-4:] == [
        "response.output_text.done", "response.content_part.done", "response.output_item.done", "response.completed"
    ]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert len(deltas) >= 4 and "".join(deltas) == "[demo:m] You said: stream me"
    assert events[-1].response.output_text == "".join(deltas)


def test_responses_async_stream_helper(upstream: ThreadedDemoServer) -> None:
    async def go() -> tuple[list[str], Any]:
        async with async_oai(upstream) as client:
            async with client.responses.stream(model="example-small-1", input="helper") as stream:
                snapshots = [e.snapshot async for e in stream if e.type == "response.output_text.delta"]
                return snapshots, await stream.get_final_response()

    snapshots, final = asyncio.run(go())
    assert snapshots[-1] == final.output_text == "[demo:example-small-1] You said: helper"
    assert final.usage.output_tokens == len(snapshots)


# --------------------------------------------------------------------------- models


def test_models_list_and_retrieve(oai: openai.OpenAI, upstream: ThreadedDemoServer) -> None:
    listed = [m.id for m in oai.models.list()]
    assert listed == ["example-frontier-1", "example-frontier-2", "example-frontier-3", "example-small-1"]
    model = oai.models.retrieve("example-small-1")
    assert (model.id, model.object, model.owned_by) == ("example-small-1", "model", "demo")
    with pytest.raises(openai.NotFoundError) as caught:
        oai.models.retrieve("no-such-model")
    assert caught.value.code == "model_not_found"

    async def go() -> list[str]:
        async with async_oai(upstream) as client:
            return [m.id async for m in client.models.list()]

    assert asyncio.run(go())[0] == "example-frontier-1"


# --------------------------------------------------------------------------- Anthropic


def test_messages(claude: anthropic.Anthropic, app: Any) -> None:
    message = claude.messages.create(model="example-frontier-2", max_tokens=64, system="be brief", messages=USER)
    assert message.type == "message" and message.role == "assistant"
    assert message.model == "example-frontier-2"
    assert message.content[0].type == "text"
    assert message.content[0].text == "[demo:example-frontier-2] You said: Hello there, upstream"
    assert message.stop_reason == "end_turn"
    assert (message.usage.input_tokens, message.usage.output_tokens) == (5, 6)
    assert app.received[-1].path == "/v1/messages"
    truncated = claude.messages.create(model="m", max_tokens=3, messages=USER)
    assert truncated.content[0].text == "[demo:m] You said:"
    assert (truncated.stop_reason, truncated.usage.output_tokens) == ("max_tokens", 3)
    assert claude.messages.count_tokens(model="m", messages=USER).input_tokens == 3


def test_messages_stream_helper(claude: anthropic.Anthropic) -> None:
    with claude.messages.stream(model="m", max_tokens=64, messages=USER) as stream:
        pieces = list(stream.text_stream)
        final = stream.get_final_message()
    assert len(pieces) >= 4
    assert "".join(pieces) == final.content[0].text == "[demo:m] You said: Hello there, upstream"
    assert (final.stop_reason, final.usage.input_tokens, final.usage.output_tokens) == ("end_turn", 3, 6)


def test_messages_async_raw_stream_event_order(upstream: ThreadedDemoServer) -> None:
    async def go() -> tuple[list[Any], Any]:
        async with async_claude(upstream) as client:
            plain = await client.messages.create(model="m", max_tokens=64, messages=USER)
            stream = await client.messages.create(model="m", max_tokens=64, messages=USER, stream=True)
            return [event async for event in stream], plain

    events, plain = asyncio.run(go())
    kinds = [e.type for e in events]
    n = len(kinds) - 5
    assert n >= 4
    assert kinds == [
        "message_start", "content_block_start", *["content_block_delta"] * n,
        "content_block_stop", "message_delta", "message_stop",
    ]
    assert events[0].message.usage.input_tokens == 3
    assert "".join(e.delta.text for e in events if e.type == "content_block_delta") == plain.content[0].text
    assert events[-2].delta.stop_reason == "end_turn" and events[-2].usage.output_tokens == n


# --------------------------------------------------------------------------- what reached the upstream


def test_gateway_headers_are_echoed_and_recorded(oai: openai.OpenAI, claude: anthropic.Anthropic, app: Any) -> None:
    plain = oai.chat.completions.with_raw_response.create(model="m", messages=USER)
    assert plain.headers["x-demo-saw-gateway-headers"] == ""
    assert plain.headers["x-demo-upstream"] == "demo"
    tagged = claude.messages.with_raw_response.create(
        model="m",
        max_tokens=8,
        messages=USER,
        extra_headers={"X-Gateway-Org": "org-a", "X-Gateway-Decision-Id": "dec-1"},
    )
    assert tagged.headers["x-demo-saw-gateway-headers"] == "x-gateway-org,x-gateway-decision-id"
    assert tagged.parse().content[0].text.startswith("[demo:m]")
    first, second = app.received
    assert first.gateway_headers == {}
    assert second.gateway_headers == {"x-gateway-org": "org-a", "x-gateway-decision-id": "dec-1"}
    assert json.loads(second.body)["max_tokens"] == 8


def test_errors_in_each_api_shape(
    upstream: ThreadedDemoServer, oai: openai.OpenAI, claude: anthropic.Anthropic, app: Any
) -> None:
    status, body = raw(upstream, "POST", "/v1/chat/completions", b"{not json")
    assert status == 400 and body["error"]["type"] == "invalid_request_error" and "param" in body["error"]
    assert app.received[-1].body == b"{not json"
    status, body = raw(upstream, "POST", "/v1/messages", b"[1, 2]")
    assert status == 400 and body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
    status, body = raw(upstream, "GET", "/v1/nowhere")
    assert status == 404 and "error" in body
    status, body = raw(upstream, "GET", "/v1/chat/completions")
    assert status == 405
    with pytest.raises(openai.BadRequestError) as caught:
        oai.chat.completions.create(model="m", messages=[])
    assert caught.value.param == "messages"
    with pytest.raises(anthropic.BadRequestError):
        claude.messages.create(model="", max_tokens=8, messages=USER)


# --------------------------------------------------------------------------- serve(), delays, disconnects, subprocess


def test_serve_in_loop_with_models_delay_and_disconnect() -> None:
    async def go() -> None:
        running = await serve("127.0.0.1", 0, models=["only-one"], stream_delay_s=0.05, name="slow")
        assert running.port > 0
        try:
            async with aiohttp.ClientSession(running.url) as http:
                async with http.get("/v1/models") as response:
                    assert [m["id"] for m in (await response.json())["data"]] == ["only-one"]
                request = {"model": "m", "messages": USER, "stream": True}
                started = time.monotonic()
                arrivals = []
                async with http.post("/v1/chat/completions", json=request) as response:
                    assert response.headers["content-type"].startswith("text/event-stream")
                    async for line in response.content:
                        if line.startswith(b"data: "):
                            arrivals.append(time.monotonic() - started)
                # Each event is sent on its own, stream_delay_s apart: nothing is buffered.
                assert len(arrivals) >= 6 and arrivals[-1] - arrivals[0] >= 0.05 * (len(arrivals) - 1) * 0.8
                assert running.app.received[-1].outcome == "complete"
                # A client that goes away mid-stream stops it.
                async with http.post("/v1/messages", json={**request, "max_tokens": 64}) as response:
                    await response.content.readline()
                    response.close()
                for _ in range(100):
                    if running.app.received[-1].outcome:
                        break
                    await asyncio.sleep(0.01)
                assert running.app.received[-1].outcome == "disconnected"
        finally:
            await running.stop()
        assert running.task.done()

    asyncio.run(go())


def test_create_app_records_nothing_when_asked() -> None:
    async def go() -> None:
        async with await serve(app=create_app(max_recorded=0)) as running:
            async with aiohttp.ClientSession(running.url) as http:
                async with http.post("/v1/embeddings", json={"model": "e", "input": "x"}) as response:
                    assert response.status == 200
            assert len(running.app.received) == 0

    asyncio.run(go())


def test_runs_as_a_process() -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway.demo.upstream", "--port", "0", "--name", "proc", "--models", "a,b"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line.startswith("demo upstream listening on http://127.0.0.1:")
        url = line.split()[-1]
        with openai.OpenAI(base_url=url + "/v1", api_key="k", max_retries=0) as client:
            assert [m.id for m in client.models.list()] == ["a", "b"]
            reply = client.chat.completions.create(model="a", messages=USER)
            assert reply.choices[0].message.content.startswith("[proc:a] You said:")
    finally:
        process.terminate()
        # uvicorn shuts down gracefully, then re-raises the signal it caught.
        assert process.wait(timeout=5) in (0, -signal.SIGTERM)


# --------------------------------------------------------------------------- faults (x-demo-fault)


def test_faults_stall_and_drop_when_asked() -> None:
    async def go() -> None:
        async with await serve() as running, aiohttp.ClientSession(running.url) as http:
            chat = {"model": "m", "messages": USER}
            started = time.monotonic()
            async with http.post("/v1/chat/completions", json=chat, headers={"x-demo-fault": "stall=0.3"}) as response:
                assert response.status == 200 and (await response.json())["object"] == "chat.completion"
            assert time.monotonic() - started >= 0.3
            # A client that gives up on a stall is seen going away.
            with pytest.raises(asyncio.TimeoutError):
                async with http.post("/v1/chat/completions", json=chat, headers={"x-demo-fault": "stall=30"},
                                     timeout=aiohttp.ClientTimeout(total=0.2)):
                    pass
            for _ in range(100):
                if running.app.received[-1].outcome:
                    break
                await asyncio.sleep(0.01)
            assert running.app.received[-1].outcome == "disconnected"
            # drop: the headers and part of the body arrive, then the connection is cut.
            for body in (chat, {**chat, "stream": True}):
                async with http.post("/v1/chat/completions", json=body, headers={"x-demo-fault": "drop"}) as response:
                    assert response.status == 200
                    with pytest.raises(aiohttp.ClientPayloadError):
                        await response.read()
                assert running.app.received[-1].outcome == "dropped"
            # Both at once; then a malformed fault is refused, and without the header nothing happens.
            async with http.post("/v1/chat/completions", json=chat, headers={"x-demo-fault": "stall=0.05, drop"}) as response:
                with pytest.raises(aiohttp.ClientPayloadError):
                    await response.read()
            for bad in ("stall", "stall=-1", "explode", "drop=1"):
                async with http.post("/v1/chat/completions", json=chat, headers={"x-demo-fault": bad}) as response:
                    assert response.status == 400 and "x-demo-fault" in (await response.json())["error"]["message"]
            async with http.post("/v1/chat/completions", json=chat) as response:
                assert response.status == 200 and running.app.received[-1].outcome == "complete"

    asyncio.run(go())


def test_answers_are_gzipped_when_the_client_accepts_gzip() -> None:
    """As the real APIs' front ends do: the official SDKs send Accept-Encoding: gzip."""
    async def go() -> None:
        async with await serve() as running, aiohttp.ClientSession(running.url, auto_decompress=False) as http:
            chat = {"model": "m", "messages": USER, "stream_options": {"include_usage": True}}

            async def post(body: dict[str, Any], accept: str, fault: str | None = None) -> tuple[str | None, bytes]:
                headers = {"Accept-Encoding": accept} | ({"x-demo-fault": fault} if fault else {})
                async with http.post("/v1/chat/completions", json=body, headers=headers) as response:
                    assert response.status == 200
                    return response.headers.get("Content-Encoding"), await response.read()

            for accept in ("gzip", "br, gzip, deflate", "*", "GZIP;q=0.5"):
                coding, data = await post(chat, accept)
                assert coding == "gzip" and json.loads(gzip.decompress(data))["usage"]["total_tokens"] > 0
            # A stream is compressed event by event: every piece decodes as it arrives.
            coding, data = await post({**chat, "stream": True}, "gzip")
            assert coding == "gzip" and gzip.decompress(data).endswith(b"data: [DONE]\n\n")
            for accept in ("identity", "gzip;q=0", "br"):
                coding, data = await post(chat, accept)
                assert coding is None and json.loads(data)["object"] == "chat.completion"
            # The fault: an upstream that compresses whatever it was asked.
            coding, data = await post(chat, "identity", fault="gzip")
            assert coding == "gzip" and json.loads(gzip.decompress(data))["object"] == "chat.completion"

    asyncio.run(go())


def test_a_request_can_ask_for_another_status_and_more_headers() -> None:
    async def go() -> None:
        async with await serve() as running, aiohttp.ClientSession(running.url) as http:
            headers = [("x-demo-fault", "status=302"), ("x-demo-reply-header", "Location: /v1/models"),
                       ("x-demo-reply-header", "Set-Cookie: a=b")]
            for path, body in [("/v1/chat/completions", {"model": "m", "messages": USER}),
                               ("/v1/chat/completions", {"model": "m", "messages": USER, "stream": True})]:
                async with http.post(path, json=body, headers=headers, allow_redirects=False) as response:
                    assert response.status == 302 and response.headers["location"] == "/v1/models"
                    assert response.headers["set-cookie"] == "a=b"
            async with http.get("/v1/models/absent", headers=headers[1:]) as response:  # errors carry them too
                assert response.status == 404 and response.headers["set-cookie"] == "a=b"
            for bad in ("status=99", "status=600", "status=abc"):
                async with http.post("/v1/chat/completions", json={"model": "m"}, headers={"x-demo-fault": bad}) as response:
                    assert response.status == 400

    asyncio.run(go())


def test_journal_of_a_process(tmp_path: Any) -> None:
    journal = tmp_path / "journal.jsonl"
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway.demo.upstream", "--port", "0", "--journal", str(journal)],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert process.stdout is not None
        url = process.stdout.readline().split()[-1]
        body = json.dumps({"model": "example-small-1", "messages": USER}).encode()
        request = urllib.request.Request(url + "/v1/chat/completions", data=body, method="POST", headers={
            "content-type": "application/json", "x-demo-tag": "allowed", "x-gateway-decision-id": "d1",
            "x-gateway-org": "org-a"})
        with urllib.request.urlopen(request, timeout=5) as response:
            assert response.status == 200
        with urllib.request.urlopen(url + "/v1/models", timeout=5) as response:
            assert response.status == 200
        entries = [json.loads(line) for line in journal.read_text().splitlines()]
        assert [(e["path"], e["model"], e.get("tag"), e.get("decision_id"), e.get("org")) for e in entries] == [
            ("/v1/chat/completions", "example-small-1", "allowed", "d1", "org-a"), ("/v1/models", None, None, None, None)]
    finally:
        process.terminate()
        process.wait(timeout=5)

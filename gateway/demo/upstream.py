"""A small, fast fake model server: the upstream behind `gateway demo`, the
end-to-end tests and the benchmarks.

It speaks enough of the OpenAI API (chat completions, legacy completions,
embeddings, responses, models) and of the Anthropic Messages API, streaming
and not, for the official SDKs to work against it unchanged. ``GET /v1/models``
answers in Anthropic's shape (``type``, ``display_name``, ``created_at``; a page
with ``has_more``, ``first_id``, ``last_id``, ``limit`` and ``after_id`` honoured)
when the request carries ``anthropic-version``, as Anthropic's SDKs send it, and
otherwise in OpenAI's, with the legacy ``root`` and ``parent`` fields that name
the model an entry derives from (``lineage``). Every answer is
deterministic: ``"[<name>:<model>] You said: <the last user message>"``.
Token counts are whitespace-separated words; a stream sends one word per event.

It is a raw ASGI application (no framework on the hot path) with test hooks:

* ``app.received`` — the requests it saw, newest last (:class:`ReceivedRequest`:
  method, path, query, raw headers, body bytes, and how a stream ended);
* every response carries ``x-demo-saw-gateway-headers``: the names, comma
  separated, of the ``x-gateway-*`` request headers that reached it (empty
  when none did), and ``x-demo-upstream: <name>``;
* answers are gzip-compressed (``Content-Encoding: gzip``, streams flushed
  event by event) when the request's ``Accept-Encoding`` accepts gzip, as the
  real APIs' front ends do;
* faults, off unless a request asks (``x-demo-fault``, comma separated):
  ``stall=SECONDS`` answers only after SECONDS (sooner if the client goes
  away), ``drop`` sends the headers and part of the body, then cuts the
  connection, ``gzip`` compresses the answer even when the request asked for
  ``identity``, ``status=NNN`` answers with that status instead (e.g. a
  redirect); a malformed value is a 400;
* ``x-demo-reply-header: NAME: VALUE`` (repeatable) adds that header to the
  answer, as a real upstream's cookies, account ids or proxies' headers would;
* ``journal`` (``--journal PATH``): one JSON line per request as it arrives
  (time, method, path, model, ``x-gateway-decision-id``, ``x-gateway-org``,
  ``x-demo-tag``, fault, the content type(s) received and the names of any
  underscore-spelled headers), so a test can see what reached it from outside.

Run it with :func:`serve` (in the current event loop), :func:`start_in_thread`
(its own loop in a daemon thread, for sync clients), or as a process::

    python -m gateway.demo.upstream --port 8000

which prints ``demo upstream listening on http://HOST:PORT`` once it accepts
connections (``--port 0`` picks a free port).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import itertools
import json
import logging
import socket
import struct
import sys
import threading
import time
import urllib.parse
import zlib
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, MutableMapping
from typing import Any, TextIO

import uvicorn

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: The model ids of the shipped policy bundle (``policies/models.yaml``).
DEFAULT_MODELS: tuple[str, ...] = ("example-frontier-1", "example-frontier-2", "example-frontier-3", "example-small-1")
EMBEDDING_DIMENSIONS = 16
MAX_ECHO_CHARS = 60
MAX_RECORDED = 10_000

_encode = json.JSONEncoder(separators=(",", ":")).encode
_decode = json.JSONDecoder().decode  # on str: skips json.loads' encoding sniffing


def _dumps(obj: Any) -> bytes:
    return _encode(obj).encode()


# --------------------------------------------------------------------------- records


class ReceivedRequest:
    """One request as the upstream received it.

    ``outcome`` is ``"complete"`` once the whole response was sent, or
    ``"disconnected"`` when the client went away during a (delayed) stream.
    """

    __slots__ = ("method", "path", "query_string", "raw_headers", "body", "outcome")

    def __init__(
        self, method: str, path: str, query_string: bytes, raw_headers: list[tuple[bytes, bytes]], body: bytes
    ) -> None:
        self.method = method
        self.path = path
        self.query_string = query_string
        self.raw_headers = raw_headers
        self.body = body
        self.outcome: str | None = None

    @property
    def headers(self) -> dict[str, str]:
        """Lower-case names; repeated headers joined with ``", "``."""
        out: dict[str, str] = {}
        for name, value in self.raw_headers:
            key, text = name.decode("latin-1").lower(), value.decode("latin-1")
            out[key] = f"{out[key]}, {text}" if key in out else text
        return out

    def header(self, name: str, default: str | None = None) -> str | None:
        return self.headers.get(name.lower(), default)

    @property
    def gateway_headers(self) -> dict[str, str]:
        return {k: v for k, v in self.headers.items() if k.startswith("x-gateway-")}

    def json(self) -> Any:
        return json.loads(self.body)

    def __repr__(self) -> str:
        return f"ReceivedRequest({self.method} {self.path}, {len(self.body)} bytes, outcome={self.outcome})"


# --------------------------------------------------------------------------- content helpers


def _text_of(content: Any, part_types: tuple[str, ...]) -> str:
    """The text of a message's content: a string, or a list of typed parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = [
            p["text"]
            for p in content
            if isinstance(p, dict) and p.get("type") in part_types and isinstance(p.get("text"), str)
        ]
        return " ".join(texts)
    return ""


_CHAT_PARTS = ("text", "input_text")
_RESPONSES_PARTS = ("input_text", "text", "output_text")


def _conversation(messages: Iterable[Any], part_types: tuple[str, ...]) -> tuple[str, int]:
    """(last user text, word count of every message)."""
    last_user = ""
    words = 0
    for message in messages:
        if not isinstance(message, dict):
            continue
        text = _text_of(message.get("content"), part_types)
        words += len(text.split())
        if message.get("role") == "user":
            last_user = text
    return last_user, words


def _words(text: str) -> int:
    return len(text.split())


def _max_tokens(body: dict[str, Any], *keys: str) -> int | None:
    for key in keys:
        value = body.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


class _Reply:
    """The deterministic answer, cut into stream pieces (one word each)."""

    __slots__ = ("pieces", "text", "truncated")

    def __init__(self, name: str, model: str, said: str, limit: int | None):
        said = " ".join(said.split())
        if len(said) > MAX_ECHO_CHARS:
            said = said[: MAX_ECHO_CHARS - 3].rstrip() + "..."
        words = f"[{name}:{model}] You said: {said or '(nothing)'}".split(" ")
        self.truncated = limit is not None and len(words) > limit
        if self.truncated:
            words = words[:limit]
        self.pieces = [w + " " for w in words[:-1]] + words[-1:]
        self.text = "".join(self.pieces)

    @property
    def tokens(self) -> int:
        return len(self.pieces)


class BadRequest(Exception):
    def __init__(self, message: str, param: str | None = None, status: int = 400, code: str | None = None):
        super().__init__(message)
        self.message, self.param, self.status, self.code = message, param, status, code


def _require_model(body: dict[str, Any]) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequest("you must provide a model parameter", "model")
    return model


def _embedding(text: str, dims: int) -> list[float]:
    raw = hashlib.shake_256(text.encode()).digest(2 * dims)
    vec = [(raw[2 * i] << 8 | raw[2 * i + 1]) / 32767.5 - 1.0 for i in range(dims)]
    norm = sum(v * v for v in vec) ** 0.5 or 1.0
    return [round(v / norm, 6) for v in vec]


# --------------------------------------------------------------------------- faults


class Fault:
    """What ``x-demo-fault`` asked of one request."""

    __slots__ = ("stall_s", "drop", "gzip", "status")

    def __init__(self, stall_s: float = 0.0, drop: bool = False, gzip: bool = False,
                 status: int | None = None) -> None:
        self.stall_s, self.drop, self.gzip, self.status = stall_s, drop, gzip, status

    @classmethod
    def parse(cls, text: str) -> Fault:
        fault = cls()
        for item in (part.strip() for part in text.split(",")):
            name, _, value = item.partition("=")
            if name in ("drop", "gzip") and not value:
                setattr(fault, name, True)
                continue
            if name == "status" and value.isdigit() and 200 <= int(value) <= 599:
                fault.status = int(value)
                continue
            try:
                seconds = float(value)
            except ValueError:
                seconds = -1.0
            if name != "stall" or not 0 <= seconds <= 3600:
                raise BadRequest(f"x-demo-fault: expected stall=SECONDS, drop, gzip and/or status=NNN, got {item!r}")
            fault.stall_s = seconds
        return fault


def _reply_header(value: bytes) -> tuple[bytes, bytes]:
    name, _, text = value.partition(b":")
    return name.strip(), text.strip()


class _Dropped(Exception):
    """Raised out of the app to make uvicorn cut the connection mid-response."""


def _quiet_drops(record: logging.LogRecord) -> bool:
    # uvicorn logs an app's exception with its traceback; a drop asked for is no error.
    return not (record.exc_info and isinstance(record.exc_info[1], _Dropped))


def _cut_short(send: Send) -> Send:
    """`send` that delivers the headers and half the first body chunk, then drops."""

    async def cut(message: Message) -> None:
        if message["type"] != "http.response.body":
            await send(message)
            return
        body = message.get("body", b"")
        await send({"type": "http.response.body", "body": body[: len(body) // 2], "more_body": True})
        raise _Dropped

    return cut


def _accepts_gzip(accept_encoding: bytes | None) -> bool:
    """True when an Accept-Encoding value (RFC 9110 §12.5.3) admits gzip: named, or `*`,
    with a q-value above 0."""
    if accept_encoding is None:
        return False
    for item in accept_encoding.decode("latin-1").lower().split(","):
        coding, *parameters = (part.strip() for part in item.split(";"))
        if coding not in ("gzip", "x-gzip", "*"):
            continue
        q = next((p[2:] for p in parameters if p.startswith("q=")), "1")
        try:
            return float(q) > 0
        except ValueError:
            return False
    return False


def _gzipped(send: Send) -> Send:
    """`send` that gzips the body: a whole body at once (with its Content-Length), a
    streamed one flushed message by message so that each event arrives when sent."""
    start: Message | None = None
    packer = zlib.compressobj(6, zlib.DEFLATED, 16 + zlib.MAX_WBITS)

    async def send_gzipped(message: Message) -> None:
        nonlocal start
        if message["type"] == "http.response.start":
            start = message
            return
        if message["type"] != "http.response.body":
            await send(message)
            return
        more = message.get("more_body", False)
        data = packer.compress(message.get("body", b"")) + packer.flush(zlib.Z_SYNC_FLUSH if more else zlib.Z_FINISH)
        if start is not None:
            headers = [(k, v) for k, v in start["headers"] if k.lower() != b"content-length"]
            headers += [(b"content-encoding", b"gzip"), (b"vary", b"accept-encoding")]
            if not more:
                headers.append((b"content-length", str(len(data)).encode()))
            await send({**start, "headers": headers})
            start = None
        await send({"type": "http.response.body", "body": data, "more_body": more})

    return send_gzipped


def _with_status(send: Send, status: int) -> Send:
    """`send` that answers with `status` whatever the handler chose."""

    async def sending(message: Message) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "status": status}
        await send(message)

    return sending


async def _stall(receive: Receive, seconds: float) -> bool:
    """Wait `seconds`; True if the client went away meanwhile."""
    try:
        message = await asyncio.wait_for(receive(), seconds)
    except TimeoutError:
        return False
    return message.get("type") == "http.disconnect"


# --------------------------------------------------------------------------- the app

_JSON = (b"content-type", b"application/json")
_SSE_HEADERS = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache")]
_DONE = b"data: [DONE]\n\n"
_GATEWAY_PREFIX = b"x-gateway-"

Handler = Callable[[Send, Receive, Any, list[tuple[bytes, bytes]], ReceivedRequest | None], Awaitable[None]]


class DemoUpstream:
    """The ASGI application. Build it with :func:`create_app`."""

    def __init__(
        self,
        *,
        name: str = "demo",
        models: Iterable[str] = DEFAULT_MODELS,
        stream_delay_s: float = 0.0,
        max_recorded: int | None = MAX_RECORDED,
        created: int = 1_767_225_600,  # 2026-01-01T00:00:00Z, the models' `created`
        journal: TextIO | None = None,
        lineage: Mapping[str, str] | None = None,
    ) -> None:
        self.name = name
        self.journal = journal
        self.models: list[str] = list(models)
        #: model -> the model it derives from: its `parent` (and, up the chain, `root`) in the list.
        self.lineage: dict[str, str] = dict(lineage or {})
        self.stream_delay_s = stream_delay_s
        self.created = created
        #: Requests received, newest last; bounded by ``max_recorded`` (0: record nothing).
        self.received: deque[ReceivedRequest] = deque(maxlen=max_recorded)
        self._record = max_recorded != 0
        self._ids = itertools.count(1)
        self._name_header = (b"x-demo-upstream", name.encode("latin-1", "replace"))
        # path -> (method, handler, anthropic-shaped errors, parse JSON body)
        self._routes: dict[str, tuple[str, Handler, bool, bool]] = {
            "/v1/chat/completions": ("POST", self._chat, False, True),
            "/v1/completions": ("POST", self._completions, False, True),
            "/v1/embeddings": ("POST", self._embeddings, False, True),
            "/v1/responses": ("POST", self._responses, False, True),
            "/v1/messages": ("POST", self._messages, True, True),
            "/v1/messages/count_tokens": ("POST", self._count_tokens, True, True),
        }

    def reset(self) -> None:
        """Forget the recorded requests."""
        self.received.clear()

    # ------------------------------------------------------------------ ASGI entry

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._not_http(scope, receive, send)
            return
        method: str = scope["method"]
        path: str = scope["path"]

        # Read the whole body.
        message = await receive()
        body: bytes = message.get("body", b"")
        if message.get("more_body"):
            chunks = [body]
            while message.get("more_body"):
                message = await receive()
                chunks.append(message.get("body", b""))
            body = b"".join(chunks)

        raw_headers: list[tuple[bytes, bytes]] = scope["headers"]
        seen = [k for k, _ in raw_headers if k[:10].lower() == _GATEWAY_PREFIX]
        extra = [
            (b"x-demo-saw-gateway-headers", b",".join(dict.fromkeys(k.lower() for k in seen)) if seen else b""),
            self._name_header,
        ]
        extra += [_reply_header(v) for k, v in raw_headers if k.lower() == b"x-demo-reply-header"]
        record = None
        if self._record:
            record = ReceivedRequest(method, path, scope.get("query_string", b""), raw_headers, body)
            self.received.append(record)
        fault_header = next((v for k, v in raw_headers if k.lower() == b"x-demo-fault"), None)
        gzip = _accepts_gzip(next((v for k, v in raw_headers if k.lower() == b"accept-encoding"), None))
        if gzip:
            send = _gzipped(send)
        if self.journal is not None:
            self._write_journal(method, path, raw_headers, body)

        route = self._routes.get(path)
        anthropic = path.startswith("/v1/messages")
        try:
            if fault_header is not None:
                fault = Fault.parse(fault_header.decode("latin-1"))
                if fault.stall_s and await _stall(receive, fault.stall_s):
                    if record is not None:
                        record.outcome = "disconnected"
                    return
                if fault.gzip and not gzip:
                    send = _gzipped(send)
                if fault.drop:
                    if record is not None:
                        record.outcome = "dropped"
                    send = _cut_short(send)
                if fault.status is not None:
                    send = _with_status(send, fault.status)
            if route is None:
                if path == "/v1/models" or (path.startswith("/v1/models/") and len(path) > 11):
                    anthropic = any(k.lower() == b"anthropic-version" for k, _ in raw_headers)
                    if method != "GET":
                        raise BadRequest(f"Method {method} not allowed for {path}", status=405)
                    if path == "/v1/models":
                        await self._models_list(send, scope.get("query_string", b""), anthropic, extra)
                    else:
                        await self._models_get(send, path[11:], anthropic, extra)
                else:
                    raise BadRequest(f"Invalid URL ({method} {path})", status=404, code="unknown_url")
            else:
                allowed, handler, anthropic, parse = route
                if method != allowed:
                    raise BadRequest(f"Method {method} not allowed for {path}", status=405)
                payload: Any = None
                if parse:
                    try:
                        payload = _decode(body.decode())
                    except (ValueError, UnicodeDecodeError):
                        raise BadRequest(
                            "We could not parse the JSON body of your request. Send a JSON object as the body."
                        ) from None
                    if not isinstance(payload, dict):
                        raise BadRequest("The request body must be a JSON object.")
                await handler(send, receive, payload, extra, record)
        except BadRequest as err:
            await self._error(send, err, anthropic, extra)
        if record is not None and record.outcome is None:
            record.outcome = "complete"

    def _write_journal(self, method: str, path: str, raw_headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        assert self.journal is not None
        wanted = {b"x-gateway-decision-id": "decision_id", b"x-gateway-org": "org", b"x-demo-tag": "tag",
                  b"x-demo-fault": "fault"}
        entry: dict[str, Any] = {"time": round(time.time(), 6), "method": method, "path": path, "model": None}
        for name, value in raw_headers:
            key = wanted.get(name.lower())
            if key is not None:
                entry[key] = value.decode("latin-1")
            elif name.lower() == b"content-type":  # every copy: a gateway must forward exactly the one it parsed
                entry["content_type"] = ", ".join(filter(None, (entry.get("content_type"), value.decode("latin-1"))))
            elif b"_" in name:  # underscore spellings some servers read as dashes (Content_Type)
                entry.setdefault("underscored", []).append(name.decode("latin-1"))
        try:
            entry["model"] = _decode(body.decode()).get("model") if body else None
        except (ValueError, UnicodeDecodeError, AttributeError):
            pass
        self.journal.write(_encode(entry) + "\n")

    async def _not_http(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        elif scope["type"] == "websocket":
            await receive()
            await send({"type": "websocket.close", "code": 1003})

    # ------------------------------------------------------------------ responses

    async def _json(self, send: Send, obj: Any, extra: list[tuple[bytes, bytes]], status: int = 200) -> None:
        data = _dumps(obj)
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [_JSON, (b"content-length", str(len(data)).encode()), *extra],
            }
        )
        await send({"type": "http.response.body", "body": data})

    async def _error(self, send: Send, err: BadRequest, anthropic: bool, extra: list[tuple[bytes, bytes]]) -> None:
        if anthropic:
            kind = {404: "not_found_error"}.get(err.status, "invalid_request_error")
            obj: dict[str, Any] = {"type": "error", "error": {"type": kind, "message": err.message}}
        else:
            error = {"message": err.message, "type": "invalid_request_error", "param": err.param, "code": err.code}
            obj = {"error": error}
        await self._json(send, obj, extra, err.status)

    async def _stream(
        self,
        send: Send,
        receive: Receive,
        events: Iterable[bytes],
        extra: list[tuple[bytes, bytes]],
        record: ReceivedRequest | None,
    ) -> None:
        """Send SSE events one by one, ``stream_delay_s`` apart. With a delay, a
        client that goes away stops the stream (``record.outcome == "disconnected"``)."""
        await send({"type": "http.response.start", "status": 200, "headers": [*_SSE_HEADERS, *extra]})
        delay = self.stream_delay_s
        if delay <= 0:
            for event in events:
                await send({"type": "http.response.body", "body": event, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
            return
        gone = asyncio.ensure_future(receive())  # resolves with http.disconnect
        try:
            for i, event in enumerate(events):
                if i:
                    done, _ = await asyncio.wait((gone,), timeout=delay)
                    if done:
                        if record is not None:
                            record.outcome = "disconnected"
                        return
                await send({"type": "http.response.body", "body": event, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        finally:
            gone.cancel()

    def _id(self, prefix: str) -> str:
        return f"{prefix}demo{next(self._ids):08d}"

    # ------------------------------------------------------------------ OpenAI

    async def _chat(self, send: Send, receive: Receive, body: dict[str, Any], extra: list, record: Any) -> None:
        model = _require_model(body)
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise BadRequest("'messages' must be a non-empty array", "messages")
        said, prompt_tokens = _conversation(messages, _CHAT_PARTS)
        reply = _Reply(self.name, model, said, _max_tokens(body, "max_completion_tokens", "max_tokens"))
        finish = "length" if reply.truncated else "stop"
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": reply.tokens,
            "total_tokens": prompt_tokens + reply.tokens,
        }
        cid, created = self._id("chatcmpl-"), int(time.time())
        if not body.get("stream"):
            await self._json(
                send,
                {
                    "id": cid,
                    "object": "chat.completion",
                    "created": created,
                    "model": model,
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": reply.text, "refusal": None, "annotations": []},
                            "logprobs": None,
                            "finish_reason": finish,
                        }
                    ],
                    "usage": usage,
                    "system_fingerprint": "fp_demo",
                },
                extra,
            )
            return
        options = body.get("stream_options")
        include_usage = isinstance(options, dict) and bool(options.get("include_usage"))

        def chunk(delta: dict[str, Any], finish_reason: str | None) -> bytes:
            obj: dict[str, Any] = {
                "id": cid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "system_fingerprint": "fp_demo",
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
            }
            if include_usage:
                obj["usage"] = None
            return b"data: " + _dumps(obj) + b"\n\n"

        def events() -> Iterator[bytes]:
            yield chunk({"role": "assistant", "content": "", "refusal": None}, None)
            for piece in reply.pieces:
                yield chunk({"content": piece}, None)
            yield chunk({}, finish)
            if include_usage:
                yield b"data: " + _dumps(
                    {
                        "id": cid,
                        "object": "chat.completion.chunk",
                        "created": created,
                        "model": model,
                        "system_fingerprint": "fp_demo",
                        "choices": [],
                        "usage": usage,
                    }
                ) + b"\n\n"
            yield _DONE

        await self._stream(send, receive, events(), extra, record)

    async def _completions(self, send: Send, receive: Receive, body: dict[str, Any], extra: list, record: Any) -> None:
        model = _require_model(body)
        prompt = body.get("prompt")
        if isinstance(prompt, list):
            texts = [p for p in prompt if isinstance(p, str)]
            said, prompt_tokens = (texts[-1] if texts else ""), sum(_words(p) for p in texts)
            if not texts:  # token arrays
                prompt_tokens = sum(len(p) if isinstance(p, list) else 1 for p in prompt)
        elif isinstance(prompt, str):
            said, prompt_tokens = prompt, _words(prompt)
        else:
            raise BadRequest("'prompt' must be a string or an array", "prompt")
        reply = _Reply(self.name, model, said, _max_tokens(body, "max_tokens"))
        finish = "length" if reply.truncated else "stop"
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": reply.tokens,
            "total_tokens": prompt_tokens + reply.tokens,
        }
        cid, created = self._id("cmpl-"), int(time.time())
        if not body.get("stream"):
            await self._json(
                send,
                {
                    "id": cid,
                    "object": "text_completion",
                    "created": created,
                    "model": model,
                    "choices": [{"text": reply.text, "index": 0, "logprobs": None, "finish_reason": finish}],
                    "usage": usage,
                },
                extra,
            )
            return
        options = body.get("stream_options")
        include_usage = isinstance(options, dict) and bool(options.get("include_usage"))

        def chunk(choices: list[dict[str, Any]], usage_value: Any = None) -> bytes:
            obj: dict[str, Any] = {
                "id": cid,
                "object": "text_completion",
                "created": created,
                "model": model,
                "choices": choices,
            }
            if include_usage:
                obj["usage"] = usage_value
            return b"data: " + _dumps(obj) + b"\n\n"

        def events() -> Iterator[bytes]:
            last = len(reply.pieces) - 1
            for i, piece in enumerate(reply.pieces):
                reason = finish if i == last else None
                yield chunk([{"text": piece, "index": 0, "logprobs": None, "finish_reason": reason}])
            if include_usage:
                yield chunk([], usage)
            yield _DONE

        await self._stream(send, receive, events(), extra, record)

    async def _embeddings(self, send: Send, receive: Receive, body: dict[str, Any], extra: list, record: Any) -> None:
        model = _require_model(body)
        given = body.get("input")
        if isinstance(given, str):
            inputs: list[Any] = [given]
        elif isinstance(given, list) and given and all(isinstance(x, int) for x in given):
            inputs = [given]  # one token array
        elif isinstance(given, list) and given:
            inputs = given
        else:
            raise BadRequest("'input' must be a string or a non-empty array", "input")
        dims = body.get("dimensions")
        if dims is None:
            dims = EMBEDDING_DIMENSIONS
        elif not isinstance(dims, int) or isinstance(dims, bool) or not 1 <= dims <= 4096:
            raise BadRequest("'dimensions' must be an integer between 1 and 4096", "dimensions")
        as_base64 = body.get("encoding_format") == "base64"
        data = []
        tokens = 0
        for index, item in enumerate(inputs):
            text = item if isinstance(item, str) else " ".join(map(str, item)) if isinstance(item, list) else str(item)
            tokens += _words(text)
            vector: Any = _embedding(text, dims)
            if as_base64:
                vector = base64.b64encode(struct.pack(f"<{dims}f", *vector)).decode()
            data.append({"object": "embedding", "index": index, "embedding": vector})
        await self._json(
            send,
            {
                "object": "list",
                "data": data,
                "model": model,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            },
            extra,
        )

    async def _responses(self, send: Send, receive: Receive, body: dict[str, Any], extra: list, record: Any) -> None:
        model = _require_model(body)
        given = body.get("input")
        if isinstance(given, str):
            said, input_tokens = given, _words(given)
        elif isinstance(given, list):
            said, input_tokens = _conversation(given, _RESPONSES_PARTS)
        else:
            raise BadRequest("'input' must be a string or an array", "input")
        instructions = body.get("instructions")
        if isinstance(instructions, str):
            input_tokens += _words(instructions)
        reply = _Reply(self.name, model, said, _max_tokens(body, "max_output_tokens"))
        rid, mid, created = self._id("resp_"), self._id("msg_"), int(time.time())
        status = "incomplete" if reply.truncated else "completed"

        def response(state: str, output: list[Any], usage: Any) -> dict[str, Any]:
            return {
                "id": rid,
                "object": "response",
                "created_at": created,
                "status": state,
                "completed_at": created if state == "completed" else None,
                "error": None,
                "incomplete_details": {"reason": "max_output_tokens"} if state == "incomplete" else None,
                "instructions": instructions,
                "max_output_tokens": body.get("max_output_tokens"),
                "model": model,
                "output": output,
                "parallel_tool_calls": True,
                "previous_response_id": body.get("previous_response_id"),
                "reasoning": {"effort": None, "summary": None},
                "store": bool(body.get("store", False)),
                "temperature": body.get("temperature", 1.0),
                "text": {"format": {"type": "text"}},
                "tool_choice": "auto",
                "tools": [],
                "top_p": body.get("top_p", 1.0),
                "truncation": "disabled",
                "usage": usage,
                "user": None,
                "metadata": body.get("metadata") or {},
            }

        def part(text: str) -> dict[str, Any]:
            return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}

        def message(text: str | None, state: str) -> dict[str, Any]:
            return {
                "id": mid,
                "type": "message",
                "status": state,
                "role": "assistant",
                "content": [part(text)] if text is not None else [],
            }

        usage = {
            "input_tokens": input_tokens,
            "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
            "output_tokens": reply.tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": input_tokens + reply.tokens,
        }
        final = response(status, [message(reply.text, status)], usage)
        if not body.get("stream"):
            await self._json(send, final, extra)
            return

        def events() -> Iterator[bytes]:
            seq = itertools.count()

            def event(kind: str, **fields: Any) -> bytes:
                fields["type"] = kind
                fields["sequence_number"] = next(seq)
                return b"event: " + kind.encode() + b"\ndata: " + _dumps(fields) + b"\n\n"

            where = {"item_id": mid, "output_index": 0, "content_index": 0}
            yield event("response.created", response=response("in_progress", [], None))
            yield event("response.in_progress", response=response("in_progress", [], None))
            yield event("response.output_item.added", output_index=0, item=message(None, "in_progress"))
            yield event("response.content_part.added", **where, part=part(""))
            for piece in reply.pieces:
                yield event("response.output_text.delta", **where, delta=piece, logprobs=[])
            yield event("response.output_text.done", **where, text=reply.text, logprobs=[])
            yield event("response.content_part.done", **where, part=part(reply.text))
            yield event("response.output_item.done", output_index=0, item=message(reply.text, status))
            yield event(f"response.{status}", response=final)

        await self._stream(send, receive, events(), extra, record)

    def _model(self, model_id: str, anthropic: bool = False) -> dict[str, Any]:
        if anthropic:
            created_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.created))
            display = " ".join(part.capitalize() for part in model_id.split("-"))
            return {"type": "model", "id": model_id, "display_name": display, "created_at": created_at}
        root, seen = model_id, {model_id}
        while root in self.lineage and self.lineage[root] not in seen:
            root = self.lineage[root]
            seen.add(root)
        return {"id": model_id, "object": "model", "created": self.created, "owned_by": self.name,
                "root": root, "parent": self.lineage.get(model_id)}

    async def _models_list(self, send: Send, query: bytes, anthropic: bool, extra: list) -> None:
        if not anthropic:
            await self._json(send, {"object": "list", "data": [self._model(m) for m in self.models]}, extra)
            return
        params = dict(urllib.parse.parse_qsl(query.decode("latin-1")))
        limit = int(params["limit"]) if params.get("limit", "").isdigit() else 20
        start = self.models.index(params["after_id"]) + 1 if params.get("after_id") in self.models else 0
        page = self.models[start:start + max(1, min(limit, 1000))]
        await self._json(send, {"data": [self._model(m, True) for m in page], "has_more": start + len(page) < len(self.models),
                                "first_id": page[0] if page else None, "last_id": page[-1] if page else None}, extra)

    async def _models_get(self, send: Send, model_id: str, anthropic: bool, extra: list) -> None:
        if model_id not in self.models:
            raise BadRequest(f"The model '{model_id}' does not exist", "model", status=404, code="model_not_found")
        await self._json(send, self._model(model_id, anthropic), extra)

    # ------------------------------------------------------------------ Anthropic

    def _anthropic_input(self, body: dict[str, Any]) -> tuple[str, str, int]:
        model = _require_model(body)
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise BadRequest("messages: at least one message is required")
        said, tokens = _conversation(messages, ("text",))
        system = body.get("system")
        if system is not None:
            tokens += _words(_text_of(system, ("text",)))
        return model, said, tokens

    async def _count_tokens(self, send: Send, receive: Receive, body: dict[str, Any], extra: list, record: Any) -> None:
        _, _, tokens = self._anthropic_input(body)
        await self._json(send, {"input_tokens": tokens}, extra)

    async def _messages(self, send: Send, receive: Receive, body: dict[str, Any], extra: list, record: Any) -> None:
        model, said, input_tokens = self._anthropic_input(body)
        reply = _Reply(self.name, model, said, _max_tokens(body, "max_tokens"))
        stop_reason = "max_tokens" if reply.truncated else "end_turn"
        mid = self._id("msg_")
        if not body.get("stream"):
            await self._json(
                send,
                {
                    "id": mid,
                    "type": "message",
                    "role": "assistant",
                    "model": model,
                    "content": [{"type": "text", "text": reply.text}],
                    "stop_reason": stop_reason,
                    "stop_sequence": None,
                    "usage": {"input_tokens": input_tokens, "output_tokens": reply.tokens},
                },
                extra,
            )
            return

        def event(kind: str, obj: dict[str, Any]) -> bytes:
            return b"event: " + kind.encode() + b"\ndata: " + _dumps(obj) + b"\n\n"

        def events() -> Iterator[bytes]:
            start = {
                "id": mid,
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": [],
                "stop_reason": None,
                "stop_sequence": None,
                "usage": {"input_tokens": input_tokens, "output_tokens": 1},
            }
            yield event("message_start", {"type": "message_start", "message": start})
            yield event(
                "content_block_start",
                {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
            )
            yield event("ping", {"type": "ping"})
            for piece in reply.pieces:
                yield event(
                    "content_block_delta",
                    {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": piece}},
                )
            yield event("content_block_stop", {"type": "content_block_stop", "index": 0})
            yield event(
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": stop_reason, "stop_sequence": None},
                    "usage": {"output_tokens": reply.tokens},
                },
            )
            yield event("message_stop", {"type": "message_stop"})

        await self._stream(send, receive, events(), extra, record)


def create_app(
    *,
    name: str = "demo",
    models: Iterable[str] = DEFAULT_MODELS,
    stream_delay_s: float = 0.0,
    max_recorded: int | None = MAX_RECORDED,
    journal: TextIO | None = None,
    lineage: Mapping[str, str] | None = None,
) -> DemoUpstream:
    """The demo upstream as an ASGI application.

    ``name`` appears in every answer (``[name:model]``) and in ``x-demo-upstream``;
    ``models`` is what ``GET /v1/models`` lists (any model is answered);
    ``stream_delay_s`` is the pause between stream events (mutable later as
    ``app.stream_delay_s``); ``max_recorded`` bounds ``app.received``
    (``None``: unbounded, ``0``: record nothing, e.g. for benchmarks);
    ``journal`` gets one JSON line per request received (see the module doc);
    ``lineage`` maps a model to the one it derives from (``parent``, ``root``).
    """
    logging.getLogger("uvicorn.error").addFilter(_quiet_drops)
    return DemoUpstream(name=name, models=models, stream_delay_s=stream_delay_s, max_recorded=max_recorded,
                        journal=journal, lineage=lineage)


# --------------------------------------------------------------------------- running it


def _config(app: ASGIApp, host: str, port: int) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        loop="uvloop",
        http="httptools",
        interface="asgi3",
        lifespan="off",
        log_level="warning",
        access_log=False,
        proxy_headers=False,  # the peer address is what the upstream saw; no X-Forwarded-For rewriting
        server_header=False,
        timeout_graceful_shutdown=2,
    )


def _bind(host: str, port: int) -> socket.socket:
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


class _EmbeddedServer(uvicorn.Server):
    """A uvicorn server that leaves the process's signal handlers alone, so it
    can share an event loop (and a process) with other servers."""

    def capture_signals(self) -> contextlib.AbstractContextManager[None]:  # type: ignore[override]
        return contextlib.nullcontext()


class DemoServer:
    """A demo upstream listening in the current event loop (see :func:`serve`)."""

    def __init__(self, app: DemoUpstream, server: uvicorn.Server, task: asyncio.Task[None], host: str, port: int):
        self.app, self.server, self.task, self.host, self.port = app, server, task, host, port

    @property
    def url(self) -> str:
        """``http://host:port`` — the OpenAI SDK wants ``url + "/v1"``, Anthropic's ``url``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def stop(self) -> None:
        self.server.should_exit = True
        await self.task

    async def __aenter__(self) -> DemoServer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


async def serve(
    host: str = "127.0.0.1", port: int = 0, *, app: DemoUpstream | None = None, **app_options: Any
) -> DemoServer:
    """Start the demo upstream on uvicorn (httptools) in the running event loop;
    return once it is listening. ``port=0`` picks a free port: see ``.port``.
    ``app_options`` go to :func:`create_app` when no ``app`` is given."""
    app = app if app is not None else create_app(**app_options)
    sock = _bind(host, port)
    bound_host, bound_port = sock.getsockname()[:2]
    server = _EmbeddedServer(_config(app, host, bound_port))
    task = asyncio.create_task(server.serve(sockets=[sock]), name=f"demo-upstream:{bound_port}")
    task.add_done_callback(lambda _: sock.close())
    while not server.started:
        if task.done():
            task.result()  # raises what stopped it
            raise RuntimeError("the demo upstream stopped during startup")
        await asyncio.sleep(0.001)
    return DemoServer(app, server, task, host, bound_port)


class ThreadedDemoServer:
    """A demo upstream in a daemon thread with its own event loop, for sync clients."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, app: DemoUpstream | None = None, **app_options: Any):
        self.app = app if app is not None else create_app(**app_options)
        self._host, self._port = host, port
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._running: DemoServer | None = None
        self._thread = threading.Thread(target=self._main, name="demo-upstream", daemon=True)

    def _main(self) -> None:
        try:
            import uvloop

            loop = uvloop.new_event_loop()
        except ImportError:  # pragma: no cover - uvloop is a declared dependency
            loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        try:
            self._running = loop.run_until_complete(serve(self._host, self._port, app=self.app))
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            loop.close()
            return
        self._ready.set()
        try:
            loop.run_until_complete(self._running.task)
        finally:
            loop.close()

    def start(self) -> ThreadedDemoServer:
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            raise self._error
        return self

    @property
    def port(self) -> int:
        assert self._running is not None, "not started"
        return self._running.port

    @property
    def url(self) -> str:
        assert self._running is not None, "not started"
        return self._running.url

    def stop(self, timeout: float = 5.0) -> None:
        if self._running is not None and self._loop is not None and self._thread.is_alive():
            server = self._running.server
            self._loop.call_soon_threadsafe(setattr, server, "should_exit", True)
            self._thread.join(timeout)

    def __enter__(self) -> ThreadedDemoServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_in_thread(host: str = "127.0.0.1", port: int = 0, **options: Any) -> ThreadedDemoServer:
    """Start a demo upstream in a background thread; ``.stop()`` ends it."""
    return ThreadedDemoServer(host, port, **options).start()


def run(host: str = "127.0.0.1", port: int = 8000, **app_options: Any) -> None:
    """Serve until SIGINT/SIGTERM, on uvloop. Prints
    ``demo upstream listening on http://HOST:PORT`` once it accepts connections."""
    app = create_app(**app_options)
    sock = _bind(host, port)
    bound_port = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    print(f"demo upstream listening on http://{shown}:{bound_port}", flush=True)
    try:
        uvicorn.Server(_config(app, host, bound_port)).run(sockets=[sock])
    finally:
        sock.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m gateway.demo.upstream",
        description="A fake OpenAI/Anthropic-compatible model server (the `gateway demo` upstream).",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000, help="0 picks a free port (printed on start)")
    parser.add_argument("--name", default="demo", help="shown in every answer: [NAME:model]")
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS), help="comma-separated ids for GET /v1/models")
    parser.add_argument(
        "--stream-delay", type=float, default=0.0, metavar="SECONDS", help="pause between stream events"
    )
    parser.add_argument("--journal", metavar="PATH", help="append one JSON line per request received to PATH")
    args = parser.parse_args(argv)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    # A standalone process records nothing in memory (nobody could read it); the journal is on disk.
    with open(args.journal, "a", buffering=1) if args.journal else contextlib.nullcontext() as journal:
        run(args.host, args.port, name=args.name, models=models, stream_delay_s=args.stream_delay, max_recorded=0,
            journal=journal)
    return 0


if __name__ == "__main__":
    sys.exit(main())

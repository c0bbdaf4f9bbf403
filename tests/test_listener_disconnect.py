"""The listener tells the application at once when a client goes away before its answer is
complete (gateway/request/listener.py, on_client_gone): what cancels the upstream request."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

from uvicorn.server import ServerState

from gateway.config import LimitsConfig
from gateway.request.listener import on_client_gone, protocol_for
from gateway.server import _uvicorn_config


class _Refuser:
    def refuse(self, peer: str | None, status: int, error: str, message: str) -> tuple[list[tuple[bytes, bytes]], bytes]:
        return [], b"{}"


async def _serve(app: Any) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    protocol_class = protocol_for(_Refuser(), LimitsConfig(), 10)
    config = _uvicorn_config(app, "127.0.0.1:0", protocol_class)
    state = ServerState()
    ours, theirs = socket.socketpair()
    await asyncio.get_running_loop().connect_accepted_socket(
        lambda: protocol_class(config=config, server_state=state, app_state={}), ours)
    reader, writer = await asyncio.open_connection(sock=theirs)
    writer.write(b"GET / HTTP/1.1\r\nhost: test\r\n\r\n")
    return reader, writer


def test_a_client_going_away_mid_answer_is_told_at_once() -> None:
    async def run() -> list[str]:
        told: list[str] = []
        registered, ended = asyncio.Event(), asyncio.Event()

        async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
            assert on_client_gone(scope, lambda: told.append("gone"))
            await send({"type": "http.response.start", "status": 200, "headers": []})
            registered.set()
            await ended.wait()

        reader, writer = await _serve(app)
        await asyncio.wait_for(registered.wait(), 5)
        assert told == []
        writer.close()
        for _ in range(100):
            if told:
                break
            await asyncio.sleep(0.01)
        ended.set()
        return told

    assert asyncio.run(run()) == ["gone"]


def test_a_client_gone_before_the_application_asks_is_reported_gone() -> None:
    async def run() -> list[bool]:
        asked: list[bool] = []

        async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            asked.append(on_client_gone(scope, lambda: asked.append(False)))

        reader, writer = await _serve(app)
        writer.close()
        for _ in range(100):
            if asked:
                break
            await asyncio.sleep(0.01)
        return asked

    assert asyncio.run(run()) == [False]


def test_a_complete_answer_is_not_a_client_gone() -> None:
    async def run() -> list[str]:
        told: list[str] = []

        async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
            on_client_gone(scope, lambda: told.append("gone"))
            await send({"type": "http.response.start", "status": 204, "headers": []})
            await send({"type": "http.response.body", "body": b""})

        reader, writer = await _serve(app)
        assert (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)).startswith(b"HTTP/1.1 204")
        writer.close()
        await asyncio.sleep(0.1)
        return told

    assert asyncio.run(run()) == []

"""The Python floor: bare pass-through proxies that do nothing but forward, for
bench/proxy.py to compare the gateway with.

    python bench/floor.py --kind raw --upstream http://127.0.0.1:8000 --port 8100
    python bench/floor.py --kind starlette --upstream http://127.0.0.1:8000 --port 8100

Both run like the gateway: uvicorn with uvloop and httptools, no access log, one
pooled aiohttp session to the upstream (keep-alive, no decompression), the
request body read whole (the gateway must read it to find the model) and the
response streamed back chunk by chunk as it arrives. `raw` is a bare ASGI
callable; `starlette` is the same through Starlette routing, Request and
StreamingResponse. Neither authenticates, decides, counts or records anything.
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import uvicorn

# Hop-by-hop (RFC 9110 §7.6.1) or recomputed by the client/server on each side.
_REQUEST_DROP = frozenset({b"host", b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer",
                           b"transfer-encoding", b"upgrade", b"content-length"})
_RESPONSE_DROP = frozenset({b"connection", b"keep-alive", b"transfer-encoding", b"trailer", b"upgrade"})


class Upstream:
    """One aiohttp session, made on first use (it needs the running loop)."""

    def __init__(self, base: str) -> None:
        self.base = base.rstrip("/")
        self.session: aiohttp.ClientSession | None = None

    def get(self) -> aiohttp.ClientSession:
        if self.session is None:
            connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=60)
            self.session = aiohttp.ClientSession(self.base, connector=connector, auto_decompress=False,
                                                 skip_auto_headers=("User-Agent", "Accept-Encoding", "Content-Type"))
        return self.session


def _request_headers(raw: list[tuple[bytes, bytes]]) -> list[tuple[str, str]]:
    return [(k.decode("latin-1"), v.decode("latin-1")) for k, v in raw if k.lower() not in _REQUEST_DROP]


def _response_headers(raw: tuple[tuple[bytes, bytes], ...]) -> list[tuple[bytes, bytes]]:
    return [(k.lower(), v) for k, v in raw if k.lower() not in _RESPONSE_DROP]


def raw_app(base: str) -> Any:
    upstream = Upstream(base)

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        chunks = []
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        target = scope["raw_path"].decode("latin-1") + (f"?{scope['query_string'].decode('latin-1')}"
                                                        if scope["query_string"] else "")
        try:
            async with upstream.get().request(scope["method"], target, headers=_request_headers(scope["headers"]),
                                              data=body or None, allow_redirects=False) as response:
                await send({"type": "http.response.start", "status": response.status,
                            "headers": _response_headers(response.raw_headers)})
                async for chunk in response.content.iter_any():
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        except (aiohttp.ClientError, TimeoutError):
            await send({"type": "http.response.start", "status": 502, "headers": [(b"content-length", b"0")]})
            await send({"type": "http.response.body", "body": b""})

    return app


def starlette_app(base: str) -> Any:
    from starlette.applications import Starlette
    from starlette.background import BackgroundTask
    from starlette.requests import Request
    from starlette.responses import Response, StreamingResponse
    from starlette.routing import Route

    upstream = Upstream(base)

    async def proxy(request: Request) -> Response:
        body = await request.body()
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        try:
            response = await upstream.get().request(request.method, target, data=body or None, allow_redirects=False,
                                                    headers=_request_headers(request.headers.raw))
        except (aiohttp.ClientError, TimeoutError):
            return Response(status_code=502)

        async def chunks() -> AsyncIterator[bytes]:
            async for chunk in response.content.iter_any():
                yield chunk

        streamed = StreamingResponse(chunks(), status_code=response.status, background=BackgroundTask(response.release))
        streamed.raw_headers = _response_headers(response.raw_headers)
        return streamed

    methods = ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD"]
    return Starlette(routes=[Route("/{path:path}", proxy, methods=methods)])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kind", choices=("raw", "starlette"), required=True)
    parser.add_argument("--upstream", required=True, help="base URL, e.g. http://127.0.0.1:8000")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    app = raw_app(args.upstream) if args.kind == "raw" else starlette_app(args.upstream)
    print(f"floor ({args.kind}) listening on http://{args.host}:{args.port}", flush=True)
    # As the gateway runs (gateway/server.py): the upstream's Date header is passed on, not a second one.
    uvicorn.run(app, host=args.host, port=args.port, loop="uvloop", http="httptools", lifespan="off",
                access_log=False, log_level="warning", server_header=False, date_header=False)


if __name__ == "__main__":
    main()

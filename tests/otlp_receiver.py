"""A small OTLP/HTTP receiver for tests: a real loopback server that decodes what the
gateway exports (ExportLogsServiceRequest, ExportTraceServiceRequest protobufs, gzip or
not) into plain dicts, the way a collector would see them."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest, ExportLogsServiceResponse
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from e2e import LoopThread


def value(any_value: AnyValue) -> Any:
    kind = any_value.WhichOneof("value")
    if kind == "array_value":
        return [value(item) for item in any_value.array_value.values]
    if kind == "kvlist_value":
        return attributes(any_value.kvlist_value.values)
    return getattr(any_value, kind) if kind else None


def attributes(pairs: Any) -> dict[str, Any]:
    return {pair.key: value(pair.value) for pair in pairs if isinstance(pair, KeyValue)}


class Receiver:
    """POST /v1/logs and /v1/traces on 127.0.0.1:`port` (0: any free port)."""

    def __init__(self, port: int = 0) -> None:
        self.thread = LoopThread()
        self.logs: list[dict[str, Any]] = []
        self.spans: list[dict[str, Any]] = []
        self.requests = 0
        self.encodings: set[str] = set()
        self._lock = threading.Lock()
        app = web.Application()
        app.router.add_post("/v1/logs", self.receive_logs)
        app.router.add_post("/v1/traces", self.receive_traces)
        self.runner = web.AppRunner(app, access_log=None)
        self.port = self.thread.run(self._start(port))
        self.endpoint = f"http://127.0.0.1:{self.port}"

    async def _start(self, port: int) -> int:
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", port)
        await site.start()
        return site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def _body(self, request: web.Request) -> bytes:
        self.encodings.add(request.headers.get("Content-Encoding", "identity"))
        return await request.read()  # aiohttp undoes a gzip Content-Encoding

    async def receive_logs(self, request: web.Request) -> web.Response:
        decoded = ExportLogsServiceRequest.FromString(await self._body(request))
        found = [{"resource": attributes(resource_logs.resource.attributes), "scope": scope_logs.scope.name,
                  "time_unix_nano": record.time_unix_nano, "severity_text": record.severity_text,
                  "severity_number": record.severity_number, "event_name": record.event_name,
                  "body": value(record.body), "attributes": attributes(record.attributes)}
                 for resource_logs in decoded.resource_logs for scope_logs in resource_logs.scope_logs
                 for record in scope_logs.log_records]
        with self._lock:
            self.requests += 1
            self.logs.extend(found)
        return web.Response(body=ExportLogsServiceResponse().SerializeToString(), content_type="application/x-protobuf")

    async def receive_traces(self, request: web.Request) -> web.Response:
        decoded = ExportTraceServiceRequest.FromString(await self._body(request))
        found = [{"resource": attributes(resource_spans.resource.attributes), "name": span.name, "kind": span.kind,
                  "trace_id": span.trace_id.hex(), "span_id": span.span_id.hex(),
                  "parent_span_id": span.parent_span_id.hex(), "attributes": attributes(span.attributes)}
                 for resource_spans in decoded.resource_spans for scope_spans in resource_spans.scope_spans
                 for span in scope_spans.spans]
        with self._lock:
            self.requests += 1
            self.spans.extend(found)
        return web.Response(body=ExportTraceServiceResponse().SerializeToString(), content_type="application/x-protobuf")

    def wait_for(self, found: Callable[[], Any], timeout: float = 10.0) -> Any:
        """`found()` once it is truthy; fails after `timeout`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                result = found()
            if result:
                return result
            time.sleep(0.02)
        raise AssertionError(f"not received within {timeout}s: {len(self.logs)} log records, {len(self.spans)} spans")

    def close(self) -> None:
        self.thread.run(self.runner.cleanup())
        self.thread.close()

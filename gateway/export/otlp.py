"""OTLP/HTTP export with the OpenTelemetry SDK: the audit records as a log stream
(`RecordExport`) and the tracer provider of the request path's spans (`tracer_provider`).

Never on the request path's clock. The SDK's `Logger.emit` costs about 20 µs a record
(a LogRecord, its bounded attributes, a copy for the batch processor): too much for
the event loop. So the audit writer only hands its sealed records over, a deque append
per batch (`offer`); one thread of ours turns them into log records and emits them into
the SDK's BatchLogRecordProcessor, whose own thread batches and sends them. Threads
share the interpreter with the event loop: ours gives it the GIL back every few
records, so that a burst to convert never holds a request up for a switch interval.

Bounded, and every loss counted in gateway_export_dropped_total{reason}:
- `queue_full`: the hand-over queue holds `max_queue_size` records; beyond that a new
  record is dropped at once (a collector that is down or slow never slows requests);
- `export_failed`: a batch the collector refused, or did not take within `timeout_s`
  (retries included);
- `shutdown`: records still waiting when the gateway stopped and could not be sent;
- `unreadable`: a line that is not a JSON object (never written by this gateway).
The SDK's own queue never overflows (it would drop silently): our thread emits into it
only while it has room, counted by what its exporter has taken.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import orjson
from opentelemetry._logs import LogRecord, SeverityNumber
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

try:  # the names since 1.39; the older ones, kept as deprecated aliases, before
    from opentelemetry.sdk._logs.export import LogRecordExporter as LogExporter
    from opentelemetry.sdk._logs.export import LogRecordExportResult as LogExportResult
except ImportError:  # pragma: no cover
    from opentelemetry.sdk._logs.export import LogExporter, LogExportResult  # type: ignore[no-redef]

from gateway.export.records import EVENT_NAME, MAX_ATTRIBUTE_CHARS, log_fields

if TYPE_CHECKING:
    from gateway.audit.chain import Sealed
    from gateway.config import OtlpConfig
    from gateway.metrics import Metrics

log = logging.getLogger("gateway.export")

SCOPE = "frontier-gateway"
SEVERITY = {"INFO": SeverityNumber.INFO, "WARN": SeverityNumber.WARN}
YIELD_EVERY = 8  # records converted between two chances for the event loop to run (~0.25 ms)
CLOSE_S = 2.0  # what stopping the gateway waits, at most, for the last records to go out


def resource(config: OtlpConfig, replica: str, version: str) -> Resource:
    return Resource.create({"service.name": config.service_name, "service.version": version,
                            "service.instance.id": replica, "replica": replica})


def _url(config: OtlpConfig, signal: str) -> str:
    """Where a signal goes: `/v1/logs` or `/v1/traces` under the endpoint."""
    if config.endpoint is None:
        raise ValueError("export.otlp.endpoint is not set")
    return f"{config.endpoint.rstrip('/')}/v1/{signal}"


def _compression(config: OtlpConfig) -> Compression:
    return Compression.Gzip if config.compression == "gzip" else Compression.NoCompression


class _Counting(LogExporter):
    """The OTLP exporter, telling RecordExport how many records left the SDK's queue
    and how many of them were lost."""

    def __init__(self, inner: LogExporter, owner: RecordExport) -> None:
        self.inner = inner
        self.owner = owner

    def export(self, batch: Sequence[Any]) -> LogExportResult:
        self.owner.taken(len(batch))
        try:
            result = self.inner.export(batch)
        except Exception:  # the SDK would log and carry on; the records are lost either way
            result = LogExportResult.FAILURE
        if result is not LogExportResult.SUCCESS:
            self.owner.lost(len(batch), "export_failed")
        return result

    def shutdown(self) -> None:
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return True


class RecordExport:
    """The audit records of one process as an OTLP log stream (see the module doc).
    `offer` runs on the event loop; everything else on threads."""

    def __init__(self, config: OtlpConfig, metrics: Metrics, replica: str, version: str) -> None:
        self.config = config
        self.url = _url(config, "logs")
        self.resource = resource(config, replica, version)
        self.capacity = config.max_queue_size
        self.dropped = metrics.export_dropped
        self.pending: deque[Sealed] = deque()
        # The SDK's queue: room for a few batches, refilled from `pending` as it empties.
        self.sdk_capacity = 4 * config.max_export_batch_size
        self._emitted = self._taken = 0  # into the SDK's queue / out of it (its exporter's thread)
        self._wake = threading.Event()
        self._room = threading.Event()
        self._closing = False
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the SDK's pipeline and our thread (construction opens nothing)."""
        config = self.config
        self.exporter = OTLPLogExporter(endpoint=self.url, headers=dict(config.headers),
                                        timeout=config.timeout_s, compression=_compression(config))
        self.provider = LoggerProvider(resource=self.resource, shutdown_on_exit=False)
        self.processor = BatchLogRecordProcessor(
            _Counting(self.exporter, self), schedule_delay_millis=config.schedule_delay_s * 1000,
            max_export_batch_size=config.max_export_batch_size, max_queue_size=self.sdk_capacity)
        self.provider.add_log_record_processor(self.processor)
        self.logger = self.provider.get_logger(SCOPE)
        self._thread = threading.Thread(target=self._feed, name="otlp-records", daemon=True)
        self._thread.start()

    # The event loop

    def offer(self, records: Sequence[Sealed]) -> None:
        """Hand written records over; drop (and count) what the queue has no room for."""
        room = self.capacity - len(self.pending)
        if room < len(records):
            self.lost(len(records) - max(room, 0), "queue_full")
            records = records[:max(room, 0)]
        if records:
            idle = not self.pending
            self.pending.extend(records)
            if idle:
                self._wake.set()

    # The SDK's exporter thread

    def taken(self, count: int) -> None:
        self._taken += count
        self._room.set()

    def lost(self, count: int, reason: str) -> None:
        self.dropped.labels(reason).inc(count)

    # Our thread

    def _feed(self) -> None:
        while not self._closing or self.pending:
            self._wake.wait()
            self._wake.clear()
            while self.pending:
                if not self._has_room():
                    if self._closing:
                        return
                    continue
                try:
                    sealed = self.pending.popleft()
                except IndexError:  # close() gave up on them meanwhile
                    break
                self._emit(sealed)
                if self._emitted % YIELD_EVERY == 0:
                    time.sleep(0)  # let the event loop have the GIL, rather than wait up to 5 ms for it

    def _has_room(self) -> bool:
        """Whether the SDK's queue can take a record, waiting a little for it to."""
        if self._emitted - self._taken < self.sdk_capacity:
            return True
        self._room.clear()
        return self._emitted - self._taken < self.sdk_capacity or self._room.wait(0.5)

    def _emit(self, sealed: Sealed) -> None:
        try:
            fields = log_fields(orjson.loads(sealed.line))
        except (ValueError, AttributeError) as error:  # a line this module cannot read must not stop the others
            log.warning("audit record %s not exported: %r", sealed.seq, error)
            self.lost(1, "unreadable")
            return
        self._emitted += 1
        self.logger.emit(LogRecord(timestamp=fields.time_ns, severity_text=fields.severity,
                                   severity_number=SEVERITY[fields.severity], body=fields.body,
                                   attributes=fields.attributes, event_name=EVENT_NAME))

    def close(self, timeout: float = CLOSE_S) -> None:
        """Send what is queued, waiting at most `timeout` (blocking: call it off the event
        loop); count the rest as lost. The SDK's own shutdown waits for every retry of
        every batch, so it gets a thread of its own and is cut short."""
        if self._thread is None:
            return
        self._closing = True
        self._wake.set()
        self._thread.join(timeout / 2)
        unsent = len(self.pending)
        self.pending.clear()
        stopping = threading.Thread(target=self.processor.shutdown, name="otlp-records-close", daemon=True)
        stopping.start()
        stopping.join(timeout / 2)
        if stopping.is_alive():
            self.exporter.shutdown()  # stops its retries
        left = unsent + self._emitted - self._taken
        if left:
            self.lost(left, "shutdown")
            log.warning("OTLP export: %d audit records not sent before shutdown", left)


def tracer_provider(config: OtlpConfig, replica: str, version: str) -> TracerProvider:
    """Spans of the request path, batched and sent like the records (never waited for)."""
    provider = TracerProvider(resource=resource(config, replica, version), shutdown_on_exit=False,
                              span_limits=SpanLimits(max_attribute_length=MAX_ATTRIBUTE_CHARS))
    exporter = OTLPSpanExporter(endpoint=_url(config, "traces"), headers=dict(config.headers),
                                timeout=config.timeout_s, compression=_compression(config))
    provider.add_span_processor(BatchSpanProcessor(
        exporter, max_queue_size=config.max_queue_size, max_export_batch_size=config.max_export_batch_size,
        schedule_delay_millis=config.schedule_delay_s * 1000))
    return provider


def close_tracing(provider: TracerProvider, timeout: float = CLOSE_S) -> None:
    """Send the last spans, waiting at most `timeout` (the SDK would wait for every retry)."""
    stopping = threading.Thread(target=provider.shutdown, name="otlp-spans-close", daemon=True)
    stopping.start()
    stopping.join(timeout)

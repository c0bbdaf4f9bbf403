"""Telemetry for other systems: the audit records as an OpenTelemetry log stream, and
the tracer of the request path, both sent over OTLP/HTTP (`export.otlp`).

- `records`: an audit record as the parts of a log record (pure).
- `otlp`: the OpenTelemetry SDK pipelines: `RecordExport`, `tracer_provider`.

The SDK is imported only when `export.otlp.endpoint` is set: a gateway that exports
nothing loads none of it, and its request path has no tracing code (gateway/request/traced.py).
"""

from __future__ import annotations

from importlib import metadata
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

    from gateway.config import OtlpConfig
    from gateway.export.otlp import RecordExport
    from gateway.metrics import Metrics


def record_export(config: OtlpConfig, metrics: Metrics, replica: str) -> RecordExport | None:
    """The audit records' OTLP log stream, or None when nothing is exported."""
    if config.endpoint is None:
        return None
    from gateway.export.otlp import RecordExport

    return RecordExport(config, metrics, replica, _version())


def tracing(config: OtlpConfig, replica: str) -> TracerProvider | None:
    """The request path's tracer provider, or None when tracing is off (the default)."""
    if not config.traces:
        return None
    from gateway.export.otlp import tracer_provider

    return tracer_provider(config, replica, _version())


def _version() -> str:
    try:
        return metadata.version("frontier-gateway")
    except metadata.PackageNotFoundError:  # run from a checkout
        return "unknown"

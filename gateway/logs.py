"""How the gateway's log is written (`logging.format`): one line per event on stderr.

`json`: each event is one JSON object with its time, level, logger and message,
then its fields: whatever the call passed in `extra` (decision_id, actor, action,
target, result, policy_version, ...), and a traceback as the one string
`exception`, so a multi-line error is still one line a collector can take as one
event. Non-ASCII is escaped: a line never holds a character some reader would
split it at (U+2028, U+0085).

`text`: `time LEVEL logger: message key=value ...`, for people; a traceback
follows on lines of its own.

uvicorn's loggers are made to pass their events to the same handler, in the same
format, instead of writing lines of their own.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any, Protocol

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
UVICORN_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access", "uvicorn.asgi")
# The attributes every record has; any other was passed in `extra` and is a field of the event.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class LoggingSettings(Protocol):
    """The `logging` config section."""

    @property
    def format(self) -> str: ...

    @property
    def level(self) -> str: ...


def fields(record: logging.LogRecord) -> dict[str, Any]:
    """What the call passed in `extra`."""
    return {key: value for key, value in vars(record).items() if key not in _STANDARD}


class JsonFormatter(logging.Formatter):
    def __init__(self, static: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.static = static or {}

    def format(self, record: logging.LogRecord) -> str:
        event: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            **self.static,
            **fields(record),
        }
        if record.exc_info:
            event["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            event["stack"] = self.formatStack(record.stack_info)
        return json.dumps(event, default=str, separators=(",", ":"))


class TextFormatter(logging.Formatter):
    def __init__(self, static: dict[str, Any] | None = None) -> None:
        super().__init__(TEXT_FORMAT)
        self.suffix = "".join(f" {key}={value}" for key, value in (static or {}).items())

    def formatMessage(self, record: logging.LogRecord) -> str:
        extra = "".join(f" {key}={value}" for key, value in fields(record).items())
        return super().formatMessage(record) + self.suffix + extra


def configure(settings: LoggingSettings, *, worker: int | None = None) -> None:
    """Send every event, the gateway's and uvicorn's, to stderr in the configured format;
    a worker of `serve --workers N` says which one it is (`worker` field)."""
    static = {"worker": worker} if worker is not None else None
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(static) if settings.format == "json" else TextFormatter(static))
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(settings.level)
    for name in UVICORN_LOGGERS:
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True

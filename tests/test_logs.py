"""The gateway's log (gateway/logs.py): with `logging.format: json` every line a real
`gateway serve` writes to stderr is one JSON event, uvicorn's and tracebacks included."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from conftest import GEOIP, GEOIP_MAX_AGE_DAYS, REFERENCE_POLICY
from e2e import US_IP
from test_serve import free_port, upstream, wait_ready  # noqa: F401 (upstream: a fixture)
from gateway.identity import ApiKeyStore
from gateway.logs import JsonFormatter, TextFormatter


def write_config(directory: Path, public: int, admin: int, upstream_url: str = "http://127.0.0.1:1") -> Path:
    config = directory / "gateway.yaml"
    config.write_text(f"""
listen: 127.0.0.1:{public}
admin_listen: 127.0.0.1:{admin}
policy_dir: {REFERENCE_POLICY}
upstreams: {{default: {{url: "{upstream_url}"}}}}
geoip: {{country_db: {GEOIP / "GeoIP2-City-Test.mmdb"}, max_age_days: {GEOIP_MAX_AGE_DAYS}}}
""")
    return config


def serve(config: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "gateway", "serve", "--config", str(config)],
                            env=os.environ | {"GATEWAY_LOGGING__FORMAT": "json"},
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL)


def events(stderr: bytes) -> list[dict[str, Any]]:
    """Every line, parsed: fails on the first that is not one JSON object."""
    parsed = [json.loads(line) for line in stderr.decode().splitlines()]
    assert all(isinstance(event, dict) and {"time", "level", "logger", "message"} <= event.keys()
               for event in parsed), parsed
    return parsed


def test_a_serving_gateway_logs_one_json_object_per_line(tmp_path: Path, upstream: str) -> None:
    public, admin = free_port(), free_port()
    key = ApiKeyStore(tmp_path / ".gateway-state").create("org-public")[1]
    process = serve(write_config(tmp_path, public, admin, upstream))
    try:
        wait_ready(f"http://127.0.0.1:{admin}", process)
        body = json.dumps({"model": "small-2", "messages": [{"role": "user", "content": "hi"}]}).encode()
        call = urllib.request.Request(f"http://127.0.0.1:{public}/v1/chat/completions", body, {
            "Authorization": f"Bearer {key}", "Content-Type": "application/json", "X-Forwarded-For": US_IP})
        with urllib.request.urlopen(call, timeout=5) as reply:
            assert reply.status == 200
    finally:
        process.terminate()
        _, stderr = process.communicate(timeout=10)
    logged = events(stderr)
    [listening] = [e for e in logged if e["message"].startswith("gateway listening")]
    assert listening["logger"] == "gateway" and listening["level"] == "WARNING"
    assert listening["policy_version"]  # a field of its own, not only in the message


# uvicorn's loggers after gateway.logs.configure(json), in a process of their own (configure
# replaces the root logger's handlers).
_UVICORN_ERROR = """
import logging, types
from gateway.logs import configure
configure(types.SimpleNamespace(format="json", level="INFO"))
try:
    raise OSError("[Errno 98] address already in use")
except OSError:
    logging.getLogger("uvicorn.error").exception("Traceback while serving")
logging.getLogger("uvicorn.error").error("[Errno 98] error while attempting to bind: address already in use")
"""


def test_a_traceback_and_uvicorns_errors_are_one_json_event_each() -> None:
    process = subprocess.run([sys.executable, "-c", _UVICORN_ERROR], capture_output=True, timeout=30,
                             env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    logged = events(process.stderr)
    assert [e["logger"] for e in logged] == ["uvicorn.error", "uvicorn.error"]
    assert logged[0]["exception"].startswith("Traceback") and "\n" in logged[0]["exception"]
    assert "address already in use" in logged[1]["message"]


def test_a_port_in_use_is_one_line_before_logging_starts(tmp_path: Path) -> None:
    """Refused before anything starts (and before logging is configured): one plain line."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        process = serve(write_config(tmp_path, free_port(), taken.getsockname()[1]))
        _, stderr = process.communicate(timeout=30)
    assert process.returncode == 2
    assert stderr.strip().count(b"\n") == 0 and b"already in use" in stderr


def record(message: str, *args: Any, exc_info: Any = None, **extra: Any) -> logging.LogRecord:
    return logging.getLogger("gateway.admin").makeRecord("gateway.admin", logging.INFO, __file__, 1, message, args,
                                                         exc_info, extra=extra)


def test_fields_passed_in_extra_are_fields_of_the_event() -> None:
    line = JsonFormatter({"worker": 1}).format(record("admin %s", "policy.replace", actor="alice", result="applied"))
    event = json.loads(line)
    assert (event["message"], event["actor"], event["result"], event["worker"]) == (
        "admin policy.replace", "alice", "applied", 1)
    assert event["time"].endswith("Z")


def test_a_json_event_stays_on_one_line_whatever_its_message_holds() -> None:
    try:
        raise ValueError("broken\nacross lines")
    except ValueError:
        line = JsonFormatter().format(record("line one\nline two \u2028 \x85", exc_info=sys.exc_info()))
    assert len(line.splitlines()) == 1
    event = json.loads(line)
    assert event["message"] == "line one\nline two \u2028 \x85"
    assert "ValueError: broken\nacross lines" in event["exception"]


def test_text_events_end_with_their_fields() -> None:
    line = TextFormatter().format(record("admin %s", "policy.replace", actor="alice"))
    assert line.endswith("INFO gateway.admin: admin policy.replace actor=alice")

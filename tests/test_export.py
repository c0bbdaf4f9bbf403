"""SIEM export (docs/operators.md "SIEM export"): the audit records as an OTLP log
stream and the request path's spans, received by a real OTLP/HTTP server that
decodes the protobufs; a collector that is stalled or down never holds requests up,
and what is lost is counted."""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from e2e import CN_IP, US_IP, Stack
from gateway.config import ConfigError, load_config
from gateway.export.records import log_fields
from otlp_receiver import Receiver

CHAT = json.dumps({"model": "frontier-5.6", "messages": [{"role": "user", "content": "hello"}]}).encode()


def post(stack: Stack, key: str | None, ip: str = US_IP, body: bytes = CHAT) -> tuple[int, str]:
    """POST a chat completion; the status and the decision id the gateway answered with."""
    host, port = stack.url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    headers = {"Content-Type": "application/json", "X-Forwarded-For": ip}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    connection.request("POST", "/v1/chat/completions", body, headers)
    response = connection.getresponse()
    response.read()
    connection.close()
    return response.status, response.getheader("x-gateway-decision-id") or ""


def export_config(endpoint: str, **settings: Any) -> str:
    otlp = {"endpoint": endpoint, "schedule_delay_s": 0.05} | settings
    return "export:\n  otlp: " + json.dumps(otlp)


def dropped(stack: Stack, reason: str) -> float:
    return stack.service.metrics.registry.get_sample_value("gateway_export_dropped_total", {"reason": reason}) or 0.0


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    receiver = Receiver()
    yield receiver
    receiver.close()


class TestConfig:
    def test_nothing_is_exported_by_default(self) -> None:
        otlp = load_config(None, {}).export.otlp
        assert otlp.endpoint is None and otlp.traces is False

    def test_traces_need_an_endpoint(self) -> None:
        with pytest.raises(ConfigError, match="export.otlp: traces needs an endpoint"):
            load_config(None, {"GATEWAY_EXPORT__OTLP__TRACES": "true"})

    def test_endpoint_must_be_an_http_url(self) -> None:
        with pytest.raises(ConfigError, match="export.otlp.endpoint"):
            load_config(None, {"GATEWAY_EXPORT__OTLP__ENDPOINT": "collector:4318"})


class TestRecordFields:
    RECORD = {"time": "2026-12-01T12:00:00.250000Z", "decision_id": "d1", "method": "POST", "path": "/v1/chat/completions",
              "org": "org-kyoto", "observed_country": "CN", "requested_model": "frontier-5.6", "decision": "deny",
              "status": 451, "reasons": ["jurisdiction_of_concern"], "error": None, "covered": True,
              "revoked": {"status": 451, "reasons": ["x"]}, "seq": 7, "hash": "ab"}

    def test_a_denial_is_a_warning_whose_body_says_why(self) -> None:
        fields = log_fields(self.RECORD)
        assert fields.severity == "WARN"
        assert fields.body == ("deny 451 jurisdiction_of_concern POST /v1/chat/completions model=frontier-5.6 "
                               "org=org-kyoto country=CN")
        assert fields.time_ns == 1_796_126_400_250_000_000

    def test_every_field_but_null_is_an_attribute(self) -> None:
        attributes = log_fields(self.RECORD).attributes
        assert "gateway.error" not in attributes
        assert attributes["gateway.reasons"] == ["jurisdiction_of_concern"]
        assert attributes["gateway.covered"] is True and attributes["gateway.seq"] == 7
        assert attributes["gateway.revoked"] == '{"reasons":["x"],"status":451}'

    def test_a_record_that_is_not_a_decision_is_passed_on_too(self) -> None:
        fields = log_fields({"type": "checkpoint", "seq": 1000, "replica": "gw-0", "hash": "ab"})
        assert fields.severity == "INFO" and fields.body == "checkpoint seq=1000"
        assert fields.attributes["gateway.type"] == "checkpoint"

    def test_attributes_are_bounded(self) -> None:
        record = {f"field{i}": "x" * 5000 for i in range(100)}
        attributes = log_fields(record).attributes
        assert len(attributes) == 65 and attributes["gateway.truncated_attributes"] is True
        assert max(len(value) for value in attributes.values() if isinstance(value, str)) <= 1025


class TestLogStream:
    @pytest.fixture
    def stack(self, tmp_path: Path, receiver: Receiver) -> Iterator[Stack]:
        stack = Stack(tmp_path, extra_config=export_config(receiver.endpoint))
        yield stack
        stack.close()

    def test_allowed_and_denied_requests_arrive_with_their_decision_ids(self, stack: Stack, receiver: Receiver) -> None:
        allowed = post(stack, stack.api_key("org-acme"))
        denied = post(stack, stack.api_key("org-kyoto"), ip=CN_IP)
        unauthenticated = post(stack, "not-a-key")
        assert [allowed[0], denied[0], unauthenticated[0]] == [200, 451, 401]
        ids = {allowed[1], denied[1], unauthenticated[1]}
        logs = receiver.wait_for(lambda: ids <= {r["attributes"].get("gateway.decision_id") for r in receiver.logs}
                                 and list(receiver.logs))
        by_id = {record["attributes"]["gateway.decision_id"]: record for record in logs}
        allow, deny, refused = by_id[allowed[1]], by_id[denied[1]], by_id[unauthenticated[1]]
        assert allow["attributes"]["gateway.decision"] == "allow" and allow["severity_text"] == "INFO"
        assert allow["body"].startswith("allow 200 ") and "org=org-acme" in allow["body"]
        assert deny["attributes"]["gateway.decision"] == "deny" and deny["severity_text"] == "WARN"
        assert deny["body"].startswith("deny 451 jurisdiction_of_concern")
        assert deny["attributes"]["gateway.observed_country"] == "CN"
        assert refused["attributes"]["gateway.status"] == 401
        assert allow["event_name"] == "gateway.decision"
        assert receiver.encodings == {"gzip"}
        assert allow["resource"]["service.name"] == "frontier-gateway"
        assert allow["resource"]["replica"] == allow["attributes"]["gateway.replica"]
        # Each event leads back to its line in the audit file: the same seq and hash.
        written = {record["decision_id"]: record for record in stack.audit_records()}
        assert allow["attributes"]["gateway.hash"] == written[allowed[1]]["hash"]
        assert deny["attributes"]["gateway.seq"] == written[denied[1]]["seq"]

    def test_tracing_is_off_by_default(self, stack: Stack, receiver: Receiver) -> None:
        from gateway.request.app import Gateway

        assert type(stack.service.gateway) is Gateway
        post(stack, stack.api_key("org-acme"))
        receiver.wait_for(lambda: receiver.logs)
        assert receiver.spans == []


def unanswering_port() -> socket.socket:
    """A listening socket that never accepts: a collector that takes connections and never answers."""
    stalled = socket.socket()
    stalled.bind(("127.0.0.1", 0))
    stalled.listen(64)
    return stalled


class TestCollectorTrouble:
    def test_a_stalled_collector_never_holds_requests_up_and_drops_are_counted(self, tmp_path: Path) -> None:
        stalled = unanswering_port()
        endpoint = f"http://127.0.0.1:{stalled.getsockname()[1]}"
        stack = Stack(tmp_path, extra_config=export_config(endpoint, max_queue_size=16, max_export_batch_size=4,
                                                           timeout_s=10))
        try:
            answers, latencies = [], []
            for _ in range(60):
                started = time.monotonic()
                answers.append(post(stack, stack.api_key("org-acme"))[0])
                latencies.append(time.monotonic() - started)
            assert answers == [200] * 60
            # 16 waiting in the queue, 16 in the SDK's, 4 with the stalled exporter: the rest are lost.
            assert dropped(stack, "queue_full") >= 60 - 16 - 16 - 4
            assert dropped(stack, "export_failed") == 0  # the stalled export has not timed out yet
            assert max(latencies) < 5  # no request waited for the export (10 s before it gives up)
        finally:
            stack.close()
            stalled.close()
        assert dropped(stack, "shutdown") > 0  # what was still waiting when it stopped

    def test_a_collector_that_is_down_counts_failed_exports(self, tmp_path: Path) -> None:
        closed = socket.socket()
        closed.bind(("127.0.0.1", 0))
        endpoint = f"http://127.0.0.1:{closed.getsockname()[1]}"
        closed.close()  # nothing listens there: connections are refused
        stack = Stack(tmp_path, extra_config=export_config(endpoint, timeout_s=1))
        try:
            assert [post(stack, stack.api_key("org-acme"))[0] for _ in range(5)] == [200] * 5
            deadline = time.monotonic() + 10
            while dropped(stack, "export_failed") < 5 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert dropped(stack, "export_failed") == 5
        finally:
            stack.close()


class TestTracing:
    @pytest.fixture
    def stack(self, tmp_path: Path, receiver: Receiver) -> Iterator[Stack]:
        stack = Stack(tmp_path, extra_config=export_config(receiver.endpoint, traces=True))
        yield stack
        stack.close()

    def spans_of(self, receiver: Receiver, decision_id: str, count: int) -> dict[str, dict[str, Any]]:
        spans = receiver.wait_for(lambda: len(found := [span for span in receiver.spans
                                                        if span["attributes"].get("gateway.decision_id") == decision_id])
                                  >= count and found)
        return {span["name"]: span for span in spans}

    def test_a_forwarded_request_has_its_steps_as_spans_of_one_trace(self, stack: Stack, receiver: Receiver) -> None:
        status, decision_id = post(stack, stack.api_key("org-acme"))
        assert status == 200
        spans = self.spans_of(receiver, decision_id, 5)
        assert set(spans) == {"request", "identity", "geo", "decide", "upstream"}
        root = spans["request"]
        assert root["kind"] == 2  # SPAN_KIND_SERVER
        assert root["attributes"]["http.response.status_code"] == 200
        assert root["attributes"]["gateway.decision"] == "allow"
        assert root["resource"]["service.name"] == "frontier-gateway"
        for name in ("identity", "geo", "decide", "upstream"):
            assert spans[name]["trace_id"] == root["trace_id"]
            assert spans[name]["parent_span_id"] == root["span_id"]
        assert spans["geo"]["attributes"]["gateway.observed_country"] == "US"
        assert spans["decide"]["attributes"]["gateway.allowed"] is True
        assert spans["upstream"]["attributes"]["http.response.status_code"] == 200

    def test_a_denied_org_is_decided_in_a_span_before_its_body_is_read(self, stack: Stack, receiver: Receiver) -> None:
        body = json.dumps({"model": "small-2", "messages": []}).encode()
        status, decision_id = post(stack, stack.api_key("org-listed"), body=body)
        assert status == 403
        spans = self.spans_of(receiver, decision_id, 4)
        assert set(spans) == {"request", "identity", "geo", "decide"}
        assert spans["decide"]["attributes"]["gateway.allowed"] is False
        assert spans["request"]["attributes"]["gateway.decision"] == "deny"


def test_without_export_no_opentelemetry_code_is_loaded(tmp_path: Path) -> None:
    """Zero cost when off: a gateway that exports nothing runs the plain request path
    and never loads the tracing or export code, nor the SDK's."""
    script = f"""
import sys
import urllib.request
from pathlib import Path
from e2e import US_IP, Stack
from gateway.request.app import Gateway
stack = Stack(Path({str(tmp_path)!r}))
try:
    request = urllib.request.Request(stack.url + "/v1/chat/completions", data={CHAT!r}, headers={{
        "Authorization": "Bearer " + stack.api_key("org-acme"), "Content-Type": "application/json",
        "X-Forwarded-For": US_IP}})
    assert urllib.request.urlopen(request, timeout=10).status == 200
    assert type(stack.service.gateway) is Gateway
    # (redis-py imports the OpenTelemetry API when it is installed: not the tracing SDK.)
    ours = ("gateway.request.traced", "gateway.export.otlp", "opentelemetry.sdk.trace", "opentelemetry.sdk._logs",
            "opentelemetry.exporter")
    loaded = sorted(name for name in sys.modules if name.startswith(ours))
    assert not loaded, loaded
finally:
    stack.close()
"""
    tests = Path(__file__).parent
    environment = os.environ | {"PYTHONPATH": os.pathsep.join([str(tests), str(tests.parent)])}
    result = subprocess.run([sys.executable, "-c", script], cwd=tests, env=environment, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr

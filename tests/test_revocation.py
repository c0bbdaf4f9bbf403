"""In-flight revocation (issue 8, gateway/request/revocation.py): a request allowed when it
started is ended once the policy would deny it — a live change through the admin
API, a suspended credential, a scheduled time the policy names, a change made on
another replica — with the denial it would now get, in the stream's own format,
within a second; its upstream connection is closed and nothing else is touched.

Real loopback servers throughout (the demo upstream streams one event every
DELAY_S); latencies are measured from the change to the event reaching the
client, asserted only as an upper bound and printed."""

from __future__ import annotations

import hashlib
import http.client
import itertools
import json
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest

from conftest import REFERENCE_POLICY, at
from e2e import DECISION_TIME, SE_IP, US_IP, Stack
from gateway.policy.decision import Facts, decide
from gateway.policy.load import load_bundle
from gateway.request.revocation import policy_times

DELAY_S = 0.1        # between the upstream's stream events: a stream lasts about 1.7 s
BOUND_S = 1.0        # the promise: ended within a second of the change
OPERATOR = "operator-token-for-revocation-tests"
SUSPENDED = {"error": {"message": "Your organization's access is suspended.", "type": "permission_denied",
                       "param": None, "code": "organization_suspended"}}
UNSUPPORTED = {"message": "Country, region, or territory not supported.", "type": "request_forbidden",
               "param": None, "code": "unsupported_country_region_territory"}


def report(capsys: pytest.CaptureFixture[str], text: str) -> None:
    with capsys.disabled():
        print(f"\n{text}")


# The decision clock and policy times (pure)


def test_policy_times_name_every_kind_of_scheduled_change() -> None:
    policy = load_bundle(REFERENCE_POLICY).policy
    times = policy_times(policy)
    assert list(times) == sorted(set(times))
    assert at("2026-11-25T00:00:00Z").timestamp() in times   # frontier-5.6 enters limited_partner
    assert at("2026-11-03T00:00:00Z").timestamp() in times   # a suspension's from
    assert at("2026-11-21T00:00:00Z").timestamp() in times   # ... and its until
    assert at("2026-12-16T00:00:00Z").timestamp() in times   # org-expiring's vetting lapses after 2026-12-15


def test_decisions_change_only_at_policy_times() -> None:
    """What lets the periodic check skip `decide()` until a policy time passes: between
    two consecutive policy times, every decision stays the same."""
    policy = load_bundle(REFERENCE_POLICY).policy
    times = policy_times(policy)
    moments = [times[0] - 86400, *times, times[-1] + 86400]
    facts = [Facts(org, model, country) for org, model, country in
             itertools.product([*policy.organizations, "org-none"], [*policy.models, "nope"], ["US", "SE", "CN", None])]
    for start, end in itertools.pairwise(moments):
        probes = [datetime.fromtimestamp(t, UTC) for t in (start, (start + end) / 2, end - 0.001)]
        for fact in facts:
            first, *others = (decide(policy, fact, probe) for probe in probes)
            assert all((d.allowed, d.reasons, d.tier, d.stage) == (first.allowed, first.reasons, first.tier, first.stage)
                       for d in others), (fact, probes)


# Embedded mode


class Clock:
    """The gateway's decision clock: fixed at DECISION_TIME until a test moves it."""

    def __init__(self) -> None:
        self.now = DECISION_TIME

    def __call__(self) -> float:
        return self.now


CLOCK = Clock()


# Revocation follows changes whoever makes them: one operator's word suffices here.
ADMIN_CONFIG = f"""
change_control: {{approvals: 0}}
admin: {{tokens: [{{name: ops-alice, sha256: "{hashlib.sha256(OPERATOR.encode()).hexdigest()}", role: operator}}]}}
"""


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    stack = Stack(tmp_path_factory.mktemp("revocation"), clock=CLOCK, extra_config=ADMIN_CONFIG + """
credential_misuse: {window_s: 600, countries: 2, suspend: true}
revocation: {check_interval_s: 0.25}
""")
    stack.upstream.app.stream_delay_s = DELAY_S
    yield stack
    stack.close()


@pytest.fixture(autouse=True)
def fresh(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    CLOCK.now = DECISION_TIME
    if "stack" in request.fixturenames:
        request.getfixturevalue("stack").upstream.app.reset()


def admin(url: str, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    sent = urllib.request.Request(url + path, data=data, method=method, headers={
        "Authorization": f"Bearer {OPERATOR}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(sent, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as refused:
        return refused.code, json.loads(refused.read())


class Stream:
    """One streaming chat request on its own connection, read event by event, each
    event with the time it arrived."""

    def __init__(self, url: str, key: str, model: str = "small-2", ip: str = US_IP, *, started: bool = True,
                 **extra: Any) -> None:
        host, port = url.removeprefix("http://").split(":")
        self.connection = http.client.HTTPConnection(host, int(port), timeout=10)
        body = {"model": model, "stream": True, "messages": [{"role": "user", "content": "tell me a long story " * 5}]}
        body |= extra
        self.connection.request("POST", "/v1/chat/completions", json.dumps(body), {
            "Authorization": f"Bearer {key}", "Content-Type": "application/json", "X-Forwarded-For": ip})
        self.response = self.connection.getresponse()
        assert self.response.status == 200 or not started, self.response.read()
        self.decision_id = self.response.getheader("x-gateway-decision-id")
        self.events: list[tuple[float, str | None, str]] = []  # (arrival, event name, data)

    def next(self) -> tuple[str | None, str] | None:
        """The next event (name, data), or None once the body has ended."""
        name, data = None, []
        while line := self.response.readline():
            field, _, value = line.rstrip(b"\r\n").decode().partition(":")
            if field == "event":
                name = value.strip()
            elif field == "data":
                data.append(value.removeprefix(" "))
            elif not field and (name or data):  # a blank line ends an event
                self.events.append((time.monotonic(), name, "\n".join(data)))
                return name, "\n".join(data)
        return None

    def rest(self) -> list[tuple[str | None, str]]:
        out = []
        while (event := self.next()) is not None:
            out.append(event)
        self.connection.close()
        return out

    @property
    def ended_at(self) -> float:
        return self.events[-1][0]


def outcome(stack: Stack, decision_id: str | None) -> str | None:
    """How the demo upstream's answer to `decision_id` ended, once it has (within 3 s)."""
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        found = [r.outcome for r in stack.received if r.header("x-gateway-decision-id") == decision_id]
        if found and found[0] is not None:
            return found[0]
        time.sleep(0.02)
    return None


def audit_record(records: Callable[[], list[dict[str, Any]]], decision_id: str | None) -> dict[str, Any]:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        found = [r for r in records() if r["decision_id"] == decision_id]
        if found:
            return found[0]
        time.sleep(0.05)
    raise AssertionError(f"no audit record {decision_id}")


def metrics(admin_url: str) -> str:
    with urllib.request.urlopen(admin_url + "/metrics", timeout=5) as response:
        return response.read().decode()


def test_an_org_suspended_live_has_its_running_stream_ended_and_no_other(
        stack: Stack, capsys: pytest.CaptureFixture[str]) -> None:
    suspended = Stream(stack.url, stack.api_key("org-public"))
    other = Stream(stack.url, stack.api_key("org-acme"))
    assert suspended.next() is not None and other.next() is not None
    changed = time.monotonic()
    status, change = admin(stack.admin_url, "PATCH", "/admin/organizations/org-public", {"status": "suspended"})
    try:
        assert status == 200, change
        ending = suspended.rest()
        latency = suspended.ended_at - changed
        report(capsys, f"embedded, org suspended through the admin API -> error event on the stream: {latency * 1000:.1f} ms")
        assert ending[-1] == (None, json.dumps(SUSPENDED, separators=(",", ":")))
        assert latency <= BOUND_S
        assert len(ending) < 10, "the stream ran on"  # the whole answer is about 17 events

        untouched = other.rest()
        assert untouched[-1] == (None, "[DONE]") and not any("error" in data for _, data in untouched)
        assert outcome(stack, suspended.decision_id) == "disconnected"  # the upstream saw the gateway go away
        assert outcome(stack, other.decision_id) == "complete"

        record = audit_record(stack.audit_records, suspended.decision_id)
        assert record["error"] == "revoked" and record["status"] == 200 and record["decision"] == "allow"
        assert record["revoked"] == {"reasons": ["org_suspended"], "status": 403, "policy_version": change["policy_version"]}
        assert audit_record(stack.audit_records, other.decision_id)["revoked"] is None
        assert 'gateway_revocations_total{reason="org_suspended"} 1.0' in metrics(stack.admin_url)
    finally:
        assert admin(stack.admin_url, "PATCH", "/admin/organizations/org-public", {"status": None})[0] == 200


def test_an_anthropic_stream_ends_with_an_anthropic_error_event(stack: Stack, capsys: pytest.CaptureFixture[str]) -> None:
    client = anthropic.Anthropic(base_url=stack.url, api_key=stack.api_key("org-caisi"), max_retries=0,
                                 default_headers={"X-Forwarded-For": US_IP})
    other = Stream(stack.url, stack.api_key("org-caisi"), model="small-2")  # same org, a model not suspended
    assert other.next() is not None
    events = iter(client.messages.create(model="fable", max_tokens=200, stream=True,
                                         messages=[{"role": "user", "content": "tell me a long story " * 5}]))
    assert next(events).type == "message_start"
    changed = time.monotonic()
    status, made = admin(stack.admin_url, "POST", "/admin/suspensions",
                         {"models": ["fable"], "deny_in": ["us"], "reason": "revocation test"})
    try:
        assert status == 201, made
        with pytest.raises(anthropic.APIStatusError) as ended:
            for _ in events:
                pass
        latency = time.monotonic() - changed
        report(capsys, f"embedded, export suspension -> Anthropic error event: {latency * 1000:.1f} ms")
        assert ended.value.body == {"type": "error", "error": {"type": "permission_error",
                                                                "message": UNSUPPORTED["message"]}}
        assert latency <= BOUND_S
        assert other.rest()[-1] == (None, "[DONE]")
    finally:
        assert admin(stack.admin_url, "DELETE", f"/admin/suspensions/{made['suspension']['id']}")[0] == 200


def test_a_suspension_of_a_model_named_elsewhere_in_the_body_ends_the_stream(stack: Stack) -> None:
    """The stream runs on small-2, screened by a moderation model: suspending the
    moderation model ends it, as it would refuse the request now."""
    screened = Stream(stack.url, stack.api_key("org-caisi"), moderation={"model": "fable"})
    other = Stream(stack.url, stack.api_key("org-caisi"))
    assert screened.next() is not None and other.next() is not None
    status, made = admin(stack.admin_url, "POST", "/admin/suspensions",
                         {"models": ["fable"], "deny_in": ["us"], "reason": "revocation test"})
    try:
        assert status == 201, made
        assert json.loads(screened.rest()[-1][1])["error"] == UNSUPPORTED
        assert audit_record(stack.audit_records, screened.decision_id)["revoked"]["reasons"] == ["export_suspended"]
        assert other.rest()[-1] == (None, "[DONE]")
    finally:
        assert admin(stack.admin_url, "DELETE", f"/admin/suspensions/{made['suspension']['id']}")[0] == 200


def test_a_new_policy_bundle_ends_the_streams_it_denies(stack: Stack) -> None:
    texts = {path.name: path.read_text() for path in REFERENCE_POLICY.glob("*.yaml")}
    texts["organizations.yaml"] = texts["organizations.yaml"].replace(
        "    tier: verified\n", "    tier: verified\n    status: denied\n    status_reason: test\n")
    stream = Stream(stack.url, stack.api_key("org-verified-br"))
    assert stream.next() is not None
    status, change = admin(stack.admin_url, "PUT", "/admin/policy", {"files": texts})
    try:
        assert status == 200, change
        assert json.loads(stream.rest()[-1][1])["error"]["code"] == "organization_not_permitted"
        assert audit_record(stack.audit_records, stream.decision_id)["revoked"]["policy_version"] == change["policy_version"]
    finally:
        assert admin(stack.admin_url, "POST", "/admin/reload")[0] == 200  # the files are the policy again


def test_a_scheduled_suspension_ends_a_stream_once_its_start_is_reached(
        stack: Stack, capsys: pytest.CaptureFixture[str]) -> None:
    starts = DECISION_TIME + 3600
    status, made = admin(stack.admin_url, "POST", "/admin/suspensions", {
        "models": ["small-2"], "deny_in": ["us"], "reason": "scheduled",
        "from": datetime.fromtimestamp(starts, UTC).isoformat().replace("+00:00", "Z")})
    assert status == 201, made
    try:
        client = openai.OpenAI(base_url=stack.url + "/v1", api_key=stack.api_key("org-public"), max_retries=0,
                               default_headers={"X-Forwarded-For": US_IP})
        chunks = iter(client.chat.completions.create(model="small-2", stream=True,
                                                     messages=[{"role": "user", "content": "tell me a long story " * 5}]))
        for _ in range(4):  # in force later, not yet: the stream runs on past a few checks
            next(chunks)
        CLOCK.now = starts
        moved = time.monotonic()
        with pytest.raises(openai.APIError) as ended:
            for _ in chunks:
                pass
        latency = time.monotonic() - moved
        report(capsys, f"embedded, scheduled suspension start reached (check every 0.25 s) -> error event: "
                       f"{latency * 1000:.1f} ms")
        assert ended.value.code == UNSUPPORTED["code"] and ended.value.message == UNSUPPORTED["message"]
        assert latency <= BOUND_S
    finally:
        assert admin(stack.admin_url, "DELETE", f"/admin/suspensions/{made['suspension']['id']}")[0] == 200


def test_a_credential_suspended_for_misuse_has_its_running_stream_ended(
        stack: Stack, capsys: pytest.CaptureFixture[str]) -> None:
    key = stack.api_key("org-kyoto")
    stream = Stream(stack.url, key, ip=US_IP)
    assert stream.next() is not None
    changed = time.monotonic()
    # The same key from a second country: allowed, flagged, and suspended (a live change).
    second = Stream(stack.url, key, ip=SE_IP, started=False)
    ending = stream.rest()
    latency = stream.ended_at - changed
    record = audit_record(stack.audit_records, stream.decision_id)
    try:
        report(capsys, f"embedded, credential suspended for misuse -> error event: {latency * 1000:.1f} ms")
        invalid = {"error": {"message": "Invalid or missing credentials.", "type": "invalid_request_error",
                             "param": None, "code": "invalid_api_key"}}
        assert json.loads(ending[-1][1]) == invalid
        # The request that revealed the misuse is revoked too: before its answer started
        # (then it is the 401 itself) or after.
        if second.response.status == 200:
            assert json.loads(second.rest()[-1][1]) == invalid
        else:
            assert second.response.status == 401 and json.loads(second.response.read()) == invalid
            assert second.response.getheader("www-authenticate") == 'Bearer realm="frontier-gateway"'
        assert latency <= BOUND_S
        assert record["revoked"]["reasons"] == ["credential_invalid"]
        assert outcome(stack, stream.decision_id) == "disconnected"
    finally:
        assert admin(stack.admin_url, "DELETE", f"/admin/credentials/{record['credential_id']}")[0] == 200


class SlowUpstream:
    """A loopback upstream that reads one request, sends `answer` (possibly nothing, or
    part of a response) and then nothing more; it notes when the gateway closes the
    connection."""

    def __init__(self, port: int, answer: bytes = b"") -> None:
        self.server = socket.create_server(("127.0.0.1", port))
        self.answer = answer
        self.received = threading.Event()
        self.closed = threading.Event()
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self) -> None:
        connection, _ = self.server.accept()
        with connection, self.server:
            connection.settimeout(10)
            data = b""
            while b"\r\n\r\n" not in data:
                data += connection.recv(65536)
            connection.sendall(self.answer)
            self.received.set()
            while connection.recv(65536):
                pass
            self.closed.set()


@pytest.fixture
def slow_stack(tmp_path: Path) -> Iterator[Callable[[bytes], tuple[Stack, SlowUpstream]]]:
    """A gateway whose upstream is a SlowUpstream (on the demo upstream's address)."""
    stacks = []

    def start(answer: bytes) -> tuple[Stack, SlowUpstream]:
        stack = Stack(tmp_path, extra_config=ADMIN_CONFIG)
        stacks.append(stack)
        port = int(stack.upstream.url.rsplit(":", 1)[1])
        stack.thread.run(stack.upstream.stop())
        return stack, SlowUpstream(port, answer)

    yield start
    for stack in stacks:
        stack.service_stop_only()


def revoke_while_answering(stack: Stack, upstream: SlowUpstream) -> tuple[Callable[[], Any], float]:
    """Send a chat request, suspend its org once the upstream has it; (its answer, when the change was sent)."""
    host, port = stack.url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    body = {"model": "small-2", "messages": [{"role": "user", "content": "hi"}]}
    connection.request("POST", "/v1/chat/completions", json.dumps(body),
                       {"Authorization": f"Bearer {stack.api_key('org-public')}", "Content-Type": "application/json",
                        "X-Forwarded-For": US_IP})
    assert upstream.received.wait(5)
    time.sleep(0.1)  # whatever the upstream sent has passed through the gateway
    changed = time.monotonic()
    status, change = admin(stack.admin_url, "PATCH", "/admin/organizations/org-public", {"status": "suspended"})
    assert status == 200, change
    return connection.getresponse, changed


def test_a_request_still_awaiting_its_answer_gets_the_denial_itself(
        slow_stack: Callable[[bytes], tuple[Stack, SlowUpstream]], capsys: pytest.CaptureFixture[str]) -> None:
    stack, upstream = slow_stack(b"")
    response, changed = revoke_while_answering(stack, upstream)
    answer = response()
    body = json.loads(answer.read())
    latency = time.monotonic() - changed
    report(capsys, f"embedded, org suspended while its request awaited the upstream -> 403: {latency * 1000:.1f} ms")
    assert (answer.status, body) == (403, SUSPENDED)
    assert latency <= BOUND_S
    assert upstream.closed.wait(3)
    record = stack.audit_records()[-1]
    assert (record["status"], record["error"], record["revoked"]["reasons"]) == (403, "revoked", ["org_suspended"])


def test_an_answer_that_is_not_a_stream_is_cut_short(slow_stack: Callable[[bytes], tuple[Stack, SlowUpstream]]) -> None:
    """No event format to carry the denial: the client must not take the part it got
    for a whole answer, so the connection is closed before the declared length."""
    part = b'{"id": "chatcmpl-1", "choices": [{"message": {"content": "The first'
    stack, upstream = slow_stack(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 500\r\n\r\n" + part)
    response, _ = revoke_while_answering(stack, upstream)
    answer = response()
    assert answer.status == 200
    with pytest.raises(http.client.IncompleteRead) as cut:
        answer.read()
    assert cut.value.partial == part
    assert upstream.closed.wait(3)
    assert stack.audit_records()[-1]["error"] == "revoked"


# Fleet mode


def test_a_change_on_one_replica_ends_a_stream_on_the_other_within_a_second(
        tmp_path: Path, redis_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    from fleet import start_fleet, wait_for

    fleet = start_fleet(tmp_path / "fleet", redis_url=redis_url)
    try:
        fleet.upstream.server.app.stream_delay_s = DELAY_S
        a, b, key = fleet.a, fleet.b, fleet.key("org-public")
        latencies = []
        for _ in range(5):
            stream = Stream(b.url, key)
            assert stream.next() is not None
            changed = time.monotonic()
            assert a.admin("PATCH", "/admin/organizations/org-public", {"status": "suspended"}).status == 200
            ending = stream.rest()
            latencies.append(stream.ended_at - changed)
            assert ending[-1] == (None, json.dumps(SUSPENDED, separators=(",", ":")))
            assert a.admin("PATCH", "/admin/organizations/org-public", {"status": None}).status == 200
            wait_for(lambda: b.chat(key).status == 200, timeout=3)
        report(capsys, "fleet, org suspended on replica A -> error event on replica B's stream: "
                       + ", ".join(f"{s * 1000:.1f}" for s in latencies) + " ms")
        assert max(latencies) <= BOUND_S
        records = [json.loads(line) for line in b.audit_path.read_text().splitlines()]
        assert sum(r["error"] == "revoked" for r in records) == 5
        assert 'gateway_revocations_total{reason="org_suspended"} 5.0' in metrics(b.admin_url)
    finally:
        assert all(code == 0 for code in fleet.close().values())

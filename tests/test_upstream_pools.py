"""Upstream pools (issue 17): several demo upstreams on loopback behind one
`upstreams.default`. Which URL served a request is read from the answer's
`x-demo-upstream` header and from what each upstream received."""

from __future__ import annotations

import http.client
import json
import socket
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from pydantic import ValidationError

from e2e import US_IP, Stack
from gateway.config import Upstream
from gateway.demo.upstream import ThreadedDemoServer, start_in_thread
from gateway.request.pool import AtCapacity, NoHealthyMember, Pool

CHAT = json.dumps({"model": "small-2", "messages": [{"role": "user", "content": "hello"}]}).encode()
STREAM = json.dumps({"model": "small-2", "stream": True, "messages": [{"role": "user", "content": "hello"}]}).encode()
FAST_CHECKS = ", health_check: {path: /v1/models, interval_s: 0.1, timeout_s: 0.5}"


def chat(stack: Stack, body: bytes = CHAT, **extra: str) -> tuple[int, dict[str, str], bytes]:
    host, port = stack.url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    headers = {"Authorization": f"Bearer {stack.api_key('org-public')}", "Content-Type": "application/json",
               "X-Forwarded-For": US_IP, "Content-Length": str(len(body)), **extra}
    try:
        connection.request("POST", "/v1/chat/completions", body, headers)
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


def served_by(reply: tuple[int, dict[str, str], bytes]) -> str:
    status, headers, _ = reply
    assert status == 200, reply
    return headers["x-demo-upstream"]


def chats(upstream: ThreadedDemoServer | Stack) -> int:
    """Chat requests an upstream received (health checks are GETs of /v1/models)."""
    app = upstream.upstream.app if isinstance(upstream, Stack) else upstream.app
    return sum(1 for seen in app.received if seen.path == "/v1/chat/completions")


def sample(stack: Stack, name: str, **labels: str) -> float | None:
    return stack.service.metrics.registry.get_sample_value(name, {"upstream": "default", **labels})


def eventually(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def dead_url() -> str:
    """A loopback URL nothing listens on: connections to it are refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


@pytest.fixture
def second() -> Iterator[ThreadedDemoServer]:
    server = start_in_thread(name="second", models=["small-2"])
    yield server
    server.stop()


# The choice, without I/O


def pool_of(count: int, **options: object) -> Pool:
    return Pool("default", Upstream(urls=[f"http://10.0.0.{n}:8000" for n in range(1, count + 1)], **options))


def test_the_member_with_fewest_requests_in_progress_is_chosen() -> None:
    pool = pool_of(3)
    pool.members[0].outstanding, pool.members[1].outstanding, pool.members[2].outstanding = 4, 1, 2
    assert [pool.choose() for _ in range(3)] == [pool.members[1]] * 3


def test_ties_are_taken_in_turn() -> None:
    pool = pool_of(3)
    assert [pool.choose().url for _ in range(4)] == [m.url for m in (*pool.members, pool.members[0])]


def test_ejected_members_and_members_at_their_limit_are_passed_over() -> None:
    pool = pool_of(3, max_concurrent=2)
    first, second, third = pool.members
    first.healthy = False
    second.outstanding = 2
    assert pool.choose() is third
    third.outstanding = 2
    with pytest.raises(AtCapacity):
        pool.choose()
    second.healthy = third.healthy = False
    with pytest.raises(NoHealthyMember):
        pool.choose()
    assert (pool.at_capacity, pool.unavailable) == (1, 1)


def test_url_is_a_pool_of_one_and_urls_a_pool() -> None:
    assert Upstream(url="http://a:1/").members == ("http://a:1",)
    assert Upstream(urls=["http://a:1", "http://b:2/"]).members == ("http://a:1", "http://b:2")


@pytest.mark.parametrize("keys", [{}, {"url": "http://a:1", "urls": ["http://b:1"]}, {"urls": []},
                                  {"urls": ["http://a:1", "http://a:1/"]}, {"urls": ["ftp://a:1"]},
                                  {"url": "http://a:1", "max_concurrent": 0},
                                  {"url": "http://a:1", "health_check": {"path": "health"}}])
def test_a_pool_that_cannot_work_is_refused(keys: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        Upstream(**keys)


# Through a real gateway


def test_requests_go_where_fewest_are_in_progress(tmp_path: Path, second: ThreadedDemoServer) -> None:
    stack = Stack(tmp_path, pool=(second.url,))
    try:
        assert {served_by(chat(stack)) for _ in range(4)} == {"demo", "second"}  # idle: in turn
        with ThreadPoolExecutor(1) as background:
            slow = background.submit(chat, stack, CHAT, **{"x-demo-fault": "stall=1.5"})
            eventually(lambda: sum(sample(stack, "gateway_upstream_outstanding", url=url) or 0
                                   for url in (stack.upstream.url, second.url)) == 1)
            busy = "demo" if sample(stack, "gateway_upstream_outstanding", url=stack.upstream.url) else "second"
            assert {served_by(chat(stack)) for _ in range(4)} == {"second" if busy == "demo" else "demo"}
            assert served_by(slow.result()) == busy
    finally:
        stack.close()


def test_a_dead_member_is_ejected_and_the_request_sent_to_another(tmp_path: Path) -> None:
    dead = dead_url()
    stack = Stack(tmp_path, pool=(dead,))
    try:
        assert [served_by(chat(stack)) for _ in range(4)] == ["demo"] * 4
        assert chats(stack) == 4
        assert sample(stack, "gateway_upstream_healthy", url=dead) == 0
        assert sample(stack, "gateway_upstream_connect_failures_total", url=dead) == 1  # ejected: not tried again
        assert sample(stack, "gateway_upstream_ejections_total", url=dead) == 1
        assert sample(stack, "gateway_upstream_url_requests_total", url=stack.upstream.url) == 4
        assert stack.service.metrics.registry.get_sample_value("gateway_upstream_retries_total",
                                                               {"upstream": "default"}) == 1  # the second request
        assert all(record["status"] == 200 for record in stack.audit_records())
    finally:
        stack.close()


def test_an_answer_cut_off_midway_is_never_retried(tmp_path: Path, second: ThreadedDemoServer) -> None:
    stack = Stack(tmp_path, pool=(second.url,))
    try:
        status, _, body = chat(stack, STREAM, **{"x-demo-fault": "drop"})
        # The client sees the cut: the stream it began to get ends with an error event.
        assert status == 200 and body.startswith(b"data: "), body
        assert json.loads(body.rstrip().rpartition(b"data: ")[2])["error"]["code"] == "upstream_unavailable"
        time.sleep(0.2)
        assert chats(stack) + chats(second) == 1  # and nothing was sent a second time
        assert stack.audit_records()[-1]["error"] == "upstream_protocol"
        assert stack.service.metrics.registry.get_sample_value("gateway_upstream_retries_total",
                                                               {"upstream": "default"}) == 0
    finally:
        stack.close()


def test_a_health_check_takes_a_member_out_and_brings_it_back(tmp_path: Path, second: ThreadedDemoServer) -> None:
    stack = Stack(tmp_path, pool=(second.url,), upstream_options=FAST_CHECKS)
    try:
        second.stop()
        eventually(lambda: sample(stack, "gateway_upstream_healthy", url=second.url) == 0)
        assert {served_by(chat(stack)) for _ in range(3)} == {"demo"}
        assert sample(stack, "gateway_upstream_connect_failures_total", url=second.url) == 0  # found out by checks
        back = ThreadedDemoServer(port=second.port, name="second", models=["small-2"]).start()
        try:
            eventually(lambda: sample(stack, "gateway_upstream_healthy", url=second.url) == 1)
            assert "second" in {served_by(chat(stack)) for _ in range(4)}
            assert sample(stack, "gateway_upstream_ejections_total", url=second.url) == 1
        finally:
            back.stop()
    finally:
        stack.close()


def test_a_pool_with_no_healthy_member_answers_503_with_its_code(tmp_path: Path) -> None:
    dead = dead_url()
    stack = Stack(tmp_path, pool=(dead,))
    try:
        stack.thread.run(stack.upstream.stop())
        status, _, body = chat(stack)  # finds out: both refuse, nothing was sent anywhere
        assert (status, json.loads(body)["error"]["code"]) == (502, "upstream_unavailable")
        status, headers, body = chat(stack)
        assert (status, headers["retry-after"]) == (503, "1")
        assert json.loads(body)["error"] | {"message": ""} == {
            "message": "", "type": "server_error", "param": None, "code": "no_healthy_upstream"}
        record = stack.audit_records()[-1]
        assert (record["status"], record["error"], record["decision_id"]) == (
            503, "no_healthy_upstream", headers["x-gateway-decision-id"])
        assert stack.service.metrics.registry.get_sample_value(
            "gateway_upstream_unavailable_total", {"upstream": "default", "code": "no_healthy_upstream"}) == 1
    finally:
        stack.service_stop_only()


def test_a_member_at_its_concurrency_limit_takes_no_more(tmp_path: Path) -> None:
    stack = Stack(tmp_path, upstream_options=", max_concurrent: 1")
    try:
        with ThreadPoolExecutor(1) as background:
            slow = background.submit(chat, stack, CHAT, **{"x-demo-fault": "stall=1"})
            eventually(lambda: sample(stack, "gateway_upstream_outstanding", url=stack.upstream.url) == 1)
            status, headers, body = chat(stack)
            assert (status, headers["retry-after"], json.loads(body)["error"]["code"]) == (
                503, "1", "upstream_at_capacity")
            assert slow.result()[0] == 200
        assert chat(stack)[0] == 200  # freed
        assert chats(stack) == 2
        refused = [r for r in stack.audit_records() if r["decision_id"] == headers["x-gateway-decision-id"]]
        assert [(r["status"], r["error"]) for r in refused] == [(503, "upstream_at_capacity")]
    finally:
        stack.close()

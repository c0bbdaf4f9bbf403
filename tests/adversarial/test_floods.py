"""Floods on the listeners (gateway/request/listener.py): what one cheap client may cost.

On real sockets, against a gateway whose deadlines are short (so that the tests
stay fast) and whose connection cap is small:

- the request head: total bytes, one line's bytes, the number of fields, the
  request target; one client streaming an endless header is cut off at the limit
  while the others are served;
- slowloris: a head or a body dribbled a byte at a time is refused at its
  deadline, and a connection that sends nothing is closed;
- the connection cap: the connection over it is answered 503 with Retry-After;
- the admin listener has the same limits, and a cap of its own.

Every refusal of a request is in the API's error shape with a decision id, and
has exactly one audit record; nothing reaches the upstream.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import time
from collections.abc import Iterator

import pytest

from e2e import Stack
from fleet import policy_variant

from .conftest import CHAT, US_IP, Probe, Reply, chat_body, embargo_cn, error_shape, parse_replies

HEAD_TIMEOUT, BODY_TIMEOUT, MAX_CONNECTIONS, ADMIN_MAX_CONNECTIONS = 0.5, 1.0, 8, 3
KIB = 1024


@pytest.fixture(scope="module")
def tight(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    directory = tmp_path_factory.mktemp("floods")
    stack = Stack(directory, policy_dir=policy_variant(directory / "policy", embargo_cn), extra_config=f"""
limits:
  head_timeout_s: {HEAD_TIMEOUT}
  body_timeout_s: {BODY_TIMEOUT}
  max_connections: {MAX_CONNECTIONS}
  admin_max_connections: {ADMIN_MAX_CONNECTIONS}
""")
    yield stack
    stack.close()


@pytest.fixture
def gw(tight: Stack, caplog: pytest.LogCaptureFixture) -> Iterator[Probe]:
    """As tests/adversarial/conftest.py's: no request may end in an exception the gateway caught."""
    tight.upstream.app.reset()
    caplog.set_level(logging.ERROR, logger="gateway")
    yield Probe(tight)
    crashes = [r.getMessage() for r in caplog.get_records("call")
               if r.name.startswith("gateway") and r.levelno >= logging.ERROR]
    assert not crashes, crashes


def head(gw: Probe, *lines: str, target: str = CHAT, length: int | None = None) -> bytes:
    start = [f"POST {target} HTTP/1.1", "Host: gateway.test", f"Authorization: Bearer {gw.key()}",
             f"X-Forwarded-For: {US_IP}", "Content-Type: application/json"]
    if length is not None:
        start.append(f"Content-Length: {length}")
    return ("\r\n".join(start + list(lines)) + "\r\n\r\n").encode()


def request(gw: Probe, *lines: str, body: bytes | None = None) -> bytes:
    body = chat_body() if body is None else body
    return head(gw, *lines, length=len(body)) + body


def padding(count: int, size: int) -> list[str]:
    """`count` header fields whose name and value take `size` bytes each."""
    return [f"X-Pad-{i:03d}: " + "p" * (size - len(f"X-Pad-{i:03d}")) for i in range(count)]


def records(gw: Probe, reply: Reply) -> list[dict]:
    decision_id = reply.header("x-gateway-decision-id")
    return [r for r in gw.stack.audit_records() if r["decision_id"] == decision_id]


def refused(gw: Probe, reply: Reply, status: int, error: str, *, forwarded: int = 0) -> None:
    """Refused with `status` in the error shape, recorded once as `error`; the upstream saw
    only the `forwarded` requests the test made besides."""
    assert reply.status == status, reply
    error_shape(reply)
    gw.settle()
    assert len(gw.stack.received) == forwarded, gw.stack.received
    [record] = records(gw, reply)
    assert (record["status"], record["error"], record["decision"]) == (status, error, "deny"), record


class Conn:
    """One raw connection, read with a deadline."""

    def __init__(self, address: tuple[str, int], timeout: float = 5.0) -> None:
        self.sock = socket.create_connection(address, timeout=timeout)
        self.received = b""

    def send(self, data: bytes) -> bool:
        try:
            self.sock.sendall(data)
            return True
        except OSError:  # closed by the server
            return False

    def closed(self) -> bool:
        """Read what has arrived; True once the server has closed its side."""
        self.sock.setblocking(False)
        try:
            while chunk := self.sock.recv(65536):
                self.received += chunk
            return True
        except BlockingIOError:
            return False
        except ConnectionResetError:
            return True
        finally:
            self.sock.setblocking(True)

    def dribble(self, data: bytes, interval: float, limit: float) -> float:
        """Send `data` a byte every `interval` s until the server closes the connection;
        the seconds that took (the test fails after `limit`)."""
        started = time.monotonic()
        for byte in data:
            if self.closed():
                return time.monotonic() - started
            if time.monotonic() - started > limit:
                break
            self.send(bytes([byte]))
            time.sleep(interval)
        raise AssertionError(f"not closed after {time.monotonic() - started:.1f} s; received {self.received[:300]!r}")

    def read_until_closed(self, timeout: float = 5.0) -> bytes:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                break
            except ConnectionResetError:
                break
            if not chunk:
                return self.received
            self.received += chunk
        raise AssertionError(f"still open after {timeout} s; received {self.received[:300]!r}")

    def replies(self) -> list[Reply]:
        return parse_replies(self.received)

    def close(self) -> None:
        self.sock.close()


@contextlib.contextmanager
def connection(gw: Probe | tuple[str, int]) -> Iterator[Conn]:
    conn = Conn(gw.address if isinstance(gw, Probe) else gw)
    try:
        yield conn
    finally:
        conn.close()


# The request head


def test_head_within_the_limits_is_served(gw: Probe) -> None:
    # 20 fields of 1 KiB, one of 8 KiB, and 70 more small ones: within 32 KiB and 100 fields.
    lines = padding(20, KIB) + ["X-Long: " + "l" * (8 * KIB - len("X-Long"))] + padding(90, 10)[20:]
    reply = gw.raw(request(gw, *lines))[0]
    gw.allowed(reply)


@pytest.mark.parametrize("lines,status,error", [
    (padding(40, KIB), 431, "header_too_large"),                                    # 40 KiB in all
    (["X-Long: " + "l" * (8 * KIB + 1 - len("X-Long"))], 431, "header_too_large"),  # one line over 8 KiB
    (padding(101, 10), 431, "too_many_headers"),
    (["X-Forwarded-For: " + ", ".join(["10.0.0.1"] * 5000)], 431, "header_too_large"),
])
def test_head_over_the_limits_is_refused(gw: Probe, lines: list[str], status: int, error: str) -> None:
    [reply] = gw.raw(request(gw, *lines))
    refused(gw, reply, status, error)


def test_long_request_target_is_refused(gw: Probe) -> None:
    [reply] = gw.raw(head(gw, target=CHAT + "?q=" + "x" * (8 * KIB), length=2) + b"{}")
    refused(gw, reply, 414, "uri_too_long")


def test_endless_header_is_cut_off_while_others_are_served(gw: Probe) -> None:
    """A header streamed without end: the connection is answered 431 and closed once the
    head passes 32 KiB, and meanwhile other clients are served."""
    served: list[int] = []
    with connection(gw) as conn:
        conn.send(head(gw)[:-2] + b"X-Endless: ")
        sent = 0
        while sent < 2 * 1024 * KIB and conn.send(b"e" * (4 * KIB)):
            sent += 4 * KIB
            if sent % (12 * KIB) == 0 and len(served) < 2:
                served.append(gw.send(body=chat_body()).status)
            if sent > 64 * KIB:
                conn.sock.settimeout(0.05)
                with contextlib.suppress(TimeoutError):
                    conn.received += conn.sock.recv(65536)
                if conn.received:
                    break
        conn.read_until_closed()
        [reply] = conn.replies()
    assert sent < 256 * KIB, f"{sent} bytes of one header accepted"
    assert served == [200, 200]
    refused(gw, reply, 431, "header_too_large", forwarded=2)


def test_endless_trailer_is_refused(gw: Probe) -> None:
    """A chunked body's trailer fields count like a head's: an endless one is refused (by
    the application, which has the request: one answer, one record)."""
    body = chat_body()
    with connection(gw) as conn:
        conn.send(head(gw, "Transfer-Encoding: chunked") + b"%x\r\n" % len(body) + body + b"\r\n0\r\nX-Trailer: ")
        for _ in range(64):
            if not conn.send(b"t" * (4 * KIB)):
                break
        conn.read_until_closed()
        [reply] = conn.replies()
    refused(gw, reply, 431, "request_header_fields_too_large")


def test_pipelined_request_over_the_limits_is_refused_after_the_first_answer(gw: Probe) -> None:
    replies = gw.raw(request(gw) + request(gw, *padding(40, KIB)))
    assert [r.status for r in replies] == [200, 431], replies
    refused(gw, replies[1], 431, "header_too_large", forwarded=1)


# Slowloris


def test_head_dribbled_a_byte_at_a_time_is_refused_at_its_deadline(gw: Probe) -> None:
    with connection(gw) as conn:
        took = conn.dribble(request(gw), 0.05, limit=HEAD_TIMEOUT + 2)
        [reply] = conn.replies()
    assert took >= HEAD_TIMEOUT
    refused(gw, reply, 408, "head_timeout")


def test_connection_that_sends_nothing_is_closed(gw: Probe) -> None:
    before = len(gw.stack.audit_records())
    started = time.monotonic()
    with connection(gw) as conn:
        assert conn.read_until_closed() == b""
    assert time.monotonic() - started < HEAD_TIMEOUT + 1.5
    assert len(gw.stack.audit_records()) == before  # no request, no record


def test_kept_alive_connection_dribbling_line_ends_is_closed(gw: Probe) -> None:
    with connection(gw) as conn:
        conn.send(request(gw))
        time.sleep(0.1)
        took = conn.dribble(b"\r\n" * 1000, 0.05, limit=HEAD_TIMEOUT + 2)
        assert [r.status for r in conn.replies()] == [200, 408]
    assert took >= HEAD_TIMEOUT


def test_body_dribbled_a_byte_at_a_time_is_refused_at_its_deadline(gw: Probe) -> None:
    body = chat_body()
    with connection(gw) as conn:
        conn.send(head(gw, length=len(body)))
        took = conn.dribble(body, 0.05, limit=BODY_TIMEOUT + 2)
        [reply] = conn.replies()
    assert took >= BODY_TIMEOUT - 0.1
    refused(gw, reply, 408, "request_timeout")


def test_body_dribbled_after_its_answer_does_not_hold_the_connection(gw: Probe) -> None:
    """Denied before its body is read (no credential: 401), then the body dribbles on."""
    with connection(gw) as conn:
        conn.send(f"POST {CHAT} HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: {US_IP}\r\nContent-Type: application/json\r\n"
                  f"Content-Length: 100000\r\n\r\n".encode())
        took = conn.dribble(b" " * 100_000, 0.05, limit=BODY_TIMEOUT + 2)
        [reply] = conn.replies()
    assert took >= BODY_TIMEOUT - 0.1
    gw.denied(reply, 401)
    assert len(records(gw, reply)) == 1


# The connection cap


def _fill(address: tuple[str, int], count: int, data: bytes) -> list[Conn]:
    """`count` connections, each with one answered request, kept alive."""
    conns = []
    for _ in range(count):
        conn = Conn(address)
        conn.send(data)
        conn.sock.settimeout(5)
        while b"\r\n\r\n" not in conn.received:
            conn.received += conn.sock.recv(65536)
        conns.append(conn)
    return conns


def test_connection_over_the_cap_is_refused_with_retry_after(gw: Probe) -> None:
    conns = _fill(gw.address, MAX_CONNECTIONS, request(gw))
    try:
        replies = gw.raw(request(gw))
        assert len(replies) == 1, replies
        [reply] = replies
        refused(gw, reply, 503, "too_many_connections", forwarded=MAX_CONNECTIONS)
        assert reply.header("retry-after") == "1"
    finally:
        for conn in conns:
            conn.close()
    time.sleep(0.2)
    assert gw.send(body=chat_body()).status == 200  # room again


def test_refused_connections_do_not_take_the_room_of_others(gw: Probe) -> None:
    """Many connections over the cap, refused at once: the cap still admits new ones as
    soon as earlier ones close."""
    conns = _fill(gw.address, MAX_CONNECTIONS, request(gw))
    try:
        refusals = [gw.raw(b"")[0].status for _ in range(20)]
    finally:
        conns[0].close()
    try:
        time.sleep(0.2)
        assert set(refusals) == {503}
        assert gw.send(body=chat_body()).status == 200
    finally:
        for conn in conns[1:]:
            conn.close()


# The admin listener


def _admin(gw: Probe) -> tuple[str, int]:
    host, port = gw.stack.admin_url.removeprefix("http://").split(":")
    return host, int(port)


def test_admin_listener_has_the_head_limits(gw: Probe) -> None:
    lines = "".join(f"{line}\r\n" for line in padding(40, KIB))
    with connection(_admin(gw)) as conn:
        conn.send(f"GET /healthz HTTP/1.1\r\nHost: x\r\n{lines}\r\n".encode())
        conn.read_until_closed()
        [reply] = conn.replies()
    assert reply.status == 431
    assert json.loads(reply.body)["error"]["code"] == "header_too_large"


def test_admin_listener_has_a_cap_of_its_own(gw: Probe) -> None:
    conns = _fill(_admin(gw), ADMIN_MAX_CONNECTIONS, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    try:
        with connection(_admin(gw)) as conn:
            conn.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            conn.read_until_closed()
            [reply] = conn.replies()
        assert reply.status == 503 and reply.header("retry-after") == "1"
        assert gw.send(body=chat_body()).status == 200  # the public listener's room is its own
    finally:
        for conn in conns:
            conn.close()


def test_admin_listener_closes_a_slow_head(gw: Probe) -> None:
    with connection(_admin(gw)) as conn:
        conn.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        started = time.monotonic()
        conn.read_until_closed()
    assert time.monotonic() - started < HEAD_TIMEOUT + 1.5
    assert [r.status for r in conn.replies()] == [408]

"""The operator console under attack: every input hostile, on the admin listener.

Closed classes: forged or garbage session cookies; sign-in bodies that are too large, not a
form, or not UTF-8, and `next` targets that leave the console; form posts without the
session's token, from another origin, or too large; paths that climb out of the static
folder or are no decision id; markup a client put into the audit log (the model name it
sent) and into filters, shown escaped. Every answer is a page of ours with the console's
security headers, never a 500, a traceback or a file of the server.
"""

from __future__ import annotations

import hashlib
import socket
import urllib.parse
from collections.abc import Iterator

import pytest

from browser.conftest import OPERATOR, VIEWER, make_console_stack
from e2e import Stack

from .conftest import Reply, parse_replies


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    stack = make_console_stack(tmp_path_factory.mktemp("console-adversarial"))
    yield stack
    stack.close()


def send(stack: Stack, method: str, path: str, *, body: bytes = b"", headers: dict[str, str] | None = None) -> Reply:
    """One request as written, on its own connection to the admin listener."""
    host, port = stack.admin_url.removeprefix("http://").split(":")
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}:{port}", "Connection: close",
             *(f"{k}: {v}" for k, v in (headers or {}).items())]
    if method == "POST" and not any(k.lower() in ("content-length", "transfer-encoding") for k in headers or {}):
        lines.append(f"Content-Length: {len(body)}")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    replies = parse_replies(received)
    assert len(replies) == 1, received[:300]
    return replies[0]


def session_of(stack: Stack, token: str = OPERATOR) -> str:
    reply = send(stack, "POST", "/console/sign-in", body=urllib.parse.urlencode({"token": token}).encode(),
                 headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert reply.status == 303, reply
    cookie = reply.header("set-cookie")
    assert cookie is not None
    return cookie.split(";")[0].split("=", 1)[1]


def form_token(session: str) -> str:
    from gateway.console import csrf

    return csrf.token(session)


def ours(reply: Reply) -> None:
    """An answer of the console: its headers, no traceback, never a 500."""
    assert reply.status < 500, reply
    assert "default-src 'none'" in (reply.header("content-security-policy") or ""), reply
    assert b"Traceback" not in reply.body


@pytest.mark.parametrize("cookie", [
    "fgw_console=" + "A" * 5000, "fgw_console=", "fgw_console=%00%0d%0a", "fgw_console=\u00e9t\u00e9",
    "fgw_console=" + hashlib.sha256(b"guess").hexdigest(), "fgw_console=a; fgw_console=b", "garbage",
])
def test_a_forged_or_garbage_session_cookie_signs_no_one_in(console: Stack, cookie: str) -> None:
    reply = send(console, "GET", "/console/", headers={"Cookie": cookie})
    assert reply.status == 303 and reply.header("location", ).startswith("/console/sign-in")


@pytest.mark.parametrize("body, content_type, status", [
    (b"token=" + b"x" * 20_000, "application/x-www-form-urlencoded", 400),
    (b"token=\xff\xfe", "application/x-www-form-urlencoded", 400),
    (b'{"token": "' + OPERATOR.encode() + b'"}', "application/json", 400),
    (b"--b\r\nContent-Disposition: form-data; name=\"token\"\r\n\r\n" + OPERATOR.encode() + b"\r\n--b--\r\n",
     "multipart/form-data; boundary=b", 400),
    (b"token=" + OPERATOR.encode() + b"%00", "application/x-www-form-urlencoded", 401),
    (b"&".join([b"a=1"] * 2000), "application/x-www-form-urlencoded", 400),
])
def test_a_sign_in_body_that_is_not_a_small_form_signs_no_one_in(console: Stack, body: bytes, content_type: str,
                                                                  status: int) -> None:
    reply = send(console, "POST", "/console/sign-in", body=body, headers={"Content-Type": content_type})
    ours(reply)
    assert reply.status == status and reply.header("set-cookie") is None


@pytest.mark.parametrize("target", ["//evil.example/", "https://evil.example/", "/console\\\\evil.example",
                                    "/\\evil.example", "/console/../admin/policy", "/console/%2e%2e/admin",
                                    "javascript:alert(1)", "/console/\r\nSet-Cookie: x=1", "/admin/policy"])
def test_sign_in_sends_nobody_out_of_the_console(console: Stack, target: str) -> None:
    reply = send(console, "POST", "/console/sign-in?next=" + urllib.parse.quote(target, safe=""),
                 body=urllib.parse.urlencode({"token": VIEWER}).encode(),
                 headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert reply.status == 303 and reply.header("location") == "/console/", (target, reply.header("location"))


@pytest.mark.parametrize("case", ["no token", "another session's token", "other origin", "null origin",
                                  "cross-site fetch", "too large", "not a form", "no length"])
def test_a_change_form_without_its_token_or_from_elsewhere_changes_nothing(console: Stack, case: str) -> None:
    session, other = session_of(console), session_of(console)
    fields = {"no token": {}, "another session's token": {"csrf_token": form_token(other)}}.get(
        case, {"csrf_token": form_token(session)})
    body = urllib.parse.urlencode(fields).encode()
    headers = {"Cookie": f"fgw_console={session}", "Content-Type": "application/x-www-form-urlencoded",
               "Origin": console.admin_url}
    if case == "other origin":
        headers["Origin"] = "http://evil.example"
    if case == "null origin":
        headers["Origin"] = "null"
    if case == "cross-site fetch":
        headers["Sec-Fetch-Site"] = "cross-site"
    if case == "too large":
        body += b"&pad=" + b"x" * (300 * 1024)
    if case == "not a form":
        headers["Content-Type"] = "text/plain"
    if case == "no length":
        headers["Transfer-Encoding"] = "chunked"
        body = f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n"
    reloads = console.service.metrics.policy_reloads.labels("success")._value.get()
    reply = send(console, "POST", "/console/reload", body=body, headers=headers)
    ours(reply)
    assert reply.status in (400, 403), (case, reply)
    assert console.service.metrics.policy_reloads.labels("success")._value.get() == reloads


def test_a_viewer_with_a_valid_form_token_still_changes_nothing(console: Stack) -> None:
    session = session_of(console, VIEWER)
    reply = send(console, "POST", "/console/reload", body=f"csrf_token={form_token(session)}".encode(),
                 headers={"Cookie": f"fgw_console={session}", "Content-Type": "application/x-www-form-urlencoded"})
    ours(reply)
    assert reply.status == 403 and b"cannot make changes" in reply.body


@pytest.mark.parametrize("path", ["/console/static/../app.py", "/console/static/%2e%2e/app.py",
                                  "/console/static/..%2fapp.py", "/console/static/%2e%2e%2f%2e%2e%2fconfig.py",
                                  "/console/static//etc/passwd", "/console/static/../templates/base.html"])
def test_static_paths_never_leave_the_static_folder(console: Stack, path: str) -> None:
    reply = send(console, "GET", path)
    assert reply.status in (400, 404), (path, reply)
    assert b"def " not in reply.body and b"{% block" not in reply.body and b"root:" not in reply.body


@pytest.mark.parametrize("path", ["/console/decisions/..%2f..%2fetc%2fpasswd", "/console/decisions/" + "a" * 5000,
                                  "/console/decisions/ZZZZ", "/console/decisions/find?id=%00",
                                  "/console/decisions?org=%ff%fe", "/console/decisions?limit=-1&country=%0d%0a"])
def test_hostile_decision_paths_and_queries_are_answered_by_a_page(console: Stack, path: str) -> None:
    session = session_of(console, VIEWER)
    reply = send(console, "GET", path, headers={"Cookie": f"fgw_console={session}"})
    ours(reply)
    assert reply.status in (200, 400, 404), (path, reply)


def test_markup_a_client_put_in_the_audit_log_is_shown_as_text(console: Stack) -> None:
    """The model name is the client's own text: it reaches the audit record as sent."""
    from test_admin import chat

    chat(console, "org-acme", '<script>alert("x")</script><img src=x onerror=alert(1)>')
    session = session_of(console, VIEWER)
    reply = send(console, "GET", "/console/decisions", headers={"Cookie": f"fgw_console={session}"})
    ours(reply)
    assert b"<script>alert" not in reply.body and b"<img src=x" not in reply.body
    assert b"&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in reply.body


def test_filter_values_are_never_echoed_as_markup(console: Stack) -> None:
    session = session_of(console, VIEWER)
    hostile = urllib.parse.quote('"><script>alert(1)</script>')
    reply = send(console, "GET", f"/console/decisions?org={hostile}&model={hostile}",
                 headers={"Cookie": f"fgw_console={session}"})
    ours(reply)
    assert b"<script>alert(1)" not in reply.body


def test_the_console_is_never_framed_or_cached(console: Stack) -> None:
    session = session_of(console, VIEWER)
    for path in ("/console/", "/console/decisions", "/console/sign-in"):
        reply = send(console, "GET", path, headers={"Cookie": f"fgw_console={session}"})
        assert reply.header("x-frame-options") == "DENY" and "frame-ancestors 'none'" in reply.header(
            "content-security-policy") and reply.header("cache-control") == "no-store", path


def test_a_sign_in_cookie_over_a_trusted_tls_proxy_is_secure(console: Stack) -> None:
    reply = send(console, "POST", "/console/sign-in", body=urllib.parse.urlencode({"token": VIEWER}).encode(),
                 headers={"Content-Type": "application/x-www-form-urlencoded", "X-Forwarded-Proto": "https"})
    cookie = reply.header("set-cookie").lower()
    assert "secure" in cookie and "httponly" in cookie and "samesite=strict" in cookie

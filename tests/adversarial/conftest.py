"""The adversarial suite's one harness: a real gateway in front of the recording
demo upstream, and two checks every case ends with.

- `Probe.denied(reply, *statuses)`: the answer is one of the expected statuses
  (never a 500), its body is the API's own error shape with the gateway's
  decision id, and the upstream received nothing at all.
- `Probe.allowed(reply, org, model)`: 200, and the upstream received exactly
  one request, for the decided org and model, carrying the gateway's headers
  and none the client made up.

The policy is the reference bundle with CN added to `embargoed`: the GeoIP
test database has no Cuban, Iranian or North Korean address, and a country
denied for *every* model is what shows that a disguised address was really
located (an unknown place is denied for every model too, with its own reason:
the audit record tells `jurisdiction_embargoed` from `jurisdiction_unknown`).
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import socket
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import pytest

from e2e import CN_IP, US_IP, Stack
from fleet import policy_variant

Headers = Sequence[tuple[str, str]]
CHAT = "/v1/chat/completions"
MESSAGES = "/v1/messages"
# Covered (frontier-5.6): countries of concern are denied too. Not covered (small-2): only embargoed
# ones are. An unknown place is denied for both: give requests a located address (US_IP by default).
COVERED, PLAIN = "frontier-5.6", "small-2"
ORG = "org-acme"  # vetted partner, declared US: frontier-5.6 is in its limited_partner stage for it
# Headers a client may send but that must never reach the upstream as the client wrote them.
CLIENT_ONLY = ("authorization", "x-api-key", "x-forwarded-for", "forwarded", "x-real-ip", "x-forwarded-host",
               "x-http-method-override", "x-original-url", "x-rewrite-url", "proxy-authorization")


def chat_body(model: str = PLAIN, **extra: Any) -> bytes:
    return json.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}]} | extra).encode()


def b64(data: bytes | str) -> str:
    raw = data.encode() if isinstance(data, str) else data
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


@dataclass
class Reply:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        values = [v for k, v in self.headers if k.lower() == name]
        return values[0] if values else None

    def __repr__(self) -> str:
        return f"<{self.status} {self.body[:200]!r}>"


def parse_replies(data: bytes) -> list[Reply]:
    """Every HTTP/1.1 response in `data` (Content-Length framed, as the gateway and
    uvicorn answer errors; a chunked one is kept whole as the last)."""
    replies = []
    while data.startswith(b"HTTP/1."):
        head, _, rest = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        headers = [(k.strip(), v.strip()) for k, _, v in (line.partition(":") for line in lines[1:])]
        length = next((int(v) for k, v in headers if k.lower() == "content-length"), None)
        if length is None:
            replies.append(Reply(status, headers, rest))
            break
        replies.append(Reply(status, headers, rest[:length]))
        data = rest[length:]
    return replies


class Probe:
    """Requests to the public listener and the checks on what they caused."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        host, port = stack.url.removeprefix("http://").split(":")
        self.address = (host, int(port))

    def key(self, org: str = ORG) -> str:
        return self.stack.api_key(org)

    def token(self, org: str = ORG, **claims: Any) -> str:
        return self.stack.signing.token(org, **claims)

    def send(self, method: str = "POST", path: str = CHAT, body: bytes | None = None, headers: Headers = (),
             *, source: str = "127.0.0.1", credential: str | None = "key", ip: str | None = US_IP) -> Reply:
        """One request on its own connection. `credential` "key" is ORG's API key, None
        sends none, anything else is sent as `Bearer <credential>`; `ip` is the
        X-Forwarded-For that the trusted proxy (127.0.0.1) vouches for."""
        lines = [f"{method} {path} HTTP/1.1", f"Host: {self.address[0]}:{self.address[1]}", "Connection: close"]
        if credential is not None:
            lines.append(f"Authorization: Bearer {self.key() if credential == 'key' else credential}")
        if ip is not None:
            lines.append(f"X-Forwarded-For: {ip}")
        lines += [f"{name}: {value}" for name, value in headers]
        if body is not None:
            lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
        data = ("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b"")
        replies = self.raw(data, source=source)
        assert len(replies) == 1, replies
        return replies[0]

    def raw(self, data: bytes, *, source: str = "127.0.0.1", timeout: float = 5.0) -> list[Reply]:
        """Bytes as sent, on one connection; every response read until the server closes
        it (or stays quiet for a moment after answering)."""
        received = b""
        with socket.create_connection(self.address, timeout=timeout, source_address=(source, 0)) as sock:
            sock.sendall(data)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                sock.settimeout(0.5 if received else max(0.1, deadline - time.monotonic()))
                try:
                    chunk = sock.recv(65536)
                except TimeoutError:
                    if received:
                        break
                    continue
                except ConnectionResetError:
                    break
                if not chunk:
                    break
                received += chunk
        return parse_replies(received)

    # Checks

    def denied(self, reply: Reply, *statuses: int, api: str = "openai") -> None:
        """Refused with one of `statuses`, in the API's error shape, and nothing forwarded."""
        assert reply.status in statuses, reply
        error_shape(reply, api)
        self.nothing_forwarded()

    def settle(self) -> None:
        """Let the upstream's loop finish recording anything already sent to it."""
        self.stack.thread.run(asyncio.sleep(0.02))

    def nothing_forwarded(self) -> None:
        self.settle()
        assert self.stack.received == [], f"reached the upstream: {self.stack.received}"

    def allowed(self, reply: Reply, org: str = ORG, model: str = PLAIN, path: str = CHAT) -> Any:
        """Answered by the upstream, which saw one request: the decided org, model and path,
        the gateway's own headers, and no client-only ones."""
        assert reply.status == 200, reply
        [seen] = self.stack.received
        assert (seen.method, seen.path) == ("POST", path), seen
        assert seen.json()["model"] == model
        headers = seen.headers
        assert headers.get("x-gateway-org") == org, headers
        assert headers.get("x-gateway-decision-id") == reply.header("x-gateway-decision-id"), headers
        assert set(seen.gateway_headers) == {"x-gateway-org", "x-gateway-decision-id"}, headers
        leaked = {name: headers[name] for name in CLIENT_ONLY if name in headers}
        assert not leaked, f"client headers reached the upstream: {leaked}"
        return seen


def error_shape(reply: Reply, api: str = "openai") -> None:
    """The gateway's own answer, in the error shape (docs/errors.md) of the route's API."""
    assert reply.status != 500 and reply.status >= 400, reply
    assert reply.header("x-gateway-decision-id"), f"not answered by the gateway: {reply}"
    body = json.loads(reply.body)
    if api == "anthropic":
        assert body["type"] == "error" and set(body["error"]) == {"type", "message"}, body
    else:
        assert set(body["error"]) == {"message", "type", "param", "code"}, body
        assert isinstance(body["error"]["code"], str)


def embargo_cn(texts: dict[str, str]) -> None:
    texts["jurisdictions.yaml"] = texts["jurisdictions.yaml"].replace(
        "embargoed:\n    countries: [CU, IR, KP]", "embargoed:\n    countries: [CU, IR, KP, CN]")
    assert "[CU, IR, KP, CN]" in texts["jurisdictions.yaml"]


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    directory = tmp_path_factory.mktemp("adversarial")
    stack = Stack(directory, policy_dir=policy_variant(directory / "policy", embargo_cn))
    yield stack
    stack.close()


@pytest.fixture
def gw(stack: Stack, caplog: pytest.LogCaptureFixture) -> Iterator[Probe]:
    """The probe, on a fresh upstream record; afterwards, no request may have ended in an
    exception the gateway caught (it answers those 503, which would hide a crash)."""
    stack.upstream.app.reset()
    caplog.set_level(logging.ERROR, logger="gateway")
    yield Probe(stack)
    crashes = [r.getMessage() for r in caplog.get_records("call")
               if r.name.startswith("gateway") and r.levelno >= logging.ERROR]
    assert not crashes, crashes


__all__ = ["CHAT", "CN_IP", "COVERED", "MESSAGES", "ORG", "PLAIN", "US_IP", "Probe", "Reply", "b64", "chat_body",
           "error_shape"]

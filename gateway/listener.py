"""The public listener's HTTP/1.1 protocol: uvicorn's httptools protocol, except for
requests its parser refuses (conflicting or duplicate framing headers, obfuscated
Transfer-Encoding, bare LF, NUL bytes, CONNECT, an HTTP/2 preface, ...). uvicorn
answers those with a plain-text 400 the gateway never sees; here they get the API's
own error shape and an audit record, like every other refusal. Nothing of such a
request is ever forwarded: it never reaches the application. Upgrade requests reach
it as ordinary requests, which it refuses.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Protocol

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class Refuser(Protocol):
    def refuse_unparsable(self, peer: str | None) -> tuple[bytes, bytes]:
        """Record the refusal; return (decision id, JSON body)."""


class _CutShortIsDeliberate(logging.Filter):
    """The gateway leaves an answer incomplete on purpose when it cannot finish it (an
    upstream cut off mid-body, a revocation): it logs why itself, so uvicorn's error
    line for the same event is noise that looks like a bug."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.msg != "ASGI callable returned without completing response."


class _OneWritePerTurn:
    """A connection's transport that joins the writes of one event-loop turn into one.
    uvicorn writes an answer's head, body and end with a write() each: each one a
    system call and, on a local socket, the reader's wake-up. Joined, an answer whose
    body is at hand leaves in one. Everything else is the transport's own."""

    __slots__ = ("_transport", "_loop", "_pending")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []

    def write(self, data: bytes) -> None:
        if not self._pending:
            self._loop.call_soon(self._flush)
        self._pending.append(data)

    def _flush(self) -> None:
        pending, self._pending = self._pending, []
        if not self._transport.is_closing():
            self._transport.write(b"".join(pending))

    def close(self) -> None:
        if self._pending:
            self._flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


def protocol_for(gateway: Refuser) -> type[HttpToolsProtocol]:
    if not any(isinstance(f, _CutShortIsDeliberate) for f in logging.getLogger("uvicorn.error").filters):
        logging.getLogger("uvicorn.error").addFilter(_CutShortIsDeliberate())

    class GatewayProtocol(HttpToolsProtocol):
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self.transport = _OneWritePerTurn(transport, self.loop)  # type: ignore[assignment]

        def send_400_response(self, msg: str) -> None:
            decision_id, body = gateway.refuse_unparsable(self.client[0] if self.client else None)
            head = [b"HTTP/1.1 400 Bad Request\r\n", *(b"%s: %s\r\n" % pair for pair in self.server_state.default_headers),
                    b"content-type: application/json\r\n", b"content-length: %d\r\n" % len(body),
                    b"x-gateway-decision-id: %s\r\n" % decision_id, b"connection: close\r\n\r\n"]
            self.transport.write(b"".join(head) + body)
            self.transport.close()

        def _unsupported_upgrade_warning(self) -> None:
            pass  # uvicorn would advise installing a WebSocket library; the gateway refuses upgrades

    return GatewayProtocol

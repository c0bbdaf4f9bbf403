"""The listeners' HTTP/1.1 protocol: uvicorn's httptools protocol, with limits on
what one client may cost, and refusals in the API's own shape.

Requests its parser refuses (conflicting or duplicate framing headers, obfuscated
Transfer-Encoding, bare LF, NUL bytes, CONNECT, an HTTP/2 preface, ...) would get
uvicorn's plain-text 400, which the gateway never sees; here they get the API's
error shape and an audit record, like every other refusal. Nothing of such a
request is ever forwarded: it never reaches the application. Upgrade requests
reach it as ordinary requests, which it refuses.

The limits (config `limits`, docs/operators.md "Limits on the listeners"):

- the request head (request line, header fields, and a chunked body's trailer
  fields) may take `max_header_bytes` in all, `max_header_line_bytes` a line, and
  `max_headers` fields: 431 (414 for the request line). llhttp sets no size limit
  and httptools joins the pieces of a field it receives by concatenation, so one
  endless header would grow memory without end and cost quadratic time: the bytes
  are counted as they arrive, and the parser is never fed more than the head may
  still take;
- the head must arrive within `head_timeout_s` of the connection (or of its first
  byte, for a later request on a kept-alive connection): 408, or a silent close
  when nothing came at all. The body has `body_timeout_s` from the end of the
  head: the application answers 408 if it is still reading it, and the connection
  is closed once the answer is out;
- at most `max_connections` connections at once: the next one is answered 503 with
  Retry-After, and closed.

A refused connection is closed in stages (RFC 9112 §9.6): the answer, then a FIN,
then whatever the client still sends is read and dropped until it closes or
LINGER_S pass. Closing at once, with its request unread, would make the kernel
reset the connection, and the client could lose the answer.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from http import HTTPStatus
from typing import Any, Protocol

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from gateway.config import LimitsConfig

LINGER_S = 2.0      # at most this long reading (and dropping) a refused client's bytes
RETRY_AFTER_S = 1   # Retry-After of the 503 that refuses a connection over the cap


class Refuser(Protocol):
    def refuse(self, peer: str | None, status: int, error: str, message: str) -> tuple[list[tuple[bytes, bytes]], bytes]:
        """Record a refusal made before the application saw the request; return the
        answer's extra headers and its JSON body."""


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
    body is at hand leaves in one. close() is the protocol's (a staged close when the
    client may still be sending); everything else is the transport's own."""

    __slots__ = ("_transport", "_loop", "_pending", "_protocol")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop, protocol: Any) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []
        self._protocol = protocol

    def write(self, data: bytes) -> None:
        if not self._pending:
            self._loop.call_soon(self.flush)
        self._pending.append(data)

    def flush(self) -> None:
        pending, self._pending = self._pending, []
        if pending and not self._transport.is_closing():
            self._transport.write(b"".join(pending))

    def close(self) -> None:
        self._protocol.close_connection()

    def is_closing(self) -> bool:
        return self._protocol.lingering or self._transport.is_closing()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


# The scope key under which the listener hands the application a refusal of the body it
# is reading (status, message): read_body() answers it (gateway/request/app.py).
REFUSAL = "gateway.refusal"
# The scope key under which the application leaves what to call when the client goes away
# before its answer is complete (on_client_gone).
CLIENT_GONE = "gateway.client_gone"


def on_client_gone(scope: Any, callback: Callable[[], None]) -> bool:
    """Have the listener call `callback` the moment this request's client goes away with
    its answer incomplete: no task or timer per request waits for it. False, and no call,
    when the client has gone already."""
    return scope.setdefault(CLIENT_GONE, callback) is callback


def _gone() -> None:
    """What the listener leaves under CLIENT_GONE when the client went before anything was."""


class _Refused(Exception):
    """Raised in a parser callback to stop the parser at a limit."""


def protocol_for(refuser: Refuser, limits: LimitsConfig, max_connections: int) -> type[HttpToolsProtocol]:
    """The protocol class of one listener: its own connection count and cap."""
    if not any(isinstance(f, _CutShortIsDeliberate) for f in logging.getLogger("uvicorn.error").filters):
        logging.getLogger("uvicorn.error").addFilter(_CutShortIsDeliberate())
    closing: set[asyncio.Transport] = set()  # this listener's connections being closed in stages

    class GatewayProtocol(HttpToolsProtocol):
        lingering = False

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self.raw = transport
            self.transport = _OneWritePerTurn(transport, self.loop, self)  # type: ignore[assignment]
            self.head_left: int | None = limits.max_header_bytes  # bytes the head may still take; None in a body
            self.in_body = False  # between a request's head and its end
            self.deadline: asyncio.TimerHandle | None = None
            self.refusal: tuple[int, str, str] | None = None
            self.pending: tuple[int, str, str] | None = None  # to answer once the answer under way is out
            self.reading = True  # False once refused: the parser is fed nothing more
            if len(self.connections) > max_connections:
                self.refuse(503, "too_many_connections", "The gateway has too many open connections; retry shortly.",
                            [(b"retry-after", b"%d" % RETRY_AFTER_S)])
                return
            self.deadline = self.loop.call_later(limits.head_timeout_s, self.head_timed_out)

        def connection_lost(self, exc: Exception | None) -> None:
            self.cancel_deadline()
            closing.discard(self.raw)
            super().connection_lost(exc)
            cycle = self.cycle
            if cycle is not None and cycle.disconnected:  # its answer incomplete
                cycle.scope.setdefault(CLIENT_GONE, _gone)()  # type: ignore[misc]

        # Reading: the head counted, and never more fed to the parser than it may take

        def data_received(self, data: bytes) -> None:
            if not self.reading:
                return  # refused (answered, or to be): what the client still sends is read and dropped
            self._unset_keepalive_if_required()
            view = memoryview(data)
            while view and self.reading:
                left = self.head_left
                if left is None:
                    piece, view = view, view[len(view):]
                elif left == 0:
                    return self.refuse(431, "header_too_large", f"The request head is larger than {limits.max_header_bytes} bytes.")
                else:
                    piece, view = view[:left], view[left:]
                    self.head_left = left - len(piece)
                try:
                    self.parser.feed_data(piece)
                except httptools.HttpParserUpgrade:
                    return  # the application refuses it; nothing after the upgrade point is read
                except httptools.HttpParserError:
                    status, error, message = self.refusal or (400, "malformed_http", "The request is not valid HTTP/1.1.")
                    return self.refuse(status, error, message)
            # A deadline only for a head or body still incomplete once these bytes are read:
            # a request that arrives whole (nearly all do) costs no timer.
            if self.deadline is None and self.reading:
                if self.in_body:
                    self.deadline = self.loop.call_later(limits.body_timeout_s, self.body_timed_out)
                elif self.head_left is not None and self.head_left < limits.max_header_bytes:
                    self.deadline = self.loop.call_later(limits.head_timeout_s, self.head_timed_out)

        def on_url(self, url: bytes) -> None:
            super().on_url(url)
            if len(self.url) > limits.max_header_line_bytes:
                self.stop(414, "uri_too_long", f"The request target is longer than {limits.max_header_line_bytes} bytes.")

        def on_headers_complete(self) -> None:
            # The fields are checked once they are all here, not one by one: the head was
            # never fed past `max_header_bytes`, so what they can cost until then is bounded.
            # Counted exactly here too: a pipelined request's head can start inside a piece
            # fed while the one before it was being read, where the piece was not counted.
            if len(self.headers) > limits.max_headers:
                self.stop(431, "too_many_headers", f"The request has more than {limits.max_headers} header fields.")
            lines = [len(name) + len(value) for name, value in self.headers]
            if max(lines, default=0) > limits.max_header_line_bytes:
                self.stop(431, "header_too_large", f"A header field is longer than {limits.max_header_line_bytes} bytes.")
            if sum(lines) + 4 * len(lines) + len(self.url) > limits.max_header_bytes:  # ": " and CRLF
                self.stop(431, "header_too_large", f"The request head is larger than {limits.max_header_bytes} bytes.")
            super().on_headers_complete()  # may raise (an unparsable target): still a head, refused as such
            # uvicorn appends a chunked body's trailer fields to the list the application
            # reads as the head, after the head was decided on: they go to a list of their own,
            # never read (bounded like a head by `head_left`), and so never forwarded.
            self.headers = []
            self.head_left, self.in_body = None, True
            self.cancel_deadline()  # the body's, if it is not all here, starts in data_received

        def on_chunk_header(self) -> None:
            # The last chunk's trailer fields follow its header: they count like a head's.
            self.head_left = limits.max_header_bytes

        def on_body(self, body: bytes) -> None:
            self.head_left = None
            super().on_body(body)

        def on_chunk_complete(self) -> None:
            self.head_left = None

        def on_message_complete(self) -> None:
            self.head_left, self.in_body = limits.max_header_bytes, False  # the next request's head
            self.cancel_deadline()
            super().on_message_complete()

        def stop(self, status: int, error: str, message: str) -> None:
            self.refusal = (status, error, message)
            raise _Refused(error)

        # Deadlines

        def cancel_deadline(self) -> None:
            if self.deadline is not None:
                self.deadline.cancel()
                self.deadline = None

        def head_timed_out(self) -> None:
            self.deadline = None
            if self.head_left == limits.max_header_bytes:
                self.close_connection()  # not a byte of a request: an idle connection, no request to answer
            else:
                self.refuse(408, "head_timeout", f"The request head was not received within {limits.head_timeout_s:g} s.")

        def body_timed_out(self) -> None:
            """The body is not all here: refused (the application answers 408 if it is still
            reading it; a body still arriving after its answer just loses its connection)."""
            self.deadline = None
            self.refuse(408, "body_timeout", f"The request body was not received within {limits.body_timeout_s:g} s.")

        # Answering and closing

        def send_400_response(self, msg: str) -> None:
            self.refuse(400, "malformed_http", "The request is not valid HTTP/1.1.")

        def refuse(self, status: int, error: str, message: str, extra: list[tuple[bytes, bytes]] | None = None) -> None:
            """Answer a request the application never saw, record it, and close."""
            self.cancel_deadline()
            cycle = self.cycle
            if self.in_body:
                # This request's own body or trailer: the application has the request. If it
                # has not answered yet, it answers this refusal (and records it, once) when it
                # reads the body (gateway/request/app.py read_body); the connection then closes.
                # Nothing more is read.
                if cycle is None or cycle.response_complete:
                    return self.close_connection(linger=True)
                cycle.scope[REFUSAL] = (status, message)  # type: ignore[index]
                cycle.keep_alive = False
                cycle.message_event.set()
                self.reading = False
                return
            if cycle is not None and not cycle.response_complete:
                # A pipelined request behind an answer under way: refused once that is out.
                self.pending = (status, error, message)
                self.reading = False
                return
            headers, body = refuser.refuse(self.client[0] if self.client else None, status, error, message)
            head = [b"HTTP/1.1 %d %s\r\n" % (status, HTTPStatus(status).phrase.encode()),
                    *(b"%s: %s\r\n" % pair for pair in [*self.server_state.default_headers, *headers, *(extra or [])]),
                    b"content-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n" % len(body)]
            self.transport.write(b"".join(head) + body)
            self.close_connection(linger=True)

        def on_response_complete(self) -> None:
            if self.pending is not None:
                status, error, message = self.pending
                self.pending = None
                self.cycle = None  # type: ignore[assignment]
                return self.refuse(status, error, message)  # the pipelined request refused meanwhile
            super().on_response_complete()

        def close_connection(self, *, linger: bool | None = None) -> None:
            """Close: at once if the client has nothing more to send, else in stages."""
            if self.lingering:
                return
            self.cancel_deadline()
            self.transport.flush()  # type: ignore[attr-defined]
            raw = self.raw
            unread = self.head_left is None or self.head_left < limits.max_header_bytes
            if not (unread if linger is None else linger) or len(closing) >= max_connections or not raw.can_write_eof():
                raw.close()
                return
            self.lingering, self.reading = True, False
            self.connections.discard(self)  # no longer counts against the cap
            closing.add(raw)
            raw.write_eof()
            raw.resume_reading()
            self.deadline = self.loop.call_later(LINGER_S, raw.close)

        def eof_received(self) -> None:
            pass  # the client is done sending: the transport closes, as uvicorn's does

        def _unsupported_upgrade_warning(self) -> None:
            pass  # uvicorn would advise installing a WebSocket library; the gateway refuses upgrades

    return GatewayProtocol

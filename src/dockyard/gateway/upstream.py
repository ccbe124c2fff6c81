"""One keep-alive HTTP/1.1 connection to a model server: asyncio's Protocol API, httptools (the
parser uvicorn uses) reading the replies, or, for a whole simple reply that came in one read,
simplehead.py, which parses it in one step as httptools would.

A general-purpose client spends most of a proxied request in layers a proxy does not need
(a task-group per call, a lock per read and write, per-header validation, an event-driven
HTTP/1.1 state machine in Python). Here a request is one `transport.write` of the request
head and the first body chunk, and the reply arrives through parser callbacks straight into
a `Reply` the proxy reads from. Errors are httpx's transport error types, so callers can
treat this and an httpx transport alike.

Flow control both ways: writes wait while the socket's buffer is full, and reading pauses
while more than `READ_HIGH_WATER` bytes of a reply wait for the caller to take them, so a
slow caller never makes the gateway hold a whole reply.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable
from typing import Any, Final

import httptools
import httpx

from dockyard.gateway import deadlines
from dockyard.gateway.simplehead import parse_reply

READ_HIGH_WATER: Final = 256 * 1024
Headers = list[tuple[bytes, bytes]]
_NO_BODY_STATUS: Final = frozenset({204, 304})
# The reply headers `on_header` notes besides keeping them (most replies carry two of these).
_NOTED: Final = frozenset({b"content-length", b"content-type", b"transfer-encoding", b"connection"})
# Byte values, found by `in` without the failed integer conversion `b" " in target` starts with.
SPACE: Final = 0x20
LF: Final = 0x0A
CR: Final = 0x0D
NUL: Final = 0x00


class ClosedUnanswered(httpx.RemoteProtocolError):
    """The connection ended (FIN) before a byte of a reply came back."""


class ResetUnanswered(httpx.ReadError):
    """The connection was reset before a byte of a reply came back."""


class Reply:
    """The reply to one request: status and headers once they are in, then the body as chunks.

    `read()` returns the next chunk (b"" at the end). `complete` tells whether the whole body
    arrived; a reply closed before that takes its connection down with it (the rest of the
    body is still on the wire, nothing else can be sent on it).
    """

    # Defaults as class attributes: an instance stores only what was set, so making one costs a
    # few stores rather than fifteen. (Reading a default through an instance is the slower
    # lookup, though: a subclass made on every request sets those it reads each time, DirectReply.)
    status = 0
    content_type: bytes | None = None
    content_length: bytes | None = None
    chunked = False
    connection_header = False  # the reply has a Connection header (which may name hop-by-hop ones)
    # The header lines relayed to the caller and their count, of a reply parsed in one step (simplehead.py); else None.
    relayed: bytes | None = None
    relayed_count = 0
    complete = False
    _buffered = 0
    _waiter: asyncio.Future[None] | None = None
    _error: Exception | None = None
    _closed = False
    _on_close: Any = None  # called with (connection, reusable) once, by close()

    def __init__(self, connection: UpstreamConnection) -> None:
        self.headers: Headers = []  # names lower-cased
        self._connection = connection
        self._chunks: list[bytes] = []
        self._head: asyncio.Future[None] = connection.loop.create_future()

    @property
    def streaming(self) -> bool:
        """Server-sent events, or a body of unknown length (chunked or close-delimited)."""
        return self.content_length is None or (self.content_type or b"").startswith(b"text/event-stream")

    @property
    def drained(self) -> bool:
        """The whole body arrived and was read."""
        return self.complete and not self._chunks

    # --- the caller's side ------------------------------------------------------------------------

    async def wait_head(self, deadline: float | None = None) -> None:
        """Until the status and headers are in; TimeoutError at `deadline` (the loop's clock)."""
        if not self._head.done():
            if deadline is None:
                await self._head
                return
            # A deadline on the future itself: cheaper than asyncio.timeout_at, which cancels and
            # un-cancels the task, and this wait is on every request's path. A coarse one (at
            # most a tick late, see deadlines.py): a loop timer per request cost more still.
            timer = self._connection.deadlines.add(deadline, _head_time_out, self._head)
            try:
                await self._head
            finally:
                timer.cancel()
        elif self._error is not None and not self.status:
            raise self._error

    async def read(self, timeout_s: float | None = None) -> bytes:
        """The body bytes that arrived since the last call, waiting up to `timeout_s` for some;
        b"" once the body is complete. Raises httpx.ReadTimeout or a transport error."""
        while True:
            if self._chunks:
                chunks, self._chunks = self._chunks, []
                self._buffered = 0
                self._connection.resume_reading()
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)
            if self.complete:
                return b""
            if self._error is not None:
                raise self._error
            waiter = self._waiter = self._connection.loop.create_future()
            timer = None
            if timeout_s is not None:
                connection = self._connection
                timer = connection.deadlines.add(connection.loop.time() + timeout_s, _time_out, waiter, timeout_s)
            try:
                await waiter
            finally:
                self._waiter = None
                if timer is not None:
                    timer.cancel()

    def close(self) -> None:
        """Done with the reply: its connection goes back to the pool if the body was read whole."""
        if self._closed:
            return
        self._closed = True
        connection = self._connection
        reusable = self.complete and connection.keep_alive and not connection.closed
        connection.reply = None
        if not reusable:
            connection.close()
        if self._on_close is not None:
            self._on_close(connection, reusable)

    # --- the connection's side --------------------------------------------------------------------
    # (a subclass may relay the reply as it comes instead: gateway/direct.py)

    def _headed(self) -> None:
        """The status and headers are in."""
        if not self._head.done():
            self._head.set_result(None)

    def _fed(self) -> None:
        """The connection has handed over what one read brought (or its end)."""

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _body(self, data: bytes) -> None:
        self._chunks.append(data)
        self._buffered += len(data)
        if self._buffered > READ_HIGH_WATER:
            self._connection.pause_reading()
        self._wake()

    def _finish(self) -> None:
        self.complete = True
        self._wake()

    def _fail(self, error: Exception) -> None:
        if self.complete or self._error is not None:
            return
        self._error = error
        if not self._head.done():
            self._head.set_exception(error)
            self._head.exception()  # retrieved: a reply nobody waits for must not be reported
        self._wake()


def _head_time_out(head: asyncio.Future[None]) -> None:
    if not head.done():
        head.set_exception(TimeoutError())


def _time_out(waiter: asyncio.Future[None], timeout_s: float) -> None:
    if not waiter.done():
        waiter.set_exception(httpx.ReadTimeout(f"the container sent nothing for {timeout_s:g} s"))


class UpstreamConnection(asyncio.Protocol):
    """One TCP connection carrying one request at a time. `reply` is the exchange in progress."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.deadlines = deadlines.for_loop(loop)
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.reply: Reply | None = None
        self.origin: tuple[str, int] = ("", 0)  # the pool's key for it (host, port)
        self.closed = False
        self.keep_alive = True
        self.idle_since = 0.0
        self._interim = False  # parsing a 1xx reply: its end is not the end of the exchange
        self._head_only = False  # a HEAD request: the reply has headers and no body
        self._reading_paused = False
        # httptools' parser is between messages and would take another: a read may then be
        # parsed in one step instead (`take_simple`), the parser none the wiser.
        self.parser_fresh = True
        self._write_waiter: asyncio.Future[None] | None = None
        self._write_paused = False

    # --- opening, sending ---------------------------------------------------------------------------

    @classmethod
    async def open(cls, host: str, port: int, timeout_s: float | None) -> UpstreamConnection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout_s):
                _, connection = await loop.create_connection(lambda: cls(loop), host, port)
        except TimeoutError as exc:
            raise httpx.ConnectTimeout(f"no connection to {host}:{port} within {timeout_s:g} s") from exc
        except OSError as exc:
            raise httpx.ConnectError(f"{exc.strerror or exc} ({host}:{port})") from exc
        return connection

    def start(self, method: bytes) -> Reply:
        """A new exchange; the caller writes the head (built by `head`) and the body next."""
        reply = self.reply = Reply(self)
        self._interim = False
        self._head_only = method == b"HEAD"
        return reply

    @staticmethod
    def head(method: bytes, target: bytes, headers: Headers) -> bytes:
        """The request line and headers. Raises httpx.LocalProtocolError for a line break or space
        where none may be (a smuggled second request)."""
        lines = [method, b" ", target, b" HTTP/1.1\r\n"]
        for name, value in headers:
            lines += (name, b": ", value, b"\r\n")
        lines.append(b"\r\n")
        head = b"".join(lines)
        # Counting is cheaper than validating each header, and catches every injected CR or LF.
        if head.count(b"\n") != len(headers) + 2 or head.count(b"\r") != len(headers) + 2 or SPACE in target:
            raise httpx.LocalProtocolError("a request header or the request target holds a line break or a space")
        return head

    @staticmethod
    def parsed_head(method: bytes, target: bytes, host: bytes, lines: bytes) -> bytes:
        """`head` for header lines formatted from what dockyard's server parsed (`name: value\\r\\n`
        each) after `host`. The parser (llhttp, strict) refuses a CR, LF or NUL in a header name
        or value, so only the target is checked here: httpx.LocalProtocolError for a line break,
        NUL or space in it. Counting the line ends of the whole head, as `head` does, cost more
        than the rest of building it (a signed request's head is ~1 KiB)."""
        if SPACE in target or LF in target or CR in target or NUL in target:
            raise httpx.LocalProtocolError("the request target holds a line break, a NUL or a space")
        return b"%b %b HTTP/1.1\r\nhost: %b\r\n%b\r\n" % (method, target, host, lines)

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(data)

    async def drain(self) -> None:
        if self._write_paused and not self.closed:
            waiter = self._write_waiter = self.loop.create_future()
            await waiter

    def send_whole(self, head: bytes, body: bytes | None, chunked: bool) -> None:
        """Write the head and a body at hand in one write (re-framed as one chunk when `chunked`)."""
        if chunked:
            self.write(head + (b"%x\r\n%b\r\n0\r\n\r\n" % (len(body), body) if body else b"0\r\n\r\n"))
        else:
            self.write(head + body if body else head)

    async def send_body(self, head: bytes, body: AsyncIterable[bytes], chunked: bool) -> None:
        """Write the head and a streamed body (re-framed as chunks when `chunked`). Stops quietly
        when the connection closes under it: the container may have answered early, and its reply
        (or the lack of one) tells the rest."""
        pending = head
        async for chunk in body:
            if not chunk:
                continue
            data = b"%x\r\n%b\r\n" % (len(chunk), chunk) if chunked else chunk
            if pending:  # the head goes out with the first chunk: one write for a small request
                data, pending = pending + data, b""
            self.write(data)
            if self.closed:
                return
            await self.drain()
        if chunked:
            self.write(pending + b"0\r\n\r\n")
        elif pending:
            self.write(pending)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self.transport is not None:
                self.transport.close()

    # --- flow control ---------------------------------------------------------------------------------

    def pause_reading(self) -> None:
        if not self._reading_paused and self.transport is not None:
            self._reading_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self._reading_paused and self.transport is not None and not self.closed:
            self._reading_paused = False
            self.transport.resume_reading()

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        self._release_writer()

    def _release_writer(self) -> None:
        waiter, self._write_waiter = self._write_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # --- asyncio.Protocol -------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        reply = self.reply
        if reply is None:  # bytes nobody asked for: whatever the server meant, this connection is done
            self.close()
            return
        if self.parser_fresh and not self._head_only:
            simple = parse_reply(data)
            if simple is not None:
                status, headers, length, content_type, body, relayed, count = simple
                self.take_simple(status, headers, length, content_type, body, relayed, count)
                reply._fed()
                return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            reply._fail(httpx.RemoteProtocolError("the container switched protocols, which the gateway does not relay"))
            self.close()
        except httptools.HttpParserError as exc:
            reply._fail(httpx.RemoteProtocolError(f"the container's reply is not valid HTTP/1.1 ({exc})"))
            self.close()
        else:
            reply._fed()

    def eof_received(self) -> bool | None:
        return None  # close the transport: a half-closed upstream cannot take another request

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._release_writer()
        reply = self.reply
        if reply is None or reply.complete:
            return
        if reply.status and not reply.chunked and reply.content_length is None:
            reply._finish()  # a close-delimited body ends with the connection
        elif reply.status:
            reply._fail(httpx.RemoteProtocolError("the container closed the connection in the middle of its reply"))
        elif exc is not None:
            reply._fail(ResetUnanswered(f"the connection to the container failed before a reply ({exc})"))
        else:
            reply._fail(ClosedUnanswered("the container closed the connection without replying"))
        reply._fed()

    def take_simple(self, status: int, headers: Headers, length: bytes, content_type: bytes | None, body: bytes,
                    relayed: bytes, count: int) -> None:  # fmt: skip
        """One whole reply that came in one read, parsed in one step (gateway/simplehead.py):
        what httptools' callbacks would have made of it, in their order, and the header lines the
        gateway relays of it."""
        reply: Reply = self.reply  # type: ignore[assignment]
        reply.headers = headers
        reply.relayed = relayed
        reply.relayed_count = count
        reply.content_length = length
        reply.content_type = content_type
        self._interim = False
        reply.status = status
        self.keep_alive = True
        reply._headed()
        if body:
            self.on_body(body)
        self.on_message_complete()

    # --- httptools callbacks --------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self.parser_fresh = False

    def on_header(self, name: bytes, value: bytes) -> None:
        # (data_received parses only while there is a reply)
        name = name.lower()  # kept lower-cased: every reader of the reply's headers compares them so
        reply: Reply = self.reply  # type: ignore[assignment]
        reply.headers.append((name, value))
        if name in _NOTED:
            if name == b"content-length":
                reply.content_length = value
            elif name == b"content-type":
                reply.content_type = value
            elif name == b"transfer-encoding":
                if b"chunked" in value.lower():
                    reply.chunked = True
            else:
                reply.connection_header = True

    def on_headers_complete(self) -> None:
        reply = self.reply
        assert reply is not None
        status = self.parser.get_status_code()
        if 100 <= status < 200 and status != 101:  # 100 Continue and friends: the real reply follows
            self._interim = True
            reply.headers, reply.content_length, reply.content_type, reply.chunked = [], None, None, False
            reply.connection_header = False
            return
        self._interim = False
        reply.status = status
        self.keep_alive = self.parser.should_keep_alive()
        if status in _NO_BODY_STATUS:
            reply.content_length = reply.content_length or b"0"
        reply._headed()
        if self._head_only:
            # Headers only, whatever Content-Length says; the parser would wait for that many
            # bytes, so this connection is not reused.
            reply.content_length = reply.content_length or b"0"
            self.keep_alive = False
            reply._finish()

    def on_body(self, body: bytes) -> None:
        reply = self.reply
        if reply is not None and not self._head_only:
            reply._body(body)

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
            return
        self.parser_fresh = self.keep_alive  # (after a reply that ends its connection, llhttp takes nothing more)
        reply = self.reply
        if reply is not None and not reply.complete:
            reply._finish()

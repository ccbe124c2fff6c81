"""One HTTP/1.1 request and its response, as the ASGI `receive` and `send` of one app call
(the server in httpserver.py parses the request and runs the call).

`receive()` hands over the request body as it arrives and makes a future only when it has to
wait; `send()` frames the response: the head goes out in the same write as the first body part
(one syscall and one TCP segment for a small reply), or on the loop's next turn when that part
is late; a body without a length is sent chunked; a header holding CR, LF or NUL is refused
before anything is written.
"""

from __future__ import annotations

import asyncio
import email.utils
import http
import json
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from dockyard.gateway.httpconnection import Connection

READ_HIGH_WATER: Final = 64 * 1024  # unread request body bytes past which reading pauses
CONTINUE: Final = b"HTTP/1.1 100 Continue\r\n\r\n"
STATUS_LINES: Final = {s.value: b"HTTP/1.1 %d %s\r\n" % (s.value, s.phrase.encode("ascii")) for s in http.HTTPStatus}
NO_BODY_STATUSES: Final = frozenset({204, 304})
_WITHOUT_CHUNKED: Final = frozenset({"1.0", "0.9"})  # request versions a body of unknown length is sent to close-delimited
# A byte's value: `0 in data` finds a NUL at once, where `b"\0" in data` first fails to read its
# operand as an integer (raising and clearing a TypeError inside bytes.__contains__).
NUL: Final = 0


# The scope key under which the server says why it cut a caller off (httpconnection.py,
# `Connection.send_timed_out`), for the app's record of the request.
CUT_KEY: Final = "dockyard.cut"


def status_line(status: int) -> bytes:
    """The status line; a code without a known reason phrase gets none (which HTTP allows)."""
    line = STATUS_LINES.get(status)
    return line if line is not None else b"HTTP/1.1 %d \r\n" % status


def default_head() -> bytes:
    """The headers every response carries, formatted once per second by the sweep."""
    return b"server: dockyard\r\ndate: " + email.utils.formatdate(usegmt=True).encode("ascii") + b"\r\n"


def error_reply(status: int, code: str, message: str, head: bytes) -> bytes:
    """A whole JSON error response that closes the connection (the errors the project answers)."""
    body = json.dumps({"code": code, "message": message}).encode()
    return b"".join((
        status_line(status), head, b"content-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n" % len(body), body,
    ))  # fmt: skip


def _disconnect() -> dict[str, Any]:
    return {"type": "http.disconnect"}


def wake_all(waiters: list[asyncio.Future[None]] | None) -> None:
    if waiters:
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)
        waiters.clear()


class Cycle:
    """One request and its response: the ASGI `receive` and `send` of one app call."""

    __slots__ = (
        "conn", "scope", "keep_alive", "expect_continue", "is_head",
        "body", "buffered", "message_complete", "delivered", "waiters",
        "started", "complete", "body_allowed", "chunked", "remaining", "pending_head", "on_lost", "on_writable", "by_name",
        "relayed",
    )  # fmt: skip

    def __init__(self, conn: Connection, scope: dict[str, Any], keep_alive: bool, expect_continue: bool) -> None:
        self.conn = conn
        self.scope = scope
        self.keep_alive = keep_alive
        self.expect_continue = expect_continue
        self.is_head = scope["method"] == "HEAD"
        self.body: list[bytes] = []
        self.buffered = 0  # request body bytes received, not yet taken by receive()
        self.message_complete = False  # the whole request body has arrived
        self.delivered = False  # ... and receive() has returned its last part
        self.waiters: list[asyncio.Future[None]] | None = None  # receive() calls waiting
        self.started = False
        self.complete = False
        self.body_allowed = True
        self.chunked = False
        self.remaining = -1  # bytes still due under Content-Length; -1 without one
        self.pending_head: bytes | None = None  # the response head, written with the first body part
        self.on_lost: Any = None  # called if the connection is lost before the response is complete
        self.on_writable: Any = None  # called when the connection takes writes again (a direct reply)
        self.by_name: dict[bytes, bytes] | None = None  # the headers by name (the last of a repeated one), once an app made it
        # The header lines the gateway forwards of a request parsed in one step (simplehead.py), else None.
        self.relayed: list[bytes] | None = None

    def notify_lost(self, callback: Any) -> None:
        """The app's `scope["dockyard.notify_lost"]`: call `callback()` (once, on the event loop)
        if the connection is lost before the response is complete. A proxy learns so at once,
        without a task waiting in `receive()` for `http.disconnect`."""
        if self.conn.closed and not self.complete:
            callback()  # lost already (its receive() says http.disconnect)
        else:
            self.on_lost = callback

    # --- the whole body, for an app that serves the request without a task (`direct`) ----------

    def whole_body(self) -> bytes:
        """The request body, once `message_complete`: every part received, in one bytes."""
        body = self.body
        if len(body) == 1:
            return body[0]
        whole = b"".join(body)
        self.body = [whole] if whole else []
        return whole

    def take_body(self) -> bytes:
        """The whole body, handed over: `receive()` has nothing more to give."""
        body = self.body
        whole = body[0] if len(body) == 1 else b"".join(body)
        self.body = []
        self.buffered = 0
        self.delivered = True
        return whole

    def give_back_body(self, body: bytes) -> None:
        """Undo `take_body` (a request handed from a direct reply to an app call)."""
        self.body = [body] if body else []
        self.delivered = False

    # --- receive ------------------------------------------------------------------------------

    async def receive(self) -> dict[str, Any]:
        conn = self.conn
        if conn.closed or self.complete:
            return _disconnect()
        if self.expect_continue:
            self.expect_continue = False
            if not self.started:
                conn.transport.write(CONTINUE)
                conn.read_wanted = conn.loop.time()  # the caller sends its body from now
        while self.delivered or not (self.body or self.message_complete):
            conn.update_reading()  # this call wants data: a paused read must go on
            waiter = conn.loop.create_future()
            if self.waiters is None:
                self.waiters = [waiter]
            else:
                self.waiters.append(waiter)
            try:
                await waiter
            finally:
                if self.waiters and waiter in self.waiters:  # cancelled: not woken
                    self.waiters.remove(waiter)
            if conn.closed or self.complete:
                return _disconnect()
        body = self.body
        if body:
            data = body[0] if len(body) == 1 else b"".join(body)
            self.body = []
        else:
            data = b""
        more = not self.message_complete
        self.delivered = not more
        if self.buffered > READ_HIGH_WATER:
            self.buffered = 0
            conn.update_reading()
        else:
            self.buffered = 0
        return {"type": "http.request", "body": data, "more_body": more}

    def wake(self) -> None:
        wake_all(self.waiters)

    # --- send ---------------------------------------------------------------------------------

    async def send(self, message: dict[str, Any]) -> None:
        conn = self.conn
        if conn.write_paused and not conn.closed:
            await conn.drain()
        if conn.closed:
            return  # the caller went away: what the app sends goes nowhere
        kind = message["type"]
        if not self.started:
            if kind != "http.response.start":
                raise RuntimeError(f"the response must begin with 'http.response.start', not {kind!r}")
            self.start_response(message["status"], message.get("headers") or ())
            # The body nearly always follows at once: head and body then go in one write (one
            # syscall, one segment); the loop's next turn writes the head alone if it is late.
            conn.loop.call_soon(self._flush_head)
        elif kind == "http.response.body":
            if self.complete:
                raise RuntimeError("'http.response.body' after the response completed")
            more = message.get("more_body", False)
            self._write_body(message.get("body", b""), more)
            if not more:
                self._finish()
        else:
            raise RuntimeError(f"{kind!r} after 'http.response.start'")

    def start_response(self, status: int, headers: Any) -> None:
        """The response head, kept to go out with the first body part (`write_body`); raises
        RuntimeError for a header that would split the response."""
        self.pending_head = self._head(status, headers)
        self.started = True

    def write_body(self, body: bytes, more: bool) -> None:
        """One part of the response body (the pending head in front of it); the last one when
        not `more`. Nothing is written once the connection is closed."""
        if self.conn.closed:
            return
        self._write_body(body, more)
        if not more:
            self._finish()

    def write_last(self, body: bytes) -> None:
        """`write_body(body, False)` for the whole body at once, the commonest reply a proxy
        relays: under a content-length it matches, it goes out in one write behind the head."""
        if self.conn.closed:
            return
        head = self.pending_head
        if head is not None and self.remaining == len(body) < 65536 and self.body_allowed and not self.chunked:
            self.pending_head = None
            self.remaining = 0
            self.conn.transport.write(head + body)
        else:  # the general framing, and its errors
            self._write_body(body, False)
        self._finish()

    def write_whole(self, status: int, lines: bytes, length: int, body: bytes) -> bool:
        """`start_formatted` then `write_last` in one step, for a relayed reply whose whole body
        is at hand: `lines` as `start_formatted` takes them, made from headers an HTTP parser
        gave (llhttp, strict: no CR, LF or NUL in a name or value, so they are not searched for
        here), `length` the content-length among them. False (nothing done) unless it is the
        plain case: a small body of that length, a status that has one, the connection kept open."""
        conn = self.conn
        if (length != len(body) or length >= 65536 or status < 200 or status in NO_BODY_STATUSES or self.is_head
                or not self.keep_alive or conn.closed or self.started):  # fmt: skip
            return False
        line = STATUS_LINES.get(status)
        head = b"%b%b%b\r\n" % (status_line(status) if line is None else line, conn.server.default_head, lines)
        self.started = True
        self.remaining = 0
        conn.transport.write(head + body)
        if self.buffered or self.waiters or self.body:  # (a body taken whole leaves none of these)
            self._finish()
        else:
            self.complete = True  # `_finish`, when no body is unread, no receive() waits, the connection stays
        return True

    def start_formatted(self, status: int, lines: bytes, count: int, length: int) -> None:
        """`start_response` for headers already formatted: `count` lines of `name: value\\r\\n`
        (relayed by the gateway), none of them `connection` or `transfer-encoding`; `length` is
        the content-length among them, or -1. Raises RuntimeError as `start_response` does."""
        self.pending_head = self._framed(status, lines, count, length, False, self.keep_alive, False, None)
        self.started = True

    def _head(self, status: int, headers: Any) -> bytes:
        """The response head; raises RuntimeError for a header that would split the response."""
        parts: list[bytes] = []
        keep_alive = self.keep_alive
        closing = False  # the app wrote `connection: close` itself
        length = -1
        chunked = False
        for name, value in headers:
            name = name.lower()
            if name == b"content-length":
                try:
                    length = int(value)
                except ValueError:
                    raise RuntimeError(f"content-length {value!r} is not a number") from None
            elif name == b"connection":
                if b"close" in value.lower():
                    keep_alive = False
                    closing = True
            elif name == b"transfer-encoding":
                chunked = value.lower() == b"chunked"
            parts += (name, b": ", value, b"\r\n")
        return self._framed(status, b"".join(parts), len(parts) // 4, length, chunked, keep_alive, closing, headers)

    def _framed(self, status: int, lines: bytes, count: int, length: int, chunked: bool, keep_alive: bool, closing: bool,
                headers: Any) -> bytes:  # fmt: skip
        """The head around the app's header lines (`count` of them): the status line, the
        server's own headers, the framing and connection headers the app did not write."""
        body_allowed = not self.is_head and status >= 200 and status not in NO_BODY_STATUSES
        count += 4  # the status line, server, date, and the empty line that ends the head
        tail = b"\r\n"
        if length < 0 and not chunked and body_allowed:
            if self.scope.get("http_version") in _WITHOUT_CHUNKED:
                # HTTP/1.0 has no chunked framing (RFC 9112 §6.1): the body ends with the connection.
                keep_alive = False
            else:
                chunked = True
                tail = b"transfer-encoding: chunked\r\n" + tail
                count += 1
        if not keep_alive and not closing:
            tail = b"connection: close\r\n" + tail
            count += 1
        head = b"".join((status_line(status), self.conn.server.default_head, lines, tail))
        # One count over the whole head rather than a search per header: every CR and LF must
        # be one of the line ends written above, and no NUL may appear.
        if head.count(b"\n") != count or head.count(b"\r") != count or NUL in head:
            raise RuntimeError(f"response header {_offending(headers) if headers is not None else lines!r} holds CR, LF or NUL")
        self.keep_alive = keep_alive
        self.body_allowed = body_allowed
        self.chunked = chunked and body_allowed
        self.remaining = length if body_allowed and not chunked else -1
        return head

    def _write_body(self, body: bytes, more: bool) -> None:
        """Frames one body message and writes it, behind the head when that still waits."""
        if not self.body_allowed:
            parts = []
        elif self.chunked:
            if body:
                parts = [b"%x\r\n" % len(body), body, b"\r\n" if more else b"\r\n0\r\n\r\n"]
            else:  # an empty chunk would end the reply: only the last message writes one
                parts = [] if more else [b"0\r\n\r\n"]
        else:
            if self.remaining >= 0:
                self.remaining -= len(body)
                if self.remaining < 0:
                    raise RuntimeError("the response body is longer than its content-length")
                if not more and self.remaining > 0:
                    raise RuntimeError("the response body is shorter than its content-length")
            parts = [body]
        head = self.pending_head
        if head is not None:
            self.pending_head = None
            parts.insert(0, head)
        if len(body) < 65536:  # small: one copy is cheaper than a vector of parts
            data = b"".join(parts)
            if data:
                self.conn.transport.write(data)
        else:
            self.conn.transport.writelines(parts)

    def _flush_head(self) -> None:
        head = self.pending_head
        if head is not None:
            self.pending_head = None
            if not self.conn.closed:
                self.conn.transport.write(head)

    def _finish(self) -> None:
        self.complete = True
        self.body = []
        if self.buffered > READ_HIGH_WATER:  # an unread body must not keep reading paused
            self.buffered = 0
            self.conn.update_reading()
        self.buffered = 0
        if self.waiters:  # a receive() waiting (a disconnect watch) returns http.disconnect
            wake_all(self.waiters)
        if not self.keep_alive:
            self.conn.close()


def _offending(headers: Any) -> bytes:
    for name, value in headers:
        for part in (name, value):
            if b"\r" in part or b"\n" in part or b"\0" in part:
                return bytes(name)
    return b""

"""A small HTTP/1.1 server for ASGI 3 apps, serving the gateway role.

The gateway proxies many small requests, and a general-purpose ASGI server spends more CPU per
request than the proxying itself: an Event and a keep-alive timer per request, a middleware
layer, regular expressions per response header, task callbacks. This server does what the
gateway needs and no more, on asyncio (uvloop when installed) with httptools' parser:

- one `_Connection` (an asyncio.Protocol) per TCP connection, one `_Cycle` per request, and one
  Task per request (the ASGI call, which also starts the next pipelined request when it ends);
- a future is made only when `receive()` or `send()` has to wait;
- the response head goes out in the same write as the first body part (one syscall and one
  TCP segment for a small reply), or on the loop's next turn when that part is late;
- idle keep-alive connections are closed by one sweep per server each second, over the
  connections' last-activity times (the same sweep refreshes the `date` header);
- requests pipelined on a connection are queued and answered in order, reading paused meanwhile;
- reading pauses while more than 64 KiB of a request body wait unread; `send()` waits while the
  transport's write buffer is over its high-water mark.

Not supported: protocol upgrades (websocket, h2c: answered 400), TLS, HTTP/2, proxy headers.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import email.utils
import http
import json
import logging
import signal
import socket
from typing import Any
from urllib.parse import unquote

import httptools

log = logging.getLogger("dockyard.gateway.httpserver")

MAX_HEAD_BYTES = 64 * 1024  # request line and headers; more is answered 431
READ_HIGH_WATER = 64 * 1024  # unread request body bytes past which reading pauses
SWEEP_EVERY_S = 1.0
# Shared by every request's scope: nothing in the gateway writes to it, and building it per
# request is pure cost.
ASGI_VERSION = {"version": "3.0", "spec_version": "2.3"}
HEAD_TOO_LARGE = (431, f"the request line and headers are larger than {MAX_HEAD_BYTES // 1024} KiB")
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
STATUS_LINES = {s.value: b"HTTP/1.1 %d %s\r\n" % (s.value, s.phrase.encode("ascii")) for s in http.HTTPStatus}
METHODS = {m.encode(): m for m in ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT")}
NO_BODY_STATUSES = frozenset({204, 304})


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


class StartupFailed(Exception):
    """The app's lifespan startup reported a failure."""


class _HeadTooLarge(Exception):
    pass


class _BadTarget(Exception):
    pass


def _disconnect() -> dict[str, Any]:
    return {"type": "http.disconnect"}


def _wake(waiters: list[asyncio.Future[None]] | None) -> None:
    if waiters:
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)
        waiters.clear()


def _split_target(url: bytes) -> tuple[str, bytes, bytes]:
    """(path percent-decoded, raw path, query string) of a request target."""
    if url[:1] == b"/":
        raw_path, _, query = url.partition(b"?")
        raw_path = raw_path.partition(b"#")[0]
    else:  # absolute-form (`GET http://host/path`) or `*`
        try:
            parsed = httptools.parse_url(url)
        except httptools.HttpParserInvalidURLError:
            raise _BadTarget(f"the request target {url[:200]!r} is not a URL") from None
        raw_path, query = parsed.path or b"/", parsed.query or b""
    try:
        path = raw_path.decode("ascii")
    except UnicodeDecodeError:
        raise _BadTarget("the request path holds bytes that are not ASCII") from None
    if "%" in path:
        path = unquote(path)
    return path, raw_path, query


class _Cycle:
    """One request and its response: the ASGI `receive` and `send` of one app call."""

    __slots__ = (
        "conn", "scope", "keep_alive", "expect_continue", "is_head",
        "body", "buffered", "message_complete", "delivered", "waiters",
        "started", "complete", "body_allowed", "chunked", "remaining", "pending_head",
    )  # fmt: skip

    def __init__(self, conn: _Connection, scope: dict[str, Any], keep_alive: bool, expect_continue: bool) -> None:
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

    # --- receive ------------------------------------------------------------------------------

    async def receive(self) -> dict[str, Any]:
        conn = self.conn
        if conn.closed or self.complete:
            return _disconnect()
        if self.expect_continue:
            self.expect_continue = False
            if not self.started:
                conn.transport.write(CONTINUE)
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
        _wake(self.waiters)

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
            head = self._head(message)
            self.started = True
            # The body nearly always follows at once: head and body then go in one write (one
            # syscall, one segment); the loop's next turn writes the head alone if it is late.
            self.pending_head = head
            conn.loop.call_soon(self._flush_head)
        elif kind == "http.response.body":
            if self.complete:
                raise RuntimeError("'http.response.body' after the response completed")
            body = message.get("body", b"")
            more = message.get("more_body", False)
            self._write_body(body, more)
            if not more:
                self._finish()
        else:
            raise RuntimeError(f"{kind!r} after 'http.response.start'")

    def _head(self, message: dict[str, Any]) -> bytes:
        """The response head; raises RuntimeError for a header that would split the response."""
        status = message["status"]
        headers = message.get("headers") or ()
        parts = [status_line(status), self.conn.server.default_head]
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
        lines = 3 + (len(parts) - 2) // 4  # status, server, date and the app's headers
        body_allowed = not self.is_head and status >= 200 and status not in NO_BODY_STATUSES
        if length < 0 and not chunked and body_allowed:
            chunked = True
            parts.append(b"transfer-encoding: chunked\r\n")
            lines += 1
        if not keep_alive and not closing:
            parts.append(b"connection: close\r\n")
            lines += 1
        parts.append(b"\r\n")
        head = b"".join(parts)
        # One count over the whole head rather than a search per header: every CR and LF must
        # be one of the line ends written above, and no NUL may appear.
        if head.count(b"\n") != lines + 1 or head.count(b"\r") != lines + 1 or b"\0" in head:
            raise RuntimeError(f"response header {_offending(headers)!r} holds CR, LF or NUL")
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
        self.wake()  # a receive() waiting (a disconnect watch) returns http.disconnect
        if not self.keep_alive:
            self.conn.close()


def _offending(headers: Any) -> bytes:
    for name, value in headers:
        for part in (name, value):
            if b"\r" in part or b"\n" in part or b"\0" in part:
                return bytes(name)
    return b""


class _Connection(asyncio.Protocol):
    """One TCP connection: parses requests and runs one app call at a time, in arrival order."""

    def __init__(self, server: HttpServer) -> None:
        self.server = server
        self.app = server.app
        self.loop = server.loop
        self.parser = httptools.HttpRequestParser(self)
        self.transport: Any = None
        self.client: tuple[str, int] | None = None
        self.local: tuple[str, int] | None = None
        self.closed = False
        self.broken = False  # the parser failed: nothing more is read
        self.error_reply: bytes | None = None  # to write once the request before it is answered
        self.active: _Cycle | None = None  # the request whose app call runs
        self.parsing: _Cycle | None = None  # the request whose body the parser is reading
        self.queue: collections.deque[_Cycle] = collections.deque()  # pipelined, waiting
        self.task: asyncio.Task[None] | None = None
        self.last_active = 0.0
        self.read_paused = False
        self.write_paused = False
        self.drain_waiters: list[asyncio.Future[None]] | None = None
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.head_bytes = 0  # of the request line and headers parsed so far
        self.head_seen = 0  # bytes received while a head was open (httptools holds partial headers)
        self.head_open = False
        self.expect_continue = False
        self.parse_failure: tuple[int, str] | None = None  # why a parser callback gave up

    # --- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.last_active = self.loop.time()
        self.client = _address(transport.get_extra_info("peername"))
        self.local = _address(transport.get_extra_info("sockname"))
        if self.server.stopping:
            self.close()
            return
        self.server.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.server.connections.discard(self)
        self.queue.clear()
        if self.active is not None:
            self.active.wake()
        _wake(self.drain_waiters)

    def data_received(self, data: bytes) -> None:
        if self.broken or self.closed:
            return
        self.last_active = self.loop.time()
        head_was_open = self.head_open
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self.refuse(400, "protocol upgrades are not supported here")
        except httptools.HttpParserCallbackError:
            self.refuse(*(self.parse_failure or (400, "the request is not valid HTTP/1.1")))
        except httptools.HttpParserError as exc:
            self.refuse(400, f"the request is not valid HTTP/1.1: {exc}")
        else:
            # httptools keeps a header's parts until it is whole: a head that never ends is
            # bounded here, by what arrived while it was open.
            if head_was_open and self.head_open:
                self.head_seen += len(data)
                if self.head_seen > 2 * MAX_HEAD_BYTES:
                    self.refuse(*HEAD_TOO_LARGE)

    def eof_received(self) -> bool | None:
        return None  # close: a half-closed caller gets no more replies

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        _wake(self.drain_waiters)

    # --- httptools callbacks ------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self.url = b""
        self.headers = []
        self.head_bytes = 0
        self.head_seen = 0
        self.head_open = True
        self.expect_continue = False
        self.parsing = None

    def on_url(self, url: bytes) -> None:
        self.url += url
        self.head_bytes += len(url)
        if self.head_bytes > MAX_HEAD_BYTES:
            self.parse_failure = HEAD_TOO_LARGE
            raise _HeadTooLarge

    def on_header(self, name: bytes, value: bytes) -> None:
        self.head_bytes += len(name) + len(value) + 4
        if self.head_bytes > MAX_HEAD_BYTES:
            self.parse_failure = HEAD_TOO_LARGE
            raise _HeadTooLarge
        name = name.lower()
        if name == b"expect" and value.lower() == b"100-continue":
            self.expect_continue = True
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.head_open = False
        parser = self.parser
        if parser.should_upgrade():
            return  # feed_data raises HttpParserUpgrade once the head is parsed: refused there
        try:
            path, raw_path, query = _split_target(self.url)
        except _BadTarget as exc:
            self.parse_failure = (400, str(exc))
            raise
        method = parser.get_method()
        scope = {
            "type": "http",
            "asgi": ASGI_VERSION,
            "http_version": parser.get_http_version(),
            "method": METHODS.get(method) or method.decode("ascii"),
            "scheme": "http",
            "path": path,
            "raw_path": raw_path,
            "query_string": query,
            "root_path": "",
            "headers": self.headers,
            "client": self.client,
            "server": self.local,
            "state": {},
        }
        keep_alive = parser.should_keep_alive() and not self.server.stopping
        cycle = self.parsing = _Cycle(self, scope, keep_alive, self.expect_continue)
        if self.active is None and not self.queue:
            self.start(cycle)
        else:
            self.queue.append(cycle)
            self.update_reading()

    def on_body(self, body: bytes) -> None:
        cycle = self.parsing
        if cycle is None or cycle.complete:
            return  # answered already: the rest of its body is read and dropped
        cycle.body.append(body)
        cycle.buffered += len(body)
        if cycle.buffered > READ_HIGH_WATER and not self.read_paused:
            self.update_reading()
        cycle.wake()

    def on_message_complete(self) -> None:
        cycle = self.parsing
        if cycle is not None:
            cycle.message_complete = True
            cycle.wake()
            self.parsing = None

    # --- requests -----------------------------------------------------------------------------

    def start(self, cycle: _Cycle) -> None:
        self.active = cycle
        self.task = self.loop.create_task(self.run(cycle))

    async def run(self, cycle: _Cycle) -> None:
        """The app call of one request, then the next pipelined request (no done-callback)."""
        try:
            await self.app(cycle.scope, cycle.receive, cycle.send)
        except asyncio.CancelledError:  # the server stops and could not wait any longer
            self.close()
        except Exception:
            scope = cycle.scope
            log.exception("the application failed on %s %s", scope["method"], scope["path"])
            self.fail(cycle, "the server failed on this request")
        else:
            if not cycle.complete:
                if not cycle.started:
                    log.error("the application returned without a response to %s %s", cycle.scope["method"], cycle.scope["path"])
                self.fail(cycle, "the server returned no response to this request")
        finally:
            self.finished()

    def fail(self, cycle: _Cycle, message: str) -> None:
        """500 when nothing was sent yet, else a cut reply; the connection closes either way."""
        if not cycle.started and not self.closed:
            self.transport.write(error_reply(500, "InternalServerError", message, self.server.default_head))
        self.close()

    def finished(self) -> None:
        self.active = None
        self.task = None
        if self.closed:
            return
        self.last_active = self.loop.time()
        if self.error_reply is not None:
            self.transport.write(self.error_reply)
            self.close()
        elif self.server.stopping:
            self.close()
        elif self.queue:
            self.start(self.queue.popleft())
            self.update_reading()
        else:
            self.update_reading()

    def update_reading(self) -> None:
        """Reads while nothing waits in the pipeline and no body piles up unread."""
        if self.closed:
            return
        parsing = self.parsing
        pause = bool(self.queue) or self.broken or (parsing is not None and parsing.buffered > READ_HIGH_WATER)
        if pause != self.read_paused:
            self.read_paused = pause
            if pause:
                self.transport.pause_reading()
            else:
                self.transport.resume_reading()

    def refuse(self, status: int, message: str) -> None:
        """A request that cannot be parsed: answered once those before it are, then closed."""
        self.broken = True
        self.queue.clear()
        reply = error_reply(status, "InvalidParameter", message, self.server.default_head)
        if self.active is None:
            self.transport.write(reply)
            self.close()
        else:
            self.error_reply = reply
            self.update_reading()

    async def drain(self) -> None:
        waiter = self.loop.create_future()
        if self.drain_waiters is None:
            self.drain_waiters = [waiter]
        else:
            self.drain_waiters.append(waiter)
        try:
            await waiter
        finally:
            if self.drain_waiters and waiter in self.drain_waiters:
                self.drain_waiters.remove(waiter)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.transport.close()
        if self.active is not None:
            self.active.wake()
        _wake(self.drain_waiters)

    def shutdown(self) -> None:
        """Server stopping: close when idle, else after the request in progress."""
        self.queue.clear()
        if self.active is None:
            self.close()
        else:
            self.active.keep_alive = False  # `connection: close` if the reply has not started
            if not self.read_paused and not self.closed:
                self.read_paused = True
                self.transport.pause_reading()


def _address(info: Any) -> tuple[str, int] | None:
    if isinstance(info, tuple) and len(info) >= 2:
        return (str(info[0]), int(info[1]))
    return None


class _Lifespan:
    """The ASGI lifespan protocol; an app that does not take part is tolerated."""

    def __init__(self, app: Any, loop: asyncio.AbstractEventLoop) -> None:
        self.app = app
        self.inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.started: asyncio.Future[None] = loop.create_future()
        self.stopped: asyncio.Future[None] = loop.create_future()
        self.failure: str | None = None
        self.sent_any = False
        self.task: asyncio.Task[None] | None = None

    async def run(self) -> None:
        scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}, "state": {}}
        try:
            await self.app(scope, self.inbox.get, self.send)
        except Exception:
            if self.sent_any:
                log.exception("the application's lifespan failed")
            else:
                log.info("the application does not take part in the ASGI lifespan")
        finally:
            for future in (self.started, self.stopped):
                if not future.done():
                    future.set_result(None)

    async def send(self, message: dict[str, Any]) -> None:
        self.sent_any = True
        kind = message["type"]
        if kind in ("lifespan.startup.complete", "lifespan.startup.failed"):
            if kind == "lifespan.startup.failed":
                self.failure = message.get("message") or "startup failed"
            if not self.started.done():
                self.started.set_result(None)
        elif kind in ("lifespan.shutdown.complete", "lifespan.shutdown.failed"):
            if kind == "lifespan.shutdown.failed":
                log.error("the application's lifespan shutdown failed: %s", message.get("message", ""))
            if not self.stopped.done():
                self.stopped.set_result(None)

    async def startup(self) -> None:
        """Raises StartupFailed when the app reports its startup failed."""
        self.task = asyncio.get_running_loop().create_task(self.run())
        await self.inbox.put({"type": "lifespan.startup"})
        await self.started
        if self.failure is not None:
            raise StartupFailed(self.failure)

    async def shutdown(self) -> None:
        if self.task is None or self.task.done():
            return
        await self.inbox.put({"type": "lifespan.shutdown"})
        await self.stopped
        with contextlib.suppress(Exception):
            await self.task


class HttpServer:
    """Serves one ASGI app on one listening socket: `start()`, then `stop()`."""

    def __init__(self, app: Any, *, keep_alive_s: float = 75.0) -> None:
        self.app = app
        self.keep_alive_s = keep_alive_s
        self.connections: set[_Connection] = set()
        self.stopping = False
        self.default_head = default_head()
        self.loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]
        self._listener: asyncio.AbstractServer | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._lifespan: _Lifespan | None = None
        self._hurry = False

    async def start(self, *, host: str = "127.0.0.1", port: int = 0, sock: socket.socket | None = None, backlog: int = 4096) -> None:
        """Runs the lifespan startup, then listens (on `sock` when given, else host:port)."""
        self.loop = asyncio.get_running_loop()
        self._lifespan = _Lifespan(self.app, self.loop)
        await self._lifespan.startup()
        try:
            if sock is not None:
                self._listener = await self.loop.create_server(lambda: _Connection(self), sock=sock, backlog=backlog)
            else:
                self._listener = await self.loop.create_server(lambda: _Connection(self), host=host, port=port, backlog=backlog, reuse_address=True)
        except BaseException:
            await self._lifespan.shutdown()  # started: the app's resources are released
            raise
        self._sweeper = self.loop.create_task(self._sweep())

    @property
    def port(self) -> int:
        assert self._listener is not None
        return int(self._listener.sockets[0].getsockname()[1])

    async def _sweep(self) -> None:
        """Each second: a fresh `date`, and idle keep-alive connections closed."""
        while True:
            await asyncio.sleep(SWEEP_EVERY_S)
            self.default_head = default_head()
            oldest = self.loop.time() - self.keep_alive_s
            for conn in [c for c in self.connections if c.active is None and c.last_active < oldest]:
                conn.close()

    def hurry(self) -> None:
        """Cuts `stop()`'s wait for requests in progress short."""
        self._hurry = True

    async def stop(self, graceful_s: float = 10.0) -> None:
        """Stops accepting, closes idle connections, lets requests in progress finish for up to
        `graceful_s`, closes the rest, then runs the lifespan shutdown."""
        self.stopping = True
        if self._listener is not None:
            self._listener.close()
        for conn in list(self.connections):
            conn.shutdown()
        deadline = self.loop.time() + graceful_s
        while any(c.active is not None for c in self.connections) and self.loop.time() < deadline and not self._hurry:
            await asyncio.sleep(0.05)
        tasks = [c.task for c in self.connections if c.task is not None]
        for conn in list(self.connections):
            conn.close()
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=5)
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        if self._lifespan is not None:
            await self._lifespan.shutdown()


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop's when installed: it halves the event loop's own share of each request."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def serve(app: Any, *, host: str, port: int, sock: socket.socket | None = None, keep_alive_s: float = 75.0,
          backlog: int = 4096, graceful_s: float = 10.0) -> None:  # fmt: skip
    """Serves `app` until SIGTERM or SIGINT, then stops gracefully (a second signal cuts the
    wait for requests in progress short). Listens on `sock` when given (a bound socket)."""
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        try:
            runner.run(_serve(app, host=host, port=port, sock=sock, keep_alive_s=keep_alive_s, backlog=backlog, graceful_s=graceful_s))
        except StartupFailed as exc:
            log.error("the application failed to start: %s", exc)
            raise SystemExit(3) from None
        except OSError as exc:  # the address is taken, or not this machine's
            log.error("cannot listen on %s:%s: %s", host, port, exc)
            raise SystemExit(1) from None


async def _serve(app: Any, *, host: str, port: int, sock: socket.socket | None, keep_alive_s: float, backlog: int, graceful_s: float) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    server = HttpServer(app, keep_alive_s=keep_alive_s)

    def on_signal() -> None:
        if stop.is_set():
            server.hurry()
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    try:
        await server.start(host=host, port=port, sock=sock, backlog=backlog)
        where = sock.getsockname() if sock is not None else (host, server.port)
        log.info("serving HTTP on %s:%s", where[0], where[1])
        await stop.wait()
        log.info("stopping: requests in progress may finish within %s s", graceful_s)
        await server.stop(graceful_s)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)

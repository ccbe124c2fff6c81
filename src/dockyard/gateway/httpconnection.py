"""One TCP connection of dockyard's HTTP server (httpserver.py, whose docstring describes the
server as a whole): it parses requests with httptools and runs one app call at a time, in
arrival order, offering each request to the app's `direct` first. A whole, simple request that
came in one read is parsed in one step instead (simplehead.py), as httptools would parse it."""

from __future__ import annotations

import asyncio
import collections
import logging
from typing import TYPE_CHECKING, Any, Final

import httptools

from dockyard.gateway.httpcycle import (
    CUT_KEY,
    READ_HIGH_WATER,
    Cycle,
    error_reply,
    wake_all,
)
from dockyard.gateway.requesthead import (
    FRAGMENT,
    HEAD_TOO_LARGE,
    MAX_HEAD_BYTES,
    METHODS,
    PERCENT,
    QUERY,
    BadTarget,
    HeadTooLarge,
    address,
    head_size,
    split_target,
)
from dockyard.gateway.simplehead import RequestLine, parse_request

if TYPE_CHECKING:
    from dockyard.gateway.httpserver import HttpServer

log = logging.getLogger("dockyard.gateway.httpserver")  # the server's: one logger for both

# Shared by every request's scope: nothing in the gateway writes to it, and building it per
# request is pure cost.
ASGI_VERSION: Final = {"version": "3.0", "spec_version": "2.3"}
# Every request's scope starts as a copy of this, and what differs is set: a dict copied whole
# and then set costs two thirds of one built key by key, whose table grows on the way to
# fourteen keys (benchmarks/gateway_instructions.py: 2.1k instructions against 3.0k).
SCOPE_TEMPLATE: Final[dict[str, Any]] = {
    "type": "http", "asgi": ASGI_VERSION, "http_version": "1.1", "method": "GET", "scheme": "http", "path": "/", "raw_path": b"/",
    "query_string": b"", "root_path": "", "headers": None, "client": None, "server": None, "state": None,
    "dockyard.notify_lost": None,
}  # fmt: skip


class Connection(asyncio.Protocol):
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
        self.active: Cycle | None = None  # the request whose app call runs
        self.parsing: Cycle | None = None  # the request whose body the parser is reading
        self.unlaunched: Cycle | None = None  # active, its app call not begun: until its body is in or this read ends
        self.queue: collections.deque[Cycle] = collections.deque()  # pipelined, waiting
        self.task: asyncio.Task[None] | None = None
        self.last_active = 0.0  # when the connection was made or its last reply ended
        self.last_read = 0.0  # when its last bytes came
        self.head_since = 0.0  # when the open head's first bytes came (see `head_open`)
        self.read_wanted = 0.0  # when reading last resumed or a 100 Continue went out (see `body_awaited_since`)
        self.read_paused = False
        self.write_paused = False
        self.drain_waiters: list[asyncio.Future[None]] | None = None
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.head_seen = 0  # bytes received while a head was open (httptools holds partial headers)
        self.head_begun = 0  # bytes of the read an unfinished head began in
        self.reading = 0  # bytes of the read being parsed
        self.head_open = False
        self.expect_continue = False
        self.names_connection = False  # the head has a `connection` header (see on_headers_complete)
        self.parse_failure: tuple[int, str] | None = None  # why a parser callback gave up
        # httptools' parser is between messages and would take another: a read may then be
        # parsed in one step instead (`take_simple`), the parser none the wiser.
        self.parser_fresh = True
        # Bound once per connection: a scope entry bound to its own cycle would make each request
        # a reference cycle (cycle, scope, method) that only the garbage collector frees.
        self.notify_lost_of_active = self._notify_lost_of_active

    # --- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.last_active = self.loop.time()
        self.client = address(transport.get_extra_info("peername"))
        self.local = address(transport.get_extra_info("sockname"))
        if self.server.stopping:
            self.close()
            return
        self.server.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.server.connections.discard(self)
        self.queue.clear()
        active = self.active
        if active is not None:
            active.wake()
            if active.on_lost is not None and not active.complete:
                lost, active.on_lost = active.on_lost, None
                lost()
        wake_all(self.drain_waiters)

    def data_received(self, data: bytes) -> None:
        if self.broken or self.closed:
            return
        self.last_read = self.loop.time()
        if self.parser_fresh:
            simple = parse_request(data)
            if simple is not None:
                line, headers, body, relayed = simple
                self.take_simple(line, headers, body, relayed)
                return
        head_was_open = self.head_open
        self.reading = len(data)
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
            if self.head_open:
                if head_was_open:
                    self.head_seen += len(data)
                    if self.head_seen > 2 * MAX_HEAD_BYTES:
                        self.refuse(*HEAD_TOO_LARGE)
                else:  # the read it began in (its part of the head is at most this)
                    self.head_begun = len(data)
        finally:
            waiting = self.unlaunched
            if waiting is not None:  # its body is still on the way: the app call reads it as it comes
                self.unlaunched = None
                self.launch(waiting)

    def eof_received(self) -> bool | None:
        return None  # close: a half-closed caller gets no more replies

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        wake_all(self.drain_waiters)
        active = self.active
        if active is not None and active.on_writable is not None:
            active.on_writable()

    def take_simple(self, line: RequestLine, headers: list[tuple[bytes, bytes]], body: bytes, relayed: list[bytes] | None) -> None:
        """One whole request that came in one read, parsed in one step (gateway/simplehead.py:
        what httptools would have made of it, without its callbacks, and the header lines the
        gateway forwards of it)."""
        self.url = line.target
        self.headers = headers
        self.head_since = self.last_read
        self.expect_continue = False
        self.names_connection = False
        try:
            self.begin(line.method_name, True, None, line.plain_path)
        except BadTarget as exc:
            self.refuse(400, str(exc))
            return
        self.parsing.relayed = relayed  # type: ignore[union-attr]  # (begin made it)
        if body:
            self.on_body(body)
        self.on_message_complete()

    # --- httptools callbacks ------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self.parser_fresh = False

    def on_url(self, url: bytes) -> None:
        if self.head_open:  # the target went on in this read: a head arrives in pieces
            self.url += url
            return
        self.url = url
        self.headers = []
        self.head_since = self.last_read
        self.head_seen = 0
        self.head_begun = 0
        self.head_open = True
        self.expect_continue = False
        self.names_connection = False
        self.parsing = None

    def on_header(self, name: bytes, value: bytes) -> None:
        # The head's size is checked once it is whole (on_headers_complete); until then what
        # data_received counts while it is open bounds it.
        name = name.lower()
        if name == b"expect":
            if value.lower() == b"100-continue":
                self.expect_continue = True
        elif name == b"connection":
            self.names_connection = True
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.head_open = False
        # Every byte of the head came in the reads counted here: only a head that may be too
        # large is measured.
        if self.head_begun + self.head_seen + self.reading > MAX_HEAD_BYTES and head_size(self.url, self.headers) > MAX_HEAD_BYTES:
            self.parse_failure = HEAD_TOO_LARGE
            raise HeadTooLarge
        parser = self.parser
        if parser.should_upgrade():
            return  # feed_data raises HttpParserUpgrade once the head is parsed: refused there
        keep_alive = parser.should_keep_alive()
        # llhttp keeps a connection alive by default only for HTTP/1.1 (an HTTP/1.0 one needs
        # `connection: keep-alive`): with no `connection` header, a kept one is 1.1, and the
        # template's "1.1" stands. get_http_version formats its string anew each time (2.3k
        # instructions, benchmarks/gateway_instructions.py), so only the other heads ask it.
        version = parser.get_http_version() if not keep_alive or self.names_connection else None
        method = parser.get_method()
        self.begin(METHODS.get(method) or method.decode("ascii"), keep_alive, version, None)

    def begin(self, method: str, keep_alive: bool, version: str | None, plain_path: str | None) -> None:
        """A request whose head is in (`self.url`, `self.headers`): its scope and cycle, active
        (launched when its body is in or the read ends) or queued behind the one that is.
        `version`: None for 1.1. `plain_path`: the target as the path, when the one-step parser
        found it a plain one (simplehead.RequestLine)."""
        url = self.url
        if plain_path is not None:
            path, raw_path, query = plain_path, url, b""
        elif url[:1] == b"/" and url.isascii() and QUERY not in url and FRAGMENT not in url and PERCENT not in url:
            path, raw_path, query = url.decode("ascii"), url, b""  # the commonest target: a plain path (`split_target`)
        else:
            try:
                path, raw_path, query = split_target(url)
            except BadTarget as exc:
                self.parse_failure = (400, str(exc))
                raise
        scope = SCOPE_TEMPLATE.copy()
        if version is not None:
            scope["http_version"] = version
        scope["method"] = method
        scope["path"] = path
        scope["raw_path"] = raw_path
        scope["query_string"] = query
        scope["headers"] = self.headers
        scope["client"] = self.client
        scope["server"] = self.local
        scope["state"] = {}
        scope["dockyard.notify_lost"] = self.notify_lost_of_active
        keep_alive = keep_alive and not self.server.stopping
        cycle = self.parsing = Cycle(self, scope, keep_alive, self.expect_continue)
        if self.active is None and not self.queue:
            # Launched when its body is in (on_message_complete) or this read ends, whichever
            # comes first: a small request's body nearly always comes with its head.
            self.active = self.unlaunched = cycle
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
        if cycle.waiters:  # a receive() waiting (checked here: this runs for every body part)
            cycle.wake()

    def on_message_complete(self) -> None:
        cycle = self.parsing
        # After a request that ends its connection llhttp takes nothing more: nor does the shortcut.
        self.parser_fresh = cycle is not None and cycle.keep_alive
        if cycle is not None:
            cycle.message_complete = True
            if cycle.waiters:
                cycle.wake()
            self.parsing = None
            if cycle is self.unlaunched:
                self.unlaunched = None
                self.launch(cycle)

    def _notify_lost_of_active(self, callback: Any) -> None:
        """`scope["dockyard.notify_lost"]`: the request asking is the one whose app call runs."""
        active = self.active
        if active is not None:
            active.notify_lost(callback)

    # --- requests -----------------------------------------------------------------------------

    def launch(self, cycle: Cycle) -> None:
        """Serve the active request: directly when the app takes it (its whole body is in), else
        by the app call in a task of its own."""
        direct = self.server.direct
        if direct is not None and cycle.message_complete and not self.broken and not self.closed:
            try:
                taken = direct(cycle)
            except Exception:
                scope = cycle.scope
                log.exception("the application failed on %s %s", scope["method"], scope["path"])
                self.fail(cycle, "the server failed on this request")
                self.finished()
                return
            if taken:
                return
        self.call_app(cycle)

    def call_app(self, cycle: Cycle) -> None:
        """The ASGI call of the active request, in a task (also for one a direct reply hands back)."""
        self.task = self.loop.create_task(self.run(cycle))

    async def run(self, cycle: Cycle) -> None:
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
            if not cycle.complete and not self.closed:  # (closed: what the app sent went nowhere anyway)
                if not cycle.started:
                    log.error("the application returned without a response to %s %s", cycle.scope["method"], cycle.scope["path"])
                self.fail(cycle, "the server returned no response to this request")
        finally:
            self.finished()

    def fail(self, cycle: Cycle, message: str) -> None:
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
            self.active = self.queue.popleft()
            self.launch(self.active)
            self.update_reading()
        elif self.read_paused or self.parsing is not None:
            self.update_reading()
        # else: reading goes on, and nothing queued or half-parsed could pause it

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
                self.read_wanted = self.loop.time()

    def refuse(self, status: int, message: str, code: str = "InvalidParameter") -> None:
        """A request that cannot be parsed: answered once those before it are, then closed."""
        self.broken = True
        self.queue.clear()
        reply = error_reply(status, code, message, self.server.default_head)
        if self.active is None:
            self.transport.write(reply)
            self.close()
        else:
            self.error_reply = reply
            self.update_reading()

    def body_awaited_since(self) -> float:
        """Since when the active request's body has been awaited from the caller with no byte
        coming; infinity when it is not awaited: whole, paused on the app (which has more than
        it takes), or not yet asked for (`expect: 100-continue` before the app's first receive)."""
        cycle = self.parsing
        if cycle is None or cycle is not self.active or self.read_paused or cycle.expect_continue:
            return float("inf")
        return max(self.last_read, self.read_wanted)

    def body_stopped(self) -> None:
        """No byte of the awaited body came for the server's `body_timeout_s`: a 408 when the
        reply has not begun, and the connection closes (the app's receive says the caller left)."""
        active = self.active
        if active is None:
            return
        timeout_s = self.server.body_timeout_s
        message = f"the request's body stopped coming: no byte of it for {timeout_s:g} s"
        log.info("closing the connection from %s: %s", self.client, message)
        if not active.started:  # (what the app sends once the connection is closed goes nowhere)
            self.transport.write(error_reply(408, "RequestTimeout", f"{message}; send the body without such pauses",
                                             self.server.default_head))  # fmt: skip
        self.close()
        cut_off(active, message)

    async def drain(self) -> None:
        """Waits until the caller has taken enough of what waits for it. A caller that takes
        nothing for the server's `send_timeout_s` is cut off: its connection closes, and the
        app's call learns it as a caller gone (it would otherwise hold the request, and what
        the request holds, for as long as the caller keeps its connection open)."""
        waiter = self.loop.create_future()
        if self.drain_waiters is None:
            self.drain_waiters = [waiter]
        else:
            self.drain_waiters.append(waiter)
        timer = self.loop.call_later(self.server.send_timeout_s, self.send_timed_out)
        try:
            await waiter
        finally:
            timer.cancel()
            if self.drain_waiters and waiter in self.drain_waiters:
                self.drain_waiters.remove(waiter)

    def send_timed_out(self) -> None:
        """The caller took none of the reply for `send_timeout_s`: its connection closes."""
        if self.write_paused and not self.closed:
            log.info("closing the connection from %s: it took none of the reply for %g s", self.client, self.server.send_timeout_s)
            active = self.active
            self.close(abort=True)
            if active is not None:
                cut_off(active, f"the caller took none of the reply for {self.server.send_timeout_s:g} s")

    def close(self, abort: bool = False) -> None:
        """Closes once what waits to be written is sent; `abort`: at once, dropping it (for a
        caller that takes nothing, whose connection a close would keep open for as long)."""
        if self.closed:
            return
        self.closed = True
        if abort:
            self.transport.abort()
        else:
            self.transport.close()
        if self.active is not None:
            self.active.wake()
        wake_all(self.drain_waiters)

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


def cut_off(cycle: Cycle, why: str) -> None:
    """The server closed `cycle`'s connection for `why`: the app learns it now, as
    `connection_lost` would tell it later, and the gateway's access entry says why."""
    cycle.scope[CUT_KEY] = why
    if cycle.on_lost is not None and not cycle.complete:
        lost, cycle.on_lost = cycle.on_lost, None
        lost()

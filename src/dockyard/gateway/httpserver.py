"""A small HTTP/1.1 server for ASGI 3 apps, serving `dockyard serve` in both roles.

The gateway proxies many small requests, and a general-purpose ASGI server spends more CPU per
request than the proxying itself: an Event and a keep-alive timer per request, a middleware
layer, regular expressions per response header, task callbacks. This server does what the
gateway needs and no more, on asyncio (uvloop when installed) with httptools' parser (and, for a
whole small request that came in one read, simplehead.py, which parses it as httptools would):

- one `Connection` (an asyncio.Protocol) per TCP connection, one `Cycle` (httpcycle.py: the
  ASGI `receive` and `send`) per request, and one Task per request (the ASGI call, which also
  starts the next pipelined request when it ends);
- an app with a `direct(cycle) -> bool` method is first offered each request whose whole body
  came in the read that ended its head: it may serve it from callbacks alone, without a task
  (writing through the cycle's `start_response`/`write_body` and calling the connection's
  `finished()` at the end), or decline, and then the ASGI call serves it as usual. The gateway
  relays the commonest predict this way (gateway/direct.py);
- `scope["dockyard.notify_lost"](callback)` asks for `callback()` should the connection be lost
  before the response is complete (the gateway cancels its exchange with it);
- one sweep per server each second closes idle keep-alive connections (no head begun within
  `keep_alive_s` of the last reply, or of the connection: bytes that begin no head, such as
  blank lines, do not count) and answers 408 to a head not whole within `head_timeout_s` of
  its first byte, however often its bytes come (a caller trickling one would otherwise hold a
  connection for ever), and to a request whose body the app waits for and from which no byte
  has come for `body_timeout_s` (nginx's client_body_timeout: a stalled upload holds nothing
  for long); the same sweep refreshes the `date` header;
- requests pipelined on a connection are queued and answered in order, reading paused meanwhile;
- reading pauses while more than 64 KiB of a request body wait unread; `send()` waits while the
  transport's write buffer is over its high-water mark, and a caller that takes none of it for
  `send_timeout_s` is cut off (`Connection.drain`).

Not supported: protocol upgrades (websocket, h2c: answered 400), TLS, HTTP/2, proxy headers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Awaitable, Callable
from typing import Any

from dockyard.gateway.asgilifespan import Lifespan
from dockyard.gateway.httpconnection import Connection
from dockyard.gateway.httpcycle import default_head

__all__ = ["Connection", "HttpServer"]

log = logging.getLogger("dockyard.gateway.httpserver")

SWEEP_EVERY_S = 1.0


class HttpServer:
    """Serves one ASGI app on one listening socket: `start()`, then `stop()`."""

    def __init__(self, app: Any, *, keep_alive_s: float = 75.0, head_timeout_s: float = 30.0, send_timeout_s: float = 60.0,
                 body_timeout_s: float = 60.0) -> None:  # fmt: skip
        self.app = app
        # Serves a request from callbacks, without a task, when it can (see the module docstring).
        self.direct = getattr(app, "direct", None)
        self.keep_alive_s = keep_alive_s
        self.head_timeout_s = head_timeout_s
        self.send_timeout_s = send_timeout_s  # see `Connection.drain`
        self.body_timeout_s = body_timeout_s  # see `Connection.body_stopped`
        self.connections: set[Connection] = set()
        self.stopping = False
        self.default_head = default_head()
        self.loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]
        self._listener: Any = None  # asyncio's or uvloop's Server (uvloop's `sockets` is a list)
        self._sweeper: asyncio.Task[None] | None = None
        self._lifespan: Lifespan | None = None
        self._hurry = False

    async def start(self, *, host: str = "127.0.0.1", port: int = 0, sock: socket.socket | None = None, backlog: int = 4096,
                    before_listening: Callable[[], Awaitable[None]] | None = None) -> None:  # fmt: skip
        """Runs the lifespan startup, then `before_listening` if given, then listens (on `sock`
        when given, else host:port)."""
        self.loop = asyncio.get_running_loop()
        self._lifespan = Lifespan(self.app, self.loop)
        await self._lifespan.startup()
        try:
            if before_listening is not None:
                await before_listening()
            if sock is not None:
                self._listener = await self.loop.create_server(lambda: Connection(self), sock=sock, backlog=backlog)
            else:
                self._listener = await self.loop.create_server(lambda: Connection(self), host=host, port=port, backlog=backlog, reuse_address=True)
        except BaseException:
            await self._lifespan.shutdown()  # started: the app's resources are released
            raise
        self._sweeper = self.loop.create_task(self._sweep())

    @property
    def port(self) -> int:
        return int(self._listener.sockets[0].getsockname()[1])

    async def _sweep(self) -> None:
        """Each second: a fresh `date`, idle keep-alive connections closed, and a 408 for each
        head that is too slow and each body that stopped coming."""
        while True:
            await asyncio.sleep(SWEEP_EVERY_S)
            self.default_head = default_head()
            now = self.loop.time()
            idle_since, head_since, body_since = now - self.keep_alive_s, now - self.head_timeout_s, now - self.body_timeout_s
            for conn in list(self.connections):
                if conn.closed:
                    continue
                if conn.active is not None:
                    if conn.body_awaited_since() < body_since:
                        conn.body_stopped()
                elif conn.head_open:
                    if conn.head_since < head_since:
                        conn.refuse(408, f"the request's head did not arrive whole within {self.head_timeout_s:g} s of its "
                                         "first byte; send the whole head at once", code="RequestTimeout")  # fmt: skip
                elif conn.last_active < idle_since:
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

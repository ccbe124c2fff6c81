"""The upstream connection pool: keep-alive HTTP/1.1 connections per instance, found in O(1).

Per origin (host, port) the pool keeps a stack of idle connections (the most recently used is
reused first, so idle ones expire at the bottom) and a queue of requests waiting for one;
checking a connection out or in touches only that connection. Connections are the lean
`UpstreamConnection`s of `gateway.upstream`.

Two ways in:
- `send(...)`: the proxy's hot path; the caller frames the request (Host, Content-Length or
  Transfer-Encoding) and gets a `Reply` whose `close()` gives the connection back.
- `handle_async_request(httpx.Request)`: the pool as an `httpx.AsyncBaseTransport`, for the
  gateway's shared `httpx.AsyncClient` (Triton's model index) and anything else that wants it.
Errors are httpx's transport errors either way.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import AsyncIterable
from dataclasses import dataclass, field
from typing import Final

import httpx

from dockyard.gateway.upstream import Headers, Reply, UpstreamConnection

Key = tuple[str, int]
_monotonic: Final = time.monotonic  # read on every request: bound once (see app.py)
_OPEN = object()  # handed to a waiter: a connection slot is yours, open a new one


@dataclass
class _Origin:
    """Connections to one host:port."""

    idle: list[UpstreamConnection] = field(default_factory=list)
    count: int = 0  # open or opening, idle included
    waiters: collections.deque[asyncio.Future[object]] = field(default_factory=collections.deque)


@dataclass(frozen=True)
class Timeouts:
    connect_s: float | None = 5.0
    read_s: float | None = 60.0  # the longest silence between two chunks of the reply's body
    pool_s: float | None = 60.0  # the wait for a free connection at the limit
    head_s: float | None = None  # the wait for the reply's headers; None: the caller bounds it


class UpstreamPool(httpx.AsyncBaseTransport):
    """HTTP/1.1 keep-alive connections per origin, at most `max_connections` each, at most
    `max_idle` of them idle, none idle longer than `keepalive_expiry_s`."""

    def __init__(self, max_connections: int, max_idle: int, keepalive_expiry_s: float) -> None:
        self.max_connections = max_connections
        self.max_idle = max_idle
        self.keepalive_expiry_s = keepalive_expiry_s
        self._origins: dict[Key, _Origin] = {}
        self._closed = False
        self._last_sweep = time.monotonic()
        self._sweep_timer: asyncio.TimerHandle | None = None

    # --- the proxy's way in ---------------------------------------------------------------------

    async def send(
        self,
        host: str,
        port: int,
        method: bytes,
        target: bytes,
        headers: Headers,
        body: bytes | AsyncIterable[bytes] | None,
        chunked: bool,
        timeouts: Timeouts,
        deadline: float | None = None,
    ) -> Reply:
        """Send one request (headers complete, Host included) and wait for the reply's headers,
        until `deadline` (the loop's clock; TimeoutError) if one is given.

        The body is read only once a connection is open, so a refused connection leaves it
        untouched for another instance. Raises httpx.ConnectError / ConnectTimeout / PoolTimeout
        before anything was sent, other httpx transport errors after."""
        if self._closed:
            raise httpx.ConnectError("the gateway's upstream pool is closed")
        head = UpstreamConnection.head(method, target, headers)
        key = (host, port)
        connection = await self._checkout(key, timeouts)
        reply = connection.start(method)
        reply._on_close = self.checkin  # noqa: SLF001
        try:
            if body is None or isinstance(body, bytes):
                connection.send_whole(head, body, chunked)
            else:
                await connection.send_body(head, body, chunked)
            if timeouts.head_s is None:
                await reply.wait_head(deadline)
            else:
                async with asyncio.timeout(timeouts.head_s):
                    await reply.wait_head()
        except TimeoutError as exc:
            reply.close()
            if timeouts.head_s is None:
                raise  # the caller's own deadline
            raise httpx.ReadTimeout(f"the container sent no reply within {timeouts.head_s:g} s") from exc
        except BaseException:
            reply.close()
            raise
        return reply

    # --- httpx's way in -------------------------------------------------------------------------

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        timeout = request.extensions.get("timeout") or {}
        timeouts = Timeouts(timeout.get("connect"), timeout.get("read"), timeout.get("pool"), head_s=timeout.get("read"))
        try:
            body: bytes | AsyncIterable[bytes] = request.content
        except httpx.RequestNotRead:
            body = request.stream  # type: ignore[assignment]
        headers = request.headers.raw
        chunked = any(n.lower() == b"transfer-encoding" and b"chunked" in v.lower() for n, v in headers)
        port = url.port or (443 if url.scheme == "https" else 80)
        if url.scheme != "http":
            raise httpx.UnsupportedProtocol(f"the gateway reaches instances over plain http, not {url.scheme}")
        reply = await self.send(url.host, port, request.method.encode(), url.raw_path, headers, body, chunked, timeouts)
        return httpx.Response(status_code=reply.status, headers=reply.headers, stream=_ReplyStream(reply, timeouts.read_s))

    async def aclose(self) -> None:
        """Close idle connections now; busy ones close when their replies do."""
        self._closed = True
        if self._sweep_timer is not None:
            self._sweep_timer.cancel()
            self._sweep_timer = None
        for origin in self._origins.values():
            idle, origin.idle = origin.idle, []
            origin.count -= len(idle)
            for connection in idle:
                connection.close()
            while origin.waiters:
                waiter = origin.waiters.popleft()
                if not waiter.done():
                    waiter.set_result(None)
        await asyncio.sleep(0)  # let the transports finish closing

    def open_connections(self) -> int:
        return sum(o.count for o in self._origins.values())

    # --- checkout and checkin -------------------------------------------------------------------

    def take_idle(self, host: str, port: int) -> UpstreamConnection | None:
        """An idle keep-alive connection to host:port, checked out, when there is one (no
        waiting); give it back by closing the reply of the exchange started on it."""
        if self._closed:
            return None
        now = _monotonic()
        if now - self._last_sweep > 1.0:
            self._sweep(now)
        origin = self._origins.get((host, port))
        if origin is None:
            return None
        idle = origin.idle
        if idle:  # the newest idle connection, nearly always fresh (`_pop_idle` without the call)
            connection = idle[-1]
            if not connection.closed and now - connection.idle_since < self.keepalive_expiry_s:
                idle.pop()
                return connection
        return self._pop_idle(origin, now)

    def _pop_idle(self, origin: _Origin, now: float) -> UpstreamConnection | None:
        idle = origin.idle
        while idle:
            connection = idle.pop()
            if not connection.closed and now - connection.idle_since < self.keepalive_expiry_s:
                return connection
            origin.count -= 1
            connection.close()
        return None

    async def _checkout(self, key: Key, timeouts: Timeouts) -> UpstreamConnection:
        # No await until a connection (or a slot for a new one) is chosen: the bookkeeping
        # below is never interleaved.
        now = time.monotonic()
        if now - self._last_sweep > 1.0:
            self._sweep(now)  # before the lookup: it may drop empty origins
        origin = self._origins.get(key)
        if origin is None:
            origin = self._origins[key] = _Origin()
        connection = self._pop_idle(origin, now)
        if connection is not None:
            return connection
        if origin.count < self.max_connections:
            origin.count += 1
            return await self._open(key, origin, timeouts.connect_s)
        waiter: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        origin.waiters.append(waiter)
        try:
            async with asyncio.timeout(timeouts.pool_s):
                handed = await waiter
        except BaseException as exc:
            if waiter.done() and not waiter.cancelled() and (lost := waiter.result()) is not None:
                self._pass_on(key, origin, lost)  # handed over just as we gave up
            if isinstance(exc, TimeoutError):
                raise httpx.PoolTimeout(f"no free connection to this instance within {timeouts.pool_s} s") from exc
            raise
        finally:
            with contextlib.suppress(ValueError):
                origin.waiters.remove(waiter)
        if handed is None:
            raise httpx.ConnectError("the gateway's upstream pool is closed")
        if handed is _OPEN:
            return await self._open(key, origin, timeouts.connect_s)
        return handed  # type: ignore[return-value]

    async def _open(self, key: Key, origin: _Origin, timeout_s: float | None) -> UpstreamConnection:
        """Open a connection in a slot already counted; the slot is given up if that fails."""
        try:
            connection = await UpstreamConnection.open(key[0], key[1], timeout_s)
        except BaseException:
            origin.count -= 1
            self._hand_slot(origin)
            raise
        connection.origin = key
        return connection

    def _hand_slot(self, origin: _Origin) -> None:
        """A slot came free: the first live waiter may open a connection in it."""
        while origin.waiters:
            waiter = origin.waiters.popleft()
            if not waiter.done():
                origin.count += 1
                waiter.set_result(_OPEN)
                return

    def _pass_on(self, key: Key, origin: _Origin, handed: object) -> None:
        if handed is _OPEN:
            origin.count -= 1
            self._hand_slot(origin)
        else:
            self.checkin(handed, True)  # type: ignore[arg-type]

    def checkin(self, connection: UpstreamConnection, reusable: bool) -> None:
        """Take a connection back once its exchange is over (done, failed or abandoned)."""
        key = connection.origin
        origin = self._origins.get(key)
        if origin is None:  # cannot happen while counts are right; never leak a socket if it does
            connection.close()
            return
        reusable = reusable and not self._closed and not connection.closed
        if not reusable:
            connection.close()
            origin.count -= 1
            if not self._closed:
                self._hand_slot(origin)
            if not origin.count and not origin.waiters:
                self._origins.pop(key, None)
            return
        while origin.waiters:
            waiter = origin.waiters.popleft()
            if not waiter.done():
                waiter.set_result(connection)
                return
        if len(origin.idle) < self.max_idle:
            connection.idle_since = _monotonic()
            origin.idle.append(connection)
            if self._sweep_timer is None:
                self._schedule_sweep()
            return
        connection.close()
        origin.count -= 1

    def _schedule_sweep(self) -> None:
        """Idle connections close at their expiry even when no request comes to sweep them: a
        model server that waits for open connections on SIGTERM (tritonserver does, for up to
        30 s) would otherwise wait out its whole stop grace after the traffic stopped."""
        if self._sweep_timer is not None or self._closed:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # not on the event loop: the next request's sweep will do
        self._sweep_timer = loop.call_later(self.keepalive_expiry_s + 0.05, self._timed_sweep)

    def _timed_sweep(self) -> None:
        self._sweep_timer = None
        self._sweep(time.monotonic())
        if any(origin.idle for origin in self._origins.values()):
            self._schedule_sweep()

    def _sweep(self, now: float) -> None:
        """Close connections idle past their expiry, in every origin (instances come and go)."""
        self._last_sweep = now
        for key, origin in list(self._origins.items()):
            keep = []
            for connection in origin.idle:
                if not connection.closed and now - connection.idle_since < self.keepalive_expiry_s:
                    keep.append(connection)
                else:
                    origin.count -= 1
                    connection.close()
            origin.idle = keep
            if not origin.count and not origin.waiters:
                del self._origins[key]


class _ReplyStream(httpx.AsyncByteStream):
    """A `Reply` as an httpx response body; closing it gives the connection back to the pool."""

    def __init__(self, reply: Reply, read_timeout_s: float | None) -> None:
        self._reply = reply
        self._timeout_s = read_timeout_s

    def __aiter__(self) -> _ReplyStream:  # an iterator of its own, not a generator: compiled, see compiled.py
        return self

    async def __anext__(self) -> bytes:
        chunk = await self._reply.read(self._timeout_s)
        if not chunk:
            raise StopAsyncIteration
        return chunk

    async def aclose(self) -> None:
        self._reply.close()

"""The upstream connection pool: an httpx transport that finds a free connection in O(1).

httpx's own pool (httpcore's `AsyncConnectionPool`) re-examines every connection it holds, with
a system call each, whenever any request starts or ends. Under 64 concurrent requests that
work grew to three times the rest of the gateway's per-request cost, and it grows with the
square of the concurrency (long LLM streams make it worse). This pool keeps, per origin, a
stack of idle HTTP/1.1 connections (the most recently used is reused first, so idle ones
expire at the bottom) and a queue of requests waiting for one; checking a connection out or
in touches only that connection.

It is a plain `httpx.AsyncBaseTransport`: the gateway's shared `httpx.AsyncClient` owns it
(and closes it), and the proxy sends through it directly.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

import httpcore
import httpx

# httpcore errors as the httpx ones callers expect (the same table httpx uses internally).
_ERRORS: dict[type[Exception], type[httpx.TransportError]] = {
    httpcore.ConnectTimeout: httpx.ConnectTimeout,
    httpcore.ReadTimeout: httpx.ReadTimeout,
    httpcore.WriteTimeout: httpx.WriteTimeout,
    httpcore.PoolTimeout: httpx.PoolTimeout,
    httpcore.TimeoutException: httpx.TimeoutException,
    httpcore.ConnectError: httpx.ConnectError,
    httpcore.ReadError: httpx.ReadError,
    httpcore.WriteError: httpx.WriteError,
    httpcore.NetworkError: httpx.NetworkError,
    httpcore.RemoteProtocolError: httpx.RemoteProtocolError,
    httpcore.LocalProtocolError: httpx.LocalProtocolError,
    httpcore.ProtocolError: httpx.ProtocolError,
    httpcore.UnsupportedProtocol: httpx.UnsupportedProtocol,
}


@contextlib.contextmanager
def _httpx_errors() -> Iterator[None]:
    try:
        yield
    except httpcore.ConnectionNotAvailable:
        raise
    except Exception as exc:
        for core, mapped in _ERRORS.items():
            if isinstance(exc, core):
                raise mapped(str(exc)) from exc
        raise


@dataclass
class _Origin:
    """Connections to one scheme://host:port."""

    idle: list[tuple[httpcore.AsyncHTTPConnection, float]] = field(default_factory=list)  # (connection, idle since)
    count: int = 0  # open or opening, idle included
    waiters: collections.deque[asyncio.Future[httpcore.AsyncHTTPConnection | None]] = field(default_factory=collections.deque)


class UpstreamPool(httpx.AsyncBaseTransport):
    """HTTP/1.1 keep-alive connections per origin, at most `max_connections` each, at most
    `max_idle` of them idle, none idle longer than `keepalive_expiry_s`."""

    def __init__(self, max_connections: int, max_idle: int, keepalive_expiry_s: float) -> None:
        self.max_connections = max_connections
        self.max_idle = max_idle
        self.keepalive_expiry_s = keepalive_expiry_s
        self._origins: dict[tuple[bytes, bytes, int | None], _Origin] = {}
        self._closed = False
        self._last_sweep = time.monotonic()
        self._closing: set[asyncio.Task[None]] = set()

    # --- the transport ------------------------------------------------------------------------

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        core_request = httpcore.Request(
            method=request.method,
            url=httpcore.URL(scheme=url.raw_scheme, host=url.raw_host, port=url.port, target=url.raw_path),
            headers=request.headers.raw,
            content=request.stream,
            extensions=request.extensions,
        )
        return await self.send(core_request)

    async def send(self, request: httpcore.Request) -> httpx.Response:
        """Send an httpcore request as it is (the caller has framed it: Host, Content-Length or
        Transfer-Encoding); the reply as an httpx response whose closing frees the connection.

        The proxy uses this directly: building an `httpx.Request` costs more than the rest of
        the gateway's own work on a request. Raises httpx's transport errors.
        """
        if self._closed:
            raise httpx.ConnectError("the gateway's upstream pool is closed")
        url = request.url
        key = (url.scheme, url.host, url.port)
        pool_timeout = (request.extensions.get("timeout") or {}).get("pool")
        while True:
            connection = await self._checkout(key, pool_timeout)
            try:
                with _httpx_errors():
                    response = await connection.handle_async_request(request)
            except httpcore.ConnectionNotAvailable:
                self._checkin(key, connection)  # it closed while idle; nothing was sent: take another
                continue
            except BaseException:
                self._checkin(key, connection)
                raise
            return httpx.Response(
                status_code=response.status,
                headers=response.headers,
                stream=_ReleasingStream(response.stream, self, key, connection),
                extensions=response.extensions,
            )

    async def aclose(self) -> None:
        """Close idle connections now; busy ones close when their replies do."""
        self._closed = True
        for origin in self._origins.values():
            idle, origin.idle = origin.idle, []
            origin.count -= len(idle)
            for connection, _ in idle:
                self._close_later(connection)
            while origin.waiters:
                waiter = origin.waiters.popleft()
                if not waiter.done():
                    waiter.set_result(None)
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)

    def open_connections(self) -> int:
        return sum(o.count for o in self._origins.values())

    # --- checkout and checkin -------------------------------------------------------------------

    async def _checkout(self, key: tuple[bytes, bytes, int | None], timeout_s: float | None) -> httpcore.AsyncHTTPConnection:
        # No await until a connection is chosen: the bookkeeping below is never interleaved.
        now = time.monotonic()
        if now - self._last_sweep > 1.0:
            self._sweep(now)  # before the lookup: it may drop empty origins
        origin = self._origins.get(key)
        if origin is None:
            origin = self._origins[key] = _Origin()
        while origin.idle:
            connection, since = origin.idle.pop()
            if now - since < self.keepalive_expiry_s and connection.is_available() and not connection.has_expired():
                return connection
            origin.count -= 1
            self._close_later(connection)
        if origin.count < self.max_connections:
            origin.count += 1
            return self._new(key)
        waiter: asyncio.Future[httpcore.AsyncHTTPConnection | None] = asyncio.get_running_loop().create_future()
        origin.waiters.append(waiter)
        try:
            async with asyncio.timeout(timeout_s):
                handed = await waiter
        except BaseException as exc:
            if waiter.done() and not waiter.cancelled() and (lost := waiter.result()) is not None:
                self._checkin(key, lost)  # handed over just as we gave up: pass it on
            if isinstance(exc, TimeoutError):
                raise httpx.PoolTimeout(f"no free connection to this instance within {timeout_s} s") from exc
            raise
        finally:
            with contextlib.suppress(ValueError):
                origin.waiters.remove(waiter)
        if handed is None:
            raise httpx.ConnectError("the gateway's upstream pool is closed")
        return handed

    def _checkin(self, key: tuple[bytes, bytes, int | None], connection: httpcore.AsyncHTTPConnection) -> None:
        """Give a connection back once its exchange is over (done, failed or abandoned)."""
        origin = self._origins.get(key)
        if origin is None:  # cannot happen while counts are right; never leak a socket if it does
            self._close_later(connection)
            return
        reusable = not self._closed and connection.is_idle() and not connection.is_closed()
        while origin.waiters:
            waiter = origin.waiters.popleft()
            if waiter.done():
                continue
            if not reusable:  # the waiter gets a fresh connection in this one's place
                self._discard(origin, connection)
                origin.count += 1
                connection = self._new(key)
            waiter.set_result(connection)
            return
        if reusable and len(origin.idle) < self.max_idle:
            origin.idle.append((connection, time.monotonic()))
            return
        self._discard(origin, connection)
        if not origin.count:
            self._origins.pop(key, None)

    def _new(self, key: tuple[bytes, bytes, int | None]) -> httpcore.AsyncHTTPConnection:
        scheme, host, port = key
        return httpcore.AsyncHTTPConnection(
            origin=httpcore.Origin(scheme, host, port or (443 if scheme == b"https" else 80)),
            keepalive_expiry=self.keepalive_expiry_s,
        )

    def _discard(self, origin: _Origin, connection: httpcore.AsyncHTTPConnection) -> None:
        origin.count -= 1
        if not connection.is_closed():  # mid-exchange (an abandoned reply) or surplus: its socket goes
            self._close_later(connection)

    def _close_later(self, connection: httpcore.AsyncHTTPConnection) -> None:
        task = asyncio.get_running_loop().create_task(connection.aclose())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def _sweep(self, now: float) -> None:
        """Close connections idle past their expiry, in every origin (instances come and go)."""
        self._last_sweep = now
        for key, origin in list(self._origins.items()):
            keep = []
            for connection, since in origin.idle:
                if now - since < self.keepalive_expiry_s and not connection.has_expired():
                    keep.append((connection, since))
                else:
                    origin.count -= 1
                    self._close_later(connection)
            origin.idle = keep
            if not origin.count and not origin.waiters:
                del self._origins[key]


class _ReleasingStream(httpx.AsyncByteStream):
    """The reply body; closing it gives the connection back to the pool."""

    def __init__(
        self, stream: object, pool: UpstreamPool, key: tuple[bytes, bytes, int | None], connection: httpcore.AsyncHTTPConnection
    ) -> None:
        self._stream = stream
        self._pool = pool
        self._key = key
        self._connection = connection
        self._released = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with _httpx_errors():
            async for part in self._stream:  # type: ignore[attr-defined]
                yield part

    async def aclose(self) -> None:
        try:
            with _httpx_errors():
                await self._stream.aclose()  # type: ignore[attr-defined]
        finally:
            if not self._released:
                self._released = True
                self._pool._checkin(self._key, self._connection)  # noqa: SLF001

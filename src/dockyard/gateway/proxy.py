"""Forwarding one request to an instance and streaming the reply back.

Bodies stream both ways through one shared `httpx.AsyncClient` and are never held whole. The
instances are tried in the balancer's order. A failure to *connect* moves on to the next one
(nothing was sent). So does, once per request, a connection that ends or is reset before a
single byte of a reply, when the body was small enough to keep (see body.py): that is what a
killed instance does to the requests still queued for it, and the gateway cannot tell them
from one the container read and then died on (Docker's port proxy turns both into the same
close), so a request is never lost for it, at the price that one an instance read and died on
may reach a second instance. Any other failure is final. The container's status, headers
(less hop-by-hop ones) and body come back as it sent them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx

from dockyard.errors import Conflict, ServiceUnavailable
from dockyard.gateway import deadlines
from dockyard.gateway.balancer import Balancer, Upstream
from dockyard.gateway.body import RequestBody, body_too_slow
from dockyard.gateway.exchange import Exchange
from dockyard.gateway.headers import RawHeaders, client_response_headers
from dockyard.gateway.metrics import GatewayMetrics
from dockyard.gateway.pool import Timeouts, UpstreamPool
from dockyard.gateway.replies import BadGateway, broke_off, failed_before_reply, head_without_body, no_reply_in_time
from dockyard.gateway.routes import Route
from dockyard.gateway.upstream import ClosedUnanswered, Reply, ResetUnanswered

log = logging.getLogger("dockyard.gateway")

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


@dataclass(slots=True)  # made per request: a frozen dataclass sets each field through object.__setattr__
class Forward:
    """Where and how one request goes upstream."""

    method: str
    path: str  # container path, query string included
    headers: RawHeaders  # Host excepted (each instance has its own)
    stream_required: bool = False  # /predictWithResponseStream: a non-streaming 2xx reply is a 409
    chunked: bool = False  # the body is re-framed as chunks (the caller sent it chunked)

    @property
    def method_bytes(self) -> bytes:
        return self.method.encode()

    @property
    def target(self) -> bytes:
        return self.path.encode("latin-1")


class DisconnectWatch:
    """Once the request body is in, notices the caller going away and cancels the exchange.

    Without it a caller that hangs up on a long stream would leave the gateway reading the
    container's reply to the end (the server drops the writes silently). dockyard's own server
    (httpserver.py) says when a connection is lost (`notify_lost`, from the scope): then the
    watch costs nothing until it happens. Under any other ASGI server the watch waits in
    `receive()` for `http.disconnect`, in a task of its own; that costs more than the rest of a
    small request's routing, so it starts only once the exchange has lasted `after_s`: a quick
    predict ends before that, and a caller leaving a slow one is noticed at most `after_s`
    later. The delay is a coarse deadline (deadlines.py: at most a tick late), not a loop timer
    of its own per request.
    """

    __slots__ = ("_receive", "_notify_lost", "after_s", "_timer", "_task", "target", "fired", "done")

    def __init__(self, receive: Receive, notify_lost: Callable[[Callable[[], None]], None] | None = None, after_s: float = 0.05) -> None:
        self._receive = receive
        self._notify_lost = notify_lost
        self.after_s = after_s
        self._timer: deadlines.Deadline | None = None
        self._task: asyncio.Task[None] | None = None
        self.target: asyncio.Task[Any] | None = None
        self.fired = False
        self.done = False  # set just before the last byte of the reply goes out

    def start(self) -> None:
        if self._notify_lost is not None:
            self._notify_lost(self._hung_up)
            self._notify_lost = None
        elif self._timer is None and self._task is None and not self.done:
            loop = asyncio.get_running_loop()
            self._timer = deadlines.for_loop(loop).add(loop.time() + self.after_s, self._begin)

    def _begin(self) -> None:
        self._timer = None
        if not self.done:
            self._task = asyncio.get_running_loop().create_task(self._watch())

    def stop(self) -> None:
        self.target = None  # from now on a lost connection cancels nothing
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._task is not None:
            self._task.cancel()
            self._task = None

    def _hung_up(self) -> None:
        if not self.done and self.target is not None and not self.target.done():
            self.fired = True
            self.target.cancel()

    async def _watch(self) -> None:
        while True:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                self._hung_up()
                return


class Proxy:
    """Sends through the connection pool that the gateway's shared client owns.

    Requests go to the pool directly: the client's per-request layers (auth flow, redirects,
    cookie jar) do nothing a proxy wants and cost more than the rest of the gateway together
    (a cookie jar would even replay one caller's cookies for the next).
    """

    def __init__(
        self,
        pool: UpstreamPool,
        balancer: Balancer,
        metrics: GatewayMetrics,
        request_timeout_s: float,
        connect_timeout_s: float,
    ) -> None:
        self.pool = pool
        self.balancer = balancer
        self.metrics = metrics
        self.request_timeout_s = request_timeout_s
        # Per-read timeouts: a reply stream that goes silent this long is cut.
        self.timeouts = Timeouts(connect_s=connect_timeout_s, read_s=request_timeout_s, pool_s=request_timeout_s)

    async def forward(
        self, ex: Exchange, route: Route, fwd: Forward, body: bytes | RequestBody | None, send: Send, watch: DisconnectWatch
    ) -> None:
        """`body`: None, the whole body already read (bytes), or the body still to stream."""
        deadline = asyncio.get_running_loop().time() + self.request_timeout_s
        ex.upstream_started = time.perf_counter()
        try:
            upstream, response = await self._connect(ex, route, fwd, body, deadline)
        finally:
            if isinstance(body, RequestBody):
                ex.bytes_in = body.received
        try:
            await self._relay(ex, fwd, response, send, watch)
        finally:
            response.close()
            upstream.outstanding -= 1
            ex.upstream_ended = time.perf_counter()

    async def _connect(
        self, ex: Exchange, route: Route, fwd: Forward, body: bytes | RequestBody | None, deadline: float
    ) -> tuple[Upstream, Reply]:
        """Send the request to the first instance that accepts a connection; its reply headers."""
        refused: list[str] = [ex.unanswered] if ex.unanswered else []
        # Set: the one retry after an unanswered close is spent (maybe by a direct reply, direct.py).
        unanswered: Exception | None = ClosedUnanswered(ex.unanswered) if ex.unanswered else None
        streamed = body if isinstance(body, RequestBody) else None  # bytes can always go again
        for upstream in self.balancer.order(route):
            if streamed is not None and streamed.started and not streamed.replayable:
                break  # the body left for an instance that then failed and cannot be sent again
            ex.attempts += 1
            ex.instance_id = upstream.backend.instance_id
            backend = upstream.backend
            upstream.outstanding += 1
            try:
                headers = [(b"host", backend.authority), *fwd.headers]
                if streamed is None:
                    # Sent in one write: only connecting (its own timeout) and the reply's
                    # headers can wait, and the pool bounds the latter by the deadline.
                    response = await self.pool.send(
                        backend.host, backend.port, fwd.method_bytes, fwd.target, headers, body, fwd.chunked, self.timeouts, deadline,
                    )  # fmt: skip
                else:
                    async with asyncio.timeout_at(deadline):  # a streamed body can wait on its caller
                        response = await self.pool.send(
                            backend.host, backend.port, fwd.method_bytes, fwd.target, headers, body, fwd.chunked, self.timeouts
                        )  # fmt: skip
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                upstream.outstanding -= 1
                self.metrics.upstream_errors.labels(route.deployment_id, "connect").inc()
                refused.append(f"{upstream.backend.instance_id} ({type(exc).__name__}: {exc or 'no detail'})")
                # Said once per ejection: a dead instance must not flood the log.
                log.log(logging.DEBUG if upstream.ejected else logging.WARNING,
                        "%s: instance %s refused a connection (request %s): %s; out of rotation until probed healthy again",
                        route.deployment_id, upstream.backend.instance_id, ex.request_id, exc)  # fmt: skip
                self.balancer.eject(upstream)
                continue
            except httpx.PoolTimeout as exc:
                upstream.outstanding -= 1
                raise ServiceUnavailable(
                    "the gateway has no free connection to this deployment's instances; retry shortly"
                ) from exc
            except (TimeoutError, httpx.TimeoutException) as exc:
                upstream.outstanding -= 1
                if streamed is not None and not streamed.complete:  # the caller's body was late, not the model
                    raise body_too_slow(self.request_timeout_s, streamed.received) from exc
                self.metrics.upstream_errors.labels(route.deployment_id, "timeout").inc()
                raise no_reply_in_time(self.request_timeout_s, upstream.backend.instance_id) from exc
            except (ClosedUnanswered, ResetUnanswered) as exc:
                upstream.outstanding -= 1
                self.metrics.upstream_errors.labels(route.deployment_id, "aborted").inc()
                self.balancer.eject(upstream)  # it dropped a connection: likely dying
                if unanswered is not None or not (streamed is None or streamed.replayable):
                    raise failed_before_reply(upstream.backend.instance_id, exc) from exc
                unanswered = exc
                log.warning("%s: instance %s dropped request %s unanswered (%s); sending it to another instance",
                            route.deployment_id, upstream.backend.instance_id, ex.request_id, exc)  # fmt: skip
                refused.append(f"{upstream.backend.instance_id} ({type(exc).__name__}: {exc})")
                continue
            except httpx.TransportError as exc:
                upstream.outstanding -= 1
                self.metrics.upstream_errors.labels(route.deployment_id, "aborted").inc()
                raise failed_before_reply(upstream.backend.instance_id, exc) from exc
            except BaseException:
                upstream.outstanding -= 1
                raise
            if upstream.ejected:
                self.balancer.admit(upstream)
            return upstream, response
        if unanswered is not None:
            raise BadGateway(
                f"no instance of deployment {route.deployment_id} answered ({'; '.join(refused)}); "
                "check the containers' logs"
            ) from unanswered
        raise ServiceUnavailable(
            f"no instance of deployment {route.deployment_id} accepted a connection ({'; '.join(refused) or 'none tried'}); "
            "the reconciler restarts failed instances, retry shortly"
        )

    async def _relay(self, ex: Exchange, fwd: Forward, reply: Reply, send: Send, watch: DisconnectWatch) -> None:
        if fwd.stream_required and 200 <= reply.status < 300 and not reply.streaming:
            raise Conflict(
                f"the model answered /predictWithResponseStream with a non-streaming reply "
                f"(HTTP {reply.status}, {(reply.content_type or b'no content type').decode('latin-1')}, "
                f"{(reply.content_length or b'?').decode('latin-1')} bytes); use /predict, or make the container stream "
                "(text/event-stream or chunked)"
            )
        headers = client_response_headers(reply.headers, ex.request_id, reply.connection_header)
        read_timeout = self.timeouts.read_s
        first = None
        if not reply.streaming:
            # A reply with a content-length: its head goes out with its first body bytes, so a
            # container that dies between its head and its body gets its caller a JSON error,
            # not a head that promises a body never sent (a stream's head goes out at once).
            try:
                first = await reply.read(read_timeout)
            except httpx.HTTPError as exc:
                kind = "timeout" if isinstance(exc, httpx.TimeoutException) else "aborted"
                self.metrics.upstream_errors.labels(ex.deployment_id or "-", kind).inc()
                raise head_without_body(ex.instance_id or "-", exc, self.request_timeout_s) from exc
        await send({"type": "http.response.start", "status": reply.status, "headers": headers})
        ex.status = reply.status
        ex.response_started = True
        try:
            while True:
                if first is None:
                    chunk = await reply.read(read_timeout)
                else:
                    chunk, first = first, None
                if not chunk:
                    break
                ex.bytes_out += len(chunk)
                if reply.drained:  # that was the last chunk: it ends the reply, one message fewer
                    watch.done = True
                    await send({"type": "http.response.body", "body": chunk, "more_body": False})
                    ex.response_complete = True
                    return
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except httpx.HTTPError as exc:
            # Headers are gone: the only honest signal left is to end the reply incomplete, so
            # the caller sees a cut stream rather than a short one that looks whole.
            ex.error = broke_off(ex.bytes_out, exc)
            kind = "timeout" if isinstance(exc, httpx.TimeoutException) else "aborted"
            self.metrics.upstream_errors.labels(ex.deployment_id or "-", kind).inc()
            log.warning("request %s: %s", ex.request_id, ex.error)
            return
        watch.done = True
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        ex.response_complete = True

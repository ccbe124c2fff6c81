"""The commonest predict relayed from callbacks alone: no task, no coroutine, no future.

A small `POST /{id}/predict` whose body came with its head, to a deployment whose route and
caller's decision are cached, over an idle keep-alive connection to its first instance, is
the request a busy gateway serves all day. dockyard's own server (httpserver.py) offers it to
`Gateway.direct`, which sends it upstream in one write and hands the upstream connection a
`DirectReply`: the connection's parser callbacks write the container's reply to the caller as
they come (its head and body of one read in one write) and the last one ends the exchange,
writing its access entry and metrics and letting the caller's connection read its next request.

Everything the general path (`Gateway.__call__`) decides is decided the same way here, and
everything rarer goes there instead: a request `Gateway._plain_route` does not choose, an
instance that is ejected or has no idle connection, a head that does not build. Once the
request is sent:

- an instance that closes or resets the connection before a byte of reply is ejected and the
  request is handed, whole and unchanged (its request id kept), to the general path, which
  sends it to another instance; that was its one retry, as the general path allows one;
- a reply that is not HTTP, or a close after part of the head, is a 502; no head within the
  request timeout is a 504; both are the JSON errors the general path writes;
- a reply with a content-length whose body never starts (the container dies or goes silent
  after its head) is a 502 or 504 as well: its head is held until the first body bytes;
- a reply that breaks off, or goes silent for the read timeout, after its head was written is
  cut: the caller's connection closes, the entry records the error;
- a caller that hangs up ends the exchange at once (499 when nothing was written); the
  upstream connection closes with it;
- while the caller's connection cannot take more, the upstream connection stops reading.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, ClassVar, Final

import httpx

from dockyard.errors import DockyardError
from dockyard.gateway import deadlines
from dockyard.gateway.balancer import Upstream
from dockyard.gateway.exchange import Exchange
from dockyard.gateway.headers import client_response_headers, client_response_lines, with_request_id
from dockyard.gateway.httpcycle import CUT_KEY
from dockyard.gateway.replies import (
    BadGateway,
    broke_off,
    error_document,
    failed_before_reply,
    head_without_body,
    no_reply_in_time,
)
from dockyard.gateway.upstream import ClosedUnanswered, Reply, ResetUnanswered, UpstreamConnection

if TYPE_CHECKING:
    from dockyard.gateway.app import Gateway
    from dockyard.gateway.httpcycle import Cycle

log = logging.getLogger("dockyard.gateway")
_clock: Final = time.perf_counter  # (bound once, as in app.py)

# The scope key that tells the general path an instance already dropped this request unanswered
# (its one retry is spent); the value names that instance and what it did.
UNANSWERED_KEY = "dockyard.unanswered"


class DirectReply(Reply):
    """One exchange relayed from the upstream connection's callbacks to the caller's cycle."""

    due = 0.0  # when the reply's head, or its next bytes, are late (the loop's clock)

    def __init__(self, gateway: Gateway, ex: Exchange, cycle: Cycle, upstream: Upstream, connection: UpstreamConnection,
                 body: bytes) -> None:  # fmt: skip
        # Reply's own fields, without the future a waiting coroutine would need: those read on
        # every reply set here (an instance's own attribute reads quicker than a class default),
        # the rest left to their class defaults.
        self.headers = []
        self.complete = False
        self.connection_header = False
        self._ended = False
        self._started = False  # the caller's response has begun (its head is written, or pending in the cycle)
        self._connection = connection
        self._on_close = gateway.transport.checkin
        self.gateway = gateway
        self.ex = ex
        self.cycle = cycle
        self.upstream = upstream
        self.body = body  # kept until the reply starts, for the general path should the instance drop it
        self._out: list[bytes] = []

    def send(self, head: bytes) -> None:
        """Send the request (head and body in one write) and relay what comes back."""
        connection = self._connection
        connection.reply = self
        connection._interim = False  # noqa: SLF001 (the exchange `UpstreamConnection.start` would begin)
        connection._head_only = False  # noqa: SLF001
        cycle = self.cycle
        cycle.on_lost = self._caller_left
        cycle.on_writable = self._caller_writable
        loop = connection.loop
        self.due = loop.time() + self.gateway.options.request_timeout_s
        in_flight = InFlight.current
        if in_flight is None or in_flight.loop is not loop:
            in_flight = InFlight.of(loop)
        self._in_flight = in_flight
        in_flight.replies.add(self)  # (`InFlight.add`, inline)
        if in_flight.timer is None:
            in_flight.start()
        body = self.body
        connection.transport.write(head + body if body else head)  # type: ignore[union-attr]  # an idle connection is open

    # --- the upstream connection's callbacks ------------------------------------------------------

    def _headed(self) -> None:
        upstream = self.upstream
        if upstream.ejected_at is not None:
            self.gateway.balancer.admit(upstream)
        # The caller's response begins in `_fed`, with what this read brought: a reply that came
        # whole is framed and written in one step.

    def _start(self) -> bool:
        """Begin the caller's response (its head waits in the cycle for the first body bytes);
        False when the container's head cannot be relayed (the caller got a 502 instead)."""
        ex = self.ex
        try:
            if self.connection_header:  # it may name more headers to drop
                self.cycle.start_response(self.status, client_response_headers(self.headers, ex.request_id))
            else:
                lines, count = self._client_lines()
                length = self.content_length
                self.cycle.start_formatted(self.status, lines, count, -1 if length is None else int(length))
        except RuntimeError as exc:  # a header that would split the response: nothing was written
            instance = self.upstream.backend.instance_id
            self._refuse(BadGateway(f"the model server on instance {instance} sent a reply the gateway cannot relay ({exc})"))
            return False
        self._began()
        return True

    def _began(self) -> None:
        self._started = True
        self.body = b""
        ex = self.ex
        ex.status = self.status
        ex.response_started = True

    def _unstart(self) -> None:
        """Take back a response begun but not yet written (its head still pending in the cycle)."""
        cycle = self.cycle
        cycle.pending_head = None
        cycle.started = False
        self._started = False
        self.ex.response_started = False

    def _body(self, data: bytes) -> None:
        self._out.append(data)
        self.ex.bytes_out += len(data)

    def _finish(self) -> None:
        self.complete = True

    def _fed(self) -> None:
        """Write what this read brought: the head, the body parts, the end."""
        if self._ended or not self.status:
            return
        out = self._out
        cycle = self.cycle
        if not self._started:
            if self.complete and not self.connection_header and self.content_length is not None and self._whole():
                return
            if not self._start():
                return
        # A head alone is written only for a reply of unknown length (a stream: its caller may
        # want the head before the first event); one with a content-length waits for its first
        # body bytes, so a container that dies between its head and its body (two writes, for
        # many servers) gets its caller a JSON 502, not a head that promises a body never sent.
        if out or self.complete or (cycle.pending_head is not None and self.content_length is None):
            data = out[0] if len(out) == 1 else b"".join(out)
            out.clear()
            try:
                if self.complete:
                    cycle.write_last(data)
                else:
                    cycle.write_body(data, True)
            except RuntimeError as exc:  # longer or shorter than the content-length the container gave
                self._cut(f"the container's reply does not match its framing ({exc})", "aborted")
                return
        if self.complete:
            self.ex.response_complete = True
            self._end()
            return
        if cycle.conn.write_paused:  # until the caller takes some, or the server's send timeout
            self._connection.pause_reading()
            self.due = self._connection.loop.time() + cycle.conn.server.send_timeout_s
        else:
            self.due = self._connection.loop.time() + self.gateway.options.request_timeout_s

    def _whole(self) -> bool:
        """The commonest reply, whole in one read under its content-length: framed and written
        in one step (`Cycle.write_whole`). False: the general framing writes it."""
        out = self._out
        data = out[0] if len(out) == 1 else b"".join(out)
        # The container's headers, as the connection's parser gave them (see `Cycle.write_whole`).
        lines = self._client_lines()[0]
        written = self.cycle.write_whole(self.status, lines, int(self.content_length), data)  # type: ignore[arg-type]
        if written:
            out.clear()
            self._began()
            self.ex.response_complete = True
            self._end()
        return written

    def _client_lines(self) -> tuple[bytes, int]:
        """The caller's header lines and their count (`client_response_lines`), joined from the
        lines relayed when the reply was parsed in one step (simplehead.py)."""
        relayed = self.relayed
        if relayed is None:
            return client_response_lines(self.headers, self.ex.request_id)
        return with_request_id(relayed, self.ex.request_id), self.relayed_count + 1

    def _fail(self, error: Exception) -> None:
        if self._ended or self.complete:
            return
        upstream = self.upstream
        gateway = self.gateway
        instance = upstream.backend.instance_id
        deployment_id = self.ex.deployment_id or "-"
        if self.status:
            kind = "timeout" if isinstance(error, httpx.TimeoutException) else "aborted"
            if not self._out and (not self._started or self.cycle.pending_head is not None):
                # Nothing reached the caller (a held head, see `_fed`): it can still get a clean error.
                gateway.metrics.upstream_errors.labels(deployment_id, kind).inc()
                self._unstart()
                self._refuse(head_without_body(instance, error, gateway.options.request_timeout_s))
                return
            self._cut(broke_off(self.ex.bytes_out, error), kind)
            return
        if isinstance(error, TimeoutError):
            gateway.metrics.upstream_errors.labels(deployment_id, "timeout").inc()
            self._refuse(no_reply_in_time(gateway.options.request_timeout_s, instance))
            return
        gateway.metrics.upstream_errors.labels(deployment_id, "aborted").inc()
        if isinstance(error, (ClosedUnanswered, ResetUnanswered)):
            gateway.balancer.eject(upstream)  # it dropped a connection: likely dying
            log.warning("%s: instance %s dropped request %s unanswered (%s); sending it to another instance",
                        deployment_id, instance, self.ex.request_id, error)  # fmt: skip
            self._hand_over(f"{instance} ({type(error).__name__}: {error})")
            return
        self._refuse(failed_before_reply(instance, error))

    # --- the caller's side ----------------------------------------------------------------------

    def _caller_left(self) -> None:
        if self._ended:
            return
        ex = self.ex
        ex.status = ex.status if ex.response_started else 499
        ex.error = self.cycle.scope.get(CUT_KEY) or "the caller went away before the reply was complete"
        self._end()

    def _caller_writable(self) -> None:
        if not self._ended:
            self._connection.resume_reading()
            self.due = self._connection.loop.time() + self.gateway.options.request_timeout_s

    # --- timeouts ---------------------------------------------------------------------------------

    def timed_out(self) -> None:
        """`due` passed (InFlight checks): the reply's head is late, its body went silent, or
        the caller took none of it for the server's send timeout (then it is cut off, as the
        server cuts off such a caller on the general path: `Connection.drain`)."""
        if self._ended:
            return
        conn = self.cycle.conn
        if conn.write_paused:
            self.ex.error = f"the caller took none of the reply for {conn.server.send_timeout_s:g} s"
            log.info("request %s: %s; its connection is closed", self.ex.request_id, self.ex.error)
            conn.close(abort=True)
            self._end()
            return
        if not self.status:
            self._fail(TimeoutError())
        else:
            self._fail(httpx.ReadTimeout(f"the container sent nothing for {self.gateway.options.request_timeout_s:g} s"))

    # --- endings ----------------------------------------------------------------------------------

    def _refuse(self, error: DockyardError) -> None:
        """Nothing of the reply was written: the caller gets the gateway's JSON error."""
        ex = self.ex
        cycle = self.cycle
        ex.status = error.status
        ex.error = error.message
        body = error_document(error)
        ex.response_started = True
        cycle.start_response(error.status, [
            (b"content-type", b"application/json"), (b"content-length", b"%d" % len(body)), (b"opc-request-id", ex.request_id.encode()),
        ])  # fmt: skip
        cycle.write_body(body, False)
        ex.bytes_out = len(body)
        ex.response_complete = True
        self._end()

    def _cut(self, error: str, kind: str) -> None:
        """The reply started and cannot end well: the caller's connection closes under it, so
        it sees a cut stream rather than a short one that looks whole."""
        if not self._started and not self._start():  # the head came in the read that broke off
            return
        ex = self.ex
        ex.error = error
        self.gateway.metrics.upstream_errors.labels(ex.deployment_id or "-", kind).inc()
        log.warning("request %s: %s", ex.request_id, error)
        if self._out:  # what came before the break
            data = b"".join(self._out)
            self._out.clear()
            try:
                self.cycle.write_body(data, True)
            except RuntimeError:
                pass  # more than its content-length: the close below tells the caller all the same
        self.cycle.conn.close()
        self._end()

    def _release(self) -> None:
        """The exchange's hold on the upstream connection, the instance and the deployment."""
        self._ended = True
        self._in_flight.replies.discard(self)
        cycle = self.cycle
        cycle.on_lost = None
        cycle.on_writable = None
        self.close()  # the connection goes back to the pool when the reply was read whole
        self.upstream.outstanding -= 1
        self.ex.upstream_ended = _clock()
        self.gateway.balancer.leave(self.ex.deployment_id)  # type: ignore[arg-type]

    def _end(self) -> None:
        self._release()
        gateway = self.gateway
        try:
            entry = self.ex.entry()
            gateway.access.write(entry)
            gateway.metrics.observe(entry, True)
        except Exception:
            log.exception("request %s: could not record the access entry", self.ex.request_id)
        self.cycle.conn.finished()

    def _hand_over(self, why: str) -> None:
        """Give the request to the general path (the ASGI call), as it came, for another instance."""
        body = self.body
        self._release()
        cycle = self.cycle
        scope = cycle.scope
        scope[UNANSWERED_KEY] = why
        # The retry carries this exchange's id: the caller's (a sane one is kept as it came), or the
        # one made for it when the caller sent none or one that is not a token.
        headers = scope["headers"]
        headers[:] = [header for header in headers if header[0] != b"opc-request-id"]
        headers.append((b"opc-request-id", self.ex.request_id.encode()))
        cycle.give_back_body(body)
        cycle.conn.call_app(cycle)


class InFlight:
    """The direct replies in flight on one event loop, checked against their `due` times every
    `TICK_S` while there are any: adding and removing a reply is a set operation, cheaper than a
    deadline per request (deadlines.py), and a reply is late by at most a tick, as with those."""

    TICK_S = deadlines.TICK_S
    current: ClassVar[InFlight | None] = None  # the last one `of` gave: nearly always the one asked for next

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.replies: set[DirectReply] = set()
        self.timer: asyncio.TimerHandle | None = None

    @classmethod
    def of(cls, loop: asyncio.AbstractEventLoop) -> InFlight:
        """The loop's, made on first use (kept on the loop: the two go together)."""
        try:
            in_flight: InFlight = loop._dockyard_direct_in_flight  # type: ignore[attr-defined]
        except AttributeError:
            in_flight = loop._dockyard_direct_in_flight = cls(loop)  # type: ignore[attr-defined]
        InFlight.current = in_flight
        return in_flight

    def start(self) -> None:
        """Check the replies every tick from now on, while there are any."""
        self.timer = self.loop.call_later(self.TICK_S, self._check)

    def _check(self) -> None:
        self.timer = None
        now = self.loop.time()
        for reply in [reply for reply in self.replies if reply.due <= now]:
            self.replies.discard(reply)
            reply.timed_out()
        if self.replies:
            self.timer = self.loop.call_later(self.TICK_S, self._check)

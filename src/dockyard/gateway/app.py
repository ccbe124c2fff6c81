"""The data-plane ASGI app: `/{deploymentId}/predict`, `/predict/...`, `/predictWithResponseStream`.

`Gateway` only needs the metadata store: routes come from the deployment documents and the
reconciler's instance rows, so any number of gateways (in this process or others) serve the
same deployments. Every reply the gateway writes itself is JSON `{"code", "message"}`.

Paths:
- `GET  /health`                              the gateway itself is up
- `GET  /{id}`                                the deployment's serving status (200, else the error predict would get)
- `POST /{id}/predict`                        → MODEL_DEPLOY_PREDICT_ENDPOINT, the `route` header, or Triton's infer path
- `POST /{id}/predict/`                       → `/predict/` (C4)
- `ANY  /{id}/predict/<suffix>`               → `/<suffix>` when a custom endpoint declares it
- `POST /{id}/predictWithResponseStream`      → as /predict, streamed; needs MODEL_DEPLOY_ENABLE_STREAMING=true
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable
from http.cookiejar import CookieJar, DefaultCookiePolicy
from typing import TYPE_CHECKING, Any, Final, Protocol

import httpx

from dockyard.errors import (
    Conflict,
    DockyardError,
    InternalServerError,
    MethodNotAllowed,
    NotAuthorizedOrNotFound,
    NotFound,
    RequestTimeout,
    ServiceUnavailable,
    TooManyRequests,
)
from dockyard.gateway import endpoints, triton
from dockyard.gateway.accesslog import AccessLog, AccessSink
from dockyard.gateway.balancer import Balancer
from dockyard.gateway.body import KEEP_FOR_RETRY_BYTES, METHODS_WITH_BODY, ClientGone, RequestBody, check_framing, read_small
from dockyard.gateway.direct import UNANSWERED_KEY, DirectReply
from dockyard.gateway.exchange import Exchange
from dockyard.gateway.headers import caller, request_id, upstream_request_headers, upstream_request_lines
from dockyard.gateway.httpcycle import CUT_KEY
from dockyard.gateway.metrics import GatewayMetrics
from dockyard.gateway.options import GatewayOptions
from dockyard.gateway.pool import UpstreamPool
from dockyard.gateway.proxy import DisconnectWatch, Forward, Proxy
from dockyard.gateway.replies import send_error, send_json
from dockyard.gateway.routes import SERVING_STATES, Route, RouteSource, RouteTable
from dockyard.gateway.upstream import UpstreamConnection

if TYPE_CHECKING:
    from dockyard.gateway.httpcycle import Cycle


class Authorize(Protocol):
    """May the verified caller (None when there is none) use a deployment in this compartment
    (predict)?"""

    async def __call__(self, caller: Any, compartment_id: str) -> bool: ...

    def known(self, caller: Any, compartment_id: str) -> bool | None:
        """The decision when it is at hand without waiting (a cached one), else None."""

log = logging.getLogger("dockyard.gateway")

# Bound once: `time.x()` in compiled code looks `x` up in the module's dict on every request.
_wall_clock: Final = time.time
_clock: Final = time.perf_counter

Scope = dict[str, Any]  # as ASGI servers make it (compiled code reads a dict's items directly)
_NO_STATE: Final[dict[str, Any]] = {}
_DEPLOYMENT_ID = re.compile(r"^[A-Za-z0-9._-]{1,255}$")

PREDICT, PREDICT_SLASH, CUSTOM, STREAM = "predict", "predict/", "custom", "stream"


class Gateway:
    """An ASGI app serving the data plane of every deployment in `store`.

    Run it alone (it answers the ASGI lifespan and closes its connections on shutdown) or
    beside the control plane (then call `aclose()` on shutdown). `metrics` holds its Prometheus
    registry; `gateway_metrics_app(gateway)` serves it.
    """

    def __init__(
        self, store: RouteSource, options: GatewayOptions, access_sink: AccessSink | None = None, authorize: Authorize | None = None
    ) -> None:
        self.options = options
        # May the verified caller (scope["state"]["caller"]) use a deployment in this compartment?
        # None: everyone may. A refusal is the 404 of an unknown deployment.
        self.authorize = authorize
        self.access = AccessLog(access_sink)
        self.balancer = Balancer(options.ejection_s)
        self.metrics = GatewayMetrics(inflight=self.balancer.inflight_counts)
        self.routes = RouteTable(store, options.route_cache_ttl_s, on_refresh=self.balancer.sync)
        # One pool of upstream connections for every deployment; the client owns (and closes) it.
        self.transport = UpstreamPool(options.max_connections, options.max_keepalive_connections, options.keepalive_expiry_s)
        self.client = httpx.AsyncClient(
            transport=self.transport,
            timeout=httpx.Timeout(options.request_timeout_s, connect=options.connect_timeout_s),
            follow_redirects=False,
            trust_env=False,  # never send model traffic through a proxy from the environment
            cookies=CookieJar(DefaultCookiePolicy(allowed_domains=[])),  # one caller's cookies never reach another
        )
        self.proxy = Proxy(self.transport, self.balancer, self.metrics, options.request_timeout_s, options.connect_timeout_s)
        self.triton = triton.TritonModels(self.client, options.triton_index_ttl_s, options.connect_timeout_s + 5)
        self._at_close: list[Callable[[], None]] = []

    def flush_at_close(self, flush: Callable[[], None]) -> None:
        """Call `flush` (blocking: it runs in a thread) when the gateway closes: on the ASGI
        lifespan shutdown when it runs alone, in `aclose()` when composed beside the control
        plane. The durable access log writes its queued entries there, before the process ends."""
        self._at_close.append(flush)

    async def aclose(self) -> None:
        for flush in self._at_close:
            try:
                await asyncio.to_thread(flush)
            except Exception:
                log.exception("could not write the last access-log entries")
        await self.client.aclose()

    # --- ASGI ----------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            if scope["type"] == "lifespan":
                await self._lifespan(receive, send)
            return  # websockets are not part of the data plane: not accepting one closes it
        # The request itself, here rather than in a method of its own: one coroutine less on
        # every request's way in and out.
        headers: dict[bytes, bytes] = dict(scope["headers"])
        ex = Exchange(
            request_id(headers.get(b"opc-request-id")), scope["method"], _raw_path(scope), _wall_clock(), _clock(),
            caller=caller(headers.get(b"authorization")),
        )  # fmt: skip
        if UNANSWERED_KEY in scope:  # a direct reply's instance dropped it: its one retry is spent
            ex.unanswered = scope[UNANSWERED_KEY]
            ex.attempts = 1
        try:
            route = self._plain_route(ex.method, ex.path, scope, headers)
            if route is not None:
                await self._plain_predict(ex, scope, headers, route, receive, send)
            else:
                await self._dispatch(ex, scope, headers, receive, send)
        except DockyardError as exc:
            extra = None
            if isinstance(exc, MethodNotAllowed):
                extra = [(b"allow", getattr(exc, "allow", "POST").encode())]
            elif isinstance(exc, RequestTimeout):  # the rest of the body may still come: it must not be read as a request
                extra = [(b"connection", b"close")]
                ex.bytes_in = max(ex.bytes_in, exc.received)
            await self._fail(ex, send, exc, extra)
        except ClientGone as gone:
            cut = scope.get(CUT_KEY)  # while a body comes, only the server's body timeout cuts (it answered 408)
            ex.status, ex.error = (408, cut) if cut else (499, "the caller went away while sending its body")
            ex.bytes_in = max(ex.bytes_in, gone.received)  # a streamed body counted its own
        except Exception as exc:  # never a stack trace or an HTML page to the caller
            log.exception("request %s failed unexpectedly", ex.request_id)
            if not ex.response_started:
                await self._fail(ex, send, InternalServerError(
                    f"the gateway failed on this request (opc-request-id {ex.request_id}); its log has the details"
                ))  # fmt: skip
            else:
                ex.error = f"failed after the reply started: {type(exc).__name__}"
        finally:
            entry = ex.entry()
            self.access.write(entry)
            self.metrics.observe(entry, ex.known_deployment)

    async def _lifespan(self, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _fail(self, ex: Exchange, send: Any, exc: DockyardError, headers: list[tuple[bytes, bytes]] | None = None) -> None:
        if ex.response_started:
            ex.error = exc.message
            return
        if ex.error is None:
            ex.error = exc.message
        ex.status = exc.status
        ex.response_started = True
        ex.bytes_out = await send_error(send, exc, ex.request_id, headers)
        ex.response_complete = True

    # --- the commonest request ----------------------------------------------------------------

    def direct(self, cycle: Cycle) -> bool:
        """dockyard's own server offers each request whose body is in: the commonest one
        (`_plain_route`), over an idle connection to an admitted instance, is sent now and its
        reply relayed from callbacks (direct.py). False: the ASGI call serves it."""
        scope = cycle.scope
        headers = cycle.by_name
        if headers is None:
            headers = cycle.by_name = dict(scope["headers"])
        path = scope["path"]  # dockyard's server: no root path, the query split off already
        if 0x25 in scope["raw_path"]:  # percent-encoded: routed on the path as sent, as the general path does
            path = _raw_path(scope)
        route = self._plain_route(scope["method"], path, scope, headers)
        if route is None:
            return False
        upstream = self.balancer.first(route)
        backend = upstream.backend
        connection = None if upstream.ejected_at is not None else self.transport.take_idle(backend.host, backend.port)
        if connection is None:  # the general path tries the instances in order (and opens connections)
            self.balancer.unused(route)
            return False
        authorization = headers.get(b"authorization")
        ex = Exchange(
            request_id(headers.get(b"opc-request-id")), "POST", path, _wall_clock(), _clock(), route.deployment_id, True,
            caller(authorization) if authorization else None,
        )  # fmt: skip
        client = scope.get("client")
        formatted = upstream_request_lines(scope["headers"], headers, ex.request_id, client[0] if client else None, cycle.relayed)
        try:
            if formatted is None:  # Connection or X-Forwarded-For: filtered the general way
                forwarded = upstream_request_headers(scope["headers"], ex.request_id, client[0] if client else None, "http", headers)
                head = UpstreamConnection.head(b"POST", route.predict_path.encode("latin-1"), [(b"host", backend.authority), *forwarded])
            else:
                head = UpstreamConnection.parsed_head(b"POST", route.predict_path.encode("latin-1"), backend.authority, formatted)
        except (httpx.LocalProtocolError, UnicodeEncodeError):
            self.transport.checkin(connection, True)  # unused: the general path refuses the request
            self.balancer.unused(route)
            return False
        body = cycle.take_body()
        ex.bytes_in = len(body)
        ex.attempts = 1
        ex.instance_id = backend.instance_id
        ex.upstream_started = _clock()
        self.balancer.enter(route.deployment_id)
        upstream.outstanding += 1
        DirectReply(self, ex, cycle, upstream, connection, body).send(head)
        return True

    def _plain_route(self, method: str, path: str, scope: Scope, headers: dict[bytes, bytes]) -> Route | None:
        """The route of the commonest request when the caches alone decide it: `POST /{id}/predict`
        with a small body of declared length, no `route` header and no query, to a deployment
        whose fresh route serves (not in Triton mode), for a caller whose decision is cached,
        below the deployment's in-flight limit. None: the request goes the general way
        (`_dispatch`), which also answers every refusal."""
        if method != "POST" or not path.endswith("/predict") or path.count("/") != 2 or scope.get("query_string"):
            return None
        length = headers.get(b"content-length")
        if length is None or not length.isdigit() or b"transfer-encoding" in headers or b"route" in headers:
            return None
        declared = int(length)
        if not 0 < declared <= KEEP_FOR_RETRY_BYTES or declared > self.options.max_body_bytes:
            return None
        route = self.routes.fresh(path[1:-8])
        if route is None or route.triton or not route.backends or route.state not in SERVING_STATES:
            return None
        state: dict[str, Any] = scope.get("state") or _NO_STATE
        if self.authorize is not None and self.authorize.known(state.get("caller"), route.compartment_id) is not True:
            return None
        if not self.balancer.has_room(route, self.options.inflight_per_instance):
            return None
        return route

    async def _plain_predict(
        self, ex: Exchange, scope: Scope, headers: dict[bytes, bytes], route: Route, receive: Any, send: Any
    ) -> None:
        """What `_dispatch` and `_forward` do for a request `_plain_route` chose, without their
        choices: most requests are of this kind, and a busy gateway's CPU goes on the steps
        they take (benchmarks/gateway_instructions.py counts them)."""
        deployment_id = ex.deployment_id = route.deployment_id
        ex.known_deployment = True
        self.balancer.enter(deployment_id)
        watch = DisconnectWatch(receive, scope.get("dockyard.notify_lost"))
        task = watch.target = asyncio.current_task()
        try:
            body = await read_small(receive, self.options.max_body_bytes, self.options.request_timeout_s)
            ex.bytes_in = len(body)
            watch.start()
            client = scope.get("client")
            forwarded = upstream_request_headers(
                scope["headers"], ex.request_id, client[0] if client else None, scope.get("scheme", "http"), headers
            )
            try:
                await self.proxy.forward(ex, route, Forward("POST", route.predict_path, forwarded), body, send, watch)
            except asyncio.CancelledError:
                if not _caller_left(ex, watch, task, scope):
                    raise
        finally:
            watch.stop()
            self.balancer.leave(deployment_id)

    # --- routing ---------------------------------------------------------------------------------

    async def _dispatch(self, ex: Exchange, scope: Scope, headers: dict[bytes, bytes], receive: Any, send: Any) -> None:
        path = ex.path
        if path == "/health":
            ex.status = 200
            ex.bytes_out = await send_json(send, 200, {"status": "ok", "role": "gateway"}, ex.request_id)
            return
        parts = path[1:].split("/", 2)
        deployment_id = parts[0]
        if not _DEPLOYMENT_ID.match(deployment_id):
            raise NotFound(f"no data-plane operation at {path}; use /<deploymentId>/predict")
        ex.deployment_id = deployment_id
        if len(parts) == 1:
            await self._status(ex, deployment_id, send, scope)
            return
        action, suffix = parts[1], ("/" + parts[2] if len(parts) == 3 else None)
        if action == "predict":
            op = PREDICT if suffix is None else PREDICT_SLASH if suffix == "/" else CUSTOM
        elif action == "predictWithResponseStream" and suffix is None:
            op = STREAM
        else:
            raise NotFound(
                f"no data-plane operation at {path}; use /{deployment_id}/predict or /{deployment_id}/predictWithResponseStream"
            )
        if op != CUSTOM and ex.method != "POST":
            raise not_allowed(f"{ex.method} is not allowed on /{deployment_id}/{action}{suffix or ''}; use POST", "POST")

        declared = check_framing(
            ex.method, headers.get(b"content-length"), headers.get(b"transfer-encoding"), self.options.max_body_bytes
        )
        route = await self._serving_route(ex, deployment_id, scope)
        container_path, stream_required = self._container_path(route, op, suffix, ex.method, headers)
        if op == STREAM and not route.streaming:
            raise Conflict(
                f"streaming is not enabled on deployment {deployment_id}; set the environment variable "
                "MODEL_DEPLOY_ENABLE_STREAMING=true on it, or use /predict"
            )
        await self._forward(ex, scope, route, op, container_path, stream_required, declared, headers, receive, send)

    async def _serving_route(self, ex: Exchange, deployment_id: str, scope: Scope) -> Route:
        # The cached route and decision when at hand: a busy deployment's requests never wait.
        route = self.routes.fresh(deployment_id) or await self.routes.get(deployment_id)
        if route is not None and self.authorize is not None:
            who = (scope.get("state") or _NO_STATE).get("caller")
            allowed = self.authorize.known(who, route.compartment_id)
            if allowed is None:
                allowed = await self.authorize(who, route.compartment_id)
            if not allowed:
                route = None  # checked before the state: a refusal must not reveal it either
        if route is None:
            raise NotAuthorizedOrNotFound(
                f"model deployment {deployment_id} was not found, or you are not allowed to use it; check the id"
            )
        ex.known_deployment = True
        if not route.serving_state:
            raise Conflict(
                f"model deployment {deployment_id} is {route.state} and does not serve predictions; "
                + ("wait until it is ACTIVE" if route.state == "CREATING" else "activate it (or fix it) first")
            )
        if not route.backends:
            raise ServiceUnavailable(
                f"model deployment {deployment_id} is {route.state} but has no healthy instance right now; "
                "retry shortly (its work requests and instances tell why)"
            )
        return route

    def _container_path(
        self, route: Route, op: str, suffix: str | None, method: str, headers: dict[bytes, bytes]
    ) -> tuple[str | None, bool]:
        """The container path, or None when Triton mode must pick it; and whether the reply must stream."""
        if op == CUSTOM:
            assert suffix is not None
            try:
                return endpoints.custom_target(route.endpoints, suffix, method, route.deployment_id), False
            except MethodNotAllowed as exc:
                raise not_allowed(exc.message, endpoints.allowed_methods(route.endpoints, suffix)) from None
        if op == PREDICT_SLASH:
            return "/predict/", False
        route_header = headers.get(b"route")
        if route_header is not None:
            return endpoints.checked_route_header(route_header.decode("latin-1")), op == STREAM
        if route.triton:
            return None, op == STREAM
        return route.predict_path, op == STREAM

    async def _forward(
        self,
        ex: Exchange,
        scope: Scope,
        route: Route,
        op: str,
        container_path: str | None,
        stream_required: bool,
        declared: int | None,
        headers: dict[bytes, bytes],
        receive: Any,
        send: Any,
    ) -> None:
        capacity = self.balancer.capacity(route, self.options.inflight_per_instance)
        if self.balancer.inflight(route.deployment_id) >= capacity:
            raise TooManyRequests(
                f"model deployment {route.deployment_id} already has {capacity} requests in flight, its capacity "
                f"({self.options.inflight_per_instance} per ready instance); retry with back-off, or scale it out"
            )
        self.balancer.enter(route.deployment_id)
        watch = DisconnectWatch(receive, scope.get("dockyard.notify_lost"))
        # The watch cancels this very task when the caller hangs up (no task of its own per
        # request: creating one cost more than the rest of the routing).
        task = watch.target = asyncio.current_task()
        body: bytes | RequestBody | None = None
        try:
            if container_path is None:  # Triton without an explicit path
                container_path = await self._triton_path(ex, route, op, headers)
            query = scope.get("query_string") or b""
            if query:
                container_path += ("&" if "?" in container_path else "?") + query.decode("latin-1")
            client = scope.get("client")
            forwarded = upstream_request_headers(
                scope["headers"], ex.request_id, client[0] if client else None, scope.get("scheme", "http"), headers
            )
            has_body = bool(declared) or (declared is None and b"transfer-encoding" in headers)
            if has_body and declared is None:
                forwarded.append((b"transfer-encoding", b"chunked"))  # re-framed for this hop
            elif declared is None and ex.method in METHODS_WITH_BODY:
                forwarded.append((b"content-length", b"0"))
            fwd = Forward(ex.method, container_path, forwarded, stream_required, chunked=has_body and declared is None)
            if not has_body:
                watch.start()
            elif declared is not None and declared <= KEEP_FOR_RETRY_BYTES:
                body = await read_small(receive, self.options.max_body_bytes, self.options.request_timeout_s)  # sent in one write, can be sent again
                ex.bytes_in = len(body)
                watch.start()
            else:
                body = RequestBody(receive, self.options.max_body_bytes, on_complete=watch.start)
            try:
                await self.proxy.forward(ex, route, fwd, body, send, watch)
            except asyncio.CancelledError:
                if not _caller_left(ex, watch, task, scope):
                    raise
        finally:
            if isinstance(body, RequestBody):
                ex.bytes_in = body.received
            watch.stop()
            self.balancer.leave(route.deployment_id)

    async def _triton_path(self, ex: Exchange, route: Route, op: str, headers: dict[bytes, bytes]) -> str:
        name, version = triton.requested_model(headers)
        if name is None and op == PREDICT and endpoints.PREDICT_ENDPOINT_VAR in route.variables:
            return route.predict_path
        if name is None:
            first = self.balancer.order(route)[0]
            name = await self.triton.only_model(route.deployment_id, first.backend.base_url, ex.request_id)
        return triton.model_path(name, version, streaming=op == STREAM)

    async def _status(self, ex: Exchange, deployment_id: str, send: Any, scope: Scope) -> None:
        if ex.method not in ("GET", "HEAD"):
            raise not_allowed(f"{ex.method} is not allowed on /{deployment_id}; use POST /{deployment_id}/predict", "GET, HEAD")
        route = await self._serving_route(ex, deployment_id, scope)
        ex.status = 200
        ex.bytes_out = await send_json(
            send,
            200,
            {
                "id": deployment_id,
                "lifecycleState": route.state,
                "readyInstances": len(route.backends),
                "predictPath": route.predict_path,
                "streaming": route.streaming,
                "triton": route.triton,
                "customEndpoints": [{"endpointUri": e.uri, "httpMethods": sorted(e.methods)} for e in route.endpoints],
            },
            ex.request_id,
        )


def _caller_left(ex: Exchange, watch: DisconnectWatch, task: asyncio.Task[Any] | None, scope: Scope) -> bool:
    """After a CancelledError: whether the watch cancelled the exchange because the caller hung
    up, or was cut off by the server (then the cancellation is spent and the exchange recorded
    as such), or it came from elsewhere (it must go on)."""
    if not watch.fired or task is None:
        return False
    task.uncancel()
    ex.status = ex.status if ex.response_started else 499
    ex.error = scope.get(CUT_KEY) or "the caller went away before the reply was complete"
    return True


def not_allowed(message: str, allow: str) -> MethodNotAllowed:
    """A 405 that carries its Allow header value."""
    error = MethodNotAllowed(message)
    error.allow = allow  # type: ignore[attr-defined]
    return error


def _raw_path(scope: Scope) -> str:
    raw: bytes | None = scope.get("raw_path")
    if raw is None:
        return str(scope["path"])
    root = scope.get("root_path", "")
    text = raw.decode("latin-1").split("?", 1)[0]  # some servers (httpx's ASGI transport) leave the query on
    if root and text.startswith(root):
        text = text[len(root) :]
    return text or "/"

"""The access log: one entry per data-plane request.

Each entry goes to the logger `dockyard.access` as one JSON line (at INFO) and to an optional
sink callable (durable storage plugs in there). A failing sink is logged, never the request's
problem.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar, cast

log = logging.getLogger("dockyard.access")
_problems = logging.getLogger("dockyard.gateway")


@dataclass
class AccessEntry:
    time: str  # when the request arrived, ISO-8601 UTC
    request_id: str
    deployment_id: str | None
    caller: str | None  # keyId of the request's OCI signature, when signed
    method: str
    path: str
    status: int  # what the caller got; 499 when it went away first
    bytes_in: int
    bytes_out: int
    latency_ms: float  # arrival to last byte sent
    upstream_ms: float | None  # first connection attempt to the container's last byte; None if never sent
    instance_id: str | None = None
    attempts: int = 0  # upstream connection attempts (more than one after a refused connection)
    error: str | None = None  # why the gateway answered itself or cut the reply, in words

    def as_dict(self) -> dict[str, Any]:
        # Every field is a str, number or None: a shallow copy is the same as dataclasses.asdict
        # at a fraction of its cost (asdict deep-copies field by field), paid once per request.
        return dict(self.__dict__)


AccessSink = Callable[[AccessEntry], None]


class AccessLog:
    def __init__(self, sink: AccessSink | None = None) -> None:
        self.sink = sink

    def write(self, entry: AccessEntry) -> None:
        if log.isEnabledFor(logging.INFO):
            log.info(json.dumps(entry.as_dict(), separators=(",", ":")))
        if self.sink is not None:
            try:
                self.sink(entry)
            except Exception:
                _problems.exception("the access-log sink failed on request %s", entry.request_id)


T = TypeVar("T")


class _FlushOnShutdown:
    """The gateway `app`, unchanged, plus `flush()` before its shutdown completes (see
    `flush_at_shutdown`). Everything else (metrics, aclose of the wrapped app) passes through."""

    def __init__(self, app: Any, flush: Callable[[], None]) -> None:
        self.app = app
        self._flush = flush

    def __getattr__(self, name: str) -> Any:
        return getattr(self.app, name)

    async def flush(self) -> None:
        try:
            await asyncio.to_thread(self._flush)
        except Exception:
            _problems.exception("could not write the last access-log entries")

    async def aclose(self) -> None:
        await self.flush()
        await self.app.aclose()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return

        async def flush_then_send(message: dict[str, Any]) -> None:
            if message["type"] == "lifespan.shutdown.complete":
                await self.flush()
            await send(message)

        await self.app(scope, receive, flush_then_send)


def flush_at_shutdown(app: T, flush: Callable[[], None]) -> T:
    """`app` (a Gateway) that calls `flush` (blocking; run in a thread) when it shuts down: on
    the ASGI lifespan shutdown when it runs alone, in `aclose()` when composed beside the control
    plane. The durable access log writes its queued entries there: the server's process ends
    right after (on SIGTERM uvicorn re-raises the signal, so exit handlers never run)."""
    return cast(T, _FlushOnShutdown(app, flush))

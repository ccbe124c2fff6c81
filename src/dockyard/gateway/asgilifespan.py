"""The ASGI lifespan protocol, as the gateway's HTTP server (httpserver.py) runs it: startup
before the first connection is accepted, shutdown after the last request ends. An app that
does not take part (raises on a lifespan scope before sending anything) is tolerated."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

log = logging.getLogger("dockyard.gateway.httpserver")


class StartupFailed(Exception):
    """The app's lifespan startup reported a failure."""


class Lifespan:
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

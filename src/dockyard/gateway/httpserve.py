"""Running dockyard's HTTP server (httpserver.py) as a process's main job: on uvloop when it is
installed, until SIGTERM or SIGINT, then a graceful stop."""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
from collections.abc import Awaitable, Callable
from typing import Any

from dockyard import compiled
from dockyard.gateway.asgilifespan import StartupFailed
from dockyard.gateway.httpserver import HttpServer
from dockyard.heap import freeze_startup_objects

log = logging.getLogger("dockyard.gateway.httpserver")


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop's when installed: it halves the event loop's own share of each request."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def serve(app: Any, *, host: str, port: int, sock: socket.socket | None = None, backlog: int = 4096, graceful_s: float = 10.0,
          before_listening: Callable[[], None] | None = None, **limits: float) -> None:  # fmt: skip
    """Serves `app` until SIGTERM or SIGINT, then stops gracefully (a second signal cuts the
    wait for requests in progress short). Listens on `sock` when given (a bound socket), once
    the app has started and `before_listening` (run in a thread: it may block) has returned.
    `limits` are HttpServer's (keep_alive_s, head_timeout_s, ...: Settings.http_server_options)."""
    waited = None if before_listening is None else (lambda: asyncio.to_thread(before_listening))
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        try:
            runner.run(_serve(app, host=host, port=port, sock=sock, backlog=backlog, graceful_s=graceful_s, before_listening=waited,
                              limits=limits))  # fmt: skip
        except StartupFailed as exc:
            log.error("the application failed to start: %s", exc)
            raise SystemExit(3) from None
        except OSError as exc:  # the address is taken, or not this machine's
            log.error("cannot listen on %s:%s: %s", host, port, exc)
            raise SystemExit(1) from None


async def _serve(app: Any, *, host: str, port: int, sock: socket.socket | None, backlog: int, graceful_s: float,
                 before_listening: Callable[[], Awaitable[None]] | None, limits: dict[str, float]) -> None:  # fmt: skip
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    server = HttpServer(app, **limits)

    def on_signal() -> None:
        if stop.is_set():
            server.hurry()
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    try:
        await server.start(host=host, port=port, sock=sock, backlog=backlog, before_listening=before_listening)
        where = sock.getsockname() if sock is not None else (host, server.port)
        log.info("serving HTTP on %s:%s; the gateway's request path is %s", where[0], where[1], compiled.status())
        freeze_startup_objects()
        await stop.wait()
        log.info("stopping: requests in progress may finish within %s s", graceful_s)
        await server.stop(graceful_s)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)

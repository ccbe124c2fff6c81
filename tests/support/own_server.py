"""dockyard's own HTTP server (the gateway role's, gateway/httpserver.py) in a thread, for tests."""

from __future__ import annotations

import asyncio
import socket
import threading
from typing import Any

from dockyard.gateway.httpserve import new_event_loop
from dockyard.gateway.httpserver import HttpServer


class Running:
    """An HttpServer on its own event loop in a thread, on 127.0.0.1 and a free port."""

    def __init__(self, app: Any, **limits: float) -> None:
        """`limits`: HttpServer's (keep_alive_s, head_timeout_s, send_timeout_s, body_timeout_s)."""
        self.loop = new_event_loop()
        self.server = HttpServer(app, **limits)
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.call(self.server.start(host="127.0.0.1", port=0))
        self.port = self.server.port
        self.url = f"http://127.0.0.1:{self.port}"
        self.stopped = False

    def call(self, coro: Any, timeout: float = 30) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self, graceful_s: float = 5.0) -> None:
        if not self.stopped:
            self.stopped = True
            self.call(self.server.stop(graceful_s))
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)

    def connect(self) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        return sock

"""One ASGI app for one port: the control plane for its paths, the gateway for the rest.

The lifespan goes to the control plane (it starts the reconciler); the gateway's connections
are closed when the control plane reports its shutdown complete.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

CONTROL_PREFIXES = ("/20190101/",)
CONTROL_PATHS = frozenset({"/20190101", "/health", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"})


class Beside:
    """An ASGI app sending `control_paths` and paths under `control_prefixes` to `control_plane`
    and every other HTTP request to `gateway`.

    dockyard's own HTTP server first offers each request to an app's `direct(cycle)`
    (gateway/httpserver.py): here the gateway's, for a request on the gateway's paths, so a
    predict through `dockyard serve` takes the gateway's direct path as under `--role gateway`."""

    def __init__(self, control_plane: Any, gateway: Any, control_prefixes: tuple[str, ...] = CONTROL_PREFIXES,
                 control_paths: frozenset[str] = CONTROL_PATHS) -> None:  # fmt: skip
        self.control_plane = control_plane
        self.gateway = gateway
        self.control_prefixes = control_prefixes
        self.control_paths = control_paths
        self._gateway_direct = getattr(gateway, "direct", None)

    def _is_control(self, path: str) -> bool:
        return path in self.control_paths or path.startswith(self.control_prefixes)

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            gateway = self.gateway

            async def send_then_close(message: dict[str, Any]) -> None:
                if message["type"] == "lifespan.shutdown.complete":
                    await gateway.aclose()
                await send(message)

            await self.control_plane(scope, receive, send_then_close)
            return
        if self._is_control(scope.get("path", "")):
            await self.control_plane(scope, receive, send)
        else:
            await self.gateway(scope, receive, send)

    def direct(self, cycle: Any) -> bool:
        """The gateway's `direct` for a request on its paths; False (the ASGI call) otherwise."""
        if self._gateway_direct is None or self._is_control(cycle.scope["path"]):
            return False
        return bool(self._gateway_direct(cycle))


def beside(control_plane: Any, gateway: Any, control_prefixes: tuple[str, ...] = CONTROL_PREFIXES,
           control_paths: frozenset[str] = CONTROL_PATHS) -> Beside:  # fmt: skip
    """`Beside(control_plane, gateway, ...)`: `gateway` is the Gateway, or the signature check in front of it."""
    return Beside(control_plane, gateway, control_prefixes, control_paths)


class WithMetrics:
    """`app` (the gateway, or `Beside`), and the gateway's /metrics beside it. Its `direct` is
    the app's, for every path but /metrics (which the direct path never serves)."""

    def __init__(self, app: Any, metrics: Any) -> None:
        self.app = app
        self.metrics = metrics
        self._app_direct = getattr(app, "direct", None)

    def direct(self, cycle: Any) -> bool:
        if self._app_direct is None or cycle.scope["path"] == "/metrics":
            return False
        return bool(self._app_direct(cycle))

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope.get("path") == "/metrics":
            await self.metrics(scope, receive, send)
        else:
            await self.app(scope, receive, send)


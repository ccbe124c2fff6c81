"""One ASGI app for one port: the control plane for its paths, the gateway for the rest.

The lifespan goes to the control plane (it starts the reconciler); the gateway's connections
are closed when the control plane reports its shutdown complete.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

from dockyard.gateway.app import Gateway

CONTROL_PREFIXES = ("/20190101/",)
CONTROL_PATHS = frozenset({"/20190101", "/health", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"})


def beside(
    control_plane: Any,
    gateway: Gateway,
    control_prefixes: tuple[str, ...] = CONTROL_PREFIXES,
    control_paths: frozenset[str] = CONTROL_PATHS,
) -> Any:
    """An ASGI app sending `control_paths` and paths under `control_prefixes` to `control_plane`
    and every other HTTP request to `gateway`."""

    async def app(scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":

            async def send_then_close(message: dict[str, Any]) -> None:
                if message["type"] == "lifespan.shutdown.complete":
                    await gateway.aclose()
                await send(message)

            await control_plane(scope, receive, send_then_close)
            return
        path: str = scope.get("path", "")
        if path in control_paths or path.startswith(control_prefixes):
            await control_plane(scope, receive, send)
        else:
            await gateway(scope, receive, send)

    return app

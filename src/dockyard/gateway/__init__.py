"""The data plane: `<gateway base>/<deploymentId>/predict` routed to a deployment's instances.

Public surface:

- `create_gateway(store, **options)` → `Gateway`, an ASGI app that needs only the metadata
  store (`dockyard serve --role gateway` runs it alone; `beside(control_plane, gateway)` puts
  it next to the control plane under one server).
- `GatewayOptions`: every setting and its default.
- `AccessEntry`: what the access log records per request (also handed to `access_sink`).
- `gateway_metrics_app(gateway)`: an ASGI app serving the gateway's Prometheus registry.
"""

from __future__ import annotations

from typing import Any

from dockyard import compiled

compiled.use(__name__, __path__)  # before any module of the package is imported: see compiled.py

from dockyard.gateway.accesslog import AccessEntry, AccessSink
from dockyard.gateway.app import Authorize, Gateway
from dockyard.gateway.compose import beside
from dockyard.gateway.options import GatewayOptions, MiB
from dockyard.gateway.routes import RouteSource

__all__ = ["AccessEntry", "AccessSink", "Gateway", "GatewayOptions", "beside", "create_gateway", "gateway_metrics_app"]


def create_gateway(
    store: RouteSource,
    *,
    max_body_bytes: int = 10 * MiB,
    request_timeout_s: float = 60.0,
    inflight_per_instance: int = 32,
    route_cache_ttl_s: float = 0.5,
    ejection_s: float = 10.0,
    triton_index_ttl_s: float = 5.0,
    connect_timeout_s: float = 5.0,
    max_connections: int = 1024,
    max_keepalive_connections: int = 256,
    keepalive_expiry_s: float = 4.0,
    access_sink: AccessSink | None = None,
    options: GatewayOptions | None = None,
    authorize: Authorize | None = None,
) -> Gateway:
    """The data-plane ASGI app over `store` (see `GatewayOptions` for what each option means).

    Pass either the keyword options or a ready `options` object (which then wins). Nothing is
    started or connected here: connections open on first use and close with `aclose()` or on
    the ASGI lifespan shutdown. Raises ValueError for an option out of range. `authorize`
    (caller, compartment id) -> bool decides who may use a deployment; None: everyone.
    """
    if options is None:
        options = GatewayOptions(
            max_body_bytes=max_body_bytes,
            request_timeout_s=request_timeout_s,
            inflight_per_instance=inflight_per_instance,
            route_cache_ttl_s=route_cache_ttl_s,
            ejection_s=ejection_s,
            triton_index_ttl_s=triton_index_ttl_s,
            connect_timeout_s=connect_timeout_s,
            max_connections=max_connections,
            max_keepalive_connections=max_keepalive_connections,
            keepalive_expiry_s=keepalive_expiry_s,
        )
    return Gateway(store, options, access_sink, authorize)


def gateway_metrics_app(gateway: Gateway) -> Any:
    """An ASGI app answering GET with the gateway's metrics in the Prometheus text format."""
    return gateway.metrics.asgi_app()

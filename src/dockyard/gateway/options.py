"""Every tunable of the gateway, with its default, in one typed object.

Units are in the names. The composition root builds one from `Settings` (or the `dockyard serve
--role gateway` flags) and passes it to `create_gateway`; nothing here reads the environment.
"""

from __future__ import annotations

from dataclasses import dataclass

MiB = 1024 * 1024


@dataclass(frozen=True)
class GatewayOptions:
    # --- limits a caller can hit ----------------------------------------------------------------
    # Largest request body accepted (413 PayloadTooLarge beyond), checked from Content-Length up
    # front and again while the body streams through.
    max_body_bytes: int = 10 * MiB
    # Longest wait for the container's reply headers (504 beyond); once a reply streams, the
    # same figure bounds the silence between two chunks.
    request_timeout_s: float = 60.0
    # Requests one ready instance may have in flight; a deployment takes this times its ready
    # instances at once and answers 429 TooManyRequests beyond.
    inflight_per_instance: int = 32

    # --- routing --------------------------------------------------------------------------------
    # How long a deployment's routes (state, environment, instances) read from the store are
    # reused before being read again.
    route_cache_ttl_s: float = 0.5
    # An instance that refused a connection stays out of rotation until the store shows a newer
    # healthy probe of it, or at most this long.
    ejection_s: float = 10.0
    # Triton mode: how long the model list of a deployment (for requests without model_name)
    # is reused.
    triton_index_ttl_s: float = 5.0

    # --- the shared upstream connection pool ----------------------------------------------------
    connect_timeout_s: float = 5.0
    # Open connections to one instance at most (requests beyond wait for one, up to
    # request_timeout_s, then 503), and how many of them may stay open idle.
    max_connections: int = 1024
    max_keepalive_connections: int = 256
    # Idle connections are closed after this long: below the 5 s keep-alive of uvicorn (and
    # most servers), so the gateway never reuses a connection the container is closing.
    keepalive_expiry_s: float = 4.0

    def __post_init__(self) -> None:
        for name in ("max_body_bytes", "inflight_per_instance", "max_connections"):
            if getattr(self, name) < 1:
                raise ValueError(f"gateway option {name} must be at least 1, not {getattr(self, name)}")
        for name in ("request_timeout_s", "connect_timeout_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"gateway option {name} must be positive, not {getattr(self, name)}")

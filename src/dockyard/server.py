"""The composition root: settings -> stores -> runtime -> services -> API + reconciler.

`build(settings)` wires everything without starting anything; `create_app(settings)` returns the
ASGI app whose lifespan starts the reconciler and cleans up. No work happens at import time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from pathlib import Path
from typing import Any

from fastapi import FastAPI

from dockyard.api.app import create_api
from dockyard.auth.access_store import AccessStore, PolicyAuthorizer
from dockyard.auth.admin_only import HomeAdministratorsOnly
from dockyard.auth.bootstrap import ensure_admin
from dockyard.auth.middleware import SignatureAuthMiddleware
from dockyard.auth.predict_authorization import PredictAuthorization
from dockyard.auth.principals import PrincipalStore
from dockyard.auth.verifier import Verifier
from dockyard.gateway import Gateway, GatewayOptions, beside, create_gateway, gateway_metrics_app
from dockyard.gateway.accesslog import DurableAccessLog
from dockyard.gateway.compose import WithMetrics
from dockyard.reconciler.loop import Reconciler
from dockyard.reconciler.predict_logs import collect_predict_logs
from dockyard.runtimes.base import Runtime
from dockyard.service.access import Access
from dockyard.service.bundle import Services
from dockyard.service.deployments import DeploymentService
from dockyard.service.images import ReferenceOnlyResolver, RegistryImageResolver
from dockyard.service.models import ModelService
from dockyard.service.projects import ProjectService
from dockyard.service.work_requests import WorkRequests
from dockyard.settings import Settings
from dockyard.store.artifacts import FilesystemArtifactStore
from dockyard.store.logs import open_log_store
from dockyard.store.metadata import SqlMetadataStore
from dockyard.store.unpacking import ArtifactUnpacker

log = logging.getLogger("dockyard")

# Paths that answer without a signature: liveness and the API's own description.
CONTROL_OPEN_PATHS = frozenset({"/health", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"})


@dataclass
class Server:
    settings: Settings
    services: Services
    runtime: Runtime
    reconciler: Reconciler
    principals: PrincipalStore
    verifier: Verifier
    admin_config: Path  # the OCI config file that signs as the administrator


def choose_runtime(settings: Settings) -> Runtime:
    """The runtime named by settings; `auto` takes the first that can work on this machine."""
    from dockyard.runtimes.select import runtime_for

    return runtime_for(settings)


def build(settings: Settings, runtime: Runtime | None = None) -> Server:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    store = SqlMetadataStore(settings.resolved_database_url)
    blobs = FilesystemArtifactStore(settings.artifacts_dir)
    removed = blobs.remove_partial_uploads()
    if removed:
        log.info("removed %d unfinished artifact upload(s) left by an earlier run", removed)
    access = access_for(settings, store)
    work_requests = WorkRequests(store, settings, access)
    runtime = runtime or choose_runtime(settings)
    unpacker = ArtifactUnpacker(settings.unpacked_dir)
    reconciler = Reconciler(
        store, runtime, work_requests, settings, artifact_dir=lambda sha: unpacker.unpack(blobs.path(sha), sha)
    )
    logs = open_log_store(store, settings)
    collect_predict_logs(reconciler, runtime, logs)
    services = Services(
        settings=settings,
        store=store,
        blobs=blobs,
        work_requests=work_requests,
        projects=ProjectService(store, settings, work_requests, access),
        models=ModelService(store, settings, blobs, access),
        deployments=DeploymentService(
            store,
            settings,
            work_requests,
            blobs,
            resolver=RegistryImageResolver(settings) if settings.verify_images else ReferenceOnlyResolver(settings),
            on_change=reconciler.wake,
            access=access,
        ),
        logs=logs,
    )
    principals = PrincipalStore(store.engine, store.writer, realm=settings.realm)
    admin_config = ensure_admin(principals, settings.data_dir, settings.resolved_public_url, settings.region)
    return Server(settings, services, runtime, reconciler, principals, verifier_for(settings, principals), admin_config)


def access_for(settings: Settings, store: SqlMetadataStore) -> Access:
    """Who may do what: the policies of each tenancy (auth/access_store.py), asked by every
    service operation and by the gateway before a predict."""
    return Access(PolicyAuthorizer(AccessStore(store.engine, store.writer, realm=settings.realm)))


def verifier_for(settings: Settings, principals: PrincipalStore) -> Verifier:
    return Verifier(principals.lookup_key, max_skew_s=settings.signature_max_skew_s)


def signed(app: Any, verifier: Verifier, settings: Settings, *, max_body_bytes: int, open_paths: frozenset[str] = frozenset()) -> Any:
    """`app` behind OCI request-signature verification (unsigned requests pass only with
    `insecure_no_auth`, which `dockyard serve` allows on a loopback bind only)."""
    return SignatureAuthMiddleware(
        app, verify=verifier, allow_unsigned=settings.insecure_no_auth, max_body_bytes=max_body_bytes, open_paths=open_paths
    )


def gateway_for(settings: Settings, store: SqlMetadataStore, logs: DurableAccessLog) -> Gateway:
    gateway = create_gateway(
        store,
        options=GatewayOptions(
            max_body_bytes=settings.gateway_max_body_bytes,
            request_timeout_s=settings.gateway_request_timeout_s,
            inflight_per_instance=settings.gateway_inflight_per_instance,
            route_cache_ttl_s=settings.gateway_route_cache_ttl_s,
            ejection_s=settings.gateway_ejection_s,
            connect_timeout_s=settings.gateway_connect_timeout_s,
        ),
        access_sink=logs.add_access,
        authorize=PredictAuthorization(access_for(settings, store)),
    )
    gateway.flush_at_close(logs.flush)  # queued access entries
    return gateway


def create_gateway_app(settings: Settings, access: DurableAccessLog | None = None) -> Any:
    """`dockyard serve --role gateway`: the data plane alone, routing from the shared store and
    verifying signatures against its principals. Access entries go to `access` (a worker's relay
    to its supervisor), else to a log store of this process's own."""
    store = SqlMetadataStore(settings.resolved_database_url)
    verifier = verifier_for(settings, PrincipalStore(store.engine, store.writer, realm=settings.realm))
    return signed(gateway_for(settings, store, access or open_log_store(store, settings)), verifier, settings,
                  max_body_bytes=settings.gateway_max_body_bytes, open_paths=frozenset({"/health"}))  # fmt: skip


def create_app(settings: Settings, runtime: Runtime | None = None, on_ready: Callable[[Server], Awaitable[None]] | None = None) -> FastAPI:
    """The control-plane ASGI app with the reconciler in its lifespan; `on_ready` runs in the
    background once the reconciler is up. `serve_all` puts the gateway beside it."""
    server = build(settings, runtime)
    app = create_api(server.services)
    app.state.server = server
    app.add_middleware(
        SignatureAuthMiddleware,
        verify=server.verifier,
        allow_unsigned=settings.insecure_no_auth,
        max_body_bytes=settings.max_json_body_bytes,
        open_paths=CONTROL_OPEN_PATHS,
    )

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        server.reconciler.start()
        server.reconciler.wake()
        background = asyncio.create_task(on_ready(server)) if on_ready else None
        if background:
            background.add_done_callback(_log_failure)
        try:
            yield
        finally:
            if background:
                background.cancel()
            await server.reconciler.stop()
            await server.runtime.close()
            server.services.store.close()

    app.router.lifespan_context = lifespan
    return app


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("start-up task failed", exc_info=task.exception())


def serve_all(control_plane: FastAPI, settings: Settings) -> Any:
    """One ASGI app for one port: /20190101/... to the control plane, /metrics to the gateway's
    metrics, every other path (`/<deploymentId>/predict` ...) to the gateway, whose `direct` is
    offered the requests on its paths first (dockyard's own server, gateway/httpserver.py)."""
    server: Server = control_plane.state.server
    gateway = gateway_for(settings, server.services.store, server.services.logs)
    metrics = gateway_metrics_app(gateway)
    if not settings.public_metrics:  # they name every tenancy's deployments: the home administrators' only
        home = AccessStore(server.services.store.engine, server.services.store.writer, realm=settings.realm).home_tenancy
        metrics = signed(HomeAdministratorsOnly(metrics, home), server.verifier, settings, max_body_bytes=0)
    both = beside(control_plane, signed(gateway, server.verifier, settings, max_body_bytes=settings.gateway_max_body_bytes))
    return WithMetrics(both, metrics)

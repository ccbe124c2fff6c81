"""The control-plane ASGI app: /20190101/... in the OCI Data Science wire format."""

from __future__ import annotations

from fastapi import Depends, FastAPI, Request

from dockyard import __version__
from dockyard.api import deployments, logs, models, projects, work_requests
from dockyard.api.errors import install_error_handlers
from dockyard.api.middleware import RequestIdMiddleware
from dockyard.errors import InvalidParameter
from dockyard.service.bundle import Services

API_PREFIX = "/20190101"


def query_without_nul(request: Request) -> None:
    """Every operation's query: a NUL character (`%00`) is a 400 naming the parameter. No field
    holds one (see `parse_body`), and PostgreSQL refuses one even in a filter (it was a 500 there)."""
    if b"%00" in request.scope.get("query_string", b""):
        for name, value in request.query_params.multi_items():
            if "\x00" in name or "\x00" in value:
                raise InvalidParameter(f"the query parameter {name!r} holds a NUL character (%00), which no field can hold; remove it")


def create_api(services: Services) -> FastAPI:
    app = FastAPI(
        dependencies=[Depends(query_without_nul)],
        title="dockyard control plane",
        version=__version__,
        description="Projects, models, artifacts, model deployments and work requests, "
        "wire-compatible with OCI Data Science (API version 20190101).",
        docs_url="/docs",
        openapi_url="/openapi.json",
    )
    app.state.services = services
    for module in (projects, models, deployments, work_requests):
        app.include_router(module.router, prefix=API_PREFIX)
    app.include_router(logs.router, prefix=API_PREFIX)  # a dockyard extension: deployment logs
    install_error_handlers(app)
    app.add_middleware(RequestIdMiddleware)

    @app.get("/health", include_in_schema=False)
    async def health() -> dict[str, str]:
        return {"status": "ok", "version": __version__}

    return app

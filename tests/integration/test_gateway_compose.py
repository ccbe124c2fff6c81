"""The gateway beside the control plane on one port: paths split, one lifespan, both closed."""

from __future__ import annotations

from typing import Any

import httpx

from dockyard.gateway import beside, create_gateway
from dockyard.store.metadata import SqlMetadataStore
from tests.integration.test_gateway_harness import Deployments, Upstreams, deployments, store, upstreams  # noqa: F401


class ControlPlane:
    """Stands in for the control-plane app: answers every request and records its lifespan."""

    def __init__(self) -> None:
        self.events: list[str] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                self.events.append(message["type"])
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"control plane"})


async def test_paths_split_between_control_plane_and_gateway(
    store: SqlMetadataStore, deployments: Deployments, upstreams: Upstreams
) -> None:
    control = ControlPlane()
    gateway = create_gateway(store)
    app = beside(control, gateway)
    deployment_id = deployments.add([upstreams.echo[0].port])
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://server") as client:
        assert (await client.get("/20190101/modelDeployments")).text == "control plane"
        assert (await client.get("/health")).text == "control plane"
        assert (await client.get("/openapi.json")).text == "control plane"
        predicted = await client.post(f"/{deployment_id}/predict", json={})
        assert predicted.json()["path"] == "/predict"
        missing = await client.post("/201901011/predict", json={})  # only the exact prefix is the control plane's
        assert missing.json()["code"] == "NotAuthorizedOrNotFound"
    await gateway.aclose()


async def test_lifespan_goes_to_the_control_plane_and_closes_the_gateway(store: SqlMetadataStore) -> None:
    control = ControlPlane()
    gateway = create_gateway(store)
    app = beside(control, gateway)
    messages = iter([{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}])
    sent: list[str] = []

    async def receive() -> dict[str, Any]:
        return next(messages)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message["type"])

    await app({"type": "lifespan"}, receive, send)
    assert control.events == ["lifespan.startup", "lifespan.shutdown"]
    assert sent == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert gateway.client.is_closed

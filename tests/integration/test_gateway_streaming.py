"""Streaming through the gateway served by a real uvicorn: chunks arrive as the model makes them,
a container that dies mid-reply ends the caller's stream, a caller that hangs up frees the
upstream."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from dockyard.gateway import AccessEntry, create_gateway
from dockyard.store.metadata import SqlMetadataStore
from tests.support.own_server import Running
from tests.integration.test_gateway_harness import (  # noqa: F401 (fixtures)
    Deployments,
    ThreadServer,
    Upstreams,
    deployments,
    store,
    upstreams,
)


@pytest.fixture(params=["uvicorn", "own server"])
def served(store: SqlMetadataStore, request: pytest.FixtureRequest) -> Iterator[tuple[ThreadServer | Running, list[AccessEntry]]]:
    """The gateway on a real port, under uvicorn and under its own server (which tells it when a
    caller's connection is lost); its own lifespan closes its connections on shutdown."""
    entries: list[AccessEntry] = []
    gateway = create_gateway(store, route_cache_ttl_s=0.05, request_timeout_s=5, access_sink=entries.append)
    server = ThreadServer(gateway, lifespan="on").start() if request.param == "uvicorn" else Running(gateway)
    yield server, entries
    server.stop()


def streaming_deployment(deployments: Deployments, port: int, path: str = "/stream") -> str:
    return deployments.add([port], variables={"MODEL_DEPLOY_ENABLE_STREAMING": "true", "MODEL_DEPLOY_PREDICT_ENDPOINT": path})


def test_first_chunk_arrives_before_the_model_made_the_last(
    served: tuple[ThreadServer, list[AccessEntry]], deployments: Deployments, upstreams: Upstreams
) -> None:
    server, _ = served
    deployment_id = streaming_deployment(deployments, upstreams.sse.port)
    key = uuid.uuid4().hex
    arrivals: list[float] = []
    url = f"{server.url}/{deployment_id}/predictWithResponseStream?n=5&delay=0.3&key={key}"
    with httpx.stream("POST", url, json={"stream": True}, headers={"accept": "text/event-stream"}, timeout=10) as reply:
        assert reply.status_code == 200
        assert reply.headers["content-type"] == "text/event-stream"
        body = b""
        for chunk in reply.iter_raw():
            arrivals.append(time.monotonic())
            body += chunk
    produced = upstreams.sse_app.sent_at[key]
    assert len(produced) == 5
    # The caller had its first event while the model was still ~1.2 s from producing the last.
    assert arrivals[0] < produced[-1] - 0.5
    assert len(arrivals) >= 4  # delivered in pieces, not in one buffered lump
    assert body.count(b"data: ") == 6 and body.endswith(b"data: [DONE]\n\n")


def test_sse_through_predict_streams_too(
    served: tuple[ThreadServer, list[AccessEntry]], deployments: Deployments, upstreams: Upstreams
) -> None:
    server, _ = served
    deployment_id = deployments.add([upstreams.sse.port])  # plain /predict, no streaming variable
    key = uuid.uuid4().hex
    with httpx.stream("POST", f"{server.url}/{deployment_id}/predict?n=3&delay=0.3&key={key}", json={}, timeout=10) as reply:
        chunks = reply.iter_raw()
        first = next(chunks)
        arrived = time.monotonic()
        rest = b"".join(chunks)
    assert first.startswith(b"data: ")
    assert arrived < upstreams.sse_app.sent_at[key][-1]
    assert rest.endswith(b"data: [DONE]\n\n")


@pytest.mark.parametrize("path", ["/sse", "/length"])
def test_container_dying_mid_reply_ends_the_callers_stream(
    served: tuple[ThreadServer, list[AccessEntry]], deployments: Deployments, upstreams: Upstreams, path: str
) -> None:
    server, entries = served
    deployment_id = streaming_deployment(deployments, upstreams.cut.port, path)
    started = time.monotonic()
    received = b""
    # A cut stream, never one that looks complete.
    url = f"{server.url}/{deployment_id}/predict"
    with pytest.raises(httpx.HTTPError), httpx.stream("POST", url, json={}, timeout=10) as reply:
        assert reply.status_code == 200
        for chunk in reply.iter_raw():
            received += chunk
    assert time.monotonic() - started < 3  # no hang
    assert received.startswith(b"data: 0" if path == "/sse" else b"0123456789")
    deadline = time.monotonic() + 2
    while not entries and time.monotonic() < deadline:
        time.sleep(0.01)
    assert "broke off" in (entries[-1].error or "")


def test_caller_hanging_up_frees_the_stream(
    served: tuple[ThreadServer, list[AccessEntry]], deployments: Deployments, upstreams: Upstreams
) -> None:
    server, entries = served
    deployment_id = streaming_deployment(deployments, upstreams.sse.port)
    key = uuid.uuid4().hex
    url = f"{server.url}/{deployment_id}/predictWithResponseStream?n=50&delay=0.2&key={key}"
    with httpx.stream("POST", url, json={}, timeout=10) as reply:
        next(reply.iter_raw())
    hung_up = time.monotonic()
    deadline = hung_up + 3
    while not entries and time.monotonic() < deadline:
        time.sleep(0.01)
    assert entries, "the gateway kept the exchange open after the caller left"
    assert entries[-1].error and "went away" in entries[-1].error
    while key not in upstreams.sse_app.gone_at and time.monotonic() < deadline:
        time.sleep(0.01)
    # The model saw its connection closed right away, not after its 10 s of events.
    assert upstreams.sse_app.gone_at[key] - hung_up < 1.0
    assert len(upstreams.sse_app.sent_at[key]) < 10


def test_gateway_alone_answers_health_and_json_errors(served: tuple[ThreadServer, list[AccessEntry]]) -> None:
    server, _ = served
    assert httpx.get(f"{server.url}/health").json()["role"] == "gateway"
    reply = httpx.post(f"{server.url}/nothing-here/predict", json={})
    assert reply.status_code == 404 and reply.json()["code"] == "NotAuthorizedOrNotFound"
    raw: Any = httpx.post(f"{server.url}/", content=b"x")
    assert raw.headers["content-type"] == "application/json" and raw.json()["code"] == "NotFound"

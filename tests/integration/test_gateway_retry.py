"""A request whose instance drops the connection before a byte of a reply goes to another
instance, once, when its body was small enough to keep; everything else that fails after the
request left stays a 502 (a reply the container did start is never sent twice)."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import pytest

from dockyard.gateway.body import KEEP_FOR_RETRY_BYTES
from tests.integration.test_gateway_harness import (  # noqa: F401 (fixtures)
    Deployments,
    Upstreams,
    client_for,
    deployments,
    gateway,
    store,
    upstreams,
)
from tests.support.raw_server import RawServer, read_request


class Dropper(RawServer):
    """Reads each request whole, counts it, and closes the connection without a word (`reset`:
    with an RST instead of a FIN); `answer` sends bytes that are not HTTP instead."""

    def __init__(self, mode: str = "close") -> None:
        self.mode = mode
        self.received = 0
        super().__init__()

    def handle(self, conn: socket.socket) -> None:
        conn.settimeout(5)
        read_request(conn)  # the whole request (or what came before the connection closed), then the misbehaviour
        self.received += 1
        if self.mode == "reset":
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        elif self.mode == "answer":
            conn.sendall(b"this is not http\r\n\r\n")


@pytest.fixture
def dropper(request: pytest.FixtureRequest) -> Iterator[Dropper]:
    server = Dropper(getattr(request, "param", "close"))
    yield server
    server.stop()


@pytest.mark.parametrize("dropper", ["close", "reset"], indirect=True)
async def test_an_unanswered_request_goes_to_another_instance_once(
    gateway: Any, deployments: Deployments, upstreams: Upstreams, dropper: Dropper
) -> None:
    deployment_id = deployments.add([dropper.port, upstreams.echo[0].port])
    served = 0
    async with client_for(gateway) as client:
        for _ in range(6):  # the balancer alternates: the dropper is tried first about half the time
            reply = await client.post(f"/{deployment_id}/predict", content=b'{"x": 1}')
            assert reply.status_code == 200, reply.text
            assert reply.json()["server"] == "A" and reply.json()["body_len"] == 8  # the whole body, again
            served += 1
    # After its first drop the instance is out of rotation: it got one request, not one per request.
    assert dropper.received == 1 and served == 6


async def test_two_unanswered_closes_are_a_502_not_a_third_try(gateway: Any, deployments: Deployments) -> None:
    droppers = [Dropper() for _ in range(3)]
    try:
        deployment_id = deployments.add([d.port for d in droppers])
        async with client_for(gateway) as client:
            reply = await client.post(f"/{deployment_id}/predict", content=b"{}")
        assert reply.status_code == 502, reply.text
        assert reply.json()["code"] == "BadGateway"
        assert sum(d.received for d in droppers) == 2  # tried twice, never a third time
    finally:
        for d in droppers:
            d.stop()


async def test_a_body_too_large_to_keep_is_not_sent_twice(
    store: Any, deployments: Deployments, upstreams: Upstreams, dropper: Dropper
) -> None:
    from dockyard.gateway import create_gateway

    app = create_gateway(store, max_body_bytes=4 * KEEP_FOR_RETRY_BYTES, route_cache_ttl_s=0.05)
    try:
        deployment_id = deployments.add([dropper.port, upstreams.echo[1].port])
        big = b"b" * (KEEP_FOR_RETRY_BYTES + 1)
        statuses = []
        async with client_for(app) as client:
            for _ in range(6):  # until the dropper has had one (it is then out of rotation)
                reply = await client.post(f"/{deployment_id}/predict", content=big)
                statuses.append(reply.status_code)
                if reply.status_code == 502:
                    assert "failed before replying" in reply.json()["message"]
        assert dropper.received == 1 and statuses.count(502) == 1, statuses
        assert statuses.count(200) == len(statuses) - 1
    finally:
        await app.aclose()


@pytest.mark.parametrize("dropper", ["answer"], indirect=True)
async def test_a_reply_that_is_not_http_is_a_502_and_not_retried(
    gateway: Any, deployments: Deployments, upstreams: Upstreams, dropper: Dropper
) -> None:
    deployment_id = deployments.add([dropper.port, upstreams.echo[2].port])
    statuses = []
    async with client_for(gateway) as client:
        for _ in range(6):
            statuses.append((await client.post(f"/{deployment_id}/predict", content=b"{}")).status_code)
    # The container did answer (garbage): those requests were delivered and are not sent again.
    assert dropper.received >= 1 and statuses.count(502) == dropper.received, statuses
    assert statuses.count(200) == 6 - dropper.received

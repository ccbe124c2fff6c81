"""Load balancing over a deployment's instances: spreading, least outstanding requests, retry on
a refused connection, ejection until a newer healthy probe, and the in-flight limit (429)."""

from __future__ import annotations

import asyncio
import collections
import time
from typing import Any

from dockyard.gateway import AccessEntry, create_gateway
from dockyard.store.metadata import SqlMetadataStore, now_iso
from tests.integration.test_gateway_harness import (  # noqa: F401 (fixtures)
    Deployments,
    Upstreams,
    client_for,
    dead_port,
    deployments,
    gateway,
    store,
    upstreams,
)


async def test_requests_spread_over_three_instances(gateway: Any, deployments: Deployments, upstreams: Upstreams) -> None:
    deployment_id = deployments.add([server.port for server in upstreams.echo])
    async with client_for(gateway) as client:
        sequential = [(await client.post(f"/{deployment_id}/predict", content=b"{}")).headers["x-upstream"] for _ in range(30)]
        replies = await asyncio.gather(*(client.post(f"/{deployment_id}/predict", content=b"{}") for _ in range(60)))
    assert collections.Counter(sequential) == {"A": 10, "B": 10, "C": 10}
    concurrent = collections.Counter(r.headers["x-upstream"] for r in replies)
    assert set(concurrent) == {"A", "B", "C"} and min(concurrent.values()) >= 10


async def test_busy_instance_is_passed_over(store: SqlMetadataStore, deployments: Deployments, upstreams: Upstreams) -> None:
    # Two instances (distinct ids) on the same slow server; one is held by a long request.
    entries: list[AccessEntry] = []
    app = create_gateway(store, access_sink=entries.append)
    deployment_id = deployments.add([upstreams.slow.port, upstreams.slow.port])
    async with client_for(app) as client:
        long = asyncio.create_task(client.post(f"/{deployment_id}/predict?s=1.0", content=b"{}"))
        while app.balancer.inflight(deployment_id) == 0:
            await asyncio.sleep(0.005)
        for _ in range(4):
            assert (await client.post(f"/{deployment_id}/predict?s=0.01", content=b"{}")).status_code == 200
        assert (await long).status_code == 200
    await app.aclose()
    busy = entries[-1].instance_id  # the long request finished last
    assert [e.instance_id for e in entries[:4]].count(busy) == 0  # round robin alone would give it two


async def test_refused_connection_is_retried_on_another_instance(
    store: SqlMetadataStore, deployments: Deployments, upstreams: Upstreams
) -> None:
    entries: list[AccessEntry] = []
    app = create_gateway(store, route_cache_ttl_s=0.05, access_sink=entries.append)
    deployment_id = deployments.add([dead_port(), upstreams.echo[0].port])
    async with client_for(app) as client:
        replies = [await client.post(f"/{deployment_id}/predict", content=b"{}") for _ in range(6)]
    await app.aclose()
    assert [r.status_code for r in replies] == [200] * 6
    attempts = [e.attempts for e in entries]
    assert max(attempts) == 2  # the dead instance was tried once, for one request at most
    assert attempts.count(2) == 1  # then it was out of rotation
    assert all(r.headers["x-upstream"] == "A" for r in replies)


async def test_ejected_instance_returns_after_a_newer_healthy_probe(
    store: SqlMetadataStore, deployments: Deployments, upstreams: Upstreams
) -> None:
    entries: list[AccessEntry] = []
    app = create_gateway(store, route_cache_ttl_s=0.05, ejection_s=600, access_sink=entries.append)
    dead = dead_port()
    deployment_id = deployments.add([dead, upstreams.echo[0].port])
    async with client_for(app) as client:
        for _ in range(4):
            await client.post(f"/{deployment_id}/predict", content=b"{}")
        ejected_attempts = sum(e.attempts for e in entries)
        await asyncio.sleep(0.1)  # routes re-read, same probe time: still out
        for _ in range(4):
            await client.post(f"/{deployment_id}/predict", content=b"{}")
        assert sum(e.attempts for e in entries) - ejected_attempts == 4
        # The reconciler probes again and finds it healthy: it is back in rotation.
        time.sleep(0.002)
        deployments.set_instances(deployment_id, [dead, upstreams.echo[0].port], probe_time=now_iso())
        await asyncio.sleep(0.1)
        before = sum(e.attempts for e in entries)
        for _ in range(4):
            assert (await client.post(f"/{deployment_id}/predict", content=b"{}")).status_code == 200
        assert sum(e.attempts for e in entries) - before == 5  # tried once more, then out again
    await app.aclose()
    assert ejected_attempts == 5


async def test_inflight_limit_answers_429(store: SqlMetadataStore, deployments: Deployments, upstreams: Upstreams) -> None:
    app = create_gateway(store, inflight_per_instance=2)
    deployment_id = deployments.add([upstreams.slow.port])
    async with client_for(app) as client:
        replies = await asyncio.gather(*(client.post(f"/{deployment_id}/predict?s=0.4", content=b"{}") for _ in range(5)))
        after = await client.post(f"/{deployment_id}/predict?s=0.01", content=b"{}")
    await app.aclose()
    statuses = sorted(r.status_code for r in replies)
    assert statuses == [200, 200, 429, 429, 429]
    refused = next(r for r in replies if r.status_code == 429)
    assert refused.json()["code"] == "TooManyRequests" and "2 per ready instance" in refused.json()["message"]
    assert after.status_code == 200  # capacity comes back as requests finish


async def test_capacity_grows_with_instances(store: SqlMetadataStore, deployments: Deployments, upstreams: Upstreams) -> None:
    app = create_gateway(store, inflight_per_instance=1)
    deployment_id = deployments.add([upstreams.slow.port, upstreams.slow.port, upstreams.slow.port])
    async with client_for(app) as client:
        replies = await asyncio.gather(*(client.post(f"/{deployment_id}/predict?s=0.3", content=b"{}") for _ in range(4)))
    await app.aclose()
    assert sorted(r.status_code for r in replies) == [200, 200, 200, 429]

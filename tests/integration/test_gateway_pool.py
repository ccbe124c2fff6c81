"""The gateway's upstream connection pool against real servers: reuse, limits, waiting, expiry,
and never handing out a connection whose last reply was abandoned."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from dockyard.gateway.pool import UpstreamPool
from tests.integration.test_gateway_harness import Upstreams, dead_port, upstreams  # noqa: F401 (fixtures)


def request(url: str, body: bytes = b"{}", pool_timeout_s: float = 5.0) -> httpx.Request:
    timeout = httpx.Timeout(10, pool=pool_timeout_s).as_dict()
    return httpx.Request("POST", url, content=body, extensions={"timeout": timeout})


async def send(pool: UpstreamPool, url: str, **kwargs: float) -> httpx.Response:
    response = await pool.handle_async_request(request(url, **kwargs))  # type: ignore[arg-type]
    await response.aread()
    await response.aclose()
    return response


async def test_sequential_requests_share_one_connection(upstreams: Upstreams) -> None:
    pool = UpstreamPool(max_connections=10, max_idle=10, keepalive_expiry_s=5)
    ports = {(await send(pool, upstreams.echo[0].url + "/predict")).json()["client_port"] for _ in range(5)}
    assert len(ports) == 1 and pool.open_connections() == 1
    await pool.aclose()
    assert pool.open_connections() == 0


async def test_concurrent_requests_open_connections_then_reuse_them(upstreams: Upstreams) -> None:
    pool = UpstreamPool(max_connections=10, max_idle=10, keepalive_expiry_s=5)
    url = upstreams.slow.url + "/?s=0.2"
    first = await asyncio.gather(*(send(pool, url) for _ in range(4)))
    assert all(r.status_code == 200 for r in first)
    assert pool.open_connections() == 4
    await asyncio.gather(*(send(pool, url) for _ in range(4)))
    assert pool.open_connections() == 4  # the idle ones were taken again, none added
    await pool.aclose()


async def test_requests_wait_for_a_free_connection_at_the_limit(upstreams: Upstreams) -> None:
    pool = UpstreamPool(max_connections=2, max_idle=2, keepalive_expiry_s=5)
    replies = await asyncio.gather(*(send(pool, upstreams.slow.url + "/?s=0.1") for _ in range(6)))
    assert [r.status_code for r in replies] == [200] * 6
    assert pool.open_connections() == 2
    await pool.aclose()


async def test_pool_timeout_when_no_connection_frees_up(upstreams: Upstreams) -> None:
    pool = UpstreamPool(max_connections=1, max_idle=1, keepalive_expiry_s=5)
    holder = asyncio.create_task(send(pool, upstreams.slow.url + "/?s=0.5"))
    await asyncio.sleep(0.05)
    with pytest.raises(httpx.PoolTimeout):
        await send(pool, upstreams.slow.url + "/?s=0", pool_timeout_s=0.1)
    assert (await holder).status_code == 200
    assert (await send(pool, upstreams.slow.url + "/?s=0")).status_code == 200  # the freed one serves again
    await pool.aclose()


async def test_abandoned_reply_is_not_reused(upstreams: Upstreams) -> None:
    pool = UpstreamPool(max_connections=4, max_idle=4, keepalive_expiry_s=5)
    big = await pool.handle_async_request(request(upstreams.echo[0].url + "/big?n=5000000"))
    async for _ in big.aiter_raw():
        break
    await big.aclose()  # most of the body never read: that connection cannot carry another request
    reply = await send(pool, upstreams.echo[0].url + "/predict")
    assert reply.json()["path"] == "/predict"
    await asyncio.sleep(0.05)
    assert pool.open_connections() == 1
    await pool.aclose()


async def test_idle_connections_expire(upstreams: Upstreams) -> None:
    pool = UpstreamPool(max_connections=4, max_idle=4, keepalive_expiry_s=0.2)
    first = (await send(pool, upstreams.echo[1].url + "/predict")).json()["client_port"]
    await asyncio.sleep(1.1)
    second = (await send(pool, upstreams.echo[1].url + "/predict")).json()["client_port"]
    assert first != second and pool.open_connections() == 1
    await pool.aclose()


async def test_idle_connections_close_at_expiry_without_another_request(upstreams: Upstreams) -> None:
    """A server that waits for open connections on SIGTERM (tritonserver) must not be held up by
    the gateway's idle ones once the traffic stopped: they close at their expiry by themselves."""
    pool = UpstreamPool(max_connections=4, max_idle=4, keepalive_expiry_s=0.2)
    await asyncio.gather(*(send(pool, upstreams.slow.url + "/?s=0.05") for _ in range(3)))
    assert pool.open_connections() == 3
    deadline = asyncio.get_running_loop().time() + 3
    while pool.open_connections() and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.05)
    assert pool.open_connections() == 0
    await pool.aclose()


async def test_refused_connection_is_a_connect_error_and_leaves_nothing_open() -> None:
    pool = UpstreamPool(max_connections=4, max_idle=4, keepalive_expiry_s=5)
    with pytest.raises(httpx.ConnectError):
        await send(pool, f"http://127.0.0.1:{dead_port()}/predict")
    assert pool.open_connections() == 0
    await pool.aclose()

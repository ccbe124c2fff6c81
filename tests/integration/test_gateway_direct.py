"""The commonest predict relayed without the ASGI call (gateway/direct.py), through dockyard's own
HTTP server over real connections: what the caller, the container and the access log see, and
every way the exchange can end (dropped, not HTTP, late, cut, abandoned, pipelined)."""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import json
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from dockyard.gateway import AccessEntry, create_gateway
from dockyard.gateway.httpserver import HttpServer
from tests.integration.test_gateway_harness import (  # noqa: F401 (fixtures)
    Deployments,
    OwnServerClient,
    Upstreams,
    deployments,
    store,
    upstreams,
)
from tests.support.raw_server import RawServer, read_request

BODY = b'{"inputs": [[1, 2, 3]]}'


class Served(OwnServerClient):
    """A gateway behind dockyard's own server on this loop (closed on the way out), and the
    number of requests that reached its ASGI call (the rest were relayed directly)."""

    def __init__(self, gateway: Any, **options: Any) -> None:
        super().__init__(gateway, **options)
        self.gateway = gateway

    @property
    def asgi_calls(self) -> int:
        return self.app.asgi_calls

    async def __aenter__(self) -> Served:  # type: ignore[override]
        await super().__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await super().__aexit__(*exc)
        await self.gateway.aclose()

    async def predict(self, deployment_id: str, body: bytes = BODY, **kwargs: Any) -> httpx.Response:
        assert self.client is not None
        return await self.client.post(f"/{deployment_id}/predict", content=body, **kwargs)


def gateway_with_log(store: Any, **options: Any) -> tuple[Any, list[AccessEntry]]:
    entries: list[AccessEntry] = []
    options.setdefault("route_cache_ttl_s", 60.0)  # routes stay fresh: every request may go direct
    return create_gateway(store, access_sink=entries.append, **options), entries


class Scripted(RawServer):
    """A keep-alive HTTP/1.1 upstream that meets the requests it gets, in arrival order, with the
    actions listed: `ok` (200 JSON), `drop` (close without a word), `reset`, `garbage` (bytes
    that are not HTTP), `slow` (answers after 2 s), `cut` (Content-Length 1000, 10 bytes, close),
    `stall` (Content-Length 100, 10 bytes, then 2 s of silence), `head-close`, `head-reset` and
    `head-stall` (a head with Content-Length 77, then a close, a reset or 2 s of silence), `huge`
    (64 MiB of zeros, sent as fast as they are taken).
    After the list, `ok`. The request heads it read are in `heads`."""

    def __init__(self, *actions: str) -> None:
        self.actions = list(actions)
        self.heads: list[bytes] = []
        super().__init__()

    def handle(self, conn: socket.socket) -> None:
        buffer = b""
        while True:
            request = read_request(conn, buffer)
            if request is None:
                return
            head, _, buffer = request
            self.heads.append(head)
            action = self.actions.pop(0) if self.actions else "ok"
            if action == "drop":
                return
            if action == "reset":
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                return
            if action == "garbage":
                conn.sendall(b"this is not http\r\n\r\n")
                return
            if action in ("head-close", "head-reset", "head-stall"):
                # The head alone (as a server that writes head and body apart sends it), then,
                # once the gateway has surely read it, a close, a reset, or 2 s of silence.
                conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 77\r\n\r\n")
                time.sleep(2 if action == "head-stall" else 0.2)
                if action == "head-reset":
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                return
            if action == "cut":
                conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\ncontent-length: 1000\r\n\r\n0123456789")
                return
            if action == "stall":
                conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\ncontent-length: 100\r\n\r\n0123456789")
                time.sleep(2)
                return
            if action == "huge":
                size = 64 * 1024 * 1024
                with contextlib.suppress(OSError):  # the gateway closes the connection part way
                    conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\ncontent-length: %d\r\n\r\n" % size)
                    for _ in range(64):
                        conn.sendall(bytes(1024 * 1024))
                return
            if action == "slow":
                time.sleep(2)
            reply = json.dumps({"n": len(self.heads)}).encode()
            conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%b" % (len(reply), reply))


@pytest.fixture
def scripted() -> Iterator[Callable[..., Scripted]]:
    """`scripted(*actions)`: a Scripted upstream, stopped after the test."""
    made: list[Scripted] = []

    def make(*actions: str) -> Scripted:
        made.append(Scripted(*actions))
        return made[-1]

    yield make
    for server in made:
        server.stop()


def request_id_of(head: bytes) -> str:
    return next(line.split(b":", 1)[1].strip().decode() for line in head.split(b"\r\n") if line.lower().startswith(b"opc-request-id:"))


async def test_repeated_predicts_are_relayed_without_the_asgi_call(store: Any, deployments: Deployments, upstreams: Upstreams) -> None:
    app, entries = gateway_with_log(store)
    deployment_id = deployments.add([upstreams.echo[0].port])
    async with Served(app) as served:
        replies = [await served.predict(deployment_id, BODY + b" " * n, headers={"opc-request-id": f"req-{n}", "x-model-hint": "h"})
                   for n in range(6)]  # fmt: skip
    # The first opens the connection (the general path); the others reuse it directly.
    assert served.asgi_calls == 1
    for n, reply in enumerate(replies):
        assert reply.status_code == 200, reply.text
        echoed = reply.json()
        assert echoed["server"] == "A" and echoed["path"] == "/predict" and echoed["method"] == "POST"
        assert echoed["body_len"] == len(BODY) + n
        seen = dict(echoed["headers"])  # what the container received
        assert seen["x-model-hint"] == "h" and seen["opc-request-id"] == f"req-{n}" and seen["x-forwarded-proto"] == "http"
        assert "x-forwarded-for" in seen and seen["host"] == f"127.0.0.1:{upstreams.echo[0].port}"
        assert "connection" not in seen  # httpx sends `Connection: keep-alive`: hop-by-hop, not relayed
        assert reply.headers["opc-request-id"] == f"req-{n}"
    assert [e.status for e in entries] == [200] * 6 and [e.request_id for e in entries] == [f"req-{n}" for n in range(6)]
    for n, entry in enumerate(entries):
        assert entry.deployment_id == deployment_id and entry.attempts == 1 and entry.error is None
        assert entry.bytes_in == len(BODY) + n and entry.bytes_out == len(replies[n].content)
        assert entry.upstream_ms is not None and entry.latency_ms >= entry.upstream_ms
        assert entry.instance_id is not None and entry.path == f"/{deployment_id}/predict"


async def test_a_callers_forwarded_for_is_extended_on_the_direct_path(store: Any, deployments: Deployments, upstreams: Upstreams) -> None:
    """A request with X-Forwarded-For is relayed directly too, its chain extended with the
    caller's address, as the general path does; the one without gets the address alone."""
    app, _ = gateway_with_log(store)
    deployment_id = deployments.add([upstreams.echo[0].port])
    async with Served(app) as served:
        plain = [await served.predict(deployment_id) for _ in range(2)]
        chained = [await served.predict(deployment_id, headers={"x-forwarded-for": "10.1.1.1"}) for _ in range(2)]
    assert served.asgi_calls == 1
    assert [dict(r.json()["headers"])["x-forwarded-for"] for r in plain] == ["127.0.0.1"] * 2
    assert [dict(r.json()["headers"])["x-forwarded-for"] for r in chained] == ["10.1.1.1, 127.0.0.1"] * 2


async def test_a_chunked_reply_is_relayed_whole_and_in_order(store: Any, deployments: Deployments, upstreams: Upstreams) -> None:
    app, entries = gateway_with_log(store)
    deployment_id = deployments.add([upstreams.echo[0].port], variables={"MODEL_DEPLOY_PREDICT_ENDPOINT": "/chunked"})
    async with Served(app) as served:
        replies = [await served.predict(deployment_id) for _ in range(3)]
    assert served.asgi_calls == 1
    for reply in replies:
        assert reply.status_code == 200
        assert reply.headers.get("transfer-encoding") == "chunked" and "content-length" not in reply.headers
        assert [json.loads(line) for line in reply.text.splitlines()] == [{"i": 0}, {"i": 1}, {"i": 2}]
    assert [e.bytes_out for e in entries] == [len(replies[0].content)] * 3


def two_instances_on(deployments: Deployments, server: RawServer) -> str:
    """A deployment of two instances (two ids) on the same server: they share the pool's
    connections to it, so whichever the balancer picks, a connection kept alive is at hand."""
    deployment_id = deployments.add([server.port, server.port])
    return deployment_id


@pytest.mark.parametrize("action", ["drop", "reset"])
@pytest.mark.parametrize("caller_id", [None, "caller-id.1", "not a token!"])  # none, kept, replaced by one made
async def test_a_kept_alive_request_dropped_unanswered_goes_to_another_instance_with_its_id(
    scripted: Any,
    store: Any, deployments: Deployments, action: str, caller_id: str | None, caplog: pytest.LogCaptureFixture
) -> None:
    upstream = scripted("ok", action)
    app, entries = gateway_with_log(store)
    deployment_id = two_instances_on(deployments, upstream)
    async with Served(app) as served:
        assert (await served.predict(deployment_id)).status_code == 200  # opens the connection
        headers = {"opc-request-id": caller_id} if caller_id else {}
        reply = await served.predict(deployment_id, headers=headers)  # relayed directly, dropped, handed over
    assert reply.status_code == 200 and reply.json() == {"n": 3}, reply.text
    assert served.asgi_calls == 2  # the first request, and the hand-over
    # Said once: by the direct path, which handed the request over (the proxy's retry would say it
    # too). Not told apart by `record.module`: compiled code (dockyard.compiled) has no frames.
    assert [r.name for r in caplog.records if "unanswered" in r.getMessage()] == ["dockyard.gateway"]
    # The same request, with the same id, reached the other instance (a new connection).
    assert len(upstream.heads) == 3 and request_id_of(upstream.heads[1]) == request_id_of(upstream.heads[2])
    assert reply.headers["opc-request-id"] == request_id_of(upstream.heads[1])
    assert (reply.headers["opc-request-id"] == caller_id) is (caller_id == "caller-id.1")
    assert upstream.heads[2].lower().count(b"opc-request-id:") == 1
    assert upstream.heads[1].split(b"\r\n")[0] == upstream.heads[2].split(b"\r\n")[0] == b"POST /predict HTTP/1.1"
    entry = entries[1]
    assert entry.status == 200 and entry.attempts == 2 and entry.request_id == reply.headers["opc-request-id"]
    assert entry.bytes_in == len(BODY)
    assert app.balancer.inflight(deployment_id) == 0


async def test_after_a_dropped_direct_request_a_second_drop_is_a_502_not_a_third_try(scripted: Any, store: Any, deployments: Deployments) -> None:
    upstream = scripted("ok", "drop", "drop")  # a third try would be answered
    app, entries = gateway_with_log(store)
    deployment_id = two_instances_on(deployments, upstream)
    async with Served(app) as served:
        assert (await served.predict(deployment_id)).status_code == 200
        reply = await served.predict(deployment_id)
    assert served.asgi_calls == 2  # the first request, and the hand-over of the dropped one
    assert reply.status_code == 502 and reply.json()["code"] == "BadGateway", reply.text
    assert len(upstream.heads) == 3  # dropped twice, never tried a third time
    assert entries[-1].status == 502 and entries[-1].attempts == 2


async def test_a_reply_that_is_not_http_is_a_json_502(scripted: Any, store: Any, deployments: Deployments) -> None:
    upstream = scripted("ok", "garbage")
    app, entries = gateway_with_log(store)
    deployment_id = deployments.add([upstream.port])
    async with Served(app) as served:
        assert (await served.predict(deployment_id)).status_code == 200
        reply = await served.predict(deployment_id, headers={"opc-request-id": "garbled"})
        after = await served.predict(deployment_id)  # the instance is tried again (a new connection)
    assert served.asgi_calls == 2  # the first request, and the one after the 502 (its connection was closed)
    assert reply.status_code == 502 and reply.headers["content-type"] == "application/json"
    assert reply.json()["code"] == "BadGateway" and "not valid HTTP/1.1" in reply.json()["message"]
    assert reply.headers["opc-request-id"] == "garbled"
    assert entries[1].status == 502 and entries[1].error == reply.json()["message"]
    assert after.status_code == 200


async def test_no_reply_within_the_timeout_is_a_json_504(scripted: Any, store: Any, deployments: Deployments) -> None:
    upstream = scripted("ok", "slow")
    app, entries = gateway_with_log(store, request_timeout_s=0.3)
    deployment_id = deployments.add([upstream.port])
    async with Served(app) as served:
        assert (await served.predict(deployment_id)).status_code == 200
        started = time.monotonic()
        reply = await served.predict(deployment_id)
        waited = time.monotonic() - started
    assert served.asgi_calls == 1
    assert reply.status_code == 504 and reply.json()["code"] == "GatewayTimeout" and "0.3 s" in reply.json()["message"]
    assert 0.25 < waited < 1.5
    assert entries[1].status == 504


async def test_a_reply_cut_after_its_head_is_cut_for_the_caller_too(scripted: Any, store: Any, deployments: Deployments) -> None:
    upstream = scripted("ok", "cut")
    app, entries = gateway_with_log(store)
    deployment_id = deployments.add([upstream.port])
    async with Served(app) as served:
        assert (await served.predict(deployment_id)).status_code == 200
        with pytest.raises(httpx.RemoteProtocolError):  # short of its Content-Length: the caller sees the cut
            await served.predict(deployment_id)
        for _ in range(100):
            if len(entries) == 2:
                break
            await asyncio.sleep(0.01)
    assert served.asgi_calls == 1
    assert entries[1].status == 200 and entries[1].bytes_out == 10
    assert "broke off after 10 bytes" in (entries[1].error or "")


@pytest.mark.parametrize("action", ["head-close", "head-reset"])
async def test_a_reply_that_dies_between_its_head_and_its_body_is_a_json_502_on_both_paths(
    action: str, scripted: Any, store: Any, deployments: Deployments
) -> None:
    """The head of a reply with a content-length waits for its first body bytes: a container
    killed between the two gets its caller the gateway's JSON error, not a head promising 77
    bytes and a closed connection. The first request goes the general way (no route cached yet),
    the second directly."""
    upstream = scripted(action, "ok", action)
    app, entries = gateway_with_log(store)
    deployment_id = deployments.add([upstream.port])
    async with Served(app) as served:
        general = await served.predict(deployment_id, headers={"opc-request-id": "general"})
        assert (await served.predict(deployment_id)).status_code == 200  # opens a connection to keep
        direct = await served.predict(deployment_id, headers={"opc-request-id": "direct"})
        after = await served.predict(deployment_id)
    assert served.asgi_calls == 3  # all but the third (each 502 closes its upstream connection)
    for reply, request_id in ((general, "general"), (direct, "direct")):
        assert reply.status_code == 502 and reply.headers["content-type"] == "application/json", reply.text
        assert reply.json()["code"] == "BadGateway" and "sent its reply's head and failed before its body" in reply.json()["message"]
        assert reply.headers["opc-request-id"] == request_id
    assert [entry.status for entry in entries] == [502, 200, 502, 200]
    for entry, reply in ((entries[0], general), (entries[2], direct)):
        assert entry.error == reply.json()["message"] and entry.bytes_out == len(reply.content)
    assert after.status_code == 200


async def test_a_reply_whose_body_never_starts_is_a_json_504_on_both_paths(scripted: Any, store: Any, deployments: Deployments) -> None:
    # Two upstreams: each serves one connection at a time, and a stall holds its connection 2 s.
    first, second = scripted("head-stall"), scripted("ok", "head-stall")
    app, entries = gateway_with_log(store, request_timeout_s=0.3)
    first_id, second_id = deployments.add([first.port]), deployments.add([second.port])
    async with Served(app) as served:
        general = await served.predict(first_id)
        assert (await served.predict(second_id)).status_code == 200  # opens a connection to keep
        started = time.monotonic()
        direct = await served.predict(second_id)
        waited = time.monotonic() - started
        assert app.transport.open_connections() == 0
    assert served.asgi_calls == 2  # the third went directly
    for reply in (general, direct):
        assert reply.status_code == 504 and reply.json()["code"] == "GatewayTimeout", reply.text
        assert "none of its body within 0.3 s" in reply.json()["message"]
    assert 0.25 < waited < 1.5  # the read timeout, not the container's 2 s
    assert [entry.status for entry in entries] == [504, 200, 504]


async def test_a_reply_that_goes_silent_after_its_head_is_cut_at_the_read_timeout(scripted: Any, store: Any, deployments: Deployments) -> None:
    upstream = scripted("ok", "stall")
    app, entries = gateway_with_log(store, request_timeout_s=0.3)
    deployment_id = two_instances_on(deployments, upstream)
    async with Served(app) as served:
        assert (await served.predict(deployment_id)).status_code == 200
        started = time.monotonic()
        with pytest.raises(httpx.RemoteProtocolError):
            await served.predict(deployment_id)
        waited = time.monotonic() - started
        assert app.transport.open_connections() == 0
    assert served.asgi_calls == 1
    assert 0.25 < waited < 1.5  # the read timeout, not the container's 2 s
    assert entries[1].status == 200 and entries[1].bytes_out == 10
    assert "broke off after 10 bytes (ReadTimeout)" in (entries[1].error or "")


async def test_a_caller_that_hangs_up_ends_the_exchange_and_its_upstream_connection(scripted: Any, store: Any, deployments: Deployments) -> None:
    upstream = scripted("ok", "slow")
    app, entries = gateway_with_log(store)
    deployment_id = deployments.add([upstream.port])
    async with Served(app) as served:
        assert (await served.predict(deployment_id)).status_code == 200
        assert app.transport.open_connections() == 1
        reader, writer = await asyncio.open_connection("127.0.0.1", served.server.port)
        writer.write(b"POST /%b/predict HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n\r\n%b"
                     % (deployment_id.encode(), len(BODY), BODY))  # fmt: skip
        await writer.drain()
        await asyncio.sleep(0.2)
        writer.close()
        started = time.monotonic()
        while len(entries) < 2 and time.monotonic() - started < 1.5:
            await asyncio.sleep(0.01)
        assert time.monotonic() - started < 0.5  # noticed at once, not when the model answers
        await asyncio.sleep(0.05)
        assert app.transport.open_connections() == 0  # the upstream connection closed with it
    assert served.asgi_calls == 1
    assert entries[1].status == 499 and entries[1].error == "the caller went away before the reply was complete"
    assert app.balancer.inflight(deployment_id) == 0


async def read_reply_until_closed(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """The one reply on a connection that the gateway closes after it: status, headers, body."""
    data = await asyncio.wait_for(reader.read(), 5)  # to the close
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {name.strip().lower(): value.strip() for name, _, value in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split(" ")[1]), headers, body


async def stall_body(served: Served, deployment_id: str, declared: int) -> tuple[bytes, int, dict[str, str], bytes, float]:
    """A predict whose head declares `declared` body bytes, of which part is sent, then nothing:
    the part, the reply's status, headers and body, and how long the reply took to come."""
    reader, writer = await asyncio.open_connection("127.0.0.1", served.server.port)
    part = BODY if declared < 1024 else b"x" * 100_000
    writer.write(b"POST /%b/predict HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n\r\n%b" % (deployment_id.encode(), declared, part))
    await writer.drain()
    started = time.monotonic()
    status, headers, body = await read_reply_until_closed(reader)
    waited = time.monotonic() - started
    writer.close()
    return part, status, headers, body, waited


@pytest.mark.parametrize("declared", [len(BODY) + 100, 2 * 1024 * 1024], ids=["small body", "streamed body"])
async def test_a_body_that_stops_coming_is_a_408_that_frees_its_slot(scripted: Any, store: Any, deployments: Deployments,
                                                                      declared: int) -> None:  # fmt: skip
    # A caller that sends its head and part of its body, then nothing, held its in-flight slot
    # (and, streamed, an upstream connection) for as long as it kept the connection open: a few
    # such callers could fill a deployment's in-flight limit. Within the request timeout it gets
    # a 408 (not a 504: the model was not late), and the connection closes, since the rest of
    # the body could otherwise be read as a request.
    upstream = scripted()
    app, entries = gateway_with_log(store, request_timeout_s=0.3)
    deployment_id = deployments.add([upstream.port])
    async with Served(app) as served:
        assert (await served.predict(deployment_id)).status_code == 200
        part, status, headers, body, waited = await stall_body(served, deployment_id, declared)
        assert status == 408 and headers["connection"] == "close", (status, headers, body)
        document = json.loads(body)
        assert document["code"] == "RequestTimeout"
        assert "0.3 s" in document["message"] and f"{len(part)} bytes came" in document["message"]
        assert 0.25 < waited < 1.5
        for _ in range(100):
            if len(entries) == 2 and app.transport.open_connections() <= 1:
                break
            await asyncio.sleep(0.01)
        assert app.balancer.inflight(deployment_id) == 0
        assert entries[1].status == 408 and entries[1].bytes_in == len(part)
        # A streamed body's upstream connection carried part of it: closed, not kept for another.
        assert app.transport.open_connections() == (1 if declared < 1024 else 0)
        assert (await served.predict(deployment_id)).status_code == 200
    assert len(upstream.heads) == (2 if declared < 1024 else 3)  # the small one never reached the container


@pytest.mark.parametrize("declared", [len(BODY) + 100, 2 * 1024 * 1024], ids=["small body", "streamed body"])
async def test_a_body_that_stops_coming_is_cut_off_by_the_server_s_body_timeout(scripted: Any, store: Any, deployments: Deployments,
                                                                                declared: int) -> None:  # fmt: skip
    # With the server's body timeout (DOCKYARD_BODY_TIMEOUT_S) shorter than the request
    # timeout, the server cuts a stalled body first: the caller gets its 408, and the gateway
    # frees what the request held and logs why.
    upstream = scripted()
    app, entries = gateway_with_log(store, request_timeout_s=30)
    deployment_id = deployments.add([upstream.port])
    async with Served(app, body_timeout_s=1) as served:
        part, status, headers, body, waited = await stall_body(served, deployment_id, declared)
        assert status == 408 and headers["connection"] == "close", (status, headers, body)
        assert json.loads(body)["message"].startswith("the request's body stopped coming: no byte of it for 1 s")
        assert 0.9 < waited < 3
        for _ in range(100):
            if len(entries) == 1 and app.transport.open_connections() == 0:
                break
            await asyncio.sleep(0.01)
        assert app.balancer.inflight(deployment_id) == 0
        assert entries[0].status == 408 and entries[0].error == "the request's body stopped coming: no byte of it for 1 s", entries[0]
        assert entries[0].bytes_in == len(part)
        assert app.transport.open_connections() == 0
        assert (await served.predict(deployment_id)).status_code == 200


@pytest.mark.parametrize("path", ["/predict", "/predict?general=1"], ids=["direct", "general"])
async def test_a_caller_that_reads_nothing_is_cut_off_and_frees_its_slot(scripted: Any, store: Any, deployments: Deployments,
                                                                         path: str) -> None:  # fmt: skip
    # A caller that asks for a large reply and then reads none of it (a hung client with its
    # connection open) used to hold its in-flight slot and upstream connection for ever on the
    # general path (the one streamed replies take); within the send timeout its connection is
    # closed, and the access log says why, without blaming the container.
    upstream = scripted("ok", "huge")
    app, entries = gateway_with_log(store, request_timeout_s=0.5)
    deployment_id = deployments.add([upstream.port])
    async with Served(app, send_timeout_s=0.5) as served:
        assert (await served.predict(deployment_id)).status_code == 200
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connecting, to bound the window
        sock.connect(("127.0.0.1", served.server.port))
        sock.sendall(b"POST /%b%b HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n\r\n%b"
                     % (deployment_id.encode(), path.encode(), len(BODY), BODY))  # fmt: skip
        started = time.monotonic()
        while len(entries) < 2 and time.monotonic() - started < 5:
            await asyncio.sleep(0.05)
        waited = time.monotonic() - started
        assert len(entries) == 2, "the exchange did not end"
        assert 0.4 < waited < 3
        assert entries[1].status == 200 and entries[1].bytes_out < 64 * 1024 * 1024
        assert "took none of the reply for 0.5 s" in (entries[1].error or ""), entries[1].error
        assert app.balancer.inflight(deployment_id) == 0
        await asyncio.sleep(0.1)
        assert app.transport.open_connections() == 0  # the upstream connection closed with it
        # The caller's connection is gone too, though it never read what waited for it (a close
        # that waits for the write buffer to drain would keep it open as long as the caller).
        assert len(served.server.connections) == 1  # the client's kept-alive one alone
        sock.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            while sock.recv(1 << 20):
                pass
        sock.close()
        assert (await served.predict(deployment_id)).status_code == 200


async def test_pipelined_predicts_are_answered_in_order(store: Any, deployments: Deployments, upstreams: Upstreams) -> None:
    app, entries = gateway_with_log(store)
    deployment_id = deployments.add([upstreams.echo[0].port])
    async with Served(app) as served:
        assert (await served.predict(deployment_id)).status_code == 200
        reader, writer = await asyncio.open_connection("127.0.0.1", served.server.port)
        requests = [b"POST /%b/predict HTTP/1.1\r\nhost: x\r\nopc-request-id: p%d\r\ncontent-length: %d\r\n\r\n%b"
                    % (deployment_id.encode(), n, len(BODY) + n, BODY + b" " * n) for n in range(3)]  # fmt: skip
        writer.write(b"".join(requests))
        await writer.drain()
        replies = []
        for _ in range(3):
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")))
            replies.append((head, json.loads(await reader.readexactly(length))))
        writer.close()
    assert [body["body_len"] for _, body in replies] == [len(BODY), len(BODY) + 1, len(BODY) + 2]
    assert [b"opc-request-id: p%d" % n in head for n, (head, _) in enumerate(replies)] == [True] * 3
    assert served.asgi_calls == 1  # all three relayed directly, one after the other
    assert [e.request_id for e in entries[1:]] == ["p0", "p1", "p2"]


def test_the_gateway_role_app_offers_its_requests_to_the_direct_path() -> None:
    """`dockyard serve --role gateway` serves the app `gateway_app` builds (the signature check
    around the gateway, /metrics beside it): the server must find `direct` through both, else
    every request would take the ASGI call (correct, but dearer)."""
    from dockyard.auth.middleware import SignatureAuthMiddleware
    from dockyard.gateway.compose import WithMetrics

    offered: list[Any] = []

    class Inner:
        def direct(self, cycle: Any) -> bool:
            offered.append(cycle)
            return True

    class Cycle:
        scope = {"path": "/x/predict", "headers": [], "state": {}, "method": "POST"}

    wrapped = WithMetrics(SignatureAuthMiddleware(Inner(), verify=lambda *a, **k: None, allow_unsigned=True), metrics=None)
    direct = HttpServer(wrapped).direct
    assert direct is not None and direct(Cycle()) is True and len(offered) == 1


async def test_dockyard_serve_offers_predicts_to_the_direct_path_and_nothing_else(tmp_path: Any, upstreams: Upstreams) -> None:
    """`dockyard serve` (the control plane and the gateway on one port, `serve_all`) on
    dockyard's own server: predicts are relayed directly as under `--role gateway`; the control
    plane's requests, /health and /metrics take their ASGI calls."""
    from dockyard.server import create_app, serve_all
    from dockyard.settings import Settings
    from tests.integration.test_gateway_harness import Deployments as Writer

    settings = Settings(data_dir=tmp_path, runtime="fake", insecure_no_auth=True, gateway_route_cache_ttl_s=60.0)
    application = create_app(settings)
    server = application.state.server
    deployment_id = Writer(server.services.store).add([upstreams.echo[0].port])
    served = Served(serve_all(application, settings))
    served.gateway = served.app.app.app.gateway  # the signature check around the gateway (closed on the way out)
    try:
        async with served:
            assert served.client is not None
            replies = [await served.predict(deployment_id) for _ in range(4)]
            assert [r.status_code for r in replies] == [200] * 4 and all(r.json()["body_len"] == len(BODY) for r in replies)
            assert served.asgi_calls == 1  # the first opened the connection; three went directly
            projects = await served.client.get("/20190101/projects", params={"compartmentId": "ocid1.compartment.oc1..test"})
            health = await served.client.get("/health")
            metrics = await served.client.get("/metrics")
            assert projects.status_code == 200 and health.status_code == 200, (projects.text, health.text)
            assert metrics.status_code == 200 and "dockyard_gateway_requests_total" in metrics.text
            assert served.asgi_calls == 4
    finally:
        server.services.store.close()


async def test_signed_predicts_are_relayed_directly_once_their_key_is_known(store: Any, deployments: Deployments, upstreams: Upstreams) -> None:
    import oci
    import requests

    from dockyard.auth import keys
    from dockyard.auth.identity import KeyId, Principal, RegisteredKey
    from dockyard.auth.middleware import SignatureAuthMiddleware
    from dockyard.auth.verifier import Verifier

    tenancy, user = "ocid1.tenancy.oc1..aaaaaaaatenancy", "ocid1.user.oc1..aaaaaaaauser"
    key = keys.generate_private_key()
    fingerprint = keys.fingerprint(key.public_key())
    principal = Principal(user_id=user, tenancy_id=tenancy, fingerprint=fingerprint)
    signer = oci.signer.Signer(tenancy, user, fingerprint, None, private_key_content=keys.private_pem(key).decode())

    def lookup(key_id: KeyId) -> RegisteredKey | None:
        return RegisteredKey(principal, keys.public_pem(key.public_key())) if key_id == KeyId(tenancy, user, fingerprint) else None

    gateway, entries = gateway_with_log(store)
    deployment_id = deployments.add([upstreams.echo[0].port])
    async with Served(SignatureAuthMiddleware(gateway, verify=Verifier(lookup))) as served:
        assert served.client is not None
        url = f"http://127.0.0.1:{served.server.port}/{deployment_id}/predict"

        def signed(body: bytes) -> dict[str, str]:
            prepared = requests.Request("POST", url, data=body, headers={"content-type": "application/json"}).prepare()
            signer(prepared)
            return {name: str(value) for name, value in prepared.headers.items()}

        replies = [await served.client.post(url, content=BODY, headers=signed(BODY)) for _ in range(4)]
        tampered = await served.client.post(url, content=BODY.replace(b"1", b"7"), headers=signed(BODY))
        # Remembered signatures are recognised by their raw bytes: a signed header changed under
        # one is not.
        redated = signed(BODY) | {"date": email.utils.formatdate(time.time() - 3600, usegmt=True)}
        tampered_date = await served.client.post(url, content=BODY, headers=redated)
        unsigned = await served.client.post(url, content=BODY)
    assert [r.status_code for r in replies] == [200] * 4 and all(r.json()["body_len"] == len(BODY) for r in replies)
    # The first looks its key up and opens the connection; the next three go directly. A body
    # that is not the one signed, and an unsigned request, are refused by the ASGI call.
    assert served.asgi_calls == 4
    assert tampered.status_code == 401 and "x-content-sha256" in tampered.json()["message"]
    assert tampered_date.status_code == 401 and "off the server's clock" in tampered_date.json()["message"]
    assert unsigned.status_code == 401
    assert len(entries) == 4 and {e.caller for e in entries} == {f"{tenancy}/{user}/{fingerprint}"}

"""Routes from stored deployments, the route cache, the balancer, headers and body framing."""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any

import pytest

from dockyard.errors import InvalidParameter, LengthRequired, PayloadTooLarge, ServiceUnavailable
from dockyard.gateway.balancer import Balancer
from dockyard.gateway.body import RequestBody, check_framing
from dockyard.gateway.headers import (
    caller,
    client_response_headers,
    client_response_lines,
    request_id,
    upstream_request_headers,
    upstream_request_lines,
)
from dockyard.gateway.routes import Backend, Route, RouteTable, route_from
from dockyard.gateway.triton import model_path, requested_model
from dockyard.store.metadata import InstanceRecord, Record


def record(state: str = "ACTIVE", variables: dict[str, str] | None = None) -> Record:
    env = {"environmentConfigurationType": "OCIR_CONTAINER", "environmentVariables": variables or {}}
    return Record(
        id="md1",
        kind="modeldeployment",
        body={"lifecycleState": state, "modelDeploymentConfigurationDetails": {"environmentConfigurationDetails": env}},
    )


def instance(
    n: int, state: str = "RUNNING", health: str = "HEALTHY", port: int | None = 9000, probe: str | None = None
) -> InstanceRecord:
    return InstanceRecord(
        f"i{n}", "md1", "h", "process", state, health, "127.0.0.1", port and port + n, None, time_last_probe=probe
    )


# --- routes -----------------------------------------------------------------------------------------


def test_route_keeps_only_ready_instances() -> None:
    instances = [instance(0), instance(1, health="UNHEALTHY"), instance(2, state="STARTING"), instance(3, port=None), instance(4)]
    route = route_from(record(), instances)
    assert [b.instance_id for b in route.backends] == ["i0", "i4"]
    assert route.backends[0].base_url == "http://127.0.0.1:9000"


def test_route_reads_the_variables_the_service_interprets() -> None:
    route = route_from(record(variables={"MODEL_DEPLOY_ENABLE_STREAMING": "True", "CONTAINER_TYPE": "triton",
                                         "MODEL_DEPLOY_PREDICT_ENDPOINT": "/generate"}), [])  # fmt: skip
    assert (route.streaming, route.triton, route.predict_path) == (True, True, "/generate")
    plain = route_from(record(variables={"MODEL_DEPLOY_ENABLE_STREAMING": "yes"}), [])
    assert (plain.streaming, plain.triton, plain.predict_path) == (False, False, "/predict")


def test_ipv6_backend_url() -> None:
    assert Backend("i", "::1", 8080).base_url == "http://[::1]:8080"


class CountingSource:
    def __init__(self, records: dict[str, Record], fail: bool = False) -> None:
        self.records = records
        self.reads = 0
        self.fail = fail

    def get(self, resource_id: str, kind: str | None = None) -> Record | None:
        self.reads += 1
        if self.fail:
            raise OSError("database is locked")
        return self.records.get(resource_id)

    def list_instances(self, deployment_id: str | None = None) -> list[InstanceRecord]:
        return [instance(0)]


async def test_route_table_shares_one_read_and_caches_for_ttl() -> None:
    now = [0.0]
    source = CountingSource({"md1": record()})
    table = RouteTable(source, ttl_s=0.5, clock=lambda: now[0])
    routes = await asyncio.gather(*(table.get("md1") for _ in range(50)))
    assert source.reads == 1 and all(r is routes[0] for r in routes)
    now[0] = 0.4
    await table.get("md1")
    assert source.reads == 1
    now[0] = 0.8  # expired longer ago than the stale window (ttl / 2): the caller waits for the read
    await table.get("md1")
    assert source.reads == 2


async def test_route_table_answers_a_just_expired_route_while_one_read_refreshes_it() -> None:
    now = [0.0]
    source = CountingSource({"md1": record()})
    table = RouteTable(source, ttl_s=0.5, clock=lambda: now[0])
    first = await table.get("md1")
    source.records["md1"] = record("INACTIVE")
    now[0] = 0.6  # expired 0.1 s ago: within the stale window
    answers = await asyncio.gather(*(table.get("md1") for _ in range(20)))
    assert all(a is first for a in answers)  # nobody waited on the store
    pending = table._pending.get("md1")  # noqa: SLF001 (the refresh the first caller started)
    assert pending is not None
    await pending
    assert source.reads == 2  # one read for all twenty
    fresh = await table.get("md1")
    assert fresh is not None and fresh.state == "INACTIVE"
    assert source.reads == 2


async def test_fresh_answers_as_get_would_without_waiting() -> None:
    """The direct path asks `fresh` (it cannot wait): a just-expired route is answered and one
    read refreshes it, as `get` does; a route expired longer ago, or never read, is not."""
    now = [0.0]
    source = CountingSource({"md1": record()})
    table = RouteTable(source, ttl_s=0.5, clock=lambda: now[0])
    assert table.fresh("md1") is None and source.reads == 0  # never read: the caller must `get` it
    first = await table.get("md1")
    now[0] = 0.4
    assert table.fresh("md1") is first and not table._pending  # noqa: SLF001 (not expired: no read)
    source.records["md1"] = record("INACTIVE")
    now[0] = 0.6  # expired 0.1 s ago: within the stale window
    assert all(table.fresh("md1") is first for _ in range(20))
    pending = table._pending.get("md1")  # noqa: SLF001 (the one refresh the calls started)
    assert pending is not None
    await pending
    assert source.reads == 2
    refreshed = table.fresh("md1")
    assert refreshed is not None and refreshed.state == "INACTIVE"
    now[0] = 1.2  # the refreshed route (read at 0.6) expired 0.1 s ago: answered, read again
    assert table.fresh("md1") is refreshed
    await table._pending["md1"]  # noqa: SLF001
    now[0] = 10.0
    assert table.fresh("md1") is None and not table._pending  # noqa: SLF001 (the caller waits in `get`)


async def test_route_table_unknown_and_deleted_are_none() -> None:
    table = RouteTable(CountingSource({"gone": record("DELETED")}), ttl_s=1)
    assert await table.get("nope") is None
    assert await table.get("gone") is None


async def test_route_table_keeps_serving_the_last_route_when_the_store_fails() -> None:
    now = [0.0]
    source = CountingSource({"md1": record()})
    table = RouteTable(source, ttl_s=0.5, clock=lambda: now[0])
    first = await table.get("md1")
    source.fail = True
    now[0] = 1.0
    assert await table.get("md1") is first
    with pytest.raises(ServiceUnavailable):
        await table.get("other")


# --- balancer ---------------------------------------------------------------------------------------


def route_of(*backends: Backend) -> Route:
    return Route(deployment_id="md1", state="ACTIVE", backends=backends)


def test_balancer_takes_turns_among_equals_and_prefers_fewest_outstanding() -> None:
    balancer = Balancer(ejection_s=10)
    route = route_of(*(Backend(f"i{n}", "h", n) for n in range(3)))
    balancer.sync(route)
    firsts = [balancer.order(route)[0].backend.instance_id for _ in range(6)]
    assert firsts == ["i0", "i1", "i2", "i0", "i1", "i2"]
    busy = balancer.order(route)[0]
    busy.outstanding = 3
    assert all(balancer.order(route)[0] is not busy for _ in range(6))


def test_ejected_backend_goes_last_until_a_newer_probe() -> None:
    now = [100.0]
    balancer = Balancer(ejection_s=30, clock=lambda: now[0], wall=lambda: "2025-01-01T00:00:10.000000Z")
    old = Backend("i0", "h", 1, last_probe="2025-01-01T00:00:05.000000Z")
    other = Backend("i1", "h", 2, last_probe="2025-01-01T00:00:05.000000Z")
    balancer.sync(route_of(old, other))
    first = balancer.order(route_of(old, other))[0]
    balancer.eject(first)
    assert all(balancer.order(route_of(old, other))[-1] is first for _ in range(4))
    # Re-read with the same probe time: still out.
    balancer.sync(route_of(old, other))
    assert balancer.order(route_of(old, other))[-1] is first
    # A probe newer than the ejection: back in.
    newer = Backend(first.backend.instance_id, "h", first.backend.port, last_probe="2025-01-01T00:00:40.000000Z")
    rest = other if first.backend.instance_id == "i0" else old
    balancer.sync(route_of(newer, rest))
    assert not first.ejected


def test_ejection_ends_after_ejection_s_at_the_latest() -> None:
    now = [0.0]
    balancer = Balancer(ejection_s=10, clock=lambda: now[0])
    backend = Backend("i0", "h", 1)
    route = route_of(backend, Backend("i1", "h", 2))
    balancer.sync(route)
    target = next(u for u in balancer.order(route) if u.backend == backend)
    balancer.eject(target)
    now[0] = 9.9
    assert balancer.order(route)[-1] is target
    now[0] = 10.0
    balancer.order(route)
    assert not target.ejected


def test_capacity_counts_admitted_instances() -> None:
    balancer = Balancer(ejection_s=10)
    route = route_of(Backend("i0", "h", 1), Backend("i1", "h", 2))
    balancer.sync(route)
    assert balancer.capacity(route, 32) == 64
    balancer.eject(balancer.order(route)[0])
    assert balancer.capacity(route, 32) == 32
    balancer.eject(balancer.order(route)[0])
    assert balancer.capacity(route, 32) == 64  # all out: they are all tried again, so all count


def test_inflight_counting() -> None:
    balancer = Balancer(ejection_s=10)
    balancer.enter("md1")
    balancer.enter("md1")
    balancer.leave("md1")
    assert balancer.inflight("md1") == 1
    balancer.leave("md1")
    assert balancer.inflight("md1") == 0


# --- headers ---------------------------------------------------------------------------------------


def test_request_id_kept_when_sane_else_made() -> None:
    assert request_id(b"ABC-123/x.y:z") == "ABC-123/x.y:z"
    assert request_id(b"EA66A3D92DD7429D811F7F46AC1853CD") == "EA66A3D92DD7429D811F7F46AC1853CD"  # as the SDK makes them
    assert request_id(b"a" * 98) == "a" * 98
    for insane in (b"has space", b"caf\xc3\xa9", b"a" * 99, b"x\r\ny", b""):
        made = request_id(insane)
        assert len(made) == 32 and made == made.upper() and made.isalnum(), insane
    made = [request_id(None) for _ in range(1000)]  # several batches of random ones
    assert len(set(made)) == 1000
    assert all(len(one) == 32 and one == one.upper() and int(one, 16) >= 0 for one in made)


def test_a_forked_process_makes_request_ids_of_its_own() -> None:
    request_id(None)  # the batch the parent takes from is made
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: what it would take first
        os.write(write, request_id(None).encode())
        os._exit(0)
    os.waitpid(pid, 0)
    assert os.read(read, 64).decode() != request_id(None)


def test_upstream_headers_drop_hop_by_hop_and_add_forwarding() -> None:
    incoming = [
        (b"host", b"gw"), (b"connection", b"close, x-secret"), (b"x-secret", b"s"), (b"te", b"trailers"),
        (b"transfer-encoding", b"chunked"), (b"route", b"/x"), (b"opc-request-id", b"OLD"), (b"content-type", b"a/b"),
        (b"x-forwarded-for", b"10.0.0.1"), (b"expect", b"100-continue"),
    ]  # fmt: skip
    out = upstream_request_headers(incoming, "RID", "192.0.2.7", "https")
    assert out == [
        (b"content-type", b"a/b"),
        (b"opc-request-id", b"RID"),
        (b"x-forwarded-for", b"10.0.0.1, 192.0.2.7"),
        (b"x-forwarded-proto", b"https"),
    ]


def test_response_headers_drop_hop_by_hop_and_set_request_id() -> None:
    upstream = [(b"Content-Type", b"text/plain"), (b"Transfer-Encoding", b"chunked"), (b"Keep-Alive", b"5"),
                (b"opc-request-id", b"theirs"), (b"Date", b"x"), (b"Server", b"gunicorn"), (b"X-Model", b"v2")]  # fmt: skip
    assert client_response_headers(upstream, "RID") == [
        (b"content-type", b"text/plain"),
        (b"x-model", b"v2"),
        (b"opc-request-id", b"RID"),
    ]


def test_response_headers_named_by_a_capitalised_connection_header_are_dropped() -> None:
    upstream = [(b"Connection", b"X-Hop, keep-alive"), (b"X-Hop", b"1"), (b"X-Model", b"v2")]
    assert client_response_headers(upstream, "RID") == [(b"x-model", b"v2"), (b"opc-request-id", b"RID")]


def test_request_headers_named_by_connection_are_dropped() -> None:
    incoming = [(b"connection", b"x-hop"), (b"x-hop", b"1"), (b"x-keep", b"2")]
    assert upstream_request_headers(incoming, "RID", None, "http") == [
        (b"x-keep", b"2"), (b"opc-request-id", b"RID"), (b"x-forwarded-proto", b"http"),
    ]  # fmt: skip


def test_the_one_pass_header_filters_give_what_the_careful_ones_give() -> None:
    requests = [
        [(b"host", b"gw"), (b"content-type", b"a/b"), (b"content-length", b"2"), (b"user-agent", b"u")],
        [(b"host", b"gw"), (b"te", b"trailers"), (b"route", b"/x"), (b"opc-request-id", b"OLD"), (b"expect", b"100-continue")],
        [(b"x-forwarded-for", b"10.0.0.1"), (b"connection", b"x-hop"), (b"x-hop", b"1"), (b"keep-alive", b"5")],
        [(b"x-a", b"1"), (b"x-a", b"2"), (b"proxy-authorization", b"p"), (b"upgrade", b"h2c")],
    ]  # fmt: skip
    for incoming in requests:
        careful = upstream_request_headers(incoming, "RID", "192.0.2.7", "http")
        assert upstream_request_headers(incoming, "RID", "192.0.2.7", "http", dict(incoming)) == careful
    replies = [
        [(b"Content-Type", b"text/plain"), (b"Transfer-Encoding", b"chunked"), (b"Date", b"x"), (b"Server", b"s")],
        [(b"content-length", b"2"), (b"keep-alive", b"5"), (b"Trailer", b"x"), (b"X-Model", b"v2"), (b"X-Model", b"v3")],
    ]  # fmt: skip
    for upstream in replies:
        assert client_response_headers(upstream, "RID", connection_seen=False) == client_response_headers(upstream, "RID")


def _lines(headers: list[tuple[bytes, bytes]]) -> tuple[bytes, int]:
    return b"".join(b"%s: %s\r\n" % header for header in headers), len(headers)


def test_the_formatted_header_filters_give_the_lines_of_the_careful_ones() -> None:
    """The direct path formats what it forwards in one pass (upstream_request_lines,
    client_response_lines): the same headers, in the same order, as the careful filters give."""
    requests = [
        [(b"host", b"gw"), (b"content-type", b"a/b"), (b"content-length", b"2"), (b"user-agent", b"u")],
        [(b"host", b"gw"), (b"te", b"trailers"), (b"route", b"/x"), (b"opc-request-id", b"OLD"), (b"expect", b"100-continue")],
        [(b"x-a", b"1"), (b"x-a", b"2"), (b"proxy-authorization", b"p"), (b"upgrade", b"h2c"), (b"keep-alive", b"5")],
        [(b"user-agent", b"Oracle-PythonSDK/2"), (b"connection", b"keep-alive"), (b"keep-alive", b"5"), (b"x-a", b"1")],
        [(b"connection", b"Close"), (b"content-length", b"2")],
        [],
    ]  # fmt: skip
    for incoming in requests:
        for client in ("192.0.2.7", None):
            assert upstream_request_lines(incoming, dict(incoming), "RID", client) == _lines(
                upstream_request_headers(incoming, "RID", client, "http"))[0]  # fmt: skip
    for named in ([(b"connection", b"x-hop"), (b"x-hop", b"1")], [(b"x-forwarded-for", b"10.0.0.1")],
                  [(b"connection", b"x-hop"), (b"x-hop", b"1"), (b"connection", b"keep-alive")]):  # fmt: skip
        assert upstream_request_lines(named, dict(named), "RID", None) is None  # left to the careful filter
    replies = [  # as the upstream connection keeps them: names lower-cased, no Connection header
        [(b"content-type", b"text/plain"), (b"transfer-encoding", b"chunked"), (b"date", b"x"), (b"server", b"s")],
        [(b"content-length", b"2"), (b"keep-alive", b"5"), (b"trailer", b"x"), (b"x-model", b"v2"), (b"x-model", b"v3")],
        [(b"opc-request-id", b"theirs"), (b"proxy-authenticate", b"p"), (b"upgrade", b"x")],
    ]  # fmt: skip
    for upstream in replies:
        assert client_response_lines(upstream, "RID") == _lines(client_response_headers(upstream, "RID"))


def test_caller_is_the_signature_key_id() -> None:
    assert caller(b'Signature version="1",keyId="ocid1.tenancy..t/ocid1.user..u/11:22",algorithm="rsa-sha256"') == (
        "ocid1.tenancy..t/ocid1.user..u/11:22"
    )
    assert caller(b'Signature keyId="ST$eyJhbGciOi.secret.jwt",algorithm="rsa-sha256"') == "ST$<session token>"
    assert caller(b"Bearer abc") is None
    assert caller(None) is None


# --- body framing -------------------------------------------------------------------------------------


def test_framing_rules() -> None:
    assert check_framing("POST", b"10", None, 100) == 10
    assert check_framing("POST", None, b"chunked", 100) is None
    assert check_framing("GET", None, None, 100) is None
    with pytest.raises(LengthRequired):
        check_framing("POST", None, None, 100)
    with pytest.raises(PayloadTooLarge):
        check_framing("POST", b"101", None, 100)
    with pytest.raises(InvalidParameter):
        check_framing("POST", b"ten", None, 100)


async def test_body_stream_counts_and_stops_at_the_limit() -> None:
    messages = iter([{"type": "http.request", "body": b"x" * 60, "more_body": True},
                     {"type": "http.request", "body": b"x" * 60, "more_body": False}])  # fmt: skip

    async def receive() -> dict[str, Any]:
        return next(messages)

    body = RequestBody(receive, limit=100)
    got = []
    with pytest.raises(PayloadTooLarge):
        async for chunk in body:
            got.append(chunk)
    assert got == [b"x" * 60] and body.started and body.received == 120
    with pytest.raises(RuntimeError):
        body.__aiter__()


# --- Triton --------------------------------------------------------------------------------------------


def test_triton_headers_both_spellings() -> None:
    assert requested_model({b"model_name": b"simple", b"model_version": b"2"}) == ("simple", "2")
    assert requested_model({b"model-name": b"simple"}) == ("simple", None)
    assert requested_model({}) == (None, None)
    assert model_path("a b/c", "1") == "/v2/models/a%20b%2Fc/versions/1/infer"
    assert model_path("m", None, streaming=True) == "/v2/models/m/generate_stream"
    assert json.dumps(model_path("m", None)) == '"/v2/models/m/infer"'

"""The gateway under real load and real failure.

1. A deployment of three real containers (a small echo model server on the base test image,
   run by a docker-runtime `dockyard serve`) takes 2,000 signed predict requests while one of
   its instances is killed (`docker kill`). Each instance logs the request ids it received,
   so every request's fate is known (tests/support/kill_load.py): no request that no instance
   received may be lost (no reply, or a 5xx), none may be delivered twice, and afterwards all
   three instances serve again.
2. A gateway process (`dockyard serve --role gateway`, short timeouts through its settings)
   takes 10,000 requests with failures of every kind mixed in: its number of open sockets
   must stay steady (pooled keep-alive connections aside) and come back to where it started.
"""

from __future__ import annotations

import asyncio
import collections
import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import docker.errors
import httpx
import oci
import pytest

from dockyard.store.metadata import SqlMetadataStore
from tests.integration.docker_fixtures import BASE, check_infra
from tests.integration.test_gateway_harness import (  # noqa: F401 (fixtures)
    Deployments,
    Upstreams,
    dead_port,
    upstreams,
)
from tests.support.kill_load import (
    DeliveryLog,
    LoadPlan,
    admin_auth,
    admin_config,
    classify,
    containers_by_instance,
    create_echo_deployment,
    echo_artifact,
    run_load,
    spread,
    wait_serving,
)
from tests.support.raw_server import RawServer
from tests.support.server import LiveServer, free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]

HEALTH_ENV = {
    "DOCKYARD_HEALTH_START_PERIOD_S": "10",
    "DOCKYARD_HEALTH_INTERVAL_S": "1",
    "DOCKYARD_HEALTH_TIMEOUT_S": "1",
    "DOCKYARD_HEALTH_RETRIES": "2",
    "DOCKYARD_HEALTH_DEADLINE_S": "60",
    "DOCKYARD_RECONCILE_INTERVAL_S": "0.5",
}


# --- 1. one of three instances killed under load -----------------------------------------------------


@pytest.fixture(scope="module")
def docker_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, LiveServer]]:
    engine = check_infra()
    prefix = f"dygl{secrets.token_hex(3)}"  # this server's containers only, whatever else runs
    server = LiveServer(tmp_path_factory.mktemp("gateway-load") / "data", runtime="docker",
                        env=HEALTH_ENV | {"DOCKYARD_LABEL_PREFIX": prefix})  # fmt: skip
    try:
        server.start(timeout_s=60)
        yield engine, server
    finally:
        server.stop()
        for container in engine.containers.list(all=True, filters={"label": f"{prefix}.managed=true"}):
            container.remove(force=True)
        engine.close()


def test_killing_one_of_three_instances_under_load_loses_no_undelivered_request(
    docker_server: tuple[Any, LiveServer], tmp_path: Path
) -> None:
    engine, server = docker_server
    config, auth = admin_config(server.data_dir), admin_auth(server.data_dir)
    ds = oci.data_science.DataScienceClient(config, service_endpoint=server.url)
    deployment_id = create_echo_deployment(ds, config["tenancy"], echo_artifact(tmp_path / "echo.zip"), BASE, 3, "kill-load")
    wait_serving(server.url, auth, deployment_id, 3, 120)
    url = ds.get_model_deployment(deployment_id).data.model_deployment_url + "/predict"

    def containers() -> list[Any]:
        return containers_by_instance(engine, server.url, auth, deployment_id)

    first = containers()
    assert len(first) == 3
    victim = first[0]
    log = DeliveryLog(engine, containers).start()
    # At least 20 s of load (100 requests/s at most), the kill about a third of the way in.
    plan = LoadPlan(requests=2000, concurrency=16, rate_per_s=100, kill_after=0.35)
    killed: list[float] = []

    def kill() -> None:
        victim.kill()  # SIGKILL, as `docker kill`
        killed.append(time.monotonic())

    started = time.monotonic()
    outcomes, _ = asyncio.run(run_load(url, plan, auth, kill))
    duration = time.monotonic() - started
    assert killed, "the kill did not happen"
    after_kill = [o for o in outcomes if o.started > killed[0]]

    recovered = wait_serving(server.url, auth, deployment_id, 3, 90)
    answering = asyncio.run(spread(url, auth, 90))
    receipts = log.receipts()
    report = classify(outcomes, receipts)
    report.duration_s = duration
    resent = server.log().count("sending it to another instance")  # the gateway's warning for each request it sent on
    print(f"\n{report.figures()}\n{report.details()}\nsent on to another instance by the gateway: {resent}; "
          f"after the run: {dict(answering)}")  # fmt: skip

    try:
        victim.reload()
        assert victim.status != "running", victim.status
    except docker.errors.NotFound:
        pass  # already replaced and removed
    assert report.sent == 2000
    assert report.lost == 0, report.details()
    assert report.answered_undelivered == 0, report.details()
    # A request reaches two instances only when the victim read it and died before answering.
    twice = {rid for rid, n in receipts.items() if n > 1}
    assert twice <= set(log.by_container().get(victim.id, {})), (twice, report.details())
    assert report.delivered_twice <= plan.concurrency, report.details()
    # The only failures allowed: the victim's requests in flight at the kill (and none of them lost).
    assert report.succeeded + report.failed_after_delivery + report.failed_before_delivery == 2000
    assert report.failed_after_delivery <= plan.concurrency, report.details()
    # The kill really happened mid-run: the victim served before it, the others went on after it.
    victim_host = victim.id[:12]
    assert report.served_by[victim_host] > 0, report.details()
    assert after_kill and all(o.instance != victim_host for o in after_kill if o.status == 200)
    assert sum(o.status == 200 for o in after_kill) >= len(after_kill) - plan.concurrency
    # ... and the deployment ends with all three serving, the replacement included.
    running = {c.id[:12] for c in containers()}
    assert len(recovered) == 3 and len(running) == 3 and victim_host not in running
    assert set(answering) == running, (dict(answering), running)


# --- 2. open sockets of a gateway process over 10,000 requests with failures mixed in ----------------


class NonsenseServer(RawServer):
    """Answers every connection with bytes that are not HTTP, then closes it."""

    def handle(self, conn: socket.socket) -> None:
        conn.settimeout(2)
        conn.recv(65536)
        conn.sendall(b"SSH-2.0-OpenSSH_9.2 this is not http\r\n\x00\xff\xfe garbage\r\n\r\n")


def process_tree(pid: int) -> list[int]:
    """`pid` and its descendants (`--role gateway` may run its workers as child processes)."""
    children: dict[int, list[int]] = collections.defaultdict(list)
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            children[int(stat.rsplit(")", 1)[1].split()[1])].append(int(entry))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, []))
    return tree


def fd_kinds(pid: int) -> collections.Counter[str]:
    """What the gateway's processes hold open: sockets, pipes, ... and files by path."""
    kinds: collections.Counter[str] = collections.Counter()
    for member in process_tree(pid):
        try:
            names = os.listdir(f"/proc/{member}/fd")
        except OSError:
            continue
        for fd in names:
            try:
                target = os.readlink(f"/proc/{member}/fd/{fd}")
            except OSError:
                continue  # closed while we looked
            kinds[target.split(":[", 1)[0] if ":[" in target else target] += 1
    return kinds


def open_fds(pid: int) -> tuple[int, int]:
    """(sockets, all file descriptors) open in the gateway's processes."""
    kinds = fd_kinds(pid)
    return kinds["socket"], sum(kinds.values())


def cpu_seconds(pid: int) -> float:
    total = 0.0
    for member in process_tree(pid):
        try:
            fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


@pytest.fixture(scope="module")
def gateway_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[subprocess.Popen[bytes], str, SqlMetadataStore, Path]]:
    """`dockyard serve --role gateway` over a store of its own, timeouts cut short by settings."""
    root = tmp_path_factory.mktemp("gateway-sockets")
    database = f"sqlite:///{root}/db.sqlite"
    store = SqlMetadataStore(database)
    port = free_port()
    log_path = root / "gateway.log"
    env = os.environ | {
        "DOCKYARD_DATABASE_URL": database,
        "DOCKYARD_INSECURE_NO_AUTH": "true",  # loopback only; signatures are not what this test measures
        "DOCKYARD_GATEWAY_REQUEST_TIMEOUT_S": "1",
        "DOCKYARD_GATEWAY_CONNECT_TIMEOUT_S": "1",
        "DOCKYARD_GATEWAY_MAX_BODY_BYTES": "4096",
        "DOCKYARD_GATEWAY_ROUTE_CACHE_TTL_S": "0.2",
        # The 429 limit is not what this test measures (test_gateway_balancing.py does): 20 client
        # connections plus requests whose callers hung up must never reach it, whichever of
        # the worker processes (each with its share of the limit) the kernel gives them to.
        "DOCKYARD_GATEWAY_INFLIGHT_PER_INSTANCE": "400",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "dockyard.cli.main", "serve", "--role", "gateway", "--port", str(port),
         "--data-dir", str(root / "data"), "--log-level", "warning"],
        stdout=log_path.open("ab"), stderr=subprocess.STDOUT, env=env,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90  # worker processes import everything: slow on a busy machine
        while True:
            assert process.poll() is None, f"the gateway exited with {process.returncode}:\n{log_path.read_text()}"
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, f"the gateway did not answer within 90 s:\n{log_path.read_text()}"
            time.sleep(0.1)
        yield process, url, store, log_path
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
        store.close()


class RawClient:
    """HTTP/1.1 over plain asyncio streams: a fraction of httpx's CPU per request, so that
    10,000 requests take seconds, not minutes, on a busy machine. Plain requests reuse
    keep-alive connections (at most `size`); every failure kind gets a connection of its own."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter, float]] = []
        self.opened: list[asyncio.StreamWriter] = []

    async def _connection(self, reuse: bool) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        while reuse and self.idle:
            reader, writer, since = self.idle.pop()
            if time.monotonic() - since < 2 and not reader.at_eof():  # well inside the server's 5 s keep-alive
                return reader, writer
            writer.close()
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        self.opened.append(writer)
        return reader, writer

    async def post(self, target: str, body: bytes = b'{"x": 1}', *, chunks: int = 0, reuse: bool = False,
                   send_only: int | None = None) -> str:  # fmt: skip
        """POST `body` (or `chunks` chunks of 1,000 bytes, chunked); the reply's status, or what
        happened instead. `send_only`: send that many bytes of the body, then hang up."""
        reader, writer = await self._connection(reuse)
        if chunks:
            head = f"POST {target} HTTP/1.1\r\nhost: gw\r\ntransfer-encoding: chunked\r\n\r\n".encode()
            payload = b"3e8\r\n" + b"z" * 1000 + b"\r\n"
            request = head + payload * chunks + b"0\r\n\r\n"
        else:
            head = f"POST {target} HTTP/1.1\r\nhost: gw\r\ncontent-length: {len(body)}\r\n\r\n".encode()
            request = head + (body if send_only is None else body[:send_only])
        keep = False
        try:
            writer.write(request)
            await writer.drain()
            if send_only is not None:
                return "hung up"
            reply = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
            status = reply.split(b" ", 2)[1].decode()
            length, keep = 0, reuse
            for line in reply.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.lower() == b"content-length":
                    length = int(value)
                elif name.lower() == b"connection" and b"close" in value.lower():
                    keep = False
            await asyncio.wait_for(reader.readexactly(length), 30)
            return status
        except asyncio.IncompleteReadError:
            keep = False
            return "cut"
        except (OSError, asyncio.TimeoutError) as exc:
            keep = False
            return type(exc).__name__
        finally:
            if keep:
                self.idle.append((reader, writer, time.monotonic()))
            else:
                writer.close()

    def close(self) -> None:
        for writer in self.opened:
            writer.close()
        self.idle.clear()
        self.opened.clear()


async def test_gateway_sockets_stay_steady_over_10000_requests_with_failures_mixed_in(
    gateway_process: tuple[subprocess.Popen[bytes], str, SqlMetadataStore, Path], upstreams: Upstreams
) -> None:
    process, base, store, log_path = gateway_process
    deployments = Deployments(store)
    nonsense = NonsenseServer()
    ok = deployments.add([s.port for s in upstreams.echo])
    slow = deployments.add([upstreams.slow.port])
    cut = deployments.add([upstreams.cut.port], variables={"MODEL_DEPLOY_PREDICT_ENDPOINT": "/length"})
    reset = deployments.add([upstreams.cut.port], variables={"MODEL_DEPLOY_PREDICT_ENDPOINT": "/reset"})
    garbage = deployments.add([upstreams.garbage.port])
    not_http = deployments.add([nonsense.port])
    refused = deployments.add([dead_port()])
    gateway_port = int(base.rsplit(":", 1)[1])

    Call = Callable[[RawClient], Coroutine[Any, Any, str]]

    def post(deployment: str, body: bytes = b'{"x": 1}', query: str = "", **options: Any) -> Call:
        return lambda c: c.post(f"/{deployment}/predict{query}", body, **options)

    # One round of 20: half of them fine, the rest every failure the gateway must survive.
    kinds: list[tuple[str, Call]] = [
        *[("ok", post(ok, reuse=True)) for _ in range(9)],
        ("ok", post(ok, b"y" * 3000, reuse=True)),
        ("unknown", post("ocid1.datasciencemodeldeployment.oc1.local.nothing")),
        ("too big", post(ok, b"y" * 5000)),
        ("too big chunked", post(ok, chunks=10)),
        ("cut mid-reply", post(cut)),
        ("closed unanswered", post(reset)),
        ("garbage body", post(garbage)),
        ("not http", post(not_http)),
        ("slow", post(slow, query="?s=1.5")),
        ("refused", post(refused)),
        ("caller hangs up", lambda c: c.post(f"/{slow}/predict?s=0.3", b"{}", send_only=2) if secrets.randbelow(2)
         else c.post(f"/{ok}/predict", b"x" * 1000, send_only=100)),  # fmt: skip
    ]
    outcomes: collections.Counter[str] = collections.Counter()

    async def run(client: RawClient, start: int, count: int, workers: int = 20) -> None:
        numbers = iter(range(start, start + count))

        async def worker() -> None:
            for n in numbers:
                kind, call = kinds[n % len(kinds)]
                outcomes[f"{kind}: {await call(client)}"] += 1

        await asyncio.gather(*(worker() for _ in range(workers)))

    async def settle() -> collections.Counter[str]:
        """Idle upstream connections past their keep-alive expiry (4 s) closed. A worker sweeps
        them when a request comes, so 20 requests on connections of their own (the kernel
        spreads new connections over the workers) reach every worker."""
        await asyncio.sleep(5)
        for _ in range(20):
            async with httpx.AsyncClient(timeout=10) as single:
                assert (await single.post(f"{base}/{ok}/predict", content=b"{}")).status_code == 200
        await asyncio.sleep(1)
        return fd_kinds(process.pid)

    samples: list[int] = []
    try:
        warm = RawClient(gateway_port)
        await run(warm, 0, 1000)  # upstream pools filled, the gateway's threads started
        warm.close()
        held_before = await settle()
        outcomes.clear()
        started, gateway_cpu, own_cpu = time.monotonic(), cpu_seconds(process.pid), time.process_time()
        main = RawClient(gateway_port)
        for start in range(0, 10_000, 1000):
            await run(main, start, 1000)
            samples.append(open_fds(process.pid)[0])
        main.close()
        elapsed = time.monotonic() - started
        gateway_cpu, own_cpu = cpu_seconds(process.pid) - gateway_cpu, time.process_time() - own_cpu
        held_after = await settle()
    finally:
        nonsense.stop()
    sockets_before, fds_before = held_before["socket"], sum(held_before.values())
    sockets_after, fds_after = held_after["socket"], sum(held_after.values())
    grown = {k: held_after[k] - held_before[k] for k in held_after | held_before if held_after[k] != held_before[k]}
    print(f"\n10000 requests in {elapsed:.1f} s (CPU: gateway {gateway_cpu:.1f} s, test process {own_cpu:.1f} s); gateway sockets {sockets_before} -> {samples} -> {sockets_after} "
          f"(fds {fds_before} -> {fds_after}, changed: {grown}); {dict(sorted(outcomes.items()))}")  # fmt: skip

    assert process.poll() is None, log_path.read_text()[-3000:]
    rounds = 10_000 // len(kinds)

    def each(kind: str, status: str, late: int = 0) -> None:
        """Every request of `kind` got `status`; or, at most `late` of them, the gateway's 504
        (a machine busy enough to keep a container's reply past the 1 s limit)."""
        timed_out = outcomes[f"{kind}: 504"] if status != "504" else 0
        assert outcomes[f"{kind}: {status}"] + timed_out == rounds and timed_out <= late, (kind, outcomes)

    assert outcomes["ok: 200"] + outcomes["ok: 504"] == 10 * rounds and outcomes["ok: 504"] <= 50, outcomes
    each("unknown", "404")
    each("refused", "503")
    each("too big", "413")
    each("too big chunked", "413")
    each("slow", "504")
    each("garbage body", "207", late=10)  # passed through as the container sent it
    each("not http", "502", late=10)
    each("closed unanswered", "502", late=10)
    each("cut mid-reply", "cut", late=10)  # the reply breaks off after its headers
    assert outcomes["caller hangs up: hung up"] == rounds
    # Steady: while it runs, no more than the client's 20 connections and the upstream pools'
    # keep-alive connections (at most 20 in use at once per instance, 6 upstreams) on top of
    # the settled count; afterwards back to it (a leak of one socket in 1,000 requests shows).
    assert max(samples) - sockets_before <= 20 + 6 * 20, samples
    assert sockets_after - sockets_before <= 3, (sockets_before, sockets_after, grown)
    # Other descriptors: only the store's connections (database and WAL file each) may be more,
    # as route reads reach more threads, within the store's pool (16 per process); nothing else.
    database = {k: n for k, n in grown.items() if "db.sqlite" in k}
    assert sum(database.values()) <= len(process_tree(process.pid)) * 16 * 2, grown
    assert sum(n for k, n in grown.items() if k != "socket" and k not in database) == 0, grown

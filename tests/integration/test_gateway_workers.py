"""`dockyard serve --role gateway --gateway-workers 2`: two real gateway processes on one port.

Checks what users rely on: every request is answered, both workers take connections (the
kernel spreads them, SO_REUSEPORT), /metrics counts the requests of all workers, and a worker
that dies is replaced while the other keeps serving.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from dockyard.store.metadata import SqlMetadataStore
from tests.integration.test_gateway_harness import Deployments, Upstreams, dead_port, upstreams  # noqa: F401 (fixtures)
from tests.support.server import stop_process

SRC = Path(__file__).resolve().parents[2] / "src"


def children_of(pid: int) -> list[int]:
    """The worker processes of supervisor `pid` (not multiprocessing's resource tracker)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(stat[1]) == pid and stat[0] != "Z" and b"spawn_main" in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
    return found


def wait_until(condition: object, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return
        time.sleep(0.1)
    raise AssertionError(f"{what} did not happen within {timeout_s} s")


def answers(url: str, method: str = "GET") -> bool:
    try:
        return httpx.request(method, url, content=b"{}" if method == "POST" else None, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@contextlib.contextmanager
def started_gateway(tmp_path: Path, upstreams: Upstreams, workers: int = 2) -> Iterator[tuple[str, str, subprocess.Popen[bytes]]]:  # noqa: F811
    """`dockyard serve --role gateway --gateway-workers N` in front of one echo upstream, started
    (not yet answering): (its base URL, the deployment id, the supervisor process)."""
    store = SqlMetadataStore(f"sqlite:///{tmp_path / 'dockyard.db'}")
    deployment_id = Deployments(store).add([upstreams.echo[0].port])
    store.close()
    port = dead_port()
    env = os.environ | {"PYTHONPATH": str(SRC), "DOCKYARD_PUBLIC_METRICS": "true"}
    log = (tmp_path / "gateway.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "dockyard.cli.main", "serve", "--role", "gateway", "--host", "127.0.0.1", "--port", str(port),
         "--data-dir", str(tmp_path), "--gateway-workers", str(workers), "--insecure-no-auth", "--log-level", "warning"],
        env=env, stdout=log, stderr=log, start_new_session=True,
    )  # fmt: skip
    try:
        yield f"http://127.0.0.1:{port}", deployment_id, process
    finally:
        stop_process(process)
        log.close()
        print((tmp_path / "gateway.log").read_text()[-3000:])


@pytest.fixture
def gateway_workers(tmp_path: Path, upstreams: Upstreams) -> Iterator[tuple[str, str, subprocess.Popen[bytes]]]:  # noqa: F811
    with started_gateway(tmp_path, upstreams) as (base, deployment_id, process):
        wait_until(lambda: answers(base + "/health"), 60, "the gateway answering /health")
        wait_until(lambda: len(children_of(process.pid)) >= 2, 30, "two workers running")
        yield base, deployment_id, process


def requests_counted(base: str, deployment_id: str) -> float:
    text = httpx.get(base + "/metrics", timeout=10).text
    pattern = rf'^dockyard_gateway_requests_total\{{deployment="{re.escape(deployment_id)}",status="200"\}} ([\d.e+]+)$'
    return sum(float(v) for v in re.findall(pattern, text, re.M))


def workers_with_connections(pids: list[int], port: int) -> set[int]:
    """Workers holding an established connection accepted on `port` (from /proc/<pid>/fd + /proc/net/tcp)."""
    established = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[3] == "01" and int(fields[1].split(":")[1], 16) == port:
            established.add(fields[9])  # inode
    serving = set()
    for pid in pids:
        try:
            links = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
        except OSError:
            continue
        if any(link.startswith("socket:[") and link[8:-1] in established for link in links):
            serving.add(pid)
    return serving


def test_two_workers_share_the_port_and_the_metrics(gateway_workers: tuple[str, str, subprocess.Popen[bytes]]) -> None:
    base, deployment_id, process = gateway_workers
    port = int(base.rsplit(":", 1)[1])
    clients = [httpx.Client(base_url=base, timeout=30) for _ in range(16)]
    try:
        for client in clients:  # one keep-alive connection each, held open
            reply = client.post(f"/{deployment_id}/predict", json={"n": 1})
            assert reply.status_code == 200, reply.text
            assert reply.json()["server"] == "A" and reply.headers["opc-request-id"]
        workers = children_of(process.pid)
        assert len(workers) == 2
        # 16 connections hashed over 2 listening sockets: both get some (all on one: 2 * 0.5**16).
        assert workers_with_connections(workers, port) == set(workers)
        for client in clients:
            for _ in range(4):
                assert client.post(f"/{deployment_id}/predict", content=b"{}").status_code == 200
    finally:
        for client in clients:
            client.close()
    # Every worker's requests, whichever worker answers /metrics: the other worker's figures reach
    # the shared files within its flush interval (1 s), never more than were made.
    deadline = time.monotonic() + 5
    counted = requests_counted(base, deployment_id)
    while counted < 16 * 5 and time.monotonic() < deadline:
        time.sleep(0.2)
        counted = requests_counted(base, deployment_id)
    assert counted == 16 * 5


def test_connections_opened_as_soon_as_the_gateway_answers_reach_both_workers(tmp_path: Path, upstreams: Upstreams) -> None:  # noqa: F811
    """The first workers listen together: clients that connect the moment the port answers (a
    load balancer's pool, a benchmark) are spread over both, not all held by the first to start.
    Each worker starts in ~1 s; apart, the second listened 0.1 to 0.2 s after the first."""
    with started_gateway(tmp_path, upstreams) as (base, deployment_id, process):
        port = int(base.rsplit(":", 1)[1])
        deadline = time.monotonic() + 60
        while True:  # the moment a worker listens (a connection is taken), closed again at once
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline and process.poll() is None, "the gateway never listened"
                time.sleep(0.005)
        time.sleep(0.01)
        sockets = [socket.create_connection(("127.0.0.1", port), timeout=30) for _ in range(16)]  # at once, held open
        try:
            request = b"POST /%s/predict HTTP/1.1\r\nHost: gw\r\nContent-Length: 2\r\n\r\n{}" % deployment_id.encode()
            for sock in sockets:
                sock.sendall(request)
            for sock in sockets:
                assert sock.recv(65536).startswith(b"HTTP/1.1 200 ")
            workers = children_of(process.pid)
            assert len(workers) == 2
            # 16 connections over 2 listening sockets: both get some (all on one: 2 * 0.5**16).
            assert workers_with_connections(workers, port) == set(workers)
        finally:
            for sock in sockets:
                sock.close()


def test_a_worker_that_dies_is_replaced(gateway_workers: tuple[str, str, subprocess.Popen[bytes]]) -> None:
    base, deployment_id, process = gateway_workers
    first, second = children_of(process.pid)
    os.kill(first, signal.SIGKILL)
    # Connections that race the kill may be refused (SO_REUSEPORT: the kernel had picked the
    # dying worker's socket); the gateway must answer again within seconds, and then every time.
    wait_until(lambda: answers(f"{base}/{deployment_id}/predict", method="POST"), 10, "the survivor answering")
    for _ in range(10):  # new connections each time: the survivor takes them meanwhile
        assert httpx.post(f"{base}/{deployment_id}/predict", content=b"{}", timeout=30).status_code == 200
    wait_until(lambda: len(children_of(process.pid)) == 2 and first not in children_of(process.pid), 30, "a new worker")
    assert second in children_of(process.pid)
    wait_until(lambda: answers(base + "/health"), 30, "the gateway answering")


def stored_request_ids(data_dir: Path, deployment_id: str) -> list[str]:
    from dockyard.store.logs import LogStore

    store = SqlMetadataStore(f"sqlite:///{data_dir / 'dockyard.db'}")
    try:
        page = LogStore(store.engine, store.writer).read(deployment_id, "access", limit=1000)
        return [entry.fields["request_id"] for entry in page.entries]
    finally:
        store.close()


def test_every_workers_access_entries_are_stored_by_the_supervisor(
    tmp_path: Path, gateway_workers: tuple[str, str, subprocess.Popen[bytes]]
) -> None:
    base, deployment_id, process = gateway_workers
    clients = [httpx.Client(base_url=base, timeout=30) for _ in range(16)]
    try:
        first = [c.post(f"/{deployment_id}/predict", content=b"{}").headers["opc-request-id"] for c in clients for _ in range(3)]
        # Stored while serving (the workers send every flush interval), whichever worker answered:
        # 16 connections over 2 workers (all on one: 2 * 0.5**16), as in the test above.
        wait_until(lambda: set(first) <= set(stored_request_ids(tmp_path, deployment_id)), 10, "all 48 entries stored")
        assert workers_with_connections(children_of(process.pid), int(base.rsplit(":", 1)[1])) == set(children_of(process.pid))
        last = [c.post(f"/{deployment_id}/predict", content=b"{}").headers["opc-request-id"] for c in clients]
    finally:
        for client in clients:
            client.close()
    # Stopped right after: entries still queued in the workers are sent at their shutdown and
    # stored before the supervisor exits.
    process.send_signal(signal.SIGTERM)
    assert process.wait(30) == 0
    stored = stored_request_ids(tmp_path, deployment_id)
    assert sorted(stored) == sorted(first + last)  # each once


def test_one_worker_has_a_supervisor_too(tmp_path: Path, upstreams: Upstreams) -> None:  # noqa: F811
    """One worker (the default on two cores) is served as several are: the supervisor stores its
    access entries (the worker's GIL never waits on the database) and replaces it when it dies."""
    with started_gateway(tmp_path, upstreams, workers=1) as (base, deployment_id, process):
        wait_until(lambda: answers(base + "/health"), 60, "the gateway answering /health")
        (worker,) = children_of(process.pid)
        sent = [httpx.post(f"{base}/{deployment_id}/predict", content=b"{}", timeout=30).headers["opc-request-id"] for _ in range(5)]
        wait_until(lambda: set(sent) <= set(stored_request_ids(tmp_path, deployment_id)), 10, "the 5 entries stored")
        os.kill(worker, signal.SIGKILL)
        wait_until(lambda: answers(f"{base}/{deployment_id}/predict", method="POST"), 30, "a new worker answering")
        assert worker not in children_of(process.pid)
        after = httpx.post(f"{base}/{deployment_id}/predict", content=b"{}", timeout=30).headers["opc-request-id"]
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
        assert after in stored_request_ids(tmp_path, deployment_id)  # sent at the new worker's shutdown, stored before the supervisor exits


def test_workers_stop_when_their_supervisor_is_killed(gateway_workers: tuple[str, str, subprocess.Popen[bytes]]) -> None:
    base, deployment_id, process = gateway_workers
    workers = children_of(process.pid)
    assert len(workers) == 2
    os.kill(process.pid, signal.SIGKILL)
    process.wait(10)

    def gone(pid: int) -> bool:
        try:
            return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
        except OSError:
            return True

    # Each worker is sent SIGTERM by the kernel and stops; nothing answers on the port after.
    wait_until(lambda: all(gone(pid) for pid in workers), 20, "both workers stopping")
    with pytest.raises(httpx.ConnectError):
        httpx.get(base + "/health", timeout=2)

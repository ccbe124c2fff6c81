"""`dockyard serve --role gateway [--gateway-workers N]`: a supervisor and N gateway processes on one port.

One Python process proxies a few thousand small requests per second on one core; the data
plane scales over cores with processes. Each worker binds the same host:port with
SO_REUSEPORT (the kernel spreads new connections over them evenly, where a shared accept
socket lets whichever worker wakes first take most of them), reads its routes from the shared
store, and serves the gateway app (`gateway_app`).

The supervisor stores the workers' access-log entries: each worker sends its entries in
batches over a pipe (gateway/access_relay.py), so no worker spends its CPU and GIL on the
database. That is why there is a supervisor even for one worker: storing them in the serving
process, in a flusher thread, held its GIL while requests waited (gateway_overhead.py's load on
two cores, one worker, 64 connections: 15.7k and 17.7k requests per second in two rounds, against
19.4k and 18.7k with the supervisor; the CPU per request is the same, the serving process's part shorter).

With several workers:
- the in-flight limit per instance is split between the workers (rounded up), so a
  deployment's instances still see at most about the configured number of requests;
- `/metrics` aggregates all workers (prometheus_client's multiprocess mode, in a directory
  of this supervisor's own that is removed at exit).

The supervisor restarts a worker that dies, and stops them all on SIGINT/SIGTERM. A worker
whose supervisor is killed outright stops too (it is sent SIGTERM by the kernel), instead of
serving on alone with nobody to store its access log or to stop it.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import math
import multiprocessing
import os
import shutil
import signal
import socket
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

log = logging.getLogger("dockyard")

METRICS_DIR_VAR = "PROMETHEUS_MULTIPROC_DIR"
# With SO_REUSEPORT each worker has an accept queue of its own; when a worker dies, Linux resets
# the connections still waiting in its queue unless this is 1 (Linux 5.14+), which hands them
# to another worker of the group instead.
MIGRATE_REQUESTS = Path("/proc/sys/net/ipv4/tcp_migrate_req")
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
TOGETHER_TIMEOUT_S = 60.0  # how long the first workers wait for each other before listening


def default_workers() -> int:
    """One per two cores (at least one): a worker is a single-threaded event loop, and the
    gateway shares its machine with the model instances it serves, which need the other cores.

    Measured on 2 cores (benchmarks/gateway_overhead.py --workers 1 2): one worker relays as
    many requests per second as two, at a third of their p99 latency, since two workers and the
    instance behind them compete for the same two cores. A machine that only runs gateways
    can give `--gateway-workers` one per core."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // 2)


def reuseport_socket(host: str, port: int) -> socket.socket:
    """A socket bound to host:port that other processes of this user may bind too."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock


def gateway_app(settings: Any, workers: int, access: Any = None) -> Any:
    """The `--role gateway` app of one worker (its limit share applied), with /metrics; its
    access entries go to `access` (see `create_gateway_app`)."""
    from dockyard.auth.access_store import home_tenancy_reader
    from dockyard.auth.admin_only import HomeAdministratorsOnly
    from dockyard.gateway import gateway_metrics_app
    from dockyard.gateway.compose import WithMetrics
    from dockyard.server import create_gateway_app, signed

    share = math.ceil(settings.gateway_inflight_per_instance / workers)
    settings = settings.model_copy(update={"gateway_inflight_per_instance": share})
    gateway = create_gateway_app(settings, access)
    inner = getattr(gateway, "app", gateway)  # behind the signature check: the Gateway itself
    metrics = gateway_metrics_app(inner)
    if not settings.public_metrics:
        verifier = getattr(gateway, "verify", None)
        if verifier is not None:  # they name every tenancy's deployments: the home administrators' only
            metrics = signed(HomeAdministratorsOnly(metrics, home_tenancy_reader(settings.resolved_database_url)), verifier, settings, max_body_bytes=0)

    return WithMetrics(gateway, metrics)


def _worker(overrides: dict[str, Any], workers: int, log_level: str, access_pipe: Any, supervisor: int, together: Any = None) -> None:
    from dockyard.gateway.access_relay import AccessRelay
    from dockyard.gateway.httpserve import serve
    from dockyard.settings import Settings

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    stop_with_parent(supervisor)
    settings = Settings(**overrides)
    settings.apply_access_log_lines()
    sock = reuseport_socket(settings.host, settings.port)
    relay = AccessRelay(access_pipe, queue_max=settings.log_queue_max_entries)  # sends every 20 ms; the supervisor's store batches
    app = gateway_app(settings, workers, relay)
    # SIGTERM from the supervisor: stop accepting, finish requests in progress (within the
    # supervisor's 15 s wait), then the app's lifespan shutdown sends the queued access entries.
    # The first workers wait for each other after their app's startup, right before listening.
    serve(app, host=settings.host, port=settings.port, sock=sock, backlog=4096,
          before_listening=None if together is None else (lambda: listen_together(together)), **settings.http_server_options())  # fmt: skip
    relay.close()


def listen_together(together: Any, timeout_s: float = TOGETHER_TIMEOUT_S) -> None:
    """Wait, with the app started, until every first worker is ready to listen: the kernel hashes
    a new connection over the sockets listening at that moment, so the first worker to listen
    alone would get every connection opened meanwhile, and keep-alive clients would stay on it.
    A worker that does not come within `timeout_s` is not waited for."""
    try:
        together.wait(timeout_s)
    except threading.BrokenBarrierError:
        log.warning("not every gateway worker was ready within %g s; listening without them", timeout_s)


def serve_workers(overrides: dict[str, Any], workers: int, log_level: str) -> None:
    """Run `workers` gateway processes on settings' host:port until SIGINT/SIGTERM."""
    from dockyard.settings import Settings

    settings = Settings(**overrides)
    # Bound (not listening) here first: a port in use fails now, with one clear message.
    guard = reuseport_socket(settings.host, settings.port)
    enable_request_migration()
    metrics_dir = Path(tempfile.mkdtemp(prefix="dockyard-gateway-metrics-"))
    os.environ[METRICS_DIR_VAR] = str(metrics_dir)  # the spawned workers inherit it
    context = multiprocessing.get_context("spawn")
    stopping = False
    logs, access = _access_store(settings)

    together = context.Barrier(workers)  # the first workers listen at once (`listen_together`); a replacement does not wait

    def start(first: bool = False) -> multiprocessing.process.BaseProcess:
        pipe = access.new_pipe()
        process = context.Process(target=_worker, args=(overrides, workers, log_level, pipe, os.getpid(), together if first else None),
                                  daemon=False)  # fmt: skip
        process.start()
        pipe.close()  # the worker has its own copy: the pipe ends when the worker does
        return process

    def stop(*_: Any) -> None:
        nonlocal stopping
        stopping = True

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    processes = [start(first=True) for _ in range(workers)]
    try:
        while not stopping:
            time.sleep(0.2)
            for index, process in enumerate(processes):
                if not process.is_alive() and not stopping:
                    log.warning("gateway worker %s exited with %s; starting another", process.pid, process.exitcode)
                    together.abort()  # any first worker still waiting for it listens now
                    _mark_dead(process.pid)
                    processes[index] = start()
    finally:
        together.abort()  # a worker still waiting to listen goes on, sees its SIGTERM and stops
        for process in processes:
            if process.is_alive():
                os.kill(process.pid, signal.SIGTERM)  # type: ignore[arg-type]
        for process in processes:
            process.join(15)
            if process.is_alive():
                process.kill()
        access.close()  # every worker has exited: what they sent is read to the end
        logs.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        guard.close()
        os.environ.pop(METRICS_DIR_VAR, None)
        shutil.rmtree(metrics_dir, ignore_errors=True)


def stop_with_parent(parent: int) -> bool:
    """Have the kernel send this process SIGTERM when its parent (`parent`) ends (Linux's
    PR_SET_PDEATHSIG); True when it is set. A parent already gone: SIGTERM now."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG)")
    except (OSError, AttributeError) as exc:
        log.warning("this gateway worker cannot ask to be stopped with its supervisor (%s); if the supervisor is "
                    "killed, stop the worker (pid %d) yourself", exc, os.getpid())  # fmt: skip
        return False
    if os.getppid() != parent:  # it ended before the request above was made
        os.kill(os.getpid(), signal.SIGTERM)
    return True


def _access_store(settings: Any) -> tuple[Any, Any]:
    """The log store the workers' access entries are written to, and the reader feeding it."""
    from dockyard.gateway.access_relay import RelayReader
    from dockyard.store.logs import open_log_store
    from dockyard.store.metadata import SqlMetadataStore

    logs = open_log_store(SqlMetadataStore(settings.resolved_database_url), settings)
    return logs, RelayReader(logs.add_access_block)


def enable_request_migration(path: Path = MIGRATE_REQUESTS) -> bool:
    """Turns net.ipv4.tcp_migrate_req on (this network namespace) when it is off and may be
    written, and says so; otherwise warns what a dying worker costs. True when it is on."""
    try:
        if path.read_text().strip() == "1":
            return True
        path.write_text("1\n")
    except OSError:
        log.warning("net.ipv4.tcp_migrate_req is not on and cannot be set here: connections queued for a gateway "
                    "worker that dies are reset (set it with `sysctl -w net.ipv4.tcp_migrate_req=1`)")  # fmt: skip
        return False
    log.info("set net.ipv4.tcp_migrate_req=1: connections queued for a gateway worker that dies go to another worker")
    return True


def _mark_dead(pid: int | None) -> None:
    if pid is None:
        return
    with contextlib.suppress(Exception):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)

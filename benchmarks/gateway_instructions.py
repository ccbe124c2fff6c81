"""Instructions a gateway worker spends per request, counted by Valgrind (callgrind): a figure
that does not move with the machine's load, for comparing changes to the request path.

    python benchmarks/gateway_instructions.py [--requests 1000] [--warmup 300] [--targets server,unsigned,signed,sdk,anew]
                                              [--keep-dumps DIR]

One gateway worker as `dockyard serve --role gateway --gateway-workers N` runs each of its
workers (dockyard's HTTP server, the signature middleware, the gateway; access entries to the
worker's relay, whose pipe `cat` drains in the supervisor's place) runs under callgrind, in
front of the fast upstream of gateway_overhead.py, loaded by wrk over 16 connections with the
same small JSON body. Counting starts after `--warmup` requests and stops after `--requests`
more (callgrind collects nothing before: `--collect-atstart=no`, then its collection toggled on
and off). It covers every thread of the worker, in user space: the kernel's share of the socket
calls is not counted, nor the upstream's or wrk's work. Targets:

- `server`:   the HTTP server with an app that answers at once (what any request costs before
              the gateway does anything);
- `unsigned`: the gateway, requests without a signature (`--insecure-no-auth`);
- `signed`:   the gateway, every request signed as the OCI SDK signs it;
- `sdk`:      the same, with every header the SDK's ModelDeploymentClient sends (user-agent,
              client info, request id: a 1.3 KB request, about 0.5 KB more than `signed`). wrk
              sends the same request each time, where the SDK would send a new request id;
- `anew`:     signed, every request of its own body and signature (gateway_overhead.anew_requests:
              5,000 in turn, none recognised), so each is checked in full, RSA included: what SDK
              clients sending predictions of their own cost.

Under Valgrind a request takes ~50 times longer, so work done per unit of time (cache expiry,
timers) would weigh ~50 times more per request than in a real run: the route, key and
authorization caches are given an hour here, the relay sends every second, not every 20 ms, and
the metrics go to Prometheus every 50 s, not every second. The relay also sends what it holds just
before counting starts and just before it stops, so the entries sent while counting are those of
the counted requests. (Before, the figures moved by up to 1.5k instructions from one run to the
next, with where the relay's second fell.)
(Before the relay was counted, entries went to a sink that only counted them: figures from then
are 6k to 7k lower for the same code. Until counting was collection toggled on, it started by
zeroing the counts, which zeroed the loop's thread only: the counted figures included what the
other threads had done before, the first route read and, signed, the key lookup, once. For the
same code, figures from then are about 7k higher unsigned and 18k higher signed.)

Needs valgrind, gcc (for the five-line library that starts and stops the counting) and wrk:
`apt-get install -y valgrind gcc wrk`.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gateway_overhead as load  # noqa: E402  (the upstream, the store, the signed headers)

CONTROL_C = """#include <valgrind/callgrind.h>
void counting_start(void) { CALLGRIND_TOGGLE_COLLECT; }
void counting_stop(void) { CALLGRIND_TOGGLE_COLLECT; CALLGRIND_DUMP_STATS_AT("measured"); }
"""
TARGETS = ("server", "unsigned", "signed", "sdk", "anew")
HOUR_S = 3600.0


# --- the worker (runs under valgrind as `gateway_instructions.py --role worker ...`) ---------------


class Counting:
    """Counts requests served; starts callgrind's counting after `warmup` and stops it (and
    resolves `done`) `requests` later. `flush` (the relay's) runs just before each: the
    access entries sent while counting are then those of the counted requests, not, as the
    relay's timer falls, up to a second's more or fewer (about 1.5k instructions a request
    either way)."""

    def __init__(self, warmup: int, requests: int, control: Any, done: asyncio.Future[None], flush: Any = None) -> None:
        self.warmup = warmup
        self.requests = requests
        self.control = control
        self.done = done
        self.flush = flush
        self.served = 0

    def tick(self) -> None:
        self.served += 1
        if self.served == self.warmup:
            if self.flush is not None:
                self.flush()
            self.control.counting_start()
        elif self.served == self.warmup + self.requests and not self.done.done():
            if self.flush is not None:
                self.flush()
            self.control.counting_stop()
            self.done.set_result(None)


class CountingSink:
    """The access log's place: hands each entry to a worker's relay (access_relay.py), as a
    `--role gateway` worker does, and counts the request (every request has an entry, however
    the gateway served it). The relay's pipe is drained by `cat`, in the supervisor's place."""

    def __init__(self, relay: Any) -> None:
        self.counting: Counting | None = None
        self.relay = relay

    def add_access(self, entry: Any) -> None:
        self.relay.add_access(entry)
        if self.counting is not None:
            self.counting.tick()

    def flush(self) -> int:
        return int(self.relay.flush())


def worker_app(target: str, data_dir: Path, port: int, upstream_port: int, sink: CountingSink) -> tuple[Any, Path]:
    """The app as a gateway worker builds it, its caches made to last (see the module docstring)."""
    config = load.write_store(data_dir, upstream_port, port)
    if target == "server":
        return load.upstream_app, config  # answers at once, as the upstream does
    from dockyard.server import create_gateway_app
    from dockyard.settings import Settings

    settings = Settings(data_dir=data_dir, port=port, insecure_no_auth=target == "unsigned",
                        gateway_inflight_per_instance=100_000, gateway_route_cache_ttl_s=HOUR_S)  # fmt: skip
    app = create_gateway_app(settings, access=sink)
    app.verify.cache_ttl_s = HOUR_S  # the signature middleware's key cache
    app.app.authorize.ttl_s = HOUR_S  # the gateway's authorization decisions
    app.app.metrics.flush_interval_s = 50.0  # a second of a real run (see the module docstring on time)
    return app, config


async def serve_counted(args: argparse.Namespace) -> None:
    from dockyard.gateway.httpserver import HttpServer
    from dockyard.heap import freeze_startup_objects

    control = ctypes.CDLL(args.library)
    work = Path(tempfile.mkdtemp(prefix="dockyard-instr-"))
    (work / "data").mkdir()
    port = load.free_port()
    from multiprocessing import Pipe

    from dockyard.gateway.access_relay import AccessRelay

    reader, writer = Pipe(duplex=False)
    drain = subprocess.Popen(["cat"], stdin=reader.fileno(), stdout=subprocess.DEVNULL)  # reads and drops what the relay sends
    reader.close()
    # Sent every second rather than every 20 ms: under Valgrind that is a batch of about the size a
    # real worker sends (see the module docstring on time).
    sink = CountingSink(AccessRelay(writer, flush_interval_s=1.0))
    app, config = worker_app(args.target, work / "data", port, args.upstream_port, sink)
    done = asyncio.get_running_loop().create_future()
    counting = Counting(args.warmup, args.requests, control, done, None if args.target == "server" else sink.flush)

    async def counted(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await app(scope, receive, send)
        if scope["type"] == "http":
            counting.tick()

    if args.target == "server":
        served = counted  # the server alone: counted as the app returns
    else:
        sink.counting = counting
        served = app  # the gateway's own app: the server finds its `direct` (gateway/direct.py)
    server = HttpServer(served)
    await server.start(host="127.0.0.1", port=port)
    freeze_startup_objects()  # as `dockyard serve` does before serving
    url = f"http://127.0.0.1:{port}/{load.DEPLOYMENT_ID}/predict"
    headers = {"signed": load.signed_headers, "sdk": load.sdk_headers}.get(args.target)
    requests = load.anew_requests(config, url) if args.target == "anew" else None
    script = load.lua_script(work, headers(config, url) if headers else {}, requests=requests, threads=1)
    # wrk's own timeout (2 s) is lifted: under Valgrind a request checked in full (`anew`) can take
    # longer than that, and wrk would give it up as a timeout.
    wrk = subprocess.Popen(["wrk", "-t1", "-c16", "-d3600s", "--timeout", "600s", "-s", str(script), url], stdout=subprocess.DEVNULL)
    try:
        await done
    finally:
        wrk.kill()
        wrk.wait()
        drain.kill()
    shutil.rmtree(work, ignore_errors=True)
    os._exit(0)  # the counted part is written; nothing else to wait for


# --- the driver ------------------------------------------------------------------------------------


def counted_instructions(dump_dir: Path) -> int:
    """Instructions of the counted part: the dump that `counting_stop` wrote."""
    for path in dump_dir.iterdir():
        text = path.read_text(errors="replace")
        if "Trigger: Client Request: measured" in text:
            found = re.search(r"^(?:summary|totals): (\d+)", text, re.MULTILINE)
            if found:
                return int(found.group(1))
    raise RuntimeError(f"no counted dump in {dump_dir}: see the worker's output there")


def measure(target: str, args: argparse.Namespace, library: Path, upstream_port: int, work: Path) -> float:
    dump_dir = work / target
    dump_dir.mkdir()
    command = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={dump_dir}/callgrind.%p", "--dump-instr=no",
               "--collect-atstart=no",
               sys.executable, __file__, "--role", "worker", "--target", target, "--library", str(library),
               "--upstream-port", str(upstream_port), "--warmup", str(args.warmup), "--requests", str(args.requests)]  # fmt: skip
    env = load.child_env() | {"PYTHONHASHSEED": "0"}
    with (work / f"{target}.log").open("wb") as out:
        subprocess.run(command, env=env, stdout=out, stderr=out, timeout=3600, check=False)
    if args.keep_dumps:  # for `callgrind_annotate --inclusive=yes DIR/TARGET/callgrind.*`
        shutil.copytree(dump_dir, Path(args.keep_dumps) / target, dirs_exist_ok=True)
    return counted_instructions(dump_dir) / args.requests


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument("--targets", default=",".join(TARGETS))
    parser.add_argument("--keep-dumps", metavar="DIR", help="copy the callgrind dumps there, one folder per target")
    parser.add_argument("--role", default="driver", choices=("driver", "worker"))
    parser.add_argument("--target", choices=TARGETS)
    parser.add_argument("--library")
    parser.add_argument("--upstream-port", type=int)
    args = parser.parse_args()
    if args.role == "worker":
        from dockyard.gateway.httpserve import new_event_loop

        with asyncio.Runner(loop_factory=new_event_loop) as runner:
            runner.run(serve_counted(args))
        return
    sys.path.insert(0, str(load.SRC))
    missing = [tool for tool in ("valgrind", "gcc", "wrk") if shutil.which(tool) is None]
    if missing or not Path("/usr/include/valgrind/callgrind.h").exists():
        sys.exit(f"needs valgrind, gcc and wrk (missing: {', '.join(missing) or 'valgrind headers'}): "
                 "apt-get install -y valgrind gcc wrk")  # fmt: skip
    targets = [t for t in args.targets.split(",") if t]
    unknown = set(targets) - set(TARGETS)
    if unknown:
        sys.exit(f"unknown target(s) {', '.join(sorted(unknown))}; choose from {', '.join(TARGETS)}")
    with tempfile.TemporaryDirectory(prefix="dockyard-instr-") as tmp:
        work = Path(tmp)
        (work / "control.c").write_text(CONTROL_C)
        library = work / "libcounting.so"
        subprocess.run(["gcc", "-O2", "-shared", "-fPIC", "-o", str(library), str(work / "control.c")], check=True)
        upstream_port = load.free_port()
        upstream = load.start_upstream(upstream_port)
        try:
            load.wait_for(upstream_port)
            print(f"callgrind, {args.requests} requests after {args.warmup} warm-up ones, wrk over 16 connections, "
                  f"{len(load.BODY)}-byte JSON bodies; instructions per request in the worker process (user space)")  # fmt: skip
            build = load.gateway_build()
            print(f"gateway: {build}" + (" (DOCKYARD_COMPILED=0 counts it interpreted)" if build.startswith("compiled") else ""), flush=True)
            for target in targets:
                print(f"{target:<10} {measure(target, args, library, upstream_port, work):>10,.0f}", flush=True)
        finally:
            load.stop(upstream)


if __name__ == "__main__":
    main()

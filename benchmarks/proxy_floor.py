"""How fast a Python proxy can be on this machine: a floor for the gateway's request path.

    python benchmarks/proxy_floor.py [--duration 8] [--rounds 2] [--workers 2] [--connections 64]

Three proxies in front of gateway_overhead.py's fast upstream, under the same wrk load, one
after the other, every round:

- `floor`:   the least a proxy written in Python with the gateway's own parts (uvloop, httptools)
             does per request that still keeps the gateway's promises on the commonest request:
             the route and in-flight limit checked, a request id made, hop-by-hop headers dropped
             both ways and forwarding headers added, the heads checked for CR/LF, keep-alive
             upstream connections from a pool, an access entry and metrics values recorded. No
             timeouts, no errors handled, nothing stored: an upper bound on what any redesign of
             the gateway's request path could reach, not a server to use;
- `gateway`: `dockyard serve --role gateway --insecure-no-auth` (as gateway_overhead.py runs it);
- `nginx`:   one worker with upstream keep-alive, adding the forwarding headers the gateway adds
             (when nginx is installed).

The floor runs `--workers` processes on one port (SO_REUSEPORT), as the gateway runs its
workers. Prints, per target and round, requests/s, the CPU time of the proxy's processes per
request and the upstream's, and the ratio to nginx. Needs wrk.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gateway_overhead as load  # noqa: E402  (the upstream, the store, nginx's configuration)

# --- the floor proxy (runs as `proxy_floor.py --role floor PORT UPSTREAM_PORT`) ----------------------

HOP_BY_HOP = {b"connection", b"keep-alive", b"proxy-authenticate", b"proxy-authorization", b"proxy-connection", b"te",
              b"trailer", b"trailers", b"transfer-encoding", b"upgrade"}  # fmt: skip
REQUEST_DROP = frozenset(HOP_BY_HOP | {b"host", b"opc-request-id", b"route", b"expect"})
RESPONSE_DROP = frozenset(HOP_BY_HOP | {b"opc-request-id", b"date", b"server"})


def serve_floor(port: int, upstream_port: int) -> None:
    import httptools
    import uvloop

    prefix = os.urandom(8).hex().upper()
    counter = itertools.count()
    routes = {load.DEPLOYMENT_ID: (b"/predict", b"127.0.0.1:%d" % upstream_port)}
    inflight: dict[str, int] = {}
    idle: list[Upstream] = []
    entries: list[tuple[object, ...]] = []
    window: list[tuple[object, ...]] = []
    default_head = b"server: floor\r\ndate: Fri, 27 Nov 2026 07:00:00 GMT\r\n"

    class Upstream(asyncio.Protocol):
        def __init__(self) -> None:
            self.parser = httptools.HttpResponseParser(self)
            self.caller: Caller | None = None
            self.transport: asyncio.Transport | None = None

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport  # type: ignore[assignment]

        def data_received(self, data: bytes) -> None:
            self.parser.feed_data(data)

        def connection_lost(self, exc: Exception | None) -> None:
            if self in idle:  # the upstream closed an idle connection (its keep-alive timeout)
                idle.remove(self)

        def on_message_begin(self) -> None:
            self.headers: list[tuple[bytes, bytes]] = []
            self.body: list[bytes] = []

        def on_header(self, name: bytes, value: bytes) -> None:
            self.headers.append((name.lower(), value))

        def on_body(self, body: bytes) -> None:
            self.body.append(body)

        def on_message_complete(self) -> None:
            caller, self.caller = self.caller, None
            assert caller is not None
            status = self.parser.get_status_code()
            lines = [b"%b: %b\r\n" % header for header in self.headers if header[0] not in RESPONSE_DROP]
            lines.append(b"opc-request-id: %b\r\n\r\n" % caller.request_id.encode())
            head = b"HTTP/1.1 %d OK\r\n" % status + default_head + b"".join(lines)
            if head.count(b"\n") != len(lines) + 4 or head.count(b"\r") != len(lines) + 4 or b"\0" in head:
                raise RuntimeError("a response header holds CR, LF or NUL")
            body = b"".join(self.body)
            if not caller.transport.is_closing():
                caller.transport.write(head + body)
            idle.append(self)
            now = time.perf_counter()
            inflight[caller.deployment_id] -= 1
            entry = (caller.wall, caller.request_id, caller.deployment_id, None, "POST", caller.path, status,
                     len(caller.body), len(body), now - caller.arrived, now - caller.sent, "instance", 1, None)  # fmt: skip
            entries.append(entry)
            window.append((status, entry[9], entry[10], entry[7], entry[8]))
            if len(entries) > 1000:  # stored nowhere: only made, as the gateway makes them
                entries.clear()
                window.clear()

    class Caller(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport: asyncio.Transport = transport  # type: ignore[assignment]
            self.parser = httptools.HttpRequestParser(self)

        def data_received(self, data: bytes) -> None:
            self.parser.feed_data(data)

        def on_message_begin(self) -> None:
            self.url = b""
            self.headers: list[tuple[bytes, bytes]] = []
            self.body = b""

        def on_url(self, url: bytes) -> None:
            self.url += url

        def on_header(self, name: bytes, value: bytes) -> None:
            self.headers.append((name.lower(), value))

        def on_body(self, body: bytes) -> None:
            self.body += body

        def on_message_complete(self) -> None:
            self.arrived = time.perf_counter()
            self.wall = time.time()
            present = dict(self.headers)
            path = self.path = self.url.decode("ascii")
            length = present.get(b"content-length")
            if (self.parser.get_method() != b"POST" or not path.endswith("/predict") or path.count("/") != 2
                    or length is None or not length.isdigit() or b"transfer-encoding" in present or b"route" in present):  # fmt: skip
                raise RuntimeError("only the commonest request is served here")
            deployment_id = self.deployment_id = path[1:-8]
            predict_path, authority = routes[deployment_id]
            inflight[deployment_id] = inflight.get(deployment_id, 0) + 1
            self.request_id = f"{prefix}{next(counter):016X}"
            lines = [b"%b: %b\r\n" % header for header in self.headers if header[0] not in REQUEST_DROP]
            lines.append(b"opc-request-id: %b\r\nx-forwarded-for: 127.0.0.1\r\nx-forwarded-proto: http\r\n" % self.request_id.encode())
            head = b"POST %b HTTP/1.1\r\nhost: %b\r\n%b\r\n" % (predict_path, authority, b"".join(lines))
            if head.count(b"\n") != len(lines) + 5 or head.count(b"\r") != len(lines) + 5:
                raise RuntimeError("a request header holds CR or LF")
            self.sent = time.perf_counter()
            if idle:
                upstream = idle.pop()
                upstream.caller = self
                upstream.transport.write(head + self.body)  # type: ignore[union-attr]
            else:
                asyncio.get_running_loop().create_task(self.connect(head + self.body))

        async def connect(self, data: bytes) -> None:
            _, upstream = await asyncio.get_running_loop().create_connection(Upstream, "127.0.0.1", upstream_port)
            upstream.caller = self
            upstream.transport.write(data)  # type: ignore[union-attr]

        def connection_lost(self, exc: Exception | None) -> None:
            pass  # an exchange in flight still ends: its upstream connection goes back to the pool

    async def serve() -> None:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(("127.0.0.1", port))
        sock.listen(1024)
        await asyncio.get_running_loop().create_server(Caller, sock=sock)
        await asyncio.Event().wait()

    uvloop.run(serve())


# --- the driver ----------------------------------------------------------------------------------


def wrk(url: str, args: argparse.Namespace, script: Path) -> tuple[int, float]:
    out = subprocess.run(["wrk", f"-t{args.threads}", f"-c{args.connections}", f"-d{args.duration}s", "-s", str(script), url],
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    return requests, rps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--role", default="driver", choices=("driver", "floor"))
    parser.add_argument("role_args", nargs="*")
    args = parser.parse_args()
    if args.role == "floor":
        serve_floor(int(args.role_args[0]), int(args.role_args[1]))
        return
    if shutil.which("wrk") is None:
        sys.exit("needs wrk: apt-get install -y wrk")
    processes: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory(prefix="dockyard-floor-") as tmp:
        work = Path(tmp)
        try:
            upstream_port = load.free_port()
            upstream = load.start_upstream(upstream_port)
            processes.append(upstream)
            load.wait_for(upstream_port)
            floor_port, gateway_port = load.free_port(), load.free_port()
            floors = [subprocess.Popen([sys.executable, __file__, "--role", "floor", str(floor_port), str(upstream_port)],
                                       env=load.child_env(), start_new_session=True) for _ in range(args.workers)]  # fmt: skip
            processes += floors
            load.write_store(work / "data", upstream_port, gateway_port)
            gateway = load.start_gateway(work / "data", gateway_port, args.workers, True, "warning", work / "gateway.log")
            processes.append(gateway)
            path = f"/{load.DEPLOYMENT_ID}/predict"
            targets = {"floor": (f"http://127.0.0.1:{floor_port}{path}", [p.pid for p in floors]),
                       "gateway": (f"http://127.0.0.1:{gateway_port}{path}", [gateway.pid])}  # fmt: skip
            if shutil.which("nginx"):
                nginx_port = load.free_port()
                conf = work / "nginx.conf"
                conf.write_text(load.NGINX_CONF.format(dir=work, upstream=upstream_port, port=nginx_port, forwarding=load.NGINX_FORWARDING))
                nginx = subprocess.Popen(["nginx", "-c", str(conf), "-g", "daemon off;"], start_new_session=True)
                processes.append(nginx)
                load.wait_for(nginx_port)
                targets["nginx"] = (f"http://127.0.0.1:{nginx_port}/", [nginx.pid])
            load.wait_for(floor_port)
            load.wait_for(gateway_port)
            script = load.lua_script(work, {})
            for url, _ in targets.values():  # warm-up: connections opened, caches filled
                subprocess.run(["wrk", "-t1", "-c8", "-d2s", "-s", str(script), url], capture_output=True, check=True)
            print(f"{args.connections} connections, {args.duration} s per target and round, {args.workers} worker(s) "
                  "for the floor and the gateway; CPU per request: the proxy's processes (and the upstream's)")  # fmt: skip
            for round_ in range(1, args.rounds + 1):
                measured: dict[str, float] = {}
                for name, (url, pids) in targets.items():
                    before = sum(load.cpu_seconds(pid) for pid in pids)
                    upstream_before = load.cpu_seconds(upstream.pid)
                    requests, rps = wrk(url, args, script)
                    cpu = (sum(load.cpu_seconds(pid) for pid in pids) - before) / requests * 1e6
                    upstream_cpu = (load.cpu_seconds(upstream.pid) - upstream_before) / requests * 1e6
                    measured[name] = rps
                    print(f"round {round_}  {name:8} {rps:9,.0f} req/s  {cpu:6.1f} us CPU per request  (upstream {upstream_cpu:5.1f} us)")
                if "nginx" in measured:
                    print(f"round {round_}  vs nginx: floor {measured['floor'] / measured['nginx']:.2f}x, "
                          f"gateway {measured['gateway'] / measured['nginx']:.2f}x")  # fmt: skip
        finally:
            for process in processes:
                load.stop(process)


if __name__ == "__main__":
    main()

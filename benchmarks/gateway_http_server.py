"""CPU per request of the HTTP server alone: uvicorn against dockyard's gateway server.

A trivial ASGI app (reads the body, answers 17 bytes of JSON with a Content-Length) runs in a
process of its own under each server; `wrk -t2 -c64 -d8` drives it over keep-alive
connections. Printed per server: requests per second and the server process's CPU time
(utime + stime from /proc/<pid>/stat) divided by the requests wrk completed.

    .venv/bin/python benchmarks/gateway_http_server.py [--duration 8] [--connections 64] [--rounds 1]

Needs `wrk` on PATH and Linux's /proc.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import subprocess
import sys
import time

APP = '''
async def app(scope, receive, send):
    if scope["type"] != "http":
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                await send({"type": message["type"] + ".complete"})
                if message["type"] == "lifespan.shutdown":
                    return
        return
    while (await receive()).get("more_body"):
        pass
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", b"17")]})
    await send({"type": "http.response.body", "body": b'{"result": "ok!"}'})
'''

SERVERS = {
    "uvicorn": "import uvicorn\nuvicorn.run(app, host='127.0.0.1', port={port}, log_level='warning', access_log=False, "
               "loop='uvloop', http='httptools', backlog=4096)",
    "dockyard": "from dockyard.gateway.httpserve import serve\nserve(app, host='127.0.0.1', port={port})",
}  # fmt: skip


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), in seconds."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_until_listening(port: int, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def wrk(port: int, duration_s: int, connections: int) -> tuple[int, float]:
    """(requests completed, requests per second) of one wrk run."""
    out = subprocess.run(
        ["wrk", "-t2", f"-c{connections}", f"-d{duration_s}", f"http://127.0.0.1:{port}/"], capture_output=True, text=True, check=True
    ).stdout  # fmt: skip
    done = re.search(r"(\d+) requests in", out)
    rate = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if not done or not rate or "Non-2xx" in out or "Socket errors" in out:
        raise RuntimeError(f"wrk did not finish cleanly:\n{out}")
    return int(done.group(1)), float(rate.group(1))


def measure(name: str, duration_s: int, connections: int) -> tuple[float, float]:
    """(requests per second, server CPU µs per request) of one server."""
    port = free_port()
    source = APP + SERVERS[name].format(port=port)
    process = subprocess.Popen([sys.executable, "-c", source], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until_listening(port)
        wrk(port, 1, connections)  # warm-up: imports done, connections and caches made
        before = cpu_seconds(process.pid)
        requests, rate = wrk(port, duration_s, connections)
        used = cpu_seconds(process.pid) - before
    finally:
        process.terminate()
        process.wait(15)
    return rate, used / requests * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=int, default=8)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=1, help="runs per server (alternating); each printed")
    args = parser.parse_args()
    for _ in range(args.rounds):
        for name in SERVERS:
            rate, cpu_us = measure(name, args.duration, args.connections)
            print(f"{name:9} {rate:9.0f} req/s  {cpu_us:6.1f} µs CPU per request", flush=True)


if __name__ == "__main__":
    main()

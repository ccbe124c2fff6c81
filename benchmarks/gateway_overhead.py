"""What the gateway costs: a fast upstream reached directly, through the gateway and (when nginx is
installed) through nginx as a plain reverse proxy, under the same load.

    python benchmarks/gateway_overhead.py [--connections 64] [--duration 10] [--threads 2]

Each server runs in its own process on 127.0.0.1 (uvicorn with uvloop/httptools, as `dockyard
serve` runs): the upstream answers every POST with a small JSON document; the gateway reads a
throw-away SQLite store holding one ACTIVE deployment whose one HEALTHY instance is that
upstream. Load comes from `wrk` when it is installed (`apt-get install -y wrk`), else from a
Python load generator (which is itself slower, so its figures understate every server). Prints
requests/s, p50 and p99 latency for each target, their ratios to the direct figures, and the
gateway's own overhead as it measures it (total minus upstream time, from its metrics).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BODY = b'{"inputs": [[5.1, 3.5, 1.4, 0.2]], "parameters": {"top_k": 1}}'
REPLY = b'{"prediction": [0], "probabilities": [[0.97, 0.02, 0.01]]}'
DEPLOYMENT_ID = "ocid1.datasciencemodeldeployment.oc1.local.benchmark"


# --- the servers (each runs as `python gateway_overhead.py --role ...` in its own process) ----------


async def upstream_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    more = True
    while more:
        more = (await receive()).get("more_body", False)
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(REPLY)).encode())]})  # fmt: skip
    await send({"type": "http.response.body", "body": REPLY})


def serve_upstream(port: int) -> None:
    import uvicorn

    uvicorn.run(upstream_app, host="127.0.0.1", port=port, log_level="warning", access_log=False, lifespan="off")


def serve_gateway(port: int, database: str, inflight: int) -> None:
    import uvicorn

    from dockyard.gateway import create_gateway, gateway_metrics_app
    from dockyard.store.metadata import SqlMetadataStore

    # The in-flight limit is raised above the load's concurrency: this measures proxying, not 429s.
    gateway = create_gateway(SqlMetadataStore(database), inflight_per_instance=inflight)
    metrics = gateway_metrics_app(gateway)

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] == "/metrics":
            await metrics(scope, receive, send)
        else:
            await gateway(scope, receive, send)

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def write_store(database: str, upstream_port: int) -> None:
    from dockyard.store.metadata import InstanceRecord, Record, SqlMetadataStore, now_iso

    store = SqlMetadataStore(database)
    store.insert(Record(id=DEPLOYMENT_ID, kind="modeldeployment", body={
        "id": DEPLOYMENT_ID, "compartmentId": "ocid1.compartment.oc1..bench", "lifecycleState": "ACTIVE",
        "timeCreated": now_iso(),
        "modelDeploymentConfigurationDetails": {"deploymentType": "SINGLE_MODEL", "environmentConfigurationDetails": {
            "environmentConfigurationType": "OCIR_CONTAINER", "environmentVariables": {}}},
    }))  # fmt: skip
    store.replace_instances(DEPLOYMENT_ID, [InstanceRecord(
        instance_id="bench-0", deployment_id=DEPLOYMENT_ID, spec_hash="b", runtime="process", state="RUNNING",
        health="HEALTHY", host="127.0.0.1", server_port=upstream_port, health_port=upstream_port, time_last_probe=now_iso(),
    )])  # fmt: skip
    store.close()


NGINX_CONF = """
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    upstream model {{ server 127.0.0.1:{upstream}; keepalive 128; }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://model/predict;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"""


# --- orchestration ---------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(port: int, timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing answered on port {port} within {timeout_s} s")


def start_role(role: str, *args: str) -> subprocess.Popen[bytes]:
    env = os.environ | {"PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    return subprocess.Popen([sys.executable, __file__, "--role", role, *args], env=env)


@dataclass
class Result:
    target: str
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int


def _ms(value: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", value).groups()  # type: ignore[union-attr]
    return float(number) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def run_wrk(target: str, url: str, connections: int, duration_s: int, threads: int, workdir: Path) -> Result:
    script = workdir / "post.lua"
    script.write_text(
        f'wrk.method = "POST"\nwrk.body = {json.dumps(BODY.decode())}\nwrk.headers["Content-Type"] = "application/json"\n'
    )
    out = subprocess.run(
        ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration_s}s", "--latency", "-s", str(script), url],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = _ms(re.search(r"\s50%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"\s99%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return Result(target, rps, p50, p99, errors + (int(non2xx.group(1)) if non2xx else 0))


def run_python(target: str, url: str, connections: int, duration_s: int) -> Result:
    import httpx

    async def main() -> Result:
        latencies: list[float] = []
        errors = 0
        deadline = time.monotonic() + duration_s
        limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
        async with httpx.AsyncClient(limits=limits, timeout=30) as client:

            async def worker() -> None:
                nonlocal errors
                while time.monotonic() < deadline:
                    started = time.perf_counter()
                    try:
                        reply = await client.post(url, content=BODY, headers={"content-type": "application/json"})
                        if reply.status_code != 200:
                            errors += 1
                    except httpx.HTTPError:
                        errors += 1
                    latencies.append(time.perf_counter() - started)

            started = time.monotonic()
            await asyncio.gather(*(worker() for _ in range(connections)))
            elapsed = time.monotonic() - started
        latencies.sort()
        return Result(target, len(latencies) / elapsed, latencies[len(latencies) // 2] * 1000,
                      latencies[int(len(latencies) * 0.99)] * 1000, errors)  # fmt: skip

    return asyncio.run(main())


def gateway_overhead(port: int) -> tuple[float, float] | None:
    """Mean (total - upstream) per request and mean total, in ms, from the gateway's metrics."""
    import httpx

    text = httpx.get(f"http://127.0.0.1:{port}/metrics").text
    values = {}
    for name in ("dockyard_gateway_overhead_seconds_sum", "dockyard_gateway_overhead_seconds_count"):
        match = re.search(rf"^{name} ([\d.e+-]+)$", text, re.M)
        if match:
            values[name] = float(match.group(1))
    total_sum = sum(
        float(v) for v in re.findall(r"^dockyard_gateway_request_duration_seconds_sum\{[^}]*\} ([\d.e+-]+)$", text, re.M)
    )
    total_count = sum(
        float(v) for v in re.findall(r"^dockyard_gateway_request_duration_seconds_count\{[^}]*\} ([\d.e+-]+)$", text, re.M)
    )
    count = values.get("dockyard_gateway_overhead_seconds_count", 0)
    if not count or not total_count:
        return None
    return values["dockyard_gateway_overhead_seconds_sum"] / count * 1000, total_sum / total_count * 1000


def orchestrate(args: argparse.Namespace) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="dockyard-bench-"))
    processes: list[subprocess.Popen[bytes]] = []
    try:
        upstream_port, gateway_port = free_port(), free_port()
        processes.append(start_role("upstream", str(upstream_port)))
        database = f"sqlite:///{workdir}/bench.db"
        write_store(database, upstream_port)
        processes.append(start_role("gateway", str(gateway_port), database, str(max(32, 2 * args.connections))))
        targets = [("direct", f"http://127.0.0.1:{upstream_port}/predict"),
                   ("gateway", f"http://127.0.0.1:{gateway_port}/{DEPLOYMENT_ID}/predict")]  # fmt: skip
        nginx = shutil.which("nginx") or (os.path.exists("/usr/sbin/nginx") and "/usr/sbin/nginx")
        if nginx:
            nginx_port = free_port()
            for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
                (workdir / sub).mkdir()
            conf = workdir / "nginx.conf"
            conf.write_text(NGINX_CONF.format(dir=workdir, upstream=upstream_port, port=nginx_port))
            processes.append(subprocess.Popen([nginx, "-c", str(conf), "-g", "daemon off;"]))
            targets.append(("nginx", f"http://127.0.0.1:{nginx_port}/"))
        for process_port in [upstream_port, gateway_port] + ([nginx_port] if nginx else []):
            wait_for(process_port)
        wrk = shutil.which("wrk")
        print(f"load: {'wrk' if wrk else 'python httpx (install wrk for better figures)'}, {args.connections} connections, "
              f"{args.duration} s per target, {len(BODY)}-byte JSON bodies, {os.cpu_count()} CPUs")  # fmt: skip
        results: dict[str, Result] = {}
        for name, url in targets:
            # Warm up: connection pools, route cache, JIT-free but cache-warm code paths.
            (run_wrk if wrk else lambda t, u, c, d, *_: run_python(t, u, c, d))(
                name, url, args.connections, 2, args.threads, workdir
            )
            if wrk:
                results[name] = run_wrk(name, url, args.connections, args.duration, args.threads, workdir)
            else:
                results[name] = run_python(name, url, args.connections, args.duration)
        direct = results["direct"]
        print(f"\n{'target':<10}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'errors':>8}   vs direct (req/s, p50, p99)")
        for result in results.values():
            ratio = f"{result.rps / direct.rps:.2f}x, {result.p50_ms / direct.p50_ms:.2f}x, {result.p99_ms / direct.p99_ms:.2f}x"
            print(
                f"{result.target:<10}{result.rps:>10.0f}{result.p50_ms:>10.2f}{result.p99_ms:>10.2f}{result.errors:>8}   {ratio}"
            )
        overhead = gateway_overhead(gateway_port)
        if overhead:
            print(f"\ngateway's own measure: {overhead[0]:.3f} ms mean overhead (total minus upstream) "
                  f"of {overhead[1]:.3f} ms mean total per request")  # fmt: skip
    finally:
        for process in reversed(processes):
            process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=textwrap.dedent(__doc__ or "").strip().splitlines()[0])
    parser.add_argument("--connections", type=int, default=64, help="concurrent connections (default 64)")
    parser.add_argument("--duration", type=int, default=10, help="seconds of load per target (default 10)")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads (default 2)")
    parser.add_argument("--role", choices=["upstream", "gateway"], help=argparse.SUPPRESS)
    parser.add_argument("role_args", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role == "upstream":
        serve_upstream(int(args.role_args[0]))
    elif args.role == "gateway":
        serve_gateway(int(args.role_args[0]), args.role_args[1], int(args.role_args[2]))
    else:
        orchestrate(args)


if __name__ == "__main__":
    main()

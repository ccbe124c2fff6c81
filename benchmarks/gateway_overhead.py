"""What the gateway costs: a fast upstream reached directly, through the gateway and (when nginx is
installed) through nginx as a plain reverse proxy, under the same load, back to back: every
target once per round, for `--rounds` rounds, each figure the median over rounds.

    python benchmarks/gateway_overhead.py [--connections 64] [--duration 10] [--threads 2] [--rounds 3]
                                          [--workers N ...] [--also-interpreted] [--gateway-log-level info]
                                          [--rate R] [--signed-anew]

The upstream is a uvicorn app (uvloop/httptools) answering every POST with a small JSON
document. The gateway runs exactly as users run it: `dockyard serve --role gateway` (with
`--gateway-workers N`, default one per two cores) over a throw-away data directory whose store
holds one ACTIVE deployment with that upstream as its one HEALTHY instance and the
administrator `dockyard serve` creates. It is measured unsigned (`--insecure-no-auth`) and
signed: every request carries an OCI signature (fixed body, so one Authorization header
stays valid for the 5-minute skew window), verified by the server; with `--signed-anew`, also
with every request signed anew (5,000 bodies and signatures in turn, none recognised, each
checked in full: what SDK clients sending predictions of their own cost). nginx (`apt-get install -y
nginx`) runs one worker with upstream keep-alive, twice: `nginx` adds the headers the gateway adds
to every forwarded request (X-Forwarded-For, X-Forwarded-Proto and a request id), so both proxies
deliver the same request and the upstream does the same work behind each; `nginx bare` forwards
the request as it came. Ratios are to `nginx`, with those to `nginx bare` beside them.
The gateway runs its request path compiled when it is built (dockyard/compiled.py; the first
line says which); `--also-interpreted` measures each gateway interpreted as well.

By default every connection sends its next request as soon as the reply came: the machine is
saturated, and the latency added is mostly queueing behind the CPU the proxy takes from the
others (on a machine whose cores the load generator, proxy and upstream share). `--rate R`
(wrk only) offers about R requests/s in all instead, each connection waiting connections/R s
on average (uniformly at random) after each reply (wrk's `delay()`): the latency a proxy adds
on a machine with room to spare.

Load comes from `wrk` when it is installed (`apt-get install -y wrk`), else from a Python
load generator (which is itself slower, so its figures understate every server). Prints
requests/s, p50 and p99 latency for each target, their ratios to direct and to nginx, the p50
added over direct, and the gateway's own overhead as it measures it (total minus upstream
time, from its metrics, over the measured run only).
"""

from __future__ import annotations

import argparse
import asyncio
import configparser
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
from statistics import median
from typing import Any, Final

BODY = b'{"inputs": [[5.1, 3.5, 1.4, 0.2]], "parameters": {"top_k": 1}}'
REPLY = b'{"prediction": [0], "probabilities": [[0.97, 0.02, 0.01]]}'
DEPLOYMENT_ID = "ocid1.datasciencemodeldeployment.oc1.local.benchmark"
SRC = Path(__file__).resolve().parents[1] / "src"


# --- the upstream (runs as `python gateway_overhead.py --role upstream PORT` in its own process) ---


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


# --- the gateway's data directory ------------------------------------------------------------------


def write_store(data_dir: Path, upstream_port: int, gateway_port: int) -> Path:
    """The deployment, its instance, and the administrator; the OCI config that signs as them."""
    from dockyard.auth.bootstrap import ensure_admin
    from dockyard.auth.principals import PrincipalStore
    from dockyard.settings import Settings
    from dockyard.store.metadata import InstanceRecord, Record, SqlMetadataStore, now_iso

    settings = Settings(data_dir=data_dir, port=gateway_port)
    store = SqlMetadataStore(settings.resolved_database_url)
    principals = PrincipalStore(store.engine, store.writer, realm=settings.realm)
    config = ensure_admin(principals, data_dir, settings.resolved_public_url, settings.region)
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(config)
    tenancy = parser["DEFAULT"]["tenancy"]  # the deployment lives in the administrator's root compartment
    store.insert(Record(id=DEPLOYMENT_ID, kind="modeldeployment", body={
        "id": DEPLOYMENT_ID, "compartmentId": tenancy, "lifecycleState": "ACTIVE",
        "timeCreated": now_iso(),
        "modelDeploymentConfigurationDetails": {"deploymentType": "SINGLE_MODEL", "environmentConfigurationDetails": {
            "environmentConfigurationType": "OCIR_CONTAINER", "environmentVariables": {}}},
    }))  # fmt: skip
    store.replace_instances(DEPLOYMENT_ID, [InstanceRecord(
        instance_id="bench-0", deployment_id=DEPLOYMENT_ID, spec_hash="b", runtime="process", state="RUNNING",
        health="HEALTHY", host="127.0.0.1", server_port=upstream_port, health_port=upstream_port, time_last_probe=now_iso(),
    )])  # fmt: skip
    store.close()
    return config


# Headers as wrk must be given them to send the values signed: it writes Content-Length itself,
# and Host and the others it sets unless given under these spellings.
WRK_NAMES: Final = {"host": "Host", "date": "Date", "content-type": "Content-Type"}


def signed_headers(config: Path, url: str, body: bytes = BODY, signing: Any = None) -> dict[str, str]:
    """The headers of a POST of `body` to `url` signed with `config`, as the OCI SDK signs it
    (`signing`: `signing_from_config(config)`, when the caller has it already)."""
    import httpx

    from dockyard.auth.client import signing_from_config

    signing = signing or signing_from_config(config)
    assert signing is not None
    request = httpx.Request("POST", url, content=body, headers={"content-type": "application/json"})
    signed = next(signing.auth.sync_auth_flow(request))
    return {WRK_NAMES.get(name, name): value for name, value in signed.headers.items() if name.lower() not in (
            "content-length", "accept", "accept-encoding", "connection", "user-agent")}  # fmt: skip


# Requests signed anew: more than the verifier remembers (1,024 signatures), so that, replayed in
# turn by wrk, none is recognised and every one is checked in full (RSA included), as when SDK
# clients send predictions of their own. Signing them takes about 2 s.
ANEW_REQUESTS: Final = 5000


def anew_requests(config: Path, url: str, count: int = ANEW_REQUESTS) -> list[bytes]:
    """`count` whole POSTs to `url`, each of its own body (BODY with a number in it) and so of its
    own signature, made as `signed_headers` signs."""
    from urllib.parse import urlsplit

    from dockyard.auth.client import signing_from_config

    signing = signing_from_config(config)
    path = urlsplit(url).path
    requests = []
    for number in range(count):
        body = BODY[:-1] + b', "n": %d}' % number
        headers = signed_headers(config, url, body, signing)
        lines = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        requests.append(f"POST {path} HTTP/1.1\r\n{lines}Content-Length: {len(body)}\r\n\r\n".encode("latin-1") + body)
    return requests


def sdk_headers(config: Path, url: str) -> dict[str, str]:
    """The headers of a predict of BODY to `url` as the oci SDK's ModelDeploymentClient sends it:
    its user-agent, client info and request id besides what the signature needs (about 1.3 KB a
    request, where `signed_headers` makes about 0.8 KB). Taken from the SDK itself: it sends the
    predict to a socket here, which keeps what came and answers; Host is sent as signed."""
    import threading

    import oci

    deployment_id = url.rsplit("/", 2)[1]
    listener = socket.create_server(("127.0.0.1", 0))
    received: list[bytes] = []

    def answer() -> None:
        connection, _ = listener.accept()
        with connection:
            data = b""
            while not data.endswith(BODY):
                more = connection.recv(65536)
                if not more:
                    break
                data += more
            received.append(data)
            connection.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}")

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    endpoint = f"http://127.0.0.1:{listener.getsockname()[1]}"
    client = oci.model_deployment.ModelDeploymentClient(
        oci.config.from_file(str(config)), service_endpoint=endpoint, retry_strategy=oci.retry.NoneRetryStrategy()
    )
    client.predict(deployment_id, request_body=json.loads(BODY))  # serialised as BODY is written
    thread.join(10)
    listener.close()
    head, _, body = received[0].partition(b"\r\n\r\n")
    if body != BODY:
        raise RuntimeError(f"the SDK sent {body!r}, not the body it signed for the benchmark ({BODY!r})")
    lines = (line.split(": ", 1) for line in head.decode("latin-1").split("\r\n")[1:])
    return {WRK_NAMES.get(name.lower(), name): value for name, value in lines if name.lower() != "content-length"}


# What the gateway adds to every request it forwards (gateway/headers.py), as nginx adds them: the
# like-for-like nginx delivers the same request to the upstream, whose parsing of three more
# headers (and uvicorn's trusted-proxy handling of X-Forwarded-*) costs it ~12% more CPU.
NGINX_FORWARDING = """
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header opc-request-id $request_id;"""
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
            proxy_set_header Connection "";{forwarding}
        }}
    }}
}}
"""


# --- orchestration ---------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(port: int, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing answered on port {port} within {timeout_s} s")


def child_env() -> dict[str, str]:
    return os.environ | {"PYTHONPATH": str(SRC)}


def start_upstream(port: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, __file__, "--role", "upstream", str(port)], env=child_env())


def start_gateway(data_dir: Path, port: int, workers: int, insecure: bool, log_level: str, log: Path,
                  interpreted: bool = False) -> subprocess.Popen[bytes]:  # fmt: skip
    """`dockyard serve --role gateway` as users start it (its log to a file, as a service's would
    go); `interpreted`: without its compiled request path (dockyard/compiled.py), whatever is built."""
    command = [sys.executable, "-m", "dockyard.cli.main", "serve", "--role", "gateway", "--host", "127.0.0.1",
               "--port", str(port), "--data-dir", str(data_dir), "--gateway-workers", str(workers), "--log-level", log_level]  # fmt: skip
    if insecure:
        command.append("--insecure-no-auth")
    # The in-flight limit is raised above the load's concurrency: this measures proxying, not 429s.
    env = child_env() | {"DOCKYARD_GATEWAY_INFLIGHT_PER_INSTANCE": "100000", "DOCKYARD_PUBLIC_METRICS": "true"}
    if interpreted:
        env["DOCKYARD_COMPILED"] = "0"
    with log.open("ab") as out:
        return subprocess.Popen(command, env=env, stdout=out, stderr=out, start_new_session=True)


def gateway_build() -> str:
    """How `dockyard serve` runs the gateway's request path here: compiled, or interpreted and why."""
    said = subprocess.run([sys.executable, "-m", "dockyard.compiled", "status"], env=child_env(), capture_output=True, text=True)
    return said.stdout.strip() or said.stderr.strip()


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        process.wait(20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@dataclass
class Result:
    target: str
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    overhead_ms: float | None = None  # the gateway's own measure, mean per request
    cpu_us: float | None = None  # CPU time of the proxy's processes per request (user + system)
    upstream_cpu_us: float | None = None  # the upstream's CPU time per request, behind this target


def cpu_seconds(root: int) -> float:
    """User + system CPU seconds of process `root` and all its descendants, from /proc."""
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(entry.name)] = int(fields[1])
        times[int(entry.name)] = (int(fields[11]) + int(fields[12])) / tick
    wanted, frontier = {root}, [root]
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, ppid in parents.items() if ppid == parent and pid not in wanted]
        wanted.update(children)
        frontier.extend(children)
    return sum(times.get(pid, 0.0) for pid in wanted)


def _ms(value: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", value).groups()  # type: ignore[union-attr]
    return float(number) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def lua_script(workdir: Path, headers: dict[str, str], delay_ms: float = 0.0, requests: list[bytes] | None = None,
               threads: int = 2) -> Path:  # fmt: skip
    """wrk's script: the POST, its headers and, with `delay_ms`, the wait after each reply.
    `requests`: whole requests to send instead, in turn (`anew_requests`), each of wrk's
    `threads` threads starting at its own share of them so that no two send the same at once."""
    script = workdir / f"post-{len(list(workdir.glob('post-*.lua')))}.lua"
    lines = ['wrk.method = "POST"', f"wrk.body = {json.dumps(BODY.decode())}", 'wrk.headers["Content-Type"] = "application/json"']
    lines += [f"wrk.headers[{json.dumps(name)}] = {json.dumps(value)}" for name, value in headers.items()]
    if requests:
        # Read from a file at start, NUL between requests: thousands of string constants in the
        # script itself would exceed what LuaJIT takes in one chunk.
        data = script.with_suffix(".requests")
        data.write_bytes(b"\0".join(requests))
        lines += [
            "local made = 0",
            'function setup(thread) thread:set("id", made); made = made + 1 end',
            "function init(args)",
            f"  local file = io.open({json.dumps(str(data))}, 'rb'); local all = file:read('*a'); file:close()",
            "  requests = {}",
            "  for piece in string.gmatch(all, '[^%z]+') do requests[#requests + 1] = piece end",
            f"  counter = math.floor(id * #requests / {threads})",
            "end",
            "function request() counter = counter % #requests + 1; return requests[counter] end",
        ]
    if delay_ms > 0:
        # Drawn at random about the mean: a fixed wait would keep the connections in step, their
        # requests arriving in bursts that a slower proxy pays for in queueing, not in latency.
        # (wrk takes whole milliseconds.)
        lines.append(f"function delay() return math.floor(math.random() * {2 * delay_ms:.3f} + 0.5) end")
    script.write_text("\n".join(lines) + "\n")
    return script


def run_wrk(target: str, url: str, connections: int, duration_s: int, threads: int, script: Path) -> Result:
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


def run_python(target: str, url: str, connections: int, duration_s: int, headers: dict[str, str]) -> Result:
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
                        reply = await client.post(url, content=BODY, headers={"content-type": "application/json", **headers})
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


def gateway_totals(port: int) -> tuple[float, float] | None:
    """(sum of overhead seconds, count) from the gateway's metrics (all its workers)."""
    import httpx

    try:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    except httpx.HTTPError:
        return None
    values = {}
    for name in ("dockyard_gateway_overhead_seconds_sum", "dockyard_gateway_overhead_seconds_count"):
        match = re.search(rf"^{name} ([\d.e+-]+)$", text, re.M)
        if match:
            values[name] = float(match.group(1))
    if len(values) < 2:
        return None
    return values["dockyard_gateway_overhead_seconds_sum"], values["dockyard_gateway_overhead_seconds_count"]


def measure(args: argparse.Namespace, target: str, url: str, headers: dict[str, str], workdir: Path,
            metrics_port: int | None = None, process: subprocess.Popen[bytes] | None = None,
            upstream: subprocess.Popen[bytes] | None = None, requests: list[bytes] | None = None) -> Result:  # fmt: skip
    """A 2 s warm-up (connection pools, route cache), then the measured run."""
    script = lua_script(workdir, headers, 1000.0 * args.connections / args.rate if args.rate else 0.0, requests, args.threads)
    load = (lambda d: run_wrk(target, url, args.connections, d, args.threads, script)) if shutil.which("wrk") else (
        lambda d: run_python(target, url, args.connections, d, headers))  # fmt: skip
    load(2)
    before = gateway_totals(metrics_port) if metrics_port else None
    cpu_before = cpu_seconds(process.pid) if process else 0.0
    upstream_before = cpu_seconds(upstream.pid) if upstream else 0.0
    result = load(args.duration)
    requests = max(1.0, result.rps * args.duration)
    if process:
        result.cpu_us = (cpu_seconds(process.pid) - cpu_before) / requests * 1e6
    if upstream:
        result.upstream_cpu_us = (cpu_seconds(upstream.pid) - upstream_before) / requests * 1e6
    after = gateway_totals(metrics_port) if metrics_port else None
    if before and after and after[1] > before[1]:
        result.overhead_ms = (after[0] - before[0]) / (after[1] - before[1]) * 1000
    return result


@dataclass
class Target:
    name: str
    url: str
    process: subprocess.Popen[bytes]
    metrics_port: int | None = None  # a gateway's: its own overhead figures
    signing_config: Path | None = None  # signed: a fresh signature per measurement (they age out in 5 minutes)
    anew: bool = False  # signed: every request signed anew (`anew_requests`), not one signature repeated

    def headers(self) -> dict[str, str]:
        return signed_headers(self.signing_config, self.url) if self.signing_config and not self.anew else {}

    def requests(self) -> list[bytes] | None:
        return anew_requests(self.signing_config, self.url) if self.signing_config and self.anew else None


def orchestrate(args: argparse.Namespace) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="dockyard-bench-"))
    upstream_port = free_port()
    upstream = start_upstream(upstream_port)
    servers: list[subprocess.Popen[bytes]] = []
    try:
        wait_for(upstream_port)
        print(f"load: {'wrk' if shutil.which('wrk') else 'python httpx (install wrk for better figures)'}, "
              f"{args.connections} connections" + (f" offering about {args.rate} req/s in all" if args.rate else "")
              + f", {args.duration} s per target, {args.rounds} round(s), {len(BODY)}-byte "
              f"JSON bodies, {os.cpu_count()} CPUs; gateway log level {args.gateway_log_level}", flush=True)  # fmt: skip
        print(f"gateway: {gateway_build()}" + ("; `interp` targets: interpreted" if args.also_interpreted else ""), flush=True)
        targets = [Target("direct", f"http://127.0.0.1:{upstream_port}/predict", upstream)]
        nginx = shutil.which("nginx") or (os.path.exists("/usr/sbin/nginx") and "/usr/sbin/nginx")
        if nginx:
            for name, forwarding in (("nginx", NGINX_FORWARDING), ("nginx bare", "")):
                nginx_port = free_port()
                nginx_dir = workdir / name.replace(" ", "-")
                for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
                    (nginx_dir / sub).mkdir(parents=True)
                conf = nginx_dir / "nginx.conf"
                conf.write_text(NGINX_CONF.format(dir=nginx_dir, upstream=upstream_port, port=nginx_port, forwarding=forwarding))
                servers.append(subprocess.Popen([nginx, "-c", str(conf), "-g", "daemon off;"]))
                wait_for(nginx_port)
                targets.append(Target(name, f"http://127.0.0.1:{nginx_port}/", servers[-1]))
        else:
            print("nginx is not installed (apt-get install -y nginx): no nginx figures", flush=True)
        data_dir = workdir / "dockyard"
        data_dir.mkdir()
        for workers in args.workers:
            for interpreted in (False, True) if args.also_interpreted else (False,):
                for signed in (False, True):
                    port = free_port()
                    config = write_store(data_dir, upstream_port, port) if not (data_dir / "dockyard.db").exists() else (
                        data_dir / "oci" / "config")  # fmt: skip
                    servers.append(start_gateway(data_dir, port, workers, not signed, args.gateway_log_level, workdir / "gateway.log",
                                                 interpreted))  # fmt: skip
                    wait_for(port)
                    url = f"http://127.0.0.1:{port}/{DEPLOYMENT_ID}/predict"
                    name = f"gw {workers}w {'signed' if signed else 'unsigned'}{' interp' if interpreted else ''}"
                    targets.append(Target(name, url, servers[-1], port, config if signed else None))
                    if signed and args.signed_anew:  # the same gateway, each request signed anew
                        targets.append(Target(f"{name} anew", url, servers[-1], port, config, anew=True))
        # Every target once per round, in turn: the machine's speed drifts over minutes, so
        # ratios are taken within a round (targets measured seconds apart), then their median.
        rounds: list[list[Result]] = []
        for number in range(args.rounds):
            rounds.append([measure(args, t.name, t.url, t.headers(), workdir, t.metrics_port, t.process, upstream, t.requests())
                           for t in targets])  # fmt: skip
            if args.rounds > 1:
                print(f"round {number + 1}: " + ", ".join(f"{r.target} {r.rps:.0f}" for r in rounds[-1]) + " req/s", flush=True)
        report(rounds, args.rate)
    finally:
        for server in servers:
            stop(server)
        stop(upstream)
        if args.keep:
            print(f"\nkept {workdir} (gateway.log has the gateway's output)")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def report(rounds: list[list[Result]], rate: int = 0) -> None:
    """Per target, the median over rounds of each figure, and of each round's ratios."""
    names = [r.target for r in rounds[0]]
    nginx_at = names.index("nginx") if "nginx" in names else None
    bare_at = names.index("nginx bare") if "nginx bare" in names else None
    print(f"\n{'target':<22}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}{'+p50 ms':>9}{'CPU us':>8}{'up us':>7}"
          f"   vs direct (req/s, p50)   vs nginx (req/s)   vs bare   gateway's own overhead")  # fmt: skip
    spreads = []
    for at, name in enumerate(names):
        mine = [round_[at] for round_ in rounds]
        direct = [round_[0] for round_ in rounds]
        rps, p50, p99 = median([r.rps for r in mine]), median([r.p50_ms for r in mine]), median([r.p99_ms for r in mine])
        added = median([r.p50_ms - d.p50_ms for r, d in zip(mine, direct)])
        vs_direct = median([r.rps / d.rps for r, d in zip(mine, direct)])
        vs_direct_p50 = median([r.p50_ms / d.p50_ms for r, d in zip(mine, direct)])
        versus_nginx = "-"
        if nginx_at is not None:
            ratios = [r.rps / round_[nginx_at].rps for r, round_ in zip(mine, rounds)]
            versus_nginx = f"{median(ratios):.2f}x"
            if len(rounds) > 1 and name.startswith("gw"):
                added_each = ", ".join(f"{r.p50_ms - d.p50_ms:.2f}" for r, d in zip(mine, direct))
                spreads.append(f"{name}: " + ", ".join(f"{x:.2f}x" for x in ratios) + f" (+p50 {added_each} ms)")
        versus_bare = "-"
        if bare_at is not None:
            versus_bare = f"{median([r.rps / round_[bare_at].rps for r, round_ in zip(mine, rounds)]):.2f}x"
        cpus = [r.cpu_us for r in mine if r.cpu_us is not None]
        overheads = [r.overhead_ms for r in mine if r.overhead_ms is not None]
        cpu = f"{median(cpus):.0f}" if cpus else "-"
        ups = [r.upstream_cpu_us for r in mine if r.upstream_cpu_us is not None]
        up = f"{median(ups):.0f}" if ups else "-"
        own = f"{median(overheads):.3f} ms mean" if overheads else ""
        print(f"{name:<22}{rps:>9.0f}{p50:>9.2f}{p99:>9.2f}{sum(r.errors for r in mine):>8}{added:>9.2f}{cpu:>8}{up:>7}"
              f"   {vs_direct:>5.2f}x, {vs_direct_p50:>5.2f}x{versus_nginx:>19}{versus_bare:>10}   {own}")  # fmt: skip
    if spreads:
        print("\nvs nginx (and +p50) in each round: " + "; ".join(spreads))
    offered = f" (under the default load; this run offered about {rate} req/s in all, and req/s is what was answered)" if rate else ""
    print("\nEach figure is the median over rounds; ratios are taken within each round, then their median."
          f"\n+p50: p50 added over direct. Goal: gateway >= 0.5x nginx's req/s, < 1 ms added p50{offered}."
          "\nnginx adds the gateway's forwarding headers (the same request reaches the upstream); nginx bare does not."
          "\nCPU us: CPU time (user + system) of that server's processes per request (the upstream's for direct,"
          "\n  nginx's, the gateway's: supervisor and workers)."
          "\nup us: the upstream's CPU time per request behind that target. It rises as the upstream is woken for"
          "\n  fewer requests at a time (a slower proxy in front), which is part of what a proxy costs on a shared machine."
          "\nThe gateway's own overhead: total minus upstream time per request, from its metrics (measured run only).")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=textwrap.dedent(__doc__ or "").strip().splitlines()[0])
    parser.add_argument("--connections", type=int, default=64, help="concurrent connections (default 64)")
    parser.add_argument("--duration", type=int, default=10, help="seconds of load per target (default 10)")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads (default 2)")
    parser.add_argument("--rounds", type=int, default=3, help="times every target is measured, in turn (default 3)")
    parser.add_argument("--workers", type=int, nargs="+", default=[0],
                        help="gateway worker counts to measure (default: 0 = dockyard's default, one per two cores)")  # fmt: skip
    parser.add_argument("--also-interpreted", action="store_true",
                        help="also measure each gateway with its request path interpreted (DOCKYARD_COMPILED=0)")
    parser.add_argument("--gateway-log-level", default="info", help="the gateway's --log-level (default info, as dockyard serve)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs, data dir)")
    parser.add_argument("--signed-anew", action="store_true",
                        help=f"also measure the signed gateway with every request signed anew ({ANEW_REQUESTS} signatures in turn, "
                             "each checked in full, as from SDK clients sending predictions of their own; wrk only)")  # fmt: skip
    parser.add_argument("--rate", type=int, default=0,
                        help="offer about this many requests/s in all (wrk only) instead of as many as are answered")  # fmt: skip
    parser.add_argument("--role", choices=["upstream"], help=argparse.SUPPRESS)
    parser.add_argument("role_args", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role == "upstream":
        serve_upstream(int(args.role_args[0]))
        return
    args.workers = [w or default_workers() for w in args.workers]
    if args.rate and not shutil.which("wrk"):
        parser.error("--rate needs wrk (apt-get install -y wrk)")
    if args.signed_anew and not shutil.which("wrk"):
        parser.error("--signed-anew needs wrk (apt-get install -y wrk)")
    orchestrate(args)


def default_workers() -> int:
    sys.path.insert(0, str(SRC))
    from dockyard.cli.gateway_workers import default_workers as dockyard_default

    return dockyard_default()


if __name__ == "__main__":
    main()

"""Predict load through the gateway while one instance of the deployment is killed, with the fate
of every request accounted for.

The deployment runs ECHO_SERVER_PY (shipped in the model artifact, on the base test image) as
several containers. Each instance writes ``RECV <opc-request-id>`` to its stdout *as soon as it
has read a request*, before answering; the run follows every container's log through the
engine, so the lines of a container that is killed still arrive (they were in the log pipe
before the kill). That log is the ground truth of delivery: a request is *delivered* when some
instance logged its id.

Every request carries a unique `opc-request-id` (the gateway keeps a sane caller id and passes
it upstream), and its outcome as the client saw it is classified (see `classify`):

- succeeded                a 2xx reply from an instance;
- failed after delivery    an instance received it but the reply failed (the killed instance's
                           requests in flight may end this way, with a clear 502; the gateway
                           may also send them to another instance once, which then shows as
                           delivered twice);
- failed before delivery   no instance received it and the gateway answered a clear 4xx
                           (for instance 429): the caller knows nothing happened;
- lost                     no instance received it, and the client either learned nothing (no
                           HTTP reply: a dropped connection or a client timeout) or got a 5xx.
                           Also a request with no HTTP reply at all, delivered or not: its
                           caller never learned the outcome. Must be 0.

Also reported: requests received twice (only a request an instance read and then died on,
unanswered, may be) and 2xx replies for requests no instance logged (would mean the harness
misses deliveries).

Used by tests/integration/test_gateway_load.py and benchmarks/predict_kill_load.py.
"""

from __future__ import annotations

import asyncio
import collections
import threading
import time
import uuid
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

# The instance: HTTP/1.1 keep-alive (as uvicorn, Flask and most model servers), so the gateway
# holds pooled connections to the instance that gets killed, the hard case.
ECHO_SERVER_PY = r'''
import http.server, json, os, socket, socketserver, sys, threading

PORT = int(os.environ.get("PORT", "8080"))
HOST = socket.gethostname()  # Docker sets it to the container id's first 12 characters
LOCK = threading.Lock()


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # else each reply waits out the client's delayed ACK (40 ms)

    def reply(self, code, body):
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        self.reply(200 if self.path == "/health" else 404, {"status": "ok", "instance": HOST})

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        request_id = self.headers.get("opc-request-id", "-")
        with LOCK:  # one whole line per request, written before the answer
            sys.stdout.write("RECV " + request_id + "\n")
            sys.stdout.flush()
        self.reply(200, {"instance": HOST, "request_id": request_id, "bytes": len(body)})

    def log_message(self, *args):
        pass


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128


print("echo instance", HOST, "on", PORT, flush=True)
Server(("0.0.0.0", PORT), Handler).serve_forever()
'''
ECHO_CMD = ["python3", "/opt/ds/model/deployed_model/server.py"]
ECHO_PORT = 8080


def echo_artifact(path: Path) -> Path:
    """A model artifact (zip) holding ECHO_SERVER_PY as server.py."""
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("server.py", ECHO_SERVER_PY)
    return path


# --- classification -----------------------------------------------------------------------------


@dataclass
class Outcome:
    """One request as the client saw it."""

    request_id: str
    started: float  # monotonic
    ended: float = 0.0
    status: int | None = None  # None: no HTTP reply at all
    instance: str | None = None  # the `instance` an echo reply named
    error: str | None = None  # the exception (no reply) or the gateway's error message


@dataclass
class Report:
    sent: int = 0
    succeeded: int = 0
    failed_after_delivery: int = 0
    failed_before_delivery: int = 0
    lost: int = 0
    delivered_twice: int = 0
    answered_undelivered: int = 0  # 2xx for a request no instance logged: a hole in the ground truth
    statuses: collections.Counter[str] = field(default_factory=collections.Counter)
    lost_examples: list[str] = field(default_factory=list)
    served_by: collections.Counter[str] = field(default_factory=collections.Counter)
    duration_s: float = 0.0

    def figures(self) -> str:
        return (f"sent {self.sent}, succeeded {self.succeeded}, failed before delivery {self.failed_before_delivery}, "
                f"lost {self.lost}")  # fmt: skip

    def details(self) -> str:
        return (f"failed after delivery {self.failed_after_delivery}, delivered twice {self.delivered_twice}, "
                f"2xx without delivery {self.answered_undelivered}; outcomes {dict(self.statuses)}; "
                f"served by {dict(self.served_by)}; {self.duration_s:.1f} s"
                + (f"; lost e.g. {self.lost_examples}" if self.lost_examples else ""))  # fmt: skip


def classify(outcomes: list[Outcome], receipts: dict[str, int]) -> Report:
    """`receipts`: how many times instances logged each request id."""
    report = Report(sent=len(outcomes))
    for o in outcomes:
        delivered = receipts.get(o.request_id, 0)
        report.statuses[str(o.status) if o.status is not None else f"no reply ({(o.error or '').split(':')[0]})"] += 1
        if delivered > 1:
            report.delivered_twice += 1
        if o.status is None:
            report.lost += 1
        elif 200 <= o.status < 300:
            report.succeeded += 1
            report.served_by[o.instance or "?"] += 1
            if not delivered:
                report.answered_undelivered += 1
            continue
        elif delivered:
            report.failed_after_delivery += 1
            continue
        elif o.status >= 500:
            report.lost += 1
        else:
            report.failed_before_delivery += 1
            continue
        if len(report.lost_examples) < 5:
            report.lost_examples.append(f"{o.request_id}: {o.status} {o.error}")
    return report


# --- the ground truth: every instance's log ---------------------------------------------------------


class DeliveryLog:
    """Follows the log of every container of the deployment, from before the load starts until
    it has been read to the end, and counts the request ids each one logged."""

    def __init__(self, engine: Any, list_containers: Callable[[], list[Any]]) -> None:
        self.engine = engine
        self.list_containers = list_containers
        self._lock = threading.Lock()
        self._followed: dict[str, Any] = {}  # container id -> its log stream
        self._counts: dict[str, collections.Counter[str]] = {}  # container id -> request id -> receipts
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None

    def start(self) -> DeliveryLog:
        self.attach_new()
        self._poller = threading.Thread(target=self._poll, daemon=True)
        self._poller.start()
        return self

    def attach_new(self) -> None:
        for container in self.list_containers():
            with self._lock:
                if container.id in self._followed:
                    continue
                self._followed[container.id] = None
                self._counts[container.id] = collections.Counter()
            thread = threading.Thread(target=self._follow, args=(container,), daemon=True)
            thread.start()
            self._threads.append(thread)

    def _poll(self) -> None:
        while not self._stop.wait(0.3):
            try:
                self.attach_new()
            except Exception:  # the engine busy for a moment: the next round catches up
                pass

    def _follow(self, container: Any) -> None:
        try:
            stream = container.logs(stream=True, follow=True, stdout=True, stderr=False)
        except Exception:
            return
        with self._lock:
            self._followed[container.id] = stream
        counts = collections.Counter[str]()
        pending = b""
        try:
            for chunk in stream:
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    if line.startswith(b"RECV "):
                        counts[line[5:].decode("latin-1").strip()] += 1
        except Exception:  # the stream broke off (container removed): what was read stands
            pass
        with self._lock:  # the final full read in receipts() may be more complete: keep the larger
            if sum(counts.values()) >= sum(self._counts[container.id].values()):
                self._counts[container.id] = counts

    def receipts(self) -> dict[str, int]:
        """Stop following; each container's log read once more in full where it still exists."""
        self._stop.set()
        if self._poller is not None:
            self._poller.join(5)
        with self._lock:
            followed = dict(self._followed)
        for container_id, stream in followed.items():
            try:
                full = self.engine.containers.get(container_id).logs(stdout=True, stderr=False)
            except Exception:  # removed: its followed stream has ended and holds everything
                full = None
            if full is not None:
                counts = collections.Counter(
                    line[5:].decode("latin-1").strip() for line in full.split(b"\n") if line.startswith(b"RECV ")
                )
                with self._lock:
                    if sum(counts.values()) >= sum(self._counts[container_id].values()):
                        self._counts[container_id] = counts
            if stream is not None:
                try:
                    stream.close()
                except Exception:
                    pass
        for thread in self._threads:
            thread.join(10)
        total: collections.Counter[str] = collections.Counter()
        with self._lock:
            for counts in self._counts.values():
                total.update(counts)
        return dict(total)

    def by_container(self) -> dict[str, collections.Counter[str]]:
        """Request ids per container id (complete once `receipts()` has run)."""
        with self._lock:
            return {cid: collections.Counter(counts) for cid, counts in self._counts.items()}


# --- the load -----------------------------------------------------------------------------------------


@dataclass
class LoadPlan:
    requests: int = 2000
    concurrency: int = 16
    rate_per_s: float | None = None  # None: as fast as the workers go
    kill_after: float = 0.35  # the fraction of requests sent when one instance is killed
    timeout_s: float = 30.0


async def run_load(
    url: str, plan: LoadPlan, auth: httpx.Auth | None, kill: Callable[[], Any], body: bytes = b'{"line": "12"}'
) -> tuple[list[Outcome], float]:
    """Send `plan.requests` POSTs to `url`; call `kill()` (in a thread) once `kill_after` of them
    have been sent. Returns every outcome and the monotonic time of the kill."""
    outcomes: list[Outcome] = []
    numbers = iter(range(plan.requests))
    killed_at = 0.0
    kill_at = int(plan.requests * plan.kill_after)
    kill_task: asyncio.Future[Any] | None = None
    started = time.monotonic()
    run = uuid.uuid4().hex[:8]

    async def one(client: httpx.AsyncClient, n: int) -> None:
        nonlocal killed_at, kill_task
        if n == kill_at:
            killed_at = time.monotonic()
            kill_task = asyncio.get_running_loop().run_in_executor(None, kill)
        if plan.rate_per_s:
            delay = started + n / plan.rate_per_s - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        outcome = Outcome(request_id=f"kl-{run}-{n:06d}", started=time.monotonic())
        outcomes.append(outcome)
        try:
            reply = await client.post(url, content=body, headers={"opc-request-id": outcome.request_id,
                                                                  "content-type": "application/json"})  # fmt: skip
            outcome.status = reply.status_code
            try:
                document = reply.json()
            except ValueError:
                document = {}
            if reply.status_code < 300:
                outcome.instance = document.get("instance")
            else:
                outcome.error = str(document.get("message") or reply.text[:200])
        except httpx.HTTPError as exc:
            outcome.error = f"{type(exc).__name__}: {exc}"
        outcome.ended = time.monotonic()

    async def worker(client: httpx.AsyncClient) -> None:
        for n in numbers:
            await one(client, n)

    # Idle connections are dropped after 2 s, well before the server's keep-alive timeout (5 s
    # in uvicorn): at an equal 5 s (httpx's default) a request can go out on a connection the
    # server is closing at that moment and end with no reply, never having reached the gateway.
    limits = httpx.Limits(max_connections=plan.concurrency, max_keepalive_connections=plan.concurrency, keepalive_expiry=2)
    async with httpx.AsyncClient(auth=auth, timeout=plan.timeout_s, limits=limits, trust_env=False) as client:
        await asyncio.gather(*(worker(client) for _ in range(plan.concurrency)))
    if kill_task is not None:
        await kill_task
    return outcomes, killed_at


async def spread(url: str, auth: httpx.Auth | None, count: int) -> collections.Counter[str]:
    """Which instances answer `count` sequential-ish requests (a few at a time)."""
    seen: collections.Counter[str] = collections.Counter()
    async with httpx.AsyncClient(auth=auth, timeout=30, trust_env=False) as client:
        async def one() -> None:
            reply = await client.post(url, content=b"{}", headers={"content-type": "application/json"})
            seen[reply.json().get("instance", f"HTTP {reply.status_code}") if reply.status_code == 200
                 else f"HTTP {reply.status_code}"] += 1  # fmt: skip

        for _ in range(count // 3):
            await asyncio.gather(one(), one(), one())
    return seen


# --- the deployment, through the SDK as the administrator ------------------------------------------


def admin_config(data_dir: Path) -> dict[str, Any]:
    """The OCI config the server wrote for its administrator (`<data_dir>/oci/config`)."""
    import oci

    return dict(oci.config.from_file(str(data_dir / "oci" / "config")))


def admin_auth(data_dir: Path) -> httpx.Auth | None:
    """An httpx auth that signs as the administrator (None for a server without the config file)."""
    from dockyard.auth.client import signing_from_config

    path = data_dir / "oci" / "config"
    signing = signing_from_config(path) if path.exists() else None
    return signing.auth if signing else None


def create_echo_deployment(ds: Any, compartment_id: str, artifact: Path, image: str, count: int, name: str) -> str:
    """Project, model with the echo artifact, and a deployment of `count` echo instances on `image`;
    returns the deployment id (not yet ACTIVE)."""
    from oci.data_science import models as m

    project = ds.create_project(m.CreateProjectDetails(compartment_id=compartment_id, display_name=name)).data
    model = ds.create_model(m.CreateModelDetails(compartment_id=compartment_id, project_id=project.id, display_name=name)).data
    with artifact.open("rb") as body:
        ds.create_model_artifact(model.id, body, content_disposition=f'attachment; filename="{artifact.name}"')
    details = m.CreateModelDeploymentDetails(
        display_name=name,
        project_id=project.id,
        compartment_id=compartment_id,
        model_deployment_configuration_details=m.SingleModelDeploymentConfigurationDetails(
            model_configuration_details=m.ModelConfigurationDetails(
                model_id=model.id,
                instance_configuration=m.InstanceConfiguration(
                    instance_shape_name="VM.Standard.E4.Flex",
                    model_deployment_instance_shape_config_details=m.ModelDeploymentInstanceShapeConfigDetails(
                        ocpus=1, memory_in_gbs=1),
                ),
                scaling_policy=m.FixedSizeScalingPolicy(instance_count=count),
                bandwidth_mbps=10,
            ),
            environment_configuration_details=m.OcirModelDeploymentEnvironmentConfigurationDetails(
                image=image, server_port=ECHO_PORT, health_check_port=ECHO_PORT, cmd=ECHO_CMD),
        ),
    )  # fmt: skip
    return str(ds.create_model_deployment(details).data.id)


def instances(api_url: str, auth: httpx.Auth | None, deployment_id: str) -> list[dict[str, Any]]:
    """dockyard's instances view of the deployment."""
    reply = httpx.get(f"{api_url}/20190101/modelDeployments/{deployment_id}/instances", auth=auth, timeout=30, trust_env=False)
    reply.raise_for_status()
    return list(reply.json())


def serving_instances(api_url: str, auth: httpx.Auth | None, deployment_id: str) -> list[dict[str, Any]]:
    """The instances the gateway routes to: running and healthy."""
    return [i for i in instances(api_url, auth, deployment_id) if i.get("state") == "RUNNING" and i.get("health") == "HEALTHY"]


def wait_serving(api_url: str, auth: httpx.Auth | None, deployment_id: str, count: int, timeout_s: float) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout_s
    seen: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        seen = serving_instances(api_url, auth, deployment_id)
        if len(seen) == count:
            return seen
        time.sleep(0.3)
    raise AssertionError(f"{deployment_id}: {len(seen)} of {count} instances serving after {timeout_s} s: "
                         f"{instances(api_url, auth, deployment_id)}")  # fmt: skip


def containers_by_instance(engine: Any, api_url: str, auth: httpx.Auth | None, deployment_id: str) -> list[Any]:
    """The deployment's containers, found by the instance ids dockyard reports (its container names)."""
    import docker.errors

    found = []
    for instance in instances(api_url, auth, deployment_id):
        try:
            found.append(engine.containers.get(instance["instanceId"]))
        except docker.errors.NotFound:
            pass
    return found

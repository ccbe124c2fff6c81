"""Helpers for the end-to-end deployment tests on a real Docker engine (test_deployments_docker).

One dockyard process (`LiveServer`, runtime docker) serves a whole module. It has to be one at
a time: every docker-runtime dockyard removes the managed containers its own database does not
know, so two servers on one engine would remove each other's instances. The `Harness` restarts
it when a test needs that (a SIGKILL, other settings), on the same data directory and port, so
the `oci` client keeps working.

Everything a run creates is found again for cleanup, even after a failure: containers made by
dockyard by their `dockyard.deployment-id` label (the ids are recorded when the deployments are
created), containers and images the tests make themselves by the label RUN_LABEL=RUN, image
references under this run's registry namespace (`127.0.0.1:500x/dyit<run>/...`) by name, and the
registry manifests pushed by digest.
"""

from __future__ import annotations

import io
import os
import secrets
import tarfile
import threading
import time
import zipfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import docker
import docker.errors
import httpx
import oci
import pytest
from oci.data_science import models as m

from tests.support.oci_config import COMPARTMENT
from tests.support.server import LiveServer

T = TypeVar("T")

REPO = Path(__file__).resolve().parents[2]
RUN = secrets.token_hex(3)
RUN_LABEL = "dockyard-it.run"  # on the containers and images the tests make themselves
NAMESPACE = f"dyit{RUN}"  # this run's repositories in the test registries
OPEN_REGISTRY = "127.0.0.1:5001"
AUTH_REGISTRY = "127.0.0.1:5002"
AUTH_USER = os.environ.get("DOCKYARD_TEST_REGISTRY_USER", "dockyard")
AUTH_PASSWORD = os.environ.get("DOCKYARD_TEST_REGISTRY_PASSWORD", "dockyard-secret")
BASE = f"{OPEN_REGISTRY}/dockyard-test/base:bookworm"
NOCURL = f"{OPEN_REGISTRY}/dockyard-test/base-nocurl:bookworm"
LDA = f"{OPEN_REGISTRY}/dockyard-test/lda-flask:1.0.0"
LDA_ZIP = REPO / "build" / "lda-artifact.zip"
# This run's servers label their containers with a prefix of their own, so no other dockyard on
# the engine (another test run, a developer's own) removes them or is removed by them.
LABEL_PREFIX = f"dockyard-it{RUN}"
MANAGED = f"{LABEL_PREFIX}.managed"
DEPLOYMENT_LABEL = f"{LABEL_PREFIX}.deployment-id"
NS = 1_000_000_000

# Shortened health settings (H1/H2 scaled down) so failures show within seconds. The start
# period and the deadline leave room for the LDA server's start (2-3 s, 10 s on a busy machine).
HEALTH = {"start_period_s": 10, "interval_s": 1, "timeout_s": 1, "retries": 2, "deadline_s": 30}
SERVER_ENV = {
    "DOCKYARD_HEALTH_START_PERIOD_S": str(HEALTH["start_period_s"]),
    "DOCKYARD_HEALTH_INTERVAL_S": str(HEALTH["interval_s"]),
    "DOCKYARD_HEALTH_TIMEOUT_S": str(HEALTH["timeout_s"]),
    "DOCKYARD_HEALTH_RETRIES": str(HEALTH["retries"]),
    "DOCKYARD_HEALTH_DEADLINE_S": str(HEALTH["deadline_s"]),
    "DOCKYARD_RECONCILE_INTERVAL_S": "0.5",
    "DOCKYARD_LABEL_PREFIX": LABEL_PREFIX,
}

MANIFEST_TYPES = ", ".join([
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
])

# A BYOC server for the base image, shipped in the artifact: GET /health is 200 unless
# MODE=health500 or /tmp/fail exists (the test creates it with `docker exec`), POST /predict
# echoes the version and the model file, so a test can tell which configuration answers.
SERVER_PY = r'''
import http.server, json, os, socketserver, sys

PORT = int(os.environ.get("PORT", "8080"))
MODE = os.environ.get("MODE", "ok")
VERSION = os.environ.get("APP_VERSION", "artifact")
HERE = os.path.dirname(os.path.abspath(__file__))


class Handler(http.server.BaseHTTPRequestHandler):
    def reply(self, code, body):
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path == "/health":
            failing = MODE == "health500" or os.path.exists("/tmp/fail")
            self.reply(500 if failing else 200, {"status": "failing" if failing else "ok"})
        else:
            self.reply(404, {"error": "no such path"})

    def do_POST(self):
        if self.path != "/predict":
            return self.reply(404, {"error": "no such path"})
        model = ""
        if os.path.exists(os.path.join(HERE, "model.txt")):
            model = open(os.path.join(HERE, "model.txt")).read()
        self.reply(200, {"version": VERSION, "model": model, "id": os.environ.get("MODEL_DEPLOYMENT_OCID")})

    def log_message(self, *args):
        pass


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True


print("serving", VERSION, "on", PORT, "mode", MODE, flush=True)
Server(("0.0.0.0", PORT), Handler).serve_forever()
'''
SERVER_CMD = ["python3", "/opt/ds/model/deployed_model/server.py"]


# --- infrastructure ------------------------------------------------------------------------------


def infra_missing(what: str, command: str) -> None:
    """Fail (CI: DOCKYARD_TEST_REQUIRE_INFRA=1) or skip, naming the command that fixes it."""
    message = f"{what}; run `{command}` (as root) first"
    if os.environ.get("DOCKYARD_TEST_REQUIRE_INFRA") == "1":
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def registry_status(host: str, auth: tuple[str, str] | None = None) -> int | None:
    try:
        return httpx.get(f"http://{host}/v2/", auth=auth, timeout=3, trust_env=False).status_code
    except httpx.HTTPError:
        return None


def registry_digest(image: str, auth: tuple[str, str] | None = None) -> str | None:
    """The registry's digest of `host/name:tag` (None when it does not have it)."""
    host, rest = image.split("/", 1)
    name, tag = rest.rsplit(":", 1)
    try:
        response = httpx.head(f"http://{host}/v2/{name}/manifests/{tag}", headers={"Accept": MANIFEST_TYPES},
                              auth=auth, timeout=5, trust_env=False)
    except httpx.HTTPError:
        return None
    return response.headers.get("Docker-Content-Digest") if response.status_code == 200 else None


def check_infra() -> docker.DockerClient:
    """The engine, both registries, the three test images and the LDA artifact, or fail/skip."""
    try:
        engine = docker.from_env(version="auto", timeout=120)
        engine.ping()
    except Exception as exc:  # any failure to reach the engine means there is none
        infra_missing(f"no Docker engine answers ({exc})", "bash scripts/infra/docker.sh")
    if registry_status(OPEN_REGISTRY) != 200 or registry_status(AUTH_REGISTRY) != 401 or \
            registry_status(AUTH_REGISTRY, (AUTH_USER, AUTH_PASSWORD)) != 200:
        infra_missing(f"the test registries on {OPEN_REGISTRY} (open) and {AUTH_REGISTRY} (basic auth) "
                      "do not answer as expected", "bash scripts/infra/registry.sh")
    for image in (BASE, NOCURL, LDA):
        if registry_digest(image) is None:
            infra_missing(f"the test image {image} is not in the registry",
                          "bash scripts/infra/images.sh")
        try:
            engine.images.get(image)
        except docker.errors.ImageNotFound:
            repository, tag = image.rsplit(":", 1)
            engine.images.pull(repository, tag)  # the tests build on them locally
    if not LDA_ZIP.is_file():
        infra_missing(f"the LDA example artifact {LDA_ZIP} is missing", "bash scripts/infra/lda-artifact.sh")
    return engine


# --- cleanup ----------------------------------------------------------------------------------------


@dataclass
class Janitor:
    """Remembers what a run creates and removes all of it, tolerating what is already gone."""

    engine: docker.DockerClient
    deployments: set[str] = field(default_factory=set)
    manifests: set[tuple[str, str, str]] = field(default_factory=set)  # registry, repository, digest
    lock: threading.Lock = field(default_factory=threading.Lock)

    def deployment(self, deployment_id: str) -> str:
        with self.lock:
            self.deployments.add(deployment_id)
        return deployment_id

    def manifest(self, registry: str, repository: str, digest: str) -> None:
        with self.lock:
            self.manifests.add((registry, repository, digest))

    def containers(self) -> list[Any]:
        found = {c.id: c for c in self.engine.containers.list(all=True, filters={"label": f"{RUN_LABEL}={RUN}"})}
        for deployment_id in sorted(self.deployments):
            for c in self.engine.containers.list(all=True, filters={"label": f"{DEPLOYMENT_LABEL}={deployment_id}"}):
                found[c.id] = c
        return list(found.values())

    def clean(self) -> list[str]:
        """Remove everything; returns what could not be removed (for the test report)."""
        problems: list[str] = []
        for container in self.containers():
            try:
                container.remove(force=True, v=True)
            except docker.errors.NotFound:
                pass
            except docker.errors.APIError as exc:
                problems.append(f"container {container.name}: {exc}")
        prefixes = tuple(f"{registry}/{NAMESPACE}/" for registry in (OPEN_REGISTRY, AUTH_REGISTRY))
        for image in self.engine.images.list(all=True):
            refs = image.tags + image.attrs.get("RepoDigests", [])
            for ref in refs:
                if ref.startswith(prefixes):
                    try:
                        self.engine.images.remove(ref, force=False, noprune=False)
                    except docker.errors.NotFound:
                        pass
                    except docker.errors.APIError as exc:
                        problems.append(f"image reference {ref}: {exc}")
        for image in self.engine.images.list(all=True, filters={"label": f"{RUN_LABEL}={RUN}"}):
            try:
                self.engine.images.remove(image.id, force=True)
            except docker.errors.NotFound:
                pass
            except docker.errors.APIError as exc:
                problems.append(f"image {image.id}: {exc}")
        for registry, repository, digest in sorted(self.manifests):
            auth = (AUTH_USER, AUTH_PASSWORD) if registry == AUTH_REGISTRY else None
            try:
                response = httpx.delete(f"http://{registry}/v2/{repository}/manifests/{digest}", auth=auth,
                                        timeout=10, trust_env=False)
                if response.status_code not in (202, 404):
                    problems.append(f"manifest {registry}/{repository}@{digest}: HTTP {response.status_code}")
            except httpx.HTTPError as exc:
                problems.append(f"manifest {registry}/{repository}@{digest}: {exc}")
        return problems


# --- images -------------------------------------------------------------------------------------------


def build(engine: docker.DockerClient, dockerfile: str, tag: str, files: dict[str, bytes] | None = None) -> str:
    """Build from an in-memory context, labelled with this run; return the image id."""
    context = io.BytesIO()
    with tarfile.open(fileobj=context, mode="w") as tar:
        for name, data in {"Dockerfile": dockerfile.encode(), **(files or {})}.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    context.seek(0)
    image, _ = engine.images.build(fileobj=context, custom_context=True, tag=tag, rm=True, forcerm=True,
                                   labels={RUN_LABEL: RUN})
    return str(image.id)


def push(engine: docker.DockerClient, janitor: Janitor, image: str, auth: dict[str, str] | None = None) -> str:
    """Push `registry/name:tag`; record and return the registry's digest."""
    registry, rest = image.split("/", 1)
    repository, tag = rest.rsplit(":", 1)
    for line in engine.images.push(f"{registry}/{repository}", tag, stream=True, decode=True, auth_config=auth):
        if "error" in line:
            raise AssertionError(f"push of {image} failed: {line['error']}")
    digest = registry_digest(image, (auth["username"], auth["password"]) if auth else None)
    assert digest, f"{image} was pushed but the registry does not list it"
    janitor.manifest(registry, repository, digest)
    return digest


def untag(engine: docker.DockerClient, *refs: str) -> None:
    """Remove image references (not images); one already gone is fine."""
    for ref in refs:
        try:
            engine.images.remove(ref)
        except docker.errors.NotFound:
            pass


def run_image(name: str, tag: str, registry: str = OPEN_REGISTRY) -> str:
    return f"{registry}/{NAMESPACE}/{name}:{tag}"


# --- the dockyard process and its API --------------------------------------------------------------


@dataclass
class Harness:
    """One docker-runtime dockyard at a time, driven through the `oci` SDK and plain HTTP."""

    root: Path
    engine: docker.DockerClient
    janitor: Janitor
    env: dict[str, str] = field(default_factory=lambda: dict(SERVER_ENV))
    server: LiveServer | None = None
    oci_config: dict[str, str] = field(default_factory=dict)
    catalog: dict[str, str] = field(default_factory=dict)  # project id, model ids by name

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    def start(self, extra_env: dict[str, str] | None = None, port: int | None = None) -> LiveServer:
        env = dict(self.env) | (extra_env or {})
        server = LiveServer(self.data_dir, runtime="docker", env=env)
        if port is not None:
            server.port = port
        self.server = server.start(timeout_s=60)
        return self.server

    def restart(self, *, kill: bool, extra_env: dict[str, str] | None = None) -> LiveServer:
        """SIGKILL (kill=True) or stop the server, then start a new one on the same data and port."""
        assert self.server is not None
        port = self.server.port
        self.server.kill() if kill else self.server.stop()
        return self.start(extra_env, port)

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()

    def record_every_deployment(self) -> None:
        """Safety net for cleanup: a create whose reply was lost still made a deployment."""
        if self.server is None or self.server.process is None or self.server.process.poll() is not None:
            return
        try:
            listed = oci.pagination.list_call_get_all_results(self.ds.list_model_deployments,
                                                              compartment_id=COMPARTMENT).data
        except Exception:  # best effort: the ids recorded at create time remain
            return
        for deployment in listed:
            self.janitor.deployment(deployment.id)

    def ensure_running(self) -> None:
        """A test that failed half-way through a restart leaves no server: start one again."""
        if self.server is None or self.server.process is None or self.server.process.poll() is not None:
            self.start(port=self.server.port if self.server else None)

    @property
    def url(self) -> str:
        assert self.server is not None
        return self.server.url

    @property
    def ds(self) -> oci.data_science.DataScienceClient:
        assert self.server is not None
        if not self.oci_config:  # the administrator's config, which the first start wrote
            self.oci_config = self.server.oci_config()
        return oci.data_science.DataScienceClient(self.oci_config, service_endpoint=self.url)

    def http(self) -> httpx.Client:
        assert self.server is not None
        return httpx.Client(base_url=f"{self.url}/20190101", timeout=30, trust_env=False, auth=self.server.auth)

    def server_log(self) -> str:
        return self.server.log()[-6000:] if self.server else ""

    # --- catalog -----------------------------------------------------------------------------

    def project(self) -> str:
        if "project" not in self.catalog:
            self.catalog["project"] = self.ds.create_project(
                m.CreateProjectDetails(compartment_id=COMPARTMENT, display_name=f"it-{RUN}")).data.id
        return self.catalog["project"]

    def model(self, name: str, zip_path: Path) -> str:
        """A model with `zip_path` as its artifact (A1), created once per name."""
        if name not in self.catalog:
            ds = self.ds
            model = ds.create_model(m.CreateModelDetails(compartment_id=COMPARTMENT, project_id=self.project(),
                                                         display_name=f"{name}-{RUN}")).data
            with zip_path.open("rb") as body:
                ds.create_model_artifact(model.id, body, content_disposition=f'attachment; filename="{zip_path.name}"')
            self.catalog[name] = model.id
        return self.catalog[name]

    def server_model(self) -> str:
        """The model whose artifact holds SERVER_PY (and a model.txt)."""
        path = self.root / "server-artifact.zip"
        if not path.exists():
            with zipfile.ZipFile(path, "w") as archive:
                archive.writestr("server.py", SERVER_PY)
                archive.writestr("model.txt", "weights-v1")
        return self.model("server", path)

    # --- deployments ---------------------------------------------------------------------------

    def create(self, *, model_id: str, image: str, name: str, image_digest: str | None = None,
               server_port: int | None = None, health_port: int | None = None, entrypoint: list[str] | None = None,
               cmd: list[str] | None = None, env: dict[str, str] | None = None, count: int = 1,
               memory_gb: float = 1.0) -> tuple[str, str]:
        """CreateModelDeployment through the SDK; returns (deployment id, work request id)."""
        details = m.CreateModelDeploymentDetails(
            display_name=f"{name}-{RUN}",
            project_id=self.project(),
            compartment_id=COMPARTMENT,
            model_deployment_configuration_details=m.SingleModelDeploymentConfigurationDetails(
                model_configuration_details=m.ModelConfigurationDetails(
                    model_id=model_id,
                    instance_configuration=m.InstanceConfiguration(
                        instance_shape_name="VM.Standard.E4.Flex",
                        model_deployment_instance_shape_config_details=m.ModelDeploymentInstanceShapeConfigDetails(
                            ocpus=1, memory_in_gbs=memory_gb),
                    ),
                    scaling_policy=m.FixedSizeScalingPolicy(instance_count=count),
                    bandwidth_mbps=10,
                ),
                environment_configuration_details=m.OcirModelDeploymentEnvironmentConfigurationDetails(
                    image=image, image_digest=image_digest, server_port=server_port, health_check_port=health_port,
                    entrypoint=entrypoint, cmd=cmd, environment_variables=env,
                ),
            ),
        )
        response = self.ds.create_model_deployment(details)
        self.janitor.deployment(response.data.id)
        return response.data.id, response.headers["opc-work-request-id"]

    def create_server(self, name: str, *, env: dict[str, str] | None = None, count: int = 1,
                      image: str = BASE) -> tuple[str, str]:
        """A deployment of SERVER_PY from the artifact on the base image, port 8080."""
        return self.create(model_id=self.server_model(), image=image, name=name, server_port=8080,
                           health_port=8080, cmd=SERVER_CMD, env=env, count=count)

    def update_environment(self, deployment_id: str, **fields: Any) -> str:
        update = m.UpdateModelDeploymentDetails(
            model_deployment_configuration_details=m.UpdateSingleModelDeploymentConfigurationDetails(
                environment_configuration_details=m.UpdateOcirModelDeploymentEnvironmentConfigurationDetails(**fields)))
        return str(self.ds.update_model_deployment(deployment_id, update).headers["opc-work-request-id"])

    def update_count(self, deployment_id: str, count: int) -> str:
        update = m.UpdateModelDeploymentDetails(
            model_deployment_configuration_details=m.UpdateSingleModelDeploymentConfigurationDetails(
                model_configuration_details=m.UpdateModelConfigurationDetails(
                    scaling_policy=m.FixedSizeScalingPolicy(instance_count=count))))
        return str(self.ds.update_model_deployment(deployment_id, update).headers["opc-work-request-id"])

    def get(self, deployment_id: str) -> m.ModelDeployment:
        return self.ds.get_model_deployment(deployment_id).data

    def delete_quietly(self, deployment_ids: Iterable[str]) -> None:
        """Best effort: let dockyard stop the instances (the janitor removes what is left)."""
        if self.server is None or self.server.process is None or self.server.process.poll() is not None:
            return
        with self.http() as http:
            for deployment_id in deployment_ids:
                try:
                    http.delete(f"/modelDeployments/{deployment_id}")
                except httpx.HTTPError:
                    pass

    def wait_work_request(self, wr_id: str, timeout_s: float = 60) -> m.WorkRequest:
        ds = self.ds
        deadline = time.monotonic() + timeout_s
        while True:
            wr = ds.get_work_request(wr_id).data
            if wr.status in ("SUCCEEDED", "FAILED", "CANCELED"):
                return wr
            if time.monotonic() > deadline:
                raise AssertionError(f"work request {wr_id} still {wr.status} after {timeout_s} s; "
                                     f"logs: {self.logs(wr_id)}\nserver log:\n{self.server_log()}")
            time.sleep(0.2)

    def logs(self, wr_id: str) -> list[str]:
        return [e.message for e in self.ds.list_work_request_logs(wr_id).data]

    def errors(self, wr_id: str) -> list[str]:
        return [e.message for e in self.ds.list_work_request_errors(wr_id).data]

    def instances(self, deployment_id: str) -> list[dict[str, Any]]:
        with self.http() as http:
            response = http.get(f"/modelDeployments/{deployment_id}/instances")
        assert response.status_code == 200, response.text
        return list(response.json())

    def watch(self, deployment_id: str, done: Callable[[m.ModelDeployment], bool], timeout_s: float,
              every_s: float = 0.1) -> tuple[m.ModelDeployment, list[str]]:
        """Poll the deployment until `done`; returns it and every lifecycleState seen, in order."""
        ds = self.ds
        seen: list[str] = []
        deadline = time.monotonic() + timeout_s
        while True:
            got = ds.get_model_deployment(deployment_id).data
            if not seen or seen[-1] != got.lifecycle_state:
                seen.append(got.lifecycle_state)
            if done(got):
                return got, seen
            if time.monotonic() > deadline:
                raise AssertionError(f"{deployment_id}: states {seen}, last details {got.lifecycle_details!r} "
                                     f"after {timeout_s} s\nserver log:\n{self.server_log()}")
            time.sleep(every_s)


# --- the engine's view ----------------------------------------------------------------------------------


def containers_of(engine: docker.DockerClient, deployment_id: str, running_only: bool = False) -> list[Any]:
    return engine.containers.list(all=not running_only, filters={"label": f"{DEPLOYMENT_LABEL}={deployment_id}"})


def host_port(container: Any, container_port: int) -> int | None:
    bindings = (container.attrs.get("NetworkSettings") or {}).get("Ports") or {}
    for binding in bindings.get(f"{container_port}/tcp") or []:
        if binding.get("HostPort", "").isdigit():
            return int(binding["HostPort"])
    return None


def until(predicate: Callable[[], T], timeout_s: float, every_s: float = 0.1, what: str = "condition") -> T:
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout_s} s (last: {value!r})")
        time.sleep(every_s)


def running_harness(root: Path) -> Iterator[Harness]:
    """A started Harness under `root` for a module fixture (yield from it); on the way out it
    stops the server and fails the module when cleanup left anything behind."""
    engine = check_infra()
    h = Harness(root=root, engine=engine, janitor=Janitor(engine))
    try:
        h.start()
        yield h
    finally:
        h.record_every_deployment()
        h.stop()
        problems = h.janitor.clean()
        engine.close()
        if problems:
            pytest.fail("cleanup left things behind:\n" + "\n".join(problems), pytrace=False)

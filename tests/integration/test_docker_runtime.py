"""DockerRuntime against the real engine: real images, real containers, real ports.

Needs the engine (scripts/infra/docker.sh) and the test base images (scripts/infra/images.sh):
``dockyard-test/base:bookworm`` (python3 + curl) and ``dockyard-test/base-nocurl:bookworm``.
The pull tests also use the test registries on 127.0.0.1:5001 (open) and :5002 (basic auth,
scripts/infra/registry.sh) and are skipped, saying why, when those do not answer.

Every runtime here uses a label prefix unique to this run, and everything the tests create
(containers, images, registry tags) is removed at the end by that label, even on failure.
"""

from __future__ import annotations

import asyncio
import io
import os
import secrets
import subprocess
import tarfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import docker
import docker.errors
import httpx
import pytest

from dockyard.errors import (
    GatewayTimeout,
    InvalidParameter,
    RelatedResourceNotFound,
    ServiceUnavailable,
)
from dockyard.runtimes.base import Health, Instance, InstanceSpec, InstanceState
from dockyard.runtimes.docker import DockerRuntime

pytestmark = pytest.mark.integration

BASE = "dockyard-test/base:bookworm"
NOCURL = "dockyard-test/base-nocurl:bookworm"
OPEN_REGISTRY = "127.0.0.1:5001"
AUTH_REGISTRY = "127.0.0.1:5002"
AUTH_USER = os.environ.get("DOCKYARD_TEST_REGISTRY_USER", "dockyard")
AUTH_PASSWORD = os.environ.get("DOCKYARD_TEST_REGISTRY_PASSWORD", "dockyard-secret")
REPO = Path(__file__).resolve().parents[2]
PREFIX = f"dyrt{secrets.token_hex(3)}"  # label prefix of this run: cleanup finds everything by it
TEST_LABEL = f"{PREFIX}.test"  # on images this file builds
NS = 1_000_000_000
DEPLOYMENT = "ocid1.datasciencemodeldeployment.oc1.iad.amaaaaaatestdeploymentxyz123"

# A BYOC model server the way users write one: two ports (server and health may differ),
# GET /health -> 200, the artifact read from the mount, the environment echoed for the tests.
API_PY = r'''
import http.server, json, os, socketserver, sys, threading

class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/health":
            body, code = b"ok", 200
        elif self.path == "/env":
            body, code = json.dumps(dict(os.environ)).encode(), 200
        elif self.path == "/model":
            body, code = open("/opt/ds/model/deployed_model/model.txt", "rb").read(), 200
        else:
            body, code = b"no such path", 404
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True

ports = sorted({int(p) for p in sys.argv[1:]})
servers = [Server(("0.0.0.0", p), Handler) for p in ports]
print("serving on", ports, flush=True)
for s in servers[1:]:
    threading.Thread(target=s.serve_forever, daemon=True).start()
servers[0].serve_forever()
'''


# --- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def engine() -> Iterator[docker.DockerClient]:
    try:
        client = docker.from_env(version="auto", timeout=60)
    except docker.errors.DockerException:
        subprocess.run(["bash", str(REPO / "scripts/infra/docker.sh")], check=True)
        client = docker.from_env(version="auto", timeout=60)
    for image in (BASE, NOCURL):
        try:
            client.images.get(image)
        except docker.errors.ImageNotFound:
            pytest.skip(f"test image {image} is missing: run scripts/infra/images.sh first")
    try:
        yield client
    finally:
        _cleanup(client)
        _delete_pushed()
        client.close()


def _cleanup(client: docker.DockerClient) -> None:
    """Remove every container and image this run made, found by label."""
    for key in (f"{PREFIX}.managed", f"{PREFIX}.purpose"):
        for container in client.containers.list(all=True, filters={"label": key}):
            container.remove(force=True, v=True)
    for image in client.images.list(filters={"label": TEST_LABEL}):
        for ref in image.tags + image.attrs.get("RepoDigests", []):
            try:
                client.images.remove(ref, force=True)
            except docker.errors.APIError:
                pass
        try:
            client.images.remove(image.id, force=True)
        except docker.errors.APIError:
            pass


@pytest.fixture
async def runtime(engine: docker.DockerClient) -> AsyncIterator[DockerRuntime]:
    # Fast health settings so Docker's own health status changes within the test.
    rt = DockerRuntime(label_prefix=PREFIX, health_start_period_s=1, health_interval_s=1,
                       health_timeout_s=3, health_retries=3, stop_timeout_s=5)
    try:
        yield rt
    finally:
        for instance in await rt.list():
            await rt.stop(instance.instance_id)
        await rt.close()


@pytest.fixture
def artifact(tmp_path: Path) -> Path:
    root = tmp_path / "artifact"
    root.mkdir()
    (root / "api.py").write_text(API_PY)
    (root / "model.txt").write_text("weights-v1")
    for path in (tmp_path, root, *root.iterdir()):
        path.chmod(0o755)  # world-readable, as the unpacker makes it
    return root


def _spec(**changes: object) -> InstanceSpec:
    values: dict[str, object] = dict(
        deployment_id=DEPLOYMENT, spec_hash="hash-1", kind="OCIR_CONTAINER", artifact_dir=None,
        image=BASE, environment={"MODEL_DEPLOYMENT_OCID": DEPLOYMENT},
    )
    values.update(changes)
    return InstanceSpec(**values)  # type: ignore[arg-type]


def _server_spec(artifact: Path, server_port: int = 8080, health_port: int = 8080,
                 **changes: object) -> InstanceSpec:
    cmd = ["python3", "/opt/ds/model/deployed_model/api.py", str(server_port), str(health_port)]
    return _spec(artifact_dir=artifact, cmd=cmd, server_port=server_port,
                 health_port=health_port, **changes)


async def _until(predicate_fn, timeout: float = 15.0, every: float = 0.1):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        value = await predicate_fn()
        if value or time.monotonic() > deadline:
            return value
        await asyncio.sleep(every)


async def _exited(rt: DockerRuntime, instance_id: str, timeout: float = 15.0) -> Instance:
    async def look() -> Instance | None:
        found = [i for i in await rt.list() if i.instance_id == instance_id]
        assert found, f"{instance_id} vanished"
        return found[0] if found[0].state is InstanceState.EXITED else None

    instance = await _until(look, timeout)
    assert instance is not None, f"{instance_id} did not exit within {timeout} s"
    return instance


async def _healthy(rt: DockerRuntime, instance: Instance, path: str = "/health") -> None:
    async def look() -> bool:
        return (await rt.probe(instance, path)).healthy

    assert await _until(look, 15), f"{instance.instance_id} never answered {path} with 200"


def _build(engine: docker.DockerClient, dockerfile: str, tag: str,
           files: dict[str, bytes] | None = None) -> str:
    """Build from an in-memory context, labelled for cleanup; return the image id."""
    context = io.BytesIO()
    with tarfile.open(fileobj=context, mode="w") as tar:
        for name, data in {"Dockerfile": dockerfile.encode(), **(files or {})}.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    context.seek(0)
    image, _ = engine.images.build(fileobj=context, custom_context=True, tag=tag, rm=True,
                                   labels={TEST_LABEL: "1"})
    return str(image.id)


def _registry_up(host: str) -> int | None:
    try:
        return httpx.get(f"http://{host}/v2/", timeout=2, trust_env=False).status_code
    except httpx.HTTPError:
        return None


# --- one instance, fully wired --------------------------------------------------------------------


async def test_instance_is_wired_as_the_contract_says(engine: docker.DockerClient, artifact: Path) -> None:
    # Default health settings: the HEALTHCHECK must carry H1's numbers exactly.
    rt = DockerRuntime(label_prefix=PREFIX)
    try:
        spec = _server_spec(artifact, server_port=5001, health_port=5002,
                            environment={"MODEL_DEPLOYMENT_OCID": DEPLOYMENT, "GREETING": "hola"},
                            ocpus=0.5, memory_gb=0.5, shm_size="128m")
        lines: list[str] = []
        await rt.prepare(spec, lines.append)
        assert any("has curl" in line for line in lines)
        instance = await rt.start(spec)

        assert instance.state is InstanceState.RUNNING
        assert instance.host == "127.0.0.1"
        assert instance.deployment_id == DEPLOYMENT and instance.spec_hash == "hash-1"
        assert instance.server_port and instance.health_port
        assert instance.server_port != instance.health_port
        assert instance.instance_id.startswith(f"{PREFIX}-oymentxyz123-")  # last 12 of the OCID

        attrs = engine.api.inspect_container(instance.instance_id)
        mounts = [m for m in attrs["Mounts"] if m["Destination"] == "/opt/ds/model/deployed_model"]
        assert len(mounts) == 1 and mounts[0]["RW"] is False and mounts[0]["Type"] == "bind"
        assert mounts[0]["Source"] == str(artifact.resolve())
        host = attrs["HostConfig"]
        assert host["Init"] is True
        assert host["Privileged"] is False
        assert "no-new-privileges" in host["SecurityOpt"]
        assert host["PidsLimit"] == 4096
        assert host["NetworkMode"] in ("default", "bridge")
        assert host["NanoCpus"] == 1 * NS  # 0.5 OCPU = 1 vCPU
        assert host["Memory"] == 512 * 1024**2
        assert host["ShmSize"] == 128 * 1024**2
        labels = attrs["Config"]["Labels"]
        assert labels[f"{PREFIX}.managed"] == "true"
        assert labels[f"{PREFIX}.deployment-id"] == DEPLOYMENT
        assert labels[f"{PREFIX}.spec-hash"] == "hash-1"
        assert labels[f"{PREFIX}.instance-id"] == instance.instance_id
        assert attrs["Config"]["Healthcheck"] == {
            "Test": ["CMD", "curl", "-f", "http://localhost:5002/health"],
            "StartPeriod": 600 * NS, "Interval": 30 * NS, "Timeout": 3 * NS, "Retries": 3,
        }
        # Published on loopback only, at the ports the Instance reports.
        bound = attrs["NetworkSettings"]["Ports"]
        assert {b["HostIp"] for port in ("5001/tcp", "5002/tcp") for b in bound[port]} == {"127.0.0.1"}
        assert int(bound["5001/tcp"][0]["HostPort"]) == instance.server_port
        assert int(bound["5002/tcp"][0]["HostPort"]) == instance.health_port
        assert all(b["HostIp"] == "127.0.0.1" for b in sum(host["PortBindings"].values(), []))

        # The server answers from the host; health on the health port only.
        await _healthy(rt, instance)
        probe = await rt.probe(instance, "/health")
        assert probe.healthy and probe.status_code == 200
        server = Instance(**{**instance.__dict__, "health_port": instance.server_port})
        assert (await rt.probe(server, "/missing")).status_code == 404
        missing = await rt.probe(instance, "/not-health")
        assert not missing.healthy and missing.status_code == 404 and "404" in missing.detail

        async with httpx.AsyncClient(trust_env=False) as http:
            env = (await http.get(f"http://127.0.0.1:{instance.server_port}/env")).json()
            model = (await http.get(f"http://127.0.0.1:{instance.server_port}/model")).text
        assert env["MODEL_DEPLOYMENT_OCID"] == DEPLOYMENT and env["GREETING"] == "hola"
        assert model == "weights-v1"

        # A3: the artifact is read-only inside; the rest of the filesystem is writable.
        container = engine.containers.get(instance.instance_id)
        denied = container.exec_run(["python3", "-c", "open('/opt/ds/model/deployed_model/x', 'w')"])
        assert denied.exit_code != 0 and b"Read-only file system" in denied.output
        assert container.exec_run(["touch", "/tmp/ok", "/var/run/nginx.pid"]).exit_code == 0
        assert not (artifact / "x").exists()
    finally:
        for found in await rt.list():
            await rt.stop(found.instance_id)
        await rt.close()


async def test_equal_ports_share_one_host_port_and_docker_health_is_reported(
        runtime: DockerRuntime, artifact: Path, engine: docker.DockerClient) -> None:
    instance = await runtime.start(_server_spec(artifact, 8080, 8080))
    assert instance.server_port == instance.health_port is not None
    assert list(engine.api.inspect_container(instance.instance_id)["NetworkSettings"]["Ports"]) == ["8080/tcp"]
    await _healthy(runtime, instance)

    async def docker_says_healthy() -> bool:
        [seen] = await runtime.list(DEPLOYMENT)
        return seen.health is Health.HEALTHY

    # The HEALTHCHECK (curl inside the container) really runs: interval 1 s here.
    assert await _until(docker_says_healthy, 15), "Docker's HEALTHCHECK never reported healthy"
    [seen] = await runtime.list(DEPLOYMENT)
    assert seen.state is InstanceState.RUNNING and seen.started_at is not None
    assert seen.restarts == 0 and seen.exit_code is None


async def test_shape_larger_than_the_host_is_clamped_and_said(runtime: DockerRuntime,
                                                              engine: docker.DockerClient) -> None:
    info = engine.info()
    spec = _spec(cmd=["sleep", "60"], ocpus=float(info["NCPU"]) * 4,
                 memory_gb=info["MemTotal"] / 1024**3 * 2)
    instance = await runtime.start(spec)
    host = engine.api.inspect_container(instance.instance_id)["HostConfig"]
    assert host["NanoCpus"] == info["NCPU"] * NS
    assert host["Memory"] == info["MemTotal"]
    assert f"host has {info['NCPU']}" in instance.detail and "memory limited" in instance.detail
    [seen] = await runtime.list(DEPLOYMENT)
    assert seen.detail == instance.detail


# --- entrypoint and cmd -------------------------------------------------------------------------------

EP = ["python3", "-c", "import sys; print('EP', sys.argv[1:])"]
CMD = ["python3", "-c", "import sys; print('CMD', sys.argv[1:])", "image-arg"]
MINE = ["python3", "-c", "import sys; print('MINE', sys.argv[1:])"]


@pytest.fixture(scope="module")
def ep_image(engine: docker.DockerClient) -> str:
    import json

    tag = f"{PREFIX}/ep:1"
    # With a HEALTHCHECK of its own, which the service's must replace (H1).
    _build(engine, f"FROM {BASE}\nENTRYPOINT {json.dumps(EP)}\nCMD {json.dumps(CMD)}\n"
                   'HEALTHCHECK --interval=5s CMD ["false"]\n', tag)
    return tag


@pytest.mark.parametrize(
    ("entrypoint", "cmd", "expected"),
    [
        (None, None, f"EP {CMD!r}"),  # the image's own ENTRYPOINT and CMD
        (None, ["x"], "EP ['x']"),  # cmd replaces the image's CMD
        (None, [], "EP []"),  # cleared cmd: the image's ENTRYPOINT alone
        (MINE, None, "MINE []"),  # an entrypoint drops the image's CMD (docker run --entrypoint)
        (MINE, ["y"], "MINE ['y']"),
        (MINE, [], "MINE []"),
        ([], None, "CMD ['image-arg']"),  # cleared entrypoint: the image's CMD runs alone
        ([], ["python3", "-c", "print('NO-EP')"], "NO-EP"),  # U2's example: entrypoint []
    ],
    ids=["image-both", "cmd-given", "cmd-cleared", "ep-given", "ep-and-cmd", "ep-given-cmd-cleared",
         "ep-cleared", "ep-cleared-cmd-given"],
)
async def test_entrypoint_and_cmd_have_docker_semantics(runtime: DockerRuntime, ep_image: str,
                                                        engine: docker.DockerClient,
                                                        entrypoint: list[str] | None,
                                                        cmd: list[str] | None, expected: str) -> None:
    instance = await runtime.start(_spec(image=ep_image, entrypoint=entrypoint, cmd=cmd))
    exited = await _exited(runtime, instance.instance_id)
    assert exited.exit_code == 0, exited.detail
    assert (await runtime.logs(instance.instance_id)).strip() == expected
    check = engine.api.inspect_container(instance.instance_id)["Config"]["Healthcheck"]["Test"]
    assert check[:3] == ["CMD", "curl", "-f"]  # the image's own HEALTHCHECK is overridden


@pytest.mark.parametrize(("image", "entrypoint", "cmd"), [
    ("ep", [], []),  # both cleared: the engine would quietly run the image's CMD
    (BASE, None, []),  # no ENTRYPOINT in the image and cmd cleared
])
async def test_nothing_to_run_is_refused_before_creating(runtime: DockerRuntime, ep_image: str,
                                                         image: str, entrypoint: list[str] | None,
                                                         cmd: list[str]) -> None:
    spec = _spec(image=ep_image if image == "ep" else image, entrypoint=entrypoint, cmd=cmd)
    with pytest.raises(InvalidParameter, match=r"C10: start: nothing to run"):
        await runtime.start(spec)
    assert await runtime.list() == []


# --- failures a user must understand ----------------------------------------------------------------


async def test_crash_at_start_is_exited_with_code_and_logs(runtime: DockerRuntime) -> None:
    spec = _spec(cmd=["python3", "-c", "import sys; print('boom'); sys.exit(3)"])
    instance = await runtime.start(spec)
    exited = await _exited(runtime, instance.instance_id)
    assert exited.exit_code == 3
    assert exited.detail.startswith("exit code 3")
    assert "boom" in exited.detail
    assert exited.server_port is None and exited.health.value == "UNKNOWN"
    assert (await runtime.probe(exited, "/health")).healthy is False


async def test_missing_command_names_c10(runtime: DockerRuntime) -> None:
    instance = await runtime.start(_spec(cmd=["no-such-server", "--port", "8080"]))
    exited = await _exited(runtime, instance.instance_id)
    assert exited.exit_code == 127
    assert "command was not found" in exited.detail and "C10" in exited.detail


async def test_out_of_memory_is_reported(runtime: DockerRuntime) -> None:
    spec = _spec(memory_gb=64 / 1024, cmd=[
        "python3", "-c", "print('allocating', flush=True); b = b'x' * (512 << 20); print('survived')"])
    instance = await runtime.start(spec)
    exited = await _exited(runtime, instance.instance_id)
    assert exited.exit_code == 137
    assert "out of memory (OOMKilled)" in exited.detail and "64 MiB" in exited.detail
    assert "allocating" in exited.detail and "survived" not in exited.detail


async def test_image_without_curl_fails_prepare_naming_c9(runtime: DockerRuntime) -> None:
    started = time.monotonic()
    with pytest.raises(InvalidParameter) as caught:
        await runtime.prepare(_spec(image=NOCURL), lambda line: None)
    assert time.monotonic() - started < 10
    message = caught.value.message
    assert message.startswith("C9: curl check:") and "apt-get install -y curl" in message
    # start() prepares first, so the reconciler gets the same answer.
    with pytest.raises(InvalidParameter, match="C9"):
        await runtime.start(_spec(image=NOCURL))
    assert await runtime.list() == []


async def test_image_without_curl_runs_when_curl_is_not_required(engine: docker.DockerClient,
                                                                 artifact: Path) -> None:
    rt = DockerRuntime(label_prefix=PREFIX, require_curl=False)
    try:
        lines: list[str] = []
        spec = _server_spec(artifact, image=NOCURL)
        await rt.prepare(spec, lines.append)
        assert any(line.startswith("warning: C9") for line in lines), lines
        instance = await rt.start(spec)
        # The in-container check would fail forever without curl: it is off, we probe outside.
        assert engine.api.inspect_container(instance.instance_id)["Config"]["Healthcheck"] == {"Test": ["NONE"]}
        await _healthy(rt, instance)
    finally:
        for found in await rt.list():
            await rt.stop(found.instance_id)
        await rt.close()


async def test_image_over_the_size_limit_fails_naming_c7(engine: docker.DockerClient) -> None:
    rt = DockerRuntime(label_prefix=PREFIX, max_uncompressed_bytes=10_000_000)
    try:
        with pytest.raises(InvalidParameter, match=r"^C7: pull: the image .* is 1\d\d\.\d MiB uncompressed, over the 9\.5 MiB limit"):
            await rt.prepare(_spec(), lambda line: None)
    finally:
        await rt.close()


async def test_unreachable_engine_is_service_unavailable(tmp_path: Path) -> None:
    rt = DockerRuntime(base_url=f"unix://{tmp_path}/no-engine.sock", api_timeout_s=5)
    with pytest.raises(ServiceUnavailable, match="list: the Docker engine at unix://.* does not answer"):
        await rt.list()
    await rt.close()


# --- list, logs, stop --------------------------------------------------------------------------------


async def test_list_logs_and_stop(runtime: DockerRuntime, engine: docker.DockerClient) -> None:
    other = DEPLOYMENT.replace("xyz123", "other9")
    a = await runtime.start(_spec(cmd=["python3", "-c", "print('hello from a', flush=True); import time; time.sleep(60)"]))
    b = await runtime.start(_spec(deployment_id=other, spec_hash="hash-2", cmd=["sleep", "60"]))
    crashed = await runtime.start(_spec(cmd=["python3", "-c", "raise SystemExit(1)"]))
    await _exited(runtime, crashed.instance_id)
    # A container of someone else's on the same engine: never listed, never stopped.
    foreign = engine.containers.run(BASE, ["sleep", "60"], detach=True, labels={f"{PREFIX}.purpose": "foreign"})

    everything = {i.instance_id: i for i in await runtime.list()}
    assert set(everything) == {a.instance_id, b.instance_id, crashed.instance_id}
    assert everything[a.instance_id].state is InstanceState.RUNNING
    assert everything[crashed.instance_id].state is InstanceState.EXITED
    assert everything[crashed.instance_id].exit_code == 1
    assert {i.instance_id for i in await runtime.list(other)} == {b.instance_id}
    assert (await runtime.list(other))[0].spec_hash == "hash-2"

    logs = await _until(lambda: runtime.logs(a.instance_id, tail=5))
    assert "hello from a" in logs
    assert await runtime.logs("no-such-container") == ""

    started = time.monotonic()
    await runtime.stop(a.instance_id)  # `sleep` ignores nothing, but init makes SIGTERM prompt
    assert time.monotonic() - started < 4
    await runtime.stop(crashed.instance_id)
    await runtime.stop(a.instance_id)  # twice: not an error
    await runtime.stop("dockyard-never-existed")
    await runtime.stop(foreign.id)
    assert [i.instance_id for i in await runtime.list()] == [b.instance_id]
    foreign.reload()
    assert foreign.status == "running"
    with pytest.raises(docker.errors.NotFound):
        engine.containers.get(a.instance_id)


# --- pulling by digest ---------------------------------------------------------------------------------


PUSHED: list[tuple[str, str, dict[str, str] | None]] = []  # (registry, name@digest, auth)


def _push_unique_image(engine: docker.DockerClient, registry: str, base: str,
                       auth: dict[str, str] | None = None) -> str:
    """Build an image with a unique 3 MB layer, push it, drop it locally; return name@digest."""
    repo = f"{registry}/{PREFIX}/pull"
    payload = secrets.token_bytes(3 * 1024 * 1024)
    _build(engine, f"FROM {base}\nCOPY blob /blob\n", f"{repo}:1", {"blob": payload})
    for line in engine.images.push(repo, "1", stream=True, decode=True, auth_config=auth):
        assert "error" not in line, line
    digest = engine.images.get_registry_data(f"{repo}:1", auth_config=auth).id
    PUSHED.append((registry, f"{PREFIX}/pull@{digest}", auth))
    engine.images.remove(f"{repo}:1", force=True)  # the unique layer is gone: a real download
    return f"{repo}@{digest}"


def _delete_pushed() -> None:
    for registry, name, auth in PUSHED:
        repository, digest = name.split("@")
        credentials = (auth["username"], auth["password"]) if auth else None
        try:
            httpx.delete(f"http://{registry}/v2/{repository}/manifests/{digest}",
                         auth=credentials, timeout=5, trust_env=False)
        except httpx.HTTPError:
            pass  # best effort: a leftover test manifest harms nothing
    PUSHED.clear()


async def test_pull_by_digest_from_the_local_registry(engine: docker.DockerClient) -> None:
    if _registry_up(OPEN_REGISTRY) != 200:
        pytest.skip(f"no open registry on {OPEN_REGISTRY}: run scripts/infra/registry.sh")
    image = _push_unique_image(engine, OPEN_REGISTRY, BASE)
    with pytest.raises(docker.errors.ImageNotFound):
        engine.images.get(image)
    rt = DockerRuntime(label_prefix=PREFIX)
    try:
        lines: list[str] = []
        await rt.prepare(_spec(image=image), lines.append)
        assert lines[0] == f"pull: pulling {image}"
        assert any("layers done" in line and "MB of" in line for line in lines), lines
        assert any("pulled in" in line and "already present" in line for line in lines), lines
        pulled = engine.images.get(image)
        assert image in pulled.attrs["RepoDigests"]
        # D2: the instance runs exactly the pinned digest.
        instance = await rt.start(_spec(image=image, cmd=["sha256sum", "/blob"]))
        exited = await _exited(rt, instance.instance_id)
        assert exited.exit_code == 0
        assert engine.api.inspect_container(instance.instance_id)["Image"] == pulled.id
        # Prepared again: present, no second pull.
        again: list[str] = []
        await rt.prepare(_spec(image=image), again.append)
        assert again[0] == f"pull: {image} is already present"

        gone = image.rsplit("@", 1)[0] + "@sha256:" + "0" * 64
        with pytest.raises(RelatedResourceNotFound, match=r"^C12: pull: .* is not in the registry 127\.0\.0\.1:5001"):
            await rt.prepare(_spec(image=gone), lambda line: None)
    finally:
        for found in await rt.list():
            await rt.stop(found.instance_id)
        await rt.close()


async def test_pull_uses_the_registry_credentials(engine: docker.DockerClient) -> None:
    if _registry_up(AUTH_REGISTRY) != 401:
        pytest.skip(f"no basic-auth registry on {AUTH_REGISTRY}: run scripts/infra/registry.sh")
    auth = {"username": AUTH_USER, "password": AUTH_PASSWORD}
    try:
        # FROM scratch: nothing to upload but the 3 MB layer (this registry has its own store).
        image = _push_unique_image(engine, AUTH_REGISTRY, "scratch", auth)
    except (docker.errors.APIError, AssertionError) as exc:
        pytest.skip(f"cannot push to {AUTH_REGISTRY} as {AUTH_USER}: {exc}")
    anonymous = DockerRuntime(label_prefix=PREFIX)
    wrong = DockerRuntime(label_prefix=PREFIX, registry_auth={AUTH_REGISTRY: (AUTH_USER, "wrong")})
    right = DockerRuntime(label_prefix=PREFIX, require_curl=False,  # FROM scratch: no curl
                          registry_auth={AUTH_REGISTRY: (AUTH_USER, AUTH_PASSWORD)})
    try:
        with pytest.raises(RelatedResourceNotFound, match=r"^C8: pull: .*no credentials are configured"):
            await anonymous.prepare(_spec(image=image), lambda line: None)
        with pytest.raises(RelatedResourceNotFound, match=r"^C8: pull: .*credentials configured for it were refused"):
            await wrong.prepare(_spec(image=image), lambda line: None)
        await right.prepare(_spec(image=image), lambda line: None)
        assert engine.images.get(image).id
    finally:
        for rt in (anonymous, wrong, right):
            await rt.close()



async def test_a_stalled_registry_fails_the_pull_in_bounded_time(engine: docker.DockerClient) -> None:
    import http.server
    import socketserver
    import threading

    release = threading.Event()

    class Stalling(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # /v2/ answers; the manifest never comes
            if self.path == "/v2/":
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            release.wait(30)

        do_HEAD = do_GET

        def log_message(self, *args: object) -> None:
            pass

    class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
        daemon_threads = True

    server = Server(("127.0.0.1", 0), Stalling)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    image = f"127.0.0.1:{server.server_address[1]}/stalled/image@sha256:{'2' * 64}"
    rt = DockerRuntime(label_prefix=PREFIX, pull_idle_timeout_s=2)
    try:
        started = time.monotonic()
        with pytest.raises(GatewayTimeout, match=r"^pull: pulling .* made no progress for 2 s"):
            await rt.prepare(_spec(image=image), lambda line: None)
        assert time.monotonic() - started < 10
    finally:
        release.set()
        server.shutdown()
        await rt.close()

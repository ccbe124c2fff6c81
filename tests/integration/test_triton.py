"""Triton mode (T1) against a real NVIDIA Triton Inference Server, end to end.

A real `dockyard serve` is driven with the official `oci` SDK; the deployments name only the
image and `CONTAINER_TYPE=TRITON` (no entrypoint or cmd; no ports either in a container, while
on the process runtime, where instances share the host's ports, a free port). The server is tritonserver 2.51.0 with the Python backend (from the PyPI wheel
nvidia-pytriton, see scripts/infra/triton-image.sh), serving Python-backend models from the
artifact (tests/integration/triton/):

- `multiply`: version 1 multiplies by 2, version 2 by 3 (both loaded), so every answer tells
  which model and version the gateway's path reached;
- `add_sub`: sum and difference of two inputs;
- `scale_and_add`: an ensemble of the two (2 * A + B, 2 * A - B) whose version folder is empty,
  as every ensemble's: Triton loads it only when the empty folder survived unpacking.

Once in a container (image dockyard-test/tritonserver:24.10-py3-cpu, laid out like NVIDIA's,
whose entrypoint starts no server) on the docker runtime, once as a local process on the
process runtime (tritonserver from the cached pytriton venv on PATH). Requests go to
`<modelDeploymentUrl>/predict`, signed, as KServe v2 JSON.

Needs scripts/infra/{docker,registry,images,lda-artifact,triton-image}.sh: skipped without
them, or failed when DOCKYARD_TEST_REQUIRE_INFRA=1 (scripts/test), naming the command.
"""

from __future__ import annotations

import json
import os
import struct
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import httpx
import pytest

from dockyard.checking.findings import Verdict
from dockyard.checking.inputs import parse_request
from dockyard.checking.probe_run import run_check
from dockyard.settings import Settings
from tests.integration.docker_fixtures import (
    OPEN_REGISTRY,
    RUN,
    SERVER_ENV,
    Harness,
    Janitor,
    check_infra,
    containers_of,
    infra_missing,
    registry_digest,
    until,
)
from tests.support.server import LiveServer, free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TRITON_IMAGE = f"{OPEN_REGISTRY}/dockyard-test/tritonserver:24.10-py3-cpu"
PYTRITON_VENV = Path(os.environ.get("DOCKYARD_TEST_IMAGE_CACHE", "/var/cache/dockyard-test")) / "pytriton-venv"
MODELS = Path(__file__).resolve().parent / "triton"
ONLY_TRITON = {"CONTAINER_TYPE": "TRITON"}
# Triton starts in 1-3 s, more with Python-backend models on a loaded 2-core machine.
SLOW_START_ENV = SERVER_ENV | {"DOCKYARD_HEALTH_START_PERIOD_S": "60", "DOCKYARD_HEALTH_DEADLINE_S": "240"}
READY_TIMEOUT_S = 300


# --- artifacts ---------------------------------------------------------------------------------------


def _zip_models(path: Path, models: list[str], prefix: str, empty_folders: tuple[str, ...] = ()) -> Path:
    """A model artifact holding `models` (folders of tests/integration/triton) and `empty_folders`
    under `prefix`."""
    with zipfile.ZipFile(path, "w") as archive:
        for model in models:
            for file in sorted((MODELS / model).rglob("*")):
                if file.is_file() and "__pycache__" not in file.parts:
                    archive.write(file, prefix + str(file.relative_to(MODELS)))
        for folder in empty_folders:
            archive.writestr(prefix + folder.rstrip("/") + "/", b"")
    return path


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("triton-artifacts")
    return {
        # the usual layout: the repository in a model_repository/ folder of the artifact
        "one": _zip_models(root / "one-model.zip", ["multiply"], "model_repository/"),
        # the artifact itself is the repository
        "three": _zip_models(root / "three-models.zip", ["multiply", "add_sub", "scale_and_add"], "",
                             empty_folders=("scale_and_add/1",)),
    }


# --- KServe v2 requests ----------------------------------------------------------------------------


def multiply_request(values: list[float]) -> dict[str, Any]:
    return {"inputs": [{"name": "INPUT0", "shape": [len(values)], "datatype": "FP32", "data": values}]}


def add_sub_request(a: list[float], b: list[float]) -> dict[str, Any]:
    return {"inputs": [{"name": "INPUT0", "shape": [len(a)], "datatype": "FP32", "data": a},
                       {"name": "INPUT1", "shape": [len(b)], "datatype": "FP32", "data": b}]}


def predict(server: LiveServer, url: str, body: dict[str, Any], headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.post(f"{url}/predict", json=body, headers=headers or {}, auth=server.auth, timeout=60, trust_env=False)


def outputs(reply: httpx.Response) -> dict[str, list[float]]:
    assert reply.status_code == 200, (reply.status_code, reply.text)
    return {o["name"]: o["data"] for o in reply.json()["outputs"]}


# --- harnesses -----------------------------------------------------------------------------------------


class ProcessHarness(Harness):
    """The same SDK-driven harness on the process runtime, tritonserver found on PATH."""

    def start(self, extra_env: dict[str, str] | None = None, port: int | None = None) -> LiveServer:
        env = dict(self.env) | (extra_env or {})
        server = LiveServer(self.data_dir, runtime="process", env=env)
        if port is not None:
            server.port = port
        self.server = server.start(timeout_s=60)
        return self.server


def _triton_infra() -> docker.DockerClient:
    engine = check_infra()
    if registry_digest(TRITON_IMAGE) is None:
        infra_missing(f"the Triton test image {TRITON_IMAGE} is not in the registry", "bash scripts/infra/triton-image.sh")
    if not (PYTRITON_VENV / "bin" / "tritonserver").exists():
        infra_missing(f"no tritonserver in {PYTRITON_VENV}", "bash scripts/infra/triton-image.sh")
    return engine


@pytest.fixture(scope="module")
def engine() -> Iterator[docker.DockerClient]:
    client = _triton_infra()
    yield client
    client.close()


def _harness(kind: type[Harness], root: Path, engine: docker.DockerClient, env: dict[str, str]) -> Iterator[Harness]:
    h = kind(root=root, engine=engine, janitor=Janitor(engine), env=env)
    try:
        h.start()
        yield h
    finally:
        h.record_every_deployment()
        # Wait for the deletes: instances of the process runtime outlive a stopped dockyard.
        for deployment_id in sorted(h.janitor.deployments):
            try:
                delete(h, deployment_id)
            except Exception:  # best effort; the janitor removes what containers are left
                pass
        h.stop()
        problems = h.janitor.clean()
        if problems:
            pytest.fail("cleanup left things behind:\n" + "\n".join(problems), pytrace=False)


@pytest.fixture(scope="module")
def in_docker(tmp_path_factory: pytest.TempPathFactory, engine: docker.DockerClient) -> Iterator[Harness]:
    yield from _harness(Harness, tmp_path_factory.mktemp("triton-docker"), engine, dict(SLOW_START_ENV))


@pytest.fixture(scope="module")
def on_host(tmp_path_factory: pytest.TempPathFactory, engine: docker.DockerClient) -> Iterator[Harness]:
    env = dict(SLOW_START_ENV) | {"PATH": f"{PYTRITON_VENV / 'bin'}:{os.environ.get('PATH', os.defpath)}"}
    yield from _harness(ProcessHarness, tmp_path_factory.mktemp("triton-process"), engine, env)


def deploy(h: Harness, name: str, artifact: Path, env: dict[str, str] | None = None, **kw: Any) -> Any:
    """Create a deployment of `artifact` on the Triton image with only CONTAINER_TYPE=TRITON (plus
    `env` and `kw`), wait until its work request ends, and return it ACTIVE."""
    deployment_id, wr_id = h.create(model_id=h.model(name, artifact), image=TRITON_IMAGE, name=name,
                                    env=ONLY_TRITON | (env or {}), memory_gb=2, **kw)
    wr = h.wait_work_request(wr_id, READY_TIMEOUT_S)
    got = h.get(deployment_id)
    assert wr.status == "SUCCEEDED" and got.lifecycle_state == "ACTIVE", (
        wr.status, got.lifecycle_state, got.lifecycle_details, h.logs(wr_id), h.errors(wr_id), h.server_log())
    print(f"{name}: {got.lifecycle_details}")  # the time-to-ready breakdown, shown with -s
    return got


def delete(h: Harness, deployment_id: str) -> None:
    """Delete and wait until the work request says it is done."""
    if h.get(deployment_id).lifecycle_state in ("DELETED", "DELETING"):
        return
    wr_id = h.ds.delete_model_deployment(deployment_id).headers["opc-work-request-id"]
    wr = h.wait_work_request(wr_id, 120)
    assert wr.status == "SUCCEEDED", (h.logs(wr_id), h.errors(wr_id))


def processes() -> dict[int, tuple[int, str]]:
    """Every process on the host: pid -> (parent pid, command line)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                ppid = int(next(line for line in (entry / "status").read_text().splitlines()
                                if line.startswith("PPid:")).split()[1])
            except (OSError, StopIteration, ValueError):
                continue
            found[int(entry.name)] = (ppid, cmdline)
    return found


def triton_processes(port: int) -> set[int]:
    """The tritonserver listening on `port` and its Python-backend stubs (one per model instance)."""
    table = processes()
    servers = {pid for pid, (_, cmd) in table.items() if "bin/tritonserver " in cmd and f"--http-port={port}" in cmd}
    stubs = {pid for pid, (ppid, cmd) in table.items() if ppid in servers and "triton_python_backend_stub" in cmd}
    return servers | stubs


# --- the checks, the same on both runtimes ---------------------------------------------------------------


def check_one_model(h: Harness, url: str) -> None:
    assert h.server is not None
    s = h.server
    # model_name (the samples' spelling): the newest version answers, multiplying by 3
    reply = predict(s, url, multiply_request([1, 2, 3.5]), {"model_name": "multiply"})
    assert outputs(reply) == {"OUTPUT0": [3.0, 6.0, 10.5]}
    assert reply.json()["model_name"] == "multiply" and reply.json()["model_version"] == "2"
    # model_name + model_version: that version's path
    reply = predict(s, url, multiply_request([1, 2]), {"model_name": "multiply", "model_version": "1"})
    assert outputs(reply) == {"OUTPUT0": [2.0, 4.0]} and reply.json()["model_version"] == "1"
    # Oracle ADS's spelling
    reply = predict(s, url, multiply_request([4]), {"model-name": "multiply", "model-version": "2"})
    assert outputs(reply) == {"OUTPUT0": [12.0]} and reply.json()["model_version"] == "2"
    reply = predict(s, url, multiply_request([4]), {"model-name": "multiply", "model-version": "1"})
    assert outputs(reply) == {"OUTPUT0": [8.0]}
    # no name: the repository's only model (listed once per version) is used
    assert outputs(predict(s, url, multiply_request([0.5]))) == {"OUTPUT0": [1.5]}
    # Triton's own errors come back unchanged (status and body)
    unknown = predict(s, url, multiply_request([1]), {"model_name": "multiply", "model_version": "7"})
    assert unknown.status_code == 404, unknown.text
    assert unknown.json() == {"error": "Request for unknown model: 'multiply' version 7 is not found"}
    wrong_input = predict(s, url, {"inputs": [{"name": "NOPE", "shape": [1], "datatype": "FP32", "data": [1]}]},
                          {"model_name": "multiply"})
    assert wrong_input.status_code == 400 and "NOPE" in wrong_input.json()["error"], wrong_input.text
    # a version without a name is the caller's mistake, named as such
    lone = predict(s, url, multiply_request([1]), {"model_version": "1"})
    assert lone.status_code == 400 and lone.json()["message"].startswith("T1: model_version '1' was sent without model_name")
    # the binary tensor extension (what tritonclient sends): header and raw bytes pass both ways
    check_binary_tensors(s, url)


def check_binary_tensors(s: LiveServer, url: str) -> None:
    header = json.dumps({
        "inputs": [{"name": "INPUT0", "shape": [3], "datatype": "FP32", "parameters": {"binary_data_size": 12}}],
        "outputs": [{"name": "OUTPUT0", "parameters": {"binary_data": True}}],
    }).encode()
    body = header + struct.pack("<3f", 1.0, -2.0, 0.25)
    reply = httpx.post(f"{url}/predict", content=body, auth=s.auth, timeout=60, trust_env=False,
                       headers={"content-type": "application/octet-stream", "model_name": "multiply",
                                "inference-header-content-length": str(len(header))})
    assert reply.status_code == 200, reply.text
    split = int(reply.headers["inference-header-content-length"])
    answer = json.loads(reply.content[:split])
    assert answer["outputs"][0]["parameters"]["binary_data_size"] == 12
    assert struct.unpack("<3f", reply.content[split:]) == (3.0, -6.0, 0.75)


def check_three_models(h: Harness, url: str) -> None:
    assert h.server is not None
    s = h.server
    unnamed = predict(s, url, multiply_request([1]))
    assert unnamed.status_code == 400, unnamed.text
    message = unnamed.json()["message"]
    assert message.startswith("T1: this Triton deployment serves 3 models (") and "add_sub" in message, message
    assert "multiply" in message and "scale_and_add" in message, message
    assert "model_name header (or model-name)" in message, message
    ensemble = {"inputs": [{"name": "A", "shape": [2], "datatype": "FP32", "data": [1, 2]},
                           {"name": "B", "shape": [2], "datatype": "FP32", "data": [10, 0.5]}]}
    assert outputs(predict(s, url, ensemble, {"model_name": "scale_and_add"})) == {"SUM": [12.0, 4.5], "DIFF": [-8.0, 3.5]}
    assert outputs(predict(s, url, add_sub_request([5, 1], [2, 3]), {"model_name": "add_sub"})) == {
        "OUTPUT0": [7.0, 4.0], "OUTPUT1": [3.0, -2.0]}
    assert outputs(predict(s, url, multiply_request([2]), {"model-name": "multiply"})) == {"OUTPUT0": [6.0]}
    assert outputs(predict(s, url, multiply_request([2]), {"model_name": "multiply", "model_version": "1"})) == {
        "OUTPUT0": [4.0]}


# --- docker runtime ------------------------------------------------------------------------------------------


def test_unmodified_triton_image_with_only_container_type_answers_through_predict(
        in_docker: Harness, artifacts: dict[str, Path]) -> None:
    got = deploy(in_docker, "triton-one", artifacts["one"])
    [container] = containers_of(in_docker.engine, got.id, running_only=True)
    # the image's entrypoint (which starts nothing) runs the platform's tritonserver command
    config = container.attrs["Config"]
    assert config["Entrypoint"] == ["/opt/nvidia/nvidia_entrypoint.sh"]
    assert config["Cmd"][:3] == ["tritonserver", "--model-repository=/opt/ds/model/deployed_model/model_repository",
                                 "--http-port=8080"], config["Cmd"]
    env = got.model_deployment_configuration_details.environment_configuration_details
    assert env.cmd is None and env.entrypoint is None  # nothing was written into the user's configuration
    check_one_model(in_docker, got.model_deployment_url)


def test_several_models_in_a_container_need_a_model_name(in_docker: Harness, artifacts: dict[str, Path]) -> None:
    got = deploy(in_docker, "triton-three", artifacts["three"], env={"MODEL_DEPLOY_ENABLE_STREAMING": "true"})
    [container] = containers_of(in_docker.engine, got.id, running_only=True)
    assert "--model-repository=/opt/ds/model/deployed_model" in container.attrs["Config"]["Cmd"]
    check_three_models(in_docker, got.model_deployment_url)
    # the streamed variant goes to Triton's generate_stream (server-sent events), model chosen the same way
    assert in_docker.server is not None
    with httpx.stream("POST", f"{got.model_deployment_url}/predictWithResponseStream", json={"INPUT0": [1, 2]},
                      headers={"accept": "text/event-stream", "model-name": "multiply", "model-version": "1"},
                      auth=in_docker.server.auth, timeout=60, trust_env=False) as streamed:
        body = streamed.read().decode()
    assert streamed.status_code == 200 and streamed.headers["content-type"].startswith("text/event-stream"), body
    events = [json.loads(line[len("data: "):]) for line in body.splitlines() if line.startswith("data: ")]
    assert events == [{"OUTPUT0": [2.0, 4.0], "model_name": "multiply", "model_version": "1"}], body


def test_a_separate_health_port_fails_with_the_fix(in_docker: Harness, artifacts: dict[str, Path]) -> None:
    """tritonserver answers health on its one HTTP port: the deployment fails at once, saying so,
    instead of waiting out the health deadline."""
    deployment_id, wr_id = in_docker.create(model_id=in_docker.model("triton-one", artifacts["one"]), image=TRITON_IMAGE,
                                            name="triton-ports", env=dict(ONLY_TRITON), server_port=8000, health_port=8080)
    wr = in_docker.wait_work_request(wr_id, 120)
    got = in_docker.get(deployment_id)
    assert wr.status == "FAILED" and got.lifecycle_state == "FAILED", (wr.status, got.lifecycle_state)
    assert "T1: " in got.lifecycle_details and "set healthCheckPort to 8000" in got.lifecycle_details, got.lifecycle_details
    assert any("set healthCheckPort to 8000" in e for e in in_docker.errors(wr_id)), in_docker.errors(wr_id)


# --- process runtime ---------------------------------------------------------------------------------------


def test_triton_on_the_process_runtime_one_model(on_host: Harness, artifacts: dict[str, Path]) -> None:
    port = free_port()  # the process runtime runs the server on the host, on the deployment's own port
    got = deploy(on_host, "triton-one-host", artifacts["one"], server_port=port, health_port=port)
    [instance] = on_host.instances(got.id)
    assert instance["runtime"] == "process" and instance["health"] == "HEALTHY", instance
    check_one_model(on_host, got.model_deployment_url)


def test_triton_on_the_process_runtime_several_models(on_host: Harness, artifacts: dict[str, Path]) -> None:
    port = free_port()
    got = deploy(on_host, "triton-three-host", artifacts["three"], server_port=port, health_port=port)
    check_three_models(on_host, got.model_deployment_url)
    # Delete stops the server and its Python-backend stubs (three: add_sub and two versions of multiply)
    running = triton_processes(port)
    assert len(running) == 4, running
    delete(on_host, got.id)
    until(lambda: not (running & set(processes())), 30, what=f"processes {running} gone")


# --- dockyard check ------------------------------------------------------------------------------------------


async def test_dockyard_check_runs_the_triton_image_as_a_deployment_would(
        engine: docker.DockerClient, artifacts: dict[str, Path]) -> None:
    """The same default command through `dockyard check`: healthy on /v2/health/ready, and a stop
    that ends by itself within the grace (tritonserver waits for idle connections on SIGTERM)."""
    request = parse_request(TRITON_IMAGE, artifact=artifacts["one"], env=["CONTAINER_TYPE=TRITON"])
    report = await run_check(request, Settings(region="local"), lambda line: None, label_prefix=f"dytr{RUN}")
    verdicts = {f.rule: (f.verdict, f.measured) for f in report.findings}
    for rule in ("C3", "C6", "START", "STOP"):
        assert verdicts[rule][0] is Verdict.PASS, verdicts
    assert "GET /v2/health/ready on port 8080 answered 200" in verdicts["C3"][1]
    assert "after SIGTERM" in verdicts["STOP"][1] and "SIGKILL" not in verdicts["STOP"][1], verdicts["STOP"]

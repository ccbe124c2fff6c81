"""ProcessRuntime with real processes: DEFAULT artifacts through the built-in server, OCIR
local-development commands, the read-only artifact mount, adoption after the runtime object is
lost, crash reports, and requirements.txt environments.

Needs no Docker engine: the sandboxes are bwrap (Debian `bubblewrap`, skipped when absent) and
util-linux `unshare`. Every process a test starts is stopped by the `runtimes` fixture, through
a fresh ProcessRuntime over each state directory, and killed by process group as a last resort.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import signal
import socket
import sys
import textwrap
import time
import zipfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest

from dockyard.errors import DockyardError, InvalidParameter
from dockyard.inference.environments import EnvironmentBuildFailed, ensure_environment
from dockyard.runtimes.base import Instance, InstanceSpec, InstanceState
from dockyard.runtimes.process import ProcessRuntime
from dockyard.runtimes.process_sandbox import MOUNT_POINT, probe
from dockyard.runtimes.process_state import StateDir, group_members

pytestmark = pytest.mark.integration

EXAMPLE = Path(__file__).parents[2] / "src" / "dockyard" / "examples" / "default_model"
DEPLOYMENT = "ocid1.datasciencemodeldeployment.oc1.local.test"
RUNTIME_YAML = textwrap.dedent(
    f"""\
    MODEL_ARTIFACT_VERSION: '3.0'
    MODEL_DEPLOYMENT:
      INFERENCE_CONDA_ENV:
        INFERENCE_ENV_PATH: oci://bucket@namespace/conda/pack
        INFERENCE_PYTHON_VERSION: '{sys.version_info.major}.{sys.version_info.minor}'
    MODEL_PROVENANCE: {{}}
    """
)
PROBES = {name: probe(name) for name in ("bwrap", "unshare")}
SANDBOXES = [pytest.param(name, marks=pytest.mark.skipif(not works, reason=f"{name} does not work here: {why}"))
             for name, (works, why) in PROBES.items()]

INTROSPECT = """
import os

def load_model():
    return {"offset": 1}

def predict(data, model=None):
    here = os.path.dirname(os.path.realpath(__file__))
    try:
        with open(os.path.join(here, "written.txt"), "w") as handle:
            handle.write("x")
        write = "written"
    except OSError as exc:
        write = f"{type(exc).__name__}: {exc.strerror}"
    return {
        "sum": sum(data["numbers"]) + model["offset"],
        "file": os.path.realpath(__file__),
        "ocid": os.environ.get("MODEL_DEPLOYMENT_OCID"),
        "dockyard_settings_leak": sorted(k for k in os.environ if k.startswith("DOCKYARD_")),
        "write": write,
    }
"""


def write_artifact(root: Path, score: str, **files: str | bytes) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "score.py").write_text(textwrap.dedent(score))
    (root / "runtime.yaml").write_text(RUNTIME_YAML)
    for name, content in files.items():
        path = root / name
        path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)
    return root


def default_spec(artifact: Path, spec_hash: str = "hash-1") -> InstanceSpec:
    return InstanceSpec(deployment_id=DEPLOYMENT, spec_hash=spec_hash, kind="DEFAULT", artifact_dir=artifact,
                        environment={"MODEL_DEPLOYMENT_OCID": DEPLOYMENT})


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def wait_healthy(runtime: ProcessRuntime, instance: Instance, path: str = "/health", timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    result = None
    while time.monotonic() < deadline:
        result = await runtime.probe(instance, path)
        if result.healthy:
            return
        [current] = [i for i in await runtime.list() if i.instance_id == instance.instance_id]
        if current.state is InstanceState.EXITED:
            pytest.fail(f"instance exited: {current.detail}")
        await asyncio.sleep(0.1)
    pytest.fail(f"not healthy within {timeout_s} s: {result}; log:\n{await runtime.logs(instance.instance_id)}")


async def wait_exited(runtime: ProcessRuntime, instance_id: str, timeout_s: float = 20) -> Instance:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        [current] = [i for i in await runtime.list() if i.instance_id == instance_id]
        if current.state is InstanceState.EXITED:
            return current
        await asyncio.sleep(0.1)
    pytest.fail(f"instance {instance_id} still running after {timeout_s} s")


async def wait_logged(runtime: ProcessRuntime, instance_id: str, text: str, timeout_s: float = 10) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        logs = await runtime.logs(instance_id)
        if text in logs:
            return logs
        await asyncio.sleep(0.05)
    pytest.fail(f"{text!r} never appeared in the output of {instance_id}:\n{await runtime.logs(instance_id)}")


@pytest.fixture
async def runtimes(tmp_path: Path) -> AsyncIterator[Callable[..., ProcessRuntime]]:
    """runtimes(sandbox="auto", state="state", **options) -> a ProcessRuntime; cleans up after."""
    made: list[ProcessRuntime] = []

    def make(sandbox: str = "auto", state: str = "state", **options: object) -> ProcessRuntime:
        runtime = ProcessRuntime(tmp_path / state, sandbox=sandbox, venv_cache_dir=tmp_path / "venvs",
                                 **options)  # type: ignore[arg-type]
        made.append(runtime)
        return runtime

    yield make
    for state_dir in {r.state.root for r in made}:
        cleaner = ProcessRuntime(state_dir, sandbox="none", stop_timeout_s=2)
        for instance in await cleaner.list():
            await cleaner.stop(instance.instance_id)
        for record in StateDir(state_dir).read_all():  # whatever stop() could not end
            for pid in group_members(record.pid):
                os.killpg(record.pid, signal.SIGKILL)
                break
    for runtime in made:
        await runtime.close()


@pytest.mark.parametrize("sandbox", SANDBOXES)
async def test_default_artifact_serves_health_and_predict(runtimes: Callable[..., ProcessRuntime], tmp_path: Path,
                                                          sandbox: str) -> None:
    runtime = runtimes(sandbox)
    artifact = write_artifact(tmp_path / "artifact", INTROSPECT)
    progress: list[str] = []
    spec = default_spec(artifact)
    await runtime.prepare(spec, progress.append)
    assert any(f"sandbox {sandbox}" in line for line in progress)
    instance = await runtime.start(spec)
    assert instance.state is InstanceState.RUNNING and instance.server_port == instance.health_port
    await wait_healthy(runtime, instance)

    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{instance.server_port}") as client:
        health = await client.get("/health")
        assert health.status_code == 200 and health.json() == {"status": "ok"}
        answer = (await client.post("/predict", json={"numbers": [1, 2, 3]})).json()
    assert answer["sum"] == 7
    assert answer["file"] == f"{MOUNT_POINT}/score.py"  # A3: the artifact is where the contract puts it
    assert answer["ocid"] == DEPLOYMENT
    assert answer["write"].startswith("OSError: Read-only file system")  # A3: read-only
    assert not (artifact / "written.txt").exists()
    logs = await wait_logged(runtime, instance.instance_id, "POST /predict 200")  # the predict log
    assert "GET /health 200" in logs

    record = runtime.state.read(instance.instance_id)
    assert record is not None and group_members(record.pid)
    await runtime.stop(instance.instance_id)
    assert await runtime.list() == []
    assert group_members(record.pid) == []


async def test_without_a_sandbox_default_still_serves_and_says_so(runtimes: Callable[..., ProcessRuntime],
                                                                 tmp_path: Path) -> None:
    runtime = runtimes("none")
    artifact = write_artifact(tmp_path / "artifact", INTROSPECT)
    progress: list[str] = []
    spec = default_spec(artifact)
    await runtime.prepare(spec, progress.append)
    assert any("WARNING instances run without a sandbox" in line for line in progress)
    instance = await runtime.start(spec)
    await wait_healthy(runtime, instance)
    answer = httpx.post(f"http://127.0.0.1:{instance.server_port}/predict", json={"numbers": [1]}).json()
    assert answer["sum"] == 2 and answer["file"] == str((artifact / "score.py").resolve())
    assert not (artifact / "__pycache__").exists()  # nothing written into the artifact by the server


async def test_dockyard_settings_stay_out_of_instances(runtimes: Callable[..., ProcessRuntime], tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKYARD_DATABASE_URL", "postgresql://user:secret@db/dockyard")
    runtime = runtimes()
    spec = default_spec(write_artifact(tmp_path / "artifact", INTROSPECT))
    await runtime.prepare(spec, lambda _: None)
    instance = await runtime.start(spec)
    await wait_healthy(runtime, instance)
    answer = httpx.post(f"http://127.0.0.1:{instance.server_port}/predict", json={"numbers": []}).json()
    assert answer["dockyard_settings_leak"] == []


async def test_the_bundled_example_predicts_through_the_runtime(runtimes: Callable[..., ProcessRuntime]) -> None:
    runtime = runtimes()
    spec = default_spec(EXAMPLE)
    await runtime.prepare(spec, lambda _: None)
    instance = await runtime.start(spec)
    await wait_healthy(runtime, instance)
    response = httpx.post(f"http://127.0.0.1:{instance.server_port}/predict",
                          json={"data": [[5.1, 3.5, 1.4, 0.2], [5.9, 3.0, 4.2, 1.5], [6.7, 3.0, 5.2, 2.3]]})
    assert response.json()["prediction"] == ["setosa", "versicolor", "virginica"]


async def test_an_instance_survives_the_loss_of_its_runtime(runtimes: Callable[..., ProcessRuntime], tmp_path: Path) -> None:
    first = runtimes()
    spec = default_spec(EXAMPLE, spec_hash="hash-adopt")
    await first.prepare(spec, lambda _: None)
    started = await first.start(spec)
    await wait_healthy(first, started)
    await first.close()
    del first  # as when dockyard restarts: nothing in memory survives

    second = runtimes()
    [adopted] = await second.list(DEPLOYMENT)
    assert (adopted.instance_id, adopted.spec_hash, adopted.server_port, adopted.started_at) == (
        started.instance_id, "hash-adopt", started.server_port, started.started_at)
    assert adopted.state is InstanceState.RUNNING
    assert (await second.probe(adopted, "/health")).healthy
    assert await second.list("ocid1.datasciencemodeldeployment.oc1.local.other") == []

    record = second.state.read(adopted.instance_id)
    assert record is not None and group_members(record.pid)
    await second.stop(adopted.instance_id)
    assert group_members(record.pid) == []  # the whole process group is gone
    assert await second.list() == []
    assert not Path(record.log_file).exists()


async def test_a_crashing_score_py_shows_exited_with_its_traceback(runtimes: Callable[..., ProcessRuntime],
                                                                    tmp_path: Path) -> None:
    score = """
    def load_model():
        raise RuntimeError("model.pkl is corrupt")

    def predict(data):
        return data
    """
    runtime = runtimes()
    spec = default_spec(write_artifact(tmp_path / "artifact", score))
    await runtime.prepare(spec, lambda _: None)  # valid on paper: the failure is at load time
    instance = await runtime.start(spec)
    exited = await wait_exited(runtime, instance.instance_id)
    assert exited.exit_code == 1
    assert "exited with code 1" in exited.detail
    assert "Traceback" in exited.detail and "RuntimeError: model.pkl is corrupt" in exited.detail
    assert not (await runtime.probe(exited, "/health")).healthy

    # The exit code outlives the runtime object too (the instance's wrapper wrote it to a file).
    [again] = await runtimes().list()
    assert again.state is InstanceState.EXITED and again.exit_code == 1


async def test_an_invalid_default_artifact_fails_prepare_naming_a2(runtimes: Callable[..., ProcessRuntime],
                                                                   tmp_path: Path) -> None:
    artifact = write_artifact(tmp_path / "artifact", "def predict(x):\n    pass\n")
    (artifact / "runtime.yaml").unlink()
    with pytest.raises(InvalidParameter) as caught:
        await runtimes().prepare(default_spec(artifact), lambda _: None)
    message = caught.value.message
    assert message.startswith("A2: prepare:")
    assert "score.py: does not define load_model()" in message and "runtime.yaml: missing" in message


HEALTH_SERVER = [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", "--directory", MOUNT_POINT]


@pytest.mark.parametrize("sandbox", SANDBOXES)
async def test_ocir_local_dev_runs_entrypoint_and_cmd(runtimes: Callable[..., ProcessRuntime], tmp_path: Path,
                                                      sandbox: str) -> None:
    artifact = tmp_path / "artifact"
    artifact.mkdir()
    (artifact / "health").write_text("ok")
    port = free_port()
    spec = InstanceSpec(deployment_id=DEPLOYMENT, spec_hash="h", kind="OCIR_CONTAINER", artifact_dir=artifact,
                        image="127.0.0.1:5001/team/server@sha256:" + "a" * 64, entrypoint=HEALTH_SERVER, cmd=[str(port)],
                        # The instance's own PATH must not matter to the sandbox's tools.
                        environment={"MODEL_DEPLOYMENT_OCID": DEPLOYMENT, "PATH": "/nonexistent"},
                        server_port=port, health_port=port)
    runtime = runtimes(sandbox)
    progress: list[str] = []
    await runtime.prepare(spec, progress.append)
    assert any("is NOT used" in line and "server@sha256" in line for line in progress)
    instance = await runtime.start(spec)
    assert (instance.server_port, instance.health_port) == (port, port)
    await wait_healthy(runtime, instance)
    assert httpx.get(f"http://127.0.0.1:{port}/health").text == "ok"

    with pytest.raises(DockyardError, match=f"port {port} is already used by instance {instance.instance_id}"):
        await runtime.start(spec)  # a second replica on the same port


async def test_ocir_without_a_command_is_refused(runtimes: Callable[..., ProcessRuntime]) -> None:
    spec = InstanceSpec(deployment_id=DEPLOYMENT, spec_hash="h", kind="OCIR_CONTAINER", artifact_dir=None,
                        image="127.0.0.1:5001/team/server@sha256:" + "a" * 64)
    with pytest.raises(InvalidParameter, match="the process runtime cannot run an image; give entrypoint/cmd"):
        await runtimes().prepare(spec, lambda _: None)


async def test_ocir_with_a_missing_program_is_refused(runtimes: Callable[..., ProcessRuntime]) -> None:
    spec = InstanceSpec(deployment_id=DEPLOYMENT, spec_hash="h", kind="OCIR_CONTAINER", artifact_dir=None,
                        entrypoint=["gunicorn-not-installed-here", "app:app"])
    with pytest.raises(InvalidParameter, match="'gunicorn-not-installed-here' is not on this host's PATH"):
        await runtimes().prepare(spec, lambda _: None)


async def test_ocir_port_taken_by_another_program_fails_start(runtimes: Callable[..., ProcessRuntime]) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        spec = InstanceSpec(deployment_id=DEPLOYMENT, spec_hash="h", kind="OCIR_CONTAINER", artifact_dir=None,
                            entrypoint=HEALTH_SERVER[:3], cmd=[str(port)], server_port=port, health_port=port)
        with pytest.raises(DockyardError, match=f"port {port} is in use on this host"):
            await runtimes().start(spec)


@pytest.mark.parametrize("sandbox", [*SANDBOXES, "none"])
async def test_stop_kills_what_ignores_sigterm_and_unknown_ids_are_fine(runtimes: Callable[..., ProcessRuntime],
                                                                        sandbox: str) -> None:
    runtime = runtimes(sandbox, stop_timeout_s=0.5)
    stubborn = ("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                "print('ignoring', 'SIGTERM', flush=True); time.sleep(60)")
    spec = InstanceSpec(deployment_id=DEPLOYMENT, spec_hash="h", kind="OCIR_CONTAINER", artifact_dir=None,
                        entrypoint=[sys.executable, "-c", stubborn], server_port=free_port(), health_port=free_port())
    instance = await runtime.start(spec)
    record = runtime.state.read(instance.instance_id)
    assert record is not None
    await wait_logged(runtime, instance.instance_id, "ignoring SIGTERM")
    started = time.monotonic()
    await runtime.stop(instance.instance_id)
    assert 0.5 <= time.monotonic() - started < 5  # stop_timeout_s, then SIGKILL
    assert group_members(record.pid) == []
    await runtime.stop(instance.instance_id)  # again: unknown now, not an error
    await runtime.stop("proc-never-existed")


# --- requirements.txt ------------------------------------------------------------------------------


def build_wheel(directory: Path, name: str = "dockyard_testdep", value: int = 42) -> Path:
    """A pure-Python wheel made by hand, so pip installs it without any network."""
    files = {
        f"{name}/__init__.py": f"VALUE = {value}\n",
        f"{name}-1.0.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n",
        f"{name}-1.0.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(text.encode())}")
    record.append(f"{name}-1.0.dist-info/RECORD,,")
    files[f"{name}-1.0.dist-info/RECORD"] = "\n".join(record) + "\n"
    wheel = directory / f"{name}-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, text in files.items():
            archive.writestr(path, text)
    return wheel


USES_REQUIREMENT = """
import sys
import dockyard_testdep

def load_model():
    return dockyard_testdep.VALUE

def predict(data, model=None):
    return {"value": model, "prefix": sys.prefix, "from": dockyard_testdep.__file__}
"""


async def test_requirements_txt_gets_its_own_environment(runtimes: Callable[..., ProcessRuntime], tmp_path: Path) -> None:
    artifact = write_artifact(tmp_path / "artifact", USES_REQUIREMENT)
    wheel = build_wheel(artifact)
    (artifact / "requirements.txt").write_text(f"./{wheel.name}\n")
    runtime = runtimes()
    progress: list[str] = []
    spec = default_spec(artifact)
    await runtime.prepare(spec, progress.append)
    assert any(line.startswith("creating a Python environment for requirements.txt") for line in progress)
    assert any("Successfully installed dockyard_testdep-1.0" in line or "Successfully installed dockyard-testdep-1.0" in line
               for line in progress), progress
    instance = await runtime.start(spec)
    await wait_healthy(runtime, instance)
    answer = httpx.post(f"http://127.0.0.1:{instance.server_port}/predict", json={}).json()
    assert answer["value"] == 42
    assert answer["prefix"] != sys.prefix and answer["prefix"].startswith(str(tmp_path / "venvs"))
    assert answer["from"].startswith(answer["prefix"])

    # Built once: the same requirements.txt (in another artifact) reuses the environment.
    other = write_artifact(tmp_path / "other", USES_REQUIREMENT)
    (other / "requirements.txt").write_bytes((artifact / "requirements.txt").read_bytes())
    again: list[str] = []
    started = time.monotonic()
    python = ensure_environment(other, tmp_path / "venvs", again.append)
    assert time.monotonic() - started < 1 and "built before" in again[0]
    assert Path(python).parent.parent.resolve() == Path(answer["prefix"]).resolve()
    assert len(list((tmp_path / "venvs" / "envs").iterdir())) == 1


async def test_a_failing_pip_install_fails_prepare_with_pips_last_lines(runtimes: Callable[..., ProcessRuntime],
                                                                         tmp_path: Path) -> None:
    artifact = write_artifact(tmp_path / "artifact", USES_REQUIREMENT)
    (artifact / "requirements.txt").write_text("./dockyard_nothing-1.0-py3-none-any.whl\n")
    with pytest.raises(EnvironmentBuildFailed) as caught:
        await runtimes().prepare(default_spec(artifact), lambda _: None)
    message = caught.value.message
    assert message.startswith("prepare: could not install requirements.txt with pip (exit code 1); last output:")
    assert "dockyard_nothing-1.0-py3-none-any.whl" in message
    assert list((tmp_path / "venvs" / "envs").iterdir()) == []  # nothing half-built is left
    assert [p.name for p in (tmp_path / "venvs").iterdir() if not p.name.startswith(".")] == ["envs"]


def test_the_inference_server_runs_standalone_on_a_port(tmp_path: Path) -> None:
    """`python -m dockyard.inference --artifact-dir DIR --port N`, as a person would run it."""
    import subprocess

    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "dockyard.inference", "--artifact-dir", str(EXAMPLE),
                               "--host", "127.0.0.1", "--port", str(port)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/health")
                break
            except httpx.TransportError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise
                time.sleep(0.05)
        assert health.json() == {"status": "ok"}
        answer = httpx.post(f"http://127.0.0.1:{port}/predict", json={"data": [[5.1, 3.5, 1.4, 0.2]]})
        assert answer.json()["prediction"] == ["setosa"]
    finally:
        server.send_signal(signal.SIGTERM)
        output, _ = server.communicate(timeout=15)
    assert server.returncode == -signal.SIGTERM  # a graceful shutdown; uvicorn re-raises the signal
    assert f"on http://127.0.0.1:{port}" in output and "POST /predict 200" in output


async def test_auto_sandbox_falls_back_and_warns(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import dockyard.runtimes.process as process_module

    broken = {"bwrap"}
    real = process_module.probe_sandbox
    monkeypatch.setattr(process_module, "probe_sandbox",
                        lambda name: (False, f"{name} broken") if name in broken else real(name))
    said: list[str] = []
    if PROBES["unshare"][0]:
        assert (await ProcessRuntime(tmp_path / "a").sandbox(said.append)).name == "unshare"
    broken.add("unshare")
    assert (await ProcessRuntime(tmp_path / "b").sandbox(said.append)).name == "none"
    assert "WARNING instances run without a sandbox" in said[-1]
    with pytest.raises(DockyardError, match="the bwrap sandbox does not work on this machine"):
        await ProcessRuntime(tmp_path / "c", sandbox="bwrap").sandbox()
    with pytest.raises(ValueError, match="unknown sandbox 'docker'"):
        ProcessRuntime(tmp_path / "d", sandbox="docker")

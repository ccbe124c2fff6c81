"""`dockyard run`: the seed's Flask LDA example started as a deployment would start it, reachable
with the printed curl lines, its logs streamed, and stopped and removed on Ctrl-C or SIGTERM.

Needs the engine, the open registry and the LDA image and artifact (scripts/test sets them up).
"""

from __future__ import annotations

import asyncio
import os
import queue
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
LDA = "127.0.0.1:5001/dockyard-test/lda-flask:1.0.0"
LDA_ZIP = REPO / "build" / "lda-artifact.zip"
LDA_ARGS = ["--artifact", str(LDA_ZIP), "--server-port", "5000", "--health-port", "5000",
            "--cmd", "python /opt/ds/model/deployed_model/api.py", "--predict-data", '{"line": "12"}']


def _infra_missing(what: str, command: str) -> None:
    message = f"{what}; run `{command}` (as root) first"
    if os.environ.get("DOCKYARD_TEST_REQUIRE_INFRA") == "1":
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="module")
def engine() -> docker.DockerClient:
    try:
        client = docker.from_env(version="auto", timeout=60)
        client.ping()
    except Exception as exc:  # any failure to reach the engine means there is none
        _infra_missing(f"no Docker engine answers ({exc})", "bash scripts/infra/docker.sh")
    try:
        client.images.get(LDA)
    except docker.errors.ImageNotFound:
        _infra_missing(f"the test image {LDA} is missing", "bash scripts/infra/images.sh")
    if not LDA_ZIP.is_file():
        _infra_missing(f"the LDA example artifact {LDA_ZIP} is missing", "bash scripts/infra/lda-artifact.sh")
    return client


class Running:
    """`dockyard run ...` in the background, its stdout read line by line."""

    def __init__(self, *args: str) -> None:
        self.process = subprocess.Popen([sys.executable, "-m", "dockyard.cli.main", "run", *args], cwd=REPO,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for text in self.process.stdout:
            self._queue.put(text.rstrip("\n"))
        self._queue.put(None)

    def until(self, pattern: str, timeout_s: float = 60) -> re.Match[str]:
        deadline = time.monotonic() + timeout_s
        for text in self.lines:
            if found := re.search(pattern, text):
                return found
        while True:
            try:
                text = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no line matching {pattern!r} within {timeout_s} s:\n" + "\n".join(self.lines))
            if text is None:
                raise AssertionError(f"the command ended before {pattern!r}:\n" + "\n".join(self.lines)
                                     + (self.process.stderr.read() if self.process.stderr else ""))
            self.lines.append(text)
            if found := re.search(pattern, text):
                return found

    def finish(self, timeout_s: float = 30) -> int:
        code = self.process.wait(timeout_s)
        while (text := self._queue.get(timeout=5)) is not None:
            self.lines.append(text)
        return code

    def kill(self, engine: docker.DockerClient) -> None:
        """After a failed test: stop the command the way a user would, then make sure its
        container is gone even if the command could not clean up."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        for text in self.lines:
            if found := re.match(r"^container (\S+)", text):
                try:
                    engine.api.remove_container(found.group(1), force=True, v=True)
                except docker.errors.NotFound:
                    pass


@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_run_serves_prints_curl_lines_streams_logs_and_cleans_up(engine: docker.DockerClient,
                                                                 stop_signal: signal.Signals) -> None:
    running = Running(LDA, *LDA_ARGS)
    try:
        container = running.until(r"^container (\S+)").group(1)
        health_curl = running.until(r"^  (curl -vf http://127\.0\.0\.1:\d+/health)$").group(1)
        predict_curl = running.until(r"^  (curl -H .* -X POST http://127\.0\.0\.1:\d+/predict --data .*)$").group(1)
        running.until(r"^healthy after [\d.]+ s: ready for requests$")

        attrs = engine.api.inspect_container(container)
        mounts = [m for m in attrs["Mounts"] if m["Destination"] == "/opt/ds/model/deployed_model"]
        assert mounts and mounts[0]["RW"] is False  # the artifact, read-only (A3)
        assert any(v.startswith("MODEL_DEPLOYMENT_OCID=ocid1.datasciencemodeldeployment.")
                   for v in attrs["Config"]["Env"])
        assert attrs["Config"]["Healthcheck"]["Test"] == ["CMD", "curl", "-f", "http://localhost:5000/health"]
        assert attrs["HostConfig"]["Init"] is True

        # The printed lines paste as they are.
        health = subprocess.run(shlex.split(health_curl), capture_output=True, text=True, timeout=30)
        assert health.returncode == 0 and '"status":"success"' in health.stdout.replace(" ", "")
        predict = subprocess.run(shlex.split(predict_curl), capture_output=True, text=True, timeout=30)
        assert predict.returncode == 0 and '{"prediction LDA":2}' in predict.stdout, predict.stdout
        running.until(r"^\| .*POST /predict HTTP/1\.1\" 200")  # Flask's own access log, streamed

        running.process.send_signal(stop_signal)
        assert running.finish() == 0, "\n".join(running.lines)
        assert any(re.match(r"stopped in [\d.]+ s \(exit code 143\); container removed", text) for text in running.lines)
        with pytest.raises(docker.errors.NotFound):
            engine.api.inspect_container(container)
    finally:
        running.kill(engine)


def test_run_says_when_the_container_exits_by_itself(engine: docker.DockerClient) -> None:
    running = Running(LDA, "--cmd", "python3 -c 'import sys; print(\"bye\"); sys.exit(3)'")
    try:
        container = running.until(r"^container (\S+)").group(1)
        running.until(r"^the container exited by itself: exit code 3")
        assert running.finish() == 1
        assert "| bye" in running.lines
        with pytest.raises(docker.errors.NotFound):
            engine.api.inspect_container(container)
    finally:
        running.kill(engine)


def test_run_refuses_bad_input_before_starting(engine: docker.DockerClient) -> None:
    completed = subprocess.run([sys.executable, "-m", "dockyard.cli.main", "run", LDA, "--health-port", "24224"],
                               capture_output=True, text=True, cwd=REPO, timeout=60)
    assert completed.returncode == 2 and "reserved" in completed.stderr
    assert completed.stdout == ""  # nothing started: no container line


def test_run_reports_a_container_that_ended_before_its_start_returned(engine: docker.DockerClient, tmp_path: Path) -> None:
    """The race `test_run_says_when_the_container_exits_by_itself` may meet, made certain:
    `run_locally` with the engine's start held back until its container has exited. It is
    named, its output shown and its exit reported, as a container that exits later; not called
    one that did not start."""
    from dockyard.checking.inputs import CheckRequest
    from dockyard.checking.local_run import run_locally
    from dockyard.checking.session import docker_runtime
    from dockyard.runtimes.base import InstanceSpec, InstanceState
    from dockyard.settings import Settings

    request = CheckRequest(image=LDA, cmd=["sh", "-c", "echo bye; exit 3"])
    settings = Settings(data_dir=tmp_path)
    runtime = docker_runtime(request, settings, quick_healthcheck=False)
    start = runtime.start

    async def start_and_wait_for_the_exit(spec: InstanceSpec) -> Any:
        instance = await start(spec)
        for _ in range(200):
            for found in await runtime.list(spec.deployment_id):
                if found.instance_id == instance.instance_id and found.state is InstanceState.EXITED:
                    return found
            await asyncio.sleep(0.05)
        raise AssertionError(f"container {instance.instance_id} did not exit within 10 s")

    runtime.start = start_and_wait_for_the_exit  # type: ignore[method-assign]
    said: list[str] = []
    logged: list[str] = []

    async def run() -> int:
        return await run_locally(request, settings, say=said.append, log_line=logged.append, progress=lambda _: None,
                                 stop=asyncio.Event(), runtime=runtime)  # fmt: skip

    assert asyncio.run(run()) == 1
    container = re.match(r"^container (\S+)$", said[0])
    assert container is not None, said
    assert any(text.startswith("the container exited by itself: exit code 3") for text in said), said
    assert "bye" in logged and said[-1] == "container removed"
    with pytest.raises(docker.errors.NotFound):
        engine.api.inspect_container(container.group(1))

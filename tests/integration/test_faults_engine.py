"""A restarted Docker engine: dockyard rides it out and brings its deployments back.

WARNING: this module stops and restarts the machine's one Docker engine (the registries are
not containers and keep running). Every container on the engine stops with it (live-restore is
off), including those of any other docker test running at the same time, so it lives in its own
module, waits until no other dockyard's containers run, and restarts the engine in a `finally`
whatever happens. Without root (or an engine it may restart) it skips, or fails under
DOCKYARD_TEST_REQUIRE_INFRA=1.

What it proves, with the seed's LDA image at two instances:
- while the engine is away the control plane keeps answering (GET 200) and a create made
  meanwhile is accepted (never a 5xx) and deploys once the engine is back;
- afterwards the deployment is ACTIVE again, answers predict through its URL, and never has
  more running containers than its instance count, with no duplicates left behind.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import httpx
import oci
import pytest

from tests.support.oci_config import COMPARTMENT
from tests.integration.docker_fixtures import (
    LABEL_PREFIX,
    LDA,
    LDA_ZIP,
    REPO,
    Harness,
    Janitor,
    check_infra,
    containers_of,
    infra_missing,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ARTIFACT_MOUNT = "/opt/ds/model/deployed_model"
LDA_ENTRYPOINT = ["python", f"{ARTIFACT_MOUNT}/api.py"]
INSTANCES = 2
DOCKERD_LOG = Path(os.environ.get("DOCKYARD_DOCKERD_LOG", "/var/log/dockerd.log"))
OTHERS_WAIT_S = float(os.environ.get("DOCKYARD_ENGINE_RESTART_WAIT_S", "180"))
RECOVERY_S = 240  # engine start, image check, two LDA starts and their health: generous on 2 busy cores


# --- the engine ---------------------------------------------------------------------------------------


DEFAULT_SOCKET = "unix:///var/run/docker.sock"


def dockerd_pid() -> int | None:
    """The dockerd serving DOCKER_HOST (default socket: the one started without another --host)."""
    target = os.environ.get("DOCKER_HOST") or DEFAULT_SOCKET
    found = subprocess.run(["pgrep", "-x", "dockerd"], capture_output=True, text=True).stdout.split()
    for pid in map(int, found):
        try:
            args = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
        except OSError:
            continue
        hosts = [args[i + 1] for i, a in enumerate(args[:-1]) if a in ("--host", "-H")]
        hosts += [a.split("=", 1)[1] for a in args if a.startswith("--host=")]
        same = {h.replace("/var/run/", "/run/") for h in hosts} & {target.replace("/var/run/", "/run/")}
        if same or (not hosts and target == DEFAULT_SOCKET):
            return pid
    return None


def others_running(engine: docker.DockerClient) -> list[str]:
    """Running containers some other dockyard manages (label '<prefix>.managed', not our prefix)."""
    names = []
    for container in engine.containers.list():
        labels = container.labels or {}
        if any(key.endswith(".managed") and not key.startswith(LABEL_PREFIX) for key in labels):
            names.append(container.name)
    return names


def wait_for_a_quiet_engine(engine: docker.DockerClient) -> None:
    deadline = time.monotonic() + OTHERS_WAIT_S
    while (others := others_running(engine)) and time.monotonic() < deadline:
        time.sleep(2)
    if others:
        message = (f"other dockyard containers still run after {OTHERS_WAIT_S:g} s ({', '.join(others[:5])}); "
                   "restarting the engine would stop them")
        if os.environ.get("DOCKYARD_TEST_REQUIRE_INFRA") == "1":
            # CI runs one test at a time: these are leftovers of an earlier test, not a neighbour.
            print(f"proceeding anyway: {message}")
            return
        pytest.skip(message)


def stop_engine(timeout_s: float = 120) -> list[str]:
    """SIGTERM dockerd and wait for it to exit; return its command line, to start it the same way."""
    pid = dockerd_pid()
    assert pid is not None, "no dockerd process to restart"
    cmdline = [part for part in Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0") if part]
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while Path(f"/proc/{pid}").exists():
        assert time.monotonic() < deadline, f"dockerd (pid {pid}) did not exit within {timeout_s} s of SIGTERM"
        time.sleep(0.2)
    return cmdline


def start_engine(cmdline: list[str] | None, timeout_s: float = 120) -> None:
    """Start dockerd as scripts/infra/docker.sh does (own session, no inherited descriptors)."""
    if dockerd_pid() is None:
        if cmdline or os.environ.get("DOCKER_HOST"):
            assert cmdline, "no command line to start the engine at DOCKER_HOST with"
            with DOCKERD_LOG.open("ab") as log:
                subprocess.Popen(cmdline, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                 start_new_session=True, close_fds=True)  # fmt: skip
        else:
            subprocess.run(["bash", str(REPO / "scripts" / "infra" / "docker.sh")], check=True, timeout=timeout_s)
    deadline = time.monotonic() + timeout_s
    while subprocess.run(["docker", "info"], capture_output=True).returncode != 0:  # honours DOCKER_HOST
        assert time.monotonic() < deadline, f"the Docker engine did not answer within {timeout_s} s of its start"
        time.sleep(0.5)


# --- fixtures -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    if os.geteuid() != 0:
        infra_missing("restarting the Docker engine needs root", "scripts/test")
    engine = check_infra()
    h = Harness(root=tmp_path_factory.mktemp("engine-restart"), engine=engine, janitor=Janitor(engine))
    try:
        # The LDA server needs 2-3 s to turn healthy, far more when the machine is busy.
        h.start({"DOCKYARD_HEALTH_DEADLINE_S": "180", "DOCKYARD_HEALTH_START_PERIOD_S": "60"})
        yield h
    finally:
        h.record_every_deployment()
        h.delete_quietly(h.janitor.deployments)
        h.stop()
        problems = h.janitor.clean()
        engine.close()
        if problems:
            pytest.fail("cleanup left things behind:\n" + "\n".join(problems), pytrace=False)


def predict(h: Harness, deployment: Any) -> int | None:
    try:
        return httpx.post(f"{deployment.model_deployment_url}/predict", json={"line": "12"}, timeout=10,
                          trust_env=False, auth=h.server.auth).status_code  # fmt: skip
    except httpx.HTTPError:
        return None


def running(h: Harness, deployment_id: str) -> list[Any]:
    try:
        return containers_of(h.engine, deployment_id, running_only=True)
    except (docker.errors.DockerException, OSError):
        return []  # the engine is away or just back


# --- the test -----------------------------------------------------------------------------------------


def test_a_restarted_engine_is_recovered_from_and_the_api_stays_up(harness: Harness) -> None:
    h = harness
    lda = h.model("lda", LDA_ZIP)
    deployment_id, wr_id = h.create(model_id=lda, image=LDA, name="engine", server_port=5000, health_port=5000,
                                    entrypoint=LDA_ENTRYPOINT, memory_gb=2, count=INSTANCES)  # fmt: skip
    wr = h.wait_work_request(wr_id, 180)
    assert wr.status == "SUCCEEDED", (h.logs(wr_id), h.errors(wr_id))
    before = h.get(deployment_id)
    assert before.lifecycle_state == "ACTIVE" and predict(h, before) == 200
    assert len(running(h, deployment_id)) == INSTANCES

    wait_for_a_quiet_engine(h.engine)
    cmdline: list[str] | None = None
    during_id = during_wr = None
    try:
        cmdline = stop_engine()
        # The engine is away: the control plane answers reads, and a create is accepted
        # (it waits for the engine) or refused with a clear 4xx/503, never a 500.
        time.sleep(3)  # a few reconcile passes run against the missing engine
        assert h.get(deployment_id).id == deployment_id
        with h.http() as http:
            assert http.get("/modelDeployments", params={"compartmentId": COMPARTMENT}).status_code == 200
        try:
            during_id, during_wr = h.create(model_id=lda, image=LDA, name="during", server_port=5000, health_port=5000,
                                            entrypoint=LDA_ENTRYPOINT, memory_gb=2)  # fmt: skip
        except oci.exceptions.ServiceError as refused:
            assert refused.status < 500 or refused.status == 503, refused
            assert refused.message, refused
        gone = h.get(deployment_id)
        assert gone.lifecycle_state in ("ACTIVE", "NEEDS_ATTENTION", "UPDATING"), (gone.lifecycle_state, gone.lifecycle_details)
    finally:
        start_engine(cmdline)

    # Back: ACTIVE, answering, and never more running containers than asked for.
    most = 0
    back = time.monotonic()
    deadline = back + RECOVERY_S
    states: list[str] = [gone.lifecycle_state]
    while True:
        count = len(running(h, deployment_id))
        most = max(most, count)
        got = h.get(deployment_id)
        if states[-1] != got.lifecycle_state:
            states.append(got.lifecycle_state)
        if got.lifecycle_state == "ACTIVE" and count == INSTANCES and predict(h, got) == 200:
            print(f"recovered {time.monotonic() - back:.1f} s after the engine's start; states {states}")
            break
        assert time.monotonic() < deadline, (
            f"not recovered within {RECOVERY_S} s: {got.lifecycle_state} {got.lifecycle_details!r}, {count} running\n"
            f"server log:\n{h.server_log()}")
        time.sleep(0.5)
    assert most <= INSTANCES, f"{most} containers ran at once for a deployment of {INSTANCES}"
    time.sleep(3)  # a few more passes: nothing extra appears, exited leftovers are removed
    assert len(running(h, deployment_id)) == INSTANCES
    every = containers_of(h.engine, deployment_id)
    assert len(every) == INSTANCES, [(c.name, c.status) for c in every]
    assert [i for i in h.instances(deployment_id) if i["state"] == "RUNNING"].__len__() == INSTANCES

    if during_id is not None:
        wr = h.wait_work_request(during_wr, RECOVERY_S)
        assert wr.status == "SUCCEEDED", (h.logs(during_wr), h.errors(during_wr))
        assert predict(h, h.get(during_id)) == 200

"""End to end: deployments created through the API really run, on a real Docker engine.

A real dockyard process (runtime docker, shortened health settings) is driven the way users
drive it: the official `oci` SDK for the catalog, deployments and work requests, plain HTTP for
dockyard's own instances view and for the model servers. What is asserted is what a user sees
(lifecycleState, lifecycleDetails, work request status, errors and logs) and what the engine
really runs (`docker inspect`).

Needs: the engine (scripts/infra/docker.sh), the registries on 127.0.0.1:5001/5002
(scripts/infra/registry.sh), the test images (scripts/infra/images.sh) and the LDA artifact
(scripts/infra/lda-artifact.sh). Without them the module is skipped, or fails when
DOCKYARD_TEST_REQUIRE_INFRA=1 (scripts/test), naming the command to run.

Everything made here (containers, image tags, registry manifests) is removed at the end, also
after a failure: see docker_fixtures.Janitor.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import docker.errors
import httpx
import oci
import pytest

from tests.integration.docker_fixtures import (
    AUTH_PASSWORD,
    AUTH_REGISTRY,
    AUTH_USER,
    BASE,
    DEPLOYMENT_LABEL,
    HEALTH,
    LABEL_PREFIX,
    LDA,
    LDA_ZIP,
    MANAGED,
    NOCURL,
    NS,
    RUN,
    RUN_LABEL,
    SERVER_CMD,
    SERVER_PY,
    Harness,
    build,
    containers_of,
    host_port,
    push,
    registry_digest,
    run_image,
    running_harness,
    untag,
    until,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ARTIFACT_MOUNT = "/opt/ds/model/deployed_model"
LDA_ENTRYPOINT = ["python", f"{ARTIFACT_MOUNT}/api.py"]


# --- fixtures -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    yield from running_harness(tmp_path_factory.mktemp("docker-deployments"))


@pytest.fixture
def h(harness: Harness) -> Iterator[Harness]:
    """The module's harness; the deployments a test creates are deleted after it."""
    harness.ensure_running()
    before = set(harness.janitor.deployments)
    yield harness
    harness.delete_quietly(harness.janitor.deployments - before)


def _wait_all(h: Harness, wr_ids: list[str], timeout_s: float = 60) -> list[Any]:
    with ThreadPoolExecutor(len(wr_ids)) as pool:
        return list(pool.map(lambda wr: h.wait_work_request(wr, timeout_s), wr_ids))


def _health(endpoint: str) -> int | None:
    try:
        return httpx.get(f"{endpoint}/health", timeout=2, trust_env=False).status_code
    except httpx.HTTPError:
        return None


def _predict(endpoint: str, body: Any, auth: httpx.Auth | None = None) -> httpx.Response:
    """POST /predict to an instance (unsigned) or through the gateway (signed with `auth`)."""
    return httpx.post(f"{endpoint}/predict", json=body, timeout=10, trust_env=False, auth=auth)


def _only_running(h: Harness, deployment_id: str) -> Any:
    running = containers_of(h.engine, deployment_id, running_only=True)
    assert len(running) == 1, [c.name for c in running]
    return running[0]


# --- 1. the seed's example, as a user runs it ----------------------------------------------------------


def test_the_seed_lda_example_deployed_by_tag_through_the_sdk(h: Harness) -> None:
    registry_side = registry_digest(LDA)
    deployment_id, wr_id = h.create(model_id=h.model("lda", LDA_ZIP), image=LDA, name="lda", server_port=5000,
                                    health_port=5000, entrypoint=LDA_ENTRYPOINT, memory_gb=2)
    assert h.get(deployment_id).lifecycle_state == "CREATING"

    wr = h.wait_work_request(wr_id, 90)
    logs = h.logs(wr_id)
    assert wr.status == "SUCCEEDED", (logs, h.errors(wr_id))
    assert wr.percent_complete == 100
    got = h.get(deployment_id)
    assert got.lifecycle_state == "ACTIVE"
    assert got.lifecycle_details.startswith("Active; 1 of 1 instances healthy. Ready in"), got.lifecycle_details
    env = got.model_deployment_configuration_details.environment_configuration_details
    assert env.image == LDA  # by tag, as given ...
    assert env.image_digest == registry_side  # ... pinned to the registry's digest (D2)
    # The time-to-ready breakdown, phase by phase, is the work request's last word.
    assert re.fullmatch(r"Active; 1 of 1 instances healthy\. Ready in [0-9.]+ s \(unpack [0-9.]+ s, "
                        r"pull [0-9.]+ s, start [0-9.]+ s, health [0-9.]+ s\)", logs[-1]), logs
    assert any(line.startswith("start: instance ") for line in logs), logs

    [instance] = h.instances(deployment_id)
    assert instance["state"] == "RUNNING" and instance["isCurrentVersion"]
    assert "docker" in instance["runtime"].split("+"), instance["runtime"]  # "docker" or "docker+process"
    endpoint = instance["endpoint"]
    assert re.fullmatch(r"http://127\.0\.0\.1:[0-9]+", endpoint), endpoint
    assert _health(endpoint) == 200
    answer = _predict(endpoint, {"line": "12"})
    assert answer.status_code == 200 and answer.json() == {"prediction LDA": 2}, answer.text
    # ... and through the deployment's own URL, as a client of the service calls it.
    assert _predict(got.model_deployment_url, {"line": "12"}).status_code == 401  # the data plane checks signatures
    answer = _predict(got.model_deployment_url, {"line": "12"}, auth=h.server.auth)
    assert answer.status_code == 200 and answer.json() == {"prediction LDA": 2}, answer.text

    container = _only_running(h, deployment_id)
    attrs = container.attrs
    assert container.name == instance["instanceId"]
    [mount] = [mt for mt in attrs["Mounts"] if mt["Destination"] == ARTIFACT_MOUNT]
    assert mount["Type"] == "bind" and mount["RW"] is False  # A3: read-only
    assert sorted(Path(mount["Source"]).iterdir()) and (Path(mount["Source"]) / "api.py").is_file()
    assert attrs["HostConfig"]["Init"] is True
    assert attrs["HostConfig"]["Memory"] == 2 * 1024**3
    labels = attrs["Config"]["Labels"]
    assert labels[MANAGED] == "true" and labels[DEPLOYMENT_LABEL] == deployment_id
    assert labels[f"{LABEL_PREFIX}.instance-id"] == container.name and labels[f"{LABEL_PREFIX}.server-port"] == "5000"
    assert labels[f"{LABEL_PREFIX}.spec-hash"] == instance["specHash"]
    check = attrs["Config"]["Healthcheck"]
    assert check == {
        "Test": ["CMD", "curl", "-f", "http://localhost:5000/health"],
        "Interval": HEALTH["interval_s"] * NS,
        "Timeout": HEALTH["timeout_s"] * NS,
        "StartPeriod": HEALTH["start_period_s"] * NS,
        "Retries": HEALTH["retries"],
    }
    assert attrs["Config"]["Entrypoint"] == LDA_ENTRYPOINT
    assert attrs["Config"]["Image"] == f"{LDA}@{registry_side}"  # the tag for people, the digest for the engine
    assert attrs["Image"] == h.engine.images.get(LDA).id
    assert f"MODEL_DEPLOYMENT_OCID={deployment_id}" in attrs["Config"]["Env"]
    assert [b["HostIp"] for b in attrs["HostConfig"]["PortBindings"]["5000/tcp"]] == ["127.0.0.1"]
    # Hardening (issue 5): never privileged, no new privileges, Docker's default capabilities and
    # nothing more, a pids limit, memory limited, no host network or PID namespace.
    host = attrs["HostConfig"]
    assert host["Privileged"] is False and "no-new-privileges" in host["SecurityOpt"]
    assert not host.get("CapAdd") and not host.get("Devices") and host["PidsLimit"] and host["PidsLimit"] > 0
    assert host["NetworkMode"] in ("default", "bridge") and host.get("PidMode", "") == "" and host.get("IpcMode") != "host"
    # Docker's own HEALTHCHECK (curl inside the container) agrees.
    until(lambda: h.engine.api.inspect_container(container.id)["State"]["Health"]["Status"] == "healthy",
          HEALTH["start_period_s"] + 10, 0.25, "Docker health status healthy")


# --- 2. D2: the pinned digest survives a moved tag ------------------------------------------------------


def test_d2_a_replacement_runs_the_pinned_digest_after_the_tag_moved(h: Harness) -> None:
    image = run_image("lda", "d2")
    repository = image.rsplit(":", 1)[0]
    h.engine.images.get(LDA).tag(repository, "d2")
    original_digest = push(h.engine, h.janitor, image)
    original_id = h.engine.images.get(image).id
    deployment_id, wr_id = h.create(model_id=h.model("lda", LDA_ZIP), image=image, name="d2", server_port=5000,
                                    health_port=5000, entrypoint=LDA_ENTRYPOINT, memory_gb=2)
    assert h.wait_work_request(wr_id, 90).status == "SUCCEEDED", h.logs(wr_id)
    env = h.get(deployment_id).model_deployment_configuration_details.environment_configuration_details
    assert env.image == image and env.image_digest == original_digest
    first = _only_running(h, deployment_id)

    # The same name:tag pushed again with different content.
    moved_id = build(h.engine, f"FROM {image}\nCOPY moved /moved\n", image, {"moved": b"new content\n"})
    moved_digest = push(h.engine, h.janitor, image)
    assert moved_id != original_id and moved_digest != original_digest
    assert registry_digest(image) == moved_digest

    first.kill()

    def replaced(d: Any) -> bool:
        instances = h.instances(deployment_id)
        return d.lifecycle_state == "ACTIVE" and len(instances) == 1 and instances[0]["lastProbe"] == "200" \
            and instances[0]["instanceId"] != first.name
    got, seen = h.watch(deployment_id, replaced, 40)
    replacement = _only_running(h, deployment_id)
    assert replacement.attrs["Image"] == original_id != moved_id
    assert replacement.attrs["Config"]["Image"] == f"{image}@{original_digest}"
    assert f"{repository}@{original_digest}" in h.engine.images.get(replacement.attrs["Image"]).attrs["RepoDigests"]
    env = got.model_deployment_configuration_details.environment_configuration_details
    assert env.image_digest == original_digest
    [instance] = [i for i in h.instances(deployment_id) if i["instanceId"] == replacement.name]
    assert instance["restarts"] >= 1
    answer = _predict(instance["endpoint"], {"line": "12"})
    assert answer.json() == {"prediction LDA": 2}, answer.text
    assert not [c for c in containers_of(h.engine, deployment_id) if c.id == first.id]  # the killed one is gone


# --- 3-5. failures, each attributed to its phase -------------------------------------------------------


def test_an_image_without_curl_fails_within_seconds_naming_c9(h: Harness) -> None:
    started = time.monotonic()
    deployment_id, wr_id = h.create(model_id=h.server_model(), image=NOCURL, name="nocurl", server_port=8080,
                                    health_port=8080, cmd=["python3", "-m", "http.server", "8080"])
    wr = h.wait_work_request(wr_id, 30)
    took = time.monotonic() - started
    got = h.get(deployment_id)
    assert wr.status == "FAILED" and got.lifecycle_state == "FAILED"
    assert took < 15, took
    assert "C9" in got.lifecycle_details and "curl" in got.lifecycle_details, got.lifecycle_details
    assert "apt-get install -y curl" in got.lifecycle_details
    errors = h.errors(wr_id)
    assert errors and "C9" in errors[-1]
    assert "C9" in h.logs(wr_id)[-1]
    assert containers_of(h.engine, deployment_id) == []


def test_a_server_that_crashes_at_start_fails_with_its_exit_code_and_output(h: Harness) -> None:
    deployment_id, wr_id = h.create(model_id=h.server_model(), image=BASE, name="crash", server_port=8080,
                                    health_port=8080,
                                    cmd=["python3", "-c", "import sys; print('boom'); sys.exit(3)"])
    wr = h.wait_work_request(wr_id, 40)
    got = h.get(deployment_id)
    assert wr.status == "FAILED" and got.lifecycle_state == "FAILED"
    details = got.lifecycle_details
    assert details.startswith("start: the instance exited before becoming healthy"), details
    assert "exit code 3" in details and "boom" in details, details
    errors = h.errors(wr_id)
    assert errors and "exit code 3" in errors[-1] and "boom" in errors[-1]
    assert any("instance exited: exit code 3" in line for line in h.logs(wr_id))
    until(lambda: containers_of(h.engine, deployment_id) == [], 10, 0.2, "no containers left")
    # A FAILED deployment is not crash-looped: no container appears for longer than the restart
    # back-off and several reconcile passes.
    quiet_until = time.monotonic() + 3
    while time.monotonic() < quiet_until:
        assert containers_of(h.engine, deployment_id) == [], "a FAILED deployment started an instance again"
        time.sleep(0.05)
    assert h.get(deployment_id).lifecycle_state == "FAILED"


def test_a_server_that_never_turns_healthy_fails_at_the_deadline_with_the_probe_status(h: Harness) -> None:
    started = time.monotonic()
    deployment_id, wr_id = h.create_server("never-healthy", env={"MODE": "health500"})
    wr = h.wait_work_request(wr_id, HEALTH["deadline_s"] + 30)
    took = time.monotonic() - started
    got = h.get(deployment_id)
    assert wr.status == "FAILED" and got.lifecycle_state == "FAILED"
    assert HEALTH["deadline_s"] - 1 <= took <= HEALTH["deadline_s"] + 10, took
    details = got.lifecycle_details
    assert details.startswith("health: H2 deadline passed: 0 of 1 instances healthy"), details
    assert f"(deadline {HEALTH['deadline_s']} s)" in details
    assert "GET /health answered 500" in details, details
    errors = h.errors(wr_id)
    assert errors and "GET /health answered 500" in errors[-1]
    until(lambda: containers_of(h.engine, deployment_id) == [], 10, 0.2, "no containers left")


# --- 6. healthy, then failing: restarted -------------------------------------------------------------------


def test_an_instance_that_turns_unhealthy_is_restarted_through_needs_attention(h: Harness) -> None:
    deployment_id, wr_id = h.create_server("turns-unhealthy")
    assert h.wait_work_request(wr_id, 30).status == "SUCCEEDED", h.logs(wr_id)
    first = _only_running(h, deployment_id)
    assert first.exec_run(["touch", "/tmp/fail"]).exit_code == 0

    got, seen = h.watch(deployment_id, lambda d: d.lifecycle_state == "NEEDS_ATTENTION", 20, 0.05)
    assert seen[0] == "ACTIVE", seen
    assert "0 of 1 instances healthy" in got.lifecycle_details, got.lifecycle_details
    got, seen = h.watch(deployment_id, lambda d: d.lifecycle_state == "ACTIVE", 30)
    # (no time-to-ready breakdown: that belongs to the create, not to an automatic restart)
    assert got.lifecycle_details == "Active; 1 of 1 instances healthy", got.lifecycle_details
    second = _only_running(h, deployment_id)
    assert second.id != first.id
    assert not [c for c in containers_of(h.engine, deployment_id) if c.id == first.id]
    [instance] = h.instances(deployment_id)
    assert instance["instanceId"] == second.name and instance["restarts"] >= 1
    assert _health(instance["endpoint"]) == 200


# --- 7. scaling -------------------------------------------------------------------------------------------


def test_scaling_three_to_one_removes_two_and_leaves_the_third_untouched(h: Harness) -> None:
    deployment_id, wr_id = h.create_server("scale", count=3)
    assert h.wait_work_request(wr_id, 40).status == "SUCCEEDED", h.logs(wr_id)
    assert h.get(deployment_id).lifecycle_details.startswith("Active; 3 of 3 instances healthy")
    before = {c.id: c for c in containers_of(h.engine, deployment_id, running_only=True)}
    assert len(before) == 3
    instances = h.instances(deployment_id)
    assert len(instances) == 3 and len({i["endpoint"] for i in instances}) == 3
    assert all(_health(i["endpoint"]) == 200 for i in instances)

    wr_id = h.update_count(deployment_id, 1)
    wr = h.wait_work_request(wr_id, 30)
    assert wr.status == "SUCCEEDED", h.logs(wr_id)
    got = h.get(deployment_id)
    assert got.lifecycle_state == "ACTIVE" and got.lifecycle_details.startswith("Active; 1 of 1 instances healthy")
    assert got.model_deployment_configuration_details.model_configuration_details.scaling_policy.instance_count == 1
    after = until(lambda: containers_of(h.engine, deployment_id) if len(containers_of(h.engine, deployment_id)) == 1
                  else None, 10, 0.2, "one container")
    [kept] = after
    assert kept.id in before
    old = before[kept.id].attrs["State"]
    assert kept.attrs["State"]["StartedAt"] == old["StartedAt"] and kept.attrs["RestartCount"] == 0
    [instance] = h.instances(deployment_id)
    assert instance["instanceId"] == kept.name and _health(instance["endpoint"]) == 200


# --- 8. rolling updates --------------------------------------------------------------------------------------


@dataclass
class Prober:
    """Probes every running container of a deployment (ports from the engine) in a loop.

    A round with no healthy answer is confirmed by an immediate second round (a container can
    be listed just before it stops) before it counts as a moment without a healthy instance.
    """

    engine: docker.DockerClient
    deployment_id: str
    rounds: int = 0
    gaps: list[str] = field(default_factory=list)
    versions: list[str] = field(default_factory=list)  # the versions that answered, first seen first
    last: list[str] = field(default_factory=list)  # the versions that answered in the last round
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None

    def one_round(self, client: httpx.Client) -> tuple[list[str], str]:
        healthy, notes = [], []
        for container in containers_of(self.engine, self.deployment_id, running_only=True):
            port = host_port(container, 8080)
            if port is None:
                continue
            try:
                if client.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                    answer = client.post(f"http://127.0.0.1:{port}/predict", json={})
                    healthy.append(answer.json()["version"])
                    continue
            except (httpx.HTTPError, ValueError, KeyError) as exc:
                notes.append(f"{container.name}: {type(exc).__name__}")
                continue
            notes.append(f"{container.name}: unhealthy")
        return healthy, ", ".join(notes) or "no running container"

    def run(self) -> None:
        with httpx.Client(timeout=1.0, trust_env=False) as client:
            while not self.stop.is_set():
                healthy, why = self.one_round(client)
                if not healthy:
                    healthy, why = self.one_round(client)
                    if not healthy:
                        self.gaps.append(f"{time.strftime('%H:%M:%S')}: {why}")
                self.versions += [v for v in dict.fromkeys(healthy) if v not in self.versions]
                self.last = healthy
                self.rounds += 1
                time.sleep(0.02)

    def __enter__(self) -> Prober:
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        assert self.thread is not None
        self.thread.join(10)


def test_rolling_updates_always_keep_a_healthy_instance_and_a_broken_image_rolls_back(h: Harness) -> None:
    images = {}
    dockerfile = ("FROM {base}\nCOPY server.py /app/server.py\nENV APP_VERSION={version}\n"
                  "CMD [\"python3\", \"/app/server.py\"]\n")
    for version in ("v1", "v2"):
        images[version] = run_image("app", version)
        build(h.engine, dockerfile.format(base=BASE, version=version), images[version],
              {"server.py": SERVER_PY.encode()})
    images["broken"] = run_image("app", "broken")
    build(h.engine, f"FROM {BASE}\nCMD [\"python3\", \"-c\", \"import sys; print('broken image'); sys.exit(2)\"]\n",
          images["broken"])
    with ThreadPoolExecutor(3) as pool:
        digests = dict(zip(images, pool.map(lambda i: push(h.engine, h.janitor, i), images.values())))

    deployment_id, wr_id = h.create(model_id=h.server_model(), image=images["v1"], name="rolling",
                                    server_port=8080, health_port=8080)
    assert h.wait_work_request(wr_id, 40).status == "SUCCEEDED", h.logs(wr_id)
    v1 = _only_running(h, deployment_id)

    with Prober(h.engine, deployment_id) as prober:
        until(lambda: prober.rounds >= 3, 10, 0.05, "the prober running")
        # An image update (new tag, digest pinned by dockyard) ...
        wr_id = h.update_environment(deployment_id, image=images["v2"])
        wr = h.wait_work_request(wr_id, 40)
        assert wr.status == "SUCCEEDED", (h.logs(wr_id), h.errors(wr_id))
        got = h.get(deployment_id)
        assert got.lifecycle_state == "ACTIVE"
        env = got.model_deployment_configuration_details.environment_configuration_details
        assert env.image == images["v2"] and env.image_digest == digests["v2"]
        v2 = _only_running(h, deployment_id)
        assert v2.id != v1.id and v2.attrs["Config"]["Image"].endswith(digests["v2"])

        # ... an environment update ...
        wr_id = h.update_environment(deployment_id, environment_variables={"APP_VERSION": "v2-env"})
        assert h.wait_work_request(wr_id, 40).status == "SUCCEEDED", h.logs(wr_id)
        v2_env = _only_running(h, deployment_id)
        assert v2_env.id != v2.id

        # ... and a broken image, whose command exits: the old instance keeps serving.
        wr_id = h.update_environment(deployment_id, image=images["broken"])
        wr = h.wait_work_request(wr_id, 60)
        time.sleep(1)  # a few more probe rounds after the rollback
    assert wr.status == "FAILED", h.logs(wr_id)
    got = h.get(deployment_id)
    assert got.lifecycle_state == "ACTIVE"
    assert "rolled back" in got.lifecycle_details and "exit code 2" in got.lifecycle_details, got.lifecycle_details
    errors = h.errors(wr_id)
    assert errors and "exit code 2" in errors[-1] and "broken image" in errors[-1], errors
    assert "rolled back" in h.logs(wr_id)[-1]
    env = got.model_deployment_configuration_details.environment_configuration_details
    assert env.image == images["v2"] and env.image_digest == digests["v2"]  # the configuration that serves
    assert env.environment_variables == {"APP_VERSION": "v2-env"}
    assert _only_running(h, deployment_id).id == v2_env.id
    [instance] = h.instances(deployment_id)
    assert instance["instanceId"] == v2_env.name and instance["isCurrentVersion"]
    assert _predict(instance["endpoint"], {}).json()["version"] == "v2-env"

    assert prober.rounds > 50
    assert prober.gaps == [], f"moments without a healthy instance: {prober.gaps}"
    assert prober.versions == ["v1", "v2", "v2-env"], prober.versions
    assert prober.last == ["v2-env"]


# --- 9. a crash of dockyard itself ---------------------------------------------------------------------------


def test_after_sigkill_a_new_dockyard_adopts_the_running_instances_and_removes_orphans(h: Harness) -> None:
    created = [h.create_server(f"restart{i}") for i in range(3)]
    ids = [deployment_id for deployment_id, _ in created]
    assert [wr.status for wr in _wait_all(h, [wr for _, wr in created])] == ["SUCCEEDED"] * 3

    def snapshot() -> dict[str, list[tuple[str, str]]]:
        return {d: sorted((c.id, c.attrs["State"]["StartedAt"]) for c in containers_of(h.engine, d)) for d in ids}

    before = snapshot()
    assert all(len(found) == 1 for found in before.values()), before
    states = {d: h.get(d).lifecycle_state for d in ids}
    assert set(states.values()) == {"ACTIVE"}

    assert h.server is not None
    port = h.server.port
    h.server.kill()
    orphan_of = f"ocid1.datasciencemodeldeployment.oc1.local.dyit{RUN}orphan"
    orphan = h.engine.containers.run(
        BASE, ["sleep", "600"], detach=True, init=True, name=f"{LABEL_PREFIX}-orphan-{RUN}",
        labels={MANAGED: "true", DEPLOYMENT_LABEL: orphan_of, f"{LABEL_PREFIX}.spec-hash": "gone",
                f"{LABEL_PREFIX}.instance-id": f"{LABEL_PREFIX}-orphan-{RUN}", RUN_LABEL: RUN})
    h.start(port=port)

    # sparse: the list only, without inspecting each container (one removed in between is a 404)
    until(lambda: not h.engine.containers.list(all=True, filters={"id": orphan.id}, sparse=True), 20, 0.2,
          "the orphan container removed")
    time.sleep(2)  # several reconcile passes: nothing may be started twice
    assert snapshot() == before
    assert {d: h.get(d).lifecycle_state for d in ids} == states
    for deployment_id in ids:
        [instance] = h.instances(deployment_id)
        [(container_id, _)] = before[deployment_id]
        assert h.engine.containers.get(container_id).name == instance["instanceId"]
        assert _health(instance["endpoint"]) == 200


# --- C12: the image must stay in the registry -----------------------------------------------------------------


def test_c12_a_restart_whose_image_left_the_registry_needs_attention_then_recovers(h: Harness) -> None:
    image = run_image("c12", "1")
    repository = image.rsplit(":", 1)[0]
    keep = run_image("c12-keep", "1")  # local only: the same image, to push again later
    build(h.engine, f"FROM {BASE}\nCOPY unique /unique\n", image, {"unique": RUN.encode()})
    h.engine.images.get(image).tag(keep.rsplit(":", 1)[0], "1")
    digest = push(h.engine, h.janitor, image)
    deployment_id, wr_id = h.create_server("c12", image=image)
    assert h.wait_work_request(wr_id, 40).status == "SUCCEEDED", h.logs(wr_id)

    # While dockyard is down: the instance goes, and the image leaves the engine and the registry.
    assert h.server is not None
    port = h.server.port
    h.server.kill()
    for container in containers_of(h.engine, deployment_id):
        container.remove(force=True)
    untag(h.engine, image, f"{repository}@{digest}")
    with pytest.raises(docker.errors.ImageNotFound):
        h.engine.images.get(f"{image}@{digest}")
    assert httpx.delete(f"http://{image.split('/')[0]}/v2/{repository.split('/', 1)[1]}/manifests/{digest}",
                        trust_env=False).status_code == 202
    h.start(port=port)

    # Restarting pulls again (C12): it cannot, and says so, without leaving ACTIVE for FAILED.
    got, seen = h.watch(deployment_id, lambda d: "C12" in (d.lifecycle_details or ""), 30)
    assert got.lifecycle_state == "NEEDS_ATTENTION", seen
    assert "FAILED" not in seen
    assert f"is not in the registry {image.split('/')[0]}" in got.lifecycle_details, got.lifecycle_details
    assert containers_of(h.engine, deployment_id) == []

    # Pushed again (the same digest): the next retry brings it back.
    h.engine.images.get(keep).tag(repository, "1")
    assert push(h.engine, h.janitor, image) == digest
    got, seen = h.watch(deployment_id, lambda d: d.lifecycle_state == "ACTIVE", 40)
    assert "FAILED" not in seen
    container = _only_running(h, deployment_id)
    assert container.attrs["Config"]["Image"] == f"{image}@{digest}"
    [instance] = h.instances(deployment_id)
    assert _health(instance["endpoint"]) == 200


# --- 10. a private registry (C8) ----------------------------------------------------------------------------


def test_a_private_registry_needs_the_services_credentials(h: Harness) -> None:
    image = run_image("private", "1", AUTH_REGISTRY)
    repository = image.rsplit(":", 1)[0]
    h.engine.images.get(BASE).tag(repository, "1")
    digest = push(h.engine, h.janitor, image, {"username": AUTH_USER, "password": AUTH_PASSWORD})
    # Only the registry has it under that name now: dockyard must pull it with credentials.
    untag(h.engine, image, f"{repository}@{digest}")
    with pytest.raises(docker.errors.ImageNotFound):
        h.engine.images.get(f"{image}@{digest}")

    with pytest.raises(oci.exceptions.ServiceError) as refused:
        h.create_server("private", image=image)
    assert refused.value.status == 400
    assert AUTH_REGISTRY in refused.value.message and "C8" in refused.value.message, refused.value.message
    assert "DOCKYARD_REGISTRY_CREDENTIALS" in refused.value.message

    h.restart(kill=False, extra_env={"DOCKYARD_REGISTRY_CREDENTIALS": f"{AUTH_REGISTRY}={AUTH_USER}:{AUTH_PASSWORD}"})
    deployment_id, wr_id = h.create_server("private", image=image)
    wr = h.wait_work_request(wr_id, 60)
    assert wr.status == "SUCCEEDED", (h.logs(wr_id), h.errors(wr_id))
    got = h.get(deployment_id)
    assert got.lifecycle_state == "ACTIVE"
    assert got.model_deployment_configuration_details.environment_configuration_details.image_digest == digest
    assert f"pull: pulling {image}@{digest}" in h.logs(wr_id), h.logs(wr_id)
    container = _only_running(h, deployment_id)
    assert container.attrs["Config"]["Image"] == f"{image}@{digest}"
    [instance] = h.instances(deployment_id)
    assert _health(instance["endpoint"]) == 200

"""Triton mode's default command: what an instance runs when the deployment names none (T1)."""

from __future__ import annotations

from pathlib import Path

import pytest

from dockyard.domain import deployments as rules
from dockyard.errors import InvalidParameter
from dockyard.runtimes.base import InstanceSpec
from dockyard.runtimes.triton import with_server_command

REPO = "/opt/ds/model/deployed_model"


def spec(artifact: Path | None, **kw: object) -> InstanceSpec:
    fields: dict[str, object] = {"deployment_id": "md", "spec_hash": "h", "kind": "OCIR_CONTAINER",
                                 "artifact_dir": artifact, "image": "triton@sha256:x",
                                 "environment": {"CONTAINER_TYPE": "TRITON"}, "server_port": 8000}
    fields |= kw
    fields.setdefault("health_port", fields["server_port"])
    return InstanceSpec(**fields)  # type: ignore[arg-type]


def test_no_command_starts_tritonserver_on_the_repository_folder(tmp_path: Path) -> None:
    (tmp_path / "model_repository" / "m" / "1").mkdir(parents=True)
    got = with_server_command(spec(tmp_path))
    assert got.entrypoint is None  # the image's entrypoint stays (NVIDIA's runs its arguments)
    assert got.cmd == ["tritonserver", f"--model-repository={REPO}/model_repository", "--http-port=8000",
                       "--allow-grpc=false", "--allow-metrics=false",
                       "--exit-timeout-secs=5"]


def test_without_the_folder_the_artifact_is_the_repository(tmp_path: Path) -> None:
    (tmp_path / "m" / "1").mkdir(parents=True)
    got = with_server_command(spec(tmp_path, server_port=9001, environment={"CONTAINER_TYPE": " triton "}))
    assert got.cmd is not None and got.cmd[1:3] == [f"--model-repository={REPO}", "--http-port=9001"]


@pytest.mark.parametrize("given", [
    {"cmd": ["tritonserver", "--model-repository=/models"]},
    {"entrypoint": ["/opt/start.sh"]},
    {"cmd": []},  # cleared on purpose: not ours to fill in
    {"entrypoint": []},
])
def test_a_given_command_is_kept(tmp_path: Path, given: dict[str, list[str]]) -> None:
    original = spec(tmp_path, **given)
    assert with_server_command(original) is original


@pytest.mark.parametrize(("entrypoint", "cmd"), [
    (["/opt/nvidia/nvidia_entrypoint.sh"], ["tritonserver", "--model-repository=/m"]),
    (["/opt/tritonserver/bin/tritonserver"], None),
    (None, ["/start.sh"]),  # a custom image's own start script (tritonserver and more, perhaps)
    (["/start.sh"], None),
    (["/bin/sh", "-c"], ["exec tritonserver --model-repository=/m"]),
])
def test_an_image_that_starts_something_itself_keeps_its_command(
        tmp_path: Path, entrypoint: list[str] | None, cmd: list[str] | None) -> None:
    original = spec(tmp_path)
    assert with_server_command(original, entrypoint, cmd) is original


@pytest.mark.parametrize(("entrypoint", "cmd"), [
    (["/opt/nvidia/nvidia_entrypoint.sh"], None),  # NVIDIA's images
    (["/opt/nvidia/nvidia_entrypoint.sh"], ["/bin/bash"]),
    (None, ["bash"]),
    (None, None),
])
def test_an_image_that_starts_nothing_gets_tritonserver(
        tmp_path: Path, entrypoint: list[str] | None, cmd: list[str] | None) -> None:
    got = with_server_command(spec(tmp_path), entrypoint, cmd)
    assert got.cmd is not None and got.cmd[0] == "tritonserver"


def test_a_separate_health_port_is_refused_with_the_fix(tmp_path: Path) -> None:
    with pytest.raises(InvalidParameter) as caught:
        with_server_command(spec(tmp_path, server_port=8000, health_port=8080))
    assert caught.value.message.startswith("T1: ") and "set healthCheckPort to 8000" in caught.value.message
    given = spec(tmp_path, server_port=8000, health_port=8080, cmd=["/start.sh"])  # their own command: theirs to get right
    assert with_server_command(given) is given


def test_other_deployments_are_untouched(tmp_path: Path) -> None:
    plain = spec(tmp_path, environment={})
    default = spec(tmp_path, kind="DEFAULT")
    assert with_server_command(plain) is plain and with_server_command(default) is default


def test_is_triton_and_its_health_path() -> None:
    assert rules.is_triton({"CONTAINER_TYPE": "Triton"}) and not rules.is_triton({"CONTAINER_TYPE": "TRITONX"})
    assert rules.TRITON_HEALTH_PATH == "/v2/health/ready"

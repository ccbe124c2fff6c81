"""The official `oci` CLI, configured only from the file `dockyard serve` wrote, runs the whole
deployment flow signed; a wrong key, a missing signature and a tampered config are refused.

The CLI lives in a virtual environment of its own (scripts/infra/oci-cli.sh; it pins its own SDK
version) and runs as a subprocess, exactly as a user runs it: `oci --config-file <data
dir>/oci/config --endpoint <url> data-science ...`. The server uses the fake runtime: what is
under test is the CLI's wire format and its signatures, not containers.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dockyard.auth import keys
from tests.support.server import LiveServer

REPO = Path(__file__).resolve().parents[2]
IMAGE = "127.0.0.1:5001/testtenancy/md_byoc_ref_iris_data:1.0.1"
DIGEST = "sha256:a9c8468cb671929aec7ad947b9dccd6fe8e6d77f7bcecfe2e10e1c935a88c2a5"


def oci_executable() -> str | None:
    """The CLI that scripts/test installed (DOCKYARD_TEST_OCI_CLI), else one on PATH."""
    named = os.environ.get("DOCKYARD_TEST_OCI_CLI")
    if named and Path(named).exists():
        return named
    for candidate in (Path("/var/cache/dockyard-test/oci-cli-3.95.1/bin/oci"), REPO / "build" / "oci-cli-3.95.1" / "bin" / "oci"):
        if candidate.exists():
            return str(candidate)
    return shutil.which("oci")


OCI = oci_executable()
if OCI is None:
    if os.environ.get("DOCKYARD_TEST_REQUIRE_INFRA") == "1":
        raise RuntimeError("the oci CLI is missing: scripts/infra/oci-cli.sh installs it")
    pytest.skip("the oci CLI is not installed (scripts/infra/oci-cli.sh)", allow_module_level=True)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, store_kind: str) -> Iterator[LiveServer]:
    live = LiveServer(tmp_path_factory.mktemp("ocicli") / "data").start()
    yield live
    live.stop()


def run(server: LiveServer, *args: str, config: Path | None = None, ok: bool = True) -> subprocess.CompletedProcess[str]:
    assert OCI is not None
    command = [OCI, "--config-file", str(config or server.config_path), "--endpoint", server.url, "--no-retry", *args]
    env = os.environ | {"OCI_CLI_SUPPRESS_FILE_PERMISSIONS_WARNING": "True", "SUPPRESS_LABEL_WARNING": "True"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, env=env)
    if ok:
        assert done.returncode == 0, f"{' '.join(args)} failed ({done.returncode}):\n{done.stderr}\n{done.stdout}"
    return done


def data(done: subprocess.CompletedProcess[str]) -> Any:
    return json.loads(done.stdout)["data"]


def wait_state(server: LiveServer, deployment_id: str, wanted: str, timeout_s: float = 60) -> None:
    """Polls with a plain signed client: each CLI start costs seconds, which waiting need not."""
    deadline = time.monotonic() + timeout_s
    state = ""
    with server.client() as client:
        while time.monotonic() < deadline:
            state = client.get(f"/20190101/modelDeployments/{deployment_id}").json()["lifecycleState"]
            if state == wanted:
                return
            time.sleep(0.2)
    raise AssertionError(f"{deployment_id} is {state}, not {wanted}, after {timeout_s} s")


def refused(done: subprocess.CompletedProcess[str]) -> str:
    """The CLI's report of a refused call: it prints the service error as JSON on stderr."""
    assert done.returncode != 0, done.stdout
    assert '"status": 401' in done.stderr and "NotAuthenticated" in done.stderr, done.stderr
    return done.stderr


def test_the_whole_flow_signed_from_the_written_config(server: LiveServer, tmp_path: Path) -> None:
    tenancy = server.oci_config()["tenancy"]  # the root compartment of the administrator's tenancy
    project = data(run(server, "data-science", "project", "create", "--compartment-id", tenancy, "--display-name", "cli"))
    assert project["lifecycle-state"] == "ACTIVE" and project["compartment-id"] == tenancy
    model = data(run(server, "data-science", "model", "create", "--compartment-id", tenancy,
                     "--project-id", project["id"], "--display-name", "cli-model"))  # fmt: skip
    artifact = tmp_path / "artifact.zip"
    with zipfile.ZipFile(artifact, "w") as archive:
        archive.writestr("api.py", "print('hello')\n")
    run(server, "data-science", "model", "create-model-artifact", "--model-id", model["id"],
        "--model-artifact-file", str(artifact), "--content-disposition", 'attachment; filename="artifact.zip"')  # fmt: skip
    downloaded = tmp_path / "downloaded.zip"
    run(server, "data-science", "model", "get-artifact-content", "--model-id", model["id"], "--file", str(downloaded))
    assert downloaded.read_bytes() == artifact.read_bytes()

    configuration = {
        "deploymentType": "SINGLE_MODEL",
        "modelConfigurationDetails": {
            "modelId": model["id"],
            "instanceConfiguration": {"instanceShapeName": "VM.Standard.E4.Flex",
                                      "modelDeploymentInstanceShapeConfigDetails": {"ocpus": 1, "memoryInGBs": 2}},
            "scalingPolicy": {"policyType": "FIXED_SIZE", "instanceCount": 1},
            "bandwidthMbps": 10,
        },
        "environmentConfigurationDetails": {"environmentConfigurationType": "OCIR_CONTAINER", "image": IMAGE,
                                            "imageDigest": DIGEST, "serverPort": 5454, "environmentVariables": {"a": "b"}},
    }  # fmt: skip
    created = data(run(server, "data-science", "model-deployment", "create", "--compartment-id", tenancy,
                       "--project-id", project["id"], "--display-name", "cli-deployment",
                       "--model-deployment-configuration-details", json.dumps(configuration)))  # fmt: skip
    deployment_id = created["id"]
    wait_state(server, deployment_id, "ACTIVE")
    listed = data(run(server, "data-science", "model-deployment", "list", "--compartment-id", tenancy, "--all"))
    assert deployment_id in [d["id"] for d in listed]

    # U2 (the environment of a running deployment) through the CLI's update command.
    update = {"deploymentType": "SINGLE_MODEL",
              "environmentConfigurationDetails": {"environmentConfigurationType": "OCIR_CONTAINER",
                                                  "environmentVariables": {"a": "c"}}}  # fmt: skip
    run(server, "data-science", "model-deployment", "update", "--model-deployment-id", deployment_id,
        "--model-deployment-configuration-details", json.dumps(update), "--force")  # fmt: skip
    wait_state(server, deployment_id, "ACTIVE")
    got = data(run(server, "data-science", "model-deployment", "get", "--model-deployment-id", deployment_id))
    environment = got["model-deployment-configuration-details"]["environment-configuration-details"]
    assert environment["environment-variables"] == {"a": "c"} and environment["image"] == IMAGE

    run(server, "data-science", "model-deployment", "deactivate", "--model-deployment-id", deployment_id)
    wait_state(server, deployment_id, "INACTIVE")
    run(server, "data-science", "model-deployment", "activate", "--model-deployment-id", deployment_id)
    wait_state(server, deployment_id, "ACTIVE")
    run(server, "data-science", "model-deployment", "delete", "--model-deployment-id", deployment_id, "--force")
    wait_state(server, deployment_id, "DELETED")


def test_a_key_the_server_does_not_know_is_refused(server: LiveServer, tmp_path: Path) -> None:
    key = keys.generate_private_key()
    (tmp_path / "other.pem").write_bytes(keys.private_pem(key))
    (tmp_path / "other.pem").chmod(0o600)
    config = server.config_path.read_text().replace(str(server.data_dir / "oci" / "key.pem"), str(tmp_path / "other.pem"))
    assert str(tmp_path / "other.pem") in config
    path = tmp_path / "config"
    path.write_text(config)
    path.chmod(0o600)
    tenancy = server.oci_config()["tenancy"]
    message = refused(run(server, "data-science", "project", "list", "--compartment-id", tenancy, config=path, ok=False))
    assert "signature" in message.lower()


def test_the_same_command_without_a_signature_is_refused(server: LiveServer) -> None:
    # --auth security_token with no token file is not available offline; an unsigned request is
    # what `curl` sends, and it gets the same 401 the CLI would.
    with server.client(auth=None) as client:
        reply = client.get("/20190101/projects", params={"compartmentId": server.oci_config()["tenancy"]})
    assert reply.status_code == 401 and reply.json()["code"] == "NotAuthenticated"

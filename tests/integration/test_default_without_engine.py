"""A DEFAULT (score.py) deployment serves predictions on a machine without a Docker engine:
`dockyard serve` (runtime auto) finds no engine, picks the process runtime, and the gateway
answers the example model's predict call, as the README's first command promises."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx

from dockyard.example import artifact_bytes, sample_request
from tests.support.server import LiveServer

from tests.support.oci_config import COMPARTMENT  # registered by LiveServer


def test_default_deployment_on_the_process_runtime_when_no_engine_answers(tmp_path: Path) -> None:
    # An engine socket that does not exist: "auto" must fall back to local processes.
    server = LiveServer(tmp_path / "data", runtime="auto", env={"DOCKYARD_DOCKER_HOST": f"unix://{tmp_path}/no-engine.sock"}).start()
    try:
        api = server.client(base_url=server.url + "/20190101")
        project = api.post("/projects", json={"compartmentId": COMPARTMENT}).json()
        model = api.post("/models", json={"compartmentId": COMPARTMENT, "projectId": project["id"]}).json()
        api.post(f"/models/{model['id']}/artifact", content=artifact_bytes()).raise_for_status()
        created = api.post(
            "/modelDeployments",
            json={
                "projectId": project["id"],
                "compartmentId": COMPARTMENT,
                "modelDeploymentConfigurationDetails": {
                    "deploymentType": "SINGLE_MODEL",
                    "modelConfigurationDetails": {"modelId": model["id"], "instanceConfiguration": {"instanceShapeName": "VM.Standard.E4.Flex"}},
                },
            },
        )
        assert created.status_code == 200, created.text
        deployment = created.json()
        assert deployment["modelDeploymentConfigurationDetails"]["environmentConfigurationDetails"] == {"environmentConfigurationType": "DEFAULT"}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            state = api.get(f"/modelDeployments/{deployment['id']}").json()
            if state["lifecycleState"] in ("ACTIVE", "FAILED"):
                break
            time.sleep(0.1)
        assert state["lifecycleState"] == "ACTIVE", state["lifecycleDetails"]
        [instance] = api.get(f"/modelDeployments/{deployment['id']}/instances").json()
        assert instance["runtime"] == "process" and instance["health"] == "HEALTHY"

        answer = httpx.post(f"{deployment['modelDeploymentUrl']}/predict", content=sample_request(),
                            headers={"content-type": "application/json"}, timeout=30, auth=server.auth)  # fmt: skip
        assert answer.status_code == 200, answer.text
        assert json.loads(answer.text)["prediction"] == ["setosa"]
        api.delete(f"/modelDeployments/{deployment['id']}")
        while time.monotonic() < deadline + 30:
            if api.get(f"/modelDeployments/{deployment['id']}").json()["lifecycleState"] == "DELETED":
                break
            time.sleep(0.1)
        assert api.get(f"/modelDeployments/{deployment['id']}/instances").json() == []
    finally:
        server.stop()

"""The seed's LDA example answers predict through the gateway for the clients users bring.

A docker-runtime `dockyard serve` runs the seed's Flask LDA image with its artifact, created
through the `oci` SDK as the administrator whose OCI config the server wrote
(`<data_dir>/oci/config`). Then `POST <modelDeploymentUrl>/predict {"line": "12"}` is sent
two ways, both signed with that config, and each must get the model's own answer:

- the `oci` SDK's `ModelDeploymentClient.predict` (it builds `<endpoint>/<id>/predict`);
- the way Oracle ADS calls a deployment: `requests.post(url, json=..., auth=oci.signer.Signer(...))`.

When the server verifies data-plane signatures, a key it does not know gets no prediction.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator
from typing import Any

import oci
import pytest
import requests
from oci.data_science import models as m

from tests.integration.docker_fixtures import LDA, LDA_ZIP, check_infra
from tests.support.kill_load import admin_auth, admin_config, wait_serving
from tests.support.server import LiveServer

pytestmark = [pytest.mark.integration, pytest.mark.slow]

LDA_ENTRYPOINT = ["python", "/opt/ds/model/deployed_model/api.py"]
ANSWER = {"prediction LDA": 2}  # what the seed's model says to {"line": "12"}


@pytest.fixture(scope="module")
def lda(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LiveServer, dict[str, Any], str]]:
    """A server with the seed's LDA deployment ACTIVE: (server, admin OCI config, deployment)."""
    engine = check_infra()
    prefix = f"dysp{secrets.token_hex(3)}"
    server = LiveServer(tmp_path_factory.mktemp("sdk-predict") / "data", runtime="docker",
                        env={"DOCKYARD_LABEL_PREFIX": prefix, "DOCKYARD_HEALTH_START_PERIOD_S": "30",
                             "DOCKYARD_HEALTH_INTERVAL_S": "1", "DOCKYARD_HEALTH_DEADLINE_S": "120"})  # fmt: skip
    try:
        server.start(timeout_s=60)
        config = admin_config(server.data_dir)
        ds = oci.data_science.DataScienceClient(config, service_endpoint=server.url)
        compartment = config["tenancy"]  # the root compartment
        project = ds.create_project(m.CreateProjectDetails(compartment_id=compartment, display_name="sdk-predict")).data
        model = ds.create_model(m.CreateModelDetails(compartment_id=compartment, project_id=project.id,
                                                     display_name="lda")).data  # fmt: skip
        with LDA_ZIP.open("rb") as body:
            ds.create_model_artifact(model.id, body, content_disposition=f'attachment; filename="{LDA_ZIP.name}"')
        details = m.CreateModelDeploymentDetails(
            display_name="lda", project_id=project.id, compartment_id=compartment,
            model_deployment_configuration_details=m.SingleModelDeploymentConfigurationDetails(
                model_configuration_details=m.ModelConfigurationDetails(
                    model_id=model.id,
                    instance_configuration=m.InstanceConfiguration(
                        instance_shape_name="VM.Standard.E4.Flex",
                        model_deployment_instance_shape_config_details=m.ModelDeploymentInstanceShapeConfigDetails(
                            ocpus=1, memory_in_gbs=2)),
                    scaling_policy=m.FixedSizeScalingPolicy(instance_count=1),
                    bandwidth_mbps=10),
                environment_configuration_details=m.OcirModelDeploymentEnvironmentConfigurationDetails(
                    image=LDA, server_port=5000, health_check_port=5000, entrypoint=LDA_ENTRYPOINT)),
        )  # fmt: skip
        deployment_id = ds.create_model_deployment(details).data.id
        deadline = time.monotonic() + 150
        while (state := ds.get_model_deployment(deployment_id).data.lifecycle_state) != "ACTIVE":
            assert state in ("CREATING", "UPDATING") and time.monotonic() < deadline, (
                f"the LDA deployment is {state}: {ds.get_model_deployment(deployment_id).data.lifecycle_details}\n"
                f"{server.log()[-3000:]}")  # fmt: skip
            time.sleep(0.5)
        wait_serving(server.url, admin_auth(server.data_dir), deployment_id, 1, 60)
        yield server, config, deployment_id
    finally:
        server.stop()
        for container in engine.containers.list(all=True, filters={"label": f"{prefix}.managed=true"}):
            container.remove(force=True)
        engine.close()


def as_json(data: Any) -> Any:
    """The SDK hands predict's reply back as text (response_type "str") or, in some versions, decoded."""
    return json.loads(data) if isinstance(data, (str, bytes)) else data


def test_the_sdk_model_deployment_client_gets_the_lda_answer(lda: tuple[LiveServer, dict[str, Any], str]) -> None:
    server, config, deployment_id = lda
    client = oci.model_deployment.ModelDeploymentClient(config, service_endpoint=server.url)
    response = client.predict(deployment_id, {"line": "12"})
    assert response.status == 200
    assert as_json(response.data) == ANSWER, response.data
    assert response.headers.get("opc-request-id"), dict(response.headers)
    # The SDK's own request id travels through the gateway to the container and back.
    response = client.predict(deployment_id, {"line": "12"}, opc_request_id="SDKPREDICT0001")
    assert response.headers["opc-request-id"] == "SDKPREDICT0001"
    assert as_json(response.data) == ANSWER


def test_an_ads_style_signed_requests_post_gets_the_lda_answer(lda: tuple[LiveServer, dict[str, Any], str]) -> None:
    server, config, deployment_id = lda
    ds = oci.data_science.DataScienceClient(config, service_endpoint=server.url)
    url = ds.get_model_deployment(deployment_id).data.model_deployment_url
    assert url.endswith(f"/{deployment_id}")
    signer = oci.signer.Signer(tenancy=config["tenancy"], user=config["user"], fingerprint=config["fingerprint"],
                               private_key_file_location=config["key_file"])  # fmt: skip
    reply = requests.post(f"{url}/predict", json={"line": "12"}, auth=signer, timeout=30)
    assert reply.status_code == 200, reply.text
    assert reply.json() == ANSWER
    assert reply.headers["content-type"].startswith("application/json")
    # ADS also sends bytes with an explicit content type (its `serializer` path).
    reply = requests.post(f"{url}/predict", data=json.dumps({"line": "12"}).encode(), auth=signer, timeout=30,
                          headers={"Content-Type": "application/json"})  # fmt: skip
    assert reply.status_code == 200 and reply.json() == ANSWER, reply.text


def test_a_signature_from_an_unknown_key_gets_no_prediction(lda: tuple[LiveServer, dict[str, Any], str], tmp_path: Any) -> None:
    """Only when the server verifies data-plane signatures (it refuses unsigned requests)."""
    server, config, deployment_id = lda
    url = f"{server.url}/{deployment_id}/predict"
    unsigned = requests.post(url, json={"line": "12"}, timeout=30)
    if unsigned.status_code == 200:
        pytest.skip("this server does not verify data-plane signatures yet (an unsigned predict got 200)")
    from tests.support.oci_config import make_config

    stranger = make_config(tmp_path)  # a well-formed key the server has never seen
    signer = oci.signer.Signer(tenancy=stranger["tenancy"], user=stranger["user"], fingerprint=stranger["fingerprint"],
                               private_key_file_location=stranger["key_file"])  # fmt: skip
    reply = requests.post(url, json={"line": "12"}, auth=signer, timeout=30)
    assert reply.status_code in (401, 404), reply.text
    assert "prediction" not in reply.text

"""The official `oci` SDK drives the whole catalog and deployment flow against a live server."""

from __future__ import annotations

import hashlib
import os
import zipfile
from pathlib import Path

import oci
import pytest
from oci.data_science import models as m

from tests.support.oci_config import COMPARTMENT

DIGEST = "sha256:a9c8468cb671929aec7ad947b9dccd6fe8e6d77f7bcecfe2e10e1c935a88c2a5"
IMAGE = "127.0.0.1:5001/testtenancy/md_byoc_ref_iris_data:1.0.1"


def make_artifact(path: Path, size: int) -> str:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("model.bin", os.urandom(size))
        archive.writestr("api.py", "print('hello')\n")
    return hashlib.sha256(path.read_bytes()).hexdigest()


def wait_for(client: oci.data_science.DataScienceClient, work_request_id: str) -> m.WorkRequest:
    response = oci.wait_until(
        client, client.get_work_request(work_request_id),
        evaluate_response=lambda r: r.data.status in ("SUCCEEDED", "FAILED"), max_wait_seconds=60, max_interval_seconds=1,
    )  # fmt: skip
    return response.data


def byoc_details(project_id: str, model_id: str, name: str = "byoc") -> m.CreateModelDeploymentDetails:
    return m.CreateModelDeploymentDetails(
        display_name=name,
        project_id=project_id,
        compartment_id=COMPARTMENT,
        model_deployment_configuration_details=m.SingleModelDeploymentConfigurationDetails(
            model_configuration_details=m.ModelConfigurationDetails(
                model_id=model_id,
                instance_configuration=m.InstanceConfiguration(
                    instance_shape_name="VM.Standard.E4.Flex",
                    model_deployment_instance_shape_config_details=m.ModelDeploymentInstanceShapeConfigDetails(ocpus=1, memory_in_gbs=2),
                ),
                scaling_policy=m.FixedSizeScalingPolicy(instance_count=1),
                bandwidth_mbps=10,
            ),
            environment_configuration_details=m.OcirModelDeploymentEnvironmentConfigurationDetails(
                image=IMAGE,
                image_digest=DIGEST,
                server_port=5454,
                environment_variables={"a": "b", "c": "d", "e": "f"},
                entrypoint=["python", "-m", "uvicorn", "a/model/server:app", "--port", "5000", "--host", "0.0.0.0"],
                cmd=["param1"],
            ),
        ),
    )


@pytest.mark.slow
def test_whole_flow_through_the_official_sdk(ds_client: oci.data_science.DataScienceClient, tmp_path: Path) -> None:
    client = ds_client
    project = client.create_project(m.CreateProjectDetails(compartment_id=COMPARTMENT, display_name="p")).data
    assert project.lifecycle_state == "ACTIVE" and project.id.startswith("ocid1.datascienceproject.")

    model = client.create_model(m.CreateModelDetails(compartment_id=COMPARTMENT, project_id=project.id, display_name="m")).data
    assert model.id.startswith("ocid1.datasciencemodel.")

    artifact = tmp_path / "artifact.zip"
    sha = make_artifact(artifact, 50 * 1024 * 1024)
    with artifact.open("rb") as body:
        client.create_model_artifact(model.id, body, content_disposition='attachment; filename="m.zip"')

    head = client.head_model_artifact(model.id)
    assert int(head.headers["content-length"]) == artifact.stat().st_size
    assert head.headers["content-disposition"] == 'attachment; filename="m.zip"'
    assert head.headers["content-md5"]

    download = client.get_model_artifact_content(model.id)
    digest = hashlib.sha256()
    for chunk in download.data.raw.stream(1024 * 1024, decode_content=False):
        digest.update(chunk)
    assert digest.hexdigest() == sha

    created = client.create_model_deployment(byoc_details(project.id, model.id))
    deployment = created.data
    assert deployment.lifecycle_state == "CREATING"
    assert deployment.model_deployment_url.endswith("/" + deployment.id)
    assert wait_for(client, created.headers["opc-work-request-id"]).status == "SUCCEEDED"
    got = client.get_model_deployment(deployment.id).data
    assert got.lifecycle_state == "ACTIVE"
    env = got.model_deployment_configuration_details.environment_configuration_details
    assert isinstance(env, m.OcirModelDeploymentEnvironmentConfigurationDetails)
    assert env.image_digest == DIGEST

    for i in range(3):
        client.create_model_deployment(byoc_details(project.id, model.id, f"extra{i}"))
    everything = oci.pagination.list_call_get_all_results(
        client.list_model_deployments, compartment_id=COMPARTMENT, limit=1
    ).data
    assert len(everything) == 4 and len({d.id for d in everything}) == 4

    # U2 on the SDK's nested shape
    update = m.UpdateModelDeploymentDetails(
        model_deployment_configuration_details=m.UpdateSingleModelDeploymentConfigurationDetails(
            environment_configuration_details=m.UpdateOcirModelDeploymentEnvironmentConfigurationDetails(
                server_port=2000, environment_variables={"x": "y"}, entrypoint=[]
            )
        )
    )
    updated = client.update_model_deployment(deployment.id, update)
    assert updated.data is None and updated.headers["opc-work-request-id"]
    assert wait_for(client, updated.headers["opc-work-request-id"]).status == "SUCCEEDED"
    env = client.get_model_deployment(deployment.id).data.model_deployment_configuration_details.environment_configuration_details
    assert env.server_port == 2000
    assert env.environment_variables == {"x": "y"}
    assert env.entrypoint == []
    assert env.cmd == ["param1"] and env.image == IMAGE and env.image_digest == DIGEST

    deactivated = client.deactivate_model_deployment(deployment.id)
    assert wait_for(client, deactivated.headers["opc-work-request-id"]).status == "SUCCEEDED"
    assert client.get_model_deployment(deployment.id).data.lifecycle_state == "INACTIVE"

    activated = client.activate_model_deployment(deployment.id)
    assert wait_for(client, activated.headers["opc-work-request-id"]).status == "SUCCEEDED"
    assert client.get_model_deployment(deployment.id).data.lifecycle_state == "ACTIVE"

    deleted = client.delete_model_deployment(deployment.id)
    assert wait_for(client, deleted.headers["opc-work-request-id"]).status == "SUCCEEDED"
    assert client.get_model_deployment(deployment.id).data.lifecycle_state == "DELETED"

    logs = client.list_work_request_logs(deleted.headers["opc-work-request-id"]).data
    assert logs[0].message.startswith("Deletion accepted") and logs[-1].message == "Deleted"

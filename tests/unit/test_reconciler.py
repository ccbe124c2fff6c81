"""The reconciler's control loop over a real SQLite store and the fake runtime."""

from __future__ import annotations

import asyncio
import io
import zipfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from dockyard.runtimes.base import InstanceState
from dockyard.runtimes.fake import FakeRuntime
from dockyard.schemas.catalog import CreateModelDetails, CreateProjectDetails
from dockyard.schemas.deployments import CreateModelDeploymentDetails, UpdateModelDeploymentDetails
from dockyard.server import Server, build
from dockyard.service.context import ANONYMOUS
from dockyard.settings import Settings

COMPARTMENT = "ocid1.compartment.oc1..aaaatest"


async def one(data: bytes) -> AsyncIterator[bytes]:
    yield data


def artifact() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("api.py", "print(1)\n")
    return buffer.getvalue()


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    settings = Settings(data_dir=tmp_path, runtime="fake", verify_images=False, reconcile_interval_s=0.1, health_retries=1, health_start_period_s=0)
    srv = build(settings, FakeRuntime())
    srv.reconciler.start()
    yield srv
    await srv.reconciler.stop()
    srv.services.store.close()


async def deploy(srv: Server, count: int = 1) -> str:
    s = srv.services
    project = s.projects.create(CreateProjectDetails(compartment_id=COMPARTMENT), ANONYMOUS, None)
    model = s.models.create(CreateModelDetails(compartment_id=COMPARTMENT, project_id=project.id), ANONYMOUS, None)
    await s.models.put_artifact(model.id, one(artifact()), None, None, ANONYMOUS)
    details = CreateModelDeploymentDetails.model_validate(
        {
            "projectId": project.id, "compartmentId": COMPARTMENT,
            "modelDeploymentConfigurationDetails": {
                "deploymentType": "SINGLE_MODEL",
                "modelConfigurationDetails": {
                    "modelId": model.id, "instanceConfiguration": {"instanceShapeName": "VM.Standard.E4.Flex"},
                    "scalingPolicy": {"policyType": "FIXED_SIZE", "instanceCount": count},
                },
                "environmentConfigurationDetails": {"environmentConfigurationType": "OCIR_CONTAINER", "image": "127.0.0.1:5001/x/y:1", "serverPort": 5000},
            },
        }
    )  # fmt: skip
    record, _ = s.deployments.create(details, ANONYMOUS, None)
    return record.id


async def until(srv: Server, deployment_id: str, state: str, timeout_s: float = 10) -> None:
    for _ in range(int(timeout_s / 0.05)):
        if srv.services.deployments.get(deployment_id, ANONYMOUS).state == state:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"still {srv.services.deployments.get(deployment_id, ANONYMOUS).state}, wanted {state}")


def runtime(srv: Server) -> FakeRuntime:
    assert isinstance(srv.runtime, FakeRuntime)
    return srv.runtime


async def test_create_runs_the_instances_and_logs_a_time_to_ready_breakdown(server: Server) -> None:
    deployment_id = await deploy(server, count=3)
    await until(server, deployment_id, "ACTIVE")
    assert len(await runtime(server).list(deployment_id)) == 3
    record = server.services.deployments.get(deployment_id, ANONYMOUS)
    wr_id = record.internal["workRequestId"]
    for _ in range(100):  # the state is written just before the work request is closed
        wr = server.services.store.get_work_request(wr_id)
        if wr is not None and wr.status == "SUCCEEDED":
            break
        await asyncio.sleep(0.05)
    logs = server.services.store.list_entries(wr_id, "log", 0, 100).items
    assert logs[-1].message.startswith("Active; 3 of 3 instances healthy. Ready in")
    assert len(server.services.store.list_instances(deployment_id)) == 3
    assert runtime(server).specs[next(iter(runtime(server).specs))].environment["MODEL_DEPLOYMENT_OCID"] == deployment_id


async def test_scale_down_keeps_the_remaining_instance(server: Server) -> None:
    deployment_id = await deploy(server, count=3)
    await until(server, deployment_id, "ACTIVE")
    before = {i.instance_id for i in await runtime(server).list(deployment_id)}
    update = UpdateModelDeploymentDetails.model_validate(
        {"modelDeploymentConfigurationDetails": {"modelConfigurationDetails": {"scalingPolicy": {"policyType": "FIXED_SIZE", "instanceCount": 1}}}}
    )
    server.services.deployments.update(deployment_id, update, None, ANONYMOUS)
    await until(server, deployment_id, "ACTIVE")
    after = {i.instance_id for i in await runtime(server).list(deployment_id)}
    assert len(after) == 1 and after <= before


async def test_a_crashed_instance_is_replaced(server: Server) -> None:
    deployment_id = await deploy(server)
    await until(server, deployment_id, "ACTIVE")
    [instance] = await runtime(server).list(deployment_id)
    runtime(server).crash(instance.instance_id)
    server.reconciler.wake(deployment_id)
    for _ in range(100):
        running = [i for i in await runtime(server).list(deployment_id) if i.state is InstanceState.RUNNING]
        if running and running[0].instance_id != instance.instance_id:
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError("the crashed instance was not replaced")
    await until(server, deployment_id, "ACTIVE")


async def test_unhealthy_then_healthy_goes_through_needs_attention(server: Server) -> None:
    deployment_id = await deploy(server)
    await until(server, deployment_id, "ACTIVE")
    runtime(server).healthy = False
    server.reconciler.wake(deployment_id)
    await until(server, deployment_id, "NEEDS_ATTENTION")
    runtime(server).healthy = True
    await until(server, deployment_id, "ACTIVE")


async def test_a_failing_update_rolls_back_and_keeps_the_old_instance(server: Server) -> None:
    server.settings.health_deadline_s = 0.5
    deployment_id = await deploy(server)
    await until(server, deployment_id, "ACTIVE")
    [old] = await runtime(server).list(deployment_id)
    runtime(server).healthy = False  # the new version never answers
    # ... but the old instance must keep answering: make only new instances unhealthy.
    fake = runtime(server)
    original_probe = fake.probe

    async def probe(instance, path):  # type: ignore[no-untyped-def]
        result = await original_probe(instance, path)
        return result if instance.instance_id != old.instance_id else type(result)(healthy=True, status_code=200)

    fake.probe = probe  # type: ignore[method-assign]
    update = UpdateModelDeploymentDetails.model_validate({"environmentConfigurationDetails": {"environmentVariables": {"NEW": "1"}}})
    wr_id = server.services.deployments.update(deployment_id, update, None, ANONYMOUS)
    for _ in range(200):
        wr = server.services.store.get_work_request(wr_id)
        if wr and wr.status in ("SUCCEEDED", "FAILED"):
            break
        await asyncio.sleep(0.05)
    assert wr is not None and wr.status == "FAILED"
    record = server.services.deployments.get(deployment_id, ANONYMOUS)
    assert record.state == "ACTIVE" and "rolled back" in record.body["lifecycleDetails"]
    env = record.body["modelDeploymentConfigurationDetails"]["environmentConfigurationDetails"]
    assert "environmentVariables" not in env
    assert [i.instance_id for i in await runtime(server).list(deployment_id)] == [old.instance_id]
    errors = server.services.store.list_entries(wr_id, "error", 0, 10).items
    assert errors and "H2" in errors[0].message


async def test_deactivate_activate_delete(server: Server) -> None:
    deployment_id = await deploy(server, count=2)
    await until(server, deployment_id, "ACTIVE")
    server.services.deployments.deactivate(deployment_id, None, ANONYMOUS)
    await until(server, deployment_id, "INACTIVE")
    assert await runtime(server).list(deployment_id) == []
    server.services.deployments.activate(deployment_id, None, ANONYMOUS)
    await until(server, deployment_id, "ACTIVE")
    assert len(await runtime(server).list(deployment_id)) == 2
    server.services.deployments.delete(deployment_id, None, ANONYMOUS)
    await until(server, deployment_id, "DELETED")
    assert await runtime(server).list(deployment_id) == []


async def test_orphans_without_a_record_are_removed(server: Server) -> None:
    from dockyard.runtimes.base import InstanceSpec

    await runtime(server).start(InstanceSpec(deployment_id="ocid1.datasciencemodeldeployment.oc1.local.gone", spec_hash="x", kind="DEFAULT", artifact_dir=None))
    await server.reconciler.reconcile_all()
    assert await runtime(server).list() == []


async def test_one_failed_probe_is_not_yet_needs_attention(server: Server) -> None:
    server.settings.health_retries = 3  # H1: unhealthy after 3 failed probes in a row
    deployment_id = await deploy(server)
    await until(server, deployment_id, "ACTIVE")
    runtime(server).healthy = False
    await server.reconciler.reconcile(deployment_id)  # one failed probe
    assert server.services.deployments.get(deployment_id, ANONYMOUS).state == "ACTIVE"
    await until(server, deployment_id, "NEEDS_ATTENTION")  # ... then the retries run out
    runtime(server).healthy = True
    await until(server, deployment_id, "ACTIVE")


async def test_an_active_deployment_that_cannot_start_an_instance_needs_attention_not_failed(server: Server) -> None:
    deployment_id = await deploy(server)
    await until(server, deployment_id, "ACTIVE")
    [instance] = await runtime(server).list(deployment_id)
    runtime(server).fail_start = "C12: pull: the image is not in the registry"
    runtime(server).crash(instance.instance_id)
    for _ in range(200):
        record = server.services.deployments.get(deployment_id, ANONYMOUS)
        if "C12" in (record.body.get("lifecycleDetails") or ""):
            break
        assert record.state != "FAILED"
        await asyncio.sleep(0.05)
    assert record.state == "NEEDS_ATTENTION" and "C12" in record.body["lifecycleDetails"]
    runtime(server).fail_start = None  # the registry has it again: the next retry starts it
    await until(server, deployment_id, "ACTIVE")

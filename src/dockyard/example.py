"""`dockyard serve --example`: deploy the bundled example model once and print a predict call.

Runs inside the server process, through the same services the API uses, so the example is an
ordinary project, model and deployment (tagged `dockyard-example`) that the API and CLI show.
On later starts the existing deployment is reused.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import zipfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from starlette.concurrency import run_in_threadpool

from dockyard.schemas.catalog import CreateModelDetails, CreateProjectDetails
from dockyard.schemas.deployments import CreateModelDeploymentDetails
from dockyard.service.bundle import Services
from dockyard.service.context import Caller

log = logging.getLogger("dockyard.example")

EXAMPLE_DIR = Path(__file__).parent / "examples" / "default_model"
TAG = {"dockyard-example": "default"}
COMPARTMENT = "ocid1.compartment.oc1..dockyardexample"
CALLER = Caller(user_id="ocid1.user.oc1..dockyard")


def artifact_bytes(directory: Path = EXAMPLE_DIR) -> bytes:
    """The example folder's files zipped at the top level, as a user would upload them."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(directory.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts:
                archive.write(path, path.relative_to(directory).as_posix())
    return buffer.getvalue()


def sample_request(directory: Path = EXAMPLE_DIR) -> str:
    sample = directory / "sample_request.json"
    return sample.read_text().strip() if sample.exists() else '{"data": [[1, 2, 3]]}'


async def _one(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def deploy_example(services: Services, announce: Callable[[str], None], timeout_s: float = 600) -> str | None:
    """Make sure the example deployment exists and is ACTIVE; announce a predict call."""
    existing = await run_in_threadpool(
        services.deployments.list, {"compartmentId": COMPARTMENT, "lifecycleState": None, "limit": 100}
    )
    live = [d for d in existing.items if d.get("freeformTags") == TAG and d["lifecycleState"] not in ("DELETED", "DELETING", "FAILED")]
    if live:
        deployment_id = live[0]["id"]
    else:
        project = await run_in_threadpool(
            services.projects.create,
            CreateProjectDetails(compartment_id=COMPARTMENT, display_name="example", freeform_tags=TAG),
            CALLER,
            None,
        )
        model = await run_in_threadpool(
            services.models.create,
            CreateModelDetails(compartment_id=COMPARTMENT, project_id=project.id, display_name="example-model", freeform_tags=TAG),
            CALLER,
            None,
        )
        await services.models.put_artifact(model.id, _one(artifact_bytes()), 'attachment; filename="example.zip"', None)
        details = CreateModelDeploymentDetails.model_validate(
            {
                "displayName": "example",
                "projectId": project.id,
                "compartmentId": COMPARTMENT,
                "freeformTags": TAG,
                "modelDeploymentConfigurationDetails": {
                    "deploymentType": "SINGLE_MODEL",
                    "modelConfigurationDetails": {
                        "modelId": model.id,
                        "instanceConfiguration": {"instanceShapeName": "VM.Standard.E4.Flex"},
                        "scalingPolicy": {"policyType": "FIXED_SIZE", "instanceCount": 1},
                    },
                    "environmentConfigurationDetails": {"environmentConfigurationType": "DEFAULT"},
                },
            }
        )
        record, _ = await run_in_threadpool(services.deployments.create, details, CALLER, None)
        deployment_id = record.id
    announce(f"example deployment {deployment_id}: waiting until it is ACTIVE ...")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while loop.time() < deadline:
        record = await run_in_threadpool(services.deployments.get, deployment_id)
        if record.state == "ACTIVE":
            url = record.body["modelDeploymentUrl"]
            announce(
                "example model is ACTIVE. Try it:\n\n"
                f"  curl -s -X POST {url}/predict -H 'content-type: application/json' -d '{json.dumps(json.loads(sample_request()))}'\n"
            )
            return deployment_id
        if record.state == "FAILED":
            announce(f"the example deployment FAILED: {record.body.get('lifecycleDetails')}")
            return None
        await asyncio.sleep(0.2)
    announce("the example deployment did not become ACTIVE in time; see `dockyard deployments instances`")
    return None

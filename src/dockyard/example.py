"""`dockyard serve --example`: deploy the bundled example model once and print a predict call.

Runs inside the server process, through the same services the API uses and as the
administrator, so the example is an ordinary project, model and deployment (tagged
`dockyard-example`) in the administrator's tenancy (its root compartment) that the API and CLI
show. On later starts the existing deployment is reused. The printed call is signed (dockyard's
CLI reads the administrator's OCI config file); with --insecure-no-auth a plain curl is printed.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import shlex
import shutil
import sys
import zipfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from starlette.concurrency import run_in_threadpool

from dockyard.schemas.catalog import CreateModelDetails, CreateProjectDetails
from dockyard.schemas.deployments import CreateModelDeploymentDetails
from dockyard.service.bundle import Services
from dockyard.auth.identity import Principal
from dockyard.service.context import Caller

log = logging.getLogger("dockyard.example")

EXAMPLE_DIR = Path(__file__).parent / "examples" / "default_model"
TAG = {"dockyard-example": "default"}


def example_caller(server: object) -> Caller:
    """The administrator made on first start, as the example's creator."""
    admin = server.principals.admin()  # type: ignore[attr-defined]
    return Principal(user_id=admin.id, tenancy_id=admin.tenancy_id, user_name=admin.name, is_admin=True)


def dockyard_command() -> str:
    """How to run this installation's `dockyard` from any shell: its absolute path."""
    beside_python = Path(sys.executable).with_name("dockyard")
    found = str(beside_python) if beside_python.exists() else shutil.which("dockyard")
    return found or f"{sys.executable} -m dockyard.cli.main"


def predict_call(url: str, deployment_id: str, body: str, *, signed: bool, config_file: Path) -> str:
    if not signed:
        return f"curl -s -X POST {url}/predict -H 'content-type: application/json' -d {shlex.quote(body)}"
    return f"DOCKYARD_CONFIG_FILE={config_file} {dockyard_command()} predict {deployment_id} -d {shlex.quote(body)}"


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


async def deploy_example(server: object, announce: Callable[[str], None], timeout_s: float = 600) -> str | None:
    """Make sure the example deployment exists and is ACTIVE; announce a predict call."""
    services: Services = server.services  # type: ignore[attr-defined]
    caller = example_caller(server)
    compartment = caller.tenancy_id
    existing = await run_in_threadpool(
        services.deployments.list, {"compartmentId": compartment, "lifecycleState": None, "limit": 100}, caller
    )
    live = [d for d in existing.items if d.get("freeformTags") == TAG and d["lifecycleState"] not in ("DELETED", "DELETING", "FAILED")]
    if live:
        deployment_id = live[0]["id"]
    else:
        project = await run_in_threadpool(
            services.projects.create,
            CreateProjectDetails(compartment_id=compartment, display_name="example", freeform_tags=TAG),
            caller,
            None,
        )
        model = await run_in_threadpool(
            services.models.create,
            CreateModelDetails(compartment_id=compartment, project_id=project.id, display_name="example-model", freeform_tags=TAG),
            caller,
            None,
        )
        await services.models.put_artifact(model.id, _one(artifact_bytes()), 'attachment; filename="example.zip"', None, caller)
        details = CreateModelDeploymentDetails.model_validate(
            {
                "displayName": "example",
                "projectId": project.id,
                "compartmentId": compartment,
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
        record, _ = await run_in_threadpool(services.deployments.create, details, caller, None)
        deployment_id = record.id
    announce(f"example deployment {deployment_id}: waiting until it is ACTIVE ...")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while loop.time() < deadline:
        record = await run_in_threadpool(services.deployments.get, deployment_id, caller)
        if record.state == "ACTIVE":
            url = record.body["modelDeploymentUrl"]
            settings = services.settings
            call = predict_call(url, deployment_id, json.dumps(json.loads(sample_request())),
                                signed=not settings.insecure_no_auth, config_file=server.admin_config)  # type: ignore[attr-defined]  # fmt: skip
            announce(f"example model is ACTIVE. Try it:\n\n  {call}\n")
            return deployment_id
        if record.state == "FAILED":
            announce(f"the example deployment FAILED: {record.body.get('lifecycleDetails')}")
            return None
        await asyncio.sleep(0.2)
    announce("the example deployment did not become ACTIVE in time; see `dockyard deployments instances`")
    return None

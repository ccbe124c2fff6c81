"""The dockyard app in this process, driven over HTTP with httpx, plus helpers every API test uses.

`create_app(Settings(..., runtime="fake"))` is served through `httpx.ASGITransport`, which does
not run the ASGI lifespan, so the fixture enters `app.router.lifespan_context(app)` itself: the
reconciler runs in the test's event loop and deployments really go CREATING -> ACTIVE.

The `Api` wrapper is transport-neutral: tests that need a real process (concurrency, restart)
wrap an `httpx.AsyncClient` pointed at a `LiveServer` in the same class.

A test module uses the fixtures by naming this module as a plugin, and runs its tests in the
module-scoped event loop of the shared app::

    pytest.register_assert_rewrite("tests.api.inprocess")  # before importing it
    from tests.api.inprocess import Api, assert_error
    pytest_plugins = ["tests.api.inprocess"]
    pytestmark = pytest.mark.asyncio(loop_scope="module")
"""

from __future__ import annotations

import asyncio
import io
import re
import zipfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from fastapi import FastAPI

from dockyard.auth.client import signing_from_config
from dockyard.server import create_app
from dockyard.settings import Settings
from tests.support.compartments import SPARE_COMPARTMENTS, register
from tests.support.oci_config import COMPARTMENT
from tests.support.postgres import database_url_for

API = "/20190101"
DIGEST = "sha256:a9c8468cb671929aec7ad947b9dccd6fe8e6d77f7bcecfe2e10e1c935a88c2a5"
IMAGE = "127.0.0.1:5001/testtenancy/md_byoc_ref_iris_data:1.0.1"
SHAPE = "VM.Standard.E4.Flex"
ENTRYPOINT = ["python", "-m", "uvicorn", "a/model/server:app", "--port", "5000", "--host", "0.0.0.0"]

# Well-formed ids that this server never issued (a foreign region, an unknown unique part).
UNKNOWN_IDS = {
    "projects": "ocid1.datascienceproject.oc1.iad.aaaaaaaaunknownunknownunknownunknown",
    "models": "ocid1.datasciencemodel.oc1.iad.aaaaaaaaunknownunknownunknownunknown",
    "modelDeployments": "ocid1.datasciencemodeldeployment.oc1.iad.aaaaaaaaunknownunknownunknown",
    "workRequests": "ocid1.datascienceworkrequest.oc1.iad.aaaaaaaaunknownunknownunknownunknown",
}
OCID_TYPES = {
    "projects": "datascienceproject",
    "models": "datasciencemodel",
    "modelDeployments": "datasciencemodeldeployment",
    "workRequests": "datascienceworkrequest",
}

# A message "says what to do" when it carries an instruction; these words are how dockyard's
# messages phrase one ("send null or omit the field", "choose another port", "check the id" ...).
_DIRECTIVE = re.compile(
    r"\b(send|use|choose|rename|remove|upload|pass|check|create|add|move|put|wait|retry|get|delete|"
    r"activate|deactivate|ask|give|omit|should|required|must|need|needs|point|free|split|shorten|set)\b"
    r"|\bone of\b",
    re.IGNORECASE,
)


# --- artifacts ---------------------------------------------------------------------------------


def zip_bytes(files: dict[str, bytes | str]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, content in files.items():
            archive.writestr(name, content)
    return buffer.getvalue()


BYOC_ARTIFACT = zip_bytes({"api.py": "print('hello')\n", "model.joblib": b"\x00" * 256})
DEFAULT_ARTIFACT = zip_bytes(
    {"score.py": "def load_model():\n    return None\n\ndef predict(data, model=None):\n    return data\n",
     "runtime.yaml": "MODEL_ARTIFACT_VERSION: '3.0'\n"}
)  # fmt: skip


# --- request bodies ----------------------------------------------------------------------------


def byoc_environment(**overrides: Any) -> dict[str, Any]:
    """The stored configuration of the U2 worked example (byoc-contract.md)."""
    env: dict[str, Any] = {
        "environmentConfigurationType": "OCIR_CONTAINER",
        "image": IMAGE,
        "imageDigest": DIGEST,
        "serverPort": 5454,
        "environmentVariables": {"a": "b", "c": "d", "e": "f"},
        "entrypoint": list(ENTRYPOINT),
        "cmd": ["param1"],
    }
    env.update(overrides)
    return env


def deployment_body(
    project_id: str,
    model_id: str,
    *,
    name: str = "byoc",
    env: dict[str, Any] | None = None,
    instance_count: int = 1,
    shape: str = SHAPE,
) -> dict[str, Any]:
    """A CreateModelDeploymentDetails body as the SDK sends it (discriminators included)."""
    return {
        "displayName": name,
        "projectId": project_id,
        "compartmentId": COMPARTMENT,
        "modelDeploymentConfigurationDetails": {
            "deploymentType": "SINGLE_MODEL",
            "modelConfigurationDetails": {
                "modelId": model_id,
                "instanceConfiguration": {
                    "instanceShapeName": shape,
                    "modelDeploymentInstanceShapeConfigDetails": {"ocpus": 1.0, "memoryInGBs": 2.0},
                },
                "scalingPolicy": {"policyType": "FIXED_SIZE", "instanceCount": instance_count},
                "bandwidthMbps": 10,
            },
            "environmentConfigurationDetails": byoc_environment() if env is None else env,
        },
    }


# --- assertions --------------------------------------------------------------------------------


def says_what_to_do(message: str, refused_verb: str | None = None) -> bool:
    """True when the message carries an instruction. The name of the refused operation itself
    ("activate is not possible") is not one, so it is left out of the search."""
    if refused_verb:
        message = re.sub(rf"\b{refused_verb}\b", "", message, flags=re.IGNORECASE)
    return bool(_DIRECTIVE.search(message))


def assert_error(response: httpx.Response, status: int, code: str | tuple[str, ...], *fragments: str) -> str:
    """An OCI error reply: status, `code`, a message that holds every fragment and an instruction.

    Returns the message for further checks.
    """
    assert response.status_code == status, f"expected {status}, got {response.status_code}: {response.text}"
    body = response.json()
    assert isinstance(body, dict) and set(body) >= {"code", "message"}, body
    codes = (code,) if isinstance(code, str) else code
    assert body["code"] in codes, f"code {body['code']!r}, expected {codes}: {body['message']}"
    message = body["message"]
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} is not in the message: {message!r}"
    assert says_what_to_do(message), f"the message does not say what to do: {message!r}"
    assert response.headers.get("opc-request-id"), "every reply carries opc-request-id"
    return str(message)


# --- the client ----------------------------------------------------------------------------------


class Api:
    """Thin helpers over an httpx.AsyncClient whose base URL ends in /20190101."""

    def __init__(self, client: httpx.AsyncClient, app: FastAPI | None = None, data_dir: Path | None = None) -> None:
        self.client = client
        self.app = app
        self.data_dir = data_dir
        self.created: list[str] = []  # deployments created through this wrapper

    # raw verbs
    async def request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        response = await self.client.request(method, path, **kw)
        if method == "POST" and path == "/modelDeployments" and response.status_code == 200:
            self.created.append(response.json()["id"])
        return response

    async def get(self, path: str, **kw: Any) -> httpx.Response:
        return await self.request("GET", path, **kw)

    async def post(self, path: str, **kw: Any) -> httpx.Response:
        return await self.request("POST", path, **kw)

    async def put(self, path: str, **kw: Any) -> httpx.Response:
        return await self.request("PUT", path, **kw)

    async def delete(self, path: str, **kw: Any) -> httpx.Response:
        return await self.request("DELETE", path, **kw)

    # catalog
    async def create_project(self, name: str = "p", **extra: Any) -> dict[str, Any]:
        response = await self.post("/projects", json={"compartmentId": COMPARTMENT, "displayName": name} | extra)
        assert response.status_code == 200, response.text
        return response.json()  # type: ignore[no-any-return]

    async def create_model(self, project_id: str, name: str = "m", artifact: bytes | None = BYOC_ARTIFACT) -> dict[str, Any]:
        body = {"compartmentId": COMPARTMENT, "projectId": project_id, "displayName": name}
        response = await self.post("/models", json=body)
        assert response.status_code == 200, response.text
        model = response.json()
        if artifact is not None:
            await self.upload(model["id"], artifact)
        return model  # type: ignore[no-any-return]

    async def upload(self, model_id: str, data: bytes, disposition: str = 'attachment; filename="m.zip"') -> httpx.Response:
        response = await self.post(
            f"/models/{model_id}/artifact",
            content=data,
            headers={"content-type": "application/octet-stream", "content-disposition": disposition},
        )
        assert response.status_code == 200, response.text
        return response

    async def download(self, model_id: str) -> bytes:
        response = await self.get(f"/models/{model_id}/artifact/content")
        assert response.status_code == 200, response.text
        return response.content

    # deployments
    async def create_deployment(self, body: dict[str, Any], wait: bool = True) -> tuple[dict[str, Any], str]:
        """Create; with `wait`, until the deployment is ACTIVE with all its instances counted.

        Setup waits on the deployment, not on its work request, so that a test about something
        else does not fail when the work request misbehaves (test_concurrency_and_tokens.py
        checks work requests on their own)."""
        response = await self.post("/modelDeployments", json=body)
        assert response.status_code == 200, response.text
        wr_id = response.headers["opc-work-request-id"]
        if wait:
            await self.wait_settled(response.json()["id"])
        return response.json(), wr_id

    async def deployment(self, deployment_id: str) -> tuple[dict[str, Any], str]:
        response = await self.get(f"/modelDeployments/{deployment_id}")
        assert response.status_code == 200, response.text
        return response.json(), response.headers["etag"]

    async def wait(self, work_request_id: str, timeout_s: float = 15.0) -> dict[str, Any]:
        """Poll the work request until it has finished, as the SDK waiters do."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            response = await self.get(f"/workRequests/{work_request_id}")
            assert response.status_code == 200, response.text
            wr = response.json()
            if wr["status"] in ("SUCCEEDED", "FAILED", "CANCELED"):
                return wr  # type: ignore[no-any-return]
            assert wr["timeFinished"] is None, f"a finished work request (timeFinished set) reports {wr['status']}: {wr}"
            assert loop.time() < deadline, f"work request still {wr['status']} after {timeout_s} s: {wr}"
            await asyncio.sleep(0.05)

    async def wait_state(self, deployment_id: str, state: str, timeout_s: float = 15.0) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            body, _ = await self.deployment(deployment_id)
            if body["lifecycleState"] == state:
                return body
            assert loop.time() < deadline, f"still {body['lifecycleState']} after {timeout_s} s, not {state}"
            await asyncio.sleep(0.05)

    # lists
    async def list_all(self, path: str, **params: Any) -> list[dict[str, Any]]:
        """Every item of a list operation, following opc-next-page."""
        items: list[dict[str, Any]] = []
        params = {"compartmentId": COMPARTMENT, "limit": 100} | params
        for _ in range(1000):
            response = await self.get(path, params=params)
            assert response.status_code == 200, response.text
            page = response.json()
            assert isinstance(page, list), page
            items += page
            token = response.headers.get("opc-next-page")
            if token is None:
                return items
            params["page"] = token
        raise AssertionError(f"{path} never reached its last page")

    async def snapshot(self) -> dict[str, list[str]]:
        """The ids of every stored project, model, deployment and work request."""
        result = {}
        for path in ("/projects", "/models", "/modelDeployments", "/workRequests"):
            result[path] = sorted(r["id"] for r in await self.list_all(path))
        return result

    async def wait_settled(self, deployment_id: str, timeout_s: float = 15.0) -> dict[str, Any]:
        """ACTIVE with every instance counted: the reconciler has nothing left to write."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            body, _ = await self.deployment(deployment_id)
            wanted = body["modelDeploymentConfigurationDetails"]["modelConfigurationDetails"]["scalingPolicy"]["instanceCount"]
            if body["lifecycleState"] == "ACTIVE" and body["modelDeploymentSystemData"]["currentInstanceCount"] == wanted:
                return body
            assert loop.time() < deadline, f"not settled after {timeout_s} s: {body['lifecycleState']}, {body['modelDeploymentSystemData']}"
            await asyncio.sleep(0.05)

    def specs(self, deployment_id: str) -> list[Any]:
        """What the in-process FakeRuntime runs for one deployment (InstanceSpec of each instance)."""
        assert self.app is not None, "only for the in-process app"
        runtime = self.app.state.server.runtime
        return [spec for spec in runtime.specs.values() if spec.deployment_id == deployment_id]


class Catalog:
    """A project and a model whose BYOC artifact is uploaded."""

    def __init__(self, project: dict[str, Any], model: dict[str, Any]) -> None:
        self.project = project
        self.model = model
        self.project_id: str = project["id"]
        self.model_id: str = model["id"]

    def deployment_body(self, **kw: Any) -> dict[str, Any]:
        return deployment_body(self.project_id, self.model_id, **kw)


# --- fixtures ------------------------------------------------------------------------------------
#
# One app per test module (creating one costs a database and a first-request warm-up); every
# test makes the resources it changes, and compares lists before and after rather than with
# fixed counts, so tests sharing the app do not see each other (see the module docstring for
# how a test module takes these fixtures).


def inprocess_settings(data_dir: Path) -> Settings:
    # verify_images=False: the images named by these tests live in no registry (nothing runs).
    # On PostgreSQL when the test chose it (tests/api/conftest.py), else the SQLite file in data_dir.
    database = {"database_url": url} if (url := database_url_for(data_dir)) else {}
    return Settings(data_dir=data_dir, runtime="fake", reconcile_interval_s=0.2, verify_images=False, **database)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def app(tmp_path_factory: pytest.TempPathFactory, store_kind: str) -> AsyncIterator[FastAPI]:
    data_dir = tmp_path_factory.mktemp("dockyard") / "data"
    application = create_app(inprocess_settings(data_dir))
    # a signed caller acts only in compartments of their tenancy: make the tests' ones so
    register(application.state.server.services.store.writer, COMPARTMENT, *SPARE_COMPARTMENTS)
    async with application.router.lifespan_context(application):
        yield application


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def module_api(app: FastAPI) -> AsyncIterator[Api]:
    transport = httpx.ASGITransport(app=app)
    signing = signing_from_config(app.state.server.admin_config)  # requests are signed as the administrator
    assert signing is not None
    async with httpx.AsyncClient(transport=transport, base_url=f"http://dockyard.test{API}", timeout=30, auth=signing.auth) as client:
        yield Api(client, app, app.state.server.settings.data_dir)


@pytest_asyncio.fixture(loop_scope="module")
async def api(module_api: Api) -> AsyncIterator[Api]:
    """The module's client; the deployments a test creates are deleted after it, so the
    reconciler of the shared app only ever tends the few that a test is looking at."""
    mine = Api(module_api.client, module_api.app, module_api.data_dir)
    yield mine
    for deployment_id in mine.created:
        await mine.delete(f"/modelDeployments/{deployment_id}")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def catalog(module_api: Api) -> Catalog:
    """A project and a model with a BYOC artifact, shared by the module: do not change them."""
    project = await module_api.create_project("catalog")
    model = await module_api.create_model(project["id"], "byoc-model")
    return Catalog(project, model)


@pytest_asyncio.fixture(loop_scope="module")
async def active(api: Api, catalog: Catalog) -> dict[str, Any]:
    """A new ACTIVE BYOC deployment holding the U2 worked example's stored configuration."""
    body, _ = await api.create_deployment(catalog.deployment_body())
    return (await api.deployment(body["id"]))[0]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def standing(module_api: Api, catalog: Catalog) -> dict[str, Any]:
    """One ACTIVE BYOC deployment shared by the module, for requests that must NOT change it."""
    body, _ = await module_api.create_deployment(catalog.deployment_body(name="standing"))
    return (await module_api.deployment(body["id"]))[0]

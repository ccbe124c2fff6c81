"""The official `oci` SDK, configured from the file `ensure_admin` wrote, against a signed server.

The real control plane (`create_app`, fake runtime) and the real gateway, composed on one port
behind `SignatureAuthMiddleware`, served by uvicorn in a thread: the SDK talks plain HTTP to it
as it would to a real server. The verifier's clock can be moved, to replay a captured request
six minutes later.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import oci
import pytest
import requests
import uvicorn
from oci.data_science import models as m

from dockyard.auth import keys
from dockyard.auth.bootstrap import ensure_admin
from dockyard.auth.middleware import SignatureAuthMiddleware
from dockyard.auth.principals import PrincipalStore
from dockyard.auth.verifier import Verifier
from dockyard.gateway import beside, create_gateway
from dockyard.server import create_app
from dockyard.settings import Settings
from tests.support.postgres import database_url_for
from tests.support.server import free_port

pytest.register_assert_rewrite("tests.api.inprocess")  # before the import below, as every user of it does
from tests.api.inprocess import says_what_to_do  # noqa: E402

NO_RETRY = oci.retry.NoneRetryStrategy()


@dataclass
class SignedServer:
    url: str
    config_path: Path
    principals: PrincipalStore
    clock_offset: list[timedelta] = field(default_factory=lambda: [timedelta(0)])

    @property
    def config(self) -> dict[str, Any]:
        return oci.config.from_file(str(self.config_path))

    @property
    def compartment(self) -> str:
        return str(self.config["tenancy"])  # the tenancy is the root compartment


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, store_kind: str) -> Iterator[SignedServer]:
    data_dir = tmp_path_factory.mktemp("signed") / "data"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    # On PostgreSQL when the module runs on it (tests/api/conftest.py), else the SQLite file in data_dir.
    database = {"database_url": database_url} if (database_url := database_url_for(data_dir)) else {}
    settings = Settings(data_dir=data_dir, port=port, runtime="fake", verify_images=False, reconcile_interval_s=0.2, **database)
    control = create_app(settings)
    store = control.state.server.services.store
    principals = PrincipalStore(store.engine, store.writer, realm=settings.realm)
    config_path = ensure_admin(principals, data_dir, url, "us-ashburn-1")
    signed = SignedServer(url, config_path, principals)
    verifier = Verifier(principals.lookup_key, clock=lambda: datetime.now(timezone.utc) + signed.clock_offset[0], cache_ttl_s=0)
    app = SignatureAuthMiddleware(beside(control, create_gateway(store)), verifier, allow_unsigned=False)
    uv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not uv.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    yield signed
    uv.should_exit = True
    thread.join(15)


@pytest.fixture
def client(server: SignedServer) -> oci.data_science.DataScienceClient:
    return oci.data_science.DataScienceClient(server.config, service_endpoint=server.url, retry_strategy=NO_RETRY)


def refused(call: Any, *fragments: str) -> oci.exceptions.ServiceError:
    with pytest.raises(oci.exceptions.ServiceError) as info:
        call()
    error = info.value
    assert error.status == 401 and error.code == "NotAuthenticated", (error.status, error.code, error.message)
    for fragment in fragments:
        assert fragment in error.message, error.message
    assert says_what_to_do(error.message), error.message
    return error


def config_with_new_key(server: SignedServer, tmp_path: Path, *, keep_fingerprint: bool) -> dict[str, Any]:
    key = keys.generate_private_key()
    key_file = tmp_path / "other.pem"
    key_file.write_bytes(keys.private_pem(key))
    config = dict(server.config)
    config["key_file"] = str(key_file)
    if not keep_fingerprint:
        config["fingerprint"] = keys.fingerprint(key.public_key())
    return config


class TamperingSigner(oci.signer.Signer):
    """Signs like the SDK, then changes the body (same length) on its way out."""

    def __call__(self, request: Any, enforce_content_headers: bool = True) -> Any:
        request = super().__call__(request, enforce_content_headers)
        body = request.body.encode() if isinstance(request.body, str) else request.body
        request.body = body.replace(b"innocent", b"maliciou")
        return request


# --- signed calls pass ----------------------------------------------------------------------------


def test_the_config_file_is_valid_for_the_sdk(server: SignedServer) -> None:
    config = server.config
    oci.config.validate_config(config)
    assert set(config) >= {"user", "fingerprint", "key_file", "tenancy", "region"}


def test_signed_calls_pass_and_act_as_the_admin(server: SignedServer, client: oci.data_science.DataScienceClient, tmp_path: Path) -> None:
    admin = server.principals.admin()
    assert admin is not None
    project = client.create_project(m.CreateProjectDetails(compartment_id=server.compartment, display_name="signed")).data
    assert project.created_by == admin.id
    assert client.get_project(project.id).data.display_name == "signed"
    listed = client.list_projects(compartment_id=server.compartment, lifecycle_state="ACTIVE", limit=5).data
    assert project.id in [p.id for p in listed]
    client.update_project(project.id, m.UpdateProjectDetails(description="put is body-signed too"))

    model = client.create_model(m.CreateModelDetails(compartment_id=server.compartment, project_id=project.id)).data
    artifact = tmp_path / "artifact.zip"
    artifact.write_bytes(b"PK\x05\x06" + b"\x00" * 18)  # an empty zip
    with artifact.open("rb") as body:  # a file object: octet-stream, signed without body headers
        client.create_model_artifact(model.id, body, content_disposition='attachment; filename="m.zip"')
    assert int(client.head_model_artifact(model.id).headers["content-length"]) == artifact.stat().st_size
    assert client.get_model_artifact_content(model.id).data.content == artifact.read_bytes()
    # empty-body actions are body-signed (x-content-sha256 of nothing)
    assert client.deactivate_model(model.id).data.lifecycle_state == "INACTIVE"
    assert client.activate_model(model.id).data.lifecycle_state == "ACTIVE"


def test_artifact_upload_as_bytes_is_signed_without_body_headers(server: SignedServer, client: oci.data_science.DataScienceClient) -> None:
    """bytes bodies get content-type application/json from the signer (oci-api.md §0)."""
    project = client.create_project(m.CreateProjectDetails(compartment_id=server.compartment)).data
    model = client.create_model(m.CreateModelDetails(compartment_id=server.compartment, project_id=project.id)).data
    response = client.create_model_artifact(model.id, b"PK\x05\x06" + b"\x00" * 18)
    assert response.status == 200


def test_trailing_slash_endpoint_signs_a_double_slash_path_that_still_verifies(server: SignedServer) -> None:
    client = oci.data_science.DataScienceClient(server.config, service_endpoint=server.url + "/", retry_strategy=NO_RETRY)
    with pytest.raises(oci.exceptions.ServiceError) as info:
        client.list_projects(compartment_id=server.compartment)
    assert info.value.status != 401, info.value.message  # the signature verified; the route is another matter


def test_data_plane_predict_is_verified(server: SignedServer, tmp_path: Path) -> None:
    predict = oci.model_deployment.ModelDeploymentClient(server.config, service_endpoint=server.url, retry_strategy=NO_RETRY)
    unknown = "ocid1.datasciencemodeldeployment.oc1..aaaaaaaaunknown"
    with pytest.raises(oci.exceptions.ServiceError) as info:
        predict.predict(unknown, {"data": [1, 2]})
    assert info.value.status == 404 and info.value.code == "NotAuthorizedOrNotFound"  # past authentication

    config = server.config
    tampering = TamperingSigner(config["tenancy"], config["user"], config["fingerprint"], config["key_file"])
    forged = oci.model_deployment.ModelDeploymentClient(config, signer=tampering, service_endpoint=server.url, retry_strategy=NO_RETRY)
    refused(lambda: forged.predict(unknown, {"data": "innocent"}), "header x-content-sha256 does not match the body")

    response = requests.post(f"{server.url}/{unknown}/predict", json={"data": [1]}, timeout=10)
    assert response.status_code == 401 and response.json()["code"] == "NotAuthenticated"


# --- refusals -------------------------------------------------------------------------------------


def test_wrong_private_key_is_refused(server: SignedServer, tmp_path: Path) -> None:
    config = config_with_new_key(server, tmp_path, keep_fingerprint=True)
    client = oci.data_science.DataScienceClient(config, service_endpoint=server.url, retry_strategy=NO_RETRY)
    refused(lambda: client.list_projects(compartment_id=server.compartment), "signature does not verify with key", config["fingerprint"])


def test_unregistered_key_is_refused(server: SignedServer, tmp_path: Path) -> None:
    config = config_with_new_key(server, tmp_path, keep_fingerprint=False)
    client = oci.data_science.DataScienceClient(config, service_endpoint=server.url, retry_strategy=NO_RETRY)
    refused(lambda: client.list_projects(compartment_id=server.compartment), "is not registered", "dockyard keys add")


def test_tampered_body_is_refused(server: SignedServer) -> None:
    config = server.config
    tampering = TamperingSigner(config["tenancy"], config["user"], config["fingerprint"], config["key_file"])
    client = oci.data_science.DataScienceClient(config, signer=tampering, service_endpoint=server.url, retry_strategy=NO_RETRY)
    details = m.CreateProjectDetails(compartment_id=server.compartment, display_name="innocent")
    refused(lambda: client.create_project(details), "header x-content-sha256 does not match the body")
    names = [p.display_name for p in oci.data_science.DataScienceClient(config, service_endpoint=server.url).list_projects(
        compartment_id=server.compartment).data]  # fmt: skip
    assert "maliciou" not in names


def test_request_replayed_six_minutes_later_is_refused(server: SignedServer, client: oci.data_science.DataScienceClient) -> None:
    sent: list[requests.PreparedRequest] = []
    client.base_client.session.hooks["response"].append(lambda response, *a, **kw: sent.append(response.request))
    client.list_projects(compartment_id=server.compartment)
    captured = sent[-1]
    session = requests.Session()
    assert session.send(captured, timeout=10).status_code == 200  # within the window a replay passes, as on OCI
    server.clock_offset[0] = timedelta(minutes=6)
    try:
        replay = session.send(captured, timeout=10)
    finally:
        server.clock_offset[0] = timedelta(0)
    assert replay.status_code == 401
    body = replay.json()
    assert body["code"] == "NotAuthenticated"
    assert "date is 6 minutes" in body["message"] and "off the server's clock" in body["message"]  # 6 min + the test's own time
    assert "sync your clock" in body["message"]


def test_unsigned_request_is_refused(server: SignedServer) -> None:
    response = requests.get(f"{server.url}/20190101/projects", params={"compartmentId": server.compartment}, timeout=10)
    assert response.status_code == 401
    assert response.json() == {"code": "NotAuthenticated", "message": response.json()["message"]}
    assert "not signed" in response.json()["message"]
    assert response.headers["opc-request-id"]


def test_unsigned_artifact_upload_gets_its_401_not_a_broken_pipe(server: SignedServer) -> None:
    response = requests.post(f"{server.url}/20190101/models/ocid1.datasciencemodel.oc1..x/artifact", data=b"\x00" * (4 * 1024 * 1024), timeout=30)
    assert response.status_code == 401 and response.json()["code"] == "NotAuthenticated"


def test_health_stays_open(server: SignedServer) -> None:
    assert requests.get(f"{server.url}/health", timeout=10).status_code == 200


def test_a_deleted_key_stops_working(server: SignedServer, tmp_path: Path) -> None:
    admin = server.principals.admin()
    assert admin is not None
    key = keys.generate_private_key()
    key_file = tmp_path / "second.pem"
    key_file.write_bytes(keys.private_pem(key))
    added = server.principals.add_key(admin.id, keys.public_pem(key.public_key()))
    config = dict(server.config, key_file=str(key_file), fingerprint=added.fingerprint)
    client = oci.data_science.DataScienceClient(config, service_endpoint=server.url, retry_strategy=NO_RETRY)
    client.list_projects(compartment_id=server.compartment)
    server.principals.delete_key(added.fingerprint)
    refused(lambda: client.list_projects(compartment_id=server.compartment), "is not registered")


def test_error_body_is_what_the_sdk_reads(server: SignedServer) -> None:
    response = requests.post(f"{server.url}/20190101/projects", data=json.dumps({}), timeout=10)
    assert response.headers["content-type"] == "application/json"
    assert set(response.json()) == {"code", "message"}


def test_dockyards_own_client_signs_from_the_same_config(server: SignedServer) -> None:
    """What `dockyard`'s CLI uses: an httpx auth built from the config file, endpoint included."""
    import httpx

    from dockyard.auth.client import signing_from_config

    signing = signing_from_config(server.config_path)
    assert signing is not None and signing.endpoint == server.url
    with httpx.Client(base_url=signing.endpoint + "/20190101", auth=signing.auth, timeout=10) as http:
        project = http.post("/projects", json={"compartmentId": server.compartment, "displayName": "cli"})
        assert project.status_code == 200, project.text
        model = http.post("/models", json={"compartmentId": server.compartment, "projectId": project.json()["id"]})
        assert model.status_code == 200, model.text
        model_id = model.json()["id"]
        upload = http.post(f"/models/{model_id}/artifact", content=b"PK\x05\x06" + b"\x00" * 18,
                           headers={"content-type": "application/octet-stream"})  # fmt: skip
        assert upload.status_code == 200, upload.text
        assert http.post(f"/models/{model_id}/actions/deactivate").status_code == 200
        listed = http.get("/projects", params={"compartmentId": server.compartment, "displayName": "cli"})
        assert [p["displayName"] for p in listed.json()] == ["cli"]

"""Tenancies are isolated, and policies decide every operation (predict included).

A live server (fake runtime); tenancy A is the one `dockyard serve` made, with its administrator
and a compartment `team` made with `dockyard compartments create`. Tenancy B and its
administrator, and a user of A who may only read, are made with the `dockyard` CLI, each with
their own OCI config file. Everything goes through the official `oci` SDK (and a signed httpx
client for predict), so signatures, routes, services and the gateway are all really exercised.

The rule checked throughout: what B gets for A's resources is exactly what B gets for ids that
do not exist (status, code, and message once the id is blanked out), so B cannot even tell that
A's resources exist.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import oci
import pytest
from oci.data_science import models as m

from dockyard.auth.client import signing_from_config
from dockyard.domain import ids
from tests.support.postgres import database_url_for
from tests.support.server import LiveServer

NO_RETRY = oci.retry.NoneRetryStrategy()
IMAGE = "127.0.0.1:5001/testtenancy/md_byoc_ref_iris_data:1.0.1"
DIGEST = "sha256:a9c8468cb671929aec7ad947b9dccd6fe8e6d77f7bcecfe2e10e1c935a88c2a5"


def unknown(kind: str) -> str:
    """A well-formed id of this server's shape that nothing has."""
    return ids.new_ocid(kind, "oc1", "local")


def run_cli(data_dir: Path, *args: str) -> str:
    database_url = database_url_for(data_dir)  # the server's store, when it is PostgreSQL
    done = subprocess.run(
        [sys.executable, "-m", "dockyard.cli.main", *args, "--data-dir", str(data_dir)],
        capture_output=True, text=True, timeout=120, env=os.environ | ({"DOCKYARD_DATABASE_URL": database_url} if database_url else {}),
    )  # fmt: skip
    assert done.returncode == 0, f"dockyard {' '.join(args)} failed: {done.stdout}{done.stderr}"
    return done.stdout


def client_for(config_path: Path, url: str) -> oci.data_science.DataScienceClient:
    config = oci.config.from_file(str(config_path))
    return oci.data_science.DataScienceClient(config, service_endpoint=url, retry_strategy=NO_RETRY)


@dataclass
class World:
    server: LiveServer
    a: oci.data_science.DataScienceClient  # tenancy A's administrator
    b: oci.data_science.DataScienceClient  # tenancy B's administrator
    reader: oci.data_science.DataScienceClient  # a user of A who may only read in `team`
    configs: dict[str, Path]
    tenancy_a: str
    tenancy_b: str
    team: str  # a compartment of A
    project: m.Project
    model: m.Model
    deployment: m.ModelDeployment
    work_request_id: str


def artifact() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("score.py", "def predict(data, model=None):\n    return {'ok': True}\n")
        archive.writestr("runtime.yaml", "MODEL_ARTIFACT_VERSION: '3.0'\n")
    return buffer.getvalue()


def deployment_details(project_id: str, model_id: str, compartment: str) -> m.CreateModelDeploymentDetails:
    return m.CreateModelDeploymentDetails(
        display_name="tenant-a",
        project_id=project_id,
        compartment_id=compartment,
        model_deployment_configuration_details=m.SingleModelDeploymentConfigurationDetails(
            model_configuration_details=m.ModelConfigurationDetails(
                model_id=model_id,
                instance_configuration=m.InstanceConfiguration(instance_shape_name="VM.Standard.E4.Flex"),
                scaling_policy=m.FixedSizeScalingPolicy(instance_count=1),
            ),
            environment_configuration_details=m.OcirModelDeploymentEnvironmentConfigurationDetails(
                image=IMAGE, image_digest=DIGEST, server_port=8080, health_check_port=8080
            ),
        ),
    )


def wait_for(client: oci.data_science.DataScienceClient, work_request_id: str) -> m.WorkRequest:
    response = oci.wait_until(
        client, client.get_work_request(work_request_id),
        evaluate_response=lambda r: r.data.status in ("SUCCEEDED", "FAILED"), max_wait_seconds=120, max_interval_seconds=1,
    )  # fmt: skip
    return response.data


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, store_kind: str) -> Iterator[World]:
    root = tmp_path_factory.mktemp("tenancies")
    data = root / "data"
    server = LiveServer(data).start()
    try:
        config_a = server.config_path
        tenancy_a = oci.config.from_file(str(config_a))["tenancy"]
        team = run_cli(data, "compartments", "create", "team", "--tenancy", tenancy_a).split()[2]
        tenancy_b = run_cli(data, "tenancies", "create", "other").split()[2]
        run_cli(data, "users", "create", "bob", "--tenancy", "other", "--admin")
        run_cli(data, "keys", "add", "bob", "--out", str(root / "bob"), "--endpoint", server.url)
        run_cli(data, "users", "create", "rita", "--tenancy", tenancy_a)
        run_cli(data, "keys", "add", "rita", "--out", str(root / "rita"), "--endpoint", server.url)
        run_cli(data, "groups", "create", "readers", "--tenancy", tenancy_a)
        run_cli(data, "groups", "add-user", "readers", "rita")
        run_cli(data, "policies", "add", "allow group readers to read data-science-family in compartment team", "--tenancy", tenancy_a)

        a = client_for(config_a, server.url)
        project = a.create_project(m.CreateProjectDetails(compartment_id=team, display_name="a-project")).data
        model = a.create_model(m.CreateModelDetails(compartment_id=team, project_id=project.id, display_name="a-model")).data
        a.create_model_artifact(model.id, artifact(), content_disposition='attachment; filename="a.zip"')
        created = a.create_model_deployment(deployment_details(project.id, model.id, team))
        assert wait_for(a, created.headers["opc-work-request-id"]).status == "SUCCEEDED"
        deployment = a.get_model_deployment(created.data.id).data
        assert deployment.lifecycle_state == "ACTIVE"
        yield World(
            server, a, client_for(root / "bob" / "config", server.url), client_for(root / "rita" / "config", server.url),
            {"a": config_a, "b": root / "bob" / "config", "reader": root / "rita" / "config"},
            tenancy_a, tenancy_b, team, project, model, deployment, created.headers["opc-work-request-id"],
        )  # fmt: skip
    finally:
        server.stop()


def refusal(call: Callable[[], Any]) -> tuple[int, str, str]:
    with pytest.raises(oci.exceptions.ServiceError) as caught:
        call()
    return caught.value.status, caught.value.code, caught.value.message


def assert_same_as_unknown(
    call: Callable[[str], Any], real_id: str, fake_id: str, expected: tuple[int, str] | None = (404, "NotAuthorizedOrNotFound")
) -> None:
    """`call(id)` on someone else's resource answers exactly what it answers for an unknown id
    (`expected`: that answer's status and code; None for a HEAD, whose 404 has no body)."""
    status, code, message = refusal(lambda: call(real_id))
    fake_status, fake_code, fake_message = refusal(lambda: call(fake_id))
    assert (status, code) == (fake_status, fake_code), (message, fake_message)
    if expected is not None:
        assert (status, code) == expected, message
    else:
        assert status == 404
    assert str(message).replace(real_id, "<id>") == str(fake_message).replace(fake_id, "<id>")


# --- tenancy B cannot see, change, use or detect A's resources -------------------------------------


def test_another_tenancy_gets_for_every_resource_of_a_what_it_gets_for_ids_that_do_not_exist(world: World) -> None:
    b, w = world.b, world
    change = m.ChangeModelDeploymentCompartmentDetails(compartment_id=w.tenancy_b)
    cases: list[tuple[Callable[[str], Any], str, str]] = [
        (b.get_project, w.project.id, ids.PROJECT),
        (lambda i: b.update_project(i, m.UpdateProjectDetails(display_name="taken")), w.project.id, ids.PROJECT),
        (b.delete_project, w.project.id, ids.PROJECT),
        (lambda i: b.change_project_compartment(i, m.ChangeProjectCompartmentDetails(compartment_id=w.tenancy_b)), w.project.id, ids.PROJECT),
        (b.get_model, w.model.id, ids.MODEL),
        (lambda i: b.update_model(i, m.UpdateModelDetails(display_name="taken")), w.model.id, ids.MODEL),
        (b.deactivate_model, w.model.id, ids.MODEL),
        (b.delete_model, w.model.id, ids.MODEL),
        (b.get_model_artifact_content, w.model.id, ids.MODEL),
        (lambda i: b.create_model_artifact(i, artifact()), w.model.id, ids.MODEL),
        (b.get_model_deployment, w.deployment.id, ids.MODEL_DEPLOYMENT),
        (lambda i: b.update_model_deployment(i, m.UpdateModelDeploymentDetails(display_name="taken")), w.deployment.id, ids.MODEL_DEPLOYMENT),
        (b.activate_model_deployment, w.deployment.id, ids.MODEL_DEPLOYMENT),
        (b.deactivate_model_deployment, w.deployment.id, ids.MODEL_DEPLOYMENT),
        (b.delete_model_deployment, w.deployment.id, ids.MODEL_DEPLOYMENT),
        (lambda i: b.change_model_deployment_compartment(i, change), w.deployment.id, ids.MODEL_DEPLOYMENT),
        (b.get_work_request, w.work_request_id, ids.WORK_REQUEST),
        (b.list_work_request_logs, w.work_request_id, ids.WORK_REQUEST),
    ]
    for call, real_id, kind in cases:
        assert_same_as_unknown(call, real_id, unknown(kind))
    assert_same_as_unknown(b.head_model_artifact, w.model.id, unknown(ids.MODEL), expected=None)
    # nothing B tried changed anything
    assert w.a.get_model_deployment(w.deployment.id).data.lifecycle_state == "ACTIVE"
    assert w.a.get_project(w.project.id).data.display_name == "a-project"
    assert w.a.get_model(w.model.id).data.lifecycle_state == "ACTIVE"


def test_a_compartment_of_another_tenancy_reads_as_one_that_does_not_exist(world: World) -> None:
    b, w = world.b, world
    nowhere = unknown(ids.COMPARTMENT)
    for compartment in (w.team, w.tenancy_a):
        for lister in (b.list_projects, b.list_models, b.list_model_deployments, b.list_work_requests, b.list_model_deployment_shapes):
            assert_same_as_unknown(lambda c, lister=lister: lister(compartment_id=c), compartment, nowhere)
        create = lambda c: b.create_project(m.CreateProjectDetails(compartment_id=c))  # noqa: E731
        assert_same_as_unknown(create, compartment, nowhere)
    # B's own project cannot be moved into A's compartment either
    own = b.create_project(m.CreateProjectDetails(compartment_id=w.tenancy_b, display_name="b-project")).data
    move = lambda c: b.change_project_compartment(own.id, m.ChangeProjectCompartmentDetails(compartment_id=c))  # noqa: E731
    assert_same_as_unknown(move, w.team, nowhere)
    # and B's lists of its own compartment show only B's resources
    assert [p.id for p in b.list_projects(compartment_id=w.tenancy_b).data] == [own.id]


def test_another_tenancy_cannot_build_on_the_resources_of_a(world: World) -> None:
    b, w = world.b, world
    own = b.create_project(m.CreateProjectDetails(compartment_id=w.tenancy_b, display_name="b-builds")).data
    # a model in A's project, a deployment of A's model: refused as if they did not exist
    create_model = lambda p: b.create_model(m.CreateModelDetails(compartment_id=w.tenancy_b, project_id=p))  # noqa: E731
    assert_same_as_unknown(create_model, w.project.id, unknown(ids.PROJECT), (400, "RelatedResourceNotAuthorizedOrNotFound"))
    deploy = lambda model_id: b.create_model_deployment(deployment_details(own.id, model_id, w.tenancy_b))  # noqa: E731
    assert_same_as_unknown(deploy, w.model.id, unknown(ids.MODEL), (400, "RelatedResourceNotAuthorizedOrNotFound"))


def test_another_tenancy_cannot_predict_on_or_probe_a_deployment_of_a(world: World) -> None:
    w = world
    fake = unknown(ids.MODEL_DEPLOYMENT)

    def answers(config: Path, path: str, method: str = "POST") -> tuple[int, dict[str, Any]]:
        signing = signing_from_config(config)
        assert signing is not None
        with httpx.Client(base_url=w.server.url, auth=signing.auth, trust_env=False, timeout=30) as client:
            response = client.request(method, path, json={"data": [1]} if method == "POST" else None)
        return response.status_code, response.json()

    for suffix, method in (("/predict", "POST"), ("/predictWithResponseStream", "POST"), ("", "GET")):
        status, body = answers(w.configs["b"], f"/{w.deployment.id}{suffix}", method)
        fake_status, fake_body = answers(w.configs["b"], f"/{fake}{suffix}", method)
        assert (status, body["code"]) == (fake_status, fake_body["code"]) == (404, "NotAuthorizedOrNotFound"), body
        assert body["message"].replace(w.deployment.id, "<id>") == fake_body["message"].replace(fake, "<id>")
    # A itself gets past authorization (the fake runtime runs nothing, so what comes after may fail)
    status, body = answers(w.configs["a"], f"/{w.deployment.id}", "GET")
    assert status != 404, body


# --- policies inside one tenancy -------------------------------------------------------------------


def test_a_user_who_may_only_read_can_get_and_list_but_not_change_or_predict(world: World) -> None:
    r, w = world.reader, world
    assert r.get_model_deployment(w.deployment.id).data.id == w.deployment.id
    assert r.get_model(w.model.id).data.id == w.model.id
    assert [d.id for d in r.list_model_deployments(compartment_id=w.team).data] == [w.deployment.id]
    assert r.get_work_request(w.work_request_id).data.id == w.work_request_id
    assert r.head_model_artifact(w.model.id).status == 200
    # writes are refused with OCI's 404, as for an id that does not exist
    assert_same_as_unknown(
        lambda i: r.update_model_deployment(i, m.UpdateModelDeploymentDetails(display_name="x")), w.deployment.id, unknown(ids.MODEL_DEPLOYMENT)
    )
    assert_same_as_unknown(lambda i: r.update_project(i, m.UpdateProjectDetails(display_name="x")), w.project.id, unknown(ids.PROJECT))
    assert_same_as_unknown(r.delete_model, w.model.id, unknown(ids.MODEL))
    assert_same_as_unknown(lambda c: r.create_project(m.CreateProjectDetails(compartment_id=c)), w.team, unknown(ids.COMPARTMENT))
    # read is not use: no predict
    signing = signing_from_config(w.configs["reader"])
    assert signing is not None
    with httpx.Client(base_url=w.server.url, auth=signing.auth, trust_env=False, timeout=30) as client:
        response = client.post(f"/{w.deployment.id}/predict", json={"data": [1]})
    assert (response.status_code, response.json()["code"]) == (404, "NotAuthorizedOrNotFound")
    # the statement covers `team` only: the tenancy's root compartment stays closed to them
    assert_same_as_unknown(lambda c: r.list_projects(compartment_id=c), w.tenancy_a, unknown(ids.COMPARTMENT))
    assert w.a.get_model_deployment(w.deployment.id).data.display_name == "tenant-a"


def test_the_installation_metrics_which_name_every_deployment_are_for_home_administrators_only(world: World) -> None:
    w = world

    def metrics(config: Path) -> httpx.Response:
        signing = signing_from_config(config)
        assert signing is not None
        return httpx.get(f"{w.server.url}/metrics", auth=signing.auth, timeout=30, trust_env=False)

    assert metrics(w.configs["a"]).status_code == 200
    for who in ("b", "reader"):  # another tenancy's administrator; a user of the home tenancy
        refused = metrics(w.configs[who])
        assert (refused.status_code, refused.json()["code"]) == (404, "NotAuthorizedOrNotFound")
        assert w.deployment.id not in refused.text


def test_without_authentication_on_loopback_requests_have_no_tenancy_and_are_not_restricted(tmp_path: Path) -> None:
    """--insecure-no-auth (loopback only): unsigned requests act without a tenancy, so any
    compartment id works, as before authorization existed."""
    server = LiveServer(tmp_path / "data", env={"DOCKYARD_INSECURE_NO_AUTH": "true"}).start()
    try:
        anywhere = unknown(ids.COMPARTMENT)
        with httpx.Client(base_url=f"{server.url}/20190101", trust_env=False, timeout=30) as client:
            created = client.post("/projects", json={"compartmentId": anywhere})
            assert created.status_code == 200, created.text
            listed = client.get("/projects", params={"compartmentId": anywhere})
            assert [p["id"] for p in listed.json()] == [created.json()["id"]]
    finally:
        server.stop()

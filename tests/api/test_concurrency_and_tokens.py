"""Etags, retry tokens and concurrent writers: what clients that retry or race can rely on.

- `if-match` with a stale etag is a 412 NoEtagMatch and changes nothing (oci-api.md §1).
- The SDK retries creates with the same `opc-retry-token`: the retry returns what the first
  request created (same id, same work request); the same token on a different request is a 409.
- Two writers holding the same etag: exactly one wins, the other gets 412 (a real server, real
  threads).
- DELETE carries no retry token and is retried by the SDK: a repeated delete answers 202 with
  the first delete's work request.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import pytest_asyncio

pytest.register_assert_rewrite("tests.api.inprocess")  # before the import below: its asserts explain themselves

from tests.api.inprocess import (  # noqa: E402
    API,
    Api,
    Catalog,
    assert_error,
    zip_bytes,
)
from tests.support.oci_config import COMPARTMENT  # noqa: E402
from tests.support.server import LiveServer  # noqa: E402

pytest_plugins = ["tests.api.inprocess"]  # its fixtures: app, api, catalog, active, standing
pytestmark = pytest.mark.asyncio(loop_scope="module")


def token() -> str:
    return secrets.token_hex(15)  # 30 characters, like the SDK's


# --- if-match ---------------------------------------------------------------------------------


async def test_stale_etag_on_a_project_update_is_412_and_changes_nothing(api: Api) -> None:
    project = await api.create_project("before")
    stale = (await api.get(f"/projects/{project['id']}")).headers["etag"]
    fresh = await api.put(f"/projects/{project['id']}", json={"description": "first writer"}, headers={"if-match": stale})
    assert fresh.status_code == 200, fresh.text
    assert fresh.headers["etag"] != stale

    response = await api.put(f"/projects/{project['id']}", json={"displayName": "second writer"}, headers={"if-match": stale})
    assert_error(response, 412, "NoEtagMatch", stale)
    got = await api.get(f"/projects/{project['id']}")
    assert got.json()["displayName"] == "before" and got.json()["description"] == "first writer"
    assert got.headers["etag"] == fresh.headers["etag"]


async def test_stale_etag_on_a_model_update_is_412_and_changes_nothing(api: Api, catalog: Catalog) -> None:
    model = await api.create_model(catalog.project_id, "m-before", artifact=None)
    stale = (await api.get(f"/models/{model['id']}")).headers["etag"]
    assert (await api.put(f"/models/{model['id']}", json={"description": "changed"})).status_code == 200
    current = await api.get(f"/models/{model['id']}")

    response = await api.put(f"/models/{model['id']}", json={"displayName": "m-after"}, headers={"if-match": stale})
    assert_error(response, 412, "NoEtagMatch")
    after = await api.get(f"/models/{model['id']}")
    assert (after.json(), after.headers["etag"]) == (current.json(), current.headers["etag"])


@pytest.mark.parametrize(
    "method, suffix, body",
    [
        ("PUT", "", {"displayName": "stale writer"}),
        ("POST", "/actions/deactivate", None),
        ("DELETE", "", None),
    ],
)
async def test_stale_etag_on_a_deployment_change_is_412_and_changes_nothing(
    api: Api, standing: dict[str, Any], method: str, suffix: str, body: Any
) -> None:
    path = f"/modelDeployments/{standing['id']}"
    before, etag = await api.deployment(standing["id"])
    stale = "0" * 32
    work_requests = await api.snapshot()
    kw: dict[str, Any] = {"headers": {"if-match": stale}} | ({"json": body} if body is not None else {})
    response = await api.request(method, path + suffix, **kw)
    assert_error(response, 412, "NoEtagMatch")
    assert "opc-work-request-id" not in response.headers
    assert await api.deployment(standing["id"]) == (before, etag)
    assert await api.snapshot() == work_requests, "a refused change opened a work request"


async def test_the_current_etag_is_accepted_quoted_or_bare(api: Api) -> None:
    project = await api.create_project("etag")
    etag = (await api.get(f"/projects/{project['id']}")).headers["etag"]
    response = await api.put(f"/projects/{project['id']}", json={"description": "bare"}, headers={"if-match": etag})
    assert response.status_code == 200, response.text
    quoted = f'"{response.headers["etag"]}"'
    response = await api.put(f"/projects/{project['id']}", json={"description": "quoted"}, headers={"if-match": quoted})
    assert response.status_code == 200, response.text


async def test_stale_etag_on_an_artifact_upload_is_412_and_keeps_the_artifact(api: Api, catalog: Catalog) -> None:
    first = zip_bytes({"api.py": "first"})
    model = await api.create_model(catalog.project_id, "etag-artifact", artifact=first)
    stale = "f" * 32
    second = zip_bytes({"api.py": "second"})
    response = await api.post(f"/models/{model['id']}/artifact", content=second, headers={"if-match": stale})
    assert_error(response, 412, "NoEtagMatch")
    assert await api.download(model["id"]) == first


# --- opc-retry-token ---------------------------------------------------------------------------------


async def test_a_retried_project_create_returns_the_first_project(api: Api) -> None:
    before = await api.snapshot()
    headers = {"opc-retry-token": token()}
    body = {"compartmentId": COMPARTMENT, "displayName": "retried"}
    first = await api.post("/projects", json=body, headers=headers)
    second = await api.post("/projects", json=body, headers=headers)
    assert first.status_code == second.status_code == 200, (first.text, second.text)
    assert first.json()["id"] == second.json()["id"]
    assert first.headers["etag"] == second.headers["etag"]
    after = await api.snapshot()
    assert len(after["/projects"]) == len(before["/projects"]) + 1


async def test_a_retried_model_create_returns_the_first_model(api: Api, catalog: Catalog) -> None:
    before = await api.snapshot()
    headers = {"opc-retry-token": token()}
    body = {"compartmentId": COMPARTMENT, "projectId": catalog.project_id, "displayName": "retried"}
    first = await api.post("/models", json=body, headers=headers)
    second = await api.post("/models", json=body, headers=headers)
    assert first.status_code == second.status_code == 200
    assert first.json()["id"] == second.json()["id"]
    assert len((await api.snapshot())["/models"]) == len(before["/models"]) + 1


async def test_a_retried_deployment_create_returns_the_first_deployment_and_work_request(api: Api, catalog: Catalog) -> None:
    before = await api.snapshot()
    headers = {"opc-retry-token": token()}
    body = catalog.deployment_body(name="retried")
    first = await api.post("/modelDeployments", json=body, headers=headers)
    second = await api.post("/modelDeployments", json=body, headers=headers)
    assert first.status_code == second.status_code == 200, (first.text, second.text)
    assert first.json()["id"] == second.json()["id"]
    assert first.headers["opc-work-request-id"] == second.headers["opc-work-request-id"]
    # and once more after the deployment is up: still the same answer
    await api.wait_settled(first.json()["id"])
    third = await api.post("/modelDeployments", json=body, headers=headers)
    assert third.status_code == 200
    assert third.json()["id"] == first.json()["id"]
    assert third.headers["opc-work-request-id"] == first.headers["opc-work-request-id"]
    after = await api.snapshot()
    assert len(after["/modelDeployments"]) == len(before["/modelDeployments"]) + 1
    assert len(after["/workRequests"]) == len(before["/workRequests"]) + 1


@pytest.mark.parametrize("kind", ["projects", "models", "modelDeployments"])
async def test_a_retry_token_reused_for_a_different_request_is_409(api: Api, catalog: Catalog, kind: str) -> None:
    bodies = {
        "projects": lambda name: {"compartmentId": COMPARTMENT, "displayName": name},
        "models": lambda name: {"compartmentId": COMPARTMENT, "projectId": catalog.project_id, "displayName": name},
        "modelDeployments": lambda name: catalog.deployment_body(name=name),
    }
    headers = {"opc-retry-token": token()}
    first = await api.post(f"/{kind}", json=bodies[kind]("one"), headers=headers)
    assert first.status_code == 200, first.text
    before = await api.snapshot()
    second = await api.post(f"/{kind}", json=bodies[kind]("two"), headers=headers)
    assert_error(second, 409, ("InvalidatedRetryToken", "Conflict"), "opc-retry-token")
    assert await api.snapshot() == before, "the conflicting request stored something"
    assert (await api.get(f"/{kind}/{first.json()['id']}")).json()["displayName"] == "one"


async def test_retry_tokens_are_per_operation(api: Api, catalog: Catalog) -> None:
    """The SDK generates tokens per call; the same string on two different operations is two requests."""
    shared = {"opc-retry-token": token()}
    project = await api.post("/projects", json={"compartmentId": COMPARTMENT, "displayName": "tok"}, headers=shared)
    model = await api.post("/models", json={"compartmentId": COMPARTMENT, "projectId": catalog.project_id}, headers=shared)
    assert project.status_code == 200 and model.status_code == 200, (project.text, model.text)
    assert model.json()["id"].startswith("ocid1.datasciencemodel.")


# --- repeated deletes ----------------------------------------------------------------------------------


async def test_a_repeated_delete_answers_202_with_the_same_work_request(api: Api, active: dict[str, Any]) -> None:
    path = f"/modelDeployments/{active['id']}"
    first = await api.delete(path)
    second = await api.delete(path)
    assert first.status_code == second.status_code == 202, (first.text, second.text)
    wr_id = first.headers["opc-work-request-id"]
    assert second.headers["opc-work-request-id"] == wr_id
    assert (await api.wait(wr_id))["status"] == "SUCCEEDED"
    await api.wait_state(active["id"], "DELETED")
    third = await api.delete(path)  # after it finished, as an SDK retry of a slow first reply would
    assert third.status_code == 202 and third.headers["opc-work-request-id"] == wr_id
    got, _ = await api.deployment(active["id"])
    assert got["lifecycleState"] == "DELETED"  # ADS requires GET of a deleted deployment to answer


# --- concurrent writers on a real server ------------------------------------------------------------------


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def live(tmp_path_factory: pytest.TempPathFactory, store_kind: str) -> AsyncIterator[Api]:
    server = LiveServer(tmp_path_factory.mktemp("live") / "data").start()
    try:
        limits = httpx.Limits(max_connections=32)
        async with httpx.AsyncClient(base_url=server.url + API, timeout=30, limits=limits, auth=server.auth) as client:
            yield Api(client, data_dir=server.data_dir)
    finally:
        server.stop()


async def race(live: Api, method: str, path: str, etag: str, bodies: list[Any]) -> list[httpx.Response]:
    """Send every request at once, all carrying the same etag."""
    return list(
        await asyncio.gather(
            *(live.request(method, path, json=body, headers={"if-match": etag}) for body in bodies)
        )
    )


async def test_concurrent_project_updates_with_one_etag_exactly_one_wins(live: Api) -> None:
    project = await live.create_project("race")
    path = f"/projects/{project['id']}"
    for round_ in range(3):
        etag = (await live.get(path)).headers["etag"]
        names = [f"writer-{round_}-{i}" for i in range(6)]
        replies = await race(live, "PUT", path, etag, [{"displayName": n} for n in names])
        statuses = sorted(r.status_code for r in replies)
        assert statuses == [200] + [412] * 5, [(r.status_code, r.text) for r in replies]
        winner = next(r for r in replies if r.status_code == 200).json()["displayName"]
        for loser in (r for r in replies if r.status_code == 412):
            assert loser.json()["code"] == "NoEtagMatch"
        assert (await live.get(path)).json()["displayName"] == winner


async def test_concurrent_deployment_updates_with_one_etag_exactly_one_is_accepted(live: Api) -> None:
    project = await live.create_project("race")
    model = await live.create_model(project["id"])
    created, _ = await live.create_deployment(Catalog(project, model).deployment_body(name="race"))
    deployment_id = created["id"]
    await live.wait_settled(deployment_id)
    path = f"/modelDeployments/{deployment_id}"
    for round_ in range(2):
        body, etag = await live.deployment(deployment_id)
        before = await live.snapshot()
        names = [f"writer-{round_}-{i}" for i in range(2)]
        replies = await race(live, "PUT", path, etag, [{"displayName": n} for n in names])
        statuses = sorted(r.status_code for r in replies)
        assert statuses == [202, 412], [(r.status_code, r.text) for r in replies]
        winner = names[[r.status_code for r in replies].index(202)]
        accepted = next(r for r in replies if r.status_code == 202)
        assert (await live.wait(accepted.headers["opc-work-request-id"]))["status"] == "SUCCEEDED"
        got, _ = await live.deployment(deployment_id)
        assert got["displayName"] == winner
        after = await live.snapshot()
        assert len(after["/workRequests"]) == len(before["/workRequests"]) + 1, "the loser opened a work request"


async def test_concurrent_identical_creates_with_one_retry_token_make_one_resource(live: Api) -> None:
    before = await live.snapshot()
    headers = {"opc-retry-token": token()}
    body = {"compartmentId": COMPARTMENT, "displayName": "same-token"}
    replies = await asyncio.gather(*(live.post("/projects", json=body, headers=headers) for _ in range(6)))
    # Every copy is the same request: each gets the one project (a 409 Conflict here would not
    # be retried by the SDK, so the caller would see an error for a create that happened).
    assert [r.status_code for r in replies] == [200] * 6, [(r.status_code, r.text) for r in replies]
    assert len({r.json()["id"] for r in replies}) == 1
    after = await live.snapshot()
    assert len(after["/projects"]) == len(before["/projects"]) + 1


async def test_concurrent_deletes_of_one_deployment_share_one_work_request(live: Api) -> None:
    project = await live.create_project("delete-race")
    model = await live.create_model(project["id"])
    created, _ = await live.create_deployment(Catalog(project, model).deployment_body(name="delete-race"))
    await live.wait_settled(created["id"])
    replies = await asyncio.gather(*(live.delete(f"/modelDeployments/{created['id']}") for _ in range(4)))
    assert [r.status_code for r in replies] == [202] * 4, [(r.status_code, r.text) for r in replies]
    assert len({r.headers["opc-work-request-id"] for r in replies}) == 1


async def test_work_requests_of_concurrent_creates_finish_and_stay_finished(live: Api) -> None:
    """Progress lines written while an operation settles must not turn a SUCCEEDED work request
    back to IN_PROGRESS, nor land after the final line: the SDK, CLI and ADS waiters would poll
    until their own deadline (ADS: 20 minutes) and ADS shows logs[-1] as the outcome.

    The race needs load to show, so several creates run at once, twice over."""
    project = await live.create_project("settle")
    model = await live.create_model(project["id"])
    body = Catalog(project, model).deployment_body
    problems = []
    for round_ in range(2):
        replies = await asyncio.gather(*(live.post("/modelDeployments", json=body(name=f"s{round_}-{i}")) for i in range(6)))
        assert [r.status_code for r in replies] == [200] * 6
        for reply in replies:
            await live.wait_settled(reply.json()["id"])
        await asyncio.sleep(0.5)  # let any late progress line land
        for reply in replies:
            wr_id = reply.headers["opc-work-request-id"]
            wr = (await live.get(f"/workRequests/{wr_id}")).json()
            logs = (await live.get(f"/workRequests/{wr_id}/logs")).json()
            if (wr["status"], wr["percentComplete"]) != ("SUCCEEDED", 100.0):
                problems.append(f"{wr_id}: {wr['status']} {wr['percentComplete']}% (timeFinished {wr['timeFinished']})")
            if not logs[-1]["message"].startswith("Active"):
                problems.append(f"{wr_id}: last log line {logs[-1]['message']!r}")
        for reply in replies:
            await live.delete(f"/modelDeployments/{reply.json()['id']}")
    assert not problems, "\n".join(problems)

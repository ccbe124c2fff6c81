"""List operations and the headers every client reads (oci-api.md §0, §9.1, §9.17).

- Lists are bare JSON arrays; `opc-next-page` is present exactly when there is a next page
  (an empty header would make `list_call_get_all_results` loop forever).
- Sorting and filters do what their names say; deployment summaries carry no lifecycleDetails.
- Every reply carries `opc-request-id`, echoing the caller's.
- Work request logs come oldest first and `percentComplete` is always a number (ADS loops on
  `percentComplete < 100` and shows `logs[-1].message`).
"""

from __future__ import annotations

import itertools
import re
from typing import Any

import pytest

pytest.register_assert_rewrite("tests.api.inprocess")  # before the import below: its asserts explain themselves

from tests.api.inprocess import (  # noqa: E402
    UNKNOWN_IDS,
    Api,
    Catalog,
)
from tests.support.compartments import SPARE_COMPARTMENTS  # noqa: E402
from tests.support.oci_config import COMPARTMENT  # noqa: E402

pytest_plugins = ["tests.api.inprocess"]  # its fixtures: app, api, catalog, active, standing
pytestmark = pytest.mark.asyncio(loop_scope="module")

LISTS = ["/projects", "/models", "/modelDeployments", "/workRequests", "/modelDeploymentShapes"]


_spare = itertools.count()


def other_compartment() -> str:
    """A compartment of its own per test, so counts and orders are exact in a shared app."""
    return SPARE_COMPARTMENTS[next(_spare)]


async def projects_in(api: Api, compartment: str, names: list[str]) -> list[dict[str, Any]]:
    created = []
    for name in names:
        response = await api.post("/projects", json={"compartmentId": compartment, "displayName": name})
        assert response.status_code == 200, response.text
        created.append(response.json())
    return created


# --- pagination -------------------------------------------------------------------------------------


@pytest.mark.parametrize("count, limit, pages", [(5, 2, [2, 2, 1]), (4, 2, [2, 2]), (1, 2, [1]), (0, 2, [0])])
async def test_pagination_walks_every_item_once_and_the_last_page_has_no_next_page_header(
    api: Api, count: int, limit: int, pages: list[int]
) -> None:
    compartment = other_compartment()
    created = await projects_in(api, compartment, [f"p{i}" for i in range(count)])
    seen: list[str] = []
    sizes: list[int] = []
    params: dict[str, Any] = {"compartmentId": compartment, "limit": limit}
    for _ in range(10):
        response = await api.get("/projects", params=params)
        assert response.status_code == 200, response.text
        page = response.json()
        assert isinstance(page, list)
        sizes.append(len(page))
        seen += [p["id"] for p in page]
        if "opc-next-page" not in response.headers:
            break
        token = response.headers["opc-next-page"]
        assert token, "opc-next-page is present but empty: SDK pagination would loop forever"
        params["page"] = token
    assert sizes == pages
    assert len(seen) == len(set(seen)) == count
    assert set(seen) == {p["id"] for p in created}


async def test_shapes_paginate_like_every_other_list(api: Api) -> None:
    everything = (await api.get("/modelDeploymentShapes", params={"compartmentId": COMPARTMENT})).json()
    walked = await api.list_all("/modelDeploymentShapes", limit=5)
    assert [s["name"] for s in walked] == [s["name"] for s in everything]
    assert len(everything) > 5


# --- shapes of list replies -------------------------------------------------------------------------


@pytest.mark.parametrize("path", LISTS)
async def test_lists_are_bare_json_arrays(api: Api, standing: dict[str, Any], path: str) -> None:
    response = await api.get(path, params={"compartmentId": COMPARTMENT})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert isinstance(body, list) and body, body
    assert all(isinstance(item, dict) for item in body)


async def test_work_request_logs_and_errors_are_bare_json_arrays(api: Api, standing: dict[str, Any]) -> None:
    wr = (await api.list_all("/workRequests", resourceId=standing["id"]))[0]
    for kind in ("logs", "errors"):
        response = await api.get(f"/workRequests/{wr['id']}/{kind}")
        assert response.status_code == 200, response.text
        assert isinstance(response.json(), list)


async def test_an_empty_list_is_an_empty_array_without_next_page(api: Api) -> None:
    for path in ("/projects", "/models", "/modelDeployments", "/workRequests"):
        response = await api.get(path, params={"compartmentId": other_compartment()})
        assert response.status_code == 200, response.text
        assert response.json() == []
        assert "opc-next-page" not in response.headers


# --- sorting and filters ----------------------------------------------------------------------------


@pytest.mark.parametrize("order", ["ASC", "DESC"])
async def test_sort_by_display_name(api: Api, order: str) -> None:
    compartment = other_compartment()
    names = ["delta", "alpha", "echo", "charlie", "bravo"]
    await projects_in(api, compartment, names)
    response = await api.get("/projects", params={"compartmentId": compartment, "sortBy": "displayName", "sortOrder": order})
    assert response.status_code == 200, response.text
    assert [p["displayName"] for p in response.json()] == sorted(names, reverse=order == "DESC")


@pytest.mark.parametrize("order", ["ASC", "DESC"])
async def test_sort_by_time_created(api: Api, order: str) -> None:
    compartment = other_compartment()
    created = await projects_in(api, compartment, ["first", "second", "third"])
    response = await api.get("/projects", params={"compartmentId": compartment, "sortBy": "timeCreated", "sortOrder": order})
    ids = [p["id"] for p in created]
    assert [p["id"] for p in response.json()] == (ids if order == "ASC" else ids[::-1])


async def test_sort_order_holds_across_pages(api: Api) -> None:
    compartment = other_compartment()
    names = [f"n{i:02d}" for i in range(7)]
    await projects_in(api, compartment, names[::-1])
    walked: list[str] = []
    params: dict[str, Any] = {"compartmentId": compartment, "sortBy": "displayName", "sortOrder": "ASC", "limit": 3}
    while True:
        response = await api.get("/projects", params=params)
        walked += [p["displayName"] for p in response.json()]
        if "opc-next-page" not in response.headers:
            break
        params["page"] = response.headers["opc-next-page"]
    assert walked == names


async def test_lifecycle_state_filter_on_projects_and_models(api: Api) -> None:
    compartment = other_compartment()
    keep, gone = await projects_in(api, compartment, ["keep", "gone"])
    assert (await api.delete(f"/projects/{gone['id']}")).status_code == 202
    for state, expected in (("ACTIVE", [keep["id"]]), ("DELETED", [gone["id"]])):
        response = await api.get("/projects", params={"compartmentId": compartment, "lifecycleState": state})
        assert [p["id"] for p in response.json()] == expected, state

    models = []
    for name in ("on", "off"):
        response = await api.post("/models", json={"compartmentId": compartment, "projectId": keep["id"], "displayName": name})
        models.append(response.json())
    assert (await api.post(f"/models/{models[1]['id']}/actions/deactivate")).status_code == 200
    for state, expected in (("ACTIVE", models[0]["id"]), ("INACTIVE", models[1]["id"])):
        response = await api.get("/models", params={"compartmentId": compartment, "lifecycleState": state})
        assert [m["id"] for m in response.json()] == [expected], state


async def test_lifecycle_state_filter_on_deployments(api: Api, catalog: Catalog) -> None:
    up, _ = await api.create_deployment(catalog.deployment_body(name="up"))
    down, _ = await api.create_deployment(catalog.deployment_body(name="down"))
    await api.wait_settled(up["id"])
    await api.wait_settled(down["id"])
    response = await api.post(f"/modelDeployments/{down['id']}/actions/deactivate")
    assert response.status_code == 202
    await api.wait_state(down["id"], "INACTIVE")
    inactive = await api.list_all("/modelDeployments", lifecycleState="INACTIVE", projectId=catalog.project_id)
    active_ones = await api.list_all("/modelDeployments", lifecycleState="ACTIVE", projectId=catalog.project_id)
    assert down["id"] in {d["id"] for d in inactive} and up["id"] not in {d["id"] for d in inactive}
    assert up["id"] in {d["id"] for d in active_ones} and down["id"] not in {d["id"] for d in active_ones}
    assert all(d["lifecycleState"] == "INACTIVE" for d in inactive)
    assert all(d["lifecycleState"] == "ACTIVE" for d in active_ones)


async def test_display_name_and_id_filters(api: Api) -> None:
    compartment = other_compartment()
    a, _b = await projects_in(api, compartment, ["wanted", "other"])
    by_name = await api.get("/projects", params={"compartmentId": compartment, "displayName": "wanted"})
    by_id = await api.get("/projects", params={"compartmentId": compartment, "id": a["id"]})
    assert [p["id"] for p in by_name.json()] == [p["id"] for p in by_id.json()] == [a["id"]]


async def test_deployment_summaries_have_no_lifecycle_details(api: Api, standing: dict[str, Any]) -> None:
    full, _ = await api.deployment(standing["id"])
    assert full["lifecycleDetails"]
    summaries = await api.list_all("/modelDeployments", id=standing["id"])
    assert len(summaries) == 1
    summary = summaries[0]
    assert "lifecycleDetails" not in summary
    # and everything a summary does carry agrees with the full document, discriminators included
    for key, value in summary.items():
        if key != "modelDeploymentConfigurationDetails":
            assert full[key] == value, key
    assert summary["modelDeploymentConfigurationDetails"]["deploymentType"] == "SINGLE_MODEL"


# --- opc-request-id --------------------------------------------------------------------------------------


def calls(standing: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    deployment = f"/modelDeployments/{standing['id']}"
    return [
        ("GET", "/projects", {"params": {"compartmentId": COMPARTMENT}}),
        ("GET", deployment, {}),
        ("GET", "/modelDeploymentShapes", {"params": {"compartmentId": COMPARTMENT}}),
        ("POST", "/projects", {"json": {"compartmentId": COMPARTMENT, "displayName": "rid"}}),
        ("PUT", deployment, {"json": {"environmentConfigurationDetails": {"serverPort": 1}}}),  # 400
        ("POST", f"{deployment}/actions/activate", {}),  # 409
        ("GET", f"/models/{UNKNOWN_IDS['models']}", {}),  # 404
        ("GET", "/projects", {}),  # 400 from query validation
        ("GET", "/no/such/route", {}),  # 404 NotFound
        ("DELETE", "/modelDeploymentShapes", {}),  # 405
        ("POST", "/projects", {"content": b"{" + b" " * (1024 * 1024 + 10) + b"}"}),  # 413
        ("HEAD", f"/models/{UNKNOWN_IDS['models']}/artifact/content", {}),
    ]


async def test_every_reply_echoes_the_callers_opc_request_id(api: Api, standing: dict[str, Any]) -> None:
    missing = []
    for i, (method, path, kw) in enumerate(calls(standing)):
        request_id = f"CLIENT{i:02d}A1B2C3D4E5F6A7B8C9D0E1F2"
        response = await api.request(method, path, headers={"opc-request-id": request_id}, **kw)
        if response.headers.get("opc-request-id") != request_id:
            missing.append(f"{method} {path} -> {response.status_code}: {response.headers.get('opc-request-id')!r}")
    assert not missing, "\n".join(missing)


async def test_every_reply_has_an_opc_request_id_when_the_caller_sent_none(api: Api, standing: dict[str, Any]) -> None:
    seen = set()
    for method, path, kw in calls(standing):
        response = await api.request(method, path, **kw)
        request_id = response.headers.get("opc-request-id")
        assert request_id and re.fullmatch(r"[0-9A-F]{32}", request_id), (method, path, request_id)
        seen.add(request_id)
    assert len(seen) == len(calls(standing)), "request ids are unique"


async def test_an_error_body_request_id_matches_the_header(api: Api) -> None:
    """The SDK's ServiceError.request_id comes from the header; a 500 message names it too."""
    response = await api.get(f"/projects/{UNKNOWN_IDS['projects']}", headers={"opc-request-id": "ABC123"})
    assert response.status_code == 404
    assert response.headers["opc-request-id"] == "ABC123"


# --- work requests ----------------------------------------------------------------------------------------


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


async def test_work_request_logs_come_oldest_first_and_percent_complete_is_a_number(api: Api, catalog: Catalog) -> None:
    created, wr_id = await api.create_deployment(catalog.deployment_body(name="logs"), wait=False)
    percents: list[float] = []
    while True:
        wr = (await api.get(f"/workRequests/{wr_id}")).json()
        assert is_number(wr["percentComplete"]), wr
        percents.append(wr["percentComplete"])
        if wr["status"] in ("SUCCEEDED", "FAILED"):
            break
        assert wr["timeFinished"] is None, wr
    assert wr["status"] == "SUCCEEDED" and wr["percentComplete"] == 100
    assert percents == sorted(percents), f"percentComplete went backwards: {percents}"

    response = await api.get(f"/workRequests/{wr_id}/logs")
    logs = response.json()
    assert [set(entry) >= {"message", "timestamp"} for entry in logs] == [True] * len(logs)
    stamps = [entry["timestamp"] for entry in logs]
    assert stamps == sorted(stamps), f"logs are not oldest first: {[(e['timestamp'], e['message']) for e in logs]}"
    assert logs[0]["message"].startswith("Create accepted")
    assert logs[-1]["message"].startswith("Active"), logs[-1]  # what ADS shows as the outcome
    assert (await api.get(f"/workRequests/{wr_id}/errors")).json() == []

    listed = [w for w in await api.list_all("/workRequests", resourceId=created["id"])]
    assert [w["id"] for w in listed] == [wr_id]
    assert all(is_number(w["percentComplete"]) for w in listed)


async def test_work_request_logs_paginate_oldest_first(api: Api, standing: dict[str, Any]) -> None:
    wr = (await api.list_all("/workRequests", resourceId=standing["id"]))[-1]
    everything = (await api.get(f"/workRequests/{wr['id']}/logs")).json()
    walked: list[dict[str, Any]] = []
    params: dict[str, Any] = {"limit": 1}
    while True:
        response = await api.get(f"/workRequests/{wr['id']}/logs", params=params)
        walked += response.json()
        if "opc-next-page" not in response.headers:
            break
        params["page"] = response.headers["opc-next-page"]
    assert walked == everything and len(walked) >= 2


async def test_work_request_list_filters_and_sorts(api: Api, active: dict[str, Any]) -> None:
    response = await api.post(f"/modelDeployments/{active['id']}/actions/deactivate")
    await api.wait(response.headers["opc-work-request-id"])
    mine = await api.list_all("/workRequests", resourceId=active["id"], sortBy="timeAccepted", sortOrder="ASC")
    assert [w["operationType"] for w in mine] == ["MODEL_DEPLOYMENT_CREATE", "MODEL_DEPLOYMENT_DEACTIVATE"]
    succeeded = await api.list_all("/workRequests", resourceId=active["id"], status="SUCCEEDED")
    assert len(succeeded) == 2
    bad = await api.get("/workRequests", params={"compartmentId": COMPARTMENT, "status": "DONE"})
    assert bad.status_code == 400 and "status" in bad.json()["message"]


async def test_list_model_deployment_shapes_has_the_wire_fields(api: Api) -> None:
    shapes = await api.list_all("/modelDeploymentShapes")
    for shape in shapes:
        assert set(shape) >= {"name", "coreCount", "memoryInGBs", "shapeSeries"}, shape
        assert is_number(shape["coreCount"]) and is_number(shape["memoryInGBs"])

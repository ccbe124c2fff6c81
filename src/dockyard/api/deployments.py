"""/20190101/modelDeployments and /20190101/modelDeploymentShapes"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from dockyard.api.openapi import json_body
from dockyard.api.common import empty_reply, json_reply, list_query, list_reply
from dockyard.api.requests import caller, if_match, read_json, retry_token, services
from dockyard.domain.shapes import SHAPES
from dockyard.schemas.common import ChangeCompartmentDetails
from dockyard.schemas.deployments import CreateModelDeploymentDetails, UpdateModelDeploymentDetails
from dockyard.service.access import Verb
from dockyard.service.deployments import deployment_view
from dockyard.service.paging import check_limit, decode_page, next_page
from dockyard.service.resources import ListResult

router = APIRouter()


@router.post("/modelDeployments", openapi_extra=json_body(CreateModelDeploymentDetails))
async def create_model_deployment(request: Request) -> Response:
    details, _ = await read_json(request, CreateModelDeploymentDetails)
    token = retry_token(request, "CreateModelDeployment", details.wire())
    record, wr_id = await run_in_threadpool(services(request).deployments.create, details, caller(request), token)
    return json_reply(
        deployment_view(record),
        etag=record.etag,
        opc_work_request_id=wr_id,
        location=f"{request.url.path}/{record.id}",
    )


@router.get("/modelDeployments/{deployment_id}")
async def get_model_deployment(request: Request, deployment_id: str) -> Response:
    record = await run_in_threadpool(services(request).deployments.get, deployment_id, caller(request))
    return json_reply(deployment_view(record), etag=record.etag)


@router.get("/modelDeployments")
async def list_model_deployments(request: Request, query: dict[str, Any] = Depends(list_query)) -> Response:
    return list_reply(await run_in_threadpool(services(request).deployments.list, query, caller(request)))


@router.put("/modelDeployments/{deployment_id}", openapi_extra=json_body(UpdateModelDeploymentDetails))
async def update_model_deployment(request: Request, deployment_id: str) -> Response:
    details, _ = await read_json(request, UpdateModelDeploymentDetails)
    wr_id = await run_in_threadpool(services(request).deployments.update, deployment_id, details, if_match(request), caller(request))
    return empty_reply(202, opc_work_request_id=wr_id)


@router.post("/modelDeployments/{deployment_id}/actions/activate")
async def activate_model_deployment(request: Request, deployment_id: str) -> Response:
    wr_id = await run_in_threadpool(services(request).deployments.activate, deployment_id, if_match(request), caller(request))
    return empty_reply(202, opc_work_request_id=wr_id)


@router.post("/modelDeployments/{deployment_id}/actions/deactivate")
async def deactivate_model_deployment(request: Request, deployment_id: str) -> Response:
    wr_id = await run_in_threadpool(services(request).deployments.deactivate, deployment_id, if_match(request), caller(request))
    return empty_reply(202, opc_work_request_id=wr_id)


@router.delete("/modelDeployments/{deployment_id}")
async def delete_model_deployment(request: Request, deployment_id: str) -> Response:
    wr_id = await run_in_threadpool(services(request).deployments.delete, deployment_id, if_match(request), caller(request))
    return empty_reply(202, opc_work_request_id=wr_id)


@router.post("/modelDeployments/{deployment_id}/actions/changeCompartment", openapi_extra=json_body(ChangeCompartmentDetails))
async def change_model_deployment_compartment(request: Request, deployment_id: str) -> Response:
    details, _ = await read_json(request, ChangeCompartmentDetails)
    await run_in_threadpool(services(request).deployments.change_compartment, deployment_id, details, if_match(request), caller(request))
    return empty_reply(200)


@router.get("/modelDeploymentShapes")
async def list_model_deployment_shapes(
    request: Request,
    compartment_id: str = Query(alias="compartmentId"),
    limit: int | None = Query(None),
    page: str | None = Query(None),
) -> Response:
    # Like every list: a compartment the caller may not inspect reads as an unknown one.
    deployments = services(request).deployments
    await run_in_threadpool(deployments.require_in_compartment, caller(request), Verb.INSPECT, compartment_id)
    size, offset = check_limit(limit), decode_page(page)
    items = [shape.wire() for shape in SHAPES[offset : offset + size]]
    return list_reply(ListResult(items, next_page(offset, len(items), offset + size < len(SHAPES))))


@router.get("/modelDeployments/{deployment_id}/instances")
async def list_model_deployment_instances(request: Request, deployment_id: str) -> Response:
    """dockyard's own view of what runs for a deployment (not part of the OCI API)."""
    svc = services(request)
    record = await run_in_threadpool(svc.deployments.get, deployment_id, caller(request))
    rows = await run_in_threadpool(svc.store.list_instances, deployment_id)
    current = record.internal.get("specHash")
    items = [
        {
            "instanceId": r.instance_id,
            "state": r.state,
            "health": r.health,
            "isCurrentVersion": r.spec_hash == current,
            "specHash": r.spec_hash,
            "runtime": r.runtime,
            "restarts": r.restarts,
            "timeStarted": r.time_started,
            "timeLastProbe": r.time_last_probe,
            "lastProbe": r.last_probe,
            "endpoint": f"http://{r.host}:{r.server_port}" if r.server_port else None,
            "detail": r.detail,
        }
        for r in rows
    ]
    return list_reply(ListResult(items, None))

"""/20190101/projects"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from starlette.concurrency import run_in_threadpool

from dockyard.api.openapi import json_body
from dockyard.api.common import empty_reply, json_reply, list_query, list_reply
from dockyard.api.requests import caller, if_match, read_json, retry_token, services
from dockyard.schemas.catalog import CreateProjectDetails, UpdateProjectDetails
from dockyard.schemas.common import ChangeCompartmentDetails

router = APIRouter()


@router.post("/projects", openapi_extra=json_body(CreateProjectDetails))
async def create_project(request: Request) -> Response:
    details, _ = await read_json(request, CreateProjectDetails)
    token = retry_token(request, "CreateProject", details.wire())
    record = await run_in_threadpool(services(request).projects.create, details, caller(request), token)
    return json_reply(record.body, etag=record.etag)


@router.get("/projects/{project_id}")
async def get_project(request: Request, project_id: str) -> Response:
    record = await run_in_threadpool(services(request).projects.get, project_id, caller(request))
    return json_reply(record.body, etag=record.etag)


@router.get("/projects")
async def list_projects(request: Request, query: dict[str, Any] = Depends(list_query)) -> Response:
    return list_reply(await run_in_threadpool(services(request).projects.list, query, caller(request)))


@router.put("/projects/{project_id}", openapi_extra=json_body(UpdateProjectDetails))
async def update_project(request: Request, project_id: str) -> Response:
    details, _ = await read_json(request, UpdateProjectDetails)
    record = await run_in_threadpool(services(request).projects.update, project_id, details, if_match(request), caller(request))
    return json_reply(record.body, etag=record.etag)


@router.delete("/projects/{project_id}")
async def delete_project(request: Request, project_id: str) -> Response:
    wr_id = await run_in_threadpool(services(request).projects.delete, project_id, if_match(request), caller(request))
    return empty_reply(202, opc_work_request_id=wr_id)


@router.post("/projects/{project_id}/actions/changeCompartment", openapi_extra=json_body(ChangeCompartmentDetails))
async def change_project_compartment(request: Request, project_id: str) -> Response:
    details, _ = await read_json(request, ChangeCompartmentDetails)
    await run_in_threadpool(services(request).projects.change_compartment, project_id, details, if_match(request), caller(request))
    return empty_reply(200)

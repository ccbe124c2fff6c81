"""/20190101/workRequests"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from dockyard.api.common import json_reply, list_reply
from dockyard.api.requests import caller, services
from dockyard.errors import Conflict
from dockyard.service.paging import check_choice, check_limit, check_sort, decode_page, next_page
from dockyard.service.resources import ListResult, check_compartment
from dockyard.store.metadata import WorkRequestRecord

router = APIRouter()

STATUSES = ("ACCEPTED", "IN_PROGRESS", "FAILED", "SUCCEEDED", "CANCELING", "CANCELED")


def work_request_view(wr: WorkRequestRecord) -> dict[str, Any]:
    return {
        "id": wr.id,
        "operationType": wr.operation_type,
        "status": wr.status,
        "compartmentId": wr.compartment_id,
        "percentComplete": wr.percent_complete,
        "resources": wr.body.get("resources", []),
        "timeAccepted": wr.time_accepted,
        "timeStarted": wr.time_started,
        "timeFinished": wr.time_finished,
    }


@router.get("/workRequests/{work_request_id}")
async def get_work_request(request: Request, work_request_id: str) -> Response:
    wr = await run_in_threadpool(services(request).work_requests.get, work_request_id, caller(request))
    finished = wr.status in ("SUCCEEDED", "FAILED", "CANCELED")
    return json_reply(work_request_view(wr), etag=f"{wr.status}-{wr.percent_complete}", retry_after=None if finished else "1")


@router.get("/workRequests")
async def list_work_requests(
    request: Request,
    compartment_id: str = Query(alias="compartmentId"),
    id: str | None = Query(None),
    resource_id: str | None = Query(None, alias="resourceId"),
    operation_type: str | None = Query(None, alias="operationType"),
    status: str | None = Query(None),
    limit: int | None = Query(None),
    page: str | None = Query(None),
    sort_by: str | None = Query(None, alias="sortBy"),
    sort_order: str | None = Query(None, alias="sortOrder"),
) -> Response:
    check_compartment(compartment_id)
    await run_in_threadpool(services(request).work_requests.require_list, caller(request), compartment_id)
    check_choice("status", status, STATUSES)
    size, offset = check_limit(limit), decode_page(page)
    sort_field, descending = check_sort(sort_by, sort_order, ("timeAccepted", "operationType", "status"), "timeAccepted")
    filters = {"compartmentId": compartment_id, "id": id, "resourceId": resource_id, "operationType": operation_type, "status": status}
    result = await run_in_threadpool(services(request).store.list_work_requests, filters, sort_field, descending, offset, size)
    items = [work_request_view(w) for w in result.items]
    return list_reply(ListResult(items, next_page(offset, len(items), result.has_more)))


async def _entries(request: Request, work_request_id: str, kind: str, limit: int | None, page: str | None) -> Response:
    svc = services(request)
    await run_in_threadpool(svc.work_requests.get, work_request_id, caller(request))  # 404 for an unknown id
    size, offset = check_limit(limit), decode_page(page)
    result = await run_in_threadpool(svc.store.list_entries, work_request_id, kind, offset, size)
    if kind == "error":
        items = [{"code": e.code, "message": e.message, "timestamp": e.timestamp} for e in result.items]
    else:
        items = [{"message": e.message, "timestamp": e.timestamp} for e in result.items]
    return list_reply(ListResult(items, next_page(offset, len(items), result.has_more)))


@router.get("/workRequests/{work_request_id}/logs")
async def list_work_request_logs(
    request: Request, work_request_id: str, limit: int | None = Query(None), page: str | None = Query(None)
) -> Response:
    """Oldest first: clients show the last entry as the current state."""
    return await _entries(request, work_request_id, "log", limit, page)


@router.get("/workRequests/{work_request_id}/errors")
async def list_work_request_errors(
    request: Request, work_request_id: str, limit: int | None = Query(None), page: str | None = Query(None)
) -> Response:
    return await _entries(request, work_request_id, "error", limit, page)


@router.delete("/workRequests/{work_request_id}")
async def cancel_work_request(request: Request, work_request_id: str) -> Response:
    wr = await run_in_threadpool(services(request).work_requests.get, work_request_id, caller(request))
    raise Conflict(
        f"work request {wr.id} ({wr.operation_type}, {wr.status}) cannot be canceled; "
        "to stop a deployment's change, delete or deactivate the deployment"
    )

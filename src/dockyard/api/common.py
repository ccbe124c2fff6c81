"""Helpers shared by the route modules: JSON replies with OCI headers, list replies."""

from __future__ import annotations

from typing import Any

from fastapi import Query, Response
from fastapi.responses import JSONResponse

from dockyard.service.resources import ListResult


def json_reply(body: Any, status: int = 200, etag: str | None = None, **headers: str | None) -> JSONResponse:
    extra = {k.replace("_", "-"): v for k, v in headers.items() if v is not None}
    if etag:
        extra["etag"] = etag
    return JSONResponse(body, status_code=status, headers=extra)


def empty_reply(status: int, **headers: str | None) -> Response:
    extra = {k.replace("_", "-"): v for k, v in headers.items() if v is not None}
    return Response(status_code=status, headers=extra)


def list_reply(result: ListResult) -> JSONResponse:
    """A bare JSON array; `opc-next-page` only when there is a next page (never empty)."""
    headers = {"opc-next-page": result.next_page} if result.next_page else {}
    return JSONResponse(result.items, headers=headers)


def list_query(
    compartment_id: str = Query(alias="compartmentId"),
    project_id: str | None = Query(None, alias="projectId"),
    limit: int | None = Query(None),
    page: str | None = Query(None),
    id: str | None = Query(None),
    display_name: str | None = Query(None, alias="displayName"),
    lifecycle_state: str | None = Query(None, alias="lifecycleState"),
    created_by: str | None = Query(None, alias="createdBy"),
    sort_by: str | None = Query(None, alias="sortBy"),
    sort_order: str | None = Query(None, alias="sortOrder"),
) -> dict[str, Any]:
    """The query parameters shared by ListProjects, ListModels and ListModelDeployments, by
    their wire names (each service keeps the filters it knows)."""
    return {
        "compartmentId": compartment_id, "projectId": project_id, "limit": limit, "page": page, "id": id,
        "displayName": display_name, "lifecycleState": lifecycle_state, "createdBy": created_by,
        "sortBy": sort_by, "sortOrder": sort_order,
    }  # fmt: skip

"""Helpers shared by the route modules: JSON replies with OCI headers, list replies."""

from __future__ import annotations

from typing import Any

from fastapi import Response
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

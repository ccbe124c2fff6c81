"""The one table that turns errors into OCI error bodies ``{"code", "message"}``.

Domain errors carry their code and status; framework errors (validation of query parameters,
unknown routes, wrong methods) are mapped here; a caller gone mid-body is logged as such;
anything unexpected is logged with the request id and answered as a 500 that names that id,
never with a stack trace.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from dockyard.errors import DockyardError

log = logging.getLogger("dockyard.api")

HTTP_CODES = {
    400: "InvalidParameter",
    401: "NotAuthenticated",
    404: "NotFound",
    405: "MethodNotAllowed",
    409: "Conflict",
    411: "LengthRequired",
    412: "NoEtagMatch",
    413: "PayloadTooLarge",
    415: "UnsupportedMediaType",
    416: "InvalidRange",
    429: "TooManyRequests",
}


def error_response(status: int, code: str, message: str, request: Request | None = None) -> JSONResponse:
    headers = {}
    request_id = getattr(request.state, "request_id", None) if request is not None else None
    if request_id:
        headers["opc-request-id"] = request_id
    return JSONResponse({"code": code, "message": message}, status_code=status, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(DockyardError)
    async def _domain(request: Request, exc: DockyardError) -> JSONResponse:
        if exc.status >= 500:
            log.error("request %s failed: %s", getattr(request.state, "request_id", "-"), exc.message)
        return error_response(exc.status, exc.code, exc.message, request)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"] if p not in ("query", "header", "path", "body"))
            code = "MissingParameter" if err["type"] == "missing" else "InvalidParameter"
            problems.append((code, f"{where}: {err['msg']}" + (f" (got {err.get('input')!r})" if err["type"] != "missing" else "")))
        code = "MissingParameter" if all(c == "MissingParameter" for c, _ in problems) else "InvalidParameter"
        return error_response(400, code, "; ".join(m for _, m in problems), request)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = HTTP_CODES.get(exc.status_code, "InternalServerError" if exc.status_code >= 500 else "InvalidParameter")
        message = str(exc.detail)
        if exc.status_code == 404 and message == "Not Found":
            message = f"no operation at {request.method} {request.url.path}; check the path (it starts with /20190101)"
        elif exc.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path}"
        return error_response(exc.status_code, code, message, request)

    @app.exception_handler(ClientDisconnect)
    async def _caller_gone(request: Request, exc: ClientDisconnect) -> JSONResponse:
        # The caller left, or the server closed its connection (a body that stopped coming):
        # no one reads this reply, and it is no failure of the server's.
        log.info("request %s (%s %s): the caller's connection closed before its body was whole; the request was dropped",
                 getattr(request.state, "request_id", "-"), request.method, request.url.path)  # fmt: skip
        return error_response(400, "InvalidParameter", "the request's body did not arrive whole", request)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        request_id = getattr(request.state, "request_id", "-")
        log.exception("request %s failed unexpectedly", request_id)
        return error_response(
            500,
            "InternalServerError",
            f"the server failed on this request (opc-request-id {request_id}); the server log has the details",
            request,
        )

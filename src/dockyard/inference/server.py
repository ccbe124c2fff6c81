"""The HTTP face of a loaded score.py: `GET /health` and `POST /predict`, as an ASGI app.

Plain Starlette (not FastAPI) keeps start-up short. Every answer is JSON, errors included
(`{"code", "message"}`): ADS calls `.json()` on whatever the predict URL returns (oci-api.md §9.8).
`/predict` and `/predict/` are different endpoints (C4), so trailing slashes are never redirected.
One line per request goes to stdout, which the service collects as the predict log.
"""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import json
import os
import sys
import time
import traceback
import uuid
from types import TracebackType
from typing import Any

import anyio
import anyio.to_thread
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dockyard.inference.scoring import Scorer

JSON = "application/json"
OCTET_STREAM = "application/octet-stream"
STATUS_CODES = {
    400: "InvalidParameter",
    404: "NotFound",
    405: "MethodNotAllowed",
    413: "PayloadTooLarge",
    500: "InternalServerError",
}


def create_app(scorer: Scorer, *, threads: int = 4, log_requests: bool = True) -> ASGIApp:
    """The inference app over an already loaded `scorer`.

    `threads` bounds how many predict() calls run at once (each in a worker thread, so
    /health answers while a slow prediction runs).
    """
    limiter = anyio.CapacityLimiter(threads)

    async def health(_: Request) -> Response:
        return json_response({"status": "ok"})

    async def predict(request: Request) -> Response:
        body = await request.body()
        if is_json(request.headers.get("content-type")):
            try:
                data: Any = json.loads(body)
            except ValueError as exc:
                return error_response(400, f"the request body is not valid JSON ({exc}); send JSON, or another "
                                      "Content-Type (e.g. application/octet-stream) to pass raw bytes to predict()")
        else:
            data = body
        try:
            if scorer.is_async:
                result = await scorer.call(data)
            else:
                result = await anyio.to_thread.run_sync(scorer.call, data, limiter=limiter)
        except Exception as exc:
            return error_response(500, describe_failure(exc))
        if isinstance(result, (bytes, bytearray, memoryview)):
            return Response(bytes(result), media_type=OCTET_STREAM)
        try:
            return json_response(result)
        except (TypeError, ValueError) as exc:
            return error_response(
                500, f"predict() returned a {type(result).__name__} that cannot be sent as JSON ({exc}); "
                "return JSON-compatible values (dict, list, str, numbers) or bytes"
            )

    async def http_error(_: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) else 500
        detail = exc.detail if isinstance(exc, HTTPException) else str(exc)
        return error_response(status, detail)

    async def unexpected(_: Request, exc: Exception) -> Response:
        return error_response(500, describe_failure(exc))

    app = Starlette(
        routes=[Route("/health", health, methods=["GET"]), Route("/predict", predict, methods=["POST"])],
        exception_handlers={HTTPException: http_error, Exception: unexpected},
    )
    app.router.redirect_slashes = False  # C4: /predict/ is not /predict
    return RequestLog(app) if log_requests else app


def is_json(content_type: str | None) -> bool:
    """application/json and any structured `+json` type, parameters (charset) ignored."""
    if not content_type:
        return False
    media = content_type.split(";", 1)[0].strip().lower()
    return media == JSON or media.endswith("+json")


def json_response(value: Any, status: int = 200) -> Response:
    return Response(json.dumps(value, default=to_jsonable), status_code=status, media_type=JSON)


def error_response(status: int, message: str) -> Response:
    return json_response({"code": STATUS_CODES.get(status, "InternalServerError"), "message": message}, status)


def to_jsonable(value: Any) -> Any:
    """`json.dumps` fallback for what models commonly return. numpy and pandas are recognised by
    their methods (`tolist`, `item`, `to_dict`), so neither is imported here."""
    if hasattr(value, "tolist") and callable(value.tolist):  # numpy arrays and scalars, pandas Series
        return value.tolist()
    if hasattr(value, "item") and callable(value.item) and not isinstance(value, dict):
        return value.item()
    if hasattr(value, "to_dict") and callable(value.to_dict):  # pandas DataFrame
        return value.to_dict()
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, (bytes, bytearray, memoryview)):  # bytes nested in a JSON answer
        return base64.b64encode(bytes(value)).decode("ascii")
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def describe_failure(exc: BaseException) -> str:
    """`ValueError: bad input (score.py, line 12, in predict: raise ValueError(...))`. The
    traceback from score.py's first frame on goes to the instance's output (the predict log)."""
    tb = _user_traceback(exc.__traceback__)
    frames = traceback.extract_tb(tb)
    text = str(exc)
    message = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    traceback.print_exception(type(exc), exc, tb, file=sys.stdout)
    sys.stdout.flush()
    if frames:
        last = frames[-1]
        where = f"{last.filename.rsplit('/', 1)[-1]}, line {last.lineno}, in {last.name}"
        if last.line:
            where += f": {last.line.strip()}"
        message += f" ({where})"
    return f"predict() raised {message}"


_OWN_DIRS = (os.path.dirname(__file__), os.path.dirname(anyio.__file__ or ""))


def _user_traceback(tb: TracebackType | None) -> TracebackType | None:
    """Skip the leading frames of this server and of anyio's worker threads."""
    first = tb
    while tb is not None and tb.tb_frame.f_code.co_filename.startswith(_OWN_DIRS):
        tb = tb.tb_next
    return tb if tb is not None else first


class RequestLog:
    """ASGI middleware: `POST /predict 200 3.2ms` on stdout for every HTTP request."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, record)
        finally:
            elapsed_ms = (time.perf_counter() - started) * 1000
            print(f"{scope['method']} {scope['path']} {status} {elapsed_ms:.1f}ms", flush=True)

"""Reading what a request carries: the JSON body (bounded), the caller, retry and etag headers."""

from __future__ import annotations

from typing import Any, TypeVar

from fastapi import Request

from dockyard.errors import PayloadTooLarge
from dockyard.schemas.base import Wire, parse_body
from dockyard.service.bundle import Services
from dockyard.service.context import ANONYMOUS, Caller, RetryToken

T = TypeVar("T", bound=Wire)

def services(request: Request) -> Services:
    return request.app.state.services  # type: ignore[no-any-return]


async def read_json(request: Request, model: type[T]) -> tuple[T, bytes]:
    """The body parsed into `model`; refuses bodies over the JSON limit before reading them whole."""
    limit = services(request).settings.max_json_body_bytes
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(
            f"the request body is {declared} bytes; JSON bodies are limited to {limit} bytes "
            "(DOCKYARD_MAX_JSON_BODY_BYTES): send a smaller body; large content belongs in the model artifact"
        )
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(
                f"the request body is over {limit} bytes, the limit for JSON bodies (DOCKYARD_MAX_JSON_BODY_BYTES): "
                "send a smaller body; large content belongs in the model artifact"
            )
        chunks.append(chunk)
    raw = b"".join(chunks)
    return parse_body(model, raw), raw


def caller(request: Request) -> Caller:
    """The principal whose signature the auth middleware verified; ANONYMOUS only when the
    server runs with --insecure-no-auth (or without the middleware, in unit tests of routes).
    An unverified Authorization header is never trusted here."""
    principal = getattr(request.state, "caller", None)
    return principal if principal is not None else ANONYMOUS  # type: ignore[no-any-return]


def retry_token(request: Request, operation: str, body: Any) -> RetryToken | None:
    return RetryToken.of(request.headers.get("opc-retry-token"), operation, body)


def if_match(request: Request) -> str | None:
    value = request.headers.get("if-match")
    return value.strip('"') if value else None

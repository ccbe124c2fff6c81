"""Replies the gateway writes itself: always JSON `{"code", "message"}` (Oracle ADS parses every
reply on the predict URL as JSON, errors included), always with the request id."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from dockyard.errors import DockyardError, GatewayTimeout

Send = Callable[[dict[str, Any]], Awaitable[None]]


class BadGateway(DockyardError):
    """The container accepted the connection but failed before a complete reply header."""

    code, status = "BadGateway", 502


# What the gateway says when an instance fails a request, on either of its paths (proxy.py, direct.py).


def no_reply_in_time(timeout_s: float, instance_id: str) -> GatewayTimeout:
    return GatewayTimeout(
        f"the model took too long to answer: no reply within {timeout_s:g} s "
        f"(instance {instance_id}); make the request lighter or the model faster"
    )


def failed_before_reply(instance_id: str, exc: Exception) -> BadGateway:
    return BadGateway(
        f"the model server on instance {instance_id} failed before replying "
        f"({type(exc).__name__}: {exc or 'connection closed'}); check the container's log"
    )


def head_without_body(instance_id: str, exc: Exception, timeout_s: float) -> DockyardError:
    """A reply whose head promised a body (a content-length) that never started: nothing was
    written to the caller yet, so it gets this error instead of a head with no body."""
    if isinstance(exc, (TimeoutError, httpx.TimeoutException)):
        return GatewayTimeout(
            f"the model server on instance {instance_id} sent its reply's head but none of its body "
            f"within {timeout_s:g} s; make the model faster, or check the container's log"
        )
    return BadGateway(
        f"the model server on instance {instance_id} sent its reply's head and failed before its body "
        f"({type(exc).__name__}: {exc or 'connection closed'}); check the container's log"
    )


def broke_off(bytes_out: int, exc: Exception) -> str:
    """The access entry's error for a reply cut after its head went out."""
    return f"the container's reply broke off after {bytes_out} bytes ({type(exc).__name__})"


async def send_json(
    send: Send, status: int, document: Any, request_id: str, headers: list[tuple[bytes, bytes]] | None = None
) -> int:
    """Write a whole JSON reply; returns the body size."""
    body = json.dumps(document, separators=(",", ":")).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"opc-request-id", request_id.encode()),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
    return len(body)


def error_document(error: DockyardError) -> bytes:
    """The body of an error reply."""
    return json.dumps({"code": error.code, "message": error.message}, separators=(",", ":")).encode()


async def send_error(send: Send, error: DockyardError, request_id: str, headers: list[tuple[bytes, bytes]] | None = None) -> int:
    return await send_json(send, error.status, {"code": error.code, "message": error.message}, request_id, headers)

"""ASGI middleware of the control plane: the opc-request-id on every request and reply."""

from __future__ import annotations

import re
import uuid
from typing import Any

_SAFE_ID = re.compile(r"^[A-Za-z0-9._/:-]{1,98}$")


class RequestIdMiddleware:
    """Propagates the caller's `opc-request-id` (or makes one) into `request.state` and the reply."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = ""
        for name, value in scope["headers"]:
            if name == b"opc-request-id":
                incoming = value.decode("latin-1")
                break
        request_id = incoming if _SAFE_ID.match(incoming) else uuid.uuid4().hex.upper()
        scope.setdefault("state", {})["request_id"] = request_id
        encoded = request_id.encode()

        async def send_with_id(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"opc-request-id"]
                headers.append((b"opc-request-id", encoded))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_id)

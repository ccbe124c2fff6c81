"""`HomeAdministratorsOnly`: an ASGI wrapper for installation-wide views (the gateway's /metrics).

Such views name every tenancy's deployments, so only the administrators of the home tenancy
(the first one, made with the administrator on first start) may read them; callers without a
tenancy (``--insecure-no-auth``, loopback only) pass too. It sits inside the signature
middleware, which has put the verified caller at ``scope["state"]["caller"]``. Anyone else gets
404 NotAuthorizedOrNotFound, as for anything they may not see.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

from dockyard.errors import NotAuthorizedOrNotFound


class HomeAdministratorsOnly:
    def __init__(self, app: Any, home_tenancy: Callable[[], str | None]) -> None:
        self.app = app
        self.home_tenancy = home_tenancy
        self._home: str | None = None  # the home tenancy never changes once it exists

    async def _home_id(self) -> str | None:
        if self._home is None:
            self._home = await asyncio.to_thread(self.home_tenancy)
        return self._home

    async def __call__(self, scope: dict[str, Any], receive: Callable[[], Awaitable[Any]], send: Callable[[Any], Awaitable[None]]) -> None:
        if scope["type"] == "http":
            caller = scope.get("state", {}).get("caller")
            tenancy = getattr(caller, "tenancy_id", "")
            allowed = tenancy is None or (getattr(caller, "is_admin", False) and tenancy == await self._home_id())
            if not allowed:
                error = NotAuthorizedOrNotFound(
                    f"{scope.get('path')} is for administrators of this installation's home tenancy; "
                    "sign with their key (the OCI config file in <data dir>/oci/config)"
                )
                body = json.dumps({"code": error.code, "message": error.message}).encode()
                headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
                await send({"type": "http.response.start", "status": error.status, "headers": headers})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)

"""A small HTTP client for the CLI: talks to a dockyard server's /20190101 API, signing each
request with the OCI config file the server wrote (``$DOCKYARD_CONFIG_FILE``, else
``<data dir>/oci/config``); without one, requests go unsigned (a server run with
--insecure-no-auth)."""

from __future__ import annotations

import os
from typing import Any

import httpx

from dockyard.auth.client import signing_from_config
from dockyard.errors import DockyardError

DEFAULT_ENDPOINT = "http://127.0.0.1:8080"


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message = status, code, message


class ApiClient:
    def __init__(self, endpoint: str | None = None, timeout_s: float = 30.0, config_file: str | None = None) -> None:
        try:
            signing = signing_from_config(config_file or None)
        except DockyardError as exc:
            raise ApiError(0, exc.code, exc.message) from None
        self.endpoint = (
            endpoint or os.environ.get("DOCKYARD_ENDPOINT") or (signing.endpoint if signing else None) or DEFAULT_ENDPOINT
        ).rstrip("/")
        self.http = httpx.Client(base_url=self.endpoint, timeout=timeout_s, auth=signing.auth if signing else None)

    def call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self.http.request(method, f"/20190101{path}", **kwargs)
        except httpx.ConnectError as exc:
            raise ApiError(0, "Unreachable", f"no dockyard server answers at {self.endpoint}; start one with `dockyard serve`") from exc
        return self.checked(response)

    def checked(self, response: httpx.Response) -> httpx.Response:
        if response.status_code >= 400:
            try:
                body = response.json()
                raise ApiError(response.status_code, body.get("code", "?"), body.get("message", response.text))
            except ValueError:
                raise ApiError(response.status_code, "?", response.text) from None
        return response

    def get(self, path: str, **params: Any) -> Any:
        return self.call("GET", path, params={k: v for k, v in params.items() if v is not None}).json()

    def list_all(self, path: str, **params: Any) -> list[Any]:
        items: list[Any] = []
        page = None
        while True:
            response = self.call("GET", path, params={k: v for k, v in (params | {"page": page}).items() if v is not None})
            items += response.json()
            page = response.headers.get("opc-next-page")
            if not page:
                return items

"""Triton mode (T1, `CONTAINER_TYPE=TRITON`): `/predict` mapped onto Triton's KServe v2 paths.

The model comes from the `model_name` / `model_version` request headers (the samples' spelling)
or `model-name` / `model-version` (Oracle ADS's). Without a name the repository index decides:
exactly one model there is used, otherwise the caller is told to name one.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from urllib.parse import quote

import httpx

from dockyard.errors import MissingParameter, ServiceUnavailable

NAME_HEADERS = (b"model_name", b"model-name")
VERSION_HEADERS = (b"model_version", b"model-version")
INDEX_PATH = "/v2/repository/index"


def requested_model(headers: dict[bytes, bytes]) -> tuple[str | None, str | None]:
    name = next((headers[h] for h in NAME_HEADERS if h in headers), None)
    version = next((headers[h] for h in VERSION_HEADERS if h in headers), None)
    name_text = name.decode("latin-1").strip() if name else None
    version_text = version.decode("latin-1").strip() if version else None
    if version_text and not name_text:
        raise MissingParameter(
            f"model_version {version_text!r} was sent without model_name; send both headers (model_name and "
            "model_version, or model-name and model-version), or the name alone for the newest version", rule="T1"
        )
    return name_text or None, version_text or None


def model_path(name: str, version: str | None, streaming: bool = False) -> str:
    """`/v2/models/{name}[/versions/{version}]/infer` (or `/generate_stream` for streams)."""
    path = f"/v2/models/{quote(name, safe='')}"
    if version:
        path += f"/versions/{quote(version, safe='')}"
    return path + ("/generate_stream" if streaming else "/infer")


class TritonModels:
    """The model list of each Triton deployment, asked of an instance and kept `ttl_s`."""

    def __init__(
        self, client: httpx.AsyncClient, ttl_s: float, timeout_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.client = client
        self.ttl_s = ttl_s
        self.timeout_s = timeout_s
        self.clock = clock
        self._known: dict[str, tuple[float, tuple[str, ...]]] = {}

    async def only_model(self, deployment_id: str, base_url: str, request_id: str) -> str:
        """The name of the single model the repository serves; MissingParameter otherwise."""
        names = await self._names(deployment_id, base_url, request_id)
        if len(names) == 1:
            return names[0]
        if not names:
            raise MissingParameter(
                "this Triton deployment has no ready model to send the request to (its repository index lists none "
                "as READY); check the server's log, or name the model with the model_name (or model-name) header",
                rule="T1",
            )
        listed = ", ".join(names[:20]) + (f" and {len(names) - 20} more" if len(names) > 20 else "")
        raise MissingParameter(
            f"this Triton deployment serves {len(names)} models ({listed}), so the request must name one: send the "
            "model_name header (or model-name), and model_version (or model-version) for a version other than "
            "the newest",
            rule="T1",
        )

    async def _names(self, deployment_id: str, base_url: str, request_id: str) -> tuple[str, ...]:
        cached = self._known.get(deployment_id)
        if cached is not None and self.clock() < cached[0]:
            return cached[1]
        try:
            reply = await self.client.post(
                base_url + INDEX_PATH,
                json={"ready": True},
                # Asked at most once per ttl_s: no keep-alive connection left idle, which tritonserver
                # would wait for when it is stopped (it drains open connections on SIGTERM).
                headers={"opc-request-id": request_id, "connection": "close"},
                timeout=self.timeout_s,
            )
            entries = reply.json() if reply.status_code == 200 else None
        except httpx.HTTPError as exc:
            raise ServiceUnavailable(
                f"could not list the models of this Triton deployment ({type(exc).__name__}: {exc}); "
                "retry, or name the model with the model_name header"
            ) from exc
        except json.JSONDecodeError as exc:
            raise MissingParameter(
                f"this Triton server's model list ({INDEX_PATH}) is not JSON; name the model with the model_name "
                "(or model-name) header", rule="T1"
            ) from exc
        if not isinstance(entries, list):
            raise MissingParameter(
                f"this Triton server did not list its models (HTTP {reply.status_code} from {INDEX_PATH}); "
                "name the model with the model_name (or model-name) header", rule="T1"
            )
        ready = (str(e["name"]) for e in entries if isinstance(e, dict) and e.get("name") and e.get("state", "READY") == "READY")
        found = tuple(dict.fromkeys(ready))  # each name once (a model may list several versions), in order
        self._known[deployment_id] = (self.clock() + self.ttl_s, found)
        return found

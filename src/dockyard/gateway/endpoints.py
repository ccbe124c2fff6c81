"""Which container path a data-plane request goes to (pure: no I/O).

- `POST /predict` goes to `MODEL_DEPLOY_PREDICT_ENDPOINT` (kept exactly, trailing slash
  included) or `/predict`; a `route` request header picks the container path per request.
- `/predict/` with nothing after it goes to `/predict/` (C4: never folded into `/predict`).
- `/predict/<suffix>` goes to `/<suffix>` when a custom endpoint declares it, from
  `MODEL_DEPLOY_CUSTOM_ENDPOINTS` (`[{"endpointURI": "/a2a/", "httpMethods": ["POST"]}]`), from
  `customHttpEndpoints` (`[{"endpointUriSuffix": ..., "httpMethods": [...]}]`) or from
  `predictApiSpecification: openai`; `{}` in a declared suffix matches one path segment.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from dockyard.domain.deployments import DEFAULT_PREDICT_PATH
from dockyard.domain.validation import MAX_CUSTOM_ENDPOINTS
from dockyard.errors import InvalidParameter, MethodNotAllowed, NotFound

log = logging.getLogger("dockyard.gateway")

PREDICT_ENDPOINT_VAR = "MODEL_DEPLOY_PREDICT_ENDPOINT"
CUSTOM_ENDPOINTS_VAR = "MODEL_DEPLOY_CUSTOM_ENDPOINTS"

# What `predictApiSpecification: openai` exposes under /predict (oci-api.md §2 field notes).
OPENAI_ENDPOINTS = (
    ("/v1/completions", ("POST",)),
    ("/v1/chat/completions", ("POST",)),
    ("/v1/models", ("GET",)),
)

_WILDCARD = re.compile(r"\{[^{}/]*\}")
_MAX_ROUTE_HEADER = 2048


@dataclass(frozen=True)
class CustomEndpoint:
    """One declared container path reachable at `<deployment>/predict<uri>`."""

    uri: str
    methods: frozenset[str]
    pattern: re.Pattern[str]

    @classmethod
    def build(cls, uri: str, methods: Iterable[str]) -> CustomEndpoint:
        parts = _WILDCARD.split(uri)
        regex = "[^/]+".join(re.escape(p) for p in parts)
        return cls(uri=uri, methods=frozenset(m.upper() for m in methods), pattern=re.compile(regex))

    def matches(self, path: str) -> bool:
        return self.pattern.fullmatch(path) is not None


def predict_path(variables: Mapping[str, str]) -> str:
    """The container path `/predict` is forwarded to, exactly as configured."""
    return variables.get(PREDICT_ENDPOINT_VAR) or DEFAULT_PREDICT_PATH


def custom_endpoints(
    deployment_id: str, variables: Mapping[str, str], environment: Mapping[str, Any]
) -> tuple[CustomEndpoint, ...]:
    """Every custom endpoint a deployment declares, the first `MAX_CUSTOM_ENDPOINTS` of them.

    A malformed declaration is skipped with a warning: the gateway never fails a deployment's
    other endpoints because of one bad entry.
    """
    declared: list[tuple[Any, Any]] = []
    raw = variables.get(CUSTOM_ENDPOINTS_VAR)
    if raw:
        try:
            entries = json.loads(raw)
        except ValueError:
            log.warning("%s: %s is not JSON; its custom endpoints are ignored", deployment_id, CUSTOM_ENDPOINTS_VAR)
            entries = []
        for entry in entries if isinstance(entries, list) else []:
            if isinstance(entry, dict):
                declared.append((entry.get("endpointURI"), entry.get("httpMethods") or ["POST"]))
    for entry in environment.get("customHttpEndpoints") or []:
        if isinstance(entry, dict):
            declared.append((entry.get("endpointUriSuffix"), entry.get("httpMethods") or ["POST"]))
    if str(environment.get("predictApiSpecification") or "").lower() == "openai":
        declared.extend(OPENAI_ENDPOINTS)

    endpoints: dict[str, CustomEndpoint] = {}
    for uri, methods in declared:
        if not isinstance(uri, str) or not uri.startswith("/") or not isinstance(methods, (list, tuple)):
            log.warning("%s: custom endpoint %r (methods %r) is malformed and ignored", deployment_id, uri, methods)
            continue
        if uri in endpoints:  # declared twice: the methods add up
            methods = [*endpoints[uri].methods, *methods]
        endpoints[uri] = CustomEndpoint.build(uri, [str(m) for m in methods])
    found = tuple(endpoints.values())
    if len(found) > MAX_CUSTOM_ENDPOINTS:
        log.warning("%s: %d custom endpoints, only the first %d are served", deployment_id, len(found), MAX_CUSTOM_ENDPOINTS)
    return found[:MAX_CUSTOM_ENDPOINTS]


def custom_target(endpoints: tuple[CustomEndpoint, ...], suffix: str, method: str, deployment_id: str) -> str:
    """The container path for `/predict<suffix>` (suffix starts with '/', not only '/').

    Raises NotFound when no endpoint declares the suffix and MethodNotAllowed when the method
    is not among the declared ones.
    """
    path, _, _ = suffix.partition("?")
    for endpoint in endpoints:
        if endpoint.matches(path):
            if method not in endpoint.methods:
                raise MethodNotAllowed(
                    f"{method} is not allowed on /predict{path} of deployment {deployment_id}; "
                    f"its custom endpoint {endpoint.uri} accepts {', '.join(sorted(endpoint.methods))}"
                )
            return suffix
    declared = ", ".join(e.uri for e in endpoints) or "none"
    raise NotFound(
        f"deployment {deployment_id} has no endpoint /predict{path}; declared custom endpoints: {declared} "
        f"(set {CUSTOM_ENDPOINTS_VAR} or customHttpEndpoints to add one)"
    )


def allowed_methods(endpoints: tuple[CustomEndpoint, ...], suffix: str) -> str:
    """The Allow header for a 405 on `/predict<suffix>`."""
    path = suffix.partition("?")[0]
    for endpoint in endpoints:
        if endpoint.matches(path):
            return ", ".join(sorted(endpoint.methods))
    return "POST"


def checked_route_header(value: str) -> str:
    """The container path a `route` request header asks for; InvalidParameter if unusable."""
    if (
        not value.startswith("/")
        or value.startswith("//")
        or len(value) > _MAX_ROUTE_HEADER
        or any(ch <= " " or ch == "\x7f" or ch == "#" for ch in value)
    ):
        raise InvalidParameter(
            f"the route header {value[:100]!r} is not a container path; send a path such as /v1/chat/completions"
        )
    return value

"""A deployment's routes: whether it serves, where its ready instances listen, what it exposes.

`route_from` turns the stored deployment document and the reconciler's instance rows into a
`Route` (pure). `RouteTable` reads them from the metadata store in a worker thread, reuses a
read for `ttl_s`, and lets concurrent requests for the same deployment share one read, so a
burst of traffic costs one store query per deployment per `ttl_s`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from dockyard.domain.deployments import environment
from dockyard.errors import ServiceUnavailable
from dockyard.gateway.endpoints import CustomEndpoint, custom_endpoints, predict_path
from dockyard.store.metadata import InstanceRecord, Record

log = logging.getLogger("dockyard.gateway")

SERVING_STATES: Final = frozenset({"ACTIVE", "NEEDS_ATTENTION", "UPDATING"})
STREAMING_VAR = "MODEL_DEPLOY_ENABLE_STREAMING"
CONTAINER_TYPE_VAR = "CONTAINER_TYPE"


class RouteSource(Protocol):
    """The two store reads the gateway needs (`SqlMetadataStore` has both)."""

    def get(self, resource_id: str, kind: str | None = None) -> Record | None: ...

    def list_instances(self, deployment_id: str | None = None) -> list[InstanceRecord]: ...


@dataclass(frozen=True)
class Backend:
    """One ready instance as the gateway reaches it."""

    instance_id: str
    host: str
    port: int
    last_probe: str | None = None  # time of the reconciler's last probe (ISO-8601 UTC)

    # Read on every request: built once, as plain attributes (a cached_property is looked up
    # the slow way on every read, ~1k instructions each).
    key: tuple[str, str, int] = field(init=False, repr=False, compare=False)
    authority: bytes = field(init=False, repr=False, compare=False)  # host:port as the Host header and URLs write it

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", (self.instance_id, self.host, self.port))
        host = f"[{self.host}]" if ":" in self.host else self.host  # IPv6 in brackets
        object.__setattr__(self, "authority", f"{host}:{self.port}".encode())

    @property
    def base_url(self) -> str:
        return f"http://{self.authority.decode()}"


@dataclass(frozen=True)
class Route:
    deployment_id: str
    state: str
    backends: tuple[Backend, ...] = ()
    predict_path: str = "/predict"
    streaming: bool = False
    triton: bool = False
    endpoints: tuple[CustomEndpoint, ...] = ()
    variables: Mapping[str, str] = field(default_factory=dict)
    compartment_id: str = ""  # for the authorization hook (Gateway.authorize)

    @property
    def serving_state(self) -> bool:
        return self.state in SERVING_STATES


def ready(instance: InstanceRecord) -> bool:
    return instance.state == "RUNNING" and instance.health == "HEALTHY" and bool(instance.server_port) and bool(instance.host)


def route_from(record: Record, instances: list[InstanceRecord]) -> Route:
    """The route of a stored deployment given the reconciler's latest instance rows."""
    config = record.body.get("modelDeploymentConfigurationDetails") or {}
    env: dict[str, Any] = environment(config)
    variables = {str(k): str(v) for k, v in (env.get("environmentVariables") or {}).items()}
    backends = tuple(Backend(i.instance_id, i.host, int(i.server_port or 0), i.time_last_probe) for i in instances if ready(i))
    return Route(
        deployment_id=record.id,
        state=record.state,
        backends=backends,
        predict_path=predict_path(variables),
        streaming=variables.get(STREAMING_VAR, "").strip().lower() == "true",
        triton=variables.get(CONTAINER_TYPE_VAR, "").strip().upper() == "TRITON",
        endpoints=custom_endpoints(record.id, variables, env),
        variables=variables,
        compartment_id=str(record.body.get("compartmentId") or ""),
    )


class RouteTable:
    """Routes by deployment id, read from the store at most once per `ttl_s` each.

    `get` returns None for an unknown (or DELETED) deployment. When the store cannot be read,
    the last route known is kept serving (an instance that still answers is better than an
    error); with none known, ServiceUnavailable is raised.

    A route that expired less than `ttl_s / 2` ago is still answered while one read refreshes
    it: a busy deployment's requests never all wait on the store (they did, twice a second,
    and every connection stalled behind the read). Later than that, callers wait for the read
    as on a first request, so a deployment seen rarely is never served from an old route, and
    `forget()` still makes the next request wait for the store.
    """

    def __init__(
        self,
        source: RouteSource,
        ttl_s: float,
        on_refresh: Callable[[Route], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.source = source
        self.ttl_s = ttl_s
        self.on_refresh = on_refresh
        self.clock = clock
        self._cache: dict[str, tuple[float, Route | None]] = {}
        self._pending: dict[str, asyncio.Task[Route | None]] = {}

    def fresh(self, deployment_id: str) -> Route | None:
        """The deployment's route when `get` would answer it without waiting, else None (then
        `get` it). Like `get`, a route in its grace period is answered while one read refreshes
        it: a busy deployment's commonest requests keep the direct path during the read (which
        takes a busy worker some milliseconds, twice a second)."""
        cached = self._cache.get(deployment_id)
        if cached is None:
            return None
        now = self.clock()
        if now < cached[0]:
            return cached[1]
        if now < cached[0] + self.ttl_s / 2:
            self._read_once(deployment_id, cached)
            return cached[1]
        return None

    async def get(self, deployment_id: str) -> Route | None:
        cached = self._cache.get(deployment_id)
        if cached is not None:
            now = self.clock()
            if now < cached[0]:
                return cached[1]
            if now < cached[0] + self.ttl_s / 2:
                self._read_once(deployment_id, cached)  # answered now, refreshed meanwhile
                return cached[1]
        return await asyncio.shield(self._read_once(deployment_id, cached))

    def _read_once(self, deployment_id: str, cached: tuple[float, Route | None] | None) -> asyncio.Task[Route | None]:
        """The read of `deployment_id` in progress, or a new one. It runs in its own task: a
        caller that goes away does not cancel it for the others waiting on it."""
        task = self._pending.get(deployment_id)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._refresh(deployment_id, cached))
            self._pending[deployment_id] = task
            task.add_done_callback(lambda done: self._settled(deployment_id, done))
        return task

    def _settled(self, deployment_id: str, task: asyncio.Task[Route | None]) -> None:
        self._pending.pop(deployment_id, None)
        if not task.cancelled():
            task.exception()  # retrieved here so an error nobody awaited is not reported as lost

    def forget(self, deployment_id: str) -> None:
        """Make the next request read the store again (after an instance failed, for one)."""
        self._cache.pop(deployment_id, None)

    async def _refresh(self, deployment_id: str, cached: tuple[float, Route | None] | None) -> Route | None:
        try:
            route = await asyncio.to_thread(self._read, deployment_id)
        except Exception as exc:
            if cached is not None and cached[1] is not None:
                log.warning("%s: cannot read routes from the store (%s); serving the last known ones", deployment_id, exc)
                self._cache[deployment_id] = (self.clock() + self.ttl_s, cached[1])
                return cached[1]
            raise ServiceUnavailable(
                f"the gateway cannot read deployment {deployment_id} from its store right now; retry shortly"
            ) from exc
        if len(self._cache) > 100_000:  # ids probed at random must not grow memory without bound
            self._cache.clear()
        self._cache[deployment_id] = (self.clock() + self.ttl_s, route)
        if route is not None and self.on_refresh is not None:
            self.on_refresh(route)
        return route

    def _read(self, deployment_id: str) -> Route | None:
        record = self.source.get(deployment_id, "modeldeployment")
        if record is None or record.state == "DELETED":
            return None
        instances = self.source.list_instances(deployment_id) if record.state in SERVING_STATES else []
        return route_from(record, instances)

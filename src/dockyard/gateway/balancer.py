"""Which instance takes a request: least outstanding requests, and instances that fail to connect
taken out of rotation.

An instance that refused a connection is *ejected*: it is tried only after every admitted one
(so a request still reaches it when nothing else answers). It is admitted again when the store
shows a probe of it newer than the ejection that found it healthy, when a request to it
succeeds, or after `ejection_s` at the latest (in case the reconciler's probes are late).

The balancer also counts each deployment's requests in flight, for the 429 limit.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from dockyard.gateway.routes import Backend, Route
from dockyard.store.metadata import now_iso


@dataclass(eq=False)
class Upstream:
    """The gateway's live view of one backend."""

    backend: Backend
    outstanding: int = 0
    ejected_at: float | None = None  # monotonic time of the ejection
    ejected_wall: str = ""  # the same moment as ISO-8601 UTC, to compare with probe times

    @property
    def ejected(self) -> bool:
        return self.ejected_at is not None


class Balancer:
    def __init__(
        self,
        ejection_s: float,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], str] = now_iso,
    ) -> None:
        self.ejection_s = ejection_s
        self.clock = clock
        self.wall = wall
        self._upstreams: dict[tuple[str, str, int], Upstream] = {}
        self._keys: dict[str, set[tuple[str, str, int]]] = {}
        self._inflight: dict[str, int] = {}
        self.inflight_counts: Mapping[str, int] = self._inflight  # the same dict, to read (the metrics gauge it)
        self._turn = 0  # advanced by each order among several instances: ties are taken in turn

    # --- routes ------------------------------------------------------------------------------

    def sync(self, route: Route) -> None:
        """Take a freshly read route: new backends join, gone ones are dropped, ejected ones
        with a newer probe are admitted again."""
        keys = {b.key for b in route.backends}
        for gone in self._keys.get(route.deployment_id, set()) - keys:
            self._upstreams.pop(gone, None)
        self._keys[route.deployment_id] = keys
        for backend in route.backends:
            upstream = self._upstreams.get(backend.key)
            if upstream is None:
                self._upstreams[backend.key] = Upstream(backend)
            else:
                upstream.backend = backend
                if upstream.ejected and backend.last_probe and backend.last_probe > upstream.ejected_wall:
                    self.admit(upstream)

    def order(self, route: Route) -> list[Upstream]:
        """The route's backends in the order to try them: admitted ones by fewest outstanding
        requests (ties taken in turn), then ejected ones."""
        backends = route.backends
        if len(backends) == 1:  # the common case, on every request
            return [self._upstream(backends[0])]
        upstreams = [self._upstream(b) for b in backends]
        count = len(upstreams)
        if count <= 1:
            return upstreams
        start = self._turn % count
        self._turn += 1
        ranked = sorted(
            range(count),
            key=lambda i: (upstreams[i].ejected, upstreams[i].outstanding, (i - start) % count),
        )
        return [upstreams[i] for i in ranked]

    def first(self, route: Route) -> Upstream:
        """`order(route)[0]` without the list: the instance a direct reply tries (it tries one)."""
        backends = route.backends
        if len(backends) != 1:
            return self.order(route)[0]
        upstream = self._upstreams.get(backends[0].key)
        if upstream is None or upstream.ejected_at is not None:
            return self._upstream(backends[0])  # made, or admitted again once its ejection ran out
        return upstream

    def has_room(self, route: Route, per_instance: int) -> bool:
        """Fewer requests in flight to the deployment than its capacity (`capacity`)."""
        inflight = self._inflight.get(route.deployment_id, 0)
        if len(route.backends) == 1:  # one instance: its share, ejected or not
            return inflight < per_instance
        return inflight < self.capacity(route, per_instance)

    def unused(self, route: Route) -> None:
        """The order just given for `route` was not used (a direct reply declined the request,
        which then asks again): its turn goes to the next order, so ties still rotate evenly."""
        if len(route.backends) > 1:
            self._turn -= 1

    def capacity(self, route: Route, per_instance: int) -> int:
        if len(route.backends) == 1:  # one instance: its share, ejected or not
            return per_instance
        admitted = sum(1 for b in route.backends if not self._upstream(b).ejected)
        return per_instance * (admitted or len(route.backends))

    # --- health --------------------------------------------------------------------------------

    def eject(self, upstream: Upstream) -> None:
        if not upstream.ejected:
            upstream.ejected_at = self.clock()
            upstream.ejected_wall = self.wall()

    def admit(self, upstream: Upstream) -> None:
        upstream.ejected_at = None
        upstream.ejected_wall = ""

    # --- accounting ----------------------------------------------------------------------------

    def inflight(self, deployment_id: str) -> int:
        return self._inflight.get(deployment_id, 0)

    def enter(self, deployment_id: str) -> None:
        self._inflight[deployment_id] = self._inflight.get(deployment_id, 0) + 1

    def leave(self, deployment_id: str) -> None:
        left = self._inflight.get(deployment_id, 0) - 1
        if left > 0:
            self._inflight[deployment_id] = left
        else:
            self._inflight.pop(deployment_id, None)

    def _upstream(self, backend: Backend) -> Upstream:
        upstream = self._upstreams.get(backend.key)
        if upstream is None:
            upstream = self._upstreams[backend.key] = Upstream(backend)
        elif upstream.ejected_at is not None and self.clock() - upstream.ejected_at >= self.ejection_s:
            self.admit(upstream)
        return upstream

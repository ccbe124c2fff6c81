"""Prometheus metrics of the gateway, in a registry of its own (several gateways can live in one
process, as in tests).

Total latency and upstream latency are separate histograms, and their difference has its own
(`dockyard_gateway_overhead_seconds`), so the gateway's own cost is measured apart from the
model's. Requests for deployments that do not exist are labelled `deployment="-"`: ids taken
from arbitrary URLs must not grow the label set without bound.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, make_asgi_app, multiprocess

from dockyard.gateway.accesslog import AccessEntry

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5)


@dataclass(frozen=True)
class _Children:
    latency: Any
    upstream_latency: Any
    inflight: Any
    bytes_in: Any
    bytes_out: Any


class GatewayMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "dockyard_gateway_requests", "Data-plane requests answered, by deployment and status.",
            ["deployment", "status"], registry=r,
        )  # fmt: skip
        self.latency = Histogram(
            "dockyard_gateway_request_duration_seconds", "Arrival to last byte sent, by deployment.",
            ["deployment"], buckets=_LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.upstream_latency = Histogram(
            "dockyard_gateway_upstream_duration_seconds", "First upstream attempt to the container's last byte.",
            ["deployment"], buckets=_LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.overhead = Histogram(
            "dockyard_gateway_overhead_seconds", "Total minus upstream time of proxied requests: the gateway's own cost.",
            buckets=_OVERHEAD_BUCKETS, registry=r,
        )  # fmt: skip
        self.inflight = Gauge(
            "dockyard_gateway_inflight_requests", "Requests being proxied now, by deployment.", ["deployment"], registry=r,
            multiprocess_mode="livesum",  # several gateway workers: the sum over the live ones
        )  # fmt: skip
        self.upstream_errors = Counter(
            "dockyard_gateway_upstream_errors", "Upstream failures by kind (connect, timeout, aborted).",
            ["deployment", "kind"], registry=r,
        )  # fmt: skip
        self.bytes_in = Counter("dockyard_gateway_request_bytes", "Request body bytes received.", ["deployment"], registry=r)
        self.bytes_out = Counter("dockyard_gateway_response_bytes", "Response body bytes sent.", ["deployment"], registry=r)

        # Labelled children, looked up once: `labels()` costs more than the observation itself.
        self._children: dict[str, _Children] = {}
        self._counts: dict[tuple[str, int], Any] = {}

    def children(self, label: str) -> _Children:
        found = self._children.get(label)
        if found is None:
            found = self._children[label] = _Children(
                self.latency.labels(label), self.upstream_latency.labels(label), self.inflight.labels(label),
                self.bytes_in.labels(label), self.bytes_out.labels(label),
            )  # fmt: skip
        return found

    def observe(self, entry: AccessEntry, known_deployment: bool) -> None:
        label = entry.deployment_id if known_deployment and entry.deployment_id else "-"
        count = self._counts.get((label, entry.status))
        if count is None:
            count = self._counts[(label, entry.status)] = self.requests.labels(label, str(entry.status))
        count.inc()
        children = self.children(label)
        children.latency.observe(entry.latency_ms / 1000)
        if entry.upstream_ms is not None:
            children.upstream_latency.observe(entry.upstream_ms / 1000)
            self.overhead.observe(max(0.0, entry.latency_ms - entry.upstream_ms) / 1000)
        if entry.bytes_in:
            children.bytes_in.inc(entry.bytes_in)
        if entry.bytes_out:
            children.bytes_out.inc(entry.bytes_out)

    def asgi_app(self) -> Any:
        """An ASGI app serving this registry in the Prometheus text format (mount it where you like).

        Under `PROMETHEUS_MULTIPROC_DIR` (`dockyard serve --role gateway --gateway-workers N`)
        every worker writes its values there, and this serves the sum over all of them."""
        directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        if directory:
            combined = CollectorRegistry()
            multiprocess.MultiProcessCollector(combined, path=directory)
            return make_asgi_app(combined)
        return make_asgi_app(self.registry)

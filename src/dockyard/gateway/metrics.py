"""Prometheus metrics of the gateway, in a registry of its own (several gateways can live in one
process, as in tests).

Total latency and upstream latency are separate histograms, and their difference has its own
(`dockyard_gateway_overhead_seconds`), so the gateway's own cost is measured apart from the
model's. Requests for deployments that do not exist are labelled `deployment="-"`: ids taken
from arbitrary URLs must not grow the label set without bound.

The request path only adds a request into its deployment's `_Window` (`observe`): a count by
status, a count in the bucket each latency falls in, sums of latencies and bytes, all plain
numbers. The in-flight gauge reads the balancer's counts. A prometheus_client update takes a
lock per value, eleven of them per request, which cost more than routing the request.
`flush()` adds the windows' counts and sums into the Prometheus objects, one update per label,
status and bucket, however many requests they hold. It runs every `flush_interval_s` on the
event loop and before every exposition from this process, so a scrape of this registry is always
current, and a worker's figures reach the multiprocess files (`--gateway-workers N`) within
`flush_interval_s`.

(The windows once held each request's figures, and the flush sorted and counted them: a
request's metrics cost about 7k instructions, against 3k now, and a flush of a second's
requests stalled the event loop for milliseconds.)
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, make_asgi_app, multiprocess

from dockyard.gateway.accesslog import AccessEntry

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5)
# The same bounds in milliseconds, the unit of an access entry's latencies.
_LATENCY_BOUNDS_MS: Final = tuple(bound * 1000 for bound in _LATENCY_BUCKETS)
_OVERHEAD_BOUNDS_MS: Final = tuple(bound * 1000 for bound in _OVERHEAD_BUCKETS)


def _histogram_internals() -> bool:
    """Whether prometheus_client's histograms keep the bucket and sum values `_into` adds to."""
    probe = Histogram("dockyard_probe", "", buckets=(1.0,), registry=None)
    buckets = getattr(probe, "_buckets", None)
    return buckets is not None and len(buckets) == 2 and getattr(probe, "_sum", None) is not None


_BATCH_INTO_INTERNALS = _histogram_internals()


def _bucket(bounds_ms: tuple[float, ...], value_ms: float) -> int:
    """The index of the bucket `value_ms` counts in, as prometheus_client's `Histogram.observe`
    places it: the first whose bound is >= it; len(bounds_ms) for +Inf."""
    index = 0
    for bound in bounds_ms:
        if value_ms <= bound:
            return index
        index += 1
    return index


class _Counts:
    """A histogram's observations since the last flush: a count per bucket (+Inf last) and the sum."""

    def __init__(self, bounds_ms: tuple[float, ...]) -> None:
        self.bounds_ms = bounds_ms
        self.buckets = [0] * (len(bounds_ms) + 1)
        self.sum_ms = 0.0
        self.count = 0
        # Every value, only where the histograms' internals are not as `_into` expects.
        self.values: list[float] | None = None if _BATCH_INTO_INTERNALS else []

    def add(self, value_ms: float) -> None:
        self.buckets[_bucket(self.bounds_ms, value_ms)] += 1
        self.sum_ms += value_ms
        self.count += 1
        if self.values is not None:
            self.values.append(value_ms)


class _Window:
    """A deployment label's requests since the last flush, added up as they come."""

    def __init__(self) -> None:
        self.statuses: dict[int, int] = {}
        self.latency = _Counts(_LATENCY_BOUNDS_MS)
        self.upstream = _Counts(_LATENCY_BOUNDS_MS)
        self.bytes_in = 0
        self.bytes_out = 0


@dataclass(frozen=True)
class _Children:
    latency: Any
    upstream_latency: Any
    inflight: Any
    bytes_in: Any
    bytes_out: Any


class GatewayMetrics:
    def __init__(
        self, registry: CollectorRegistry | None = None, flush_interval_s: float = 1.0, inflight: Mapping[str, int] | None = None
    ) -> None:
        """`inflight`: requests being proxied now by deployment, as the gateway's balancer counts
        them (it needs the count anyway, for the 429 limit); read at each flush."""
        self.flush_interval_s = flush_interval_s
        # The requests since the flush, by deployment label, and the overhead of those an
        # instance answered (one histogram for all deployments); moved into the Prometheus
        # objects by flush().
        self._windows: dict[str, _Window] = {}
        self._overhead = _Counts(_OVERHEAD_BOUNDS_MS)
        self._inflight: Mapping[str, int] = inflight if inflight is not None else {}
        self._inflight_shown: dict[str, int] = {}
        self._timer: asyncio.TimerHandle | None = None
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

    # --- the request path ---------------------------------------------------------------------

    def observe(self, entry: AccessEntry, known_deployment: bool) -> None:
        label = entry.deployment_id if known_deployment and entry.deployment_id else "-"
        window = self._windows.get(label)
        if window is None:
            window = self._windows[label] = _Window()
            if self._timer is None:
                self._schedule()
        statuses = window.statuses
        status = entry.status
        statuses[status] = statuses.get(status, 0) + 1
        latency_ms = entry.latency_ms
        window.latency.add(latency_ms)
        upstream_ms = entry.upstream_ms
        if upstream_ms is not None:  # an instance answered
            window.upstream.add(upstream_ms)
            overhead_ms = latency_ms - upstream_ms
            self._overhead.add(overhead_ms if overhead_ms > 0.0 else 0.0)
        window.bytes_in += entry.bytes_in
        window.bytes_out += entry.bytes_out

    # --- into Prometheus ------------------------------------------------------------------------

    def _schedule(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no event loop (a test calling observe directly): flushed at exposition
        self._timer = loop.call_later(self.flush_interval_s, self._timed_flush)

    def _timed_flush(self) -> None:
        self._timer = None
        self.flush()
        if any(self._inflight.values()):
            self._schedule()  # keep the gauge moving while requests are in flight

    def flush(self) -> None:
        """Add what was recorded, and the in-flight counts, into the Prometheus objects: one
        update per label, status and bucket."""
        windows, self._windows = self._windows, {}
        overhead, self._overhead = self._overhead, _Counts(_OVERHEAD_BOUNDS_MS)
        for label, window in windows.items():
            for status, n in window.statuses.items():
                count = self._counts.get((label, status))
                if count is None:
                    count = self._counts[(label, status)] = self.requests.labels(label, str(status))
                count.inc(n)
            children = self.children(label)
            _into(children.latency, window.latency)
            _into(children.upstream_latency, window.upstream)
            if window.bytes_in:
                children.bytes_in.inc(window.bytes_in)
            if window.bytes_out:
                children.bytes_out.inc(window.bytes_out)
        _into(self.overhead, overhead)
        shown, counts = self._inflight_shown, self._inflight
        for label in [*shown, *(label for label in counts if label not in shown)]:
            value = counts.get(label, 0)
            if shown.get(label) != value:
                self.children(label).inflight.set(value)
                shown[label] = value

    def asgi_app(self) -> Any:
        """An ASGI app serving this registry in the Prometheus text format (mount it where you like).

        Under `PROMETHEUS_MULTIPROC_DIR` (`dockyard serve --role gateway --gateway-workers N`)
        every worker writes its values there, and this serves the sum over all of them."""
        directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        if directory:
            combined = CollectorRegistry()
            multiprocess.MultiProcessCollector(combined, path=directory)
            exposition = make_asgi_app(combined)
        else:
            exposition = make_asgi_app(self.registry)

        async def app(scope: Any, receive: Any, send: Any) -> None:
            self.flush()  # this process's figures are current; other workers' within flush_interval_s
            await exposition(scope, receive, send)

        return app


def _into(histogram: Any, counts: _Counts) -> None:
    """Add `counts` to a prometheus_client histogram (a labelled child or one with no labels)
    with the same bounds, in one update per bucket.

    prometheus_client has no batch API: this adds to the histogram's bucket and sum values, as
    `Histogram.observe` does value by value (its buckets are stored uncumulated). Should a
    release of prometheus_client keep them elsewhere, `_Counts` also keeps every value, and
    they are observed one by one."""
    if not counts.count:
        return
    if counts.values is not None:
        for value_ms in counts.values:
            histogram.observe(value_ms / 1000)
        return
    buckets = histogram._buckets
    for index, n in enumerate(counts.buckets):
        if n:
            buckets[index].inc(n)
    histogram._sum.inc(counts.sum_ms / 1000)

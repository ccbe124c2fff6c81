"""Prometheus metrics of the gateway, in a registry of its own (several gateways can live in one
process, as in tests).

Total latency and upstream latency are separate histograms, and their difference has its own
(`dockyard_gateway_overhead_seconds`), so the gateway's own cost is measured apart from the
model's. Requests for deployments that do not exist are labelled `deployment="-"`: ids taken
from arbitrary URLs must not grow the label set without bound.

The request path only appends a request's figures (a tuple: status, latencies, bytes) to the
list of its deployment (`observe`), and the in-flight gauge reads the balancer's counts: a
prometheus_client update takes a lock per value, eleven of them per request, which cost more
than routing it. `flush()` moves what was recorded into the
Prometheus objects; it runs every `flush_interval_s` on the event loop, as soon as
`FLUSH_AFTER` requests are recorded, and before every exposition from this process, so a scrape
of this registry is always current, and a worker's figures reach the multiprocess files
(`--gateway-workers N`) within `flush_interval_s`.

A flush costs about 0.34 µs a request, and the requests that arrive while it runs wait for it:
a second's requests at once (20,000 of them: 7 ms) came out in the tail of every latency. In
`FLUSH_AFTER` requests, a flush takes about 0.2 ms.
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import os
from collections.abc import Mapping
from dataclasses import dataclass
from itertools import compress, repeat
from operator import is_not, itemgetter, sub
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, make_asgi_app, multiprocess

from dockyard.gateway.accesslog import AccessEntry

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5)
# The same bounds in milliseconds, the unit requests are recorded in (`_into` counts in it).
_BOUNDS_MS: dict[tuple[float, ...], tuple[float, ...]] = {bounds: tuple(bound * 1000 for bound in bounds) for bounds in (_LATENCY_BUCKETS, _OVERHEAD_BUCKETS)}
# The figures of a request `observe` keeps, in its tuple.
_STATUS, _LATENCY, _UPSTREAM, _BYTES_IN, _BYTES_OUT = (itemgetter(n) for n in range(5))
FLUSH_AFTER = 512  # requests recorded (see the module docstring)


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
        # Each request since the flush, by deployment label: (status, latency ms, upstream ms or
        # None, bytes in, bytes out); moved into the Prometheus objects by flush().
        self._windows: dict[str, list[tuple[int, float, float | None, int, int]]] = {}
        self._recorded = 0  # requests in the windows
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
            window = self._windows[label] = []
        # Only what the flush needs, in a tuple (of numbers: the garbage collector stops tracking it).
        window.append((entry.status, entry.latency_ms, entry.upstream_ms, entry.bytes_in, entry.bytes_out))
        self._recorded += 1
        if self._recorded >= FLUSH_AFTER:
            self.flush()
        elif self._timer is None:
            self._schedule()

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
        """Move the recorded requests and the in-flight counts into the Prometheus objects:
        summed per label first, so a flush costs one update per label and bucket, not per request."""
        windows, self._windows = self._windows, {}
        self._recorded = 0
        overhead: list[float] = []
        for label, requests in windows.items():
            # Counted, listed and summed in C (map, compress): a flush handles up to FLUSH_AFTER requests.
            for status, n in collections.Counter(map(_STATUS, requests)).items():
                count = self._counts.get((label, status))
                if count is None:
                    count = self._counts[(label, status)] = self.requests.labels(label, str(status))
                count.inc(n)
            children = self.children(label)
            latency = list(map(_LATENCY, requests))
            _into(children.latency, _LATENCY_BUCKETS, latency)
            reached = list(compress(requests, map(is_not, map(_UPSTREAM, requests), repeat(None))))  # an instance answered
            upstream = list(map(_UPSTREAM, reached))
            _into(children.upstream_latency, _LATENCY_BUCKETS, upstream)
            overhead += map(max, map(sub, map(_LATENCY, reached), upstream), repeat(0.0))
            bytes_in = sum(map(_BYTES_IN, requests))
            if bytes_in:
                children.bytes_in.inc(bytes_in)
            bytes_out = sum(map(_BYTES_OUT, requests))
            if bytes_out:
                children.bytes_out.inc(bytes_out)
        _into(self.overhead, _OVERHEAD_BUCKETS, overhead)
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


def _histogram_internals() -> bool:
    """Whether prometheus_client's histograms keep the bucket and sum values `_into` adds to."""
    probe = Histogram("dockyard_probe", "", buckets=(1.0,), registry=None)
    buckets = getattr(probe, "_buckets", None)
    return buckets is not None and len(buckets) == 2 and getattr(probe, "_sum", None) is not None


_BATCH_INTO_INTERNALS = _histogram_internals()


def _into(histogram: Any, bounds: tuple[float, ...], values_ms: list[float]) -> None:
    """Observe `values_ms` (milliseconds) in a prometheus_client histogram (a labelled child or one
    with no labels) with `bounds` (seconds), in one update per bucket.

    The request path only appends each value to a list; here they are sorted once and counted
    per bucket, all in C. prometheus_client has no batch API: this adds to the histogram's bucket
    and sum values, as `Histogram.observe` does value by value (a value goes to the first bucket
    whose bound is >= it; buckets are stored uncumulated). Should a release of prometheus_client
    keep them elsewhere, the values are observed one by one."""
    if not values_ms:
        return
    if not _BATCH_INTO_INTERNALS:
        for value in values_ms:
            histogram.observe(value / 1000)
        return
    # Sorted and counted in milliseconds against the bounds in milliseconds: no division per value.
    values = sorted(values_ms)
    buckets = histogram._buckets
    below = 0
    for index, bound in enumerate(_BOUNDS_MS[bounds]):
        upto = bisect.bisect_right(values, bound)
        if upto > below:
            buckets[index].inc(upto - below)
            below = upto
    if len(values) > below:
        buckets[len(bounds)].inc(len(values) - below)  # +Inf
    histogram._sum.inc(sum(values) / 1000)


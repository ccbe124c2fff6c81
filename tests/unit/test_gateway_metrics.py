"""The gateway's metrics add requests up per deployment and move the sums to Prometheus in
batches: the exposition must be exactly what observing each request would have given."""

from __future__ import annotations

import asyncio
import random
import re

import pytest

from prometheus_client import generate_latest

from dockyard.gateway.accesslog import AccessEntry
from dockyard.gateway.balancer import Balancer
from dockyard.gateway.metrics import GatewayMetrics


def _entry(rng: random.Random) -> AccessEntry:
    latency = rng.choice([0.05, 0.1, 1.0, 2.5, 3.0, 60_000.0, 500_000.0, rng.random() * 100])
    upstream = rng.choice([None, latency * 0.9, latency, 0.1])
    return AccessEntry(
        time="2026-01-01T00:00:00.000000Z", request_id="r", deployment_id=rng.choice(["d1", "d2", None]), caller=None,
        method="POST", path="/d/predict", status=rng.choice([200, 404, 502]), bytes_in=rng.randint(0, 9),
        bytes_out=rng.randint(0, 9), latency_ms=latency, upstream_ms=upstream,
    )  # fmt: skip


def _comparable(metrics: GatewayMetrics) -> list[str]:
    # _created stamps differ between registries; float sums may differ in the last digits; series
    # come out in the order their labels were first used, which batching changes.
    lines = generate_latest(metrics.registry).decode().splitlines()
    return sorted(line for line in lines if "_created" not in line and not re.search(r"_sum[{ ]", line))


def _values(metrics: GatewayMetrics, name: str) -> dict[str, float]:
    lines = generate_latest(metrics.registry).decode().splitlines()
    return {line.split(" ")[0]: float(line.split(" ")[1]) for line in lines if line.startswith(name)}


def test_batched_exposition_equals_observing_each_request() -> None:
    rng = random.Random(7)
    batched, reference = GatewayMetrics(), GatewayMetrics()
    for _ in range(3000):
        entry = _entry(rng)
        batched.observe(entry, entry.deployment_id is not None)
        label = entry.deployment_id or "-"
        reference.requests.labels(label, str(entry.status)).inc()
        children = reference.children(label)
        children.latency.observe(entry.latency_ms / 1000)
        if entry.upstream_ms is not None:
            children.upstream_latency.observe(entry.upstream_ms / 1000)
            reference.overhead.observe(max(0.0, entry.latency_ms - entry.upstream_ms) / 1000)
        if entry.bytes_in:
            children.bytes_in.inc(entry.bytes_in)
        if entry.bytes_out:
            children.bytes_out.inc(entry.bytes_out)
    assert _comparable(batched) != _comparable(reference)  # nothing reached Prometheus before the flush
    batched.flush()
    assert _comparable(batched) == _comparable(reference)
    # The sums agree to rounding.
    for name in ("dockyard_gateway_request_duration_seconds_sum", "dockyard_gateway_overhead_seconds_sum"):
        mine, theirs = _values(batched, name), _values(reference, name)
        assert mine.keys() == theirs.keys() and all(abs(mine[k] - theirs[k]) < 1e-6 * max(1.0, theirs[k]) for k in mine)


def test_inflight_gauge_shows_the_balancers_counts_at_flush() -> None:
    balancer = Balancer(ejection_s=10)
    metrics = GatewayMetrics(inflight=balancer.inflight_counts)
    balancer.enter("d1")
    balancer.enter("d1")
    metrics.flush()
    assert 'dockyard_gateway_inflight_requests{deployment="d1"} 2.0' in generate_latest(metrics.registry).decode()
    balancer.leave("d1")
    balancer.leave("d1")
    metrics.flush()
    assert 'dockyard_gateway_inflight_requests{deployment="d1"} 0.0' in generate_latest(metrics.registry).decode()


def test_recorded_requests_reach_prometheus_within_the_flush_interval() -> None:
    # No scrape: the timed flush alone moves them, and a window opened after a flush is timed again.
    async def main() -> None:
        metrics = GatewayMetrics(flush_interval_s=0.05)
        entry = _entry(random.Random(1))._replace(deployment_id="d1", status=200)
        requests = 'dockyard_gateway_requests_total{deployment="d1",status="200"}'
        for expected in (3, 4):
            for _ in range(3 if expected == 3 else 1):
                metrics.observe(entry, True)
            assert _values(metrics, "dockyard_gateway_requests_total").get(requests) == (None if expected == 3 else 3)
            await asyncio.sleep(0.3)
            assert _values(metrics, "dockyard_gateway_requests_total")[requests] == expected

    asyncio.run(main())


def test_without_the_histogram_internals_each_value_is_observed(monkeypatch: pytest.MonkeyPatch) -> None:
    # Should prometheus_client keep its buckets elsewhere, the windows keep every value and the
    # flush observes them one by one: the same exposition.
    import dockyard.gateway.metrics as metrics_module

    rng = random.Random(11)
    entries = [_entry(rng) for _ in range(500)]
    expositions = []
    for internals in (True, False):
        monkeypatch.setattr(metrics_module, "_BATCH_INTO_INTERNALS", internals)
        metrics = GatewayMetrics()
        assert (metrics._overhead.values is None) is internals
        for entry in entries:
            metrics.observe(entry, entry.deployment_id is not None)
        metrics.flush()
        expositions.append(_comparable(metrics))
    assert expositions[0] == expositions[1]

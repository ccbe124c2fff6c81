"""`--gateway-workers` defaults to one worker per two cores, never none: the gateway leaves
cores to the model instances it serves."""

from __future__ import annotations

import os

import pytest

from dockyard.cli import gateway_workers


@pytest.mark.parametrize("cores, workers", [(1, 1), (2, 1), (3, 1), (4, 2), (8, 4), (64, 32)])
def test_one_worker_per_two_usable_cores(monkeypatch: pytest.MonkeyPatch, cores: int, workers: int) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: set(range(cores)))
    assert gateway_workers.default_workers() == workers

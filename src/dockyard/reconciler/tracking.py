"""What the reconciler remembers between passes, in memory only.

Per deployment: the operation in progress and the time each phase took (for the time-to-ready
breakdown), probe results per instance (consecutive failures decide when an instance is
replaced), crash counts and restart back-off. Losing this on a restart of dockyard is harmless:
the worst case is one extra probe round or an earlier restart.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from dockyard.runtimes.base import Instance, ProbeResult
from dockyard.settings import Settings
from dockyard.store.metadata import Record, now_iso

FIRST_PROBE_DELAY_S = 0.05
MAX_PROBE_DELAY_S = 1.0


@dataclass
class InstanceHealth:
    first_seen: float
    consecutive_failures: int = 0
    ever_healthy: bool = False
    failing: bool = False
    last_probe_at: str | None = None
    last_result: str | None = None


@dataclass
class Track:
    work_request_id: str | None = None
    prepared: str | None = None  # spec hash whose image/artifact are ready
    crashes: int = 0
    restarts: int = 0
    restart_streak: int = 0
    not_before: datetime | None = None
    phases: dict[str, float] = field(default_factory=dict)
    op_started: float = field(default_factory=time.monotonic)
    first_start_at: float | None = None
    ready: bool = False
    health: dict[str, InstanceHealth] = field(default_factory=dict)
    probe_delay: float = FIRST_PROBE_DELAY_S
    last_report: float = 0.0
    last_failure: str = ""  # the latest failed probe or lost instance, for the deadline's reason
    settings: Settings | None = None

    def next_probe_delay(self) -> float:
        delay = self.probe_delay
        self.probe_delay = min(delay * 1.6, MAX_PROBE_DELAY_S)
        return delay

    def phase(self, name: str, seconds: float) -> None:
        self.phases[name] = self.phases.get(name, 0.0) + seconds

    def started(self, instance_id: str, seconds: float) -> None:
        self.phase("start", seconds)
        now = time.monotonic()
        if self.first_start_at is None:
            self.first_start_at = now
        self.health[instance_id] = InstanceHealth(first_seen=now)
        self.probe_delay = FIRST_PROBE_DELAY_S

    def health_of(self, instance_id: str) -> InstanceHealth:
        return self.health.setdefault(instance_id, InstanceHealth(first_seen=time.monotonic()))

    def probed(self, instance: Instance, result: ProbeResult) -> InstanceHealth:
        assert self.settings is not None
        entry = self.health_of(instance.instance_id)
        entry.last_probe_at = now_iso()
        entry.last_result = f"{result.status_code}" if result.status_code is not None else (result.detail or "no answer")
        if result.healthy:
            if not self.ready and "health" not in self.phases and self.first_start_at is not None:
                self.phase("health", time.monotonic() - self.first_start_at)
            entry.ever_healthy = True
            entry.consecutive_failures = 0
            entry.failing = False
            return entry
        entry.consecutive_failures += 1
        self.last_failure = result.detail or entry.last_result
        past_start = entry.ever_healthy or time.monotonic() - entry.first_seen > self.settings.health_start_period_s
        entry.failing = past_start and entry.consecutive_failures >= self.settings.health_retries
        return entry

    def instance_lost(self, reason: str) -> None:
        assert self.settings is not None
        self.last_failure = reason
        if not self.ready:
            self.crashes += 1
        self.restarts += 1
        self.restart_streak += 1
        backoff = min(2.0 ** (self.restart_streak - 1), self.settings.restart_backoff_max_s)
        self.not_before = datetime.now(timezone.utc) + timedelta(seconds=backoff)

    def drop_instance(self, instance_id: str) -> None:
        self.health.pop(instance_id, None)

    def settled(self) -> None:
        self.ready = True
        self.restart_streak = 0
        self.not_before = None

    def ready_summary(self) -> str:
        total = time.monotonic() - self.op_started
        parts = ", ".join(f"{name} {seconds:.2f} s" for name, seconds in self.phases.items())
        return f"Ready in {total:.2f} s ({parts})"

    def should_report(self, line: str) -> bool:
        """Progress lines reach the work request at most once a second."""
        now = time.monotonic()
        if now - self.last_report >= 1.0:
            self.last_report = now
            return True
        return False


class Tracker:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._tracks: dict[str, Track] = {}

    def of(self, record: Record) -> Track:
        track = self._tracks.get(record.id)
        work_request_id = record.internal.get("workRequestId")
        if track is None:
            track = Track(work_request_id=work_request_id, settings=self.settings)
            # An operation already settled before we started (e.g. after a restart of dockyard):
            # the deployment is as ready as it was.
            track.ready = record.internal.get("workSettled") == work_request_id
            self._tracks[record.id] = track
        elif track.work_request_id != work_request_id:
            # A new operation: fresh phase timings and crash counts, same probe history.
            track.work_request_id = work_request_id
            track.phases = {}
            track.op_started = time.monotonic()
            track.first_start_at = None
            track.crashes = 0
            track.last_failure = ""
            track.ready = False
            track.probe_delay = FIRST_PROBE_DELAY_S
        return track

    def forget(self, deployment_id: str) -> None:
        self._tracks.pop(deployment_id, None)

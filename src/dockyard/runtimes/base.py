"""The seam between the reconciler and whatever runs instances (Docker, local processes, a fake).

A runtime knows nothing of deployments' lifecycle or of the API: it starts an instance from an
`InstanceSpec`, reports what is running (`Instance`), probes health, and stops instances. The
reconciler decides; the runtime acts. Engine types never leak past a runtime's module.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from collections.abc import Callable
from typing import Protocol

# Receives one human-readable progress line at a time ("pulling layer 3/7, 120 MB of 410 MB").
Progress = Callable[[str], None]


class InstanceState(str, enum.Enum):
    STARTING = "STARTING"  # created, not yet known healthy
    RUNNING = "RUNNING"  # process/container alive
    EXITED = "EXITED"  # stopped by itself (crash or clean exit)
    STOPPED = "STOPPED"  # stopped by us


class Health(str, enum.Enum):
    UNKNOWN = "UNKNOWN"
    HEALTHY = "HEALTHY"
    UNHEALTHY = "UNHEALTHY"


@dataclass(frozen=True)
class InstanceSpec:
    """Everything needed to start one instance of a deployment, engine-neutral.

    `spec_hash` identifies the configuration: instances whose hash differs from the desired
    one belong to an older version and are rolled.
    """

    deployment_id: str
    spec_hash: str
    kind: str  # "OCIR_CONTAINER" or "DEFAULT"
    artifact_dir: Path | None  # unpacked artifact, mounted read-only at /opt/ds/model/deployed_model
    image: str | None = None  # always image@digest for containers
    entrypoint: list[str] | None = None  # None keeps the image's own; [] clears it
    cmd: list[str] | None = None
    environment: dict[str, str] = field(default_factory=dict)
    server_port: int = 8080
    health_port: int = 8080
    health_path: str = "/health"
    ocpus: float | None = None
    memory_gb: float | None = None
    shm_size: str | None = None


@dataclass
class Instance:
    """What a runtime observes of one running (or exited) instance."""

    instance_id: str
    deployment_id: str
    spec_hash: str
    state: InstanceState
    health: Health = Health.UNKNOWN
    host: str = "127.0.0.1"
    server_port: int | None = None  # host-side port the gateway forwards /predict to
    health_port: int | None = None  # host-side port health probes reach
    started_at: datetime | None = None
    exit_code: int | None = None
    restarts: int = 0
    detail: str = ""  # last log lines, OOM flag, ... in words a user can act on


@dataclass(frozen=True)
class ProbeResult:
    healthy: bool
    status_code: int | None = None
    detail: str = ""


class Runtime(Protocol):
    """Runs instances. Every method is async; blocking engines run in threads inside."""

    name: str

    async def prepare(self, spec: InstanceSpec, progress: Progress) -> None:
        """Make everything an instance of `spec` needs available (pull the image, check it
        against the contract: C7 size, C9 curl). Called before the first start of a spec;
        raises `dockyard.errors.DockyardError` whose message names the phase and the rule."""

    async def start(self, spec: InstanceSpec) -> Instance:
        """Create and start one instance; raises `dockyard.errors.DockyardError` on failure."""

    async def stop(self, instance_id: str) -> None:
        """Stop and remove an instance. Stopping an unknown instance is not an error."""

    async def list(self, deployment_id: str | None = None) -> list[Instance]:
        """Every instance this runtime owns (optionally of one deployment), running or not."""

    async def probe(self, instance: Instance, path: str) -> ProbeResult:
        """One readiness probe of `path` on the instance's health port."""

    async def logs(self, instance_id: str, tail: int = 50) -> str:
        """The instance's last output lines, for failure reasons."""

    async def close(self) -> None:
        """Release clients and connections (instances keep running)."""

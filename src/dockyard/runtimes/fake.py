"""A runtime that runs nothing: instances exist in memory and are healthy at once.

For tests of the control plane and the reconciler, and for `dockyard serve --runtime fake` when
exercising the API on a machine without an engine. It can be told to fail starts or probes.
"""

from __future__ import annotations

import itertools
from datetime import datetime, timezone

from dockyard.errors import DockyardError
from dockyard.runtimes.base import Health, Instance, InstanceSpec, InstanceState, ProbeResult, Progress


class FakeRuntime:
    name = "fake"

    def __init__(self, healthy: bool = True) -> None:
        self.instances: dict[str, Instance] = {}
        self.specs: dict[str, InstanceSpec] = {}
        self.healthy = healthy
        self.fail_start: str | None = None  # a message: the next starts raise it
        self.started = 0
        self.stopped = 0
        self._ids = itertools.count(1)

    async def prepare(self, spec: InstanceSpec, progress: Progress) -> None:
        progress(f"fake runtime: nothing to prepare for {spec.image or spec.kind}")

    async def start(self, spec: InstanceSpec) -> Instance:
        if self.fail_start:
            raise DockyardError(self.fail_start)
        instance_id = f"fake-{next(self._ids)}"
        instance = Instance(
            instance_id=instance_id,
            deployment_id=spec.deployment_id,
            spec_hash=spec.spec_hash,
            state=InstanceState.RUNNING,
            health=Health.UNKNOWN,
            server_port=spec.server_port,
            health_port=spec.health_port,
            started_at=datetime.now(timezone.utc),
        )
        self.instances[instance_id] = instance
        self.specs[instance_id] = spec
        self.started += 1
        return instance

    async def stop(self, instance_id: str) -> None:
        if self.instances.pop(instance_id, None) is not None:
            self.stopped += 1
        self.specs.pop(instance_id, None)

    async def list(self, deployment_id: str | None = None) -> list[Instance]:
        return [i for i in self.instances.values() if deployment_id is None or i.deployment_id == deployment_id]

    async def probe(self, instance: Instance, path: str) -> ProbeResult:
        return ProbeResult(healthy=self.healthy, status_code=200 if self.healthy else 500)

    async def logs(self, instance_id: str, tail: int = 50) -> str:
        return ""

    async def close(self) -> None:
        return None

    def crash(self, instance_id: str, exit_code: int = 1) -> None:
        """Test hook: the instance exits as if it had crashed."""
        instance = self.instances[instance_id]
        instance.state = InstanceState.EXITED
        instance.exit_code = exit_code
        instance.detail = f"exit code {exit_code}"

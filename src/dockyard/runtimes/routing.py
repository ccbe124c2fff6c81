"""A runtime that sends each deployment kind where it can run.

With a Docker engine, container deployments (OCIR_CONTAINER) run as containers, while DEFAULT
deployments (score.py served by dockyard's built-in inference server) run as sandboxed local
processes: there is no image to run them in, and the process runtime starts them in about a
second. Instances are told apart by their id (the process runtime's start with "proc-").
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from dockyard.runtimes.base import Instance, InstanceSpec, ProbeResult, Progress, Runtime
from dockyard.runtimes.output import OutputLine

PROCESS_PREFIX = "proc-"


class RoutingRuntime:
    def __init__(self, containers: Runtime, processes: Runtime) -> None:
        self.containers = containers
        self.processes = processes
        self.name = f"{containers.name}+{processes.name}"

    def _for_spec(self, spec: InstanceSpec) -> Runtime:
        return self.processes if spec.kind == "DEFAULT" else self.containers

    def _for_id(self, instance_id: str) -> Runtime:
        return self.processes if instance_id.startswith(PROCESS_PREFIX) else self.containers

    async def prepare(self, spec: InstanceSpec, progress: Progress) -> None:
        await self._for_spec(spec).prepare(spec, progress)

    async def start(self, spec: InstanceSpec) -> Instance:
        return await self._for_spec(spec).start(spec)

    async def stop(self, instance_id: str) -> None:
        await self._for_id(instance_id).stop(instance_id)

    async def list(self, deployment_id: str | None = None) -> list[Instance]:
        containers, processes = await asyncio.gather(self.containers.list(deployment_id), self.processes.list(deployment_id))
        return containers + processes

    async def probe(self, instance: Instance, path: str) -> ProbeResult:
        return await self._for_id(instance.instance_id).probe(instance, path)

    async def logs(self, instance_id: str, tail: int = 50) -> str:
        return await self._for_id(instance_id).logs(instance_id, tail)

    def follow_output(self, instance_id: str, after: str | None = None) -> AsyncIterator[OutputLine]:
        """The owning runtime's output follower (predict logs)."""
        return self._for_id(instance_id).follow_output(instance_id, after)  # type: ignore[attr-defined, no-any-return]

    async def close(self) -> None:
        await asyncio.gather(self.containers.close(), self.processes.close())

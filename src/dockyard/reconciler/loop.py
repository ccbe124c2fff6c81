"""The control loop: converge every deployment's instances towards what its record asks for.

Level-triggered: it wakes on every write (`wake`) and at a fixed interval (`reconcile_interval_s`),
reads desired state from the store and observed state from the runtime, asks `domain.plan`
what to do and does it. Each deployment is handled by one task at a time (a lock per id);
different deployments proceed in parallel. Blocking store calls run in threads.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timezone
from typing import Any

from dockyard.domain import deployments as rules
from dockyard.domain.plan import DesiredView, ObservedInstance, Plan, plan
from dockyard.domain.states import DeploymentState, Desired
from dockyard.errors import DockyardError
from dockyard.runtimes.base import Health, Instance, InstanceSpec, InstanceState, Runtime
from dockyard.service.work_requests import WorkRequests
from dockyard.settings import Settings
from dockyard.store.metadata import Record, SqlMetadataStore

log = logging.getLogger("dockyard.reconciler")

MAX_PASSES = 20  # plan/act rounds per wake-up before yielding to the next tick


def _parse_time(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)


class Reconciler:
    def __init__(
        self,
        store: SqlMetadataStore,
        runtime: Runtime,
        work_requests: WorkRequests,
        settings: Settings,
        artifact_dir: Any = None,
    ) -> None:
        self.store = store
        self.runtime = runtime
        self.work_requests = work_requests
        self.settings = settings
        self.artifact_dir = artifact_dir  # callable(sha256) -> Path of the unpacked artifact, or None
        self._locks: dict[str, asyncio.Lock] = {}
        self._dirty: set[str] = set()
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # --- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.create_task(self._run(), name="dockyard-reconciler")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    def wake(self, deployment_id: str | None = None) -> None:
        """Thread-safe: called by services after a write."""
        if self._loop is None:
            return
        self._loop.call_soon_threadsafe(self._mark, deployment_id)

    def _mark(self, deployment_id: str | None) -> None:
        if deployment_id:
            self._dirty.add(deployment_id)
        self._wakeup.set()

    async def _run(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._wakeup.wait(), timeout=self.settings.reconcile_interval_s)
            except asyncio.TimeoutError:
                pass
            self._wakeup.clear()
            dirty, self._dirty = self._dirty, set()
            try:
                await self.reconcile_all(priority=dirty)
            except Exception:  # the loop must survive anything one pass does
                log.exception("reconcile pass failed")

    # --- one pass -----------------------------------------------------------------------------

    async def reconcile_all(self, priority: set[str] | None = None) -> None:
        records = await asyncio.to_thread(self._live_deployments)
        ids = {r.id for r in records} | (priority or set())
        owned = {i.deployment_id for i in await self.runtime.list()}
        # Instances no live record owns (deleted while dockyard was down, say) are removed too.
        ids |= owned
        await asyncio.gather(*(self.reconcile(deployment_id) for deployment_id in ids))

    def _live_deployments(self) -> list[Record]:
        records: list[Record] = []
        offset = 0
        while True:
            page = self.store.list_all_live("modeldeployment", offset, 500)
            records += page.items
            if not page.has_more:
                return records
            offset += len(page.items)

    async def reconcile(self, deployment_id: str) -> None:
        lock = self._locks.setdefault(deployment_id, asyncio.Lock())
        async with lock:
            for _ in range(MAX_PASSES):
                record = await asyncio.to_thread(self.store.get, deployment_id, "modeldeployment")
                instances = await self.runtime.list(deployment_id)
                if record is None:
                    for instance in instances:
                        await self.runtime.stop(instance.instance_id)
                    return
                observed = [await self._observe(record, i) for i in instances]
                decision = plan(self._desired(record), observed, datetime.now(timezone.utc))
                if decision.empty:
                    await self._record_instance_count(record, decision, observed)
                    return
                await self._act(record, decision)

    def _desired(self, record: Record) -> DesiredView:
        internal = record.internal
        config = record.body["modelDeploymentConfigurationDetails"]
        wr_id = internal.get("workRequestId")
        open_work = bool(wr_id) and not internal.get("workSettled") == wr_id
        return DesiredView(
            deployment_id=record.id,
            state=DeploymentState(record.state),
            desired=Desired(internal.get("desired", "ACTIVE")),
            spec_hash=internal.get("specHash") or rules.spec_hash(config, internal.get("artifactSha256")),
            replicas=rules.replicas(config),
            phase_started_at=_parse_time(internal.get("phaseStartedAt") or record.body["timeCreated"]),
            deadline_s=self.settings.health_deadline_s,
            has_open_work=open_work,
        )

    async def _observe(self, record: Record, instance: Instance) -> ObservedInstance:
        alive = instance.state in (InstanceState.RUNNING, InstanceState.STARTING)
        healthy = False
        if alive:
            path = rules.health_path(record.body["modelDeploymentConfigurationDetails"])
            result = await self.runtime.probe(instance, path)
            healthy = result.healthy
            instance.health = Health.HEALTHY if healthy else Health.UNHEALTHY
        return ObservedInstance(instance.instance_id, instance.spec_hash, alive, healthy, instance.detail)

    async def _act(self, record: Record, decision: Plan) -> None:
        wr_id = record.internal.get("workRequestId")
        for stop in decision.stops:
            log.info("%s: stopping %s (%s)", record.id, stop.instance_id, stop.reason)
            await self.runtime.stop(stop.instance_id)
        if decision.starts:
            spec = self._spec(record)
            for _ in range(decision.starts):
                try:
                    instance = await self.runtime.start(spec)
                    if wr_id:
                        await asyncio.to_thread(
                            self.work_requests.log, wr_id, f"Started instance {instance.instance_id}", 50.0
                        )
                except DockyardError as exc:
                    await self._settle(record, DeploymentState.FAILED, f"start: {exc.message}", failure=True)
                    return
        if decision.settle:
            await self._settle(record, decision.settle.state, decision.settle.details, decision.settle.failure)

    def _spec(self, record: Record) -> InstanceSpec:
        config = record.body["modelDeploymentConfigurationDetails"]
        env = rules.environment(config)
        artifact_sha = record.internal.get("artifactSha256")
        size = config["modelConfigurationDetails"]["instanceConfiguration"].get("modelDeploymentInstanceShapeConfigDetails") or {}
        image = env.get("image")
        if image and env.get("imageDigest"):
            image = f"{image.split('@')[0]}@{env['imageDigest']}"
        return InstanceSpec(
            deployment_id=record.id,
            spec_hash=record.internal.get("specHash") or rules.spec_hash(config, artifact_sha),
            kind=env.get("environmentConfigurationType", "DEFAULT"),
            artifact_dir=self.artifact_dir(artifact_sha) if self.artifact_dir and artifact_sha else None,
            image=image,
            entrypoint=env.get("entrypoint"),
            cmd=env.get("cmd"),
            environment=dict(env.get("environmentVariables") or {}) | {"MODEL_DEPLOYMENT_OCID": record.id},
            server_port=int(env.get("serverPort") or 8080),
            health_port=int(env.get("healthCheckPort") or env.get("serverPort") or 8080),
            health_path=rules.health_path(config),
            ocpus=size.get("ocpus"),
            memory_gb=size.get("memoryInGBs"),
            shm_size=(env.get("environmentVariables") or {}).get("SHM_SIZE"),
        )

    async def _settle(self, record: Record, state: DeploymentState, details: str, failure: bool = False) -> None:
        wr_id = record.internal.get("workRequestId")

        def write() -> None:
            def change(current: Record) -> Record | None:
                if current.internal.get("workRequestId") != wr_id:
                    return None  # a newer operation took over while we were acting; it decides
                current.body["lifecycleState"] = state.value
                current.body["lifecycleDetails"] = details
                if wr_id:
                    current.internal["workSettled"] = wr_id
                return current

            after = self.store.mutate(record.id, "modeldeployment", "model deployment", change)
            if wr_id and after.internal.get("workRequestId") == wr_id:
                self.work_requests.finish(wr_id, not failure, details)

        log.info("%s: %s (%s)", record.id, state.value, details)
        await asyncio.to_thread(write)

    async def _record_instance_count(self, record: Record, decision: Plan, observed: list[ObservedInstance]) -> None:
        count = sum(1 for i in observed if i.alive and i.healthy)
        system = record.body.get("modelDeploymentSystemData") or {}
        if system.get("currentInstanceCount") == count:
            return

        def write() -> None:
            def change(current: Record) -> Record | None:
                data = dict(current.body.get("modelDeploymentSystemData") or {"systemInfraType": "INSTANCE_POOL"})
                if data.get("currentInstanceCount") == count:
                    return None
                data["currentInstanceCount"] = count
                current.body["modelDeploymentSystemData"] = data
                return current

            self.store.mutate(record.id, "modeldeployment", "model deployment", change)

        await asyncio.to_thread(write)

"""The control loop: converge every deployment's instances towards what its record asks for.

Level-triggered: it wakes on every write (`wake`), at a fixed interval (`reconcile_interval_s`),
and soon after starting instances (readiness is probed at a fast, backing-off cadence so a
deployment turns ACTIVE within a fraction of a second of its first 200). Each pass reads desired
state from the store and observed state from the runtime, asks `domain.plan` what to do and does
it. One task at a time per deployment (a lock per id); different deployments in parallel.

Because observed state always comes from the runtime, a restarted dockyard adopts whatever is
running: instances of the desired version are kept, others are replaced, and instances that no
live record owns are removed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

from dockyard.domain import deployments as rules
from dockyard.domain.plan import DesiredView, ObservedInstance, Plan, plan
from dockyard.domain.states import DeploymentState, Desired, Operation
from dockyard.errors import DockyardError, ServiceUnavailable
from dockyard.reconciler.tracking import Tracker
from dockyard.runtimes.base import Health, Instance, InstanceSpec, InstanceState, Runtime
from dockyard.service.work_requests import WorkRequests
from dockyard.settings import Settings
from dockyard.store.metadata import InstanceRecord, Record, SqlMetadataStore, now_iso

log = logging.getLogger("dockyard.reconciler")

MAX_PASSES = 20  # plan/act rounds per wake-up before yielding to the next tick
KIND = "modeldeployment"


def _parse_time(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)


class Reconciler:
    def __init__(
        self,
        store: SqlMetadataStore,
        runtime: Runtime,
        work_requests: WorkRequests,
        settings: Settings,
        artifact_dir: Callable[[str], Path] | None = None,
    ) -> None:
        self.store = store
        self.runtime = runtime
        self.work_requests = work_requests
        self.settings = settings
        self.artifact_dir = artifact_dir  # sha256 -> unpacked directory (unpacks on first use)
        self.tracker = Tracker(settings)
        self._locks: dict[str, asyncio.Lock] = {}
        self._dirty: set[str] = set()
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._loop: asyncio.AbstractEventLoop | None = None
        # Called with (deployment_id, instances) each time the runtime is asked what runs (predict logs).
        self.instance_observers: list[Callable[[str, list[Instance]], None]] = []
        self._away_message = ""  # the last "runtime unavailable" logged, and when
        self._away_logged_at = 0.0

    # --- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.create_task(self._run(), name="dockyard-reconciler")

    async def stop(self) -> None:
        self._stopping = True
        if self._task:
            self._task.cancel()
            # Python 3.11's wait_for can swallow a cancellation that races with its inner
            # future; the flag ends the loop in that case, and the timeout bounds the wait.
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout=30)
            except (asyncio.CancelledError, asyncio.TimeoutError):
                pass

    def wake(self, deployment_id: str | None = None) -> None:
        """Thread-safe: called by services after a write."""
        if self._loop is None:
            return
        self._loop.call_soon_threadsafe(self._mark, deployment_id)

    def wake_later(self, deployment_id: str, delay_s: float) -> None:
        if self._loop is not None:
            self._loop.call_later(delay_s, self._mark, deployment_id)

    def _mark(self, deployment_id: str | None) -> None:
        if deployment_id:
            self._dirty.add(deployment_id)
        self._wakeup.set()

    async def _run(self) -> None:
        last_full = 0.0
        while not self._stopping:
            try:
                async with asyncio.timeout(self.settings.reconcile_interval_s):
                    await self._wakeup.wait()
            except TimeoutError:
                pass
            if self._stopping:
                return
            self._wakeup.clear()
            dirty, self._dirty = self._dirty, set()
            full = time.monotonic() - last_full >= self.settings.reconcile_interval_s or not dirty
            try:
                if full:
                    last_full = time.monotonic()
                    await self.reconcile_all(priority=dirty)
                else:
                    await asyncio.gather(*(self.reconcile(d) for d in dirty))
            except ServiceUnavailable as exc:
                self._runtime_away(exc)
            except Exception:  # the loop must survive anything one pass does
                log.exception("reconcile pass failed")

    # --- passes -------------------------------------------------------------------------------

    async def reconcile_all(self, priority: set[str] | None = None) -> None:
        records = await asyncio.to_thread(self._live_deployments)
        ids = {r.id for r in records} | (priority or set())
        # Instances no live record owns (deleted while dockyard was down, say) are removed too.
        ids |= {i.deployment_id for i in await self.runtime.list()}
        await asyncio.gather(*(self.reconcile(deployment_id) for deployment_id in ids))

    def _live_deployments(self) -> list[Record]:
        records: list[Record] = []
        offset = 0
        while True:
            page = self.store.list_all_live(KIND, offset, 500)
            records += page.items
            if not page.has_more:
                return records
            offset += len(page.items)

    async def reconcile(self, deployment_id: str) -> None:
        lock = self._locks.setdefault(deployment_id, asyncio.Lock())
        async with lock:
            try:
                await self._reconcile_locked(deployment_id)
            except ServiceUnavailable as exc:
                self._runtime_away(exc)
                self.wake_later(deployment_id, self.settings.reconcile_interval_s)
            except Exception:
                log.exception("%s: reconcile failed", deployment_id)
                self.wake_later(deployment_id, self.settings.reconcile_interval_s)

    def _runtime_away(self, exc: ServiceUnavailable) -> None:
        """The engine is unreachable (restarting, say): every pass fails the same way until it is
        back, so say so once a minute in one line, not a traceback per deployment per pass."""
        now = time.monotonic()
        if exc.message != self._away_message or now - self._away_logged_at >= 60:
            log.warning("runtime unavailable, retrying every %g s: %s", self.settings.reconcile_interval_s, exc.message)
            self._away_message, self._away_logged_at = exc.message, now

    async def _reconcile_locked(self, deployment_id: str) -> None:
        for _ in range(MAX_PASSES):
            record = await asyncio.to_thread(self.store.get, deployment_id, KIND)
            instances = await self.runtime.list(deployment_id)
            for observer in self.instance_observers:
                observer(deployment_id, instances)
            if record is None or record.state == DeploymentState.DELETED.value:
                if instances:
                    log.info("%s: removing %d instance(s): %s", deployment_id, len(instances),
                             "no such deployment" if record is None else "the deployment is deleted")
                for instance in instances:
                    await self.runtime.stop(instance.instance_id)
                if instances or record is None:
                    await asyncio.to_thread(self.store.replace_instances, deployment_id, [])
                self.tracker.forget(deployment_id)
                return
            track = self.tracker.of(record)
            observed = [await self._observe(record, i) for i in instances]
            await asyncio.to_thread(self._record_instances, record, instances)
            want = self._desired(record)
            decision = plan(want, observed, datetime.now(timezone.utc))
            if decision.empty:
                await self._record_instance_count(record, observed)
                if decision.waiting_for_health:
                    self.wake_later(deployment_id, track.next_probe_delay())
                elif decision.backing_off and want.not_before is not None:
                    delay = (want.not_before - datetime.now(timezone.utc)).total_seconds()
                    self.wake_later(deployment_id, max(0.05, delay))
                return
            if not await self._act(record, decision):
                return

    # --- observing ----------------------------------------------------------------------------

    def _desired(self, record: Record) -> DesiredView:
        internal = record.internal
        config = record.body["modelDeploymentConfigurationDetails"]
        wr_id = internal.get("workRequestId")
        track = self.tracker.of(record)
        return DesiredView(
            deployment_id=record.id,
            state=DeploymentState(record.state),
            desired=Desired(internal.get("desired", "ACTIVE")),
            spec_hash=self._spec_hash(record),
            replicas=rules.replicas(config),
            phase_started_at=_parse_time(internal.get("phaseStartedAt") or record.body["timeCreated"]),
            deadline_s=self.settings.health_deadline_s,
            has_open_work=bool(wr_id) and internal.get("workSettled") != wr_id,
            not_before=track.not_before,
            crashes=track.crashes,
            max_crashes=self.settings.max_start_crashes,
            last_failure=track.last_failure,
        )

    @staticmethod
    def _spec_hash(record: Record) -> str:
        config = record.body["modelDeploymentConfigurationDetails"]
        return str(record.internal.get("specHash") or rules.spec_hash(config, record.internal.get("artifactSha256")))

    async def _observe(self, record: Record, instance: Instance) -> ObservedInstance:
        track = self.tracker.of(record)
        alive = instance.state in (InstanceState.RUNNING, InstanceState.STARTING)
        if not alive:
            return ObservedInstance(instance.instance_id, instance.spec_hash, False, False, exit_detail=instance.detail)
        path = rules.health_path(record.body["modelDeploymentConfigurationDetails"])
        result = await self.runtime.probe(instance, path)
        health = track.probed(instance, result)
        # H1: an instance that was healthy stays so until it fails `retries` probes in a row;
        # one slow answer must not flip the deployment to NEEDS_ATTENTION and back.
        healthy = result.healthy or (health.ever_healthy and not health.failing)
        # What the gateway routes by (through the instances table): our probes, not the engine's.
        instance.health = Health.HEALTHY if healthy else Health.UNHEALTHY
        return ObservedInstance(
            instance.instance_id,
            instance.spec_hash,
            alive=True,
            healthy=healthy,
            failing=health.failing,
            exit_detail=result.detail if not result.healthy else "",
        )

    def _record_instances(self, record: Record, instances: list[Instance]) -> None:
        track = self.tracker.of(record)
        rows = [
            InstanceRecord(
                instance_id=i.instance_id,
                deployment_id=record.id,
                spec_hash=i.spec_hash,
                runtime=self.runtime.name,
                state=i.state.value,
                health=i.health.value,
                host=i.host,
                server_port=i.server_port,
                health_port=i.health_port,
                restarts=track.restarts,
                time_started=now_iso(i.started_at) if i.started_at else None,
                time_last_probe=track.health_of(i.instance_id).last_probe_at,
                last_probe=track.health_of(i.instance_id).last_result,
                detail=i.detail or None,
            )
            for i in instances
        ]
        self.store.replace_instances(record.id, rows)

    # --- acting -------------------------------------------------------------------------------

    async def _act(self, record: Record, decision: Plan) -> bool:
        """Carry out `decision`; False when the deployment reached a final answer for now."""
        track = self.tracker.of(record)
        for stop in decision.stops:
            log.info("%s: stopping %s (%s)", record.id, stop.instance_id, stop.reason)
            if stop.reason.startswith(("instance exited", "instance failed")):
                track.instance_lost(stop.reason)
                await self._log(record, f"{stop.reason}; replacing it")
            await self.runtime.stop(stop.instance_id)
            track.drop_instance(stop.instance_id)
        if decision.stops:
            # The instances view must not list stopped instances once the work request settles.
            remaining = await self.runtime.list(record.id)
            await asyncio.to_thread(self._record_instances, record, remaining)
        if decision.settle:
            await self._settle(record, decision.settle.state, decision.settle.details, decision.settle.failure)
            return False
        if decision.starts:
            try:
                spec = await self._prepare(record)
                for _ in range(decision.starts):
                    started = time.monotonic()
                    instance = await self.runtime.start(spec)
                    track.started(instance.instance_id, time.monotonic() - started)
                    await self._log(record, f"start: instance {instance.instance_id} started", 60.0)
            except DockyardError as exc:
                if record.state in (DeploymentState.CREATING.value, DeploymentState.UPDATING.value):
                    await self._settle(record, DeploymentState.FAILED, exc.message, failure=True)
                else:
                    # A running deployment could not replace an instance (registry down, image
                    # gone: C12). ACTIVE may not become FAILED: it needs attention, and the start
                    # is retried after a back-off.
                    track.instance_lost(f"start failed: {exc.message}")
                    await self._settle(record, DeploymentState.NEEDS_ATTENTION, exc.message)
                return False
        return True

    async def _prepare(self, record: Record) -> InstanceSpec:
        """Unpack the artifact and let the runtime pull/check the image, once per version."""
        track = self.tracker.of(record)
        spec_hash = self._spec_hash(record)
        artifact_sha = record.internal.get("artifactSha256")
        artifact_dir: Path | None = None
        if self.artifact_dir is not None and artifact_sha:
            started = time.monotonic()
            try:
                artifact_dir = await asyncio.to_thread(self.artifact_dir, artifact_sha)
            except DockyardError as exc:
                raise DockyardError(f"unpack: {exc.message}") from exc
            if track.prepared != spec_hash:
                track.phase("unpack", time.monotonic() - started)
        spec = self._spec(record, spec_hash, artifact_dir)
        if track.prepared == spec_hash:
            return spec
        wr_id = record.internal.get("workRequestId")
        loop = asyncio.get_running_loop()

        def progress(line: str) -> None:  # may be called from the runtime's worker threads
            log.info("%s: %s", record.id, line)
            if wr_id and track.should_report(line):
                loop.call_soon_threadsafe(lambda: asyncio.ensure_future(self._log(record, line)))

        started = time.monotonic()
        await self.runtime.prepare(spec, progress)
        track.phase("pull" if spec.kind == "OCIR_CONTAINER" else "prepare", time.monotonic() - started)
        track.prepared = spec_hash
        return spec

    def _spec(self, record: Record, spec_hash: str, artifact_dir: Path | None) -> InstanceSpec:
        config = record.body["modelDeploymentConfigurationDetails"]
        env = rules.environment(config)
        size = config["modelConfigurationDetails"]["instanceConfiguration"].get("modelDeploymentInstanceShapeConfigDetails") or {}
        image = env.get("image")
        if image and env.get("imageDigest"):
            image = f"{image.split('@')[0]}@{env['imageDigest']}"  # always run the pinned digest (D2)
        variables = dict(env.get("environmentVariables") or {})
        server_port = int(env.get("serverPort") or 8080)
        return InstanceSpec(
            deployment_id=record.id,
            spec_hash=spec_hash,
            kind=env.get("environmentConfigurationType", "DEFAULT"),
            artifact_dir=artifact_dir,
            image=image,
            entrypoint=env.get("entrypoint"),
            cmd=env.get("cmd"),
            environment=variables | {"MODEL_DEPLOYMENT_OCID": record.id},
            server_port=server_port,
            health_port=int(env.get("healthCheckPort") or 8080),
            health_path=rules.health_path(config),
            ocpus=size.get("ocpus"),
            memory_gb=size.get("memoryInGBs"),
            shm_size=variables.get("SHM_SIZE"),
        )

    async def _log(self, record: Record, message: str, percent: float | None = None) -> None:
        wr_id = record.internal.get("workRequestId")
        if wr_id and record.internal.get("workSettled") != wr_id:
            await asyncio.to_thread(self.work_requests.log, wr_id, message, percent)

    async def _settle(self, record: Record, state: DeploymentState, details: str, failure: bool = False) -> None:
        wr_id = record.internal.get("workRequestId")
        track = self.tracker.of(record)
        rolled_back = False
        if state is DeploymentState.ACTIVE and track.phases and wr_id and record.internal.get("workSettled") != wr_id:
            # Only the operation that brought it up gets a time-to-ready breakdown; a recovery
            # from NEEDS_ATTENTION would otherwise report the create's phases again.
            details = f"{details}. {track.ready_summary()}"

        def write() -> Record:
            nonlocal rolled_back

            def change(current: Record) -> Record | None:
                nonlocal rolled_back
                if current.internal.get("workRequestId") != wr_id:
                    return None  # a newer operation took over while we were acting; it decides
                previous = current.internal.get("previous")
                if failure and current.internal.get("operation") == Operation.UPDATE.value and previous:
                    # The new version never got healthy: keep serving the previous one.
                    old_config = previous["config"]
                    current.body["modelDeploymentConfigurationDetails"] = old_config
                    current.internal |= {
                        "artifactSha256": previous["artifactSha256"],
                        "specHash": rules.spec_hash(old_config, previous["artifactSha256"]),
                        "modelId": rules.model_id(old_config),
                    }
                    current.internal.pop("previous", None)
                    current.body["lifecycleState"] = DeploymentState.ACTIVE.value
                    current.body["lifecycleDetails"] = f"Update failed and was rolled back; serving the previous configuration. {details}"
                    rolled_back = True
                else:
                    current.body["lifecycleState"] = state.value
                    current.body["lifecycleDetails"] = details
                if wr_id:
                    current.internal["workSettled"] = wr_id
                return current

            return self.store.mutate(record.id, KIND, "model deployment", change)

        after = await asyncio.to_thread(write)
        if wr_id and after.internal.get("workRequestId") == wr_id:
            message = f"Update failed and was rolled back: {details}" if rolled_back else details
            await asyncio.to_thread(self.work_requests.finish, wr_id, not failure, message)
        log.info("%s: %s (%s)", record.id, after.state, details)
        if state is not DeploymentState.NEEDS_ATTENTION:
            track.settled()  # NEEDS_ATTENTION keeps its restart back-off running

    async def _record_instance_count(self, record: Record, observed: list[ObservedInstance]) -> None:
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

            self.store.mutate(record.id, KIND, "model deployment", change)

        await asyncio.to_thread(write)


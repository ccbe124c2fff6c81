"""Predict logs: every running instance's stdout/stderr, stored line by line with its instance id.

The reconciler hands each deployment's observed instances to `PredictLogCollector.observe`
(through `Reconciler.instance_observers`). An instance that runs and is not followed yet gets a
task that follows its output through the runtime's `follow_output` from the position stored for
it (so a restarted dockyard resumes where it stopped, without storing a line twice) and queues
each line on the log store. The task ends when the runtime's stream ends (the instance stopped);
if the instance still runs then, the next observation starts it again from where it was.

A runtime without `follow_output` (the fake one) has no predict logs.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from dockyard.runtimes.base import Instance, InstanceState, Runtime
from dockyard.store.logs import LogStore

log = logging.getLogger("dockyard.logs")

RETRY_AFTER_FAILURE_S = 5.0
BACKPRESSURE_WAIT_S = 0.1  # while the log store's queue is full


class PredictLogCollector:
    def __init__(self, runtime: Runtime, logs: LogStore) -> None:
        self.runtime = runtime
        self.logs = logs
        self._tasks: dict[str, asyncio.Task[None]] = {}
        # Positions queued but perhaps not yet written: a follow restarted in this process goes
        # on from here rather than from the (older) stored position.
        self._positions: dict[str, str] = {}
        self._failed_at: dict[str, float] = {}

    @property
    def following(self) -> set[str]:
        return {i for i, task in self._tasks.items() if not task.done()}

    def observe(self, deployment_id: str, instances: list[Instance]) -> None:
        """Follow each running instance of `deployment_id` not followed yet (event-loop thread)."""
        try:
            self._observe(deployment_id, instances)
        except Exception:  # logs must never stop the reconciler
            log.exception("%s: could not start following its instances' output", deployment_id)

    def _observe(self, deployment_id: str, instances: list[Instance]) -> None:
        if getattr(self.runtime, "follow_output", None) is None:
            return
        loop = asyncio.get_running_loop()
        for instance in instances:
            if instance.state not in (InstanceState.RUNNING, InstanceState.STARTING):
                continue
            task = self._tasks.get(instance.instance_id)
            if task is not None and not task.done():
                continue
            if loop.time() - self._failed_at.get(instance.instance_id, -1e9) < RETRY_AFTER_FAILURE_S:
                continue
            self._tasks[instance.instance_id] = loop.create_task(
                self._follow(deployment_id, instance.instance_id), name=f"dockyard-predict-log-{instance.instance_id}"
            )
        self._forget_finished()

    async def _follow(self, deployment_id: str, instance_id: str) -> None:
        try:
            after = self._positions.get(instance_id) or await asyncio.to_thread(self.logs.position, instance_id)
            stream: Any = self.runtime.follow_output(instance_id, after)  # type: ignore[attr-defined]
            async for line in stream:
                while self.logs.full:
                    # Unlike the gateway, this reader can wait: the output stays with the runtime.
                    await asyncio.sleep(BACKPRESSURE_WAIT_S)
                self._positions[instance_id] = line.position
                self.logs.add(deployment_id, "predict", line.text, time_=line.time, instance_id=instance_id,
                              stream=line.stream, position=line.position)
        except asyncio.CancelledError:
            raise
        except Exception:
            self._failed_at[instance_id] = asyncio.get_running_loop().time()
            log.exception("%s: following the output of instance %s failed", deployment_id, instance_id)

    def _forget_finished(self) -> None:
        """Drop what is kept of instances whose follow ended long enough ago to be gone."""
        if len(self._tasks) < 256:
            return
        for instance_id in [i for i, task in self._tasks.items() if task.done()]:
            del self._tasks[instance_id]  # its position stays: it may run again under the same id
            self._failed_at.pop(instance_id, None)

    async def close(self) -> None:
        """Stop following (instances keep running; the next start resumes after the stored lines)."""
        tasks = [task for task in self._tasks.values() if not task.done()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def collect_predict_logs(reconciler: Any, runtime: Runtime, logs: LogStore) -> PredictLogCollector:
    """A collector fed by `reconciler`'s observations of instances (the composition root's one line)."""
    collector = PredictLogCollector(runtime, logs)
    reconciler.instance_observers.append(collector.observe)
    return collector

"""The predict-log collector and the local-process output follower, on fakes and temp files."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import datetime, timezone
from pathlib import Path

import pytest

from dockyard.reconciler.predict_logs import PredictLogCollector
from dockyard.runtimes.base import Instance, InstanceState
from dockyard.runtimes.output import OutputLine
from dockyard.runtimes.process_output import follow_file
from dockyard.store.logs import LogStore
from dockyard.store.metadata import SqlMetadataStore

D = "ocid1.datasciencemodeldeployment.oc1.local.aaaacollect"


async def next_lines(stream: AsyncIterator[OutputLine], count: int) -> list[OutputLine]:
    return [await asyncio.wait_for(stream.__anext__(), 10) for _ in range(count)]


async def test_follow_file_yields_complete_lines_then_the_last_partial_one_when_the_writer_ends(tmp_path: Path) -> None:
    path = tmp_path / "out.log"
    path.write_bytes(b"first\nsecond\npart")
    running = True
    stream = follow_file(path, lambda: running, poll_s=0.02)
    lines = await next_lines(stream, 2)
    assert [(line.text, line.position) for line in lines] == [("first", "6"), ("second", "13")]
    with path.open("ab") as handle:
        handle.write(b"ial\r\nlast")
    [line] = await next_lines(stream, 1)
    assert (line.text, line.position, line.stream) == ("partial", "22", "combined")
    running = False
    [line] = await next_lines(stream, 1)
    assert (line.text, line.position) == ("last", "26")
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(stream.__anext__(), 10)
    # Resuming from a position gives only what follows it.
    assert [line.text async for line in follow_file(path, lambda: False, "13")] == ["partial", "last"]


async def test_follow_file_reads_the_last_lines_of_a_removed_file_then_ends(tmp_path: Path) -> None:
    path = tmp_path / "out.log"
    path.write_bytes(b"one\n")
    stream = follow_file(path, lambda: True, poll_s=0.02)
    assert [line.text for line in await next_lines(stream, 1)] == ["one"]
    # The instance prints while stopping, and the runtime removes its file at once.
    with path.open("ab") as handle:
        handle.write(b"shutting down\n")
    path.unlink()
    assert [line.text for line in await next_lines(stream, 1)] == ["shutting down"]
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(stream.__anext__(), 10)


async def test_follow_file_of_a_file_already_gone_yields_nothing(tmp_path: Path) -> None:
    assert [line async for line in follow_file(tmp_path / "never.log", lambda: True)] == []


class FollowingRuntime:
    """Just enough of a runtime: fixed output per instance, honouring `after`, then an end."""

    name = "following"

    def __init__(self, output: dict[str, list[str]]) -> None:
        self.output = output
        self.follows: list[tuple[str, str | None]] = []

    async def follow_output(self, instance_id: str, after: str | None = None) -> AsyncIterator[OutputLine]:
        self.follows.append((instance_id, after))
        start = int(after or 0)
        for number, text in enumerate(self.output[instance_id][start:], start=start + 1):
            yield OutputLine(datetime.now(timezone.utc), "stdout", text, str(number))


def running(instance_id: str, state: InstanceState = InstanceState.RUNNING) -> Instance:
    return Instance(instance_id=instance_id, deployment_id=D, spec_hash="h", state=state)


async def wait_until_idle(collector: PredictLogCollector) -> None:
    for _ in range(200):
        if not collector.following:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the collector kept following")


async def test_the_collector_stores_each_running_instances_lines_once_across_a_restart(tmp_path: Path) -> None:
    metadata = SqlMetadataStore(f"sqlite:///{tmp_path / 'dockyard.db'}")
    logs = LogStore(metadata.engine, metadata.writer, flush_interval_s=3600)
    runtime = FollowingRuntime({"i-1": ["a", "b"], "i-2": ["x"], "i-gone": ["never"]})
    collector = PredictLogCollector(runtime, logs)  # type: ignore[arg-type]
    collector.observe(D, [running("i-1"), running("i-2"), running("i-gone", InstanceState.EXITED)])
    await wait_until_idle(collector)
    logs.flush()
    stored = logs.read(D, "predict").entries
    assert sorted((e.instance_id, e.message, e.stream) for e in stored) == [
        ("i-1", "a", "stdout"), ("i-1", "b", "stdout"), ("i-2", "x", "stdout")]

    # The instance wrote more; a new collector (dockyard restarted) resumes after the stored lines.
    runtime.output["i-1"].append("c")
    restarted = PredictLogCollector(runtime, logs)  # type: ignore[arg-type]
    restarted.observe(D, [running("i-1")])
    await wait_until_idle(restarted)
    logs.flush()
    assert [e.message for e in logs.read(D, "predict").entries if e.instance_id == "i-1"] == ["a", "b", "c"]
    assert runtime.follows[-1] == ("i-1", "2")
    metadata.close()


async def test_the_collector_ignores_runtimes_that_cannot_follow(tmp_path: Path) -> None:
    metadata = SqlMetadataStore(f"sqlite:///{tmp_path / 'dockyard.db'}")
    logs = LogStore(metadata.engine, metadata.writer, flush_interval_s=3600)
    collector = PredictLogCollector(object(), logs)  # type: ignore[arg-type]
    collector.observe(D, [running("i-1")])
    assert collector.following == set()
    metadata.close()


async def test_the_collector_waits_for_room_instead_of_dropping_lines(tmp_path: Path) -> None:
    metadata = SqlMetadataStore(f"sqlite:///{tmp_path / 'dockyard.db'}")
    logs = LogStore(metadata.engine, metadata.writer, flush_interval_s=3600, queue_max=3)
    runtime = FollowingRuntime({"i-1": [f"line {n}" for n in range(10)]})
    collector = PredictLogCollector(runtime, logs)  # type: ignore[arg-type]
    collector.observe(D, [running("i-1")])
    for _ in range(200):
        if len(logs.read(D, "predict", limit=1000).entries) == 10:
            break
        await asyncio.sleep(0.02)
        await asyncio.to_thread(logs.flush)  # the database catches up a little at a time
    assert [e.message for e in logs.read(D, "predict", limit=1000).entries] == [f"line {n}" for n in range(10)]
    assert logs.dropped == 0
    metadata.close()

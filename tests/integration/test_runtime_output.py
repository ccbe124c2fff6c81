"""`follow_output` of the Docker runtime on a real engine: stdout and stderr told apart, the
engine's timestamps, resuming after a stored position without repeating a line, and the end of
the stream when the container stops."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import docker
import docker.errors
import pytest

from dockyard.runtimes.base import InstanceSpec
from dockyard.runtimes.docker import DockerRuntime
from dockyard.runtimes.docker_output import parse_position
from dockyard.runtimes.output import OutputLine

pytestmark = pytest.mark.integration

BASE = "dockyard-test/base:bookworm"
PREFIX = f"dyout{secrets.token_hex(3)}"
DEPLOYMENT = "ocid1.datasciencemodeldeployment.oc1.iad.amaaaaaatestoutputxyz123"
# Numbered lines on both streams, forever, beside a minimal health server on 8080.
SCRIPT = (
    "i=0; while true; do i=$((i+1)); echo \"out $i\"; echo \"err $i\" >&2; sleep 0.2; done & "
    "exec python3 -m http.server 8080"
)


@pytest.fixture
async def runtime() -> AsyncIterator[DockerRuntime]:
    try:
        engine = docker.from_env(timeout=30)
        engine.images.get(BASE)
        engine.close()
    except docker.errors.DockerException as exc:
        pytest.fail(f"needs the Docker engine and {BASE} (scripts/infra/docker.sh, scripts/infra/images.sh): {exc}")
    rt = DockerRuntime(label_prefix=PREFIX, stop_timeout_s=2)
    try:
        yield rt
    finally:
        for instance in await rt.list():
            await rt.stop(instance.instance_id)
        await rt.close()


async def collect(stream: AsyncIterator[OutputLine], until: str, timeout_s: float = 60.0) -> list[OutputLine]:
    lines: list[OutputLine] = []

    async def read() -> None:
        async for line in stream:
            lines.append(line)
            if line.text == until:
                return

    try:
        await asyncio.wait_for(read(), timeout_s)
    except asyncio.TimeoutError:
        raise AssertionError(f"no {until!r} within {timeout_s:g} s; got {[line.text for line in lines]}") from None
    finally:
        await stream.aclose()  # type: ignore[attr-defined]
    return lines


async def test_container_output_is_followed_by_stream_and_resumed_after_a_position(runtime: DockerRuntime, tmp_path: Path) -> None:
    spec = InstanceSpec(deployment_id=DEPLOYMENT, spec_hash="h1", kind="OCIR_CONTAINER", artifact_dir=None, image=BASE,
                        entrypoint=["sh", "-c"], cmd=[SCRIPT], server_port=8080, health_port=8080)
    started = datetime.now(timezone.utc)
    instance = await runtime.start(spec)

    first = await collect(runtime.follow_output(instance.instance_id), until="out 4")
    by_text = {line.text: line for line in first}
    for n in (1, 2, 3):
        assert by_text[f"out {n}"].stream == "stdout" and by_text[f"err {n}"].stream == "stderr"
    assert all(started - timedelta(seconds=5) < line.time < datetime.now(timezone.utc) + timedelta(seconds=5) for line in first)
    stdout_positions = [own(line) for line in first if line.stream == "stdout"]
    assert stdout_positions == sorted(stdout_positions) and len(set(stdout_positions)) == len(stdout_positions)

    # Resume after "out 2" (as a restarted dockyard does from the stored position): only later lines.
    after = by_text["out 2"].position
    resumed = await collect(runtime.follow_output(instance.instance_id, after), until="out 5")
    assert resumed and all(own(line) > parse_position(after)[line.stream] for line in resumed)
    texts = [line.text for line in resumed]
    assert "out 1" not in texts and "out 2" not in texts and "out 3" in texts

    # A follow in progress ends by itself once the container stops.
    follow = asyncio.create_task(drain(runtime.follow_output(instance.instance_id, resumed[-1].position)))
    await asyncio.sleep(1.0)
    assert not follow.done()
    await runtime.stop(instance.instance_id)
    tail = await asyncio.wait_for(follow, 60)
    assert all(own(line) > parse_position(resumed[-1].position)[line.stream] for line in tail)


def own(line: OutputLine) -> int:
    """Where the line's own stream stands in its position ("<stdout ns>:<stderr ns>")."""
    return parse_position(line.position)[line.stream]


async def drain(stream: AsyncIterator[OutputLine]) -> list[OutputLine]:
    return [line async for line in stream]


async def test_the_collector_stores_a_containers_lines_by_stream_through_the_routing_runtime(runtime: DockerRuntime, tmp_path: Path) -> None:
    """What `dockyard serve` does with a Docker engine: the reconciler's observation starts a
    follow through the routing runtime, and the lines land in the log store with their stream."""
    from dockyard.reconciler.predict_logs import PredictLogCollector
    from dockyard.runtimes.process import ProcessRuntime
    from dockyard.runtimes.routing import RoutingRuntime
    from dockyard.store.logs import LogStore
    from dockyard.store.metadata import SqlMetadataStore

    metadata = SqlMetadataStore(f"sqlite:///{tmp_path / 'dockyard.db'}")
    logs = LogStore(metadata.engine, metadata.writer, flush_interval_s=0.1)
    routing = RoutingRuntime(runtime, ProcessRuntime(state_dir=tmp_path / "processes"))
    spec = InstanceSpec(deployment_id=DEPLOYMENT, spec_hash="h1", kind="OCIR_CONTAINER", artifact_dir=None, image=BASE,
                        entrypoint=["sh", "-c"], cmd=[SCRIPT], server_port=8080, health_port=8080)
    instance = await routing.start(spec)
    collector = PredictLogCollector(routing, logs)
    collector.observe(DEPLOYMENT, await routing.list(DEPLOYMENT))
    assert collector.following == {instance.instance_id}

    async def stored() -> dict[str, str]:
        entries = logs.read(DEPLOYMENT, "predict", limit=1000).entries
        return {e.message: e.stream for e in entries if e.instance_id == instance.instance_id}

    deadline = asyncio.get_running_loop().time() + 60
    while "err 3" not in (lines := await stored()) and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.1)
    assert lines.get("out 1") == "stdout" and lines.get("err 1") == "stderr" and lines.get("err 3") == "stderr", lines
    assert logs.position(instance.instance_id) is not None
    await routing.stop(instance.instance_id)
    await asyncio.wait_for(_until_idle(collector), 60)
    await collector.close()
    logs.close()
    metadata.close()


async def _until_idle(collector: object) -> None:
    while collector.following:  # type: ignore[attr-defined]
        await asyncio.sleep(0.1)

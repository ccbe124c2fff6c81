"""`dockyard run`: the local emulation a user would otherwise hand-write (H3).

The container starts exactly as a deployment's instance would (see `session`), with the
service's HEALTHCHECK at H1's own timings. The command prints where it answers and
ready-to-paste curl lines, streams the container's output, reports when it turns healthy (or
why it does not), and on `stop` (Ctrl-C, SIGTERM) stops it the way the service does and
removes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import shlex
from collections.abc import Awaitable, Callable
from typing import TypeVar

from dockyard.checking.findings import Verdict
from dockyard.checking.inputs import CheckRequest
from dockyard.checking.probe_run import watch_health
from dockyard.checking.rules import judge
from dockyard.checking.session import LABEL_PREFIX, MeasuringRuntime, Session, docker_runtime
from dockyard.errors import InvalidParameter
from dockyard.runtimes.base import Instance, InstanceState, Progress
from dockyard.settings import Settings

Say = Callable[[str], None]
T = TypeVar("T")
EXIT_POLL_S = 1.0


async def run_locally(request: CheckRequest, settings: Settings, *, say: Say, log_line: Say, progress: Progress,
                      stop: asyncio.Event, runtime: MeasuringRuntime | None = None,
                      label_prefix: str = LABEL_PREFIX) -> int:
    """Run until `stop` is set (0) or the container exits by itself (1).

    `say` gets the lines meant to be read or pasted (URLs, curl), `log_line` each line the
    container writes, `progress` the phases. Raises `DockyardError` when nothing can start.
    """
    runtime = runtime or docker_runtime(request, settings, label_prefix=label_prefix, quick_healthcheck=False)
    async with Session(request, settings, progress, runtime) as session:
        m = session.measurements
        await _unless_stopped(session.prepare(), stop)
        if m.image is None or m.image.rejected:
            raise InvalidParameter(m.image.rejected if m.image else f"image {request.image} could not be prepared",
                                   rule="C7")
        if m.image.has_curl is False:
            say("warning: C9: curl is not in the image; a deployment refuses it (its HEALTHCHECK runs curl inside "
                "the container). Running anyway, probed from outside only.")
        instance = await _unless_stopped(session.start(), stop)
        if instance is None:
            say(f"the container did not start: {m.exit.start_error or m.exit.detail if m.exit else 'unknown'}")
            return 1
        if m.exit is not None:  # it started and has already ended: no URLs to give, its output and code below
            say(f"container {instance.instance_id}")
        else:
            for text in where(instance, m.health_path, m.predict_path, request):
                say(text)
        logs = asyncio.create_task(_stream(runtime, instance, log_line))
        health = asyncio.create_task(_report_health(session, instance, say))
        stopped = asyncio.create_task(stop.wait())
        exited = asyncio.create_task(_wait_exit(session))
        farewell = "container removed"
        try:
            done, _ = await asyncio.wait({stopped, exited}, return_when=asyncio.FIRST_COMPLETED)
            if stopped in done:
                progress(f"stop: SIGTERM (SIGKILL after {request.stop_timeout_s:g} s)")
                ended = await runtime.terminate(instance.instance_id)
                if ended is not None:
                    how = ("it ignored SIGTERM and was killed" if ended.killed
                           else f"exit code {ended.exit_code}")
                    farewell = f"stopped in {ended.seconds:.1f} s ({how}); container removed"
                code = 0
            else:
                current = exited.result()
                detail = current.detail if current is not None else "the container vanished"
                say(f"the container exited by itself: {detail.splitlines()[0] if detail else 'no detail'}")
                farewell = "container removed"
                code = 1
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(logs), 1.0)  # the last lines it wrote
        finally:
            for task in (logs, health, stopped, exited):
                task.cancel()
            await asyncio.gather(logs, health, stopped, exited, return_exceptions=True)
    say(farewell)  # once the session has removed the container
    return code


def where(instance: Instance, health_path: str, predict_path: str, request: CheckRequest) -> list[str]:
    """The URLs and the curl lines of the H3 recipe, for the ports the engine chose."""
    health_url = f"http://{instance.host}:{instance.health_port}{health_path}"
    predict_url = f"http://{instance.host}:{instance.server_port}{predict_path}"
    sample = request.sample.decode("utf-8", "replace")
    return [
        f"container {instance.instance_id}",
        f"  health:  {health_url}",
        f"  predict: {predict_url}",
        "try:",
        f"  curl -vf {health_url}",
        f"  curl -H {shlex.quote('Content-Type: ' + request.content_type)} -X POST {predict_url} "
        f"--data {shlex.quote(sample)}",
        "Ctrl-C stops and removes it.",
    ]


async def _unless_stopped(work: Awaitable[T], stop: asyncio.Event) -> T:
    """`work`'s result, unless `stop` is set first: then it is cancelled (the session's clean-up
    removes whatever it started) and CancelledError raised."""
    task = asyncio.ensure_future(work)
    waiter = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
    if task.done():
        return task.result()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    raise asyncio.CancelledError


async def _stream(runtime: MeasuringRuntime, instance: Instance, log_line: Say) -> None:
    async for text in runtime.follow_logs(instance.instance_id):
        log_line(text)


async def _report_health(session: Session, instance: Instance, say: Say) -> None:
    watch = await watch_health(session, instance)
    if watch.healthy_after_s is not None:
        say(f"healthy after {watch.healthy_after_s:.1f} s: ready for requests")
        return
    if watch.gave_up == "exited":
        return  # said by the exit watcher
    m = session.measurements
    for finding in judge(m):
        if finding.rule in ("C6", "C3", "H2") and finding.verdict in (Verdict.FAIL, Verdict.WARN) and finding.root:
            say(f"not healthy: {finding.rule} {finding.measured}; fix: {finding.fix}")
            return
    say(f"not healthy after {watch.waited_s:.1f} s: {watch.last_detail}")


async def _wait_exit(session: Session) -> Instance | None:
    while True:
        current = await session.observe()
        if current is None or current.state is InstanceState.EXITED:
            return current
        await asyncio.sleep(EXIT_POLL_S)

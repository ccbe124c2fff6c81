"""Drive one check: start the image as a deployment would, measure, stop it, judge.

`run_check` measures in the order a deployment meets things: registry and image (`Session`),
the start, the service's health probe until healthy (or a crash, the budget, or a conclusive
non-answer), what the container listens on, `POST /predict` and its trailing-slash twin, the
in-container HEALTHCHECK, a timed SIGTERM stop, and the logs. `rules.judge` gives the verdicts.
"""

from __future__ import annotations

import asyncio
import time

import httpx

from dockyard.checking.findings import Report
from dockyard.checking.inputs import CheckRequest
from dockyard.checking.measurements import Exit, HealthWatch, HttpAnswer, Measurements, StopEvidence
from dockyard.checking.rules import judge
from dockyard.checking.session import LABEL_PREFIX, MeasuringRuntime, Session, docker_runtime
from dockyard.checking.sockets import parse_socket_table, reachable_on
from dockyard.checking.wording import human_bytes
from dockyard.runtimes.base import Health, Instance, InstanceState, Progress
from dockyard.settings import Settings

PREDICT_TIMEOUT_S = 60.0  # the service's per-request limit
UNREADY_PREDICT_TIMEOUT_S = 5.0  # when the server never got healthy, do not wait a minute more
INNER_HEALTH_WAIT_S = 5.0  # for Docker's HEALTHCHECK (every second in a check) to report
# A predict that got no answer may have ended the server; the engine reports the exit a moment
# after the connection dropped, so a look at once can still see the container running.
EXIT_NOTICE_S = 2.0
SOCKETS_EVERY_S = 1.0
LOG_TAIL = 5000
BODY_CHARS = 300


async def run_check(request: CheckRequest, settings: Settings, progress: Progress, *,
                    runtime: MeasuringRuntime | None = None, label_prefix: str = LABEL_PREFIX) -> Report:
    """Run the whole check and return its report.

    Raises `DockyardError` when nothing can be tried (no such image, an unusable artifact, no
    engine); everything the container does is a report line instead.
    """
    began = time.monotonic()
    runtime = runtime or docker_runtime(request, settings, label_prefix=label_prefix)
    async with Session(request, settings, progress, runtime) as session:
        m = session.measurements
        await session.prepare()
        if m.image is not None and not m.image.rejected:
            instance = await session.start()
            if instance is not None:
                if m.exit is None:
                    await _measure_running(session, instance)
                m.logs = await runtime.logs(instance.instance_id, tail=LOG_TAIL)
    m.seconds = time.monotonic() - began
    return report_of(m)


def report_of(m: Measurements) -> Report:
    request = m.request
    artifact = m.artifact.source if m.artifact else "none"
    if m.artifact and m.artifact.files:
        files = f"{m.artifact.files} file{'' if m.artifact.files == 1 else 's'}"
        artifact += f" ({files}, {human_bytes(m.artifact.bytes)})"
    return Report(image=request.image, ran=m.image.ran if m.image else request.image, deployment_id=m.deployment_id,
                  artifact=artifact, server_port=request.server_port, health_port=request.health_port,
                  seconds=m.seconds, findings=tuple(judge(m)))


async def _measure_running(session: Session, instance: Instance) -> None:
    m, runtime, progress = session.measurements, session.runtime, session.progress
    watch = await watch_health(session, instance)
    if m.exit is not None:
        return
    table = await runtime.socket_table(instance.instance_id)
    if table is not None:
        m.listeners = parse_socket_table(table)
    if not m.triton:
        timeout = PREDICT_TIMEOUT_S if watch.healthy_after_s is not None else UNREADY_PREDICT_TIMEOUT_S
        progress(f"predict: POST {m.predict_path}")
        m.predict, m.predict_other = await _predict_twice(instance, m, timeout)
        if m.predict.status is None:
            await _exit_noticed(session, EXIT_NOTICE_S)
    current = await session.observe()
    if current is not None and current.state is not InstanceState.EXITED:
        if m.image is not None and m.image.has_curl and watch.healthy_after_s is not None:
            await _inner_health(session)
        current = await session.observe()
    if current is None or current.state is InstanceState.EXITED:
        m.exit = Exit(current.exit_code if current else None, session.elapsed(), current.detail if current else "",
                      after_healthy=watch.healthy_after_s is not None)
        return
    m.running_s = session.elapsed()
    progress(f"stop: SIGTERM (SIGKILL after {m.request.stop_timeout_s:g} s)")
    ended = await runtime.terminate(instance.instance_id)
    if ended is not None:
        m.stop = StopEvidence(ended.seconds, ended.exit_code, ended.killed, ended.timeout_s)
        progress(f"stop: {'killed' if ended.killed else 'exited'} after {ended.seconds:.1f} s")


async def watch_health(session: Session, instance: Instance) -> HealthWatch:
    """Probe the health path as the service does until healthy, or the container exits, or the
    budget passes, or the answer is conclusive for `patience_s` (a status other than 200 and
    503, or a container that listens only on other ports). Records into the measurements."""
    m, runtime, request = session.measurements, session.runtime, session.request
    watch = HealthWatch(budget_s=request.health_budget_s, patience_s=request.patience_s)
    m.health = watch
    session.progress(f"health: waiting for GET {m.health_path} on port {request.health_port} to answer 200 "
                     f"(budget {request.health_budget_s:g} s)")
    delay = 0.05
    wrong_status_since: float | None = None
    elsewhere_since: float | None = None
    sockets_read_at = float("-inf")
    said_at = time.monotonic()
    while True:
        elapsed = session.elapsed()
        watch.waited_s = elapsed
        current = await session.observe()
        if current is None or current.state is InstanceState.EXITED:
            m.exit = Exit(current.exit_code if current else None, elapsed, current.detail if current else "it vanished")
            watch.gave_up = "exited"
            session.progress(f"health: the container exited after {elapsed:.1f} s")
            return watch
        result = await runtime.probe(instance, m.health_path)
        watch.record(result.status_code, result.detail)
        now = time.monotonic()
        if result.healthy:
            watch.healthy_after_s = session.elapsed()
            session.progress(f"health: healthy after {watch.healthy_after_s:.1f} s")
            return watch
        if result.status_code is not None and result.status_code != 503:
            wrong_status_since = wrong_status_since or now
            if now - wrong_status_since >= request.patience_s:
                watch.gave_up = "status"
                return watch
        else:
            wrong_status_since = None
        if result.status_code is None and now - sockets_read_at >= SOCKETS_EVERY_S:
            sockets_read_at = now
            table = await runtime.socket_table(instance.instance_id)
            m.listeners = parse_socket_table(table) if table is not None else None
            if m.listeners and not reachable_on(m.listeners, request.health_port):
                elsewhere_since = elsewhere_since or now
                if now - elsewhere_since >= request.patience_s:
                    watch.gave_up = "ports"
                    return watch
            else:
                elsewhere_since = None
        if session.elapsed() >= request.health_budget_s:
            watch.gave_up = "budget"
            return watch
        if now - said_at >= 5:
            said_at = now
            session.progress(f"health: {elapsed:.0f} s of {request.health_budget_s:g} s, last probe: "
                             f"{result.detail or result.status_code}")
        await asyncio.sleep(min(delay, max(0.0, request.health_budget_s - session.elapsed())))
        delay = min(delay * 2, 0.5)


async def _predict_twice(instance: Instance, m: Measurements, timeout_s: float) -> tuple[HttpAnswer, HttpAnswer | None]:
    path = m.predict_path
    other = path.rstrip("/") if path.endswith("/") and path != "/" else path + "/"
    async with httpx.AsyncClient(timeout=timeout_s, trust_env=False, follow_redirects=False) as client:
        first = await _post(client, instance, path, m)
        second = await _post(client, instance, other, m) if first.status is not None else None
    return first, second


async def _post(client: httpx.AsyncClient, instance: Instance, path: str, m: Measurements) -> HttpAnswer:
    url = f"http://{instance.host}:{instance.server_port}{path}"
    started = time.monotonic()
    try:
        response = await client.post(url, content=m.request.sample, headers={"Content-Type": m.request.content_type})
    except httpx.TimeoutException:
        return HttpAnswer("POST", path, None, time.monotonic() - started,
                          error=f"no answer within {client.timeout.read or 0:g} s")
    except httpx.HTTPError as exc:
        words = str(exc) or "the connection closed without an answer"
        return HttpAnswer("POST", path, None, time.monotonic() - started, error=f"{type(exc).__name__}: {words}")
    seconds = time.monotonic() - started
    return HttpAnswer("POST", path, response.status_code, seconds,
                      content_type=response.headers.get("content-type", "").split(";")[0],
                      body=response.content[:BODY_CHARS * 4].decode("utf-8", "replace")[:BODY_CHARS],
                      location=response.headers.get("location", ""))


async def _exit_noticed(session: Session, wait_s: float) -> None:
    """Until the container is seen exited (or gone), for at most `wait_s`."""
    deadline = time.monotonic() + wait_s
    while True:
        current = await session.observe()
        if current is None or current.state is InstanceState.EXITED or time.monotonic() >= deadline:
            return
        await asyncio.sleep(0.1)


async def _inner_health(session: Session) -> None:
    """Docker's own HEALTHCHECK (the service's curl, inside the container) once it passed, or
    what it says after INNER_HEALTH_WAIT_S. (It may still say "unhealthy" from before the server
    was up: a check every second turns that around within a second or two.)"""
    m = session.measurements
    deadline = time.monotonic() + INNER_HEALTH_WAIT_S
    while True:
        current = await session.observe()
        if current is None or current.state is InstanceState.EXITED:
            return
        if current.health is Health.HEALTHY or time.monotonic() >= deadline:
            m.inner_health = "" if current.health is Health.UNKNOWN else current.health.value
            m.inner_detail = current.detail
            return
        await asyncio.sleep(0.25)

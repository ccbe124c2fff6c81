"""How a check waits for health and when it stops waiting, driven by a scripted runtime (no engine).

The scripted container answers the health probe from a script over time, listens where the
script says, and may exit; the watch must end for the right reason, soon enough.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from dockyard.checking.findings import Verdict
from dockyard.checking import probe_run
from dockyard.checking.inputs import parse_request
from dockyard.checking.probe_run import run_check, watch_health
from dockyard.checking.session import Session
from dockyard.runtimes.base import Instance, InstanceSpec, InstanceState, ProbeResult
from dockyard.settings import Settings

LISTEN_8080 = "  sl  local_address rem_address   st\n   0: 00000000:1F90 00000000:0000 0A 0\n"
LISTEN_8081 = "  sl  local_address rem_address   st\n   0: 00000000:1F91 00000000:0000 0A 0\n"
NOTHING = "  sl  local_address rem_address   st\n"


@dataclass
class Facts:
    size_bytes: int = 100 * 1024**2
    has_curl: bool | None = True
    entrypoint: list[str] | None = None
    cmd: list[str] | None = None
    repo_digests: tuple[str, ...] = ()


@dataclass
class Ended:
    seconds: float
    exit_code: int
    killed: bool
    timeout_s: float


class ScriptedRuntime:
    """One scripted container: `status(t)` is the health answer t seconds after the start
    (None: no answer), `sockets(t)` its /proc/net/tcp, `exit_after` when it exits by itself."""

    name = "scripted"

    def __init__(self, status: Callable[[float], int | None], sockets: Callable[[float], str | None] = lambda t: NOTHING,
                 exit_after: float | None = None, logs: str = "serving\n") -> None:
        self.status, self.sockets, self.exit_after, self.log_text = status, sockets, exit_after, logs
        self.started_at = 0.0
        self.spec: InstanceSpec | None = None
        self.stopped: list[str] = []
        self.closed = False

    def _t(self) -> float:
        return time.monotonic() - self.started_at

    def _exited(self) -> bool:
        return self.exit_after is not None and self._t() >= self.exit_after

    async def prepare(self, spec: InstanceSpec, progress: Callable[[str], None]) -> None:
        progress(f"pull: {spec.image} is already present")

    async def image_facts(self, image: str) -> Facts:
        return Facts()

    async def start(self, spec: InstanceSpec) -> Instance:
        self.spec, self.started_at = spec, time.monotonic()
        return self._instance()

    def _instance(self) -> Instance:
        assert self.spec is not None
        exited = self._exited()
        return Instance("scripted-1", self.spec.deployment_id, self.spec.spec_hash,
                        InstanceState.EXITED if exited else InstanceState.RUNNING, server_port=1, health_port=1,
                        started_at=datetime.now(timezone.utc), exit_code=1 if exited else None,
                        detail="exit code 1" if exited else "")

    async def list(self, deployment_id: str | None = None) -> list[Instance]:
        return [] if self.spec is None or "scripted-1" in self.stopped else [self._instance()]

    async def probe(self, instance: Instance, path: str) -> ProbeResult:
        status = self.status(self._t())
        return ProbeResult(status == 200, status, "" if status else "health: GET /health failed: refused")

    async def socket_table(self, instance_id: str) -> str | None:
        return self.sockets(self._t())

    async def terminate(self, instance_id: str) -> Ended:
        return Ended(0.1, 143, False, 10)

    async def stop(self, instance_id: str) -> None:
        self.stopped.append(instance_id)

    async def logs(self, instance_id: str, tail: int = 50) -> str:
        return self.log_text

    def follow_logs(self, instance_id: str) -> AsyncIterator[str]:
        raise NotImplementedError

    async def close(self) -> None:
        self.closed = True


async def watch(runtime: ScriptedRuntime, **options: Any) -> Any:
    request = parse_request("team/app:1", **options)
    session = Session(request, Settings(), lambda line: None, runtime)  # type: ignore[arg-type]
    async with session:
        await session.prepare()
        instance = await session.start()
        assert instance is not None
        began = time.monotonic()
        result = await watch_health(session, instance)
        return result, session.measurements, time.monotonic() - began


async def test_healthy_as_soon_as_it_answers_200() -> None:
    result, _, took = await watch(ScriptedRuntime(lambda t: 200 if t > 0.3 else None))
    assert result.gave_up == "" and 0.3 <= result.healthy_after_s < 1.0 and took < 1.0


async def test_a_conclusive_status_ends_the_wait_after_the_patience() -> None:
    result, _, took = await watch(ScriptedRuntime(lambda t: 404), patience_s=0.4)
    assert result.gave_up == "status" and result.statuses.keys() == {404} and 0.4 <= took < 1.5


async def test_503_is_waited_for_until_the_budget() -> None:
    result, _, took = await watch(ScriptedRuntime(lambda t: 503), patience_s=0.2, health_budget_s=0.8)
    assert result.gave_up == "budget" and 0.8 <= took < 1.5


async def test_listening_only_elsewhere_ends_the_wait_after_the_patience() -> None:
    result, m, took = await watch(ScriptedRuntime(lambda t: None, sockets=lambda t: LISTEN_8081), patience_s=0.4)
    assert result.gave_up == "ports" and [item.port for item in m.listeners] == [8081] and took < 2.5


async def test_nothing_listening_waits_for_the_whole_budget() -> None:
    result, _, took = await watch(ScriptedRuntime(lambda t: None), patience_s=0.1, health_budget_s=0.8)
    assert result.gave_up == "budget" and took >= 0.8


async def test_an_exit_ends_the_wait_at_once() -> None:
    result, m, took = await watch(ScriptedRuntime(lambda t: None, exit_after=0.2))
    assert result.gave_up == "exited" and m.exit is not None and m.exit.code == 1 and took < 1.0


async def test_a_whole_check_cleans_up_after_itself(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(probe_run, "INNER_HEALTH_WAIT_S", 0.1)  # the scripted HEALTHCHECK never reports
    runtime = ScriptedRuntime(lambda t: 200, sockets=lambda t: LISTEN_8080)
    report = await run_check(parse_request("team/app:1", env=["CONTAINER_TYPE=TRITON"]), Settings(), lambda line: None,
                             runtime=runtime)  # type: ignore[arg-type]
    assert runtime.stopped == ["scripted-1"] and runtime.closed
    assert report.finding("STOP").verdict is Verdict.PASS and report.finding("H2").verdict is Verdict.PASS
    assert report.finding("C2").verdict is Verdict.SKIP  # Triton mode: predict is not tried
    assert not list(Path("/tmp").glob(f"dockyard-check-*/{runtime.spec.environment['MODEL_DEPLOYMENT_OCID']}"))


async def test_nothing_is_left_running_when_the_check_fails_half_way() -> None:
    runtime = ScriptedRuntime(lambda t: 200)

    async def broken(instance_id: str) -> str | None:
        raise RuntimeError("engine fell over")

    runtime.socket_table = broken  # type: ignore[method-assign]
    with pytest.raises(RuntimeError):
        await run_check(parse_request("team/app:1"), Settings(), lambda line: None, runtime=runtime)  # type: ignore[arg-type]
    assert runtime.stopped == ["scripted-1"] and runtime.closed


async def test_a_predict_that_ends_the_server_is_reported_as_such(monkeypatch: pytest.MonkeyPatch) -> None:
    """The engine reports an exit a moment after the connection dropped: after a predict with no
    answer the check waits (up to EXIT_NOTICE_S) to see the container exit, so the finding says
    it exited while answering, not that it is still running and answers nothing."""
    monkeypatch.setattr(probe_run, "INNER_HEALTH_WAIT_S", 0.1)  # the scripted HEALTHCHECK never reports
    runtime = ScriptedRuntime(lambda t: 200, sockets=lambda t: LISTEN_8080, exit_after=0.8)  # the predict gets no answer
    report = await run_check(parse_request("team/app:1"), Settings(), lambda line: None, runtime=runtime)  # type: ignore[arg-type]
    c2 = report.finding("C2")
    assert c2.verdict is Verdict.FAIL and "exited (code 1) while answering" in c2.measured, c2

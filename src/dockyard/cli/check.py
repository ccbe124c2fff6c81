"""`dockyard check IMAGE` and `dockyard run IMAGE`: try an image locally, exactly as a deployment runs it.

The checking code is imported inside the commands: the CLI module stays free of server
internals at import time. Exit status of `check`: 0 nothing FAILs, 1 something FAILs, 2 the
check could not run (bad input, no such image, no engine). `run`: 0 stopped by Ctrl-C/SIGTERM,
1 the container exited by itself, 2 it could not start.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.text import Text

T = TypeVar("T")

err = Console(stderr=True, highlight=False, soft_wrap=True)
out = Console(highlight=False, soft_wrap=True)

_COLOURS = {"PASS": "green", "WARN": "yellow", "FAIL": "red", "SKIP": "dim"}

ArtifactOption = typer.Option(None, "--artifact", help="The model artifact: its zip (as uploaded) or a folder. "
                                                       "Mounted read-only at /opt/ds/model/deployed_model.")
ServerPortOption = typer.Option(8080, "--server-port", help="serverPort: where POST /predict is served (C6).")
HealthPortOption = typer.Option(8080, "--health-port", help="healthCheckPort: where GET /health is served (C6).")
EntrypointOption = typer.Option(None, "--entrypoint", help="entrypoint: a JSON list or shell words; '' clears the "
                                                           "image's ENTRYPOINT; default: the image's own.")
CmdOption = typer.Option(None, "--cmd", help="cmd: a JSON list or shell words; default: the image's own CMD.")
EnvOption = typer.Option(None, "-e", "--env", help="KEY=VALUE, an environment variable of the deployment (repeat).")
PredictDataOption = typer.Option(None, "--predict-data", help="The body POSTed to /predict: JSON, or @FILE.")
ContentTypeOption = typer.Option("application/json", "--content-type", help="Content-Type of the /predict sample.")
DigestOption = typer.Option(None, "--image-digest", help="imageDigest (sha256:...): check that exact version (D1).")
BudgetOption = typer.Option(None, "--health-budget-s", help="Seconds the container has to become healthy (H2; "
                                                           "default DOCKYARD_HEALTH_DEADLINE_S, 600).")
PatienceOption = typer.Option(30.0, "--patience-s", help="Stop waiting early once /health has answered a status "
                                                         "other than 200/503, or the container listened only on "
                                                         "other ports, for this long.")
StopTimeoutOption = typer.Option(10.0, "--stop-timeout-s", help="SIGTERM-to-SIGKILL grace when stopping.")
DockerHostOption = typer.Option(None, "--docker-host", envvar="DOCKYARD_DOCKER_HOST",
                                help="Docker or Podman API socket (default DOCKER_HOST or the default socket).")


def check(
    image: str = typer.Argument(..., help="The container image, e.g. 127.0.0.1:5001/team/app:1.0"),
    artifact: Path = ArtifactOption,
    server_port: int = ServerPortOption,
    health_port: int = HealthPortOption,
    entrypoint: str = EntrypointOption,
    cmd: str = CmdOption,
    env: list[str] = EnvOption,
    predict_data: str = PredictDataOption,
    content_type: str = ContentTypeOption,
    image_digest: str = DigestOption,
    health_budget_s: float = BudgetOption,
    patience_s: float = PatienceOption,
    stop_timeout_s: float = StopTimeoutOption,
    docker_host: str = DockerHostOption,
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON (for CI)."),
) -> None:
    """Run IMAGE exactly as a deployment would and report every BYOC rule: PASS / WARN / FAIL.

    One line per rule with what was measured and the fix; exit status 0 only when nothing FAILs.
    """
    from dockyard.checking import report as render
    from dockyard.checking.probe_run import run_check

    request, settings = _request(locals())
    with err.status("checking", spinner="dots") as status:

        def progress(text: str) -> None:
            status.update(escape(text))
            if text.startswith(("pull:", "unpack:", "start:", "stop:", "warning:")) or "healthy" in text:
                err.print(f"[dim]{escape(text)}[/]")

        report = _run(run_check(request, settings, progress))
    if as_json:
        print(render.as_json(report), end="")
    else:
        for words in render.heading(report):
            out.print(Text(words, style="bold" if words.startswith("dockyard") else "dim"))
        for finding in report.findings:
            styled = Text(render.line(finding))
            styled.stylize(_COLOURS[finding.verdict.value], 0, 4)
            out.print(styled)
        out.print(Text(render.summary(report), style="bold " + ("green" if report.passed else "red")))
    raise typer.Exit(report.exit_code)


def run(
    image: str = typer.Argument(..., help="The container image, e.g. 127.0.0.1:5001/team/app:1.0"),
    artifact: Path = ArtifactOption,
    server_port: int = ServerPortOption,
    health_port: int = HealthPortOption,
    entrypoint: str = EntrypointOption,
    cmd: str = CmdOption,
    env: list[str] = EnvOption,
    predict_data: str = PredictDataOption,
    content_type: str = ContentTypeOption,
    image_digest: str = DigestOption,
    health_budget_s: float = BudgetOption,
    patience_s: float = PatienceOption,
    stop_timeout_s: float = StopTimeoutOption,
    docker_host: str = DockerHostOption,
) -> None:
    """Start IMAGE as a deployment would, print its URLs and curl lines, stream its logs.

    Ctrl-C (or SIGTERM) stops it the way the service does and removes it. --predict-data only
    fills in the printed curl line.
    """
    from dockyard.checking.local_run import run_locally

    request, settings = _request(locals())

    async def main(stop: asyncio.Event) -> int:
        # The spinner runs until the container is up; after that the container's output owns
        # the terminal (a live display would fight with it).
        status = err.status("starting", spinner="dots")
        status.start()
        spinning = True

        def quiet() -> None:
            nonlocal spinning
            if spinning:
                status.stop()
                spinning = False

        def progress(text: str) -> None:
            if spinning:
                status.update(escape(text))
            if not text.startswith("health: ") or "healthy" in text:
                err.print(f"[dim]{escape(text)}[/]")

        def say(text: str) -> None:
            quiet()
            out.print(Text(text))

        def log_line(text: str) -> None:
            quiet()
            out.print(Text.assemble(("| ", "dim"), Text.from_ansi(text)))

        try:
            return await run_locally(request, settings, say=say, log_line=log_line, progress=progress, stop=stop)
        finally:
            quiet()

    stop = asyncio.Event()
    raise typer.Exit(_run(main(stop), stop=stop))


def _request(values: dict[str, Any]) -> tuple[Any, Any]:
    """The validated request and the settings; bad input ends the command with status 2."""
    from dockyard.checking.inputs import parse_request
    from dockyard.errors import DockyardError
    from dockyard.settings import settings_or_exit

    settings = settings_or_exit()
    budget = values["health_budget_s"]
    try:
        request = parse_request(
            values["image"], artifact=values["artifact"], server_port=values["server_port"],
            health_port=values["health_port"], entrypoint=values["entrypoint"], cmd=values["cmd"],
            env=values["env"], predict_data=values["predict_data"], content_type=values["content_type"],
            image_digest=values["image_digest"],
            health_budget_s=settings.health_deadline_s if budget is None else budget,
            patience_s=values["patience_s"], stop_timeout_s=values["stop_timeout_s"],
            docker_host=values["docker_host"],
        )
    except DockyardError as exc:
        _fail(exc.message)
    return request, settings


def _run(coroutine: Coroutine[Any, Any, T], *, stop: asyncio.Event | None = None) -> T:
    """Run to completion; errors end the command with status 2.

    The first Ctrl-C or SIGTERM sets `stop` when given (the coroutine winds down by itself),
    else cancels the coroutine, whose clean-up removes the container; later ones only say that
    the clean-up is under way, so it is never cut short.
    """
    from dockyard.errors import DockyardError

    async def guarded() -> T:
        task = asyncio.ensure_future(coroutine)
        loop = asyncio.get_running_loop()
        signalled = False

        def interrupt() -> None:
            nonlocal signalled
            if signalled:
                err.print("[yellow]still stopping: the container is being stopped and removed[/]")
                return
            signalled = True
            if stop is not None:
                stop.set()
            else:
                task.cancel()

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, interrupt)
        return await task

    try:
        return asyncio.run(guarded())
    except DockyardError as exc:
        _fail(exc.message)
    except (KeyboardInterrupt, asyncio.CancelledError):
        err.print("[yellow]interrupted: nothing is left running[/]")
        raise typer.Exit(130) from None


def _fail(message: str) -> NoReturn:
    err.print(f"[red]error:[/] {escape(message)}")
    raise typer.Exit(2)

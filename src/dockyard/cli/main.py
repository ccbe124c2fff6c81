"""The `dockyard` command."""

from __future__ import annotations

import logging
from pathlib import Path

import typer
from rich.console import Console

app = typer.Typer(help="dockyard: self-hosted bring-your-own-container model deployments.", no_args_is_help=True)
console = Console(stderr=True)


from dockyard.cli.deployments import deployments, work_requests  # noqa: E402

app.add_typer(deployments, name="deployments")
app.add_typer(work_requests, name="work-requests")

from dockyard.cli.users import keys, users  # noqa: E402

app.add_typer(users, name="users")
app.add_typer(keys, name="keys")
from dockyard.cli import check as local_checks  # noqa: E402
app.command("check")(local_checks.check)
app.command("run")(local_checks.run)
from dockyard.cli.logs import logs as deployment_logs  # noqa: E402
app.command("logs")(deployment_logs)


@app.callback()
def main() -> None:
    """dockyard: self-hosted bring-your-own-container model deployments."""


@app.command()
def serve(
    host: str = typer.Option(None, help="Address to listen on (default 127.0.0.1; env DOCKYARD_HOST)."),
    port: int = typer.Option(None, help="Port to listen on (default 8080; env DOCKYARD_PORT)."),
    data_dir: Path = typer.Option(None, "--data-dir", help="Where state lives (default ~/.dockyard; env DOCKYARD_DATA_DIR)."),
    runtime: str = typer.Option(None, help="auto | docker | process | fake (env DOCKYARD_RUNTIME)."),
    role: str = typer.Option("all", help="all: control plane, reconciler and gateway; gateway: the data plane alone, routing from the shared database."),
    log_level: str = typer.Option("info", help="debug | info | warning | error"),
    example: bool = typer.Option(False, "--example", help="Deploy the bundled example model and print a predict call."),
) -> None:
    """Run the control plane, the reconciler and the gateway in one process."""
    import uvicorn

    from dockyard.server import create_app, create_gateway_app, serve_all
    from dockyard.settings import Settings

    overrides = {k: v for k, v in {"host": host, "port": port, "data_dir": data_dir, "runtime": runtime}.items() if v is not None}
    settings = Settings(**overrides)
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per probe is noise
    if role == "gateway":
        console.print(f"[bold]dockyard gateway[/] on [cyan]http://{settings.host}:{settings.port}[/] (routes from {settings.resolved_database_url})")
        uvicorn.run(create_gateway_app(settings), host=settings.host, port=settings.port, log_level=log_level, access_log=False)
        return
    if role != "all":
        console.print(f"[red]--role {role!r}[/] is not known; use all or gateway")
        raise typer.Exit(2)
    on_ready = None
    if example:
        from dockyard.example import deploy_example

        async def on_ready(server: object) -> None:
            # plain print: a wrapped curl line could not be pasted
            await deploy_example(server.services, lambda line: print(line, flush=True))  # type: ignore[attr-defined]

    application = create_app(settings, on_ready=on_ready)
    console.print(
        f"[bold]dockyard[/] serving on [cyan]http://{settings.host}:{settings.port}[/] "
        f"(data in {settings.data_dir}, runtime {application.state.server.runtime.name})"
    )
    uvicorn.run(serve_all(application, settings), host=settings.host, port=settings.port, log_level=log_level, access_log=False)


if __name__ == "__main__":
    app()

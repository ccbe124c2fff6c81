"""The `dockyard` command."""

from __future__ import annotations

import logging
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape

app = typer.Typer(help="dockyard: self-hosted bring-your-own-container model deployments.", no_args_is_help=True)
console = Console(stderr=True)


from dockyard.cli.deployments import deployments, predict, work_requests  # noqa: E402

app.add_typer(deployments, name="deployments")
app.add_typer(work_requests, name="work-requests")
app.command("predict")(predict)

from dockyard.cli.users import keys, users  # noqa: E402
from dockyard.cli import access as access_cli  # noqa: E402

app.add_typer(users, name="users")
app.add_typer(keys, name="keys")
app.add_typer(access_cli.tenancies, name="tenancies")
app.add_typer(access_cli.compartments, name="compartments")
app.add_typer(access_cli.groups, name="groups")
app.add_typer(access_cli.policies, name="policies")
app.add_typer(access_cli.registries, name="registries")
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
    insecure_no_auth: bool = typer.Option(
        False, "--insecure-no-auth", help="Accept unsigned requests (loopback binds only; env DOCKYARD_INSECURE_NO_AUTH)."
    ),
    gateway_workers: int = typer.Option(
        None, "--gateway-workers", help="--role gateway: processes sharing the port (SO_REUSEPORT); default one per two cores."
    ),
) -> None:
    """Run the control plane, the reconciler and the gateway in one process."""
    from dockyard.server import create_app, serve_all
    from dockyard.settings import settings_or_exit
    from dockyard.store.metadata import SqlMetadataStore

    from dockyard.auth.bootstrap import client_hints, require_safe_bind
    from dockyard.errors import DockyardError

    overrides = {k: v for k, v in {"host": host, "port": port, "data_dir": data_dir, "runtime": runtime}.items() if v is not None}
    if insecure_no_auth:
        overrides["insecure_no_auth"] = True
    settings = settings_or_exit(**overrides)
    try:
        require_safe_bind(settings.host, settings.insecure_no_auth)
    except DockyardError as exc:
        console.print(f"[red]refusing to start:[/] {escape(exc.message)}")
        raise typer.Exit(2) from None
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings.apply_access_log_lines()
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per probe is noise
    try:
        # Opened once up front: a database URL that is wrong, a driver missing or a database down
        # is one clear line here rather than a traceback from whichever process opens it first.
        SqlMetadataStore(settings.resolved_database_url).close()
    except DockyardError as exc:
        console.print(f"[red]refusing to start:[/] {escape(exc.message)}")
        raise typer.Exit(2) from None
    if role == "gateway":
        from dockyard.cli.gateway_workers import default_workers, serve_workers

        workers = gateway_workers if gateway_workers is not None else default_workers()
        if workers < 1:
            console.print(f"[red]--gateway-workers {workers}[/]: a gateway needs at least 1 worker process")
            raise typer.Exit(2)
        console.print(f"[bold]dockyard gateway[/] on [cyan]http://{settings.host}:{settings.port}[/] "
                      f"({workers} worker{'s' if workers > 1 else ''}, routes from {settings.database_for_display})")  # fmt: skip
        # A supervisor and its workers even for one: the supervisor stores the access log, off
        # the serving process's CPU and GIL (cli/gateway_workers.py), and restarts a worker that dies.
        serve_workers(overrides, workers, log_level)
        return
    if gateway_workers is not None:
        console.print("[red]--gateway-workers[/] applies to --role gateway; with --role all the gateway shares the control plane's process")
        raise typer.Exit(2)
    if role != "all":
        console.print(f"[red]--role {role!r}[/] is not known; use all or gateway")
        raise typer.Exit(2)
    on_ready = None
    if example:
        from dockyard.example import deploy_example

        async def on_ready(server: object) -> None:
            # plain print: a wrapped curl line could not be pasted
            await deploy_example(server, lambda line: print(line, flush=True))

    application = create_app(settings, on_ready=on_ready)
    console.print(
        f"[bold]dockyard[/] serving on [cyan]http://{settings.host}:{settings.port}[/] "
        f"(data in {settings.data_dir}, runtime {application.state.server.runtime.name})"
    )
    if settings.insecure_no_auth:
        console.print("[yellow]--insecure-no-auth:[/] unsigned requests act as an anonymous administrator")
    for line in client_hints(application.state.server.admin_config):
        console.print(line, highlight=False, soft_wrap=True)
    # dockyard's own HTTP server, as for --role gateway: it offers predicts to the gateway's
    # direct path first (the control plane's requests go to its ASGI app as with any server).
    from dockyard.gateway.httpserve import serve as serve_http

    serve_http(serve_all(application, settings), host=settings.host, port=settings.port, **settings.http_server_options())


if __name__ == "__main__":
    app()

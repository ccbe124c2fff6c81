"""`dockyard deployments ...` and `dockyard work-requests ...`"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from dockyard.cli.client import ApiClient, ApiError

deployments = typer.Typer(help="Model deployments.", no_args_is_help=True)
work_requests = typer.Typer(help="Work requests (progress of long operations).", no_args_is_help=True)
out = Console()
err = Console(stderr=True)

EndpointOption = typer.Option(None, "--endpoint", envvar="DOCKYARD_ENDPOINT", help="dockyard server URL (default http://127.0.0.1:8080).")


def _fail(exc: ApiError) -> None:
    err.print(f"[red]{exc.code}[/]: {exc.message}")
    raise typer.Exit(1)


@deployments.command("list")
def list_deployments(
    compartment_id: str = typer.Option(..., "--compartment-id", "-c", envvar="DOCKYARD_COMPARTMENT_ID"),
    state: str = typer.Option(None, "--state", help="Only deployments in this lifecycle state."),
    endpoint: str = EndpointOption,
) -> None:
    """List deployments of a compartment."""
    try:
        items = ApiClient(endpoint).list_all("/modelDeployments", compartmentId=compartment_id, lifecycleState=state)
    except ApiError as exc:
        _fail(exc)
    table = Table("id", "name", "state", "instances", "url")
    for d in items:
        count = (d.get("modelDeploymentSystemData") or {}).get("currentInstanceCount", 0)
        table.add_row(d["id"], d.get("displayName") or "", d["lifecycleState"], str(count), d.get("modelDeploymentUrl") or "")
    out.print(table)


@deployments.command("get")
def get_deployment(deployment_id: str, endpoint: str = EndpointOption) -> None:
    """Show one deployment as JSON."""
    try:
        out.print_json(json.dumps(ApiClient(endpoint).get(f"/modelDeployments/{deployment_id}")))
    except ApiError as exc:
        _fail(exc)


@deployments.command("instances")
def instances(deployment_id: str, endpoint: str = EndpointOption) -> None:
    """What runs for a deployment: each instance's state, health, restarts and last probe."""
    try:
        client = ApiClient(endpoint)
        deployment = client.get(f"/modelDeployments/{deployment_id}")
        rows = client.get(f"/modelDeployments/{deployment_id}/instances")
    except ApiError as exc:
        _fail(exc)
    out.print(f"[bold]{deployment.get('displayName')}[/] {deployment['lifecycleState']}: {deployment.get('lifecycleDetails') or ''}")
    table = Table("instance", "state", "health", "version", "restarts", "started", "last probe", "endpoint", "detail")
    for r in rows:
        table.add_row(
            r["instanceId"], r["state"], r["health"], "current" if r["isCurrentVersion"] else "previous", str(r["restarts"]),
            r.get("timeStarted") or "", f"{r.get('lastProbe') or ''} {r.get('timeLastProbe') or ''}".strip(),
            r.get("endpoint") or "", (r.get("detail") or "")[-200:],
        )  # fmt: skip
    out.print(table)


@work_requests.command("get")
def get_work_request(work_request_id: str, endpoint: str = EndpointOption) -> None:
    """A work request with its logs (oldest first) and errors."""
    try:
        client = ApiClient(endpoint)
        wr = client.get(f"/workRequests/{work_request_id}")
        logs = client.list_all(f"/workRequests/{work_request_id}/logs")
        errors = client.list_all(f"/workRequests/{work_request_id}/errors")
    except ApiError as exc:
        _fail(exc)
    out.print(f"[bold]{wr['operationType']}[/] {wr['status']} {wr['percentComplete']:.0f}%")
    for entry in logs:
        out.print(f"  {entry['timestamp']}  {entry['message']}")
    for entry in errors:
        out.print(f"  [red]{entry['timestamp']}  {entry['code']}: {entry['message']}[/]")


def predict(
    deployment_id: str,
    data: str = typer.Option(None, "--data", "-d", help="The request body (JSON text); '@FILE' reads a file, '-' stdin."),
    path: str = typer.Option("/predict", "--path", help="The deployment path to call: /predict, /predict/<suffix>, /predictWithResponseStream."),
    content_type: str = typer.Option("application/json", "--content-type"),
    endpoint: str = EndpointOption,
) -> None:
    """Call a deployment's predict endpoint, signed like every request, and print the answer."""
    if data is None or data == "-":
        body = sys.stdin.buffer.read()
    elif data.startswith("@"):
        body = Path(data[1:]).expanduser().read_bytes()
    else:
        body = data.encode()
    try:
        client = ApiClient(endpoint, timeout_s=120)
        url = client.get(f"/modelDeployments/{deployment_id}")["modelDeploymentUrl"]
        with client.http.stream("POST", f"{url}{path}", content=body, headers={"content-type": content_type}) as response:
            if response.status_code >= 400:
                response.read()
                client.checked(response)
            for chunk in response.iter_raw():
                sys.stdout.buffer.write(chunk)
                sys.stdout.buffer.flush()
    except ApiError as exc:
        _fail(exc)
    if sys.stdout.isatty():
        sys.stdout.write("\n")

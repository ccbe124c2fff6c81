"""`dockyard logs ID`: a deployment's access and predict logs, and following them as they come."""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import typer

from dockyard.cli.client import ApiClient, ApiError


def format_entry(entry: dict[str, Any]) -> str:
    """One readable line: time, category, then what the entry says."""
    when = entry.get("time") or ""
    if entry.get("category") == "access":
        f = entry.get("fields") or {}
        upstream = f.get("upstreamMs")
        parts = [
            f"{f.get('method', '?')} {f.get('path', '?')} {f.get('status', '?')}",
            f"{float(f.get('latencyMs') or 0):.1f} ms" + (f" (upstream {float(upstream):.1f} ms)" if upstream is not None else ""),
            f"in {f.get('bytesIn', 0)} B out {f.get('bytesOut', 0)} B",
            f"instance {entry.get('instanceId') or '-'}",
            f"request {f.get('requestId') or '-'}",
        ]
        if f.get("caller"):
            parts.append(f"caller {f['caller']}")
        if f.get("error"):
            parts.append(f"error: {f['error']}")
        return f"{when} access  " + "  ".join(parts)
    stream = entry.get("stream") or ""
    return f"{when} predict {entry.get('instanceId') or '-'} {stream}: {entry.get('message', '')}"


def logs(
    deployment_id: str = typer.Argument(..., help="The model deployment's OCID."),
    category: str = typer.Option(None, "--category", help="access | predict (default: both)."),
    since: str = typer.Option(None, "--since", help="Only entries from then on: a duration back from now (30s, 10m, 2h, 1d), an RFC 3339 time or a seq cursor."),
    tail: int = typer.Option(None, "--tail", help="Only the last N entries (at most 1000) before following."),
    follow: bool = typer.Option(False, "--follow", "-f", help="Keep printing new entries as they are stored (Ctrl-C ends)."),
    interval_s: float = typer.Option(1.0, "--interval", help="Seconds between polls when following."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per line instead of readable lines."),
    endpoint: str = typer.Option(None, "--endpoint", envvar="DOCKYARD_ENDPOINT", help="dockyard server URL (default http://127.0.0.1:8080)."),
) -> None:
    """Print a deployment's access log (one line per request) and predict log (each instance's
    output), oldest first; with --follow, keep printing new lines as they happen."""
    try:
        client = ApiClient(endpoint)
        params: dict[str, Any] = {"category": category, "since": since, "tail": tail, "limit": 1000}
        waiting = False
        while True:
            try:
                response = client.call("GET", f"/modelDeployments/{deployment_id}/logs",
                                       params={k: v for k, v in params.items() if v is not None})
            except ApiError as exc:
                # Following across a restart of the server: the cursor stays valid, so wait for it.
                if not follow or "page" not in params or not (exc.status == 0 or exc.status >= 500):
                    raise
                if not waiting:
                    print(f"({exc.message}; still following)", file=sys.stderr, flush=True)
                    waiting = True
                time.sleep(interval_s)
                continue
            waiting = False
            entries = response.json()
            for entry in entries:
                print(json.dumps(entry) if as_json else format_entry(entry), flush=True)
            cursor = response.headers.get("opc-next-page")
            params = {"category": category, "page": cursor, "limit": 1000} if cursor else params
            if len(entries) >= 1000 and "tail" not in params:
                continue  # a full page: more is waiting
            if not follow:
                return
            time.sleep(interval_s)
    except ApiError as exc:
        print(f"{exc.code}: {exc.message}", file=sys.stderr, flush=True)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        raise typer.Exit(0) from None
    except BrokenPipeError:  # `dockyard logs ID | head`: the reader has all it wanted
        sys.stdout = None  # type: ignore[assignment]  # nothing more to flush at exit
        raise typer.Exit(0) from None

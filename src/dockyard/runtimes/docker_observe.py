"""Read an `Instance` out of a container's inspect document (pure, no I/O).

The inspect document is the Engine API's `GET /containers/{id}/json` (Podman's compatible
API answers the same shape). Exit codes, the OOM flag, Docker's own health status and the last
log lines become `Instance.detail`, worded for the user whose deployment failed.
"""

from __future__ import annotations

import signal
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

from dockyard.runtimes.base import Health, Instance, InstanceState
from dockyard.runtimes.docker_config import MIB, Labels

_HEALTH = {"healthy": Health.HEALTHY, "unhealthy": Health.UNHEALTHY, "starting": Health.UNKNOWN}
_ALIVE = {"running": InstanceState.RUNNING, "paused": InstanceState.RUNNING,
          "restarting": InstanceState.RUNNING}


def host_port(attrs: Mapping[str, Any], container_port: int | None) -> int | None:
    """The loopback host port the engine bound `container_port` to, if it is bound now."""
    if container_port is None:
        return None
    ports = (attrs.get("NetworkSettings") or {}).get("Ports") or {}
    for binding in ports.get(f"{container_port}/tcp") or []:
        text = binding.get("HostPort") or ""
        if text.isdigit() and int(text) > 0:
            return int(text)
    return None


def is_running(attrs: Mapping[str, Any]) -> bool:
    return (attrs.get("State") or {}).get("Status") in _ALIVE


def has_stopped(attrs: Mapping[str, Any]) -> bool:
    """Exited or dead, or never started because the engine could not run the command."""
    state = attrs.get("State") or {}
    status = state.get("Status")
    return status in ("exited", "dead") or (status == "created" and bool(state.get("Error")))


def container_ports(attrs: Mapping[str, Any], keys: Labels) -> tuple[int | None, int | None]:
    labels = (attrs.get("Config") or {}).get("Labels") or {}
    return _int(labels.get(keys.server_port)), _int(labels.get(keys.health_port))


def to_instance(attrs: Mapping[str, Any], keys: Labels, log_tail: str = "") -> Instance:
    """The `Instance` a container is; `log_tail` is used in the detail of stopped ones."""
    labels = (attrs.get("Config") or {}).get("Labels") or {}
    state = attrs.get("State") or {}
    status = state.get("Status") or ""
    server_port, health_port = container_ports(attrs, keys)

    if status in _ALIVE:
        run_state = InstanceState.RUNNING
    elif has_stopped(attrs) or status == "removing":
        run_state = InstanceState.EXITED
    else:
        run_state = InstanceState.STARTING  # created, not started yet

    exit_code = state.get("ExitCode") if run_state is InstanceState.EXITED else None
    health_doc = state.get("Health") or {}
    health = _HEALTH.get(health_doc.get("Status") or "", Health.UNKNOWN)
    alive = run_state is InstanceState.RUNNING

    return Instance(
        instance_id=labels.get(keys.instance_id) or str(attrs.get("Name", "")).lstrip("/"),
        deployment_id=labels.get(keys.deployment_id, ""),
        spec_hash=labels.get(keys.spec_hash, ""),
        state=run_state,
        health=health if alive else Health.UNKNOWN,
        host="127.0.0.1",
        server_port=host_port(attrs, server_port) if alive else None,
        health_port=host_port(attrs, health_port) if alive else None,
        started_at=parse_time(state.get("StartedAt")),
        exit_code=int(exit_code) if exit_code is not None else None,
        restarts=int(attrs.get("RestartCount") or 0),
        detail=_detail(attrs, labels.get(keys.limits_note, ""), run_state, health, log_tail),
    )


def _detail(attrs: Mapping[str, Any], note: str, run_state: InstanceState, health: Health,
            log_tail: str) -> str:
    state = attrs.get("State") or {}
    parts: list[str] = []
    if run_state is InstanceState.EXITED:
        code = state.get("ExitCode")
        limit = (attrs.get("HostConfig") or {}).get("Memory") or 0
        parts.append(f"exit code {code}{_meaning(code, bool(state.get('OOMKilled')), limit)}")
        if state.get("OOMKilled"):
            at = f" at its {limit // MIB} MiB memory limit" if limit else ""
            parts.append(
                f"oom: out of memory (OOMKilled): the container was killed{at}; use a shape "
                "with more memory or make the model server use less"
            )
        if state.get("Error"):
            parts.append(f"engine error: {state['Error']}")
    elif health is Health.UNHEALTHY:
        parts.append("health: Docker's HEALTHCHECK reports unhealthy"
                     + _last_health_output(state.get("Health") or {}))
    if note:
        parts.append(note)
    text = "; ".join(parts)
    if run_state is InstanceState.EXITED and log_tail.strip():
        text += "\nlast log lines:\n" + log_tail.rstrip("\n")
    return text


def _meaning(code: object, oom: bool, memory_limit: int) -> str:
    # The shell's conventions, which runc and the init process follow too.
    if code == 127:
        return (" (the command was not found in the image: check entrypoint and cmd, or the "
                "image's ENTRYPOINT/CMD, C10)")
    if code == 126:
        return " (the command is not executable: check its permissions in the image)"
    if isinstance(code, int) and 128 < code < 160 and not oom:
        try:
            name = signal.Signals(code - 128).name
        except ValueError:
            return ""
        if name == "SIGKILL" and memory_limit:
            # Podman flags OOMKilled only when PID 1 itself was killed, and with an init
            # process the server never is PID 1: say what is likely.
            return (f" (killed by SIGKILL: most likely out of memory at its "
                    f"{memory_limit // MIB} MiB limit, or killed from outside)")
        return f" (killed by {name})"
    return ""


def _last_health_output(health: Mapping[str, Any]) -> str:
    entries = health.get("Log") or []
    if not entries:
        return ""
    last = entries[-1]
    output = " ".join(str(last.get("Output") or "").split())[:300]
    return f" (last check: exit {last.get('ExitCode')}{', ' + output if output else ''})"


def parse_time(text: str | None) -> datetime | None:
    """Docker's RFC 3339 times carry nanoseconds; the zero time means 'never'."""
    if not text or text.startswith("0001-01-01"):
        return None
    main, _, rest = text.partition(".")
    fraction, zone = "", "Z"
    if rest:
        digits = len(rest) - len(rest.lstrip("0123456789"))
        fraction, zone = rest[:digits][:6], rest[digits:]
    elif main.endswith("Z"):
        main = main[:-1]
    else:
        main, zone = main[:19], main[19:]
    if zone in ("", "Z"):
        zone = "+00:00"
    try:
        moment = datetime.fromisoformat(f"{main}.{fraction or '0'}{zone}")
    except ValueError:
        return None
    return moment.astimezone(timezone.utc)


def _int(value: object) -> int | None:
    try:
        return int(str(value))
    except (TypeError, ValueError):
        return None

"""Turn an `InstanceSpec` into the Docker Engine API's container configuration (pure, no I/O).

Kept apart from `docker.py` so every rule here is a plain function of its inputs: what the
engine needs to honour entrypoint/cmd with Docker semantics, the resource limits clamped to
the host, the service's HEALTHCHECK (H1), the read-only artifact mount (A3), the labels that
mark a container as ours. Nothing here imports the `docker` package; the dictionaries use the
Engine API's own field names.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from dockyard.errors import InvalidParameter
from dockyard.runtimes.base import InstanceSpec

ARTIFACT_MOUNT = "/opt/ds/model/deployed_model"  # A3
_NS = 1_000_000_000
GIB = 1024**3
MIB = 1024**2


# --- labels and names ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Labels:
    """The label keys of one runtime; the prefix lets several services (or tests) share an engine."""

    prefix: str

    @property
    def managed(self) -> str:
        return f"{self.prefix}.managed"

    @property
    def deployment_id(self) -> str:
        return f"{self.prefix}.deployment-id"

    @property
    def spec_hash(self) -> str:
        return f"{self.prefix}.spec-hash"

    @property
    def instance_id(self) -> str:
        return f"{self.prefix}.instance-id"

    @property
    def server_port(self) -> str:
        return f"{self.prefix}.server-port"  # container-side, to find its host port again

    @property
    def health_port(self) -> str:
        return f"{self.prefix}.health-port"

    @property
    def limits_note(self) -> str:
        return f"{self.prefix}.limits-note"  # why the limits differ from the shape, if they do

    @property
    def purpose(self) -> str:
        return f"{self.prefix}.purpose"  # on throwaway containers (the curl check): never listed


def container_name(prefix: str, deployment_id: str) -> str:
    """``<prefix>-<short deployment id>-<random>``: readable in `docker ps`, unique per start.

    OCIDs end in a long unique segment; its last 12 characters tell deployments apart.
    """
    safe_prefix = re.sub(r"[^a-zA-Z0-9_.-]", "-", prefix).strip("-.") or "dockyard"
    tail = deployment_id.rsplit(".", 1)[-1].lower()
    short = re.sub(r"[^a-z0-9]", "", tail)[-12:] or "deployment"
    return f"{safe_prefix}-{short}-{secrets.token_hex(4)}"


# --- entrypoint and cmd -------------------------------------------------------------------------


def resolve_command(
    entrypoint: Sequence[str] | None,
    cmd: Sequence[str] | None,
    image_entrypoint: Sequence[str] | None,
    image_cmd: Sequence[str] | None,
) -> tuple[list[str] | None, list[str] | None]:
    """The (Entrypoint, Cmd) to send to the Engine API so the container runs what Docker would.

    Semantics (those of ``docker run [--entrypoint E] IMAGE [CMD...]``): ``None`` keeps the
    image's own value, ``[]`` clears it, a list replaces it; a non-empty entrypoint replaces
    the image's ENTRYPOINT *and* drops its CMD (the engine does this itself).

    The Engine API cannot say every one of these directly (measured on Docker 20.10):
    ``Entrypoint: []`` does clear the image's entrypoint, but ``Cmd: []`` is treated like a
    missing Cmd whenever the resulting entrypoint is empty, and the image's CMD comes back.
    So "image entrypoint, no arguments" is sent as the image's entrypoint spelled out (a
    non-empty Entrypoint stops the engine from filling in the image's CMD), and "no
    entrypoint, no cmd" is refused here: the engine would silently run the image's CMD.

    Raises `InvalidParameter` when nothing would be left to run.
    """
    ep = list(entrypoint) if entrypoint is not None else None
    args = list(cmd) if cmd is not None else None
    image_ep = list(image_entrypoint or [])
    image_args = list(image_cmd or [])

    effective_ep = image_ep if ep is None else ep
    if ep:  # an explicit entrypoint drops the image's CMD
        effective_args = args or []
    else:
        effective_args = image_args if args is None else args
    if not effective_ep and not effective_args:
        raise InvalidParameter(
            "start: nothing to run: with this entrypoint "
            f"({_describe(entrypoint, image_entrypoint)}) and cmd ({_describe(cmd, image_cmd)}) "
            "the container has no command; give a cmd or an entrypoint, or leave them unset "
            "to use the image's own",
            rule="C10",
        )
    if args == [] and ep is None:
        # Spell the image's entrypoint out: `Cmd: []` alone would bring the image's CMD back.
        return image_ep, []
    return ep, args


def _describe(value: Sequence[str] | None, image_value: Sequence[str] | None) -> str:
    if value is None:
        return f"the image's {list(image_value or [])}"
    return f"{list(value)}"


# --- resources ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Limits:
    nano_cpus: int | None
    memory_bytes: int | None
    shm_bytes: int | None
    note: str  # empty unless the shape was clamped to what the host has


def resource_limits(
    spec: InstanceSpec, host_cpus: int, host_memory_bytes: int, vcpus_per_ocpu: float
) -> Limits:
    """CPU and memory limits of the shape, clamped to the host, and /dev/shm's size.

    One OCPU is two vCPUs on OCI (`vcpus_per_ocpu`); a shape larger than the host still
    starts, limited to the host, and the note says so (shown in the instance's detail).
    """
    notes: list[str] = []
    nano_cpus = None
    if spec.ocpus is not None and spec.ocpus > 0:
        vcpus = spec.ocpus * vcpus_per_ocpu
        if host_cpus > 0 and vcpus > host_cpus:
            notes.append(
                f"the shape asks {_num(spec.ocpus)} OCPU = {_num(vcpus)} vCPU but the host has "
                f"{host_cpus}: CPU limited to {host_cpus} vCPU"
            )
            vcpus = float(host_cpus)
        nano_cpus = int(vcpus * _NS)
    memory = None
    if spec.memory_gb is not None and spec.memory_gb > 0:
        memory = int(spec.memory_gb * GIB)
        if host_memory_bytes > 0 and memory > host_memory_bytes:
            notes.append(
                f"the shape asks {_num(spec.memory_gb)} GB of memory but the host has "
                f"{host_memory_bytes / GIB:.1f} GB: memory limited to that"
            )
            memory = host_memory_bytes
    shm = parse_size(spec.shm_size, "SHM_SIZE") if spec.shm_size else None
    return Limits(nano_cpus, memory, shm, "; ".join(notes))


def _num(value: float) -> str:
    return f"{value:g}"


_SIZE = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([bkmgt]?)(?:i?b)?\s*", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


def parse_size(text: str, what: str) -> int:
    """Docker's size notation (``5g``, ``512m``, ``1024``; binary units) to bytes."""
    match = _SIZE.fullmatch(text)
    if not match:
        raise InvalidParameter(
            f"start: {what} {text!r} is not a size; write a number with an optional unit "
            "b, k, m or g, e.g. 5g or 512m"
        )
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


# --- the whole container configuration ------------------------------------------------------------


@dataclass(frozen=True)
class HealthSettings:
    start_period_s: float
    interval_s: float
    timeout_s: float
    retries: int


def healthcheck(spec: InstanceSpec, settings: HealthSettings, *, curl: bool) -> dict[str, object]:
    """The service's HEALTHCHECK (H1), replacing any the image declares.

    Without curl in the image (allowed only when the operator turned the C9 check off) the
    image's own check is switched off instead: it would fail forever, and the service probes
    from outside anyway.
    """
    if not curl:
        return {"Test": ["NONE"]}
    return {
        "Test": ["CMD", "curl", "-f", f"http://localhost:{spec.health_port}{spec.health_path}"],
        "StartPeriod": int(settings.start_period_s * _NS),
        "Interval": int(settings.interval_s * _NS),
        "Timeout": int(settings.timeout_s * _NS),
        "Retries": settings.retries,
    }


def port_bindings(spec: InstanceSpec) -> dict[str, tuple[str, None]]:
    """Server and health ports, on loopback only, host ports chosen by the engine.

    Equal ports give one key, hence one binding, so both roles share the same host port.
    """
    return {f"{port}/tcp": ("127.0.0.1", None) for port in (spec.server_port, spec.health_port)}


def labels(spec: InstanceSpec, keys: Labels, instance_id: str, note: str) -> dict[str, str]:
    result = {
        keys.managed: "true",
        keys.deployment_id: spec.deployment_id,
        keys.spec_hash: spec.spec_hash,
        keys.instance_id: instance_id,
        keys.server_port: str(spec.server_port),
        keys.health_port: str(spec.health_port),
    }
    if note:
        result[keys.limits_note] = note
    return result


def artifact_mounts(spec: InstanceSpec) -> list[dict[str, object]]:
    """The unpacked artifact, read-only at /opt/ds/model/deployed_model (A3)."""
    if spec.artifact_dir is None:
        return []
    source = spec.artifact_dir.resolve()
    if not source.is_dir():
        raise InvalidParameter(
            f"start: the unpacked artifact directory {source} does not exist; the artifact "
            "must be unpacked before its instances start"
        )
    return [{"Type": "bind", "Source": str(source), "Target": ARTIFACT_MOUNT, "ReadOnly": True}]


def environment(spec: InstanceSpec) -> Mapping[str, str]:
    return {str(k): str(v) for k, v in spec.environment.items()}

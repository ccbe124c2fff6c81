"""The settings of a `DockerRuntime`, its client of the engine, and how engine calls are made.

Every engine call is blocking, so it runs in a thread (`asyncio.to_thread`) under a deadline;
engine and registry failures become `DockyardError`s whose messages name the phase (pull /
start / health / oom / curl) and the contract rule where one applies. The runtime's parts
(`docker_images`, `docker_measure`, `docker`) build on `DockerEngine`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import docker
import docker.errors
import httpx
import requests

from dockyard.errors import (
    DockyardError,
    GatewayTimeout,
    InternalServerError,
    InvalidParameter,
    ServiceUnavailable,
)
from dockyard.runtimes import docker_config as config
from dockyard.runtimes.base import InstanceSpec

log = logging.getLogger("dockyard.runtimes.docker")

T = TypeVar("T")

GIB = 1024**3
# What runc and crun say when the command of a container does not exist in the image.
EXEC_MISSING = re.compile(r"executable file .*not found|no such file or directory|not found in \$path",
                          re.IGNORECASE)


@dataclass(frozen=True)
class PreparedImage:
    """What `prepare` found of one image: what `start` creates containers from."""

    image_id: str
    entrypoint: list[str] | None
    cmd: list[str] | None
    has_curl: bool


class DockerEngine:
    """What every part of `DockerRuntime` shares: its settings, its state, the engine client.

    Construction does no I/O: the engine is first contacted by the first call.
    """

    def __init__(
        self,
        base_url: str | None = None,
        *,
        health_start_period_s: float = 600,
        health_interval_s: float = 30,
        health_timeout_s: float = 3,
        health_retries: int = 3,
        require_curl: bool = True,
        max_uncompressed_bytes: int = 16 * GIB,
        stop_timeout_s: float = 10,
        registry_auth: Mapping[str, tuple[str, str]] | None = None,
        label_prefix: str = "dockyard",
        api_timeout_s: float = 60,
        pull_timeout_s: float = 1200,
        pull_idle_timeout_s: float = 300,
        curl_check_timeout_s: float = 30,
        ports_timeout_s: float = 10,
        probe_timeout_s: float = 2,
        pids_limit: int = 4096,
        vcpus_per_ocpu: float = 2.0,
        detail_log_lines: int = 20,
        progress_interval_s: float = 2.0,
    ) -> None:
        """
        base_url: the engine's API (``unix:///var/run/docker.sock``, ``tcp://host:2375``, a
            Podman socket); None takes DOCKER_HOST or the default socket.
        health_*: the HEALTHCHECK put into every container (H1: 600 s start period, every
            30 s, 3 s timeout, 3 retries).
        require_curl: refuse images without curl (C9); when False such images run with the
            in-container HEALTHCHECK off and are probed from outside only.
        max_uncompressed_bytes: the image size limit (C7: 16 GB).
        stop_timeout_s: SIGTERM-to-SIGKILL grace on stop.
        registry_auth: ``{registry host: (user, password)}``, used when pulling (C8).
        label_prefix: the prefix of the labels (and container names) marking our containers.
        api_timeout_s: the HTTP timeout of each engine request.
        pull_timeout_s / pull_idle_timeout_s: a whole pull, and silence within one.
        curl_check_timeout_s: the throwaway container running ``curl --version``.
        ports_timeout_s: how long `start` waits for the engine to report host ports.
        probe_timeout_s: one health probe from the host.
        pids_limit: processes per container (a fork bomb stays inside).
        vcpus_per_ocpu: vCPUs per OCPU of a shape (2 on OCI).
        detail_log_lines: log lines in the detail of an exited instance.
        progress_interval_s: at most one pull progress line per interval (plus one per layer).
        """
        self._base_url = base_url
        self._health = config.HealthSettings(health_start_period_s, health_interval_s,
                                             health_timeout_s, health_retries)
        self._require_curl = require_curl
        self._max_bytes = max_uncompressed_bytes
        self._stop_timeout_s = stop_timeout_s
        self._registry_auth = {host.lower(): creds for host, creds in (registry_auth or {}).items()}
        self._keys = config.Labels(label_prefix)
        self._label_prefix = label_prefix
        self._api_timeout_s = api_timeout_s
        self._pull_timeout_s = pull_timeout_s
        self._pull_idle_timeout_s = pull_idle_timeout_s
        self._curl_timeout_s = curl_check_timeout_s
        self._ports_timeout_s = ports_timeout_s
        self._probe_timeout_s = probe_timeout_s
        self._pids_limit = pids_limit
        self._vcpus_per_ocpu = vcpus_per_ocpu
        self._detail_log_lines = detail_log_lines
        self._progress_interval_s = progress_interval_s

        self._client: docker.DockerClient | None = None
        self._client_lock = asyncio.Lock()
        self._http: httpx.AsyncClient | None = None
        self._host: tuple[int, int, bool] | None = None  # cpus, memory bytes, swap limit support
        self._prepared: dict[str, PreparedImage] = {}
        self._image_locks: dict[str, asyncio.Lock] = {}

    # --- the engine ---------------------------------------------------------------------------------

    async def _engine(self, phase: str) -> docker.DockerClient:
        if self._client is not None:
            return self._client
        async with self._client_lock:
            if self._client is None:
                self._client = await self._call(phase, self._connect)
            return self._client

    def _connect(self) -> docker.DockerClient:
        # version="auto": the SDK's default API version is newer than Debian's engine (1.41)
        # and Podman's compatible API speak.
        if self._base_url is None:
            return docker.from_env(version="auto", timeout=int(self._api_timeout_s))
        return docker.DockerClient(base_url=self._base_url, version="auto",
                                   timeout=int(self._api_timeout_s))

    def _where(self) -> str:
        return self._base_url or os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"

    async def _call(self, phase: str, fn: Callable[[], T], timeout: float | None = None) -> T:
        """Run `fn` in a thread under a deadline; translate engine failures for `phase`."""
        limit = timeout if timeout is not None else self._api_timeout_s * 2
        try:
            return await asyncio.wait_for(asyncio.to_thread(fn), limit)
        except (DockyardError, Internal):
            raise
        except asyncio.TimeoutError as exc:
            raise GatewayTimeout(f"{phase}: the Docker engine at {self._where()} did not finish "
                                 f"within {limit:g} s; check that it is healthy (docker info)") from exc
        except requests.exceptions.Timeout as exc:
            raise GatewayTimeout(f"{phase}: the Docker engine at {self._where()} did not answer "
                                 f"within {self._api_timeout_s:g} s; check that it is healthy "
                                 "(docker info)") from exc
        except requests.exceptions.ConnectionError as exc:
            raise ServiceUnavailable(_unreachable(phase, self._where())) from exc
        except docker.errors.APIError as exc:
            raise _api_error(phase, exc) from exc
        except docker.errors.DockerException as exc:
            # Raised by the SDK before any request, e.g. when /version cannot be fetched.
            if "connection" in str(exc).lower() or "fetching server api version" in str(exc).lower():
                raise ServiceUnavailable(_unreachable(phase, self._where())) from exc
            raise InternalServerError(f"{phase}: the Docker client failed: {exc}") from exc
        except PortsTimeout as exc:
            raise GatewayTimeout(f"start: the engine did not publish the container's ports "
                                 f"within {exc.args[0]:g} s; check the engine (docker info)") from exc


class Internal(Exception):
    """Signals between a worker thread and its async caller; never leave the runtime's modules."""


class PortsTimeout(Exception):
    pass


def image_of(spec: InstanceSpec) -> str:
    if not spec.image:
        raise InvalidParameter("start: the docker runtime needs a container image; this "
                               f"deployment ({spec.kind}) has none")
    return spec.image


def inspect_image(client: docker.DockerClient, image: str) -> dict[str, Any] | None:
    try:
        return dict(client.api.inspect_image(image))
    except docker.errors.ImageNotFound:
        return None


def remove_quietly(client: docker.DockerClient, container_id: str) -> None:
    try:
        client.api.remove_container(container_id, v=True, force=True)
    except (docker.errors.APIError, requests.exceptions.RequestException):
        log.warning("could not remove container %s; remove it by hand", container_id)


def decode(raw: bytes | str) -> str:
    return raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw


def _unreachable(phase: str, where: str) -> str:
    return (f"{phase}: the Docker engine at {where} does not answer; start it "
            "(scripts/infra/docker.sh) or point the runtime at a running engine (DOCKER_HOST)")


def _api_error(phase: str, exc: docker.errors.APIError) -> DockyardError:
    explanation = str(exc.explanation or exc)
    status = exc.status_code or 500
    if phase == "start" and "port is already allocated" in explanation:
        return ServiceUnavailable(f"start: a host port is taken ({explanation}); retry")
    if 400 <= status < 500 and status != 404:
        return InvalidParameter(f"{phase}: the Docker engine refused the request: {explanation}")
    return InternalServerError(f"{phase}: the Docker engine failed: {explanation}")

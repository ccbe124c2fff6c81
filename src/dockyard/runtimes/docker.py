"""`DockerRuntime`: instances are containers on a Docker engine (or Podman's compatible API).

The `docker_*` modules are the only ones that import the `docker` package. This one holds the
`Runtime` protocol and the container lifecycle (create, start, list, probe, stop); the parts it
builds on are `docker_engine` (settings, the engine client, calls under a deadline with errors
named by phase), `docker_images` (pull by digest, C7 size, C9 curl) and `docker_measure` (what
`dockyard check` and `dockyard run` measure).

What a container gets (see `docker_config` for the pure rules): the pinned image (D2), the
artifact read-only at /opt/ds/model/deployed_model (A3), the service's HEALTHCHECK (H1),
ports published on 127.0.0.1 only with engine-chosen host ports, CPU/memory/shm limits from
the shape, an init process, no-new-privileges and a pids limit, and labels that let `list`
find it again after a restart of the service.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import docker
import docker.errors
import httpx

from dockyard.errors import DockyardError, InvalidParameter
from dockyard.runtimes import docker_config as config
from dockyard.runtimes import triton
from dockyard.runtimes.base import Instance, InstanceSpec, ProbeResult
from dockyard.runtimes.docker_engine import (
    EXEC_MISSING,
    GIB,
    Internal,
    PortsTimeout,
    PreparedImage,
    decode,
    image_of,
    remove_quietly,
)
from dockyard.runtimes.docker_images import CURL_FIX, DockerImages
from dockyard.runtimes.docker_measure import DockerMeasurements, ImageFacts, Termination
from dockyard.runtimes.docker_observe import has_stopped, host_port, is_running, to_instance

__all__ = ["CURL_FIX", "GIB", "DockerRuntime", "ImageFacts", "Termination"]


class DockerRuntime(DockerImages, DockerMeasurements):
    """Runs each instance as one container; see the module docstring for what it gets.

    Construction does no I/O: the engine is first contacted by the first call.
    """

    name = "docker"

    # --- the Runtime protocol (`prepare` is in `docker_images`) ----------------------------------

    async def start(self, spec: InstanceSpec) -> Instance:
        """Create and start one container for `spec`; returns it with its host-side ports.

        Prepares the image first if this runtime has not yet (a restart pulls again, C12).
        A container that exits at once is returned as EXITED, with its logs in the detail.
        """
        image = image_of(spec)
        prepared = await self._prepared_image(spec)
        try:
            return await self._create_and_start(spec, prepared)
        except _ImageGone:
            # Removed from the engine since it was prepared (pruned): pull it again, once.
            self._prepared.pop(image, None)
            prepared = await self._prepared_image(spec)
            return await self._create_and_start(spec, prepared)

    async def stop(self, instance_id: str) -> None:
        """Stop (SIGTERM, then SIGKILL after stop_timeout_s) and remove; unknown ids are fine.

        Only containers carrying this runtime's managed label are touched.
        """
        client = await self._engine("stop")
        keys = self._keys

        def stop() -> None:
            try:
                attrs = client.api.inspect_container(instance_id)
            except docker.errors.NotFound:
                return
            if ((attrs.get("Config") or {}).get("Labels") or {}).get(keys.managed) != "true":
                return  # not ours: behave as for an unknown id
            try:
                if is_running(attrs):
                    client.api.stop(attrs["Id"], timeout=int(self._stop_timeout_s))
                client.api.remove_container(attrs["Id"], v=True, force=True)
            except docker.errors.NotFound:
                return  # removed by someone else meanwhile

        await self._call("stop", stop, timeout=self._stop_timeout_s + self._api_timeout_s * 2)

    async def list(self, deployment_id: str | None = None) -> list[Instance]:
        """Every container with our managed label (running or exited), as `Instance`s."""
        client = await self._engine("list")
        filters = [f"{self._keys.managed}=true"]
        if deployment_id is not None:
            filters.append(f"{self._keys.deployment_id}={deployment_id}")

        def observe() -> list[Instance]:
            found = []
            for summary in client.api.containers(all=True, filters={"label": filters}):
                try:
                    attrs = client.api.inspect_container(summary["Id"])
                    tail = ""
                    if has_stopped(attrs):
                        tail = decode(client.api.logs(summary["Id"], tail=self._detail_log_lines))
                except docker.errors.NotFound:
                    continue  # removed between listing and inspecting
                found.append(to_instance(attrs, self._keys, tail))
            return found

        return await self._call("list", observe)

    async def probe(self, instance: Instance, path: str) -> ProbeResult:
        """GET 127.0.0.1:<host health port><path> from the host; healthy only on 200."""
        if instance.health_port is None:
            return ProbeResult(False, None, "health: no health port is published (the container "
                                            "is not running)")
        url = f"http://{instance.host}:{instance.health_port}{path}"
        if self._http is None:
            # trust_env=False: a proxy from the environment must never see loopback probes.
            self._http = httpx.AsyncClient(timeout=self._probe_timeout_s, trust_env=False)
        try:
            response = await self._http.get(url)
        except httpx.TimeoutException:
            return ProbeResult(False, None, f"health: GET {path} got no answer within "
                                            f"{self._probe_timeout_s:g} s")
        except httpx.HTTPError as exc:
            return ProbeResult(False, None, f"health: GET {path} failed: {exc or type(exc).__name__}")
        if response.status_code == 200:
            return ProbeResult(True, 200, f"health: GET {path} answered 200")
        return ProbeResult(False, response.status_code,
                           f"health: GET {path} answered {response.status_code}, not 200 (C3)")

    async def logs(self, instance_id: str, tail: int = 50) -> str:
        """The container's last `tail` lines of stdout and stderr; "" for an unknown id."""
        client = await self._engine("logs")

        def read() -> str:
            try:
                return decode(client.api.logs(instance_id, tail=tail))
            except docker.errors.NotFound:
                return ""

        return await self._call("logs", read)

    async def close(self) -> None:
        """Close the engine client and the probe client; containers keep running."""
        if self._http is not None:
            await self._http.aclose()
            self._http = None
        if self._client is not None:
            client, self._client = self._client, None
            await asyncio.to_thread(client.close)

    # --- start ----------------------------------------------------------------------------------------

    async def _create_and_start(self, spec: InstanceSpec, prepared: PreparedImage) -> Instance:
        client = await self._engine("start")
        cpus, memory, swap_limit = await self._host_resources(client)
        spec = triton.with_server_command(spec, prepared.entrypoint, prepared.cmd)  # Triton mode's default command
        entrypoint, cmd = config.resolve_command(spec.entrypoint, spec.cmd, prepared.entrypoint,
                                                 prepared.cmd)
        limits = config.resource_limits(spec, cpus, memory, self._vcpus_per_ocpu)
        mounts = config.artifact_mounts(spec)
        name = config.container_name(self._label_prefix, spec.deployment_id)
        bindings = config.port_bindings(spec)
        keys = self._keys

        def create() -> dict[str, Any]:
            host_config = client.api.create_host_config(
                port_bindings=bindings,
                mounts=mounts,
                init=True,  # many servers ignore SIGTERM as PID 1; stop would wait the full timeout
                privileged=False,
                security_opt=["no-new-privileges"],
                pids_limit=self._pids_limit,
                nano_cpus=limits.nano_cpus,
                mem_limit=limits.memory_bytes,
                # Without swap the memory limit means what it says (an OOM kill, not thrashing);
                # engines without swap accounting refuse or ignore the setting, so skip it there.
                memswap_limit=limits.memory_bytes if swap_limit else None,
                shm_size=limits.shm_bytes,
            )
            try:
                created = client.api.create_container(
                    _runnable(spec, prepared), name=name, entrypoint=entrypoint, command=cmd,
                    environment=dict(config.environment(spec)),
                    labels=config.labels(spec, keys, name, limits.note),
                    healthcheck=config.healthcheck(spec, self._health, curl=prepared.has_curl),
                    ports=[(str(port), "tcp") for port in {spec.server_port, spec.health_port}],
                    host_config=host_config,
                )
            except docker.errors.ImageNotFound as exc:
                raise _ImageGone() from exc
            try:
                client.api.start(created["Id"])
                return self._wait_for_ports(client, created["Id"], spec)
            except BaseException:
                remove_quietly(client, created["Id"])  # a failed start leaves no debris
                raise

        try:
            attrs = await self._call("start", create, timeout=self._api_timeout_s * 3 + self._ports_timeout_s)
        except DockyardError as exc:
            cause = exc.__cause__
            if isinstance(cause, docker.errors.APIError) and EXEC_MISSING.search(str(cause.explanation or "")):
                raise InvalidParameter(
                    f"start: the container's command cannot be run: {cause.explanation}; check "
                    "entrypoint and cmd (or the image's ENTRYPOINT/CMD) name a program that "
                    "exists in the image", rule="C10") from cause
            raise
        tail = ""
        if has_stopped(attrs):
            tail = await self.logs(name, self._detail_log_lines)
        return to_instance(attrs, keys, tail)

    def _wait_for_ports(self, client: docker.DockerClient, container_id: str,
                        spec: InstanceSpec) -> dict[str, Any]:
        """Reload until the engine reports both host ports, or the container stopped."""
        deadline = time.monotonic() + self._ports_timeout_s
        delay = 0.02
        while True:
            attrs: dict[str, Any] = client.api.inspect_container(container_id)
            if not is_running(attrs) and attrs.get("State", {}).get("Status") != "created":
                return attrs  # exited already: no ports to wait for
            if host_port(attrs, spec.server_port) and host_port(attrs, spec.health_port):
                return attrs
            if time.monotonic() > deadline:
                raise PortsTimeout(self._ports_timeout_s)
            time.sleep(delay)
            delay = min(delay * 2, 0.5)

    async def _host_resources(self, client: docker.DockerClient) -> tuple[int, int, bool]:
        if self._host is None:
            info = await self._call("start", client.api.info)
            self._host = (int(info.get("NCPU") or 0), int(info.get("MemTotal") or 0),
                          bool(info.get("SwapLimit")))
        return self._host


class _ImageGone(Internal):
    pass


def _runnable(spec: InstanceSpec, prepared: PreparedImage) -> str:
    """What the container is created from: the image that was checked, by an immutable name.

    A digest reference (D2) reads well in `docker ps`; a tag could have moved since the
    checks, so it is replaced by the image id that was checked.
    """
    image = image_of(spec)
    return image if "@sha256:" in image else prepared.image_id

"""`DockerRuntime`: instances are containers on a Docker engine (or Podman's compatible API).

The only module that imports the `docker` package. Every engine call is blocking, so it runs in
a thread (`asyncio.to_thread`) under a deadline; engine and registry failures become
`DockyardError`s whose messages name the phase (pull / start / health / oom / curl) and the
contract rule where one applies.

What a container gets (see `docker_config` for the pure rules): the pinned image (D2), the
artifact read-only at /opt/ds/model/deployed_model (A3), the service's HEALTHCHECK (H1),
ports published on 127.0.0.1 only with engine-chosen host ports, CPU/memory/shm limits from
the shape, an init process, no-new-privileges and a pids limit, and labels that let `list`
find it again after a restart of the service.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import docker
import docker.auth
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
from dockyard.registry import parse_image_reference
from dockyard.runtimes import docker_config as config
from dockyard.runtimes import triton
from dockyard.runtimes.base import Instance, InstanceSpec, ProbeResult, Progress
from dockyard.runtimes.docker_observe import has_stopped, host_port, is_running, to_instance
from dockyard.runtimes.docker_output import follow_container_output
from dockyard.runtimes.docker_pull import PullProgress, pull_failure
from dockyard.runtimes.output import OutputLine

log = logging.getLogger("dockyard.runtimes.docker")

T = TypeVar("T")

GIB = 1024**3
CURL_FIX = "install curl in the image: apt-get install -y curl (Debian/Ubuntu), apk add curl (Alpine), microdnf install curl (UBI)"
# What runc and crun say when the command of a container does not exist in the image.
_EXEC_MISSING = re.compile(r"executable file .*not found|no such file or directory|not found in \$path",
                           re.IGNORECASE)


@dataclass(frozen=True)
class ImageFacts:
    """What the engine knows of one image (for `dockyard check`; deployments do not need it)."""

    image_id: str
    size_bytes: int  # uncompressed (C7)
    entrypoint: list[str] | None  # the image's own ENTRYPOINT / CMD
    cmd: list[str] | None
    repo_digests: list[str]  # registry digests the engine knows this image by
    has_curl: bool | None  # what `prepare` found (C9); None when it has not checked this name


@dataclass(frozen=True)
class Termination:
    """How a container took a stop: SIGTERM (through its init process), SIGKILL after the timeout."""

    seconds: float
    exit_code: int | None
    killed: bool  # SIGTERM was not enough: SIGKILL ended it after timeout_s
    timeout_s: float


@dataclass(frozen=True)
class _PreparedImage:
    image_id: str
    entrypoint: list[str] | None
    cmd: list[str] | None
    has_curl: bool


class DockerRuntime:
    """Runs each instance as one container; see the module docstring for what it gets.

    Construction does no I/O: the engine is first contacted by the first call.
    """

    name = "docker"

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
        self._prepared: dict[str, _PreparedImage] = {}
        self._image_locks: dict[str, asyncio.Lock] = {}

    # --- the Runtime protocol -------------------------------------------------------------------

    async def prepare(self, spec: InstanceSpec, progress: Progress) -> None:
        """Pull `spec.image` unless present, then check it: C7 size, C9 curl.

        Raises `InvalidParameter` (C7, C9, no image), `RelatedResourceNotFound` (the registry
        does not have it or refuses us: C8, C12), `ServiceUnavailable` (engine or registry
        unreachable), `GatewayTimeout` (pull too slow).
        """
        image = _image_of(spec)
        async with self._image_locks.setdefault(image, asyncio.Lock()):
            self._prepared[image] = await self._prepare(image, progress)

    async def start(self, spec: InstanceSpec) -> Instance:
        """Create and start one container for `spec`; returns it with its host-side ports.

        Prepares the image first if this runtime has not yet (a restart pulls again, C12).
        A container that exits at once is returned as EXITED, with its logs in the detail.
        """
        image = _image_of(spec)
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
                        tail = _decode(client.api.logs(summary["Id"], tail=self._detail_log_lines))
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
                return _decode(client.api.logs(instance_id, tail=tail))
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

    # --- measurements for `dockyard check` and `dockyard run` (deployments do not use these) ------

    async def image_facts(self, image: str) -> ImageFacts | None:
        """Size, own ENTRYPOINT/CMD and repo digests of `image` as the engine has it (no pull);
        None when the engine does not have it."""
        client = await self._engine("inspect")
        attrs = await self._call("inspect", lambda: _inspect_image(client, image))
        if attrs is None:
            return None
        image_config = attrs.get("Config") or {}
        prepared = self._prepared.get(image)
        return ImageFacts(attrs["Id"], int(attrs.get("Size") or 0), image_config.get("Entrypoint"),
                          image_config.get("Cmd"), list(attrs.get("RepoDigests") or []),
                          prepared.has_curl if prepared else None)

    async def terminate(self, instance_id: str) -> Termination | None:
        """Stop a running container exactly as `stop` does, but keep it, and say how it went.

        None when the container is unknown, not ours or not running. `stop` removes it after.
        """
        client = await self._engine("stop")
        keys = self._keys

        def run() -> Termination | None:
            try:
                attrs = client.api.inspect_container(instance_id)
            except docker.errors.NotFound:
                return None
            labels = (attrs.get("Config") or {}).get("Labels") or {}
            if labels.get(keys.managed) != "true" or not is_running(attrs):
                return None
            started = time.monotonic()
            client.api.stop(attrs["Id"], timeout=int(self._stop_timeout_s))
            seconds = time.monotonic() - started
            state = client.api.inspect_container(attrs["Id"]).get("State") or {}
            code = state.get("ExitCode")
            # The engine's SIGKILL ends the init process with 128 + 9; SIGTERM passed on by
            # the init process ends it with 143 (or the server's own exit code).
            return Termination(seconds, int(code) if code is not None else None,
                               code == 137 and not state.get("OOMKilled"), self._stop_timeout_s)

        return await self._call("stop", run, timeout=self._stop_timeout_s + self._api_timeout_s * 2)

    async def socket_table(self, instance_id: str) -> str | None:
        """The container's /proc/net/tcp and /proc/net/tcp6 (what it listens on, from inside its
        network namespace), read with `cat` in the container; None when that cannot run."""
        client = await self._engine("inspect")

        def read() -> str | None:
            try:
                created = client.api.exec_create(instance_id, ["cat", "/proc/net/tcp", "/proc/net/tcp6"],
                                                 stdout=True, stderr=False)
                output = _decode(client.api.exec_start(created["Id"]))
            except docker.errors.APIError:
                return None  # stopped, or no `cat` in the image
            return output if "local_address" in output else None

        return await self._call("inspect", read)

    async def follow_logs(self, instance_id: str) -> AsyncIterator[str]:
        """Every output line of the container from its start, then each new one as it is
        written, until the container stops (or the caller stops iterating)."""
        client = await self._engine("logs")
        loop = asyncio.get_running_loop()
        lines: asyncio.Queue[str | None] = asyncio.Queue()
        streams: list[Any] = []

        def put(item: str | None) -> None:
            try:
                loop.call_soon_threadsafe(lines.put_nowait, item)
            except RuntimeError:
                pass  # the loop is gone: nobody is reading any more

        def pump() -> None:
            pending = ""
            try:
                stream = client.api.logs(instance_id, stream=True, follow=True, tail="all")
                streams.append(stream)
                for chunk in stream:
                    pending += _decode(chunk)
                    *complete, pending = pending.split("\n")
                    for line in complete:
                        put(line)
            except (docker.errors.APIError, requests.exceptions.RequestException, OSError, ValueError):
                pass  # the container went away, or the stream was closed by the caller
            finally:
                if pending:
                    put(pending)
                put(None)

        reader = asyncio.ensure_future(asyncio.to_thread(pump))
        try:
            while (line := await lines.get()) is not None:
                yield line
        finally:
            for stream in streams:
                stream.close()
            reader.cancel()

    async def follow_output(self, instance_id: str, after: str | None = None) -> AsyncIterator[OutputLine]:
        """Each stdout/stderr line of the container after position `after`, with the engine's
        timestamp, then each new one until it stops (`docker_output`)."""
        client = await self._engine("logs")
        async for line in follow_container_output(client, instance_id, after):
            yield line

    # --- prepare ------------------------------------------------------------------------------------

    async def _prepared_image(self, spec: InstanceSpec) -> _PreparedImage:
        image = _image_of(spec)
        async with self._image_locks.setdefault(image, asyncio.Lock()):
            if image not in self._prepared:
                self._prepared[image] = await self._prepare(image, _log_progress)
            return self._prepared[image]

    async def _prepare(self, image: str, progress: Progress) -> _PreparedImage:
        client = await self._engine("pull")
        attrs = await self._call("pull", lambda: _inspect_image(client, image))
        pulled = False
        if attrs is None:
            await self._pull(client, image, progress)
            pulled = True
            attrs = await self._call("pull", lambda: _inspect_image(client, image))
            if attrs is None:
                raise InternalServerError(f"pull: the engine reported {image} pulled but does not "
                                          "have it; retry, and check the engine's log")
        else:
            progress(f"pull: {image} is already present")
        size = int(attrs.get("Size") or 0)
        if size > self._max_bytes:
            if pulled:  # do not keep a rejected image filling the disk
                await self._call("pull", lambda: _remove_image(client, attrs["Id"]))
            raise InvalidParameter(
                f"pull: the image {image} is {_size(size)} uncompressed, over the "
                f"{_size(self._max_bytes)} limit; make it smaller (a slim base image, fewer "
                "layers, model weights in the artifact rather than in the image)",
                rule="C7",
            )
        image_config = attrs.get("Config") or {}
        has_curl = await self._check_curl(client, image, attrs["Id"], progress)
        return _PreparedImage(attrs["Id"], image_config.get("Entrypoint"), image_config.get("Cmd"),
                              has_curl)

    async def _pull(self, client: docker.DockerClient, image: str, progress: Progress) -> None:
        reference = parse_image_reference(image)
        # The engine pulls `fromImage` at `tag`, which may be a digest (D2: always, here).
        repository, tag = reference.name, reference.digest or reference.tag or "latest"
        creds = self._registry_auth.get(reference.registry)
        loop = asyncio.get_running_loop()

        def relay(line: str) -> None:
            loop.call_soon_threadsafe(progress, line)

        def credentials() -> dict[str, str]:
            if creds is not None:
                auth = {"username": creds[0], "password": creds[1],
                        "serveraddress": reference.registry}
                return {"X-Registry-Auth": docker.auth.encode_header(auth).decode("ascii")}
            # Else what `docker login` stored for this host, as the SDK's own pull would use.
            header = docker.auth.get_config_header(client.api, reference.registry)
            return {"X-Registry-Auth": _text(header)} if header else {}

        headers: dict[str, str] = {}

        def pull() -> None:
            headers.update(credentials())
            # The SDK's own pull() has no read timeout at all: a stalled registry would hang
            # a thread forever. The same request through the client's HTTP session can have one.
            url = f"{client.api.base_url}/v{client.api.api_version}/images/create"
            started = time.monotonic()
            deadline = started + self._pull_timeout_s
            tracker = PullProgress(image, self._progress_interval_s)
            relay(f"pull: pulling {image}")
            try:
                response = client.api.post(
                    url, params={"fromImage": repository, "tag": tag}, headers=headers,
                    stream=True, timeout=(self._api_timeout_s, self._pull_idle_timeout_s))
            except requests.exceptions.ReadTimeout as exc:
                # The engine answers only once the registry does: it is the registry that stalls.
                raise _PullTimeout(f"made no progress for {self._pull_idle_timeout_s:g} s (the "
                                   "registry did not answer)") from exc
            with response:
                if response.status_code >= 400:
                    raise _PullError(_error_message(response))
                try:
                    for raw in response.iter_lines():
                        if time.monotonic() > deadline:
                            raise _PullTimeout(f"took longer than {self._pull_timeout_s:g} s")
                        if not raw:
                            continue
                        try:
                            message = json.loads(raw)
                        except ValueError:
                            continue
                        if message.get("error"):
                            raise _PullError(str(message["error"]))
                        line = tracker.update(message, time.monotonic())
                        if line:
                            relay(line)
                except requests.exceptions.RequestException as exc:
                    # A read timeout mid-stream surfaces as a ConnectionError here.
                    raise _PullTimeout(f"made no progress for {self._pull_idle_timeout_s:g} s "
                                       f"({tracker.line()})") from exc
            relay(tracker.summary(time.monotonic() - started))

        try:
            await self._call("pull", pull, timeout=self._pull_timeout_s + self._api_timeout_s)
        except _PullTimeout as exc:
            raise GatewayTimeout(f"pull: pulling {image} {exc}; check the registry's speed "
                                 "and the network, or make the image smaller") from exc
        except _PullError as exc:
            raise pull_failure(image, reference.registry, str(exc), bool(headers)) from exc

    async def _check_curl(self, client: docker.DockerClient, image: str, image_id: str,
                          progress: Progress) -> bool:
        """C9: run ``curl --version`` in a throwaway container (no shell needed)."""
        keys = self._keys

        def run() -> tuple[bool, str]:
            container = client.api.create_container(
                image_id, entrypoint=["curl", "--version"], command=[], network_disabled=True,
                labels={keys.purpose: "curl-check"},
                host_config=client.api.create_host_config(
                    security_opt=["no-new-privileges"], pids_limit=64, init=False))
            try:
                try:
                    client.api.start(container["Id"])
                except docker.errors.APIError as exc:
                    if _EXEC_MISSING.search(str(exc.explanation or exc)):
                        return False, "curl is not in the image"
                    raise
                try:
                    result = client.api.wait(container["Id"], timeout=self._curl_timeout_s)
                except requests.exceptions.RequestException as exc:
                    raise GatewayTimeout(
                        f"curl check: `curl --version` in {image} did not finish within "
                        f"{self._curl_timeout_s:g} s; check the image runs on this engine") from exc
                code = int(result.get("StatusCode", -1))
                if code == 0:
                    return True, ""
                output = _decode(client.api.logs(container["Id"], tail=5)).strip()
                why = "curl is not in the image" if code == 127 else f"curl --version exited {code}"
                return False, f"{why}{': ' + output if output else ''}"
            finally:
                _remove_quietly(client, container["Id"])

        ok, why = await self._call("curl", run, timeout=self._curl_timeout_s + self._api_timeout_s)
        if ok:
            progress(f"curl: {image} has curl (C9)")
            return True
        message = (f"curl check: {why} ({image}); the service's HEALTHCHECK runs curl inside "
                   f"the container; fix: {CURL_FIX}")
        if self._require_curl:
            raise InvalidParameter(message, rule="C9")
        progress(f"warning: C9: {message}. Continuing because the curl requirement is off: "
                 "the in-container HEALTHCHECK is disabled and the service probes from outside")
        return False

    # --- start ----------------------------------------------------------------------------------------

    async def _create_and_start(self, spec: InstanceSpec, prepared: _PreparedImage) -> Instance:
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
                _remove_quietly(client, created["Id"])  # a failed start leaves no debris
                raise

        try:
            attrs = await self._call("start", create, timeout=self._api_timeout_s * 3 + self._ports_timeout_s)
        except DockyardError as exc:
            cause = exc.__cause__
            if isinstance(cause, docker.errors.APIError) and _EXEC_MISSING.search(str(cause.explanation or "")):
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
                raise _PortsTimeout(self._ports_timeout_s)
            time.sleep(delay)
            delay = min(delay * 2, 0.5)

    async def _host_resources(self, client: docker.DockerClient) -> tuple[int, int, bool]:
        if self._host is None:
            info = await self._call("start", client.api.info)
            self._host = (int(info.get("NCPU") or 0), int(info.get("MemTotal") or 0),
                          bool(info.get("SwapLimit")))
        return self._host

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
        except (DockyardError, _Internal):
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
        except _PortsTimeout as exc:
            raise GatewayTimeout(f"start: the engine did not publish the container's ports "
                                 f"within {exc.args[0]:g} s; check the engine (docker info)") from exc


# --- helpers ------------------------------------------------------------------------------------


class _Internal(Exception):
    """Signals between a worker thread and its async caller; never leave this module."""


class _ImageGone(_Internal):
    pass


class _PullError(_Internal):
    pass


class _PullTimeout(_Internal):
    pass


class _PortsTimeout(Exception):
    pass


def _runnable(spec: InstanceSpec, prepared: _PreparedImage) -> str:
    """What the container is created from: the image that was checked, by an immutable name.

    A digest reference (D2) reads well in `docker ps`; a tag could have moved since the
    checks, so it is replaced by the image id that was checked.
    """
    image = _image_of(spec)
    return image if "@sha256:" in image else prepared.image_id


def _image_of(spec: InstanceSpec) -> str:
    if not spec.image:
        raise InvalidParameter("start: the docker runtime needs a container image; this "
                               f"deployment ({spec.kind}) has none")
    return spec.image


def _inspect_image(client: docker.DockerClient, image: str) -> dict[str, Any] | None:
    try:
        return dict(client.api.inspect_image(image))
    except docker.errors.ImageNotFound:
        return None


def _remove_image(client: docker.DockerClient, image_id: str) -> None:
    try:
        client.api.remove_image(image_id)
    except docker.errors.APIError:
        log.warning("could not remove the rejected image %s", image_id)


def _remove_quietly(client: docker.DockerClient, container_id: str) -> None:
    try:
        client.api.remove_container(container_id, v=True, force=True)
    except (docker.errors.APIError, requests.exceptions.RequestException):
        log.warning("could not remove container %s; remove it by hand", container_id)


def _size(n: int) -> str:
    return f"{n / GIB:.1f} GiB" if n >= GIB else f"{n / 1024**2:.1f} MiB"


def _text(value: bytes | str) -> str:
    return value.decode("ascii") if isinstance(value, bytes) else value


def _decode(raw: bytes | str) -> str:
    return raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw


def _error_message(response: requests.Response) -> str:
    try:
        return str(response.json().get("message") or response.text)
    except ValueError:
        return response.text or f"HTTP {response.status_code}"


def _log_progress(line: str) -> None:
    log.info("%s", line)


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

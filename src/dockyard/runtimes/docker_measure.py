"""What `dockyard check` and `dockyard run` measure of an image and a container.

Deployments do not use these: the image's facts as the engine has them, how a container takes
a stop, the sockets it listens on, and its output followed line by line.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import docker
import docker.errors
import requests

from dockyard.runtimes.docker_engine import DockerEngine, decode, inspect_image
from dockyard.runtimes.docker_observe import is_running
from dockyard.runtimes.docker_output import follow_container_output
from dockyard.runtimes.output import OutputLine


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


def killed_at_timeout(exit_code: int | None, oom_killed: bool, seconds: float, timeout_s: float) -> bool:
    """Whether the engine's SIGKILL ended a stop: its exit code is 128 + 9, and it comes only once
    the timeout has passed. (SIGTERM passed on by the init process ends a container with 143, or
    the server's own code, which may be 137 too: a wrapper whose child was killed exits so.)"""
    return exit_code == 137 and not oom_killed and seconds >= timeout_s * 0.95


class DockerMeasurements(DockerEngine):
    """The measurements `DockerRuntime` offers beyond the `Runtime` protocol."""

    async def image_facts(self, image: str) -> ImageFacts | None:
        """Size, own ENTRYPOINT/CMD and repo digests of `image` as the engine has it (no pull);
        None when the engine does not have it."""
        client = await self._engine("inspect")
        attrs = await self._call("inspect", lambda: inspect_image(client, image))
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
            exit_code = int(code) if code is not None else None
            killed = killed_at_timeout(exit_code, bool(state.get("OOMKilled")), seconds, self._stop_timeout_s)
            return Termination(seconds, exit_code, killed, self._stop_timeout_s)

        return await self._call("stop", run, timeout=self._stop_timeout_s + self._api_timeout_s * 2)

    async def socket_table(self, instance_id: str) -> str | None:
        """The container's /proc/net/tcp and /proc/net/tcp6 (what it listens on, from inside its
        network namespace), read with `cat` in the container; None when that cannot run."""
        client = await self._engine("inspect")

        def read() -> str | None:
            try:
                created = client.api.exec_create(instance_id, ["cat", "/proc/net/tcp", "/proc/net/tcp6"],
                                                 stdout=True, stderr=False)
                output = decode(client.api.exec_start(created["Id"]))
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
                    pending += decode(chunk)
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

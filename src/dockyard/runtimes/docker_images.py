"""The image side of `DockerRuntime`: pull by digest with progress, then the checks (C7, C9).

An image is pulled unless the engine has it, its uncompressed size is held against the limit
(C7; a rejected image that was just pulled is removed again), and ``curl --version`` runs in a
throwaway container (C9: the service's HEALTHCHECK needs curl). What `prepare` found is kept
per image name, so `start` prepares each image only once.
"""

from __future__ import annotations

import asyncio
import json
import time

import docker
import docker.auth
import docker.errors
import requests

from dockyard.errors import GatewayTimeout, InternalServerError, InvalidParameter
from dockyard.registry import parse_image_reference
from dockyard.runtimes.base import InstanceSpec, Progress
from dockyard.runtimes.docker_engine import (
    EXEC_MISSING,
    GIB,
    DockerEngine,
    Internal,
    PreparedImage,
    decode,
    image_of,
    inspect_image,
    log,
    remove_quietly,
)
from dockyard.runtimes.docker_pull import PullProgress, pull_failure

CURL_FIX = "install curl in the image: apt-get install -y curl (Debian/Ubuntu), apk add curl (Alpine), microdnf install curl (UBI)"


class DockerImages(DockerEngine):
    """Pulls and checks images for `DockerRuntime`."""

    async def prepare(self, spec: InstanceSpec, progress: Progress) -> None:
        """Pull `spec.image` unless present, then check it: C7 size, C9 curl.

        Raises `InvalidParameter` (C7, C9, no image), `RelatedResourceNotFound` (the registry
        does not have it or refuses us: C8, C12), `ServiceUnavailable` (engine or registry
        unreachable), `GatewayTimeout` (pull too slow).
        """
        image = image_of(spec)
        async with self._image_locks.setdefault(image, asyncio.Lock()):
            self._prepared[image] = await self._prepare(image, progress)

    async def _prepared_image(self, spec: InstanceSpec) -> PreparedImage:
        image = image_of(spec)
        async with self._image_locks.setdefault(image, asyncio.Lock()):
            if image not in self._prepared:
                self._prepared[image] = await self._prepare(image, _log_progress)
            return self._prepared[image]

    async def _prepare(self, image: str, progress: Progress) -> PreparedImage:
        client = await self._engine("pull")
        attrs = await self._call("pull", lambda: inspect_image(client, image))
        pulled = False
        if attrs is None:
            await self._pull(client, image, progress)
            pulled = True
            attrs = await self._call("pull", lambda: inspect_image(client, image))
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
        return PreparedImage(attrs["Id"], image_config.get("Entrypoint"), image_config.get("Cmd"),
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
                    if EXEC_MISSING.search(str(exc.explanation or exc)):
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
                output = decode(client.api.logs(container["Id"], tail=5)).strip()
                why = "curl is not in the image" if code == 127 else f"curl --version exited {code}"
                return False, f"{why}{': ' + output if output else ''}"
            finally:
                remove_quietly(client, container["Id"])

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


class _PullError(Internal):
    pass


class _PullTimeout(Internal):
    pass


def _remove_image(client: docker.DockerClient, image_id: str) -> None:
    try:
        client.api.remove_image(image_id)
    except docker.errors.APIError:
        log.warning("could not remove the rejected image %s", image_id)


def _size(n: int) -> str:
    return f"{n / GIB:.1f} GiB" if n >= GIB else f"{n / 1024**2:.1f} MiB"


def _text(value: bytes | str) -> str:
    return value.decode("ascii") if isinstance(value, bytes) else value


def _error_message(response: requests.Response) -> str:
    try:
        return str(response.json().get("message") or response.text)
    except ValueError:
        return response.text or f"HTTP {response.status_code}"


def _log_progress(line: str) -> None:
    log.info("%s", line)

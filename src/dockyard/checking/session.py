"""One instance started the way a deployment starts it, and everything it needs, cleaned up after.

The instance is built exactly as the reconciler builds a deployment's (`instance_spec` mirrors
`Reconciler._spec`; a unit test keeps the two equal) and run by the service's own
`DockerRuntime`: the pinned image when the registry knows it (D2), the artifact unpacked by
the service's unpacker and mounted read-only (A3), MODEL_DEPLOYMENT_OCID injected, the
service's HEALTHCHECK, an init process, ports on 127.0.0.1 only.

Containers carry the label prefix `dockyard-check`, never `dockyard`: a `dockyard serve`
sharing the engine removes `dockyard`-labelled containers its database does not know.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Protocol

from dockyard.checking.artifacts import prepare_artifact
from dockyard.checking.image_source import look_up, names_registry, pinned
from dockyard.checking.inputs import CheckRequest
from dockyard.checking.measurements import Exit, ImageEvidence, Measurements
from dockyard.checking.wording import human_bytes
from dockyard.domain import deployments as rules
from dockyard.domain import ids
from dockyard.errors import DockyardError, InvalidParameter
from dockyard.runtimes.base import Instance, InstanceSpec, InstanceState, Progress, Runtime
from dockyard.settings import Settings

log = logging.getLogger("dockyard.checking")

LABEL_PREFIX = "dockyard-check"
START_SETTLE_ROUNDS = 8  # x 0.5 s: how long close() watches for a container an interrupted start makes
PREDICT_ENDPOINT_VAR = "MODEL_DEPLOY_PREDICT_ENDPOINT"  # as gateway.endpoints.predict_path reads it


class MeasuringRuntime(Runtime, Protocol):
    """A `Runtime` that can also report what `dockyard check` measures (`DockerRuntime`)."""

    async def image_facts(self, image: str) -> Any: ...

    async def terminate(self, instance_id: str) -> Any: ...

    async def socket_table(self, instance_id: str) -> str | None: ...

    def follow_logs(self, instance_id: str) -> AsyncIterator[str]: ...


def docker_runtime(request: CheckRequest, settings: Settings, *, label_prefix: str = LABEL_PREFIX,
                   quick_healthcheck: bool = True) -> MeasuringRuntime:
    """The service's Docker runtime, set up for one local instance.

    curl is not required (C9 becomes a report line instead of a refusal). With
    `quick_healthcheck` the service's HEALTHCHECK runs every second from the start instead of
    H1's every 30 s after 10 minutes, so its verdict is seen while the check runs; the command
    itself is the service's.
    """
    from dockyard.runtimes.docker import DockerRuntime

    return DockerRuntime(
        base_url=request.docker_host or settings.docker_host or None,
        health_start_period_s=0 if quick_healthcheck else settings.health_start_period_s,
        health_interval_s=1 if quick_healthcheck else settings.health_interval_s,
        health_timeout_s=settings.health_timeout_s,
        health_retries=settings.health_retries,
        require_curl=False,
        stop_timeout_s=request.stop_timeout_s,
        registry_auth=settings.registry_credentials_by_host(),
        label_prefix=label_prefix,
    )


def deployment_config(request: CheckRequest, image: str) -> dict[str, Any]:
    """The wire-format `modelDeploymentConfigurationDetails` a user would create for this."""
    environment: dict[str, Any] = {
        "environmentConfigurationType": "OCIR_CONTAINER",
        "image": image,
        "serverPort": request.server_port,
        "healthCheckPort": request.health_port,
    }
    if request.environment:
        environment["environmentVariables"] = dict(request.environment)
    if request.entrypoint is not None:
        environment["entrypoint"] = list(request.entrypoint)
    if request.cmd is not None:
        environment["cmd"] = list(request.cmd)
    return {
        "deploymentType": "SINGLE_MODEL",
        "modelConfigurationDetails": {"modelId": "local-check", "instanceConfiguration": {}},
        "environmentConfigurationDetails": environment,
    }


def instance_spec(request: CheckRequest, deployment_id: str, artifact_dir: Path | None, image: str) -> InstanceSpec:
    """What the reconciler would start for `deployment_config(request, image)`."""
    config = deployment_config(request, image)
    env = rules.environment(config)
    variables = dict(env.get("environmentVariables") or {})
    return InstanceSpec(
        deployment_id=deployment_id,
        spec_hash=rules.spec_hash(config, None),
        kind="OCIR_CONTAINER",
        artifact_dir=artifact_dir,
        image=image,
        entrypoint=env.get("entrypoint"),
        cmd=env.get("cmd"),
        environment=variables | {"MODEL_DEPLOYMENT_OCID": deployment_id},
        server_port=int(env.get("serverPort") or 8080),
        health_port=int(env.get("healthCheckPort") or 8080),
        health_path=rules.health_path(config),
        shm_size=variables.get("SHM_SIZE"),
    )


def predict_path(request: CheckRequest) -> str:
    """The container path the service forwards `/predict` to (gateway.endpoints.predict_path)."""
    return request.environment.get(PREDICT_ENDPOINT_VAR) or rules.DEFAULT_PREDICT_PATH


def is_triton(request: CheckRequest) -> bool:
    return request.environment.get("CONTAINER_TYPE", "").strip().upper() == "TRITON"


class Session:
    """Prepare (registry, artifact, image), start one instance, and clean everything up.

    Use as ``async with``. `measurements` fills in as it goes. Errors that mean nothing can be
    tried (no such image, an unusable artifact, an engine that does not answer) are raised as
    `DockyardError` before any container starts.
    """

    def __init__(self, request: CheckRequest, settings: Settings, progress: Progress, runtime: MeasuringRuntime,
                 deployment_id: str | None = None) -> None:
        self.request = request
        self.settings = settings
        self.progress = progress
        self.runtime = runtime
        self.deployment_id = deployment_id or ids.new_ocid(ids.MODEL_DEPLOYMENT, settings.realm, settings.region)
        probe_config = deployment_config(request, request.image)
        self.measurements = Measurements(request=request, deployment_id=self.deployment_id,
                                         health_path=rules.health_path(probe_config),
                                         predict_path=predict_path(request), triton=is_triton(request))
        self.spec: InstanceSpec | None = None
        self.instance: Instance | None = None
        self.started_at: float | None = None
        self._work_dir: Path | None = None
        self._start_interrupted = False

    async def __aenter__(self) -> Session:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # --- before anything starts ------------------------------------------------------------

    async def prepare(self) -> None:
        """Registry look-up, artifact unpacking, image pull and checks (C7, C9)."""
        m, request, runtime = self.measurements, self.request, self.runtime
        if names_registry(request.image):
            self.progress(f"registry: resolving {request.image}")
        m.registry = await look_up(request.image, request.image_digest, self.settings)
        local = await runtime.image_facts(request.image)
        image = self._image_to_run(local)

        self._work_dir = Path(tempfile.mkdtemp(prefix="dockyard-check-"))
        self.progress("unpack: preparing the artifact" if request.artifact else "unpack: no artifact: an empty one")
        folder, artifact = await asyncio.to_thread(prepare_artifact, request.artifact, self._work_dir)
        m.artifact = artifact
        if request.artifact is not None:
            self.progress(f"unpack: {artifact.files} files, {human_bytes(artifact.bytes)}, mounted read-only at "
                          "/opt/ds/model/deployed_model")
        self.spec = instance_spec(request, self.deployment_id, folder, image)

        local_differs = bool(m.registry.digest and local is not None
                             and not any(d.endswith("@" + m.registry.digest) for d in local.repo_digests))
        try:
            await runtime.prepare(self.spec, self.progress)
        except DockyardError as exc:
            if exc.rule == "C7":
                m.image = ImageEvidence(image, None, None, None, None, local_differs, rejected=exc.message)
                return
            if local is None and not m.registry.named:
                raise InvalidParameter(f"image {request.image} is not in this Docker engine and cannot be pulled "
                                       f"({exc.message}); build it, pull it, or check its name") from exc
            raise
        facts = await runtime.image_facts(image)
        m.image = ImageEvidence(image, facts.size_bytes if facts else None, facts.has_curl if facts else None,
                                facts.entrypoint if facts else None, facts.cmd if facts else None, local_differs)

    def _image_to_run(self, local: Any) -> str:
        """The pinned digest when the registry knows the image (as a deployment runs it), else
        the local image; an image that is in neither is an error."""
        registry, image = self.measurements.registry, self.request.image
        if registry.digest:
            return pinned(image, registry.digest)
        if local is None and registry.named and not registry.refused:
            raise InvalidParameter(f"image {image} does not exist: it is not in this Docker engine, and its registry "
                                   f"says: {registry.error}")
        if local is None and registry.refused:
            raise InvalidParameter(f"image {image} is not in this Docker engine, and its registry may not be used: "
                                   f"{registry.refused}")
        return image

    # --- the instance --------------------------------------------------------------------------

    async def start(self) -> Instance | None:
        """Start the instance; None when the engine could not even run its command (recorded
        as the START failure)."""
        assert self.spec is not None, "prepare() first"
        m = self.measurements
        self.progress("start: starting the container")
        try:
            instance = await self.runtime.start(self.spec)
        except InvalidParameter as exc:
            m.exit = Exit(None, 0.0, exc.message, start_error=exc.message)
            return None
        except asyncio.CancelledError:
            self._start_interrupted = True  # the engine may still be creating it: see close()
            raise
        self.started_at = time.monotonic()
        self.instance = instance
        m.started = True
        if instance.state is InstanceState.EXITED:
            m.exit = Exit(instance.exit_code, 0.0, instance.detail)
        return instance

    async def observe(self) -> Instance | None:
        """The instance as the runtime sees it now; None when it is gone."""
        if self.instance is None:
            return None
        for found in await self.runtime.list(self.deployment_id):
            if found.instance_id == self.instance.instance_id:
                return found
        return None

    def elapsed(self) -> float:
        return time.monotonic() - self.started_at if self.started_at is not None else 0.0

    async def close(self) -> None:
        """Remove the container and the unpacked artifact; close the engine client. Never raises."""
        try:
            # Every container of this deployment id, not only the one `start` returned: a start
            # interrupted by Ctrl-C goes on in the engine's worker thread and may create one
            # that is never handed back, so after an interrupted start look a few times more.
            rounds = START_SETTLE_ROUNDS if self._start_interrupted else 1
            for round_ in range(rounds):
                ids_to_stop = {i.instance_id for i in await self.runtime.list(self.deployment_id)}
                if self.instance is not None:
                    ids_to_stop.add(self.instance.instance_id)
                    self.instance = None
                for instance_id in sorted(ids_to_stop):
                    await self.runtime.stop(instance_id)
                if round_ + 1 < rounds:
                    await asyncio.sleep(0.5)
        except DockyardError as exc:
            log.warning("could not remove the containers of %s: %s", self.deployment_id, exc)
        finally:
            self.instance = None
            if self._work_dir is not None:
                await asyncio.to_thread(shutil.rmtree, self._work_dir, True)
                self._work_dir = None
            try:
                await self.runtime.close()
            except DockyardError as exc:
                log.warning("could not close the engine client: %s", exc)

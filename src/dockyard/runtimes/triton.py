"""Triton mode at start time (T1): the command an instance runs when the deployment names none.

An unmodified Triton image is deployed with only `CONTAINER_TYPE=TRITON`: NVIDIA's images start
no server by themselves, so the service does, the way the docker and process runtimes both see
it (`dockyard check` included, as it runs through the same runtimes).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from dockyard.domain import deployments as rules
from dockyard.errors import InvalidParameter
from dockyard.runtimes.base import InstanceSpec


def with_server_command(
    spec: InstanceSpec, image_entrypoint: Sequence[str] | None = None, image_cmd: Sequence[str] | None = None
) -> InstanceSpec:
    """`spec` with `cmd` set to `tritonserver --model-repository=... --http-port=<serverPort> ...`
    when it is a Triton-mode container spec without entrypoint or cmd whose image (if known)
    starts nothing by itself (`rules.image_starts_a_server`); otherwise `spec` unchanged.

    An explicit `[]` counts as given (the user cleared it on purpose). The repository is the
    artifact's `model_repository/` folder when it has one, else the artifact itself. Raises
    `InvalidParameter` (T1) when the health port differs from the server port: tritonserver
    answers /v2/health/ready on its one HTTP port, so such an instance could never be healthy.
    """
    if spec.kind != "OCIR_CONTAINER" or not rules.is_triton(spec.environment):
        return spec
    if spec.entrypoint is not None or spec.cmd is not None:
        return spec
    if rules.image_starts_a_server(list(image_entrypoint or []), list(image_cmd or [])):
        return spec
    if spec.health_port != spec.server_port:
        raise InvalidParameter(
            f"Triton mode without entrypoint/cmd starts tritonserver with its HTTP endpoint on serverPort "
            f"{spec.server_port}, where it also answers health, but healthCheckPort is {spec.health_port}: set "
            f"healthCheckPort to {spec.server_port} (or give the command that starts the server)", rule="T1"
        )
    folder = spec.artifact_dir is not None and (spec.artifact_dir / rules.TRITON_REPOSITORY_FOLDER).is_dir()
    return dataclasses.replace(spec, cmd=rules.triton_server_command(spec.server_port, folder))

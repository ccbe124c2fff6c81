"""Triton mode at start time (T1): the command an instance runs when the deployment names none.

An unmodified Triton image is deployed with only `CONTAINER_TYPE=TRITON`: NVIDIA's images start
no server by themselves, so the service does, the way the docker and process runtimes both see
it (`dockyard check` included, as it runs through the same runtimes).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from dockyard.domain import deployments as rules
from dockyard.runtimes.base import InstanceSpec


def with_server_command(
    spec: InstanceSpec, image_entrypoint: Sequence[str] | None = None, image_cmd: Sequence[str] | None = None
) -> InstanceSpec:
    """`spec` with `cmd` set to `tritonserver --model-repository=... --http-port=<serverPort> ...`
    when it is a Triton-mode container spec without entrypoint or cmd whose image (if known)
    does not start tritonserver itself; otherwise `spec` unchanged.

    An explicit `[]` counts as given (the user cleared it on purpose). The repository is the
    artifact's `model_repository/` folder when it has one, else the artifact itself.
    """
    if spec.kind != "OCIR_CONTAINER" or not rules.is_triton(spec.environment):
        return spec
    if spec.entrypoint is not None or spec.cmd is not None:
        return spec
    if rules.starts_tritonserver(list(image_entrypoint or [])) or rules.starts_tritonserver(list(image_cmd or [])):
        return spec
    folder = spec.artifact_dir is not None and (spec.artifact_dir / rules.TRITON_REPOSITORY_FOLDER).is_dir()
    return dataclasses.replace(spec, cmd=rules.triton_server_command(spec.server_port, folder))

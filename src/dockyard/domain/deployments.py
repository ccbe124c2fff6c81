"""Pure rules about a deployment's configuration: validation, instance count, identity.

The configuration is the wire-format ``modelDeploymentConfigurationDetails`` dict, with its
defaults filled in by `complete()` so every stored deployment echoes its discriminators.
"""

from __future__ import annotations

import copy
import hashlib
import json
from typing import Any

from dockyard.domain.shapes import BY_NAME
from dockyard.domain.validation import Problem, check_environment_configuration, check_not_blank

SUPPORTED_DEPLOYMENT_TYPES = ("SINGLE_MODEL",)
DEFAULT_HEALTH_PATH = "/health"
DEFAULT_PREDICT_PATH = "/predict"


def complete(config: dict[str, Any]) -> dict[str, Any]:
    """The configuration with the service's defaults made explicit (fixed size 1, DEFAULT env)."""
    config = copy.deepcopy(config)
    model = config.setdefault("modelConfigurationDetails", {})
    model.setdefault("scalingPolicy", {"policyType": "FIXED_SIZE", "instanceCount": 1})
    if not config.get("environmentConfigurationDetails"):
        config["environmentConfigurationDetails"] = {"environmentConfigurationType": "DEFAULT"}
    return config


def environment(config: dict[str, Any]) -> dict[str, Any]:
    return config.get("environmentConfigurationDetails") or {"environmentConfigurationType": "DEFAULT"}


def model_id(config: dict[str, Any]) -> str:
    return str(config["modelConfigurationDetails"]["modelId"])


def replicas(config: dict[str, Any]) -> int:
    """How many instances the scaling policy asks for now."""
    policy = config["modelConfigurationDetails"].get("scalingPolicy") or {"policyType": "FIXED_SIZE", "instanceCount": 1}
    if policy.get("policyType") == "AUTOSCALING":
        rules = policy.get("autoScalingPolicies") or [{}]
        first = rules[0]
        return int(first.get("initialInstanceCount") or first.get("minimumInstanceCount") or 1)
    return int(policy.get("instanceCount") or 1)


def validate(config: dict[str, Any], max_instances: int) -> list[Problem]:
    """Every rule a complete configuration must satisfy; an empty list means valid."""
    problems: list[Problem] = []
    kind = config.get("deploymentType")
    if kind not in SUPPORTED_DEPLOYMENT_TYPES:
        problems.append(
            Problem(
                "TYPE",
                "modelDeploymentConfigurationDetails.deploymentType",
                f"{kind} deployments are not served by dockyard; use SINGLE_MODEL",
            )
        )
        return problems
    model = config.get("modelConfigurationDetails") or {}
    where = "modelDeploymentConfigurationDetails.modelConfigurationDetails"
    check_not_blank(model.get("modelId"), f"{where}.modelId", problems)
    instance = model.get("instanceConfiguration") or {}
    shape_name = instance.get("instanceShapeName")
    shape = BY_NAME.get(shape_name or "")
    if shape is None:
        problems.append(
            Problem(
                "SHAPE",
                f"{where}.instanceConfiguration.instanceShapeName",
                f"{shape_name!r} is not a known shape; use one of {sorted(BY_NAME)} (ListModelDeploymentShapes)",
            )
        )
    else:
        size = instance.get("modelDeploymentInstanceShapeConfigDetails") or {}
        ocpus, memory = size.get("ocpus"), size.get("memoryInGBs")
        field = f"{where}.instanceConfiguration.modelDeploymentInstanceShapeConfigDetails"
        if not shape.flex and (ocpus or memory):
            problems.append(Problem("SHAPE", field, f"{shape.name} has a fixed size; remove ocpus/memoryInGBs or use a Flex shape"))
        if shape.flex and ocpus is not None and ocpus > shape.core_count:
            problems.append(Problem("SHAPE", f"{field}.ocpus", f"{ocpus} is over {shape.name}'s maximum of {shape.core_count}"))
        if shape.flex and memory is not None and memory > shape.memory_in_gbs:
            problems.append(
                Problem("SHAPE", f"{field}.memoryInGBs", f"{memory} is over {shape.name}'s maximum of {shape.memory_in_gbs}")
            )
    count = replicas(config)
    if count > max_instances:
        problems.append(
            Problem(
                "SCALE",
                f"{where}.scalingPolicy",
                f"{count} instances is over this server's limit of {max_instances} (setting DOCKYARD_MAX_INSTANCES)",
            )
        )
    check_environment_configuration(environment(config), "modelDeploymentConfigurationDetails.environmentConfigurationDetails", problems)
    return problems


# Parts of a deployment that do not change what runs: changing them needs no new instance.
_NOT_RUNTIME = ("bandwidthMbps", "maximumBandwidthMbps", "scalingPolicy")


def spec_hash(config: dict[str, Any], artifact_sha256: str | None) -> str:
    """Identity of what one instance runs. Instances with another hash are an older version.

    The instance count and bandwidth are left out: scaling adds or removes instances of the
    same version instead of replacing them all.
    """
    model = {k: v for k, v in config.get("modelConfigurationDetails", {}).items() if k not in _NOT_RUNTIME}
    identity = {"model": model, "environment": environment(config), "artifact": artifact_sha256}
    canonical = json.dumps(identity, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def health_path(config: dict[str, Any]) -> str:
    env = environment(config)
    variables = env.get("environmentVariables") or {}
    if is_triton(variables):
        return variables.get("MODEL_DEPLOY_HEALTH_ENDPOINT") or TRITON_HEALTH_PATH
    return variables.get("MODEL_DEPLOY_HEALTH_ENDPOINT") or DEFAULT_HEALTH_PATH


# --- Triton mode (T1) ---------------------------------------------------------------------------

TRITON_HEALTH_PATH = "/v2/health/ready"
# The folder of the artifact that holds the model repository; without it, the artifact's root is
# the repository (each top-level folder one model).
TRITON_REPOSITORY_FOLDER = "model_repository"
ARTIFACT_MOUNT = "/opt/ds/model/deployed_model"
TRITON_EXIT_TIMEOUT_S = 5  # under the runtimes' 10 s stop grace: see triton_server_command


def is_triton(variables: dict[str, str]) -> bool:
    return str(variables.get("CONTAINER_TYPE", "")).strip().upper() == "TRITON"


def triton_server_command(server_port: int, repository_folder: bool) -> list[str]:
    """What runs when a Triton-mode deployment names no command: NVIDIA's images start no server
    by themselves (their entrypoint runs its arguments), so the service starts tritonserver on the
    artifact's model repository, with its HTTP endpoint on the deployment's serverPort.

    gRPC and metrics are switched off: the service forwards only the HTTP port, and on the process
    runtime their fixed ports (8001, 8002) would collide between instances.

    On SIGTERM tritonserver waits for every open HTTP connection to close, idle keep-alive ones
    included (the gateway's pool, health probes), for up to --exit-timeout-secs (30 by default):
    longer than the runtimes' 10 s stop grace, so every stop ended in SIGKILL. 5 s lets it drain
    in-flight requests, unload its models and exit on its own.
    """
    repository = f"{ARTIFACT_MOUNT}/{TRITON_REPOSITORY_FOLDER}" if repository_folder else ARTIFACT_MOUNT
    return ["tritonserver", f"--model-repository={repository}", f"--http-port={server_port}",
            "--allow-grpc=false", "--allow-metrics=false", f"--exit-timeout-secs={TRITON_EXIT_TIMEOUT_S}"]


# Entrypoints that only run their arguments (NVIDIA's images have the first), and shells, which
# run nothing without a command (`docker run` of NVIDIA's image gives a shell, then exits).
_PASS_THROUGH_ENTRYPOINTS = ("nvidia_entrypoint.sh", "tini", "docker-init", "dumb-init")
_SHELLS = ("bash", "sh", "dash")


def image_starts_a_server(entrypoint: list[str] | None, cmd: list[str] | None) -> bool:
    """Whether an image's own ENTRYPOINT/CMD run something of their own (then the service keeps
    them): anything but a pass-through entrypoint or a bare shell, with no CMD or a bare shell."""
    def bare(words: list[str], allowed: tuple[str, ...]) -> bool:
        return not words or (len(words) == 1 and words[0].rsplit("/", 1)[-1] in allowed)

    return not (bare(list(entrypoint or []), _PASS_THROUGH_ENTRYPOINTS + _SHELLS) and bare(list(cmd or []), _SHELLS))

"""The partial-update rules U1–U7, as pure functions over wire-format dicts.

- U1/U7: a field present and non-null in the update replaces the stored one; absent or null
  fields stay. The stored object is never replaced whole.
- U3: an environment configuration that is null or ``{}`` changes nothing.
- U4: below the top level a field is replaced only when it is not null.
- U5/U6: lists and maps are replaced whole; ``[]`` / ``{}`` clear them.
- D4: image and imageDigest can never be cleared.

Nested *details* objects (the deployment configuration, its model and environment parts, the
instance configuration) merge field by field; polymorphic leaves such as ``scalingPolicy`` are
replaced whole, since mixing two policy types would make no sense.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from dockyard.domain.validation import Problem, raise_if_any

Merger = Callable[[dict[str, Any], dict[str, Any]], dict[str, Any]]

# Fields that only the service writes; an update that carries them is ignored for them.
RESPONSE_ONLY_ENV_FIELDS = frozenset({"defaultEnvironmentVariables"})


def overlay(stored: dict[str, Any], update: dict[str, Any] | None, nested: dict[str, Merger] | None = None) -> dict[str, Any]:
    """`stored` with every non-null field of `update` laid over it (U1, U4, U6).

    Fields named in `nested` are merged with their own merger instead of being replaced.
    """
    result = copy.deepcopy(stored)
    if not update:
        return result
    nested = nested or {}
    for name, value in update.items():
        if value is None:
            continue
        if name in nested and isinstance(result.get(name), dict) and isinstance(value, dict):
            result[name] = nested[name](result[name], value)
        else:
            result[name] = copy.deepcopy(value)
    return result


def _merge_instance_configuration(stored: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    return overlay(stored, update, {"modelDeploymentInstanceShapeConfigDetails": overlay})


def _merge_model_configuration(stored: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    return overlay(stored, update, {"instanceConfiguration": _merge_instance_configuration})


def merge_environment(stored: dict[str, Any], update: dict[str, Any] | None) -> dict[str, Any]:
    """U3/U4/U6/D4 on an environment configuration."""
    if not update:  # U3: null or {} changes nothing
        return copy.deepcopy(stored)
    problems: list[Problem] = []
    for name in ("image", "imageDigest"):
        if name in update and isinstance(update[name], str) and not update[name].strip():
            problems.append(
                Problem("D4", f"environmentConfigurationDetails.{name}", f"{name} can never be cleared; send null to keep it or a new value to change it")
            )
    raise_if_any(problems)
    update = {k: v for k, v in update.items() if k not in RESPONSE_ONLY_ENV_FIELDS}
    stored_kind = stored.get("environmentConfigurationType", "DEFAULT")
    kind = update.get("environmentConfigurationType") or stored_kind
    if kind != stored_kind:
        # A change of environment type starts from the new type's fields only: nothing of the
        # old type's (image, ports, ...) would be meaningful under the new one.
        return {k: copy.deepcopy(v) for k, v in update.items() if v is not None} | {"environmentConfigurationType": kind}
    merged = overlay(stored, update)
    merged["environmentConfigurationType"] = kind
    if update.get("image") and update.get("image") != stored.get("image") and not update.get("imageDigest"):
        # D2/D3: a new image without a digest gets its digest resolved again; keeping the old
        # image's digest would silently run the old image.
        merged.pop("imageDigest", None)
    return merged


def merge_deployment_configuration(stored: dict[str, Any], update: dict[str, Any] | None) -> dict[str, Any]:
    if not update:
        return copy.deepcopy(stored)
    kind = update.get("deploymentType")
    if kind and kind != stored.get("deploymentType"):
        raise_if_any(
            [
                Problem(
                    "U1",
                    "modelDeploymentConfigurationDetails.deploymentType",
                    f"a {stored.get('deploymentType')} deployment cannot become {kind}; create a new deployment instead",
                )
            ]
        )
    merged = overlay(
        stored,
        {k: v for k, v in update.items() if k != "environmentConfigurationDetails"},
        {"modelConfigurationDetails": _merge_model_configuration},
    )
    if "environmentConfigurationDetails" in update:
        merged["environmentConfigurationDetails"] = merge_environment(
            stored.get("environmentConfigurationDetails") or {"environmentConfigurationType": "DEFAULT"},
            update.get("environmentConfigurationDetails"),
        )
    return merged


def merge_deployment_update(stored: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """The deployment body after applying an UpdateModelDeploymentDetails body.

    Accepts the SDK's nested shape (``modelDeploymentConfigurationDetails.environmentConfigurationDetails``)
    and the shorthand the BYOC documentation shows (``environmentConfigurationDetails`` at the top
    level of the update); giving both is ambiguous and refused.
    """
    config_update = copy.deepcopy(update.get("modelDeploymentConfigurationDetails")) or {}
    shorthand = update.get("environmentConfigurationDetails")
    if shorthand is not None:
        if config_update.get("environmentConfigurationDetails") is not None:
            raise_if_any(
                [
                    Problem(
                        "U1",
                        "environmentConfigurationDetails",
                        "given both at the top level and inside modelDeploymentConfigurationDetails; send it once",
                    )
                ]
            )
        config_update["environmentConfigurationDetails"] = shorthand
    top = {k: v for k, v in update.items() if k not in ("modelDeploymentConfigurationDetails", "environmentConfigurationDetails")}
    merged = overlay(stored, top, {"categoryLogDetails": overlay})
    merged["modelDeploymentConfigurationDetails"] = merge_deployment_configuration(
        stored["modelDeploymentConfigurationDetails"], config_update
    )
    return merged

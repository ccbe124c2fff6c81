"""Model deployments on the wire (request bodies), with their discriminated unions.

Discriminators (`deploymentType`, `environmentConfigurationType`, `policyType`) pick the
concrete class exactly as the OCI SDK's `get_subtype` does; a missing or unknown one is a 400
that lists the accepted values.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import Field, StrictInt

from dockyard.schemas.base import Wire
from dockyard.schemas.common import CategoryLogDetails, Named

Port = Annotated[Union[int, str], Field(union_mode="left_to_right")]


class ShapeConfigDetails(Wire):
    ocpus: float | None = Field(None, gt=0)
    memory_in_gbs: float | None = Field(None, gt=0, alias="memoryInGBs")
    cpu_baseline: Literal["BASELINE_1_8", "BASELINE_1_2", "BASELINE_1_1"] | None = None


class InstanceConfiguration(Wire):
    instance_shape_name: str
    model_deployment_instance_shape_config_details: ShapeConfigDetails | None = None
    subnet_id: str | None = None
    private_endpoint_id: str | None = None
    network_access_type: str | None = None
    capacity_reservation_ids: list[str] | None = None


class UpdateInstanceConfiguration(InstanceConfiguration):
    instance_shape_name: str | None = None  # type: ignore[assignment]


class FixedSizeScalingPolicy(Wire):
    policy_type: Literal["FIXED_SIZE"]
    instance_count: StrictInt = Field(ge=1, le=64)


class AutoScalingPolicy(Wire):
    policy_type: Literal["AUTOSCALING"]
    cool_down_in_seconds: StrictInt | None = Field(None, ge=0)
    is_enabled: bool | None = None
    auto_scaling_policies: list[dict[str, Any]] = Field(min_length=1)


ScalingPolicy = Annotated[Union[FixedSizeScalingPolicy, AutoScalingPolicy], Field(discriminator="policy_type")]


class ModelConfigurationDetails(Wire):
    model_id: str
    model_artifact_signature_id: str | None = None
    instance_configuration: InstanceConfiguration
    scaling_policy: ScalingPolicy | None = None
    bandwidth_mbps: StrictInt | None = Field(None, ge=1)
    maximum_bandwidth_mbps: StrictInt | None = Field(None, ge=1)


class UpdateModelConfigurationDetails(ModelConfigurationDetails):
    model_id: str | None = None  # type: ignore[assignment]
    instance_configuration: UpdateInstanceConfiguration | None = None  # type: ignore[assignment]


class InferenceHttpEndpoint(Wire):
    endpoint_uri_suffix: str
    http_methods: list[str]


class DefaultEnvironment(Wire):
    environment_configuration_type: Literal["DEFAULT"]
    environment_variables: dict[str, str] | None = None


class OcirEnvironment(Wire):
    environment_configuration_type: Literal["OCIR_CONTAINER"]
    image: str | None = None
    image_digest: str | None = None
    image_signature_id: str | None = None
    cmd: list[str] | None = None
    entrypoint: list[str] | None = None
    server_port: Port | None = None
    health_check_port: Port | None = None
    environment_variables: dict[str, str] | None = None
    predict_api_specification: str | None = None
    custom_http_endpoints: list[InferenceHttpEndpoint] | None = None


EnvironmentConfiguration = Annotated[
    Union[DefaultEnvironment, OcirEnvironment], Field(discriminator="environment_configuration_type")
]


class UpdateEnvironment(OcirEnvironment):
    """Either environment type's fields; the type may be omitted (it is then the stored one)."""

    environment_configuration_type: Literal["DEFAULT", "OCIR_CONTAINER"] | None = None  # type: ignore[assignment]


class SingleModelConfiguration(Wire):
    deployment_type: Literal["SINGLE_MODEL"]
    model_configuration_details: ModelConfigurationDetails
    environment_configuration_details: EnvironmentConfiguration | None = None


class ModelGroupConfiguration(Wire):
    """Known to the wire format, not served by dockyard yet (refused with a clear message)."""

    deployment_type: Literal["MODEL_GROUP"]


class SingleModelFlexConfiguration(Wire):
    """Known to the wire format, not served by dockyard yet (refused with a clear message)."""

    deployment_type: Literal["SINGLE_MODEL_FLEX"]


DeploymentConfiguration = Annotated[
    Union[SingleModelConfiguration, ModelGroupConfiguration, SingleModelFlexConfiguration],
    Field(discriminator="deployment_type"),
]


class UpdateDeploymentConfiguration(Wire):
    deployment_type: Literal["SINGLE_MODEL", "MODEL_GROUP", "SINGLE_MODEL_FLEX"] | None = None
    model_configuration_details: UpdateModelConfigurationDetails | None = None
    environment_configuration_details: UpdateEnvironment | None = None


class CreateModelDeploymentDetails(Named):
    project_id: str
    compartment_id: str
    model_deployment_configuration_details: DeploymentConfiguration
    category_log_details: CategoryLogDetails | None = None


class UpdateModelDeploymentDetails(Named):
    model_deployment_configuration_details: UpdateDeploymentConfiguration | None = None
    category_log_details: CategoryLogDetails | None = None
    # The shorthand the BYOC documentation shows (U2): the environment at the top level.
    environment_configuration_details: UpdateEnvironment | None = None

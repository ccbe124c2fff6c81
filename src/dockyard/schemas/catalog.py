"""Projects, models and model provenance on the wire (request bodies)."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from dockyard.schemas.base import Wire
from dockyard.schemas.common import Metadata, Named


class CreateProjectDetails(Named):
    compartment_id: str


class UpdateProjectDetails(Named):
    pass


class CreateModelDetails(Named):
    compartment_id: str
    project_id: str
    custom_metadata_list: list[Metadata] | None = None
    defined_metadata_list: list[Metadata] | None = None
    input_schema: str | None = None
    output_schema: str | None = None
    model_version_set_id: str | None = None
    version_label: str | None = None
    retention_setting: dict[str, Any] | None = None
    backup_setting: dict[str, Any] | None = None


class UpdateModelDetails(Named):
    custom_metadata_list: list[Metadata] | None = None
    defined_metadata_list: list[Metadata] | None = None
    model_version_set_id: str | None = None
    version_label: str | None = None
    retention_setting: dict[str, Any] | None = None
    backup_setting: dict[str, Any] | None = None


class ModelProvenanceDetails(Wire):
    repository_url: str | None = Field(None, max_length=1024)
    git_branch: str | None = None
    git_commit: str | None = None
    script_dir: str | None = None
    training_script: str | None = None
    training_id: str | None = None

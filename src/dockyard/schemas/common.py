"""Wire types shared by several resources."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from dockyard.schemas.base import Wire

FreeformTags = dict[str, str]
DefinedTags = dict[str, dict[str, Any]]


class ChangeCompartmentDetails(Wire):
    compartment_id: str


class Metadata(Wire):
    key: str | None = None
    value: str | None = None
    description: str | None = None
    category: str | None = None
    keywords: list[str] | None = None
    has_artifact: bool | None = None


class LogDetails(Wire):
    log_id: str
    log_group_id: str


class CategoryLogDetails(Wire):
    access: LogDetails | None = None
    predict: LogDetails | None = None


class Tagged(Wire):
    freeform_tags: FreeformTags | None = None
    defined_tags: DefinedTags | None = None


class Named(Tagged):
    display_name: str | None = Field(None, max_length=255)
    description: str | None = Field(None, max_length=400)

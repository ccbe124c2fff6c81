"""The services one server instance runs, built once by the composition root (server.py)."""

from __future__ import annotations

from dataclasses import dataclass

from dockyard.service.deployments import DeploymentService
from dockyard.service.models import ModelService
from dockyard.service.projects import ProjectService
from dockyard.service.work_requests import WorkRequests
from dockyard.settings import Settings
from dockyard.store.artifacts import FilesystemArtifactStore
from dockyard.store.logs import LogStore
from dockyard.store.metadata import SqlMetadataStore


@dataclass
class Services:
    settings: Settings
    store: SqlMetadataStore
    blobs: FilesystemArtifactStore
    work_requests: WorkRequests
    projects: ProjectService
    models: ModelService
    deployments: DeploymentService
    logs: LogStore  # access and predict logs of deployments

"""The records the metadata store reads and writes (plain data; no SQL here).

`Record` is one resource (its wire document plus service-only state); the others are a work
request and its entries, an artifact's metadata, an instance as last observed, and a `Page` of
any of them.
"""

from __future__ import annotations

import copy
import secrets
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Any


def now_iso(moment: datetime | None = None) -> str:
    """UTC time as RFC 3339 with microseconds and `Z`: fixed width, so it sorts as text."""
    moment = moment or datetime.now(timezone.utc)
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def new_etag() -> str:
    return secrets.token_hex(16)


@dataclass
class Record:
    """One project, model or model deployment: its wire document plus service-only state."""

    id: str
    kind: str
    body: dict[str, Any]
    internal: dict[str, Any] = field(default_factory=dict)
    etag: str = field(default_factory=new_etag)

    @property
    def state(self) -> str:
        return str(self.body["lifecycleState"])

    def copy(self) -> Record:
        return replace(self, body=copy.deepcopy(self.body), internal=copy.deepcopy(self.internal))


@dataclass
class WorkRequestRecord:
    id: str
    compartment_id: str
    operation_type: str
    status: str
    percent_complete: float
    resource_id: str
    time_accepted: str
    time_started: str | None = None
    time_finished: str | None = None
    body: dict[str, Any] = field(default_factory=dict)


@dataclass
class ArtifactRecord:
    model_id: str
    sha256: str
    md5_b64: str
    size: int
    content_disposition: str | None
    time_created: str
    etag: str


@dataclass
class InstanceRecord:
    """The reconciler's last observation of one instance (see schema.instances)."""

    instance_id: str
    deployment_id: str
    spec_hash: str
    runtime: str
    state: str
    health: str
    host: str
    server_port: int | None
    health_port: int | None
    restarts: int = 0
    time_started: str | None = None
    time_last_probe: str | None = None
    last_probe: str | None = None
    detail: str | None = None


@dataclass
class Entry:
    kind: str
    message: str
    timestamp: str
    code: str | None = None


@dataclass
class Page:
    items: list[Any]
    has_more: bool

"""Everything one check measured, as plain records (pure: no I/O, no engine types).

`probe_run` fills a `Measurements`; `rules.judge` turns it into verdicts. Keeping the two apart
lets every verdict be tested on hand-written measurements, without an engine.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from dockyard.checking.inputs import CheckRequest
from dockyard.checking.sockets import Listener

ARTIFACT_MOUNT = "/opt/ds/model/deployed_model"  # A3
_EROFS = re.compile(r"read-only file system", re.IGNORECASE)


@dataclass(frozen=True)
class RegistryEvidence:
    """The registry side of the image (C11, D1). ``named`` is False for a local name
    (``team/app:1``: no registry host), and then nothing else is filled in."""

    named: bool
    registry: str = ""
    allowed_as: str = ""  # why the registry may be used ("a registry on this machine", ...)
    refused: str = ""  # the C11 refusal, when it is refused
    digest: str | None = None  # what the tag (or the given digest) resolves to
    compressed_bytes: int | None = None
    error: str = ""  # why resolving failed
    unreachable: bool = False
    digest_given: bool = False


@dataclass(frozen=True)
class ArtifactEvidence:
    source: str  # what the user gave, in words
    files: int
    bytes: int


@dataclass(frozen=True)
class ImageEvidence:
    ran: str  # the reference the container was created from
    size_bytes: int | None
    has_curl: bool | None
    entrypoint: list[str] | None  # the image's own
    cmd: list[str] | None
    local_differs: bool = False  # the local image of the tag is not what the registry has
    rejected: str = ""  # why the runtime refused the image (C7), if it did


@dataclass(frozen=True)
class Exit:
    """The container stopped by itself before the check was done with it."""

    code: int | None
    after_s: float
    detail: str  # the runtime's words: exit code meaning, OOM, last log lines
    start_error: str = ""  # set when the engine could not even start the command
    after_healthy: bool = False  # it had become healthy first: it died later (on POST /predict?)


@dataclass
class HealthWatch:
    """The service's readiness probe (GET health path on the health port), repeated."""

    budget_s: float
    patience_s: float
    waited_s: float = 0.0
    healthy_after_s: float | None = None
    probes: int = 0
    statuses: dict[int, int] = field(default_factory=dict)  # HTTP status -> count
    answered: bool = False  # any HTTP answer at all
    last_detail: str = ""
    # "" (healthy), "exited", "budget", "status" (a conclusive non-200), "ports" (only other ports)
    gave_up: str = ""

    def record(self, status: int | None, detail: str) -> None:
        self.probes += 1
        self.last_detail = detail
        if status is not None:
            self.answered = True
            self.statuses[status] = self.statuses.get(status, 0) + 1


@dataclass(frozen=True)
class HttpAnswer:
    method: str
    path: str
    status: int | None  # None: no HTTP answer
    seconds: float
    content_type: str = ""
    body: str = ""  # the beginning of the body, as text
    location: str = ""
    error: str = ""  # why there was no answer


@dataclass(frozen=True)
class StopEvidence:
    seconds: float
    exit_code: int | None
    killed: bool
    timeout_s: float


@dataclass
class Measurements:
    request: CheckRequest
    deployment_id: str
    health_path: str
    predict_path: str
    triton: bool = False
    registry: RegistryEvidence = field(default_factory=lambda: RegistryEvidence(False))
    artifact: ArtifactEvidence | None = None
    image: ImageEvidence | None = None
    started: bool = False
    exit: Exit | None = None
    health: HealthWatch | None = None
    listeners: list[Listener] | None = None  # None: could not be read (no `cat` in the image)
    inner_health: str = ""  # Docker's HEALTHCHECK status: HEALTHY / UNHEALTHY / "" (unknown)
    inner_detail: str = ""
    predict: HttpAnswer | None = None
    predict_other: HttpAnswer | None = None  # the same POST with the trailing slash toggled (C4)
    stop: StopEvidence | None = None
    running_s: float = 0.0  # how long the container ran before the check stopped it
    logs: str = ""
    seconds: float = 0.0


def refused_writes(logs: str, limit: int = 3) -> list[str]:
    """Log lines saying a write failed on a read-only file system (EROFS), first `limit`.

    The container's root filesystem is writable, so such a write almost always went to the
    artifact mount (A3).
    """
    lines: list[str] = []
    for line in logs.splitlines():
        text = line.strip()
        if _EROFS.search(text) and text not in lines:
            lines.append(text[:300])
            if len(lines) == limit:
                break
    return lines

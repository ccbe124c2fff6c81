"""Follow the engine's pull stream: progress lines for people, failures sorted by cause (pure).

`POST /images/create` answers a stream of JSON messages, one per layer event
(``{"id": "a1b2", "status": "Downloading", "progressDetail": {"current": .., "total": ..}}``)
and, when the pull fails half-way, ``{"error": "..."}`` with the HTTP status still 200. This
module turns the messages into a few readable lines and error texts into dockyard errors;
`docker_images.py` does the I/O.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from dockyard.errors import (
    DockyardError,
    InternalServerError,
    RelatedResourceNotFound,
    ServiceUnavailable,
)

MB = 1_000_000

_DONE = {"Pull complete", "Already exists"}
_FIRST = {"Pulling fs layer", "Waiting", "Already exists", "Downloading"}
_LAYER = _DONE | {"Pulling fs layer", "Waiting", "Downloading", "Verifying Checksum",
                  "Download complete", "Extracting", "Retrying"}


@dataclass
class _Layer:
    total: int = 0  # compressed size, known once its download starts
    downloaded: int = 0
    done: bool = False
    cached: bool = False


@dataclass
class PullProgress:
    """Accumulates the stream; `update` says when a line is worth showing."""

    image: str
    interval_s: float = 2.0
    layers: dict[str, _Layer] = field(default_factory=dict)
    _last_line_at: float = -1e9
    _last_done: int = -1

    def update(self, message: Mapping[str, Any], now: float) -> str | None:
        """Feed one message; return a progress line when a layer finished or time has passed."""
        status = str(message.get("status") or "")
        layer_id = message.get("id")
        if not layer_id or status not in _LAYER and not status.startswith("Retrying"):
            return None
        if str(layer_id) not in self.layers and status not in _FIRST:
            return None  # not a layer (Podman reports the config blob too)
        layer = self.layers.setdefault(str(layer_id), _Layer())
        detail = message.get("progressDetail") or {}
        if status == "Downloading":
            layer.total = int(detail.get("total") or layer.total or 0)
            layer.downloaded = int(detail.get("current") or layer.downloaded)
        elif status in ("Download complete", "Verifying Checksum", "Extracting"):
            layer.downloaded = layer.total or layer.downloaded
        if status in _DONE:
            layer.done = True
            layer.cached = status == "Already exists"
            layer.downloaded = layer.total or layer.downloaded
        done = self.done_count
        if done != self._last_done or now - self._last_line_at >= self.interval_s:
            self._last_done, self._last_line_at = done, now
            return self.line()
        return None

    @property
    def done_count(self) -> int:
        return sum(1 for layer in self.layers.values() if layer.done)

    def line(self) -> str:
        total = sum(layer.total for layer in self.layers.values())
        downloaded = sum(layer.downloaded for layer in self.layers.values())
        sizes = f", {downloaded / MB:.0f} MB of {total / MB:.0f} MB downloaded" if total else ""
        return f"pull: {self.image}: {self.done_count}/{len(self.layers)} layers done{sizes}"

    def summary(self, seconds: float) -> str:
        cached = sum(1 for layer in self.layers.values() if layer.cached)
        total = sum(layer.total for layer in self.layers.values())
        reused = f", {cached} already present" if cached else ""
        return (f"pull: {self.image}: pulled in {seconds:.1f} s ({len(self.layers)} layers"
                f"{reused}, {total / MB:.0f} MB downloaded)")


class PullFailure(enum.Enum):
    NOT_FOUND = "not found"
    DENIED = "denied"
    UNREACHABLE = "unreachable"
    OTHER = "other"


def classify(error_text: str) -> PullFailure:
    """Sort an engine's pull error by what the user must do about it."""
    text = error_text.lower()
    if any(word in text for word in ("unauthorized", "denied", "authentication required",
                                     "forbidden", "no basic auth credentials")):
        # Docker answers "pull access denied ... repository does not exist or may require
        # 'docker login'" for both cases; the access hint covers both.
        return PullFailure.DENIED
    if any(word in text for word in ("not found", "manifest unknown", "name unknown",
                                     "no such image", "does not exist")):
        return PullFailure.NOT_FOUND
    if any(word in text for word in ("connection refused", "no such host", "i/o timeout",
                                     "dial tcp", "tls handshake", "timeout", "eof",
                                     "network is unreachable", "server gave http response")):
        return PullFailure.UNREACHABLE
    return PullFailure.OTHER


def pull_failure(image: str, host: str, text: str, had_credentials: bool) -> DockyardError:
    """The error to raise for a failed pull, by cause: C8 access, C12 gone, unreachable."""
    kind = classify(text)
    if kind is PullFailure.DENIED:
        creds = ("the credentials configured for it were refused" if had_credentials
                 else "no credentials are configured for it")
        return RelatedResourceNotFound(
            f"pull: the registry {host} refused access to {image} ({text}); {creds}: give "
            f"the service credentials for {host} and check the access policy", rule="C8")
    if kind is PullFailure.NOT_FOUND:
        return RelatedResourceNotFound(
            f"pull: {image} is not in the registry {host} ({text}); push it again, or update "
            "the deployment's image and digest (the image must stay in the registry for the "
            "whole life of the deployment)", rule="C12")
    if kind is PullFailure.UNREACHABLE:
        return ServiceUnavailable(f"pull: the registry {host} cannot be reached ({text}); "
                                  "check the registry's address and the network, then retry")
    return InternalServerError(f"pull: pulling {image} failed: {text}")

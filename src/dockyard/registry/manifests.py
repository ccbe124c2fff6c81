"""Image manifests as registries serve them: media types, platforms, digests, sizes.

Pure functions over bytes and parsed JSON; the client does the I/O. Problems with a
document raise :class:`ManifestError` (a ValueError) describing what is wrong with it; the
client adds which image and registry it came from.
"""

from __future__ import annotations

import hashlib
import json
import platform as _platform
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_SCHEMA1 = frozenset(
    {
        "application/vnd.docker.distribution.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.v1+prettyjws",
    }
)
IMAGE_MANIFEST_TYPES = frozenset({DOCKER_MANIFEST, OCI_MANIFEST})
INDEX_TYPES = frozenset({DOCKER_MANIFEST_LIST, OCI_INDEX})
IMAGE_CONFIG_TYPES = frozenset(
    {"application/vnd.docker.container.image.v1+json", "application/vnd.oci.image.config.v1+json"}
)

#: Sent on every manifest request. Registries answer a request without these with an old
#: schema-1 conversion (another digest) or, for OCI content, 404: all four are needed for the
#: digest to be the one `docker push` printed.
ACCEPT_HEADER = ", ".join([DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, OCI_MANIFEST, OCI_INDEX])

_DIGEST = re.compile(r"sha256:[a-f0-9]{64}")

# Go architecture names (what manifests use) for Python's platform.machine() values.
_MACHINE_TO_ARCH = {
    "x86_64": "amd64",
    "amd64": "amd64",
    "aarch64": "arm64",
    "arm64": "arm64",
    "armv7l": "arm",
    "ppc64le": "ppc64le",
    "s390x": "s390x",
}


class ManifestError(ValueError):
    """A manifest that is not a usable container image; the message says why."""


@dataclass(frozen=True)
class Platform:
    """An image platform as manifests name it: ``linux/amd64``, ``linux/arm64/v8``."""

    os: str
    architecture: str
    variant: str | None = None

    @classmethod
    def parse(cls, text: str) -> Platform:
        """``os/arch[/variant]``; raises ValueError for anything else."""
        parts = text.strip().lower().split("/")
        if len(parts) not in (2, 3) or not all(parts):
            raise ValueError(f"platform '{text}' must look like 'linux/amd64' or 'linux/arm64/v8'")
        return cls(parts[0], parts[1], parts[2] if len(parts) == 3 else None)

    @classmethod
    def of_host(cls) -> Platform:
        """``linux/<this machine's architecture>``; amd64 when the machine is not recognised,
        since that is what nearly every image is built for."""
        return cls("linux", _MACHINE_TO_ARCH.get(_platform.machine().lower(), "amd64"))

    def matches(self, entry: Mapping[str, Any]) -> bool:
        """Whether an index entry's ``platform`` object is this platform. A variant is
        compared only when this platform names one."""
        return (
            entry.get("os") == self.os
            and entry.get("architecture") == self.architecture
            and (self.variant is None or entry.get("variant") == self.variant)
        )

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)


@dataclass(frozen=True)
class Descriptor:
    """A reference from an index to one platform's manifest."""

    digest: str
    media_type: str
    platform: Platform


def sha256_digest(body: bytes) -> str:
    """``sha256:<hex>`` of ``body``: a manifest's digest is the hash of its exact bytes."""
    return "sha256:" + hashlib.sha256(body).hexdigest()


def parse_document(body: bytes) -> dict[str, Any]:
    """The manifest's JSON object; raises ManifestError when it is not one."""
    try:
        document = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ManifestError(f"the manifest is not valid JSON ({exc})") from exc
    if not isinstance(document, dict):
        raise ManifestError("the manifest is not a JSON object")
    return document


def media_type_of(content_type: str | None, document: Mapping[str, Any]) -> str:
    """The manifest's media type: the response's Content-Type when it is a manifest type, else
    the document's ``mediaType``, else guessed from its shape (OCI makes ``mediaType``
    optional; some registries answer ``application/json``)."""
    header = (content_type or "").split(";")[0].strip().lower()
    if header in IMAGE_MANIFEST_TYPES | INDEX_TYPES | DOCKER_SCHEMA1:
        return header
    declared = document.get("mediaType")
    if isinstance(declared, str) and declared:
        return declared
    if document.get("schemaVersion") == 1:
        return "application/vnd.docker.distribution.manifest.v1+json"
    if "manifests" in document:
        return OCI_INDEX
    if "config" in document and "layers" in document:
        return OCI_MANIFEST
    return header or "unknown"


def select_platform(index: Mapping[str, Any], wanted: Platform) -> Descriptor:
    """The first entry of an index / manifest list built for ``wanted``.

    Raises ManifestError naming the platforms the index does offer when none matches.
    """
    entries = index.get("manifests")
    if not isinstance(entries, list):
        raise ManifestError("the image index has no 'manifests' list")
    offered: list[str] = []
    for entry in entries:
        plat = entry.get("platform") if isinstance(entry, dict) else None
        if not isinstance(plat, dict):
            continue
        found = Platform(str(plat.get("os")), str(plat.get("architecture")), plat.get("variant"))
        offered.append(str(found))
        if wanted.matches(plat):
            digest, media_type = entry.get("digest"), entry.get("mediaType")
            # The digest goes into a URL: accept only the one well-formed shape.
            if not isinstance(digest, str) or not _DIGEST.fullmatch(digest):
                raise ManifestError(f"the index entry for {wanted} has no valid sha256 digest")
            if not isinstance(media_type, str):
                raise ManifestError(f"the index entry for {wanted} has no mediaType")
            return Descriptor(digest, media_type, found)
    # Attestation entries (BuildKit's unknown/unknown) are not platforms anyone can run.
    listed = ", ".join(p for p in offered if "unknown" not in p) or "none"
    raise ManifestError(f"the image index has no {wanted} image (it offers: {listed})")


def compressed_size(manifest: Mapping[str, Any]) -> int:
    """Bytes an engine downloads for an image manifest: its config plus all layers, as the
    manifest declares them. Raises ManifestError for a malformed or non-image manifest."""
    config = manifest.get("config")
    layers = manifest.get("layers")
    if not isinstance(config, dict) or not isinstance(layers, list):
        raise ManifestError("the manifest has no 'config' object and 'layers' list")
    config_type = config.get("mediaType")
    if config_type not in IMAGE_CONFIG_TYPES:
        # An OCI artifact (Helm chart, signature, SBOM ...) stored in a registry, not an image.
        raise ManifestError(f"its config has media type '{config_type}', not a container image's")
    return sum(_size(d, "config" if d is config else "layer") for d in [config, *layers])


def _size(descriptor: object, what: str) -> int:
    size = descriptor.get("size") if isinstance(descriptor, dict) else None
    # bool is an int in Python; a size of `true` is a malformed manifest.
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise ManifestError(f"a {what} descriptor has no valid 'size'")
    return size

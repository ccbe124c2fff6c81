"""OCI distribution client: resolve an image reference to its digest and size, with the
registry's authentication (Basic / Bearer), and the C11 region rule.

Public surface::

    parse_image_reference(image) -> ImageReference
    validate_digest(digest) -> str
    check_registry_allowed(host, service_region, allowed_hosts=()) -> None
    RegistryClient(...).resolve(image, digest=None) -> ResolvedImage
"""

from __future__ import annotations

from dockyard.registry.client import (
    DEFAULT_MAX_COMPRESSED_BYTES,
    RegistryClient,
    ResolvedImage,
)
from dockyard.registry.references import ImageReference, parse_image_reference, validate_digest
from dockyard.registry.regions import OCI_REGION_KEYS, check_registry_allowed, ocir_region

__all__ = [
    "DEFAULT_MAX_COMPRESSED_BYTES",
    "OCI_REGION_KEYS",
    "ImageReference",
    "RegistryClient",
    "ResolvedImage",
    "check_registry_allowed",
    "ocir_region",
    "parse_image_reference",
    "validate_digest",
]

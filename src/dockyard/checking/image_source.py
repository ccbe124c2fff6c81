"""The registry side of an image, checked as `dockyard serve` checks it at create time:
the region rule (C11) and the tag's digest (D1), with the service's credentials and settings.
"""

from __future__ import annotations

from dockyard.checking.measurements import RegistryEvidence
from dockyard.errors import DockyardError, InvalidParameter, ServiceUnavailable
from dockyard.registry import RegistryClient, check_registry_allowed, ocir_region, parse_image_reference
from dockyard.registry.hosts import is_loopback_host
from dockyard.settings import Settings


def names_registry(image: str) -> bool:
    """Whether the reference starts with a registry host (Docker's rule: the first component
    has a '.' or ':' or is 'localhost'); `team/app:1` names none (it would mean Docker Hub)."""
    first, slash, _ = image.partition("/")
    return bool(slash) and ("." in first or ":" in first or first == "localhost")


async def look_up(image: str, digest: str | None, settings: Settings) -> RegistryEvidence:
    """C11 and D1 for `image`; never raises for what the registry says (the report does)."""
    if not names_registry(image):
        return RegistryEvidence(named=False)
    reference = parse_image_reference(image)
    host = reference.registry
    try:
        check_registry_allowed(host, settings.region, settings.allowed_registry_hosts)
    except InvalidParameter as exc:
        return RegistryEvidence(named=True, registry=host, refused=exc.message)
    allowed_as = _why_allowed(host, settings)
    try:
        async with RegistryClient(
            credentials=settings.registry_credentials_by_host(),
            plain_http_hosts=settings.plain_http_registry_hosts,
            timeout_s=settings.registry_timeout_s,
        ) as client:
            resolved = await client.resolve(reference, digest=digest)
    except ServiceUnavailable as exc:
        if host == "localhost":
            # Podman names every image it built or loaded localhost/NAME: without a registry
            # answering there, that is a local image, not a registry reference.
            return RegistryEvidence(named=False)
        return RegistryEvidence(named=True, registry=host, allowed_as=allowed_as, error=exc.message, unreachable=True,
                                digest_given=digest is not None)
    except DockyardError as exc:
        return RegistryEvidence(named=True, registry=host, allowed_as=allowed_as, error=exc.message,
                                digest_given=digest is not None)
    return RegistryEvidence(named=True, registry=host, allowed_as=allowed_as + "; it answers",
                            digest=resolved.digest, compressed_bytes=resolved.compressed_size_bytes,
                            digest_given=digest is not None or reference.digest is not None)


def pinned(image: str, digest: str) -> str:
    """``registry/repository@digest``: what a deployment runs (D2)."""
    return parse_image_reference(image).pinned(digest)


def _why_allowed(host: str, settings: Settings) -> str:
    if is_loopback_host(host):
        return "a registry on this machine"
    region = ocir_region(host)
    if region is not None:
        return f"OCIR of this service's region {region}"
    return "listed in DOCKYARD_ALLOWED_REGISTRIES"

"""Image checks at create and update: the reference parses (C13), the registry is allowed
(C11), the service's credentials can read it (C8), it is not too large (C7), and its digest is
pinned (D1/D2) so every instance runs exactly the version that existed at create time."""

from __future__ import annotations

import asyncio

from dockyard.registry import RegistryClient, check_registry_allowed, parse_image_reference
from dockyard.settings import Settings


class RegistryImageResolver:
    """Asks the image's registry for its digest. Runs in a worker thread (sync service code)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def resolve(self, image: str, digest: str | None) -> str | None:
        reference = parse_image_reference(image)
        check_registry_allowed(reference.registry, self.settings.region, self.settings.allowed_registry_hosts)
        return asyncio.run(self._resolve(image, digest))

    async def _resolve(self, image: str, digest: str | None) -> str:
        async with RegistryClient(
            credentials=self.settings.registry_credentials_by_host(),
            plain_http_hosts=self.settings.plain_http_registry_hosts,
            timeout_s=self.settings.registry_timeout_s,
        ) as client:
            resolved = await client.resolve(image, digest=digest)
        return resolved.digest


class ReferenceOnlyResolver:
    """Checks the reference and the region rule but asks no registry (DOCKYARD_VERIFY_IMAGES=false)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def resolve(self, image: str, digest: str | None) -> str | None:
        reference = parse_image_reference(image)
        check_registry_allowed(reference.registry, self.settings.region, self.settings.allowed_registry_hosts)
        return digest

"""Image checks at create and update: the reference parses (C13), the registry is allowed
(C11), the caller's tenancy may use the credentials that read it (C8), it is not too large (C7),
and its digest is pinned (D1/D2) so every instance runs exactly the version that existed at
create time.

C8 per tenancy: `registry_hosts` names the registries whose configured credentials
(DOCKYARD_REGISTRY_CREDENTIALS) the caller's tenancy may use (None: all, for the installation's
home tenancy and callers without one). Credentials of any other registry are withheld: its
images resolve only if they are readable anonymously, and otherwise the refusal names the
registry and the grant that would allow it.
"""

from __future__ import annotations

import asyncio

from dockyard.errors import InvalidParameter
from dockyard.registry import RegistryClient, check_registry_allowed, parse_image_reference
from dockyard.settings import Settings


def usable_credentials(settings: Settings, registry_hosts: set[str] | None) -> dict[str, tuple[str, str]]:
    configured = settings.registry_credentials_by_host()
    if registry_hosts is None:
        return configured
    allowed = {h.lower() for h in registry_hosts}
    return {host: secret for host, secret in configured.items() if host.strip().lower() in allowed}


def withheld(settings: Settings, registry: str, registry_hosts: set[str] | None) -> bool:
    """Whether this installation has credentials for `registry` that the caller may not use."""
    if registry_hosts is None:
        return False
    configured = {h.strip().lower() for h in settings.registry_credentials_by_host()}
    return registry.lower() in configured and registry.lower() not in {h.lower() for h in registry_hosts}


def not_granted(registry: str, cause: str) -> InvalidParameter:
    return InvalidParameter(
        f"C8: registry {registry} has credentials configured on this dockyard, but your tenancy is not allowed to use "
        f"them ({cause}); ask an administrator to run `dockyard registries grant {registry} --tenancy <your tenancy>`, "
        "or make the repository readable anonymously",
        rule="C8",
    )


class RegistryImageResolver:
    """Asks the image's registry for its digest. Runs in a worker thread (sync service code)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def resolve(self, image: str, digest: str | None, registry_hosts: set[str] | None = None) -> str | None:
        reference = parse_image_reference(image)
        check_registry_allowed(reference.registry, self.settings.region, self.settings.allowed_registry_hosts)
        try:
            return asyncio.run(self._resolve(image, digest, usable_credentials(self.settings, registry_hosts)))
        except InvalidParameter as exc:
            if exc.rule == "C8" and withheld(self.settings, reference.registry, registry_hosts):
                raise not_granted(reference.registry, "without them it refused access") from exc
            raise

    async def _resolve(self, image: str, digest: str | None, credentials: dict[str, tuple[str, str]]) -> str:
        async with RegistryClient(
            credentials=credentials,
            plain_http_hosts=self.settings.plain_http_registry_hosts,
            timeout_s=self.settings.registry_timeout_s,
        ) as client:
            resolved = await client.resolve(image, digest=digest)
        return resolved.digest


class ReferenceOnlyResolver:
    """Checks the reference and the region rule but asks no registry (DOCKYARD_VERIFY_IMAGES=false).

    Without asking, it cannot tell whether an image needs credentials; since instances are
    pulled with the installation's credentials, an image on a registry whose credentials the
    caller may not use is refused."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def resolve(self, image: str, digest: str | None, registry_hosts: set[str] | None = None) -> str | None:
        reference = parse_image_reference(image)
        check_registry_allowed(reference.registry, self.settings.region, self.settings.allowed_registry_hosts)
        if withheld(self.settings, reference.registry, registry_hosts):
            raise not_granted(reference.registry, "images are not verified here, so they would be pulled with them")
        return digest

"""Who signed a request: the key id a signature names, the key registered under it, the principal.

A signature's ``keyId`` is ``<tenancy OCID>/<user OCID>/<fingerprint>`` (what `oci.signer.Signer`
sends for API keys). `KeyLookup` is the seam between the pure verifier (`auth/signing.py`) and
wherever keys are stored (`auth/principals.py`).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from dockyard.errors import NotAuthenticated
from dockyard.service.context import Caller

# What `oci.config.validate_config` requires of a fingerprint: 16 bytes of lower-case colon hex.
FINGERPRINT = re.compile(r"^([0-9a-f]{2}:){15}[0-9a-f]{2}$")
# What `oci.config.validate_config` requires of tenancy and user ids (oci-api.md §5.2).
OCI_CONFIG_ID = re.compile(r"^([0-9a-zA-Z-_]+[.:])([0-9a-zA-Z-_]*[.:]){3,}([0-9a-zA-Z-_]+)$")
SESSION_TOKEN_PREFIX = "ST$"


@dataclass(frozen=True)
class Principal(Caller):
    """A caller whose signature verified: the user, their tenancy and the key they signed with.

    It is a `Caller`, so services take it where they take any caller (`createdBy` = `user_id`).
    """

    fingerprint: str = ""
    user_name: str = ""
    is_admin: bool = False

    @property
    def key_id(self) -> str:
        return f"{self.tenancy_id}/{self.user_id}/{self.fingerprint}"


@dataclass(frozen=True)
class KeyId:
    """The parts of a signature's keyId."""

    tenancy_id: str
    user_id: str
    fingerprint: str

    def __str__(self) -> str:
        return f"{self.tenancy_id}/{self.user_id}/{self.fingerprint}"

    @staticmethod
    def parse(text: str) -> KeyId:
        """Raises NotAuthenticated when `text` is not ``tenancy/user/fingerprint``."""
        if text.startswith(SESSION_TOKEN_PREFIX):
            raise NotAuthenticated(
                "session-token signatures (keyId ST$...) are not supported by dockyard; "
                "use an API key (a config file with user, fingerprint, key_file and tenancy)"
            )
        parts = text.split("/")
        if len(parts) != 3 or not all(parts):
            raise NotAuthenticated(
                f"keyId {text[:200]!r} is not <tenancy OCID>/<user OCID>/<fingerprint>; "
                "use an OCI API key to sign (oci.signer.Signer or the oci CLI with your config file)"
            )
        tenancy_id, user_id, fingerprint = parts
        if not FINGERPRINT.match(fingerprint):
            raise NotAuthenticated(
                f"the fingerprint {fingerprint[:60]!r} in keyId is not 16 colon-separated hex bytes; "
                "check the fingerprint in your OCI config (`dockyard keys list` shows the registered ones)"
            )
        return KeyId(tenancy_id, user_id, fingerprint)


@dataclass(frozen=True)
class RegisteredKey:
    """A public key registered for a user, with the principal a request signed by it acts as."""

    principal: Principal
    public_pem: str


# Returns None when no such key is registered (for that user in that tenancy).
KeyLookup = Callable[[KeyId], RegisteredKey | None]

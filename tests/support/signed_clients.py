"""Signed clients for a LiveServer: the `oci` SDK and a `requests` signer, from the server's own config.

`dockyard serve` writes an administrator's OCI config to ``<data_dir>/oci/config`` and refuses
unsigned requests. A server that wrote none (an older build, or one started with
``--insecure-no-auth``) still accepts any signed request, so a throwaway key does there.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import oci

from tests.support.oci_config import COMPARTMENT, make_config
from tests.support.server import LiveServer

NO_RETRY = oci.retry.NoneRetryStrategy()


@dataclass(frozen=True)
class SignedAccess:
    config: dict[str, Any]
    compartment: str

    def data_science(self, server: LiveServer, **kwargs: Any) -> oci.data_science.DataScienceClient:
        kwargs.setdefault("retry_strategy", NO_RETRY)
        return oci.data_science.DataScienceClient(self.config, service_endpoint=server.url, **kwargs)

    def signer(self) -> oci.signer.Signer:
        """A `requests` auth object that signs exactly as the SDK does."""
        return oci.signer.Signer(
            tenancy=self.config["tenancy"],
            user=self.config["user"],
            fingerprint=self.config["fingerprint"],
            private_key_file_location=self.config["key_file"],
            pass_phrase=self.config.get("pass_phrase"),
        )


def signed_access(server: LiveServer, spare_dir: Path) -> SignedAccess:
    """The server's admin config when it wrote one, else a throwaway key made in ``spare_dir``."""
    written = server.data_dir / "oci" / "config"
    if written.is_file():
        config = oci.config.from_file(str(written))
        return SignedAccess(config, str(config["tenancy"]))  # the tenancy is the root compartment
    spare_dir.mkdir(parents=True, exist_ok=True)
    return SignedAccess(make_config(spare_dir), COMPARTMENT)

"""OCID-shaped identifiers.

Clients dispatch on the type segment of an id (ADS routes `ads opctl` commands by substrings such
as ``datasciencemodeldeployment``) and `oci.config` validates user and tenancy ids against an
OCID pattern, so every id dockyard hands out looks like a real one:
``ocid1.<type>.<realm>.<region>.<unique>``.
"""

from __future__ import annotations

import base64
import re
import secrets
from typing import NewType

Ocid = NewType("Ocid", str)

PROJECT = "datascienceproject"
MODEL = "datasciencemodel"
MODEL_DEPLOYMENT = "datasciencemodeldeployment"
WORK_REQUEST = "datascienceworkrequest"
TENANCY = "tenancy"
USER = "user"
COMPARTMENT = "compartment"

# ocid1.<type>.<realm>.<region, may be empty>.<unique>[.<future use>]
_OCID = re.compile(r"^ocid1\.([a-z0-9]+)\.([a-z0-9-]+)\.([a-z0-9-]*)\.([a-zA-Z0-9._:-]+)$")


def new_ocid(resource_type: str, realm: str, region: str) -> Ocid:
    """A fresh, unguessable id of the given type (60 base32 characters of randomness)."""
    unique = base64.b32encode(secrets.token_bytes(35)).decode().lower().rstrip("=")
    return Ocid(f"ocid1.{resource_type}.{realm}.{region}.{unique}")


def ocid_type(value: str) -> str | None:
    """The type segment of an OCID, or None when `value` is not OCID-shaped."""
    match = _OCID.match(value)
    return match.group(1) if match else None


def is_ocid(value: str) -> bool:
    return ocid_type(value) is not None

"""A throwaway OCI API-key configuration for driving the official SDK at a test server."""

from __future__ import annotations

import hashlib
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

TENANCY = "ocid1.tenancy.oc1..aaaaaaaatestingtenancy"
USER = "ocid1.user.oc1..aaaaaaaatestinguser"
COMPARTMENT = "ocid1.compartment.oc1..aaaaaaaatestingcompartment"


def make_config(directory: Path) -> dict[str, str]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption())
    der = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    fingerprint = ":".join(f"{b:02x}" for b in hashlib.md5(der).digest())
    key_file = directory / "key.pem"
    key_file.write_bytes(pem)
    return {
        "user": USER,
        "tenancy": TENANCY,
        "fingerprint": fingerprint,
        "key_file": str(key_file),
        "region": "us-ashburn-1",
    }

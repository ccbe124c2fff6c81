"""RSA key material for API keys: generate, serialise, load, fingerprint.

The fingerprint is the colon-separated MD5 of the DER SubjectPublicKeyInfo, the value the OCI
console shows and `openssl rsa -pubout -outform DER -in key.pem | openssl md5 -c` prints.
"""

from __future__ import annotations

import functools
import hashlib

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from dockyard.errors import InvalidParameter

KEY_SIZE_BITS = 2048
MIN_KEY_SIZE_BITS = 2048


def generate_private_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=KEY_SIZE_BITS)


def private_pem(key: rsa.RSAPrivateKey) -> bytes:
    """PKCS#8 PEM without a passphrase (what the OCI console hands out; the SDK reads it)."""
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def public_pem(key: rsa.RSAPublicKey) -> str:
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode("ascii")


def fingerprint(key: rsa.RSAPublicKey) -> str:
    der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return ":".join(f"{b:02x}" for b in hashlib.md5(der, usedforsecurity=False).digest())


def load_private_pem(data: bytes) -> rsa.RSAPrivateKey:
    """Raises InvalidParameter when `data` is not an unencrypted RSA private key in PEM."""
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise InvalidParameter(f"not an unencrypted PEM private key ({exc}); create one with `dockyard keys add`") from exc
    if not isinstance(key, rsa.RSAPrivateKey):
        raise InvalidParameter("OCI API keys are RSA keys; use an RSA private key")
    return key


def parse_public_pem(text: str | bytes) -> rsa.RSAPublicKey:
    """The RSA public key in `text` (PEM SubjectPublicKeyInfo or PKCS#1).

    Raises InvalidParameter for a private key, a non-RSA key, a key under 2048 bits or text
    that is no PEM public key at all, saying what to pass instead.
    """
    data = text.encode("ascii", "replace") if isinstance(text, str) else text
    if b"PRIVATE KEY" in data:
        raise InvalidParameter(
            "that is a private key; pass only the public half "
            "(openssl rsa -pubout -in key.pem -out key_public.pem) and keep the private key to yourself"
        )
    try:
        key = serialization.load_pem_public_key(data.strip())
    except (ValueError, TypeError) as exc:
        raise InvalidParameter(
            f"not a PEM public key ({exc}); pass a file that starts with -----BEGIN PUBLIC KEY-----"
        ) from exc
    if not isinstance(key, rsa.RSAPublicKey):
        raise InvalidParameter("OCI API keys are RSA keys (rsa-sha256 signatures); use an RSA public key")
    if key.key_size < MIN_KEY_SIZE_BITS:
        raise InvalidParameter(f"the key has {key.key_size} bits; use an RSA key of at least {MIN_KEY_SIZE_BITS} bits")
    return key


@functools.lru_cache(maxsize=1024)
def loaded_public_key(pem: str) -> rsa.RSAPublicKey:
    """`parse_public_pem`, cached: the verifier loads the same few keys for every request."""
    return parse_public_pem(pem)

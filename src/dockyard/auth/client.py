"""Signing on the client side, for dockyard's own CLI: an `httpx.Auth` that signs like the OCI SDK.

`signing_from_config()` reads the same OCI config file the `oci` tools use (by default the one
`dockyard serve` wrote into its data dir) and returns the auth plus the endpoint recorded there.
"""

from __future__ import annotations

import configparser
import email.utils
import os
from collections.abc import AsyncGenerator, Generator
from dataclasses import dataclass
from pathlib import Path

import httpx
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from dockyard.auth.bootstrap import ENDPOINT_KEY
from dockyard.auth.signing import BODY_HEADERS, BODY_METHODS, GENERIC_HEADERS, body_sha256, is_streamed_upload, sign_request
from dockyard.errors import InvalidParameter

CONFIG_ENV = "DOCKYARD_CONFIG_FILE"


class OciSignatureAuth(httpx.Auth):
    """Signs each request as `oci.signer.Signer` does: ``date (request-target) host``, plus
    ``content-length content-type x-content-sha256`` on POST/PUT/PATCH except artifact uploads."""

    def __init__(self, key_id: str, private_key: rsa.RSAPrivateKey) -> None:
        self.key_id = key_id
        self.private_key = private_key

    def _body_signed(self, request: httpx.Request) -> bool:
        return request.method.upper() in BODY_METHODS and not is_streamed_upload(request.method, request.url.path)

    def _sign(self, request: httpx.Request, body: bytes | None) -> None:
        request.headers.setdefault("date", email.utils.formatdate(usegmt=True))
        request.headers.setdefault("content-type", "application/json")
        names: tuple[str, ...] = GENERIC_HEADERS
        if body is not None:
            request.headers["content-length"] = str(len(body))
            request.headers["x-content-sha256"] = body_sha256(body)
            names = GENERIC_HEADERS + BODY_HEADERS
        headers = {name.lower(): value for name, value in request.headers.items()}
        target = request.url.raw_path.decode("ascii")
        request.headers["authorization"] = sign_request(request.method, target, headers, self.key_id, self.private_key, names)

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        self._sign(request, request.read() if self._body_signed(request) else None)
        yield request

    async def async_auth_flow(self, request: httpx.Request) -> AsyncGenerator[httpx.Request, httpx.Response]:
        self._sign(request, await request.aread() if self._body_signed(request) else None)
        yield request


@dataclass(frozen=True)
class ClientSigning:
    auth: OciSignatureAuth
    endpoint: str | None
    config_file: Path


def default_config_file() -> Path:
    """``$DOCKYARD_CONFIG_FILE``, else ``<data dir>/oci/config`` (data dir: ``$DOCKYARD_DATA_DIR`` or ~/.dockyard)."""
    if os.environ.get(CONFIG_ENV):
        return Path(os.environ[CONFIG_ENV]).expanduser()
    data_dir = Path(os.environ.get("DOCKYARD_DATA_DIR") or Path.home() / ".dockyard").expanduser()
    return data_dir / "oci" / "config"


def signing_from_config(path: Path | str | None = None, profile: str = "DEFAULT") -> ClientSigning | None:
    """The signer of an OCI config file's profile; None when no file exists (unsigned requests,
    for a server started with --insecure-no-auth). Raises InvalidParameter for an unusable file."""
    config_file = Path(path).expanduser() if path else default_config_file()
    if not config_file.exists():
        if path:
            raise InvalidParameter(f"no OCI config file at {config_file}; check the path")
        return None
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(config_file)
    if profile not in parser:
        raise InvalidParameter(f"{config_file} has no profile [{profile}]; pass one of {', '.join(parser.sections()) or 'DEFAULT'}")
    section = parser[profile]
    missing = [k for k in ("user", "tenancy", "fingerprint", "key_file") if not section.get(k)]
    if missing:
        raise InvalidParameter(f"profile [{profile}] of {config_file} lacks {', '.join(missing)}; add them")
    key_file = Path(section["key_file"]).expanduser()
    passphrase = section.get("pass_phrase")
    try:
        key = serialization.load_pem_private_key(key_file.read_bytes(), password=passphrase.encode() if passphrase else None)
    except (OSError, ValueError, TypeError) as exc:
        raise InvalidParameter(f"cannot load the private key {key_file} named by {config_file} ({exc}); check key_file and pass_phrase") from exc
    if not isinstance(key, rsa.RSAPrivateKey):
        raise InvalidParameter(f"{key_file} is not an RSA key; OCI API keys are RSA keys")
    key_id = f"{section['tenancy']}/{section['user']}/{section['fingerprint']}"
    return ClientSigning(OciSignatureAuth(key_id, key), section.get(ENDPOINT_KEY) or None, config_file)

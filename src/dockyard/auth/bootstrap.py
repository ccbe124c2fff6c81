"""First start: an administrator with an API key, and an OCI config file that signs as them.

`ensure_admin` makes ``<data_dir>/oci/key.pem`` (0600) and ``<data_dir>/oci/config``, an OCI config
file (``[DEFAULT]`` user, fingerprint, key_file, tenancy, region) that the `oci` CLI and SDK
(``--config-file`` / ``oci.config.from_file``), Oracle ADS (``oci_config_location``) and dockyard's
own CLI use as they are. It also decides whether the server may run without authentication:
`require_safe_bind` allows that only on a loopback address.
"""

from __future__ import annotations

import configparser
import ipaddress
import logging
import os
import secrets
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import rsa

from dockyard.auth.keys import fingerprint, generate_private_key, load_private_pem, private_pem, public_pem
from dockyard.auth.principals import PrincipalStore, User
from dockyard.errors import Conflict, DockyardError, InvalidParameter

log = logging.getLogger("dockyard.auth")

DEFAULT_TENANCY_NAME = "dockyard"
ADMIN_NAME = "admin"
# An extra key in the config file: OCI tools ignore it, dockyard's CLI reads its endpoint from it.
ENDPOINT_KEY = "dockyard_endpoint"


def oci_dir(data_dir: Path) -> Path:
    return data_dir / "oci"


def config_path(data_dir: Path) -> Path:
    return oci_dir(data_dir) / "config"


def write_private_file(path: Path, data: bytes) -> None:
    """Writes `data` to `path` readable by the owner only (0600), atomically (temp file, fsync, rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    temp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def render_config(*, user: str, fingerprint: str, key_file: Path, tenancy: str, region: str, endpoint: str, profile: str = "DEFAULT") -> str:
    """An OCI config file for one API key, with how to point each tool at `endpoint` in comments."""
    path = key_file.parent / "config"
    return (
        f"# OCI API-key configuration for the dockyard server at {endpoint} (written by dockyard).\n"
        f"# oci CLI: oci --config-file {path} --endpoint {endpoint} data-science project list --compartment-id {tenancy}\n"
        f"# OCI SDK: oci.data_science.DataScienceClient(oci.config.from_file(\"{path}\"), service_endpoint=\"{endpoint}\")\n"
        f"# ADS:     OCI_ODSC_SERVICE_ENDPOINT={endpoint}, ads.set_auth(\"api_key\", oci_config_location=\"{path}\")\n"
        f"# The tenancy OCID is also the root compartment: use it as compartmentId.\n"
        f"[{profile}]\n"
        f"user={user}\n"
        f"fingerprint={fingerprint}\n"
        f"key_file={key_file}\n"
        f"tenancy={tenancy}\n"
        f"region={region}\n"
        f"{ENDPOINT_KEY}={endpoint}\n"
    )


def write_credentials(directory: Path, key: rsa.RSAPrivateKey, user: User, *, endpoint: str, region: str) -> Path:
    """Writes ``directory/key.pem`` (0600), ``key_public.pem`` and ``config`` for `user`; returns the config path."""
    key_file = (directory / "key.pem").resolve()
    write_private_file(key_file, private_pem(key))
    write_private_file(directory / "key_public.pem", public_pem(key.public_key()).encode("ascii"))
    return _write_config(directory, key, user, endpoint=endpoint, region=region)


def _write_config(directory: Path, key: rsa.RSAPrivateKey, user: User, *, endpoint: str, region: str) -> Path:
    path = directory / "config"
    text = render_config(
        user=user.id, fingerprint=fingerprint(key.public_key()), key_file=(directory / "key.pem").resolve(),
        tenancy=user.tenancy_id, region=region, endpoint=endpoint,
    )  # fmt: skip
    if not path.exists() or path.read_text() != text:
        write_private_file(path, text.encode("utf-8"))
    return path


def _read_private_key(path: Path) -> rsa.RSAPrivateKey | None:
    if not path.exists():
        return None
    try:
        return load_private_pem(path.read_bytes())
    except (OSError, DockyardError) as exc:
        log.warning("%s is not a usable private key (%s); making a new one", path, exc)
        return None


def _create_admin(store: PrincipalStore) -> User:
    existing = store.tenancies()
    tenancy = existing[0] if existing else store.create_tenancy(DEFAULT_TENANCY_NAME)
    for n in range(1, 100):
        name = ADMIN_NAME if n == 1 else f"{ADMIN_NAME}-{n}"
        try:
            return store.create_user(name, tenancy.id, is_admin=True, description="administrator made by dockyard serve on first start")
        except Conflict:  # someone made a plain user called "admin" before the first start
            continue
    raise Conflict("could not find a free name for the administrator; remove users named admin-N")


def ensure_admin(store: PrincipalStore, data_dir: Path, endpoint: str, region: str) -> Path:
    """The path of the OCI config file that signs as the administrator; makes what is missing.

    First start: a tenancy, an administrator in it, an RSA 2048 key pair registered for them,
    ``data_dir/oci/key.pem`` (0600) and ``data_dir/oci/config``. Later starts change nothing,
    except that the config is rewritten when `endpoint` or `region` changed, and a key file whose
    key is no longer registered for the administrator (deleted with `dockyard keys delete`, or a
    new database) is replaced by a fresh key: a key an administrator deleted never comes back.
    """
    directory = oci_dir(data_dir)
    admin = store.admin() or _create_admin(store)
    key_file = directory / "key.pem"
    key = _read_private_key(key_file)
    registered = {k.fingerprint for k in store.keys(admin.id)}
    if key is None or fingerprint(key.public_key()) not in registered:
        key = generate_private_key()
        store.add_key(admin.id, public_pem(key.public_key()))
        path = write_credentials(directory, key, admin, endpoint=endpoint, region=region)
        log.info("administrator %s (%s) can sign requests with %s", admin.name, admin.id, path)
        return path
    return _write_config(directory, key, admin, endpoint=endpoint, region=region)


def client_hints(path: Path) -> list[str]:
    """Lines for `dockyard serve` to print: how each client signs with the config at `path`."""
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(path)
    section = parser["DEFAULT"]
    endpoint, tenancy = section.get(ENDPOINT_KEY, ""), section.get("tenancy", "")
    return [
        f"signed requests: OCI config file {path} (tenancy/compartment {tenancy})",
        f"  oci --config-file {path} --endpoint {endpoint} data-science project list --compartment-id {tenancy}",
        f"  ADS: OCI_ODSC_SERVICE_ENDPOINT={endpoint} with ads.set_auth('api_key', oci_config_location='{path}')",
    ]


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and ``localhost``; False for wildcards (0.0.0.0, ::) and names."""
    name = host.strip().strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def require_safe_bind(host: str, insecure_no_auth: bool) -> None:
    """Raises InvalidParameter when unsigned requests would be allowed on a non-loopback bind."""
    if insecure_no_auth and not is_loopback(host):
        raise InvalidParameter(
            f"--insecure-no-auth lets anyone who reaches the server act without credentials, so it is allowed only on "
            f"a loopback address (127.0.0.1, ::1, localhost), not on {host or 'all interfaces'}: use --host 127.0.0.1, "
            "or remove --insecure-no-auth and sign requests with the OCI config file in <data dir>/oci/config"
        )

"""Principals and keys in SQL, and the first-start bootstrap of an administrator with a key."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import oci
import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from dockyard.auth import keys
from dockyard.auth.bootstrap import ensure_admin, is_loopback, require_safe_bind
from dockyard.auth.identity import KeyId
from dockyard.auth.principals import PrincipalStore
from dockyard.auth.signing import body_sha256, verify_request
from dockyard.errors import Conflict, InvalidParameter, NotAuthorizedOrNotFound
from dockyard.store.metadata import SqlMetadataStore

ENDPOINT = "http://127.0.0.1:18080"


@pytest.fixture
def metadata(tmp_path: Path) -> Iterator[SqlMetadataStore]:
    store = SqlMetadataStore(f"sqlite:///{tmp_path / 'dockyard.db'}")
    yield store
    store.close()


@pytest.fixture
def principals(metadata: SqlMetadataStore) -> PrincipalStore:
    return PrincipalStore(metadata.engine, metadata.writer)


def public_pem_of(key: rsa.RSAPrivateKey) -> str:
    return keys.public_pem(key.public_key())


# --- keys ---------------------------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_fingerprint_is_what_openssl_md5_c_prints(tmp_path: Path) -> None:
    key = keys.generate_private_key()
    (tmp_path / "key.pem").write_bytes(keys.private_pem(key))
    der = subprocess.run(["openssl", "rsa", "-pubout", "-outform", "DER", "-in", str(tmp_path / "key.pem")], capture_output=True, check=True).stdout
    printed = subprocess.run(["openssl", "md5", "-c"], input=der, capture_output=True, check=True).stdout.decode()
    assert printed.strip().split()[-1] == keys.fingerprint(key.public_key())


def test_fingerprint_satisfies_oci_config() -> None:
    assert oci.config.PATTERNS["fingerprint"].match(keys.fingerprint(keys.generate_private_key().public_key()))


def test_only_rsa_public_keys_of_2048_bits_or_more_are_registered(principals: PrincipalStore) -> None:
    tenancy = principals.create_tenancy("t")
    user = principals.create_user("u", tenancy.id)
    key = keys.generate_private_key()
    with pytest.raises(InvalidParameter, match="private key; pass only the public half"):
        principals.add_key(user.id, keys.private_pem(key).decode())
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    with pytest.raises(InvalidParameter, match="1024 bits"):
        principals.add_key(user.id, public_pem_of(small))
    ec_pem = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    with pytest.raises(InvalidParameter, match="RSA"):
        principals.add_key(user.id, ec_pem.decode())
    with pytest.raises(InvalidParameter, match="BEGIN PUBLIC KEY"):
        principals.add_key(user.id, "hello")


# --- principals -----------------------------------------------------------------------------------


def test_ids_are_ocids_that_oci_config_accepts(principals: PrincipalStore) -> None:
    tenancy = principals.create_tenancy("acme")
    user = principals.create_user("alice", tenancy.id)
    assert tenancy.id.startswith("ocid1.tenancy.oc1..")
    assert user.id.startswith("ocid1.user.oc1..")
    assert oci.config.PATTERNS["tenancy"].match(tenancy.id)
    assert oci.config.PATTERNS["user"].match(user.id)


def test_lookup_by_key_id_needs_user_tenancy_and_fingerprint_to_match(principals: PrincipalStore) -> None:
    acme = principals.create_tenancy("acme")
    other = principals.create_tenancy("other")
    alice = principals.create_user("alice", acme.id, is_admin=True)
    bob = principals.create_user("bob", acme.id)
    key = principals.add_key(alice.id, public_pem_of(keys.generate_private_key()))

    found = principals.lookup_key(KeyId(acme.id, alice.id, key.fingerprint))
    assert found is not None
    assert found.principal.user_id == alice.id and found.principal.tenancy_id == acme.id
    assert found.principal.is_admin and found.principal.user_name == "alice"
    assert found.principal.key_id == f"{acme.id}/{alice.id}/{key.fingerprint}"
    assert principals.lookup_key(KeyId(acme.id, bob.id, key.fingerprint)) is None
    assert principals.lookup_key(KeyId(other.id, alice.id, key.fingerprint)) is None

    assert principals.delete_key(key.fingerprint, alice.id).fingerprint == key.fingerprint
    assert principals.lookup_key(KeyId(acme.id, alice.id, key.fingerprint)) is None
    with pytest.raises(NotAuthorizedOrNotFound, match="dockyard keys list"):
        principals.delete_key(key.fingerprint)


def test_names_and_keys_are_unique(principals: PrincipalStore) -> None:
    acme = principals.create_tenancy("acme")
    with pytest.raises(Conflict):
        principals.create_tenancy("acme")
    alice = principals.create_user("alice", acme.id)
    with pytest.raises(Conflict, match="choose another name"):
        principals.create_user("alice", acme.id)
    pem = public_pem_of(keys.generate_private_key())
    principals.add_key(alice.id, pem)
    bob = principals.create_user("bob", acme.id)
    with pytest.raises(Conflict, match="registered already"):
        principals.add_key(bob.id, pem)
    with pytest.raises(NotAuthorizedOrNotFound):
        principals.create_user("carol", "ocid1.tenancy.oc1..nope")
    with pytest.raises(InvalidParameter):
        principals.create_user("a/b", acme.id)


def test_lists_and_finding_by_name_or_id(principals: PrincipalStore) -> None:
    acme = principals.create_tenancy("acme")
    alice = principals.create_user("alice", acme.id)
    principals.add_key(alice.id, public_pem_of(keys.generate_private_key()))
    principals.add_key(alice.id, public_pem_of(keys.generate_private_key()))
    assert [u.name for u in principals.users()] == ["alice"]
    assert principals.find_user("alice") == principals.find_user(alice.id) == alice
    assert principals.find_tenancy("acme") == acme
    assert len(principals.keys(alice.id)) == 2
    assert principals.key_counts() == {alice.id: 2}
    with pytest.raises(NotAuthorizedOrNotFound, match="dockyard users list"):
        principals.find_user("nobody")


def test_principals_share_the_metadata_database(metadata: SqlMetadataStore, tmp_path: Path) -> None:
    PrincipalStore(metadata.engine, metadata.writer).create_tenancy("acme")
    again = SqlMetadataStore(f"sqlite:///{tmp_path / 'dockyard.db'}")
    try:
        assert [t.name for t in PrincipalStore(again.engine, again.writer).tenancies()] == ["acme"]
    finally:
        again.close()


# --- bootstrap ------------------------------------------------------------------------------------


def signs_as(config_path: Path, principals: PrincipalStore) -> str:
    """Signs a JSON POST with the SDK's signer from `config_path`; returns the verified user id."""
    config = oci.config.from_file(str(config_path))
    oci.config.validate_config(config)
    prepared = requests.Request("POST", f"{ENDPOINT}/20190101/projects", data='{"a": 1}', headers={"content-type": "application/json"}).prepare()
    oci.signer.Signer.from_config(config)(prepared)
    body = prepared.body.encode() if isinstance(prepared.body, str) else prepared.body
    assert isinstance(body, bytes)
    headers = {k.lower(): str(v) for k, v in prepared.headers.items()}
    principal = verify_request("POST", prepared.path_url, headers, body_sha256(body), principals.lookup_key,
                               datetime.now(timezone.utc), body_headers_required=True, body_length=len(body))  # fmt: skip
    return principal.user_id


def test_first_start_makes_an_admin_a_key_and_a_config_the_sdk_reads(principals: PrincipalStore, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    path = ensure_admin(principals, data_dir, ENDPOINT, "local")
    assert path == data_dir / "oci" / "config"
    key_file = data_dir / "oci" / "key.pem"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE((data_dir / "oci").stat().st_mode) == 0o700
    config = oci.config.from_file(str(path))
    admin = principals.admin()
    assert admin is not None and admin.name == "admin"
    assert config["user"] == admin.id and config["tenancy"] == admin.tenancy_id
    assert config["key_file"] == str(key_file.resolve()) and config["region"] == "local"
    assert config["fingerprint"] == keys.fingerprint(keys.load_private_pem(key_file.read_bytes()).public_key())
    assert signs_as(path, principals) == admin.id
    assert keys.load_private_pem(key_file.read_bytes()).key_size == 2048


def test_later_starts_change_nothing_but_a_moved_endpoint(principals: PrincipalStore, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    path = ensure_admin(principals, data_dir, ENDPOINT, "local")
    key_bytes, config_text, mtime = (data_dir / "oci" / "key.pem").read_bytes(), path.read_text(), path.stat().st_mtime_ns
    assert ensure_admin(principals, data_dir, ENDPOINT, "local") == path
    assert (data_dir / "oci" / "key.pem").read_bytes() == key_bytes
    assert path.read_text() == config_text and path.stat().st_mtime_ns == mtime
    assert len(principals.users()) == 1 and len(principals.keys()) == 1

    ensure_admin(principals, data_dir, "http://127.0.0.1:9999", "local")
    assert (data_dir / "oci" / "key.pem").read_bytes() == key_bytes
    assert "dockyard_endpoint=http://127.0.0.1:9999" in path.read_text()
    assert len(principals.keys()) == 1


def test_a_deleted_admin_key_is_replaced_not_restored(principals: PrincipalStore, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    path = ensure_admin(principals, data_dir, ENDPOINT, "local")
    old = oci.config.from_file(str(path))["fingerprint"]
    principals.delete_key(old)
    ensure_admin(principals, data_dir, ENDPOINT, "local")
    new = oci.config.from_file(str(path))["fingerprint"]
    assert new != old
    assert [k.fingerprint for k in principals.keys()] == [new]
    assert signs_as(path, principals) == principals.admin().id  # type: ignore[union-attr]


def test_admin_name_taken_by_a_plain_user(principals: PrincipalStore, tmp_path: Path) -> None:
    tenancy = principals.create_tenancy("dockyard")
    principals.create_user("admin", tenancy.id)
    ensure_admin(principals, tmp_path / "data", ENDPOINT, "local")
    admin = principals.admin()
    assert admin is not None and admin.name == "admin-2" and admin.tenancy_id == tenancy.id


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost"])
def test_loopback_binds(host: str) -> None:
    assert is_loopback(host)
    require_safe_bind(host, insecure_no_auth=True)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "", "10.0.0.5", "example.com"])
def test_insecure_no_auth_refuses_other_binds(host: str) -> None:
    assert not is_loopback(host)
    require_safe_bind(host, insecure_no_auth=False)
    with pytest.raises(InvalidParameter, match="only on a loopback address"):
        require_safe_bind(host, insecure_no_auth=True)


def test_key_file_permissions_are_not_widened_by_umask(principals: PrincipalStore, tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        ensure_admin(principals, tmp_path / "data", ENDPOINT, "local")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "data" / "oci" / "key.pem").stat().st_mode) == 0o600

"""`dockyard users ...` and `dockyard keys ...` on a data dir's database."""

from __future__ import annotations

import re
from pathlib import Path

import oci
import typer
from typer.testing import CliRunner

from dockyard.auth import keys as keymaterial
from dockyard.auth.identity import KeyId
from dockyard.auth.principals import PrincipalStore
from dockyard.cli.users import keys, users
from dockyard.store.metadata import SqlMetadataStore

FINGERPRINT = re.compile(r"([0-9a-f]{2}:){15}[0-9a-f]{2}")

app = typer.Typer()
app.add_typer(users, name="users")
app.add_typer(keys, name="keys")


def run(*args: str) -> str:
    result = CliRunner().invoke(app, list(args), catch_exceptions=False, env={"COLUMNS": "300"})
    assert result.exit_code == 0, result.output
    return result.stdout


def principals(data_dir: Path) -> PrincipalStore:
    store = SqlMetadataStore(f"sqlite:///{data_dir / 'dockyard.db'}")
    return PrincipalStore(store.engine, store.writer)


def test_create_a_user_give_them_a_key_and_sign_with_it(tmp_path: Path) -> None:
    data = str(tmp_path / "data")
    assert "user bob ocid1.user.oc1.." in run("users", "create", "bob", "--data-dir", data)
    printed = run("keys", "add", "bob", "--data-dir", data, "--endpoint", "http://127.0.0.1:7000")
    fingerprint = FINGERPRINT.search(printed).group(0)  # type: ignore[union-attr]

    config_path = tmp_path / "data" / "oci" / "users" / "bob" / "config"
    config = oci.config.from_file(str(config_path))
    oci.config.validate_config(config)
    assert config["fingerprint"] == fingerprint
    store = principals(tmp_path / "data")
    bob = store.find_user("bob")
    assert config["user"] == bob.id and config["tenancy"] == bob.tenancy_id
    assert store.lookup_key(KeyId(bob.tenancy_id, bob.id, fingerprint)) is not None

    listing = run("keys", "list", "--user", "bob", "--data-dir", data)
    assert fingerprint in listing
    assert "bob" in run("users", "list", "--data-dir", data)

    assert "deleted" in run("keys", "delete", fingerprint, "--user", "bob", "--data-dir", data)
    assert store.lookup_key(KeyId(bob.tenancy_id, bob.id, fingerprint)) is None


def test_register_an_existing_public_key(tmp_path: Path) -> None:
    data = str(tmp_path / "data")
    run("users", "create", "carol", "--admin", "--data-dir", data)
    key = keymaterial.generate_private_key()
    pem = tmp_path / "carol_public.pem"
    pem.write_text(keymaterial.public_pem(key.public_key()))
    printed = run("keys", "add", "carol", "--public-key-file", str(pem), "--data-dir", data)
    assert printed.strip() == keymaterial.fingerprint(key.public_key())


def test_errors_say_what_to_do(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["keys", "add", "nobody", "--data-dir", str(tmp_path / "data")])
    assert result.exit_code == 1
    assert "NotAuthorizedOrNotFound" in result.output and "dockyard users list" in result.output
    key = keymaterial.generate_private_key()
    private = tmp_path / "private.pem"
    private.write_bytes(keymaterial.private_pem(key))
    CliRunner().invoke(app, ["users", "create", "dave", "--data-dir", str(tmp_path / "data")])
    result = CliRunner().invoke(app, ["keys", "add", "dave", "--public-key-file", str(private), "--data-dir", str(tmp_path / "data")])
    assert result.exit_code == 1 and "pass only the public half" in result.output


def test_fingerprints_and_names_print_verbatim(tmp_path: Path) -> None:
    """Rich would turn ":ab:" inside a fingerprint into an emoji and "[x]" in a name into markup."""
    data = str(tmp_path / "data")
    run("users", "create", "[bold]eve", "--data-dir", data)
    assert "[bold]eve" in run("users", "list", "--data-dir", data)
    for _ in range(500):  # a key whose fingerprint holds an emoji code (":ab:", ":cd:"): ~1 in 10
        key = keymaterial.generate_private_key()
        fingerprint = keymaterial.fingerprint(key.public_key())
        if re.search(r":(ab|cd):", fingerprint):
            break
    pem = tmp_path / "eve.pem"
    pem.write_text(keymaterial.public_pem(key.public_key()))
    assert run("keys", "add", "[bold]eve", "--public-key-file", str(pem), "--data-dir", data).strip() == fingerprint
    assert fingerprint in run("keys", "list", "--data-dir", data)

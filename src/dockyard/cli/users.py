"""`dockyard users ...` and `dockyard keys ...`: principals and their API keys.

These work on the data dir's database directly (like `serve`, they are administration of this
installation, not API calls), so they run with or without a server and need no signature.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

if TYPE_CHECKING:
    from dockyard.auth.principals import PrincipalStore
    from dockyard.settings import Settings

users = typer.Typer(help="Users of this dockyard (principals that sign requests).", no_args_is_help=True)
keys = typer.Typer(help="API keys of users (RSA public keys; requests are signed with the private half).", no_args_is_help=True)
# soft_wrap: an id cut in two cannot be pasted; emoji=False: Rich would show the ":ab:" inside a
# fingerprint as an emoji; highlight=False: no colours inside ids.
out = Console(soft_wrap=True, emoji=False, highlight=False)
err = Console(stderr=True, soft_wrap=True, emoji=False, highlight=False)

DataDirOption = typer.Option(None, "--data-dir", envvar="DOCKYARD_DATA_DIR", help="dockyard's state (default ~/.dockyard).")


def _settings(data_dir: Path | None) -> Settings:
    from dockyard.settings import settings_or_exit

    return settings_or_exit(data_dir=data_dir) if data_dir else settings_or_exit()


def _open(data_dir: Path | None) -> tuple[PrincipalStore, Settings]:
    from dockyard.auth.principals import PrincipalStore
    from dockyard.store.metadata import SqlMetadataStore

    settings = _settings(data_dir)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    store = SqlMetadataStore(settings.resolved_database_url)  # same engines and pragmas as the server
    return PrincipalStore(store.engine, store.writer, realm=settings.realm), settings


def _fail(exc: Exception) -> NoReturn:
    from dockyard.errors import DockyardError

    if isinstance(exc, DockyardError):
        err.print(f"[red]{exc.code}[/]: {escape(exc.message)}")
        raise typer.Exit(1)
    raise exc


@users.command("create")
def create_user(
    name: str = typer.Argument(..., help="The user's name (unique in its tenancy)."),
    tenancy: str = typer.Option(None, "--tenancy", help="Tenancy name or OCID (default: the only one; made on first use)."),
    admin: bool = typer.Option(False, "--admin", help="Make the user an administrator."),
    description: str = typer.Option("", "--description"),
    data_dir: Path = DataDirOption,
) -> None:
    """Create a user; give them a key with `dockyard keys add NAME`."""
    from dockyard.auth.bootstrap import DEFAULT_TENANCY_NAME

    try:
        store, _ = _open(data_dir)
        if tenancy:
            found = store.find_tenancy(tenancy)
        else:
            existing = store.tenancies()
            if len(existing) > 1:
                err.print(f"[red]several tenancies[/] ({escape(', '.join(t.name for t in existing))}): pass --tenancy")
                raise typer.Exit(1)
            found = existing[0] if existing else store.create_tenancy(DEFAULT_TENANCY_NAME)
        user = store.create_user(name, found.id, is_admin=admin, description=description)
    except Exception as exc:  # noqa: BLE001 - DockyardErrors become a message, the rest propagate
        _fail(exc)
    out.print(f"user {user.name} {user.id}", markup=False)
    out.print(f"tenancy {found.name} {found.id}", markup=False)
    err.print(f"next: dockyard keys add {user.name}  (writes a key and an OCI config file for them)", markup=False)


@users.command("list")
def list_users(data_dir: Path = DataDirOption) -> None:
    """Every user with their tenancy, role and number of keys."""
    try:
        store, _ = _open(data_dir)
        names = {t.id: t.name for t in store.tenancies()}
        counts = store.key_counts()
        rows = store.users()
    except Exception as exc:  # noqa: BLE001
        _fail(exc)
    table = Table("name", "id", "tenancy", "admin", "keys", "created")
    for column in table.columns:
        column.overflow = "fold"
    for u in rows:
        tenancy_text = f"{names.get(u.tenancy_id, '?')} {u.tenancy_id}"
        table.add_row(*map(escape, (u.name, u.id, tenancy_text, "yes" if u.is_admin else "", str(counts.get(u.id, 0)), u.time_created)))
    out.print(table)


@keys.command("add")
def add_key(
    user: str = typer.Argument(..., help="User name or OCID."),
    public_key_file: Path = typer.Option(None, "--public-key-file", help="Register this RSA public key (PEM). Default: generate a key pair."),
    out_dir: Path = typer.Option(None, "--out", help="Where a generated key and its OCI config go (default <data dir>/oci/users/<name>)."),
    endpoint: str = typer.Option(None, "--endpoint", help="Endpoint written into a generated config (default: the server's public URL)."),
    data_dir: Path = DataDirOption,
) -> None:
    """Register an API key for a user and print its fingerprint.

    Without --public-key-file, a new RSA 2048 key pair is generated and written with an OCI
    config file (user, fingerprint, key_file, tenancy, region) that the oci CLI/SDK, ADS and
    dockyard's CLI use as they are."""
    from dockyard.auth import bootstrap
    from dockyard.auth.keys import generate_private_key, public_pem

    try:
        store, settings = _open(data_dir)
        owner = store.find_user(user)
        if public_key_file is not None:
            key = store.add_key(owner.id, public_key_file.read_text())
            out.print(key.fingerprint)
            return
        private = generate_private_key()
        key = store.add_key(owner.id, public_pem(private.public_key()))
        directory = out_dir or bootstrap.oci_dir(settings.data_dir) / "users" / owner.name
        config = bootstrap.write_credentials(
            directory, private, owner, endpoint=endpoint or settings.resolved_public_url, region=settings.region
        )
    except Exception as exc:  # noqa: BLE001
        _fail(exc)
    out.print(key.fingerprint)
    err.print(f"private key {directory / 'key.pem'} (keep it secret); OCI config {config}", markup=False)


@keys.command("list")
def list_keys(user: str = typer.Option(None, "--user", help="Only this user's keys (name or OCID)."), data_dir: Path = DataDirOption) -> None:
    """Registered keys: fingerprint, user, creation time."""
    try:
        store, _ = _open(data_dir)
        owner = store.find_user(user) if user else None
        rows = store.keys(owner.id if owner else None)
        names = {u.id: u.name for u in store.users()}
    except Exception as exc:  # noqa: BLE001
        _fail(exc)
    table = Table("fingerprint", "user", "user id", "created")
    for column in table.columns:
        column.overflow = "fold"
    for k in rows:
        table.add_row(*map(escape, (k.fingerprint, names.get(k.user_id, "?"), k.user_id, k.time_created)))
    out.print(table)


@keys.command("delete")
def delete_key(
    fingerprint: str = typer.Argument(..., help="The key's fingerprint (aa:bb:...)."),
    user: str = typer.Option(None, "--user", help="The key's user (name or OCID), as a safety check."),
    data_dir: Path = DataDirOption,
) -> None:
    """Delete a key: requests signed with it are refused (within seconds on a running server)."""
    try:
        store, _ = _open(data_dir)
        owner = store.find_user(user) if user else None
        key = store.delete_key(fingerprint, owner.id if owner else None)
    except Exception as exc:  # noqa: BLE001
        _fail(exc)
    out.print(f"deleted {key.fingerprint} of {key.user_id}", markup=False)

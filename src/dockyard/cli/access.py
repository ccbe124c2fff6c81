"""`dockyard tenancies|compartments|groups|policies|registries ...`: who may do what, where.

Like `dockyard users`, these work on the data dir's database directly (administration of this
installation, not API calls), so they run with or without a server. A running server sees a
change at its next request (the data plane within a couple of seconds: it reuses decisions
briefly).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.markup import escape
from rich.table import Table

from dockyard.cli.users import DataDirOption, _fail, _open, err, out

if TYPE_CHECKING:
    from dockyard.auth.access_store import AccessStore
    from dockyard.auth.principals import PrincipalStore, Tenancy

tenancies = typer.Typer(help="Tenancies: isolated owners of compartments, users and resources.", no_args_is_help=True)
compartments = typer.Typer(help="Compartments of a tenancy (its OCID is the root compartment).", no_args_is_help=True)
groups = typer.Typer(help="Groups of users that policy statements grant to.", no_args_is_help=True)
policies = typer.Typer(help="Policy statements: allow group G to VERB FAMILY in compartment C | tenancy.", no_args_is_help=True)
registries = typer.Typer(help="Which tenancies may use the configured registry credentials (C8).", no_args_is_help=True)

TenancyOption = typer.Option(None, "--tenancy", help="Tenancy name or OCID (default: the only one).")


def _stores(data_dir: Path | None) -> tuple[PrincipalStore, AccessStore]:
    from dockyard.auth.access_store import AccessStore

    principals, settings = _open(data_dir)
    return principals, AccessStore(principals.engine, principals.writer, realm=settings.realm)


def _tenancy(principals: PrincipalStore, name_or_id: str | None) -> Tenancy:
    if name_or_id:
        return principals.find_tenancy(name_or_id)
    existing = principals.tenancies()
    if len(existing) != 1:
        names = ", ".join(t.name for t in existing) or "none yet; start `dockyard serve` once"
        err.print(f"[red]pass --tenancy[/]: this installation has {len(existing)} tenancies ({escape(names)})")
        raise typer.Exit(1)
    return existing[0]


def _table(*columns: str) -> Table:
    table = Table(*columns)
    for column in table.columns:
        column.overflow = "fold"  # an id cut short cannot be pasted
    return table


# --- tenancies -------------------------------------------------------------------------------------


@tenancies.command("create")
def create_tenancy(name: str = typer.Argument(..., help="Unique name."), data_dir: Path = DataDirOption) -> None:
    """Create a tenancy with its Administrators group; add users with `dockyard users create --tenancy NAME`."""
    try:
        principals, access = _stores(data_dir)
        tenancy = principals.create_tenancy(name)
        access.ensure_administrators(tenancy.id)
    except Exception as exc:  # noqa: BLE001 - DockyardErrors become a message, the rest propagate
        _fail(exc)
    out.print(f"tenancy {tenancy.name} {tenancy.id}", markup=False)


@tenancies.command("list")
def list_tenancies(data_dir: Path = DataDirOption) -> None:
    try:
        principals, _ = _stores(data_dir)
        rows = principals.tenancies()
    except Exception as exc:  # noqa: BLE001
        _fail(exc)
    table = _table("name", "id (root compartment)", "created")
    for t in rows:
        table.add_row(*map(escape, (t.name, t.id, t.time_created)))
    out.print(table)


# --- compartments ----------------------------------------------------------------------------------


@compartments.command("create")
def create_compartment(
    name: str = typer.Argument(..., help="Unique in the tenancy; policy statements refer to it by name."),
    tenancy: str = TenancyOption,
    compartment_id: str = typer.Option(None, "--id", help="Register this existing OCI compartment OCID (scripts keep their ids)."),
    data_dir: Path = DataDirOption,
) -> None:
    """Create a compartment (a new OCID, or the one given with --id)."""
    try:
        principals, access = _stores(data_dir)
        owner = _tenancy(principals, tenancy)
        compartment = access.create_compartment(owner.id, name, compartment_id)
    except typer.Exit:
        raise
    except Exception as exc:  # noqa: BLE001
        _fail(exc)
    out.print(f"compartment {compartment.name} {compartment.id}", markup=False)


@compartments.command("list")
def list_compartments(tenancy: str = typer.Option(None, "--tenancy", help="Only this tenancy's."), data_dir: Path = DataDirOption) -> None:
    try:
        principals, access = _stores(data_dir)
        owner = principals.find_tenancy(tenancy) if tenancy else None
        names = {t.id: t.name for t in principals.tenancies()}
        rows = [(names[t.id], "(root)", t.id) for t in principals.tenancies() if owner is None or t.id == owner.id]
        rows += [(names.get(c.tenancy_id, "?"), c.name, c.id) for c in access.compartments(owner.id if owner else None)]
    except Exception as exc:  # noqa: BLE001
        _fail(exc)
    table = _table("tenancy", "name", "id")
    for row in rows:
        table.add_row(*map(escape, row))
    out.print(table)


# --- groups --------------------------------------------------------------------------------------


@groups.command("create")
def create_group(name: str = typer.Argument(...), tenancy: str = TenancyOption, data_dir: Path = DataDirOption) -> None:
    try:
        principals, access = _stores(data_dir)
        owner = _tenancy(principals, tenancy)
        access.create_group(owner.id, name)
    except typer.Exit:
        raise
    except Exception as exc:  # noqa: BLE001
        _fail(exc)
    out.print(f"group {name} in tenancy {owner.name}", markup=False)
    err.print(f"next: dockyard groups add-user {name} USER, then dockyard policies add \"allow group {name} to read data-science-family in tenancy\"", markup=False)


@groups.command("add-user")
def add_user(group: str = typer.Argument(...), user: str = typer.Argument(..., help="User name or OCID."), data_dir: Path = DataDirOption) -> None:
    """Put a user in a group of their tenancy."""
    try:
        principals, access = _stores(data_dir)
        member = principals.find_user(user)
        access.add_member(member.tenancy_id, group, member.id)
    except Exception as exc:  # noqa: BLE001
        _fail(exc)
    out.print(f"{member.name} is in {group}", markup=False)


@groups.command("remove-user")
def remove_user(group: str = typer.Argument(...), user: str = typer.Argument(..., help="User name or OCID."), data_dir: Path = DataDirOption) -> None:
    """Take a user out of a group (what the group's statements granted them ends with it)."""
    try:
        principals, access = _stores(data_dir)
        member = principals.find_user(user)
        access.remove_member(member.tenancy_id, group, member.id)
    except Exception as exc:  # noqa: BLE001
        _fail(exc)
    out.print(f"{member.name} is no longer in {group}", markup=False)


@groups.command("list")
def list_groups(tenancy: str = TenancyOption, data_dir: Path = DataDirOption) -> None:
    try:
        principals, access = _stores(data_dir)
        owner = _tenancy(principals, tenancy)
        names = {u.id: u.name for u in principals.users(owner.id)}
        rows = access.groups(owner.id)
    except typer.Exit:
        raise
    except Exception as exc:  # noqa: BLE001
        _fail(exc)
    table = _table("group", "members")
    for name, members in rows.items():
        table.add_row(escape(name), escape(", ".join(names.get(m, m) for m in members)))
    out.print(table)


# --- policies ------------------------------------------------------------------------------------


@policies.command("add")
def add_policy(
    statement: str = typer.Argument(..., help='e.g. "allow group ml-readers to read data-science-family in compartment ml"'),
    tenancy: str = TenancyOption,
    data_dir: Path = DataDirOption,
) -> None:
    """Add a statement (verbs: inspect < read < use < manage; families: data-science-projects,
    data-science-models, data-science-model-deployments, data-science-work-requests,
    data-science-family, all-resources)."""
    try:
        principals, access = _stores(data_dir)
        owner = _tenancy(principals, tenancy)
        added = access.add_statement(owner.id, statement)
    except typer.Exit:
        raise
    except Exception as exc:  # noqa: BLE001
        _fail(exc)
    out.print(f"{added.id} {added.text}", markup=False)


@policies.command("list")
def list_policies(tenancy: str = TenancyOption, data_dir: Path = DataDirOption) -> None:
    try:
        principals, access = _stores(data_dir)
        owner = _tenancy(principals, tenancy)
        rows = access.statements(owner.id)
    except typer.Exit:
        raise
    except Exception as exc:  # noqa: BLE001
        _fail(exc)
    table = _table("id", "statement")
    for s in rows:
        table.add_row(escape(s.id), escape(s.text))
    out.print(table)


@policies.command("remove")
def remove_policy(statement_id: str = typer.Argument(..., help="The id `dockyard policies list` shows."), tenancy: str = TenancyOption, data_dir: Path = DataDirOption) -> None:
    try:
        principals, access = _stores(data_dir)
        owner = _tenancy(principals, tenancy)
        access.remove_statement(owner.id, statement_id)
    except typer.Exit:
        raise
    except Exception as exc:  # noqa: BLE001
        _fail(exc)
    out.print(f"removed {statement_id}", markup=False)


# --- registries (C8) -------------------------------------------------------------------------------


@registries.command("grant")
def grant_registry(
    host: str = typer.Argument(..., help="host[:port] as in DOCKYARD_REGISTRY_CREDENTIALS."),
    tenancy: str = typer.Option(..., "--tenancy", help="Tenancy name or OCID."),
    data_dir: Path = DataDirOption,
) -> None:
    """Let a tenancy's deployments use the credentials configured for a registry. The home
    tenancy (the first one, the administrator's) may use every configured credential."""
    try:
        principals, access = _stores(data_dir)
        owner = principals.find_tenancy(tenancy)
        access.grant_registry(host, owner.id)
    except Exception as exc:  # noqa: BLE001
        _fail(exc)
    out.print(f"tenancy {owner.name} may use the credentials of {host.strip().lower()}", markup=False)


@registries.command("revoke")
def revoke_registry(host: str = typer.Argument(...), tenancy: str = typer.Option(..., "--tenancy"), data_dir: Path = DataDirOption) -> None:
    try:
        principals, access = _stores(data_dir)
        owner = principals.find_tenancy(tenancy)
        access.revoke_registry(host, owner.id)
    except Exception as exc:  # noqa: BLE001
        _fail(exc)
    out.print(f"tenancy {owner.name} may no longer use the credentials of {host}", markup=False)


@registries.command("list")
def list_registries(data_dir: Path = DataDirOption) -> None:
    try:
        principals, access = _stores(data_dir)
        names = {t.id: t.name for t in principals.tenancies()}
        home = access.home_tenancy()
        rows = [("(every configured registry)", names.get(home or "", "?"), "home tenancy")] if home else []
        rows += [(host, names.get(t, t), "granted") for host, t in access.registry_grants()]
    except Exception as exc:  # noqa: BLE001
        _fail(exc)
    table = _table("registry", "tenancy", "why")
    for row in rows:
        table.add_row(*map(escape, row))
    out.print(table)

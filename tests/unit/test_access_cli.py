"""`dockyard tenancies|compartments|groups|policies|registries ...` on a data dir's database."""

from __future__ import annotations

from pathlib import Path

import typer
from typer.testing import CliRunner

from dockyard.cli import access
from dockyard.cli.users import users

app = typer.Typer()
app.add_typer(users, name="users")
for name in ("tenancies", "compartments", "groups", "policies", "registries"):
    app.add_typer(getattr(access, name), name=name)


def run(*args: str, code: int = 0) -> str:
    result = CliRunner().invoke(app, list(args), catch_exceptions=False, env={"COLUMNS": "400"})
    assert result.exit_code == code, result.output
    return result.output


def test_a_tenancy_with_compartments_groups_statements_and_registry_grants(tmp_path: Path) -> None:
    data = ["--data-dir", str(tmp_path / "data")]
    home = run("tenancies", "create", "home", *data).split()[2]
    other = run("tenancies", "create", "other", *data).split()[2]
    listed = run("tenancies", "list", *data)
    assert home in listed and other in listed

    # with two tenancies, commands that need one say so instead of guessing
    assert "pass --tenancy" in run("compartments", "create", "prod", *data, code=1)

    prod = run("compartments", "create", "prod", "--tenancy", "home", *data).split()[2]
    kept = run("compartments", "create", "legacy", "--tenancy", "home", "--id", "ocid1.compartment.oc1..fromoci", *data).split()[2]
    assert kept == "ocid1.compartment.oc1..fromoci"
    taken = run("compartments", "create", "again", "--tenancy", "other", "--id", kept, *data, code=1)
    assert "Conflict" in taken and "is taken already" in taken
    compartments = run("compartments", "list", "--tenancy", "home", *data)
    assert prod in compartments and kept in compartments and "(root)" in compartments and other not in compartments

    run("users", "create", "ana", "--tenancy", "home", *data)
    run("groups", "create", "ml", "--tenancy", "home", *data)
    assert "ana is in ml" in run("groups", "add-user", "ml", "ana", *data)
    groups = run("groups", "list", "--tenancy", "home", *data)
    assert "Administrators" in groups and "ml" in groups and "ana" in groups
    assert "ana is no longer in ml" in run("groups", "remove-user", "ml", "ana", *data)
    assert "is not in group 'ml'" in run("groups", "remove-user", "ml", "ana", *data, code=1)
    run("groups", "add-user", "ml", "ana", *data)

    bad = run("policies", "add", "allow group ml to write data-science-family in tenancy", "--tenancy", "home", *data, code=1)
    assert "InvalidParameter" in bad and "'write' is not a verb" in bad
    added = run("policies", "add", "allow group ml to use data-science-model-deployments in compartment prod", "--tenancy", "home", *data)
    statement_id = added.split()[0]
    listed = run("policies", "list", "--tenancy", "home", *data)
    assert "allow group Administrators to manage all-resources in tenancy" in listed
    assert "allow group ml to use data-science-model-deployments in compartment prod" in listed
    assert f"removed {statement_id}" in run("policies", "remove", statement_id, "--tenancy", "home", *data)
    assert "data-science-model-deployments" not in run("policies", "list", "--tenancy", "home", *data)
    assert "cannot be removed" in run("policies", "remove", "built-in", "--tenancy", "home", *data, code=1)

    assert "may use the credentials of 127.0.0.1:5002" in run("registries", "grant", "127.0.0.1:5002", "--tenancy", "other", *data)
    grants = run("registries", "list", *data)
    assert "127.0.0.1:5002" in grants and "other" in grants and "home tenancy" in grants
    run("registries", "revoke", "127.0.0.1:5002", "--tenancy", "other", *data)
    assert "has no grant" in run("registries", "revoke", "127.0.0.1:5002", "--tenancy", "other", *data, code=1)

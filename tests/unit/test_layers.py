"""The layering rules of the architecture, checked on the source: third-party engines are
imported in exactly one place each, and the pure domain imports nothing with I/O."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "dockyard"


def imports_of(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def modules() -> list[Path]:
    return sorted(SRC.rglob("*.py"))


def where(top: str) -> set[str]:
    return {str(p.relative_to(SRC)) for p in modules() if any(n == top or n.startswith(top + ".") for n in imports_of(p))}


@pytest.mark.parametrize(
    "library, allowed_prefixes",
    [
        ("docker", ("runtimes/docker", "runtimes/select.py")),
        ("fastapi", ("api/", "gateway/", "server.py")),
        ("sqlalchemy", ("store/", "service/", "auth/principals.py", "auth/access_store.py")),
        ("typer", ("cli/",)),
    ],
)
def test_third_party_engines_stay_in_their_module(library: str, allowed_prefixes: tuple[str, ...]) -> None:
    offenders = sorted(p for p in where(library) if not p.startswith(allowed_prefixes))
    assert offenders == [], f"{library} imported outside {allowed_prefixes}: {offenders}"


def test_domain_is_pure() -> None:
    forbidden = ("fastapi", "starlette", "sqlalchemy", "httpx", "docker", "dockyard.store", "dockyard.api", "dockyard.runtimes")
    for path in (SRC / "domain").glob("*.py"):
        bad = [n for n in imports_of(path) if n.startswith(forbidden)]
        assert bad == [], f"{path.name} imports {bad}"


def test_gateway_does_not_import_the_control_plane_api() -> None:
    for path in (SRC / "gateway").glob("*.py"):
        assert not [n for n in imports_of(path) if n.startswith("dockyard.api")], path.name


def test_cli_does_not_import_server_internals_at_module_level() -> None:
    for path in (SRC / "cli").glob("*.py"):
        tree = ast.parse(path.read_text())
        top_level = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
        names = {a.name for n in top_level if isinstance(n, ast.Import) for a in n.names}
        names |= {n.module for n in top_level if isinstance(n, ast.ImportFrom) and n.module}
        internal = [n for n in names if n.startswith(("dockyard.server", "dockyard.service", "dockyard.store", "dockyard.reconciler"))]
        assert internal == [], f"{path.name} imports {internal} at module level"

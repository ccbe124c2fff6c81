"""Databases of their own on the PostgreSQL server `scripts/infra/postgres.sh` starts, for tests
that run dockyard's store on PostgreSQL as well as on SQLite.

`DOCKYARD_TEST_POSTGRES_URL` names the server (scripts/test exports what postgres.sh prints);
without it the default of that script is tried. When no server answers, the test is skipped, or
fails under DOCKYARD_TEST_REQUIRE_INFRA=1 (CI), naming the command that starts one.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pytest

DEFAULT_URL = "postgresql+psycopg://dockyard:dockyard@127.0.0.1:5432/postgres"


def server_url() -> str:
    return os.environ.get("DOCKYARD_TEST_POSTGRES_URL") or DEFAULT_URL


def _unavailable(why: str) -> None:
    message = f"no PostgreSQL server for the tests ({why}); run `bash scripts/infra/postgres.sh` (as root) first"
    if os.environ.get("DOCKYARD_TEST_REQUIRE_INFRA") == "1":
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


@contextmanager
def fresh_database() -> Iterator[str]:
    """The URL of a new, empty database, dropped afterwards (with any connection left to it)."""
    try:
        import psycopg  # noqa: F401 (the driver dockyard's PostgreSQL URLs name)
    except ImportError:
        _unavailable("the psycopg driver is not installed: scripts/setup-python test")
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import OperationalError

    server = make_url(server_url())
    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    name = f"dockyard_test_{uuid.uuid4().hex[:12]}"
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except OperationalError as exc:
        admin.dispose()
        _unavailable(f"{server.render_as_string(hide_password=True)}: {str(exc.orig).strip()[:200]}")
    try:
        yield server.set(database=name).render_as_string(hide_password=False)
    finally:
        try:
            _drop(admin, name)
        finally:
            admin.dispose()


def _drop(admin: Any, name: str) -> None:
    """DROP DATABASE, ending the connections left to it. An autovacuum worker can be in the new
    database right then, and only a superuser may end it ("must be a member of the role whose
    process is being terminated"): it is done within moments, so the drop is tried again."""
    from sqlalchemy import text
    from sqlalchemy.exc import DBAPIError

    for attempt in range(50):
        try:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            return
        except DBAPIError:
            if attempt == 49:
                raise
            time.sleep(0.1)


# --- the store the API tests' servers run on ------------------------------------------------------
#
# tests/api runs each module twice, on SQLite and on PostgreSQL (its conftest's `store` fixture).
# A server made for a data directory while PostgreSQL is chosen gets a database of its own, the
# same one each time it starts there (a restart finds its data), dropped when the module ends.

_kind = "sqlite"
_databases: dict[Path, tuple[str, ExitStack]] = {}
_made: list[str] = []


@contextmanager
def servers_on(kind: str) -> Iterator[list[str]]:
    """Within this block, `database_url_for` gives servers a store of `kind` (sqlite | postgresql);
    yields the list of the PostgreSQL databases made so far."""
    global _kind
    previous, _kind = _kind, kind
    try:
        yield _made
    finally:
        _made.clear()
        _kind = previous
        made = list(_databases.values())
        _databases.clear()
        for _, stack in made:
            stack.close()


def database_url_for(data_dir: Path) -> str | None:
    """The DOCKYARD_DATABASE_URL of a server over `data_dir`: None (its SQLite file under the data
    directory) unless PostgreSQL is chosen (`servers_on`)."""
    if _kind == "sqlite":
        return None
    key = data_dir.resolve()
    if key not in _databases:
        stack = ExitStack()
        _databases[key] = (stack.enter_context(fresh_database()), stack)
        _made.append(_databases[key][0])
    return _databases[key][0]

"""The engines under the metadata store, its schema migration and its transactions.

On SQLite reads and writes use separate engines (see `MetadataEngine.__init__`); on PostgreSQL
one engine serves both. The store's parts (`metadata_resources`, `metadata_work_requests`,
`metadata`) build on `MetadataEngine` and reach the database through `_read` and `_write`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, insert, inspect, select, update
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, OperationalError

from dockyard.errors import DockyardError, ServiceUnavailable
from dockyard.store import schema as t
from dockyard.store.disk_full import report_full_disk


class StoreUnavailable(ServiceUnavailable):
    """The metadata store cannot be opened: a URL that is not one, a missing driver, a database
    that does not answer. Raised at startup, where the message is all the user sees."""


def url_for_display(url: str) -> str:
    """A database URL with any password masked: for messages, logs and the console."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:  # not a URL at all: nothing of it is shown, it may hold a secret
        return "(a database URL that cannot be read)"


def _add_columns(conn: Connection, version: int) -> None:
    """Adds the columns of the schema versions after `version` (`schema.ADDED_COLUMNS`), within the
    migration's write transaction (another process migrating waits for it, then finds the new
    version). A column already there is left as it is."""
    for added in range(version + 1, t.SCHEMA_VERSION + 1):
        for table, name in t.ADDED_COLUMNS.get(added, []):
            if name in {column["name"] for column in inspect(conn).get_columns(table.name)}:
                continue
            column_type = table.c[name].type.compile(dialect=conn.dialect)
            conn.exec_driver_sql(f"ALTER TABLE {table.name} ADD COLUMN {name} {column_type}")


class MetadataEngine:
    """What every part of `SqlMetadataStore` shares: its engines and how it opens connections."""

    def __init__(self, url: str) -> None:
        self.url = url
        shown = url_for_display(url)
        try:
            # Reads and writes use separate engines on SQLite: writes begin IMMEDIATE (one writer at a
            # time, waiting politely), reads stay deferred so they never wait for a writer (WAL).
            self.engine: Engine = self._make_engine(url)
            self.writer: Engine = self._make_engine(url, immediate=True) if url.startswith("sqlite") else self.engine
            self.migrate()
        except ArgumentError:
            raise StoreUnavailable("the database URL (DOCKYARD_DATABASE_URL) is not one dockyard can read; use "
                                   "postgresql+psycopg://user:password@host:5432/dbname, or leave it empty for SQLite in "
                                   "the data directory") from None  # fmt: skip
        except (ModuleNotFoundError, NoSuchModuleError) as exc:
            raise StoreUnavailable(f"the database {shown} needs a driver that is not installed ({exc}); for PostgreSQL "
                                   "install psycopg: pip install 'psycopg[binary]' (or dockyard's [postgres] extra)") from None  # fmt: skip
        except OperationalError as exc:
            check = ("that the data directory is writable and its disk not full" if url.startswith("sqlite") else
                     "that it runs and that the URL's host, port, user, password and database name are right")  # fmt: skip
            raise StoreUnavailable(f"cannot open the database {shown}: {str(exc.orig).strip()[:300]}; check {check}") from None
        except OSError as exc:  # the SQLite file's directory cannot be made
            raise StoreUnavailable(f"cannot open the database {shown}: {exc}; check that the data directory can be made and written") from None

    @staticmethod
    def _make_engine(url: str, immediate: bool = False) -> Engine:
        if url.startswith("sqlite"):
            path = url.split("///", 1)[-1]
            if path and path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30}, pool_size=16, max_overflow=16)

            @event.listens_for(engine, "connect")
            def _pragmas(dbapi_conn: Any, _: Any) -> None:
                cur = dbapi_conn.cursor()
                cur.execute("PRAGMA journal_mode=WAL")  # readers never wait for the writer
                cur.execute("PRAGMA synchronous=FULL")  # a committed write survives power loss
                cur.execute("PRAGMA foreign_keys=ON")
                cur.execute("PRAGMA busy_timeout=30000")
                cur.close()
                if immediate:
                    dbapi_conn.isolation_level = None  # we emit BEGIN ourselves

            if immediate:

                @event.listens_for(engine, "begin")
                def _begin(conn: Any) -> None:
                    conn.exec_driver_sql("BEGIN IMMEDIATE")

            return report_full_disk(engine)
        return report_full_disk(create_engine(url, pool_pre_ping=True))

    def migrate(self) -> None:
        t.metadata.create_all(self.engine)
        with self.writer.begin() as conn:
            version = conn.execute(select(t.schema_info.c.version)).scalar()
            if version is None:
                conn.execute(insert(t.schema_info).values(id=1, version=t.SCHEMA_VERSION))
            elif version > t.SCHEMA_VERSION:
                raise DockyardError(
                    f"the database at {url_for_display(self.url)} has schema version {version}, newer than this dockyard "
                    f"({t.SCHEMA_VERSION}); upgrade dockyard or point it at another --data-dir"
                )
            elif version < t.SCHEMA_VERSION:
                _add_columns(conn, version)
                conn.execute(update(t.schema_info).where(t.schema_info.c.id == 1).values(version=t.SCHEMA_VERSION))

    def close(self) -> None:
        self.engine.dispose()
        self.writer.dispose()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Connection]:
        """One write transaction; on SQLite it takes the write lock at once (BEGIN IMMEDIATE),
        so a read-then-write inside it can never fail on a snapshot another writer moved."""
        with self.writer.begin() as conn:
            yield conn

    @contextlib.contextmanager
    def _write(self, tx: Connection | None) -> Iterator[Connection]:
        if tx is not None:
            yield tx
        else:
            with self.writer.begin() as conn:
                yield conn

    @contextlib.contextmanager
    def _read(self, tx: Connection | None) -> Iterator[Connection]:
        if tx is not None:
            yield tx
        else:
            with self.engine.connect() as conn:
                yield conn

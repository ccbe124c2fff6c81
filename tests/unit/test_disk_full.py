"""A full database disk becomes a 507 naming the database; other database errors stay as they were.

SQLite's `max_page_count` makes it answer SQLITE_FULL ("database or disk is full") exactly as
on a full disk, without needing one.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import create_engine, event, text
from sqlalchemy.exc import OperationalError

from dockyard.store.artifacts import InsufficientStorage
from dockyard.store.disk_full import report_full_disk


def small_database(path: Path) -> object:
    engine = report_full_disk(create_engine(f"sqlite:///{path}"))

    @event.listens_for(engine, "connect")
    def _cap(dbapi_conn: object, _: object) -> None:
        dbapi_conn.execute("PRAGMA max_page_count=8")  # type: ignore[attr-defined]

    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE t (v TEXT)"))
    return engine


def test_a_full_database_is_insufficient_storage_and_nothing_is_committed(tmp_path: Path) -> None:
    engine = small_database(tmp_path / "small.db")
    with pytest.raises(InsufficientStorage) as full:
        with engine.begin() as conn:  # type: ignore[attr-defined]
            for _ in range(100):
                conn.execute(text("INSERT INTO t VALUES (:v)"), {"v": "x" * 4000})
    assert full.value.status == 507
    assert "small.db" in full.value.message and "no disk space" in full.value.message and "free space" in full.value.message
    with engine.connect() as conn:  # type: ignore[attr-defined]
        assert conn.execute(text("SELECT count(*) FROM t")).scalar() == 0


def test_other_database_errors_are_left_alone(tmp_path: Path) -> None:
    engine = small_database(tmp_path / "small.db")
    with pytest.raises(OperationalError):
        with engine.connect() as conn:  # type: ignore[attr-defined]
            conn.execute(text("SELECT * FROM no_such_table"))

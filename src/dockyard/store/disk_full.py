"""A full disk under the metadata store is the operator's to fix, not a server bug: 507, not 500.

SQLite reports SQLITE_FULL ("database or disk is full") when a write or its journal cannot
grow; PostgreSQL reports SQLSTATE 53100 (disk_full). Both become `InsufficientStorage`, naming
the database and the fix. Nothing was committed when this is raised: the transaction rolled back.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from sqlalchemy import Engine, event

from dockyard.store.artifacts import InsufficientStorage

_POSTGRES_DISK_FULL = "53100"


def report_full_disk(engine: Engine) -> Engine:
    """Make `engine` raise InsufficientStorage (507) instead of a driver error on a full disk."""

    @event.listens_for(engine, "handle_error")
    def _full_disk(context: Any) -> None:
        original = context.original_exception
        if _is_disk_full(original):
            raise InsufficientStorage(
                f"the metadata database ({engine.url.render_as_string(hide_password=True)}) has no disk space "
                "left, so nothing was changed; free space on its disk and retry"
            ) from original

    return engine


def _is_disk_full(error: BaseException) -> bool:
    if isinstance(error, sqlite3.Error):
        return getattr(error, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL or "database or disk is full" in str(error)
    code = getattr(error, "sqlstate", None) or getattr(error, "pgcode", None)
    return code == _POSTGRES_DISK_FULL

"""How the log store (logs.py) inserts its rows.

On SQLite the flusher hands the driver plain tuples: `fields` already JSON text (encoded once by
the C encoder), many rows to a statement, bypassing SQLAlchemy's per-row parameter processing
(which was most of the flusher's CPU). Other databases (PostgreSQL binds JSON through the
driver's own adapter) insert through SQLAlchemy, a row per entry.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import chain
from typing import Any

from sqlalchemy import Connection, insert
from sqlalchemy.engine import Dialect

from dockyard.store import schema as t

# The columns of an entry row, in the order of the tuples the flusher makes.
COLUMNS = ("deployment_id", "category", "time", "instance_id", "stream", "log_id", "message", "fields")
# A block row of access entries (log_rows.py): its seq is given, its `entries` is how many.
BLOCK_COLUMNS = ("seq", *COLUMNS, "entries")
ROWS_PER_INSERT = 100  # 800 parameters: within SQLite's oldest limit (999) per statement


@dataclass(frozen=True)
class DriverInserts:
    """The INSERTs of one entry row and of `ROWS_PER_INSERT` rows (parameters in `COLUMNS`
    order), and of one block row (`BLOCK_COLUMNS` order), in the driver's own SQL."""

    single: str
    many: str
    block: str


def driver_inserts(dialect: Dialect) -> DriverInserts | None:
    """The driver-level INSERTs for a dialect whose JSON column takes the JSON text itself
    (SQLite); None for other dialects."""
    if dialect.name != "sqlite" or dialect.paramstyle != "qmark":
        return None
    compiled = insert(t.log_entries).compile(dialect=dialect, column_keys=list(COLUMNS))
    single = str(compiled)
    head, values = single.split(" VALUES ", 1)
    if tuple(compiled.positiontup or ()) != COLUMNS or values.count("?") != len(COLUMNS):
        return None
    block = insert(t.log_entries).compile(dialect=dialect, column_keys=list(BLOCK_COLUMNS))
    if tuple(block.positiontup or ()) != BLOCK_COLUMNS:
        return None
    # One statement of many rows costs SQLite less per row than one statement per row (the
    # AUTOINCREMENT bookkeeping and the statement's setup run once); rows go in VALUES order.
    return DriverInserts(single, f"{head} VALUES {', '.join([values] * ROWS_PER_INSERT)}", str(block))


def insert_rows(conn: Connection, inserts: DriverInserts | None, rows: list[tuple[Any, ...]]) -> None:
    """Entry rows (`COLUMNS` order) in the order given."""
    if not rows:
        return
    if inserts is None:
        conn.execute(insert(t.log_entries), [dict(zip(COLUMNS, row)) for row in rows])
        return
    whole = len(rows) - len(rows) % ROWS_PER_INSERT
    if whole:
        flat = chain.from_iterable
        conn.exec_driver_sql(inserts.many, [tuple(flat(rows[start:start + ROWS_PER_INSERT]))
                                            for start in range(0, whole, ROWS_PER_INSERT)])  # fmt: skip
    if whole < len(rows):
        conn.exec_driver_sql(inserts.single, rows[whole:])


def insert_blocks(conn: Connection, inserts: DriverInserts, blocks: list[tuple[Any, ...]]) -> None:
    """Block rows (`BLOCK_COLUMNS` order, seq not yet given), each given the seq of its last
    entry: the seqs after the highest one the table has handed out (AUTOINCREMENT's record) or
    holds, in the order of `blocks`. Within the caller's write transaction, which on SQLite
    holds the one write lock: no other row can take one of them meanwhile."""
    last = conn.exec_driver_sql(
        "SELECT max(coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'log_entries'), 0), "
        "coalesce((SELECT max(seq) FROM log_entries), 0))"
    ).scalar() or 0
    rows = []
    for block in blocks:
        last += block[-1]
        rows.append((last, *block[1:]))
    conn.exec_driver_sql(inserts.block, rows)

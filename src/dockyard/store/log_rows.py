"""Log entries as the rows of `log_entries` hold them: one entry per row, or a block of access
entries in one row.

Why blocks: a busy gateway stores an access entry per request, and a row per entry cost the
log store about 12 µs of CPU each (its message, its JSON, and an insert into the table and
its three indexes), a tenth of what the gateway spends per request. A block row holds up to
`BLOCK_ENTRIES` (100) access entries of one deployment: their field values as one JSON list, one
insert, one set of index entries (benchmarks/log_store.py has the figures).

What a reader sees does not change: every entry keeps a seq of its own. A block of n entries
takes the n seqs up to the row's own (`seq`), so the first entry's seq is `seq - n + 1`; no other
row can get one of them (they are taken in the block's write transaction, under SQLite's one
write lock). The row's `time` is its newest entry's, so retention by age deletes a block once
every entry in it is too old, and a reader asking for entries since a time finds it. Within one
flush, blocks take their seqs after the batch's single rows (predict lines), so an access entry
may follow predict lines that were queued after it. Blocks are
written on SQLite, whose AUTOINCREMENT takes explicit seqs in its stride; PostgreSQL rows hold
one entry each (its sequence hands out one value at a time).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any

from sqlalchemy import Connection, select

from dockyard.gateway.accesslog import DEPLOYMENT_ID, FIELD_NAMES, INSTANCE_ID, TIME, entry_message
from dockyard.store import schema as t
from dockyard.store.json_text import json_text
from dockyard.store.log_times import normalised_log_time

_TIME = itemgetter(TIME)
_DEPLOYMENT_ID = itemgetter(DEPLOYMENT_ID)

try:
    from orjson import dumps as _orjson_dumps
except ImportError:  # an interpreter orjson has no wheel for: the standard library's encoder
    _orjson_dumps = None


@dataclass(frozen=True)
class LogEntry:
    seq: int
    time: str
    deployment_id: str
    category: str
    instance_id: str | None
    stream: str | None
    log_id: str | None
    message: str
    fields: dict[str, Any] = field(default_factory=dict)

    def wire(self) -> dict[str, Any]:
        return {
            "seq": self.seq, "time": self.time, "deploymentId": self.deployment_id, "category": self.category,
            "instanceId": self.instance_id, "stream": self.stream, "logId": self.log_id, "message": self.message,
            "fields": {_camel(name): value for name, value in self.fields.items()},
        }  # fmt: skip


def _camel(name: str) -> str:
    """bytes_in -> bytesIn: the wire format's spelling of a stored field name."""
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def row_entries(row: Any) -> list[LogEntry]:
    """The entries a `log_entries` row holds, oldest first."""
    count = row.entries
    if count is None:
        return [LogEntry(row.seq, row.time, row.deployment_id, row.category, row.instance_id, row.stream, row.log_id,
                         row.message, row.fields or {})]  # fmt: skip
    first = row.seq - count + 1
    return [
        LogEntry(first + index, normalised_log_time(values[TIME]), row.deployment_id, row.category, values[INSTANCE_ID],
                 None, row.log_id, entry_message(values), dict(zip(FIELD_NAMES, values)))  # fmt: skip
        for index, values in enumerate(row.fields)
    ]


# A block of access entries as a gateway worker hands it to its supervisor (access_relay.py):
# (deployment id, how many entries, the newest entry's time, their field values as JSON text).
AccessBlock = tuple[str, int, str, str]
BLOCK_ENTRIES = 100  # the most entries in a block (the flusher's own blocks are a step's: `logs.STEP_ENTRIES`, 100 too)


def access_blocks(entries: Sequence[Sequence[Any]]) -> list[AccessBlock]:
    """Access entries' field values (all naming a deployment) as blocks: a deployment's entries
    in order, `BLOCK_ENTRIES` at most to a block, with the newest entry's time (entries' times
    are a gateway's own, all in the stored form, so the text that sorts last is the newest).
    Made where the entries are (a gateway worker), so whoever stores them inserts the text as
    it is, touching no entry; the log store makes its own blocks of what it was handed loose."""
    deployments = dict.fromkeys(map(_DEPLOYMENT_ID, entries))  # in the order they first come
    if len(deployments) == 1:  # the common case: nothing to sort out
        by_deployment = {next(iter(deployments)): entries}
    else:
        by_deployment = {d: [] for d in deployments}
        for values in entries:
            by_deployment[values[DEPLOYMENT_ID]].append(values)
    blocks = []
    for deployment_id, held in by_deployment.items():
        for start in range(0, len(held), BLOCK_ENTRIES):
            part = held[start:start + BLOCK_ENTRIES]
            blocks.append((deployment_id, len(part), max(map(_TIME, part)), block_json(part)))
    return blocks


def block_json(entries: Sequence[Sequence[Any]]) -> str:
    """The JSON text of a block's entries (a list of their field values): by orjson, at a tenth
    of the standard library's cost (0.25 against 2.5 µs an entry, the largest part of storing
    one); by the standard library where orjson is missing or refuses a value (an integer beyond
    64 bits, a string with lone surrogates), as it writes what json.loads reads back the same."""
    if _orjson_dumps is not None:
        try:
            return _orjson_dumps(entries).decode()
        except TypeError:  # orjson.JSONEncodeError
            pass
    return json_text(entries)


def read_entries(conn: Connection, conditions: list[Any], wanted: int, newest: bool, after_seq: int | None,
                 since: str | None) -> list[LogEntry]:  # fmt: skip
    """The first `wanted` entries (the last, when `newest`) of the rows `conditions` select,
    oldest first. A block row may hold entries before `after_seq` or `since`, which are left out;
    but its seq and time are its last entry's, so every row selected holds at least one entry
    wanted, and `wanted` rows are enough. Rows are unpacked as they come, until enough entries
    are found (a block holds up to `BLOCK_ENTRIES`: a page rarely needs more than a few rows)."""
    e = t.log_entries
    rows = conn.execute(select(e).where(*conditions).order_by(e.c.seq.desc() if newest else e.c.seq).limit(wanted))
    found: list[LogEntry] = []
    for row in rows:
        if len(found) >= wanted:
            break
        held = [x for x in row_entries(row) if (after_seq is None or x.seq > after_seq) and (since is None or x.time >= since)]
        found += reversed(held) if newest else held
    found = found[:wanted]
    return found[::-1] if newest else found

"""Durable access and predict logs of deployments, in the metadata database.

Why a table in the same database rather than files: the gateway may run in another process
(`--role gateway`) than the predict-log collector, and both must append to one ordered stream a
reader can follow with a cursor. The database gives that ordering (`seq`, committed in order
since SQLite has one writer), works unchanged on PostgreSQL, and makes retention one DELETE.

Volume: the gateway's request path only appends to an in-memory queue (`add_access`, O(1), no
lock, no I/O). A flusher thread writes the queue in batches, one transaction per batch, every
`flush_interval_s` or as soon as `batch_max` entries wait; on SQLite, a step's access entries of
one deployment go into one row (a block: log_rows.py). It makes and inserts a batch's rows in
steps of `STEP_ENTRIES`, pausing briefly between steps (`_give_way`): a batch of thousands of
entries is tens of milliseconds of CPU, and requests that woke on the same core, or needed the
same process's GIL, used to wait behind all of it (benchmarks/gateway_overhead.py at one
connection, two workers: p99 3.3 ms, and 1.3 ms in steps; transactions of 100 instead cost 70%
more CPU per entry in commits and gave 1.9 ms). A full queue drops the new entry and counts it
(`dropped`, with a warning at most every 10 s) instead of growing without bound.
Retention (age and entries per deployment and category) runs in the same thread every
`retention_interval_s`.

Predict lines carry the runtime's read position of their instance; the position is written in
the same transaction as the lines, so `position(instance_id)` after a restart points exactly past
the last stored line: nothing is stored twice, and nothing read but not yet written is lost.
"""

from __future__ import annotations

import atexit
import json
import logging
import threading
import time
import weakref
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import Engine, and_, delete, func, insert, select, update

from dockyard.errors import InvalidParameter
from dockyard.gateway.accesslog import DEPLOYMENT_ID, FIELD_NAMES, INSTANCE_ID, TIME, AccessEntry, entry_message, field_values
from dockyard.store import schema as t
from dockyard.store.json_text import json_text
from dockyard.store.log_inserts import ROWS_PER_INSERT, driver_inserts, insert_blocks, insert_rows
from dockyard.store.log_rows import AccessBlock, LogEntry, access_blocks, read_entries
from dockyard.store.log_times import log_time, normalised_log_time
from dockyard.store.metadata import SqlMetadataStore

log = logging.getLogger("dockyard.logs")

CATEGORIES = ("access", "predict")
MAX_PAGE = 1000
DEFAULT_PAGE = 100
LOG_ID_TTL_S = 5.0  # how long a deployment's categoryLogDetails are cached by the flusher


@dataclass
class LogPage:
    entries: list[LogEntry]
    cursor: int  # pass as `after_seq` to get what comes next (0: nothing stored yet)


# One queued row: (deployment_id, category, time, instance_id, stream, message, fields, position);
# for an access entry `fields` is the tuple of its field values, made a message and JSON when
# written; for a worker's block of them a `_Block`, and `time` its newest entry's.
_Row = tuple[str, str, str, "str | None", "str | None", str, Any, "str | None"]


class _Block:
    """A worker's block of access entries in the queue (its JSON text inserted as it is)."""

    __slots__ = ("count", "text")

    def __init__(self, count: int, text: str) -> None:
        self.count = count
        self.text = text


# Entries the flusher makes and inserts between two pauses (`_give_way`, module docstring): one
# many-row statement (fewer rows go one statement each, at about twice the cost per row), or a
# block row of each deployment's access entries (log_rows.py), so a block holds at most this many.
STEP_ENTRIES = ROWS_PER_INSERT
STEP_PAUSE_S = 0.0002
# How many entries a row holds: a block row says (log_rows.py), any other holds one.
_ENTRIES_OF_ROW = func.coalesce(t.log_entries.c.entries, 1)


def _give_way() -> None:
    """Between two steps: whatever waits for this core, or for this process's GIL, runs. A short
    sleep, not `os.sched_yield()`: that lets the GIL go only for an instant, the thread takes it
    straight back, and a gateway served by the same process (one worker, or `dockyard serve`)
    waited for the 5 ms switch interval instead (p99 at one connection 5.2 ms; 1.5 ms so)."""
    time.sleep(STEP_PAUSE_S)


class LogStore:
    def __init__(
        self,
        engine: Engine,
        writer: Engine | None = None,
        *,
        retention_hours: float = 72.0,
        max_entries_per_deployment: int = 1_000_000,
        queue_max: int = 100_000,
        batch_max: int = 5_000,
        flush_interval_s: float = 0.2,
        retention_interval_s: float = 60.0,
        idle_exit_s: float = 30.0,
    ) -> None:
        self.engine = engine
        self.writer = writer or engine
        self.retention_hours = retention_hours
        self.max_entries_per_deployment = max_entries_per_deployment
        self.queue_max = queue_max
        self.batch_max = batch_max
        self.flush_interval_s = flush_interval_s
        self.retention_interval_s = retention_interval_s
        self.idle_exit_s = idle_exit_s
        self.dropped = 0  # entries refused because the queue was full
        self.written = 0
        self.batches = 0  # write transactions of entries (a measure of batching)
        self._queue: deque[_Row] = deque()
        self._wake = threading.Event()
        self._flush_lock = threading.Lock()
        self._thread_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._last_drop_warning = 0.0
        self._last_retention = time.monotonic()
        self._log_ids: dict[str, tuple[float, dict[str, str] | None]] = {}
        self.unknown = 0  # access entries of ids that name no deployment, not stored
        self._insert_sql = driver_inserts(self.writer.dialect)
        self._in_blocks = 0  # entries queued in blocks beyond one per block: the queue holds len + this
        self._in_blocks_lock = threading.Lock()  # updated by the adding and the flushing thread

    # --- writing ---------------------------------------------------------------------------------

    def add(self, deployment_id: str, category: str, message: str, *, time_: datetime | str | None = None,
            instance_id: str | None = None, stream: str | None = None, fields: dict[str, Any] | None = None,
            position: str | None = None) -> bool:
        """Queue one entry; never blocks. False when the queue is full and the entry was dropped."""
        if len(self._queue) + self._in_blocks >= self.queue_max:
            self._drop()
            return False
        stamp = time_ if isinstance(time_, str) else log_time(time_)
        self._queue.append((deployment_id, category, stamp, instance_id, stream, message, fields, position))
        if len(self._queue) >= self.batch_max:
            self._wake.set()
        self._ensure_thread()
        return True

    def add_access(self, entry: AccessEntry) -> None:
        """The gateway's access-log sink. Requests that named no deployment are not stored (they
        belong to no deployment's log)."""
        self.add_access_values(field_values(entry))

    def add_access_values(self, values: tuple[Any, ...]) -> None:
        """An access entry as its field values in `AccessEntry`'s order (what a gateway worker
        sends its supervisor, access_relay.py). Only a tuple is queued here; the flusher thread
        makes its message and JSON."""
        deployment_id = values[DEPLOYMENT_ID]
        if deployment_id is None:
            return
        if len(self._queue) + self._in_blocks >= self.queue_max:
            self._drop()
            return
        self._queue.append((deployment_id, "access", values[TIME], values[INSTANCE_ID], None, "", values, None))
        if len(self._queue) >= self.batch_max:
            self._wake.set()
        if self._thread is None:
            self._ensure_thread()

    def add_access_block(self, block: AccessBlock) -> None:
        """Access entries a gateway worker made a block of (access_relay.py): queued as they
        came, and on SQLite inserted as they are (the flusher touches no entry of theirs);
        elsewhere made a row per entry. A full queue drops the whole block."""
        deployment_id, count, newest, text = block
        if self._insert_sql is None:
            for values in json.loads(text):
                self.add_access_values(tuple(values))
            return
        if len(self._queue) + self._in_blocks + count > self.queue_max:
            self._drop(count)
            return
        with self._in_blocks_lock:
            self._in_blocks += count - 1
        self._queue.append((deployment_id, "access", newest, None, None, "", _Block(count, text), None))
        if len(self._queue) >= self.batch_max:
            self._wake.set()
        if self._thread is None:
            self._ensure_thread()

    @property
    def full(self) -> bool:
        """True while the queue has no room: `add` would drop."""
        return len(self._queue) + self._in_blocks >= self.queue_max

    def _drop(self, count: int = 1) -> None:
        self.dropped += count
        now = time.monotonic()
        if now - self._last_drop_warning >= 10.0:
            self._last_drop_warning = now
            log.warning("log queue full (%d entries waiting): dropped %d entries so far; the database cannot keep up",
                        len(self._queue) + self._in_blocks, self.dropped)

    def flush(self) -> int:
        """Write what is queued now (in batches; entries queued meanwhile wait for the next
        flush, so this ends under any load); the number of entries taken from the queue."""
        taken = entries = 0
        with self._flush_lock:
            waiting = len(self._queue)
            take = self._queue.popleft
            while taken < waiting:
                # Only a flush (under this lock) takes from the queue, so it holds at least
                # `waiting - taken` items; adds meanwhile only append behind them.
                batch: list[_Row] = [take() for _ in range(max(1, min(self.batch_max, waiting - taken)))]
                in_blocks = sum(row[6].count - 1 for row in batch if row[6].__class__ is _Block)
                if in_blocks:
                    with self._in_blocks_lock:
                        self._in_blocks -= in_blocks
                self._write(batch, len(batch) + in_blocks)
                taken += len(batch)
                entries += len(batch) + in_blocks
        return entries

    def _write(self, batch: list[_Row], entries: int) -> None:
        log_ids = self._log_ids_of({row[0] for row in batch})
        positions: dict[str, tuple[str, str]] = {}
        for d, _, _, i, _, _, _, p in batch:
            if i is not None and p is not None:
                positions[i] = (d, p)
        try:
            # Rows (and their JSON) are made before the transaction: on SQLite it holds the one
            # write lock the control plane's writes wait for.
            rows: list[tuple[Any, ...]] = []
            blocks: list[tuple[Any, ...]] = []
            for start in range(0, len(batch), STEP_ENTRIES):
                if start:
                    _give_way()
                rows += self._entry_rows(batch[start:start + STEP_ENTRIES], log_ids, blocks)
            with self.writer.begin() as conn:
                for start in range(0, len(rows), STEP_ENTRIES):
                    _give_way()
                    insert_rows(conn, self._insert_sql, rows[start:start + STEP_ENTRIES])
                if blocks and self._insert_sql is not None:
                    _give_way()
                    insert_blocks(conn, self._insert_sql, blocks)
                now = log_time()
                for instance_id, (deployment_id, position) in positions.items():
                    changed = conn.execute(
                        update(t.log_positions).where(t.log_positions.c.instance_id == instance_id)
                        .values(position=position, time_updated=now)
                    ).rowcount
                    if not changed:
                        conn.execute(insert(t.log_positions).values(
                            instance_id=instance_id, deployment_id=deployment_id, position=position, time_updated=now))
        except Exception:
            # The database refused (full disk, gone): these entries are lost, the next batch tries again.
            self.dropped += entries
            log.exception("could not store %d log entries", entries)
            return
        self.written += len(rows) + sum(block[-1] for block in blocks)
        self.batches += 1

    def _entry_rows(self, batch: list[_Row], log_ids: dict[str, dict[str, str] | None],
                    blocks: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:  # fmt: skip
        """The batch's entries as rows in `log_inserts.COLUMNS` order; `fields` already JSON text where the
        store inserts through the driver (`_insert_sql`). There, access entries are not made rows:
        they go to `blocks`, a block row per deployment (`log_inserts.BLOCK_COLUMNS` order, seq still 0),
        so a batch should be a step (`STEP_ENTRIES`)."""
        encode = json_text if self._insert_sql is not None else None
        rows = []
        made: list[AccessBlock] = []  # blocks of access entries, as a worker makes them or made here
        loose: list[tuple[Any, ...]] = []  # access entries to make blocks of (SQLite only)
        for d, c, stamp, i, s, m, f, _ in batch:
            ids = log_ids.get(d)
            if ids is None and c == "access":
                # A request to a deployment id that names no deployment (a typo, or someone
                # probing ids): it is in no deployment's log, and must not grow the table.
                self.unknown += f.count if f.__class__ is _Block else 1
                continue
            if f.__class__ is _Block:  # a worker's block (`add_access_block`): on SQLite only
                made.append((d, f.count, stamp, f.text))
                continue
            if f.__class__ is tuple:  # an access entry's field values (`add_access_values`)
                if encode is not None:
                    loose.append(f)
                    continue
                m = entry_message(f)
                f = dict(zip(FIELD_NAMES, f))
            elif encode is not None:
                f = encode(f)
            rows.append((d, c, normalised_log_time(stamp), i, s, ids.get(c) if ids else None, m, f))
        for d, count, newest, text in made + access_blocks(loose):
            log_id = (log_ids.get(d) or {}).get("access")
            blocks.append((0, d, "access", normalised_log_time(newest), None, None, log_id, "", text, count))
        return rows

    def _log_ids_of(self, deployment_ids: Iterable[str]) -> dict[str, dict[str, str] | None]:
        """categoryLogDetails of each deployment as {category: logId}, None for an id that names
        no deployment; cached for a few seconds."""
        now = time.monotonic()
        wanted = [d for d in deployment_ids if now - self._log_ids.get(d, (-1e9, None))[0] > LOG_ID_TTL_S]
        if wanted:
            found: dict[str, dict[str, str] | None] = {d: None for d in wanted}
            try:
                with self.engine.connect() as conn:
                    query = select(t.resources.c.id, t.resources.c.body).where(
                        t.resources.c.id.in_(wanted), t.resources.c.kind == "modeldeployment")
                    for row in conn.execute(query):
                        details = (row.body or {}).get("categoryLogDetails") or {}
                        found[row.id] = {c: v["logId"] for c, v in details.items() if isinstance(v, dict) and v.get("logId")}
            except Exception:
                log.exception("could not read categoryLogDetails; storing the entries without log ids")
                found = {d: {} for d in wanted}
            if len(self._log_ids) > 10_000:
                self._log_ids.clear()
            for deployment_id, ids in found.items():
                self._log_ids[deployment_id] = (now, ids)
        return {d: self._log_ids.get(d, (0.0, None))[1] for d in deployment_ids}

    # --- the flusher thread ----------------------------------------------------------------------

    def _ensure_thread(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        with self._thread_lock:
            if self._closed or (self._thread is not None and self._thread.is_alive()):
                return
            self._thread = threading.Thread(target=self._run, name="dockyard-log-flusher", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        idle_since = time.monotonic()
        while not self._closed:
            self._wake.wait(self.flush_interval_s)
            self._wake.clear()
            try:
                if self.flush():
                    idle_since = time.monotonic()
                if time.monotonic() - self._last_retention >= self.retention_interval_s:
                    self._last_retention = time.monotonic()
                    self.enforce_retention()
            except Exception:
                log.exception("log flusher pass failed")
            if time.monotonic() - idle_since > self.idle_exit_s and not self._queue:
                # Idle: end, so stores of finished servers leave no thread behind. An add() racing
                # with this either sees no thread and starts one, or is seen by the check below.
                with self._thread_lock:
                    self._thread = None
                if self._queue:
                    self._ensure_thread()
                return

    def close(self) -> None:
        """Write what is queued and stop the flusher."""
        self._closed = True
        self._wake.set()
        self.flush()

    # --- retention -------------------------------------------------------------------------------

    def enforce_retention(self, now: datetime | None = None) -> int:
        """Delete entries older than `retention_hours` and, per deployment and category, all but
        the newest `max_entries_per_deployment`; the number of entries deleted."""
        cutoff = log_time((now or datetime.now(timezone.utc)) - timedelta(hours=self.retention_hours))
        e = t.log_entries
        deleted = self._delete_in_chunks(e.c.time < cutoff)
        with self.writer.begin() as conn:
            # Positions of instances that are gone; a running instance keeps its position however
            # long it stays quiet, or a restart would store its output a second time.
            conn.execute(delete(t.log_positions).where(
                t.log_positions.c.time_updated < cutoff,
                t.log_positions.c.instance_id.not_in(select(t.instances.c.instance_id)),
            ))
        held = func.sum(_ENTRIES_OF_ROW)
        with self.engine.connect() as conn:
            crowded = conn.execute(
                select(e.c.deployment_id, e.c.category).group_by(e.c.deployment_id, e.c.category)
                .having(held > self.max_entries_per_deployment)
            ).all()
        for deployment_id, category in crowded:
            where = and_(e.c.deployment_id == deployment_id, e.c.category == category)
            # The newest row at which the entries counted from the newest reach the limit: it and
            # every newer row stay (a block there is kept whole), every older row goes.
            newest_first = select(e.c.seq, held.over(order_by=e.c.seq.desc()).label("held")).where(where).subquery()
            with self.engine.connect() as conn:
                oldest_kept = conn.execute(
                    select(newest_first.c.seq).where(newest_first.c.held >= self.max_entries_per_deployment)
                    .order_by(newest_first.c.seq.desc()).limit(1)
                ).scalar()
            if oldest_kept is not None:
                deleted += self._delete_in_chunks(and_(where, e.c.seq < oldest_kept))
        if deleted:
            log.info("log retention removed %d entries", deleted)
        return deleted

    def _delete_in_chunks(self, condition: Any, chunk: int = 10_000) -> int:
        """Delete matching entries a chunk per transaction, so the database's one write lock is
        never held long enough to delay the control plane's writes."""
        e = t.log_entries
        deleted = 0
        while True:
            with self.writer.begin() as conn:
                batch = select(e.c.seq).where(condition).order_by(e.c.seq).limit(chunk).scalar_subquery()
                deleted += conn.execute(select(func.coalesce(func.sum(_ENTRIES_OF_ROW), 0)).where(e.c.seq.in_(batch))).scalar() or 0
                count = conn.execute(delete(e).where(e.c.seq.in_(batch))).rowcount or 0
            if count < chunk:
                return deleted

    # --- reading ---------------------------------------------------------------------------------

    def read(self, deployment_id: str, category: str | None = None, *, after_seq: int | None = None,
             since: datetime | None = None, tail: int | None = None, limit: int = DEFAULT_PAGE) -> LogPage:
        """Entries oldest first with seq > after_seq and time >= since; `tail` keeps only the
        last N of those. The cursor covers everything up to the newest entry that existed when
        the read began, so following with it never misses or repeats an entry."""
        if category is not None and category not in CATEGORIES:
            raise InvalidParameter(f"category {category!r} is not known; use one of {', '.join(CATEGORIES)}")
        limit = max(1, min(limit, MAX_PAGE))
        e = t.log_entries
        conditions = [e.c.deployment_id == deployment_id]
        if category:
            conditions.append(e.c.category == category)
        if after_seq is not None:
            conditions.append(e.c.seq > after_seq)
        if since is not None:
            conditions.append(e.c.time >= log_time(since))
        with self.engine.connect() as conn:
            # Read the top first: every entry at or below it is committed (one writer, seq in
            # commit order), so a later page starting above the cursor misses none of them.
            top = conn.execute(select(func.max(e.c.seq))).scalar() or 0
            conditions.append(e.c.seq <= top)
            if since is not None:
                # The first seq of anything that recent, from the time index (`seq + 0`: a bare
                # min(seq) makes SQLite walk the whole table in seq order instead), lets the read
                # start there rather than filter the deployment's whole log by time.
                first = conn.execute(select(func.min(e.c.seq + 0)).where(e.c.time >= log_time(since))).scalar()
                conditions.append(e.c.seq >= (first if first is not None else top + 1))
            wanted = limit if tail is None else max(0, min(tail, MAX_PAGE))
            entries = read_entries(conn, conditions, wanted, tail is not None, after_seq, log_time(since) if since else None)
        full_page = tail is None and len(entries) == limit
        cursor = entries[-1].seq if full_page else max(top, after_seq or 0)
        return LogPage(entries, cursor)

    def position(self, instance_id: str) -> str | None:
        """Where the collector stopped reading an instance's output (None: never read)."""
        with self.engine.connect() as conn:
            return conn.execute(
                select(t.log_positions.c.position).where(t.log_positions.c.instance_id == instance_id)
            ).scalar()


def open_log_store(store: SqlMetadataStore, settings: Any) -> LogStore:
    """A log store over `store`'s database, configured by `settings` (DOCKYARD_LOG_*). The
    composition root makes one per process and hands it to the gateway (access) and the
    collector (predict), so they share one queue and one flusher. Its queue is written at exit."""
    logs = LogStore(
        store.engine,
        store.writer,
        retention_hours=settings.log_retention_hours,
        max_entries_per_deployment=settings.log_max_entries_per_deployment,
        queue_max=settings.log_queue_max_entries,
        flush_interval_s=settings.log_flush_interval_s,
    )
    atexit.register(_flush_at_exit, weakref.ref(logs))
    return logs


def _flush_at_exit(ref: weakref.ref[LogStore]) -> None:
    logs = ref()
    if logs is not None:
        try:
            logs.close()
        except Exception:
            log.exception("could not write the last log entries at exit")

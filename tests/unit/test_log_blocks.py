"""Access entries stored a block per row (store/log_rows.py): a reader still sees every entry
once, with a seq of its own, in order; tail, since, retention and an older database's upgrade
treat the entries inside a block as entries. Each test runs on SQLite (blocks) and on
PostgreSQL (a row per entry), and must read the same on both."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest

from dockyard.gateway.accesslog import AccessEntry, field_values
from dockyard.store import log_rows
from dockyard.store.log_times import log_time
from dockyard.store.logs import STEP_ENTRIES, LogStore
from dockyard.store.metadata import SqlMetadataStore
from tests.unit.test_log_store import D1, D2, metadata, messages, quiet_store  # noqa: F401 (metadata: the fixture)


def access(n: int, deployment_id: str = D1, at: datetime | None = None) -> AccessEntry:
    return AccessEntry(time=log_time(at), request_id=f"req-{n}", deployment_id=deployment_id, caller=None, method="POST",
                       path=f"/{deployment_id}/predict", status=200 + n % 3, bytes_in=n, bytes_out=2 * n, latency_ms=n / 8,
                       upstream_ms=n / 16, instance_id=f"i-{n % 2}", attempts=1)  # fmt: skip


def is_sqlite(metadata: SqlMetadataStore) -> bool:
    return metadata.engine.dialect.name == "sqlite"


def row_count(metadata: SqlMetadataStore) -> int:
    with metadata.engine.connect() as conn:
        return conn.exec_driver_sql("SELECT count(*) FROM log_entries").scalar() or 0


def test_access_entries_are_stored_a_block_per_deployment_and_step_and_read_one_by_one(metadata: SqlMetadataStore) -> None:
    logs = quiet_store(metadata)
    made = [access(n, D1 if n % 4 else D2) for n in range(250)]
    for entry in made:
        logs.add_access(entry)
    assert logs.flush() == 250
    assert logs.written == 250
    for d in (D1, D2):
        read = logs.read(d, "access", limit=1000).entries
        assert [e.fields for e in read] == [m.as_dict() for m in made if m.deployment_id == d]
        assert [e.seq for e in read] == sorted({e.seq for e in read})  # each its own, in order
    seqs = [e.seq for d in (D1, D2) for e in logs.read(d, limit=1000).entries]
    assert len(set(seqs)) == 250
    # Three steps of STEP_ENTRIES, each with entries of both deployments: six rows on SQLite.
    assert row_count(metadata) == (6 if is_sqlite(metadata) else 250)
    assert STEP_ENTRIES == 100


def test_a_cursor_pages_through_blocks_and_single_rows_missing_and_repeating_nothing(metadata: SqlMetadataStore) -> None:
    logs = quiet_store(metadata)
    expected = []
    for n in range(230):
        logs.add_access(access(n))
        expected.append(f"POST /{D1}/predict {200 + n % 3}")
        if n % 50 == 0:
            logs.add(D1, "predict", f"line {n}")
    logs.flush()
    predict_lines = [f"line {n}" for n in range(0, 230, 50)]
    for category, wanted in (("access", expected), ("predict", predict_lines), (None, None)):
        seen, seqs, cursor = [], [], None
        for _ in range(100):  # 40 pages at most; more would be a cursor going round in circles
            page = logs.read(D1, category, after_seq=cursor, limit=7)
            seen += messages(page)
            seqs += [e.seq for e in page.entries]
            if not page.entries:
                break
            assert len(page.entries) <= 7
            cursor = page.cursor
        else:
            raise AssertionError(f"the cursor never reached the end: {len(seen)} entries read")
        assert seqs == sorted(set(seqs))
        if wanted is not None:
            assert seen == wanted
        else:
            assert sorted(seen) == sorted(expected + predict_lines)
    # New entries after the last cursor: only they come next.
    logs.add_access(access(999))
    logs.flush()
    assert [e.fields["request_id"] for e in logs.read(D1, after_seq=cursor).entries] == ["req-999"]


def test_tail_and_since_pick_entries_inside_a_block(metadata: SqlMetadataStore) -> None:
    """One flush, one block of old and new entries: its row's time is its newest entry's, and
    the entries themselves are filtered by their own times."""
    logs = quiet_store(metadata)
    now = datetime.now(timezone.utc)
    for n in range(10):
        logs.add_access(access(n, at=now - timedelta(hours=2)))
    for n in range(10, 20):
        logs.add_access(access(n, at=now))
    logs.flush()
    assert row_count(metadata) == (1 if is_sqlite(metadata) else 20)

    def ids(page: object) -> list[str]:
        return [e.fields["request_id"] for e in page.entries]  # type: ignore[attr-defined]

    assert ids(logs.read(D1, tail=3)) == ["req-17", "req-18", "req-19"]
    assert ids(logs.read(D1, tail=0)) == []
    assert ids(logs.read(D1, since=now - timedelta(hours=1), limit=1000)) == [f"req-{n}" for n in range(10, 20)]
    assert ids(logs.read(D1, since=now - timedelta(hours=1), limit=4)) == [f"req-{n}" for n in range(10, 14)]
    first_page = logs.read(D1, limit=5)
    assert ids(logs.read(D1, after_seq=first_page.cursor, tail=2)) == ["req-18", "req-19"]


def test_retention_by_count_keeps_the_newest_entries_and_counts_entries_not_rows(metadata: SqlMetadataStore) -> None:
    logs = quiet_store(metadata, max_entries_per_deployment=150)
    for n in range(250):
        logs.add_access(access(n))
    for n in range(3):
        logs.add(D1, "predict", f"p{n}")
    logs.flush()
    # Blocks of 100, 100 and 50: the newest two hold exactly 150 entries, the first goes whole.
    assert logs.enforce_retention() == 100
    kept = logs.read(D1, "access", limit=1000).entries
    assert [e.fields["request_id"] for e in kept] == [f"req-{n}" for n in range(100, 250)]
    assert messages(logs.read(D1, "predict")) == ["p0", "p1", "p2"]
    assert logs.enforce_retention() == 0


def test_retention_by_age_deletes_a_block_once_all_its_entries_are_old(metadata: SqlMetadataStore) -> None:
    logs = quiet_store(metadata, retention_hours=1)
    now = datetime.now(timezone.utc)
    for n in range(5):
        logs.add_access(access(n, at=now - timedelta(hours=3)))
    logs.flush()
    for n in range(5, 8):
        logs.add_access(access(n, at=now - timedelta(hours=3)))
    logs.add_access(access(8, at=now))
    logs.flush()
    # SQLite: the all-old block goes; the block holding a recent entry stays whole.
    assert logs.enforce_retention(now) == (5 if is_sqlite(metadata) else 8)
    left = [e.fields["request_id"] for e in logs.read(D1, limit=1000).entries]
    assert left == (["req-5", "req-6", "req-7", "req-8"] if is_sqlite(metadata) else ["req-8"])


def test_seqs_go_on_after_retention_deleted_every_block(metadata: SqlMetadataStore) -> None:
    logs = quiet_store(metadata, retention_hours=1)
    old = datetime.now(timezone.utc) - timedelta(hours=5)
    for n in range(30):
        logs.add_access(access(n, at=old))
    logs.flush()
    cursor = logs.read(D1).cursor
    assert logs.enforce_retention() == 30
    assert logs.read(D1).entries == []
    logs.add(D1, "predict", "a line")
    logs.add_access(access(100))
    logs.flush()
    page = logs.read(D1, after_seq=cursor)
    assert sorted(messages(page)) == sorted(["a line", f"POST /{D1}/predict 201"])
    assert min(e.seq for e in page.entries) > cursor


def test_a_database_of_the_previous_schema_is_upgraded_and_its_entries_still_read(metadata: SqlMetadataStore) -> None:
    with metadata.writer.begin() as conn:  # as version 1 left it
        conn.exec_driver_sql("ALTER TABLE log_entries DROP COLUMN entries")
        conn.exec_driver_sql("UPDATE schema_info SET version = 1")
        conn.exec_driver_sql("INSERT INTO log_entries (deployment_id, category, time, message, fields) "
                             f"VALUES ('{D1}', 'access', '{log_time()}', 'GET /old 200', '{{\"status\": 200}}')")  # fmt: skip
    store = SqlMetadataStore(metadata.url)
    try:
        with store.engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT version FROM schema_info").scalar() == 2
        logs = LogStore(store.engine, store.writer, flush_interval_s=3600)
        logs.add_access(access(1))
        logs.flush()
        read = logs.read(D1).entries
        assert [(e.message, e.fields.get("status")) for e in read] == [("GET /old 200", 200), (f"POST /{D1}/predict 201", 201)]
        logs.close()
    finally:
        store.close()
    SqlMetadataStore(metadata.url).close()  # opened again: nothing left to upgrade


def test_a_workers_blocks_are_stored_as_they_came_and_read_back_entry_by_entry(metadata: SqlMetadataStore) -> None:
    logs = quiet_store(metadata)
    made = [access(n, D1 if n % 3 else D2) for n in range(300)]
    unknown = [access(n, "ocid1.datasciencemodeldeployment.oc1.local.nosuchthing") for n in range(7)]
    for block in log_rows.access_blocks([field_values(e) for e in made + unknown]):
        logs.add_access_block(block)
    logs.add(D1, "predict", "a line")
    assert logs.flush() == 308
    assert (logs.written, logs.unknown) == (301, 7)
    for d in (D1, D2):
        read = logs.read(d, "access", limit=1000).entries
        assert [e.fields for e in read] == [m.as_dict() for m in made if m.deployment_id == d]
        assert [e.message for e in read] == [f"POST /{d}/predict {200 + int(e.fields['request_id'][4:]) % 3}" for e in read]
    # SQLite: D1's 200 entries in 2 rows, D2's 100 in 1, the predict line in 1.
    assert row_count(metadata) == (4 if is_sqlite(metadata) else 301)


def test_entries_in_queued_blocks_count_towards_the_queue_bound(metadata: SqlMetadataStore) -> None:
    logs = quiet_store(metadata, queue_max=250)
    [first, second, third] = log_rows.access_blocks([field_values(access(n)) for n in range(300)])
    logs.add_access_block(first)
    logs.add_access_block(second)
    assert not logs.full
    logs.add_access_block(third)  # 100 more than the bound allows: the whole block goes
    assert logs.dropped == (100 if is_sqlite(metadata) else 50)
    assert logs.flush() == (200 if is_sqlite(metadata) else 250)
    assert not logs.full
    assert logs._in_blocks == 0


def test_block_json_reads_back_as_the_values_were_with_or_without_orjson(monkeypatch: pytest.MonkeyPatch) -> None:
    """orjson writes most blocks; what it refuses (an integer beyond 64 bits), and everything
    where it is not installed, the standard library writes: json.loads reads back the same."""
    plain = [field_values(access(n)) for n in range(5)]
    huge = plain + [field_values(AccessEntry(time=log_time(), request_id="r\"é\u2028", deployment_id=D1, caller=None, method="POST",
                                             path="/p", status=200, bytes_in=10**20, bytes_out=0, latency_ms=0.1,
                                             upstream_ms=None))]  # fmt: skip
    for values in (plain, huge):
        assert json.loads(log_rows.block_json(values)) == [list(v) for v in values]
    monkeypatch.setattr(log_rows, "_orjson_dumps", None)
    for values in (plain, huge):
        assert json.loads(log_rows.block_json(values)) == [list(v) for v in values]


def test_a_batch_the_database_refuses_counts_every_entry_of_its_blocks_as_dropped(
    metadata: SqlMetadataStore, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from dockyard.store import logs as log_store_module

    def refused(*_: object) -> None:
        raise OSError("disk full")

    logs = quiet_store(metadata)
    for block in log_rows.access_blocks([field_values(access(n)) for n in range(150)]):
        logs.add_access_block(block)
    monkeypatch.setattr(log_store_module, "insert_blocks", refused)
    monkeypatch.setattr(log_store_module, "insert_rows", refused)
    assert logs.flush() == 150
    assert (logs.dropped, logs.written) == (150, 0)
    assert "could not store 150 log entries" in caplog.text

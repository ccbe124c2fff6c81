"""The durable log store: cursors that neither miss nor repeat, batching off the request path,
bounded memory under overload, retention by age and by count, positions stored with their lines."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from dockyard.api.logs import parse_since
from dockyard.errors import InvalidParameter
from dockyard.gateway.accesslog import AccessEntry
from dockyard.store import logs as log_store_module
from dockyard.store.log_times import log_time, parse_log_time
from dockyard.store.logs import STEP_ENTRIES, LogStore
from dockyard.store.metadata import Record, SqlMetadataStore
from tests.support.postgres import fresh_database

D1 = "ocid1.datasciencemodeldeployment.oc1.local.aaaaone"
D2 = "ocid1.datasciencemodeldeployment.oc1.local.aaaatwo"


def deployment(deployment_id: str, **body: object) -> Record:
    return Record(id=deployment_id, kind="modeldeployment",
                  body={"compartmentId": "c", "lifecycleState": "ACTIVE", "timeCreated": log_time(), **body})


@pytest.fixture(params=["sqlite", "postgresql"])
def metadata(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[SqlMetadataStore]:
    """The store on SQLite (the embedded default) and on PostgreSQL (DOCKYARD_DATABASE_URL),
    whose entries are inserted through SQLAlchemy rather than the SQLite fast path."""
    with contextlib.ExitStack() as stack:
        url = f"sqlite:///{tmp_path / 'dockyard.db'}" if request.param == "sqlite" else stack.enter_context(fresh_database())
        store = SqlMetadataStore(url)
        stack.callback(store.close)
        stack.callback(lambda: [_opened.pop().close() for _ in range(len(_opened))])
        store.insert(deployment(D1))
        store.insert(deployment(D2))
        yield store


_opened: list[LogStore] = []  # closed by the `metadata` fixture: no flusher outlives its database


def quiet_store(metadata: SqlMetadataStore, **options: object) -> LogStore:
    """A store whose flusher never runs on its own: the test decides when to flush."""
    logs = LogStore(metadata.engine, metadata.writer, flush_interval_s=3600, **options)  # type: ignore[arg-type]
    _opened.append(logs)
    return logs


def messages(page: object) -> list[str]:
    return [e.message for e in page.entries]  # type: ignore[attr-defined]


def test_a_cursor_pages_through_everything_once_and_then_sees_only_new_entries(metadata: SqlMetadataStore) -> None:
    logs = quiet_store(metadata)
    for n in range(250):
        logs.add(D1, "access", f"a{n}")
        logs.add(D2, "access", f"other{n}")
    logs.flush()
    seen: list[str] = []
    cursor = None
    while True:
        page = logs.read(D1, "access", after_seq=cursor, limit=100)
        seen += messages(page)
        if not page.entries:
            break
        cursor = page.cursor
    assert seen == [f"a{n}" for n in range(250)]
    assert logs.read(D1, after_seq=cursor).entries == []
    logs.add(D1, "predict", "new line", instance_id="i-1", stream="stdout")
    logs.flush()
    page = logs.read(D1, after_seq=cursor)
    assert [(e.message, e.category, e.instance_id, e.stream) for e in page.entries] == [("new line", "predict", "i-1", "stdout")]
    assert page.cursor > cursor


def test_categories_filter_and_a_bad_category_names_the_accepted_ones(metadata: SqlMetadataStore) -> None:
    logs = quiet_store(metadata)
    logs.add(D1, "access", "GET /x 200")
    logs.add(D1, "predict", "hello", instance_id="i-1")
    logs.flush()
    assert messages(logs.read(D1, "predict")) == ["hello"]
    assert messages(logs.read(D1, "access")) == ["GET /x 200"]
    assert messages(logs.read(D1)) == ["GET /x 200", "hello"]
    with pytest.raises(InvalidParameter, match="access, predict"):
        logs.read(D1, "stdout")


def test_tail_and_since_select_the_newest_entries(metadata: SqlMetadataStore) -> None:
    logs = quiet_store(metadata)
    old = datetime.now(timezone.utc) - timedelta(hours=2)
    for n in range(5):
        logs.add(D1, "predict", f"old{n}", time_=old)
    for n in range(5):
        logs.add(D1, "predict", f"new{n}")
    logs.flush()
    assert messages(logs.read(D1, tail=3)) == ["new2", "new3", "new4"]
    assert messages(logs.read(D1, since=datetime.now(timezone.utc) - timedelta(hours=1))) == [f"new{n}" for n in range(5)]


def test_the_flusher_writes_in_batches_without_being_asked(metadata: SqlMetadataStore) -> None:
    logs = LogStore(metadata.engine, metadata.writer, flush_interval_s=0.2, batch_max=500)
    started = time.perf_counter()
    for n in range(5000):
        assert logs.add(D1, "access", f"r{n}")
    enqueue_s = time.perf_counter() - started
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and logs.written < 5000:
        time.sleep(0.05)
    assert logs.written == 5000
    assert len(logs.read(D1, tail=1000).entries) == 1000
    # 5000 entries in a handful of transactions, not one each.
    assert 1 <= logs.batches <= 50, logs.batches
    # Queueing is only an append: far below a millisecond per entry even on a loaded machine.
    assert enqueue_s / 5000 < 0.001, enqueue_s
    logs.close()


def test_a_full_queue_drops_new_entries_and_counts_them(metadata: SqlMetadataStore, caplog: pytest.LogCaptureFixture) -> None:
    logs = quiet_store(metadata, queue_max=10, batch_max=1000)
    accepted = [logs.add(D1, "access", f"r{n}") for n in range(15)]
    assert accepted == [True] * 10 + [False] * 5
    assert logs.dropped == 5
    assert "log queue full" in caplog.text
    logs.flush()
    assert messages(logs.read(D1)) == [f"r{n}" for n in range(10)]
    assert logs.add(D1, "access", "after the flush")  # room again


def test_retention_deletes_by_age(metadata: SqlMetadataStore) -> None:
    logs = quiet_store(metadata, retention_hours=1)
    now = datetime.now(timezone.utc)
    logs.add(D1, "access", "too old", time_=now - timedelta(hours=3))
    logs.add(D1, "access", "recent", time_=now - timedelta(minutes=5))
    logs.flush()
    assert logs.enforce_retention(now) == 1
    assert messages(logs.read(D1)) == ["recent"]


def test_retention_keeps_the_newest_entries_per_deployment_and_category(metadata: SqlMetadataStore) -> None:
    logs = quiet_store(metadata, max_entries_per_deployment=5)
    for n in range(12):
        logs.add(D1, "access", f"a{n}")
    for n in range(3):
        logs.add(D1, "predict", f"p{n}")
    for n in range(7):
        logs.add(D2, "access", f"b{n}")
    logs.flush()
    assert logs.enforce_retention() == 7 + 2
    assert messages(logs.read(D1, "access")) == [f"a{n}" for n in range(7, 12)]
    assert messages(logs.read(D1, "predict")) == ["p0", "p1", "p2"]
    assert messages(logs.read(D2)) == [f"b{n}" for n in range(2, 7)]


def test_seq_never_goes_back_even_after_retention_deleted_everything(metadata: SqlMetadataStore) -> None:
    logs = quiet_store(metadata, retention_hours=1)
    logs.add(D1, "access", "first", time_=datetime.now(timezone.utc) - timedelta(hours=5))
    logs.flush()
    cursor = logs.read(D1).cursor
    logs.enforce_retention()
    assert logs.read(D1).entries == []
    logs.add(D1, "access", "second")
    logs.flush()
    # A follower holding the old cursor still gets the new entry.
    assert messages(logs.read(D1, after_seq=cursor)) == ["second"]


def test_an_instance_position_is_stored_with_its_lines(metadata: SqlMetadataStore) -> None:
    logs = quiet_store(metadata)
    logs.add(D1, "predict", "line 1", instance_id="proc-1", stream="combined", position="7")
    logs.add(D1, "predict", "line 2", instance_id="proc-1", stream="combined", position="14")
    assert logs.position("proc-1") is None  # queued, not written: a restart would read them again
    logs.flush()
    assert logs.position("proc-1") == "14"
    logs.add(D1, "predict", "line 3", instance_id="proc-1", stream="combined", position="21")
    logs.flush()
    assert logs.position("proc-1") == "21"
    assert logs.position("proc-2") is None


def test_log_ids_come_from_the_deployments_category_log_details(tmp_path: Path) -> None:
    metadata = SqlMetadataStore(f"sqlite:///{tmp_path / 'dockyard.db'}")
    metadata.insert(deployment(D1, categoryLogDetails={
        "access": {"logId": "la", "logGroupId": "lg"}, "predict": {"logId": "lp", "logGroupId": "lg"}}))
    metadata.insert(deployment(D2, categoryLogDetails={}))
    logs = quiet_store(metadata)
    logs.add(D1, "access", "GET")
    logs.add(D1, "predict", "out", instance_id="i")
    logs.add(D2, "access", "no log named")
    logs.flush()
    assert [e.log_id for e in logs.read(D1).entries] == ["la", "lp"]
    assert [e.log_id for e in logs.read(D2).entries] == [None]


def test_access_entries_of_ids_that_name_no_deployment_are_not_stored(tmp_path: Path) -> None:
    metadata = SqlMetadataStore(f"sqlite:///{tmp_path / 'dockyard.db'}")
    metadata.insert(deployment(D1))
    logs = quiet_store(metadata)
    for n in range(50):
        logs.add(f"ocid1.datasciencemodeldeployment.oc1.local.aaaaprobe{n}", "access", "POST /x/predict 404")
    logs.add(D1, "access", "POST /d/predict 200")
    logs.flush()
    assert (logs.written, logs.unknown) == (1, 50)
    assert messages(logs.read(D1)) == ["POST /d/predict 200"]


def test_the_access_sink_stores_every_field_of_the_gateway_entry(metadata: SqlMetadataStore) -> None:
    logs = quiet_store(metadata)
    entry = AccessEntry(time="2026-11-25T10:00:00.5Z", request_id="req-1", deployment_id=D1, caller="t/u/fp", method="POST",
                        path=f"/{D1}/predict", status=200, bytes_in=12, bytes_out=34, latency_ms=5.5, upstream_ms=4.25,
                        instance_id="proc-9", attempts=1)  # fmt: skip
    logs.add_access(entry)
    logs.add_access(AccessEntry(time=log_time(), request_id="req-2", deployment_id=None, caller=None, method="GET",
                                path="/nothing", status=404, bytes_in=0, bytes_out=0, latency_ms=0.1, upstream_ms=None))
    logs.flush()
    [stored] = logs.read(D1).entries
    assert stored.time == "2026-11-25T10:00:00.500000Z"
    assert (stored.category, stored.instance_id, stored.message) == ("access", "proc-9", f"POST /{D1}/predict 200")
    assert stored.fields == entry.as_dict()
    wire = stored.wire()["fields"]
    assert (wire["bytesIn"], wire["upstreamMs"], wire["requestId"]) == (12, 4.25, "req-1")  # the wire format's spelling


def test_since_accepts_a_cursor_a_time_or_a_duration_and_names_them_otherwise() -> None:
    now = datetime(2026, 11, 25, 12, 0, tzinfo=timezone.utc)
    assert parse_since("42") == (42, None)
    assert parse_since("10m", now) == (None, now - timedelta(minutes=10))
    assert parse_since("2026-11-25T11:00:00.123456789Z") == (None, datetime(2026, 11, 25, 11, 0, 0, 123456, tzinfo=timezone.utc))
    assert parse_since("2026-11-25T12:00:00+01:00")[1] == datetime(2026, 11, 25, 11, 0, tzinfo=timezone.utc)
    with pytest.raises(InvalidParameter, match=r"RFC 3339 .*duration"):
        parse_since("yesterday")
    with pytest.raises(ValueError):
        parse_log_time("2026-11-25T12:00:00")  # no zone: ambiguous


def test_retention_forgets_positions_of_gone_instances_only(metadata: SqlMetadataStore) -> None:
    from dockyard.store.metadata import InstanceRecord

    logs = quiet_store(metadata, retention_hours=1)
    old = datetime.now(timezone.utc) - timedelta(hours=5)
    logs.add(D1, "predict", "quiet but running", time_=old, instance_id="proc-running", position="10")
    logs.add(D1, "predict", "stopped long ago", time_=old, instance_id="proc-gone", position="20")
    logs.flush()
    metadata.replace_instances(D1, [InstanceRecord(instance_id="proc-running", deployment_id=D1, spec_hash="h", runtime="process",
                                                   state="RUNNING", health="HEALTHY", host="127.0.0.1", server_port=1, health_port=1)])  # fmt: skip
    logs.enforce_retention(datetime.now(timezone.utc) + timedelta(hours=2))  # both positions are now hours old
    assert (logs.position("proc-running"), logs.position("proc-gone")) == ("10", None)


def test_a_flush_ends_even_while_entries_keep_coming(metadata: SqlMetadataStore) -> None:
    """Under sustained load a flush writes what was queued when it began, and returns (so the
    flusher gets to retention, and a shutdown flush finishes)."""
    logs = quiet_store(metadata, batch_max=10)
    for n in range(25):
        logs.add(D1, "access", f"r{n}")
    original = logs._write

    def write_and_receive_more(batch: list, entries: int) -> None:  # type: ignore[type-arg]
        original(batch, entries)
        for n in range(10):
            logs.add(D1, "access", "arrived during the flush")

    logs._write = write_and_receive_more  # type: ignore[method-assign]
    assert logs.flush() == 25
    assert len(logs._queue) == 30


def test_a_large_batch_is_one_transaction_written_in_steps_that_give_way(
    metadata: SqlMetadataStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Making and inserting thousands of rows in one go held a core (and the GIL) for tens of
    milliseconds while requests waited: the flusher gives way every STEP_ENTRIES entries, and
    the batch is still one transaction, stored in queue order."""
    logs = quiet_store(metadata)
    yields = []
    monkeypatch.setattr(log_store_module, "_give_way", lambda: yields.append(1))
    count = 2 * STEP_ENTRIES + STEP_ENTRIES // 2
    for n in range(count):
        logs.add(D1, "access", f"r{n}")
    assert logs.flush() == count
    assert (logs.written, logs.batches) == (count, 1)
    assert len(yields) >= 2 * (count // STEP_ENTRIES)  # between the steps of making rows, and of inserting them
    assert messages(logs.read(D1, limit=1000)) == [f"r{n}" for n in range(count)]


def stored_rows(metadata: SqlMetadataStore) -> list[tuple]:  # type: ignore[type-arg]
    """Every stored column of every entry, as the database holds it (fields as its JSON text)."""
    with metadata.engine.connect() as conn:
        return [tuple(row) for row in conn.exec_driver_sql(
            "SELECT seq, deployment_id, category, time, instance_id, stream, log_id, message, fields FROM log_entries ORDER BY seq")]


def mixed_entries(logs: LogStore, count: int) -> None:
    for n in range(count):
        if n % 3:
            logs.add_access(AccessEntry(time=f"2026-11-25T10:{n // 60:02d}:{n % 60:02d}.{n:06d}Z", request_id=f"req-{n}", deployment_id=D1 if n % 2 else D2, caller=None,
                                        method="POST", path=f"/{D1}/predict", status=200 + n % 5, bytes_in=n, bytes_out=2 * n,
                                        latency_ms=n / 7, upstream_ms=None if n % 4 else 0.5, instance_id="proc-1",
                                        attempts=1, error="naïve \"quoted\" ✓" if n % 5 == 0 else None))  # fmt: skip
        else:
            logs.add(D1, "predict", f"line {n}", time_="2026-11-25T10:00:00+01:00", instance_id="proc-2", stream="stdout",
                     fields=None if n % 2 else {"n": n, "nested": [1.5, None, "é"]})  # fmt: skip


def test_entries_are_stored_in_order_across_many_row_inserts_and_their_remainder(metadata: SqlMetadataStore) -> None:
    """250 entries in one batch: two statements of 100 rows and 50 single rows, in queue order."""
    logs = quiet_store(metadata)
    for n in range(250):
        logs.add(D1, "access", f"r{n}")
    assert logs.flush() == 250
    assert (logs.written, logs.batches) == (250, 1)
    rows = stored_rows(metadata)
    assert [row[7] for row in rows] == [f"r{n}" for n in range(250)]
    assert [row[0] for row in rows] == sorted(row[0] for row in rows)
    assert messages(logs.read(D1, limit=1000)) == [f"r{n}" for n in range(250)]


def test_fields_are_stored_as_the_json_text_sqlalchemy_stored(tmp_path: Path) -> None:
    """On SQLite, the driver-level insert stores byte for byte what an insert through
    SQLAlchemy's JSON type stores (which other databases still use); access entries, stored in
    blocks there and a row each elsewhere, read back the same."""
    metadata = SqlMetadataStore(f"sqlite:///{tmp_path / 'dockyard.db'}")
    metadata.insert(deployment(D1))
    metadata.insert(deployment(D2))
    fast = quiet_store(metadata, batch_max=120)
    mixed_entries(fast, 333)
    fast.flush()
    other = SqlMetadataStore(f"sqlite:///{tmp_path / 'other.db'}")
    other.insert(deployment(D1))
    other.insert(deployment(D2))
    try:
        generic = quiet_store(other, batch_max=120)
        generic._insert_sql = None  # as on a database whose JSON columns are bound by the driver
        mixed_entries(generic, 333)
        generic.flush()

        def predict_rows(store: SqlMetadataStore) -> list[tuple]:  # type: ignore[type-arg]
            return [row[1:] for row in stored_rows(store) if row[2] == "predict"]

        def access_read(logs: LogStore) -> list[tuple]:  # type: ignore[type-arg]
            return [(e.time, e.deployment_id, e.instance_id, e.stream, e.log_id, e.message, e.fields)
                    for d in (D1, D2) for e in logs.read(d, "access", limit=1000).entries]  # fmt: skip

        assert predict_rows(metadata) == predict_rows(other)
        assert len(access_read(fast)) == 222
        assert access_read(fast) == access_read(generic)
    finally:
        other.close()
    rows = stored_rows(metadata)
    assert {row[3] for row in rows if row[2] == "predict"} == {"2026-11-25T09:00:00.000000Z"}
    assert {row[8] for row in rows if row[2] == "predict" and row[7] == "line 3"} == {"null"}
    [first] = [e for e in fast.read(D1, "predict", limit=1000).entries if e.message == "line 0"]
    assert first.fields == {"n": 0, "nested": [1.5, None, "é"]}
    metadata.close()


def test_fields_that_cannot_be_stored_lose_their_batch_only(metadata: SqlMetadataStore, caplog: pytest.LogCaptureFixture) -> None:
    logs = quiet_store(metadata, batch_max=2)
    logs.add(D1, "predict", "fine")
    logs.add(D1, "predict", "not json", fields={"when": datetime.now(timezone.utc)})
    logs.add(D1, "predict", "next batch")
    assert logs.flush() == 3
    assert (logs.dropped, logs.written) == (2, 1)
    assert messages(logs.read(D1)) == ["next batch"]
    assert "could not store 2 log entries" in caplog.text


def test_an_access_entry_reads_back_as_the_gateway_made_it(metadata: SqlMetadataStore) -> None:
    """Every field of every kind of value (quotes, non-ASCII, control characters, None, large
    and fractional numbers) comes back as the entry held it, with its message."""
    logs = quiet_store(metadata)
    made = []
    for n in range(60):
        entry = AccessEntry(
            time=log_time(), request_id=f"req-{n}\"é", deployment_id=D1, caller=None if n % 2 else "t/u/fp",
            method=("POST", "GET", "PUT")[n % 3], path=f"/{D1}/predict/ü{n}\\", status=(200, 499, 504)[n % 3], bytes_in=n * 1000,
            bytes_out=0 if n % 4 else 10**12, latency_ms=(0, 0.001, 12.5, 60000.25, n / 7)[n % 5],
            upstream_ms=None if n % 3 else n / 9, instance_id=None if n % 5 == 0 else f"i-{n}", attempts=n % 3,
            error=None if n % 4 else "the model took too long to answer:\n\t✓",
        )  # fmt: skip
        made.append(entry)
        logs.add_access(entry)
    logs.flush()
    read = logs.read(D1, limit=1000).entries
    assert [e.fields for e in read] == [entry.as_dict() for entry in made]
    assert [(e.message, e.time, e.instance_id, e.category) for e in read] == [
        (f"{m.method} {m.path} {m.status}", m.time, m.instance_id, "access") for m in made]


def test_json_text_is_json_dumps() -> None:
    import json

    from dockyard.store.json_text import json_text

    for value in (None, {}, {"a": 1, "b": [1.25, None, True, "x\ny"], "é": "✓ \"q\""}, {"f": float("nan"), "i": -(10**20)},
                  AccessEntry(time=log_time(), request_id="r", deployment_id=D1, caller=None, method="GET", path="/p",
                              status=200, bytes_in=0, bytes_out=0, latency_ms=0.1, upstream_ms=None).as_dict()):  # fmt: skip
        assert json_text(value) == json.dumps(value)
    with pytest.raises(TypeError):
        json_text({"set": {1}})

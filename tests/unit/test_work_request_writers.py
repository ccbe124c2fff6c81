"""Writers of one work request take turns: lines written at once by several threads (the
reconciler reports each instance's start from its own thread) come back oldest first, and the
percentage a client polls never moves back. Run on SQLite and on PostgreSQL, where a plain read
in a transaction does not hold back another writer."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from dockyard.domain.states import Operation
from dockyard.service.work_requests import WorkRequests
from dockyard.settings import Settings
from dockyard.store.metadata import SqlMetadataStore
from tests.support.postgres import fresh_database

THREADS = 4
LINES_EACH = 40


@pytest.fixture(params=["sqlite", "postgresql"])
def work_requests(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[WorkRequests]:
    with contextlib.ExitStack() as stack:
        url = f"sqlite:///{tmp_path / 'dockyard.db'}" if request.param == "sqlite" else stack.enter_context(fresh_database())
        store = SqlMetadataStore(url)
        stack.callback(store.close)
        yield WorkRequests(store, Settings())


def test_lines_written_at_once_come_back_oldest_first_and_the_percentage_only_rises(work_requests: WorkRequests) -> None:
    with work_requests.store.transaction() as tx:
        wr = work_requests.open(Operation.CREATE, "modeldeployment", "ocid1.x", "ocid1.c", "Create accepted", tx)
    start = threading.Barrier(THREADS)
    failures: list[BaseException] = []

    def write(thread: int) -> None:
        try:
            start.wait()
            for line in range(LINES_EACH):
                # Percentages interleave across threads, so a write from a stale read would lower it.
                work_requests.log(wr.id, f"thread {thread} line {line}", percent=line * THREADS + thread)
        except BaseException as exc:  # noqa: BLE001 (reported by the test thread)
            failures.append(exc)

    threads = [threading.Thread(target=write, args=(n,)) for n in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []

    lines = work_requests.store.list_entries(wr.id, "log", 0, 1000).items
    assert len(lines) == 1 + THREADS * LINES_EACH
    stamps = [line.timestamp for line in lines]
    out_of_order = [(a.timestamp, a.message, b.timestamp, b.message) for a, b in zip(lines, lines[1:]) if a.timestamp > b.timestamp]
    assert out_of_order == [], f"{len(out_of_order)} lines are listed before an older one, e.g. {out_of_order[:3]}"
    assert stamps == sorted(stamps)
    for thread in range(THREADS):
        own = [line.message for line in lines if line.message.startswith(f"thread {thread} ")]
        assert own == [f"thread {thread} line {n}" for n in range(LINES_EACH)]
    highest = (LINES_EACH - 1) * THREADS + THREADS - 1
    assert work_requests.store.get_work_request(wr.id).percent_complete == min(highest, 99.0)

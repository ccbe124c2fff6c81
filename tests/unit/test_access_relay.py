"""Access entries sent by a gateway worker over a real pipe and read back by its supervisor's
reader (gateway/access_relay.py), here both ends in one process; the end-to-end path with real
worker processes is tests/integration/test_gateway_workers.py."""

from __future__ import annotations

import json
import marshal
import threading
import time
from multiprocessing import Pipe

import pytest

from dockyard.gateway import access_relay
from dockyard.gateway.access_relay import AccessRelay, RelayReader
from dockyard.gateway.accesslog import AccessEntry


def entry(n: int, deployment_id: str | None = "ocid1.datasciencemodeldeployment.oc1..d") -> AccessEntry:
    return AccessEntry(
        time=f"2026-11-26T03:00:00.{n:06d}Z", request_id=f"req-{n}", deployment_id=deployment_id, caller="key/1" if n % 2 else None,
        method="POST", path="/d/predict", status=200 if n % 3 else 504, bytes_in=n, bytes_out=2 * n, latency_ms=n / 7,
        upstream_ms=None if n % 5 == 0 else n / 9, instance_id=f"i-{n % 3}", attempts=n % 4,
        error=None if n % 3 else "the model took too long to answer: é",
    )  # fmt: skip


class Collected:
    def __init__(self) -> None:
        self.entries: list[AccessEntry] = []
        self.lock = threading.Lock()

    def __call__(self, block: tuple) -> None:  # type: ignore[type-arg]
        """A block (deployment id, count, newest time, the entries' field values as JSON)."""
        deployment_id, count, newest, text = block
        entries = [AccessEntry(*values) for values in json.loads(text)]
        assert len(entries) == count <= 100
        assert {e.deployment_id for e in entries} == {deployment_id}
        assert newest == max(e.time for e in entries)
        with self.lock:
            self.entries += entries

    def wait_for(self, count: int, timeout_s: float = 5.0) -> list[AccessEntry]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and len(self.entries) < count:
            time.sleep(0.01)
        return list(self.entries)


def test_entries_arrive_whole_and_in_order_from_the_sending_thread() -> None:
    collected = Collected()
    reader = RelayReader(collected, poll_s=0.05)
    relay = AccessRelay(reader.new_pipe(), flush_interval_s=0.05, batch_max=100)
    sent = [entry(n) for n in range(1, 1001)]
    for item in sent:
        relay.add_access(item)
    # Nobody flushes: the relay's own thread sends, in batches of at most 100.
    assert collected.wait_for(1000) == sent
    assert relay.sent == 1000 and relay.dropped == 0 and reader.received == 1000
    relay.close()
    reader.close(timeout_s=5)


def test_close_sends_what_is_queued_and_the_reader_reads_to_the_end() -> None:
    collected = Collected()
    reader = RelayReader(collected, poll_s=0.05)
    relay = AccessRelay(reader.new_pipe(), flush_interval_s=60)  # its thread would wait a minute
    for n in range(1, 51):
        relay.add_access(entry(n))
    relay.close()  # the worker's gateway closing: everything queued leaves now
    reader.close(timeout_s=5)  # returns once the pipe is read to its end
    assert [e.request_id for e in collected.entries] == [f"req-{n}" for n in range(1, 51)]


def test_entries_of_no_deployment_are_not_sent() -> None:
    collected = Collected()
    reader = RelayReader(collected, poll_s=0.05)
    relay = AccessRelay(reader.new_pipe(), flush_interval_s=60)
    relay.add_access(entry(1, deployment_id=None))
    relay.add_access(entry(2))
    relay.close()
    reader.close(timeout_s=5)
    assert [e.request_id for e in collected.entries] == ["req-2"]


def test_a_full_queue_drops_new_entries_and_counts_them() -> None:
    reader_end, writer_end = Pipe(duplex=False)
    relay = AccessRelay(writer_end, flush_interval_s=60, batch_max=10_000, queue_max=10)
    for n in range(1, 16):
        relay.add_access(entry(n))
    assert relay.dropped == 5
    relay.close()
    [(_, count, _, text)] = marshal.loads(reader_end.recv_bytes())
    assert [values[1] for values in json.loads(text)] == [f"req-{n}" for n in range(1, 11)]


def test_a_supervisor_that_is_gone_costs_the_entries_not_the_request() -> None:
    reader_end, writer_end = Pipe(duplex=False)
    reader_end.close()
    relay = AccessRelay(writer_end, flush_interval_s=60)
    for n in range(1, 4):
        relay.add_access(entry(n))  # never raises
    assert relay.flush() == 3
    assert relay.dropped == 3 and relay.sent == 0
    relay.add_access(entry(4))
    relay.close()
    assert relay.dropped == 4


def test_several_workers_pipes_and_one_opened_after_the_reader_started() -> None:
    collected = Collected()
    reader = RelayReader(collected, poll_s=0.05)
    first = AccessRelay(reader.new_pipe(), flush_interval_s=0.05)
    first.add_access(entry(1))
    assert [e.request_id for e in collected.wait_for(1)] == ["req-1"]
    second = AccessRelay(reader.new_pipe(), flush_interval_s=0.05)  # a replaced worker's new pipe
    second.add_access(entry(2))
    first.add_access(entry(3))
    assert sorted(e.request_id for e in collected.wait_for(3)) == ["req-1", "req-2", "req-3"]
    first.close()
    second.close()
    reader.close(timeout_s=5)
    assert not reader._thread.is_alive()


def test_an_idle_relay_is_woken_by_its_next_entry(monkeypatch: pytest.MonkeyPatch) -> None:
    """While its queue is empty the thread sleeps (here: would sleep a minute); the entry that
    ends the quiet wakes it, and leaves after one flush interval."""
    monkeypatch.setattr(access_relay, "IDLE_WAIT_S", 60.0)
    collected = Collected()
    reader = RelayReader(collected, poll_s=0.05)
    relay = AccessRelay(reader.new_pipe(), flush_interval_s=0.05)
    relay.add_access(entry(1))
    assert [e.request_id for e in collected.wait_for(1)] == ["req-1"]
    time.sleep(0.3)  # the thread is back waiting for an entry
    started = time.monotonic()
    relay.add_access(entry(2))
    assert [e.request_id for e in collected.wait_for(2, timeout_s=10)] == ["req-1", "req-2"]
    assert time.monotonic() - started < 5  # woken, not the minute's timeout
    relay.close()
    reader.close(timeout_s=5)


def test_a_batch_leaves_as_blocks_of_one_deployment_and_at_most_100_entries_in_order() -> None:
    reader_end, writer_end = Pipe(duplex=False)
    relay = AccessRelay(writer_end, flush_interval_s=60, batch_max=10_000)
    sent = [entry(n, deployment_id=f"d{n % 3}") for n in range(250)]
    for item in sent:
        relay.add_access(item)
    relay.flush()
    blocks = marshal.loads(reader_end.recv_bytes())
    # d0: 84 entries, d1 and d2: 83 each; all of a deployment in one block, in the order sent.
    assert [(d, count) for d, count, _, _ in blocks] == [("d0", 84), ("d1", 83), ("d2", 83)]
    for d, count, newest, text in blocks:
        mine = [e for e in sent if e.deployment_id == d]
        assert [AccessEntry(*values) for values in json.loads(text)] == mine
        assert newest == max(e.time for e in mine)
    more = [entry(n) for n in range(250, 500)]
    for item in more:
        relay.add_access(item)
    relay.flush()
    # The first of these entries wakes the relay's thread, which may send what is queued by then
    # before this flush does: the entries may come in more than one batch, never in blocks over 100.
    counts, received = [], []
    while sum(counts) < len(more):
        for _, count, _, text in marshal.loads(reader_end.recv_bytes()):
            counts.append(count)
            received += [AccessEntry(*values) for values in json.loads(text)]
    assert received == more and max(counts) == 100 and all(0 < count <= 100 for count in counts)
    relay.close()

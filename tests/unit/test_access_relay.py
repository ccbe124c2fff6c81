"""Access entries sent by a gateway worker over a real pipe and read back by its supervisor's
reader (gateway/access_relay.py), here both ends in one process; the end-to-end path with real
worker processes is tests/integration/test_gateway_workers.py."""

from __future__ import annotations

import asyncio
import json
import marshal
import threading
import time
from multiprocessing import Pipe
from typing import Any

import pytest
import uvloop

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


def entries_of(message: bytes) -> list[AccessEntry]:
    """The entries of one message a relay sent (its blocks' JSON), in order."""
    return [AccessEntry(*values) for _, _, _, text in marshal.loads(message) for values in json.loads(text)]


def test_entries_arrive_whole_and_in_order_sent_by_the_event_loop() -> None:
    collected = Collected()
    reader = RelayReader(collected, poll_s=0.05)
    relay = AccessRelay(reader.new_pipe(), flush_interval_s=0.05, batch_max=100)
    sent = [entry(n) for n in range(1, 1001)]

    async def serve() -> None:
        for item in sent:
            relay.add_access(item)
            if item.bytes_in % 250 == 0:
                await asyncio.sleep(0.06)  # requests come in bursts; the loop's timer sends between them
        deadline = time.monotonic() + 5
        while len(collected.entries) < len(sent) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)

    # Nobody flushes: the loop sends, in batches of at most 100.
    asyncio.run(serve())
    assert collected.entries == sent
    assert relay.sent == 1000 and relay.dropped == 0 and reader.received == 1000
    relay.close()
    reader.close(timeout_s=5)


@pytest.mark.parametrize("new_loop", [asyncio.new_event_loop, uvloop.new_event_loop], ids=["asyncio", "uvloop"])
def test_a_pipe_the_supervisor_does_not_read_keeps_the_entries_until_it_does(new_loop: Any) -> None:
    """The pipe fills (the supervisor is busy): what it cannot take waits in the worker, the loop
    goes on serving, and everything arrives, in order, once the supervisor reads again; then the
    loop stops watching the pipe. On both loops a worker may run (uvloop's remove_writer answers
    None where asyncio's answers a bool)."""
    reader_end, writer_end = Pipe(duplex=False)
    relay = AccessRelay(writer_end, flush_interval_s=0.01, batch_max=500)
    sent = [entry(n) for n in range(1, 20_001)]  # ~5 MB of JSON: several times the 1 MiB pipe
    received: list[AccessEntry] = []
    errors: list[dict[str, Any]] = []
    waiting: list[int] = []

    def supervisor() -> None:
        time.sleep(0.3)  # busy at first: the pipe fills
        while len(received) < len(sent):
            received.extend(entries_of(reader_end.recv_bytes()))

    async def serve() -> None:
        asyncio.get_running_loop().set_exception_handler(lambda loop, context: errors.append(context))
        for start in range(0, len(sent), 500):
            for item in sent[start:start + 500]:
                relay.add_access(item)
            await asyncio.sleep(0)  # the loop is never blocked by the full pipe
        await asyncio.sleep(0.05)
        waiting.append(len(sent) - relay.sent)
        deadline = time.monotonic() + 10
        while len(received) < len(sent) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)  # the loop writes the rest as the supervisor makes room
        await asyncio.sleep(0.05)

    reading = threading.Thread(target=supervisor, daemon=True)  # (a failed run must not hang the tests)
    reading.start()
    loop = new_loop()
    try:
        loop.run_until_complete(serve())
    finally:
        loop.close()
    reading.join(5)
    assert waiting[0] > 0  # some waited for the pipe
    assert received == sent and errors == []
    assert relay.sent == len(sent) and relay.dropped == 0 and not relay._watching
    relay.close()


def test_a_flush_from_another_thread_leaves_the_rest_to_the_loop() -> None:
    """The gateway's close runs `flush()` in a thread while the loop still runs: what the full
    pipe cannot take then is written by the loop once the supervisor reads."""
    reader_end, writer_end = Pipe(duplex=False)
    relay = AccessRelay(writer_end, flush_interval_s=60, batch_max=100_000)
    sent = [entry(n) for n in range(1, 12_001)]  # ~3 MB of JSON: more than the 1 MiB pipe
    received: list[AccessEntry] = []
    errors: list[dict[str, Any]] = []

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda loop, context: errors.append(context))
        for item in sent:
            relay.add_access(item)  # queued: the timer is a minute away
        assert await asyncio.to_thread(relay.flush) == len(sent)
        assert relay.sent < len(sent)  # the pipe took part of it
        while len(received) < len(sent):
            received.extend(entries_of(await asyncio.to_thread(reader_end.recv_bytes)))  # the supervisor reads; the loop writes the rest
        await asyncio.sleep(0.05)

    loop = uvloop.new_event_loop()
    try:
        loop.run_until_complete(asyncio.wait_for(serve(), 10))
    finally:
        loop.close()
    assert received == sent and errors == []
    assert relay.sent == len(sent) and not relay._watching
    relay.close()


def test_entries_waiting_for_the_pipe_count_against_the_queue_limit() -> None:
    reader_end, writer_end = Pipe(duplex=False)
    relay = AccessRelay(writer_end, flush_interval_s=60, batch_max=1_000, queue_max=8_000)
    for n in range(1, 20_001):
        relay.add_access(entry(n))  # full batches leave at once; the pipe takes ~4,000 entries
    assert 0 < relay.sent < 8_000
    assert relay.dropped == 20_000 - 8_000 - relay.sent  # at most 8,000 queued or waiting for the pipe
    reader_end.close()
    relay.close()
    assert relay.dropped == 20_000 - relay.sent


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
    first.flush()  # (no event loop here to send on its own)
    assert [e.request_id for e in collected.wait_for(1)] == ["req-1"]
    second = AccessRelay(reader.new_pipe(), flush_interval_s=0.05)  # a replaced worker's new pipe
    second.add_access(entry(2))
    first.add_access(entry(3))
    second.flush()
    first.flush()
    assert sorted(e.request_id for e in collected.wait_for(3)) == ["req-1", "req-2", "req-3"]
    first.close()
    second.close()
    reader.close(timeout_s=5)
    assert not reader._reading_thread.is_alive()


def test_an_entry_after_a_quiet_spell_leaves_within_the_flush_interval() -> None:
    """An idle relay has nothing scheduled (an idle worker is not woken); the entry that ends
    the quiet schedules the next flush."""
    collected = Collected()
    reader = RelayReader(collected, poll_s=0.05)
    relay = AccessRelay(reader.new_pipe(), flush_interval_s=0.05)

    async def serve() -> float:
        relay.add_access(entry(1))
        await asyncio.sleep(0.3)
        assert not asyncio.get_running_loop()._scheduled  # type: ignore[attr-defined]  # nothing due while idle
        started = time.monotonic()
        relay.add_access(entry(2))
        while len(collected.entries) < 2 and time.monotonic() - started < 5:
            await asyncio.sleep(0.005)
        return time.monotonic() - started

    took = asyncio.run(serve())
    assert [e.request_id for e in collected.entries] == ["req-1", "req-2"]
    assert took < 1
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
    # One deployment's 250 entries: blocks of 100, 100 and 50.
    message = reader_end.recv_bytes()
    assert [count for _, count, _, _ in marshal.loads(message)] == [100, 100, 50]
    assert entries_of(message) == more
    relay.close()

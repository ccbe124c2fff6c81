"""What durable access logs cost: queueing on the request path, and how fast the flusher writes.

    python benchmarks/log_store.py [--entries 200000] [--queue-max 100000]

Against a throw-away SQLite database set up as `dockyard serve` sets it up (WAL, synchronous
FULL, BEGIN IMMEDIATE writes), with one deployment's categoryLogDetails in the resources table.
Prints: the cost of `add_access` per entry on the calling thread (what a gateway request pays),
the CPU the flusher thread spends per entry written (what the gateway's cores lose to logging),
the sustained write rate of the flusher (entries/s, batches), how many entries a burst larger
than the queue dropped, and the time of one page read and of a retention pass. Then the path
of `--gateway-workers N` (gateway/access_relay.py), both ends in this process over a real pipe:
what a worker spends per entry (queueing, and its thread's batching and sending) and what the
supervisor spends (reading, and its flusher's writing).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path

from dockyard.gateway.access_relay import AccessRelay, RelayReader
from dockyard.gateway.accesslog import AccessEntry
from dockyard.store.log_times import log_time
from dockyard.store.logs import LogStore
from dockyard.store.metadata import Record, SqlMetadataStore

DEPLOYMENT = "ocid1.datasciencemodeldeployment.oc1.local.amaaaaaabenchmark"


def entry(n: int) -> AccessEntry:
    return AccessEntry(time=log_time(), request_id=f"req-{n}", deployment_id=DEPLOYMENT, caller="t/u/fp", method="POST",
                       path=f"/{DEPLOYMENT}/predict", status=200, bytes_in=120, bytes_out=48, latency_ms=1.25,
                       upstream_ms=0.9, instance_id="dc-0123456789ab", attempts=1)  # fmt: skip


def wait_written(logs: LogStore, target: int, timeout_s: float = 600) -> float:
    started = time.perf_counter()
    while logs.written + logs.dropped < target and time.perf_counter() - started < timeout_s:
        time.sleep(0.01)
    return time.perf_counter() - started


def add_paced(add: Callable[[AccessEntry], None], entries: list[AccessEntry], per_s: int = 5000) -> float:
    """Each entry to `add` at `per_s` (50 at a time, as requests of a busy gateway end); the
    seconds spent inside `add`."""
    spent = 0.0
    started = time.perf_counter()
    for n, item in enumerate(entries):
        t0 = time.perf_counter()
        add(item)
        spent += time.perf_counter() - t0
        if n % 50 == 49:
            time.sleep(max(0.0, started + (n + 1) / per_s - time.perf_counter()))
    return spent


class ThreadCpu:
    """The CPU time (`time.thread_time`) of the calling threads spent inside `obj.name`."""

    def __init__(self, obj: object, name: str) -> None:
        self.seconds = 0.0
        self._method = getattr(obj, name)
        setattr(obj, name, self.call)

    def call(self, *args: object) -> object:
        started = time.thread_time()
        try:
            return self._method(*args)
        finally:
            self.seconds += time.thread_time() - started


class FlusherCpu:
    """Counts the CPU time of the thread that writes batches (`time.thread_time`, so neither
    waiting for the disk nor other threads' work counts), around each `LogStore._write`."""

    def __init__(self, logs: LogStore) -> None:
        self.seconds = 0.0
        self._write = logs._write
        logs._write = self.write  # type: ignore[method-assign]

    def write(self, *batch_and_count: object) -> None:
        started = time.thread_time()
        try:
            self._write(*batch_and_count)
        finally:
            self.seconds += time.thread_time() - started

    def per_entry_us(self, logs: LogStore) -> float:
        return self.seconds / max(logs.written, 1) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=200_000)
    parser.add_argument("--queue-max", type=int, default=100_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        metadata = SqlMetadataStore(f"sqlite:///{Path(tmp) / 'dockyard.db'}")
        metadata.insert(Record(id=DEPLOYMENT, kind="modeldeployment", body={
            "compartmentId": "c", "lifecycleState": "ACTIVE", "timeCreated": log_time(),
            "categoryLogDetails": {"access": {"logId": "la", "logGroupId": "lg"}}}))  # fmt: skip
        entries = [entry(n) for n in range(args.entries)]

        # 1. Paced like a busy gateway: 5,000 entries/s for 4 s, so the queue never fills.
        logs = LogStore(metadata.engine, metadata.writer, queue_max=args.queue_max)
        cpu = FlusherCpu(logs)
        paced = entries[:20_000]
        spent = add_paced(logs.add_access, paced)
        lag = wait_written(logs, len(paced))
        import os

        print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
        print(f"paced 5000/s for {len(paced)} entries: add_access {spent / len(paced) * 1e6:.2f} us/entry on the caller; "
              f"{logs.batches} batches; all written {lag * 1000:.0f} ms after the last one; dropped {logs.dropped}; "
              f"flusher CPU {cpu.per_entry_us(logs):.2f} us/entry written")
        logs.close()

        # 2. A burst far above the write rate: how fast the flusher drains, and what it drops.
        logs = LogStore(metadata.engine, metadata.writer, queue_max=args.queue_max)
        cpu = FlusherCpu(logs)
        started = time.perf_counter()
        for item in entries:
            logs.add_access(item)
        enqueue_s = time.perf_counter() - started
        drain_s = wait_written(logs, len(entries))
        print(f"burst of {len(entries)}: queued in {enqueue_s:.3f} s ({enqueue_s / len(entries) * 1e6:.2f} us/entry); "
              f"written {logs.written} in {drain_s:.2f} s after the burst ({logs.written / max(drain_s, 1e-9):,.0f} entries/s, "
              f"{logs.batches} batches); dropped {logs.dropped} (queue max {args.queue_max}); "
              f"flusher CPU {cpu.per_entry_us(logs):.2f} us/entry written")

        started = time.perf_counter()
        page = logs.read(DEPLOYMENT, "access", tail=100)
        tail_ms = (time.perf_counter() - started) * 1000
        started = time.perf_counter()
        logs.read(DEPLOYMENT, "access", after_seq=page.cursor - 500, limit=1000)
        follow_ms = (time.perf_counter() - started) * 1000
        started = time.perf_counter()
        logs.read(DEPLOYMENT, "access", since=datetime.now(timezone.utc) - timedelta(seconds=1), limit=1000)
        since_ms = (time.perf_counter() - started) * 1000
        logs.max_entries_per_deployment = 50_000
        started = time.perf_counter()
        removed = logs.enforce_retention()
        retention_s = time.perf_counter() - started
        print(f"read: last 100 in {tail_ms:.1f} ms, a follow page in {follow_ms:.1f} ms, since 1 s ago over "
              f"{logs.written} entries in {since_ms:.1f} ms; "
              f"retention to 50,000 entries removed {removed} in {retention_s:.2f} s")
        logs.close()

        # 3. Through a worker's relay to its supervisor's store, paced at 5,000 entries/s.
        logs = LogStore(metadata.engine, metadata.writer, queue_max=args.queue_max)
        flusher = FlusherCpu(logs)
        reader = RelayReader(logs.add_access_block)
        reading = ThreadCpu(reader, "_read")
        relay = AccessRelay(reader.new_pipe(), queue_max=args.queue_max)
        sending = ThreadCpu(relay, "flush")
        paced = [entry(n) for n in range(20_000)]
        spent = add_paced(relay.add_access, paced)
        lag = wait_written(logs, len(paced))
        per = 1e6 / len(paced)
        print(f"relayed 5000/s for {len(paced)} entries: worker: add_access {spent * per:.2f} us/entry, sending thread "
              f"{sending.seconds * per:.2f} us/entry; supervisor: reading {reading.seconds * per:.2f} us/entry, flusher "
              f"{flusher.per_entry_us(logs):.2f} us/entry written; all written {lag * 1000:.0f} ms after the last one; "
              f"dropped {relay.dropped + logs.dropped}")
        relay.close()
        reader.close()
        logs.close()
        metadata.close()


if __name__ == "__main__":
    main()

"""Access-log entries of gateway worker processes, handed to their supervisor to store.

Why: storing an entry (its row, its JSON, the database insert) cost a gateway worker about a
quarter of its CPU per small request, most of it in a flusher thread holding the worker's GIL
while requests waited for it. So each worker (`dockyard serve --role gateway`, one or several) only
queues its entries (`AccessRelay.add_access`, O(1)); a thread sends them in batches, one
`marshal`led list of tuples per pipe write, to the supervisor, whose `RelayReader` hands each
entry to the one log store there. The database also gets one writer instead of one per worker.

A worker sends often (every `flush_interval_s`, 20 ms by default) and so in small batches: its
thread holds the worker's GIL while it makes a batch, and requests arriving meanwhile wait for it
(a batch of 0.2 s of a busy worker's entries was a millisecond of such waiting). The thread
sleeps while the queue is empty, so an idle worker is not woken 50 times a second.

What is kept: a worker sends what it has queued when its gateway closes (the ASGI lifespan
shutdown on SIGTERM), and the supervisor reads every pipe to its end before it closes its
store. A worker that is killed loses what it had not sent yet (at most one flush interval's
entries); batches already in its pipe are still read. A full queue (the supervisor not keeping
up) drops new entries and counts them, as the log store's own queue does.

The thread sends a worker's entries as blocks (`log_rows.access_blocks`): up to 100 entries of
one deployment, their field values as JSON text, the form the log store keeps them in on SQLite.
The supervisor hands on each block as it came (`LogStore.add_access_block`) and inserts its text
as it is: no entry of it is decoded or made anything there.
"""

from __future__ import annotations

import logging
import marshal
import threading
import time
from collections import deque
from collections.abc import Callable
from multiprocessing import Pipe
from multiprocessing.connection import Connection, wait

from dockyard.gateway.accesslog import AccessEntry, field_values
from dockyard.store.log_rows import AccessBlock, access_blocks

log = logging.getLogger("dockyard.gateway")

DROP_WARNING_EVERY_S = 10.0
IDLE_WAIT_S = 1.0  # how often an idle relay thread looks at its queue (and whether it is closed) unwoken


class AccessRelay:
    """A worker's access-log sink: queues entries; a thread sends them to the supervisor."""

    def __init__(
        self, connection: Connection, *, flush_interval_s: float = 0.02, batch_max: int = 2_000, queue_max: int = 100_000
    ) -> None:
        self._connection = connection  # the write end of this worker's pipe
        self.flush_interval_s = flush_interval_s
        self.batch_max = batch_max
        self.queue_max = queue_max
        self.sent = 0
        self.dropped = 0  # refused (queue full) or lost (the supervisor's end is gone)
        self._queue: deque[AccessEntry] = deque()
        self._wake = threading.Event()
        self._send_lock = threading.Lock()  # batches leave in queue order, whoever sends them
        self._thread: threading.Thread | None = None
        self._thread_lock = threading.Lock()
        self._closed = False
        self._broken = False
        self._last_warning = 0.0

    def add_access(self, entry: AccessEntry) -> None:
        """The gateway's access sink. Requests that named no deployment are not kept (they
        belong to no deployment's log; the log store would not store them either)."""
        if entry.deployment_id is None:
            return
        queued = len(self._queue)
        if queued >= self.queue_max:
            self._lost(1, "the queue is full")
            return
        self._queue.append(entry)
        if not queued or queued + 1 >= self.batch_max:  # the first entry wakes the thread; so does a full batch
            self._wake.set()
        if self._thread is None:
            self._start()

    def flush(self) -> int:
        """Send what is queued now; the number of entries taken from the queue."""
        total = 0
        with self._send_lock:
            waiting = len(self._queue)
            take = self._queue.popleft
            while total < waiting:
                # Only a flush (under this lock) takes from the queue: it holds at least this many.
                count = min(self.batch_max, waiting - total)
                total += count
                self._send(access_blocks([field_values(take()) for _ in range(count)]), count)
        return total

    def close(self) -> None:
        """Send what is queued, stop the thread and close this end of the pipe."""
        self._closed = True
        self._wake.set()
        self.flush()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(5)
        self._connection.close()

    def _send(self, blocks: list[AccessBlock], count: int) -> None:
        if self._broken:
            self._lost(count, "the supervisor's end of the pipe is closed")
            return
        try:
            self._connection.send_bytes(marshal.dumps(blocks))
        except (OSError, ValueError) as exc:  # EPIPE: the supervisor is gone; ValueError: closed here
            self._broken = True
            self._lost(count, f"the supervisor's end of the pipe is closed ({exc})")
            return
        self.sent += count

    def _lost(self, count: int, why: str) -> None:
        self.dropped += count
        now = time.monotonic()
        if now - self._last_warning >= DROP_WARNING_EVERY_S:
            self._last_warning = now
            log.warning("access-log entries not stored: %s (%d entries lost so far)", why, self.dropped)

    def _start(self) -> None:
        with self._thread_lock:
            if self._thread is None and not self._closed:
                self._thread = threading.Thread(target=self._run, name="dockyard-access-relay", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while not self._closed:
            if not self._queue:
                self._wake.clear()
                if not self._queue:  # checked after the clear: an entry added before it set the event in vain
                    self._wake.wait(IDLE_WAIT_S)  # until the first entry (add_access sets it)
                continue
            self._wake.clear()
            self._wake.wait(self.flush_interval_s)  # the batch gathers (a full one ends the wait)
            self._wake.clear()
            try:
                self.flush()
            except Exception:
                log.exception("sending access-log entries to the supervisor failed")


class RelayReader:
    """The supervisor's end: reads every worker's batches and gives each block of entries
    (`log_rows.AccessBlock`) to `sink`."""

    def __init__(self, sink: Callable[[AccessBlock], None], poll_s: float = 0.2) -> None:
        self._sink = sink
        self._poll_s = poll_s  # how soon a new worker's pipe is read from
        self._connections: list[Connection] = []
        self._lock = threading.Lock()
        self._stopping = False
        self.received = 0
        self._thread = threading.Thread(target=self._run, name="dockyard-access-reader", daemon=True)
        self._thread.start()

    def new_pipe(self) -> Connection:
        """A pipe for one more worker: its write end, to hand to the worker process (then close
        it here once the process has started, or its end would never be seen)."""
        reader, writer = Pipe(duplex=False)
        with self._lock:
            self._connections.append(reader)
        return writer

    def close(self, timeout_s: float = 10.0) -> None:
        """Read every pipe to its end (each worker has exited or closed its end), waiting at
        most `timeout_s`, then stop."""
        self._stopping = True
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            log.warning("access-log pipes still open after %g s; entries still in them are not stored", timeout_s)
        with self._lock:
            for connection in self._connections:
                connection.close()
            self._connections.clear()

    def _run(self) -> None:
        while True:
            with self._lock:
                connections = list(self._connections)
            if not connections:
                if self._stopping:
                    return
                time.sleep(self._poll_s)
                continue
            try:
                ready = wait(connections, self._poll_s)
            except (OSError, ValueError):  # a pipe closed by close() after its timeout
                if self._stopping:
                    return
                raise
            for connection in ready:
                self._read(connection)  # type: ignore[arg-type]

    def _read(self, connection: Connection) -> None:
        try:
            blocks = marshal.loads(connection.recv_bytes())
        except (EOFError, OSError):  # the worker exited and everything it sent has been read
            with self._lock:
                if connection in self._connections:
                    self._connections.remove(connection)
            connection.close()
            return
        sink = self._sink
        for block in blocks:
            try:
                sink(block)
            except Exception:
                log.exception("could not store %d access-log entries from a gateway worker", block[1])
            self.received += block[1]

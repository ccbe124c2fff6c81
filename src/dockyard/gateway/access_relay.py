"""Access-log entries of gateway worker processes, handed to their supervisor to store.

Why: storing an entry (its row, its JSON, the database insert) cost a gateway worker about a
quarter of its CPU per small request, most of it in a flusher thread holding the worker's GIL
while requests waited for it. So each worker (`dockyard serve --role gateway`, one or several) only
queues its entries (`AccessRelay.add_access`, O(1)) and sends them in batches, one `marshal`led
list of blocks per message, over a pipe to the supervisor, whose `RelayReader` hands each block
to the one log store there. The database also gets one writer instead of one per worker.

The worker's event loop sends (every `flush_interval_s`, 20 ms by default, after an entry is
queued; an idle worker is not woken): a batch is made and written in the loop's thread, between
requests. A thread of its own did this once, and cost more: the thread and the loop handed the
GIL to each other on every batch (futex calls, a waiting loop), for the same work. Under
gateway_overhead.py's load (64 connections, one worker) that thread took 1.3 to 1.6 µs of CPU
per request, and the loop took no more than before without it: 0 to 4% more requests per
second. The pipe is non-blocking and enlarged to 1 MiB: what it cannot take at once waits here,
and the loop writes it when the pipe has room; the supervisor reads while the worker serves.

What is kept: a worker sends what it has queued when its gateway closes (the ASGI lifespan
shutdown on SIGTERM, then `close()`, which waits for the pipe to take everything), and the
supervisor reads every pipe to its end before it closes its store. A worker that is killed
loses what it had not sent yet (at most one flush interval's entries); batches already in its
pipe are still read. A full queue (the supervisor not keeping up: entries queued and waiting
for the pipe reach `queue_max`) drops new entries and counts them, as the log store's own
queue does.

A worker sends its entries as blocks (`log_rows.access_blocks`): up to 100 entries of one
deployment, their field values as JSON text, the form the log store keeps them in on SQLite.
The supervisor hands on each block as it came (`LogStore.add_access_block`) and inserts its text
as it is: no entry of it is decoded or made anything there.
"""

from __future__ import annotations

import asyncio
import logging
import marshal
import os
import select
import struct
import threading
import time
from collections import deque
from collections.abc import Callable
from multiprocessing import Pipe
from multiprocessing.connection import Connection, wait
from typing import Any

from dockyard.gateway.accesslog import AccessEntry, field_values
from dockyard.store.log_rows import AccessBlock, access_blocks

log = logging.getLogger("dockyard.gateway")

DROP_WARNING_EVERY_S = 10.0
PIPE_BYTES = 1 << 20  # a busy worker's 20 ms of entries (~100 KB) fit many times over
CLOSE_WAIT_S = 10.0  # how long `close()` waits for a supervisor that reads nothing
_F_SETPIPE_SZ = 1031  # fcntl.F_SETPIPE_SZ (Linux; the name is missing before Python 3.10 and elsewhere)
_LENGTH = struct.Struct("!i")  # how multiprocessing frames a message (`Connection.send_bytes`)


class AccessRelay:
    """A worker's access-log sink: queues entries; the worker's event loop sends them to the
    supervisor. Without a running event loop (a caller of its own), only `flush()` and
    `close()` send."""

    def __init__(
        self, connection: Connection, *, flush_interval_s: float = 0.02, batch_max: int = 2_000, queue_max: int = 100_000
    ) -> None:
        self._connection = connection  # the write end of this worker's pipe
        self._fd = connection.fileno()
        os.set_blocking(self._fd, False)
        try:
            import fcntl

            fcntl.fcntl(self._fd, _F_SETPIPE_SZ, PIPE_BYTES)
        except (ImportError, OSError):  # not Linux, or over /proc/sys/fs/pipe-max-size: the default 64 KiB
            pass
        self.flush_interval_s = flush_interval_s
        self.batch_max = batch_max
        self.queue_max = queue_max
        self.sent = 0
        self.dropped = 0  # refused (queue full) or lost (the supervisor's end is gone)
        self._queue: deque[AccessEntry] = deque()
        # Framed messages the pipe has not taken yet, with their entry counts; `_offset` bytes of
        # the first are written. One lock over them and the writes: `flush()` may also be called
        # from another thread (the gateway's close runs it in one).
        self._unsent: deque[tuple[bytes, int]] = deque()
        self._unsent_entries = 0
        self._offset = 0
        self._lock = threading.Lock()
        # Typed Any: uvloop's remove_writer returns None where asyncio's says bool, and compiled
        # code checks what a typed call returns.
        self._loop: Any = None
        self._scheduled = False  # a flush is due on the loop
        self._watching = False  # the loop calls `_writable` when the pipe has room
        self._closed = False
        self._broken = False
        self._last_warning = 0.0

    def add_access(self, entry: AccessEntry) -> None:
        """The gateway's access sink. Requests that named no deployment are not kept (they
        belong to no deployment's log; the log store would not store them either)."""
        if entry.deployment_id is None:
            return
        queue = self._queue
        if len(queue) + self._unsent_entries >= self.queue_max:
            self._lost(1, "the supervisor is not keeping up (the queue is full)")
            return
        queue.append(entry)
        if len(queue) >= self.batch_max:
            self.flush()
        elif not self._scheduled:
            self._schedule()

    def flush(self) -> int:
        """Send what is queued now (what the pipe cannot take yet waits for room); the number of
        entries taken from the queue."""
        total = 0
        with self._lock:
            queue = self._queue
            waiting = len(queue)
            take = queue.popleft
            while total < waiting:
                count = min(self.batch_max, waiting - total)
                total += count
                blocks = access_blocks([field_values(take()) for _ in range(count)])
                if self._broken:
                    self._lost(count, "the supervisor's end of the pipe is closed")
                    continue
                payload = marshal.dumps(blocks)
                self._unsent.append((_LENGTH.pack(len(payload)) + payload, count))
                self._unsent_entries += count
            self._write(self._loop is not None and not self._on_loop())
        return total

    def close(self) -> None:
        """Send what is queued, waiting up to `CLOSE_WAIT_S` for the pipe to take it, and close
        this end of the pipe."""
        self._closed = True
        self.flush()
        with self._lock:
            self._stop_watching()
            deadline = time.monotonic() + CLOSE_WAIT_S
            while self._unsent and not self._broken:
                left = deadline - time.monotonic()
                if left <= 0:
                    self._lost(self._unsent_entries, f"the supervisor took nothing for {CLOSE_WAIT_S:g} s")
                    self._unsent.clear()
                    self._unsent_entries = 0
                    break
                select.select([], [self._fd], [], left)
                self._write(False)
        self._connection.close()

    # --- sending ------------------------------------------------------------------------------

    def _schedule(self) -> None:
        loop = self._loop
        if loop is None:
            try:
                loop = self._loop = asyncio.get_running_loop()
            except RuntimeError:
                return  # no event loop here: flush() and close() send
        self._scheduled = True
        loop.call_later(self.flush_interval_s, self._timed_flush)

    def _on_loop(self) -> bool:
        try:
            return asyncio.get_running_loop() is self._loop
        except RuntimeError:
            return False

    def _timed_flush(self) -> None:
        self._scheduled = False
        try:
            self.flush()
        except Exception:
            log.exception("sending access-log entries to the supervisor failed")

    def _write(self, elsewhere: bool) -> None:
        """Write what the pipe takes (under `_lock`). What it cannot take yet is written when it
        has room: the loop watches the pipe (`elsewhere`: from another thread, through the loop)."""
        unsent = self._unsent
        while unsent:
            data, count = unsent[0]
            try:
                written = os.write(self._fd, memoryview(data)[self._offset:])
            except BlockingIOError:
                written = 0
            except OSError as exc:  # EPIPE: the supervisor is gone; EBADF: closed here
                self._broken = True
                self._lost(self._unsent_entries, f"the supervisor's end of the pipe is closed ({exc})")
                unsent.clear()
                self._unsent_entries = 0
                break
            self._offset += written
            if self._offset < len(data):  # the pipe is full
                if not self._watching and self._loop is not None and not self._closed:
                    self._watching = True
                    if elsewhere:
                        self._loop.call_soon_threadsafe(self._loop.add_writer, self._fd, self._writable)
                    else:
                        self._loop.add_writer(self._fd, self._writable)
                return
            unsent.popleft()
            self._offset = 0
            self._unsent_entries -= count
            self.sent += count
        if self._watching and not elsewhere:
            self._stop_watching()

    def _writable(self) -> None:
        with self._lock:
            self._write(False)

    def _stop_watching(self) -> None:
        if self._watching and self._loop is not None:
            self._watching = False
            try:
                self._loop.remove_writer(self._fd)
            except RuntimeError:  # the loop is closed: it watches nothing any more
                pass

    def _lost(self, count: int, why: str) -> None:
        self.dropped += count
        now = time.monotonic()
        if now - self._last_warning >= DROP_WARNING_EVERY_S:
            self._last_warning = now
            log.warning("access-log entries not stored: %s (%d entries lost so far)", why, self.dropped)


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
        self._reading_thread = threading.Thread(target=self._run, name="dockyard-access-reader", daemon=True)
        self._reading_thread.start()

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
        self._reading_thread.join(timeout_s)
        if self._reading_thread.is_alive():
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

"""Coarse deadlines: one loop timer per event loop instead of one per deadline.

A uvloop timer costs several µs between making and cancelling it (a libuv timer initialised,
started, stopped and closed, a handle object made). The proxy's hot path used two per request
(the 50 ms delay before watching for a disconnect, the request's deadline for the reply's
headers), nearly always cancelled long before they were due, and they were a measurable share
of the gateway's CPU. Here a deadline is an entry in a heap and cancelling it is flagging it;
a single loop timer, armed for the earliest entry, fires whatever is due.

Resolution: `TICK_S`. The loop timer is armed for the earliest deadline rounded up to the next
multiple of `TICK_S` on the loop's clock, so deadlines close together share one wake-up. A
callback never runs before its deadline (by the loop's clock) and at most one tick after it
(plus whatever else keeps the loop busy, as for any loop callback).

The loop timer exists only while live entries do: cancelling the last one cancels it, so an
idle gateway has no wake-ups and a loop closes with no timer of ours pending. Cancelled
entries stay in the heap until they come to its top, or until they are more than half of it,
when it is rebuilt without them: memory stays proportional to the live entries.

Callbacks run in the scheduler's own (empty) context, not in the one that added them. All of
this is for one thread: the loop's own.
"""

from __future__ import annotations

import asyncio
import contextvars
import heapq
import itertools
import math
from collections.abc import Callable
from typing import Any

TICK_S = 0.025
_COMPACT_MIN = 64  # cancelled entries tolerated before the heap may be rebuilt without them


class Deadline:
    """One pending callback; `cancel()` keeps it from running (O(1), touches no loop timer
    unless it was the last live one)."""

    __slots__ = ("_owner", "_callback", "_args")

    def __init__(self, owner: Deadlines, callback: Callable[..., object], args: tuple[Any, ...]) -> None:
        self._owner: Deadlines | None = owner  # None once fired or cancelled
        self._callback: Callable[..., object] | None = callback
        self._args = args

    @property
    def pending(self) -> bool:
        return self._owner is not None

    def cancel(self) -> None:
        owner = self._owner
        if owner is None:
            return
        self._owner = self._callback = None
        self._args = ()
        owner._live -= 1
        if owner._live == 0:
            owner._drop_all()
            return
        owner._cancelled += 1
        if owner._cancelled > _COMPACT_MIN and owner._cancelled * 2 > len(owner._heap):
            owner._compact()


class Deadlines:
    """The deadlines of one event loop. `add(when, callback, *args)` calls `callback(*args)`
    once the loop's clock reaches `when` (within a tick); use `for_loop(loop)` to get one."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._heap: list[tuple[float, int, Deadline]] = []
        self._seq = itertools.count()  # ties in `when` never compare the entries themselves
        self._live = 0  # entries neither fired nor cancelled
        self._cancelled = 0  # cancelled entries still in the heap
        self._timer: asyncio.TimerHandle | None = None
        self._armed_at = 0.0  # when `_timer` is due
        self._ticking = False
        self._context = contextvars.Context()

    @property
    def live(self) -> int:
        return self._live

    @property
    def armed(self) -> bool:
        """A loop timer of this scheduler is pending."""
        return self._timer is not None

    def add(self, when: float, callback: Callable[..., object], *args: Any) -> Deadline:
        """Call `callback(*args)` once the loop's clock (`loop.time()`) reaches `when`."""
        entry = Deadline(self, callback, args)
        heapq.heappush(self._heap, (when, next(self._seq), entry))
        self._live += 1
        if self._timer is None:
            if not self._ticking:
                self._arm(when)
        elif when + TICK_S < self._armed_at:  # the armed tick would be more than a tick late
            self._timer.cancel()
            self._arm(when)
        return entry

    # --- the loop timer ---------------------------------------------------------------------------

    def _arm(self, when: float) -> None:
        at = max(when, math.ceil(when / TICK_S) * TICK_S)
        self._armed_at = at
        self._timer = self._loop.call_at(at, self._tick, context=self._context)

    def _tick(self) -> None:
        self._timer = None
        loop = self._loop
        heap = self._heap
        now = loop.time()
        self._ticking = True  # a callback's `add` leaves the arming to the end of this tick
        try:
            while heap and heap[0][0] <= now:
                entry = heapq.heappop(heap)[2]
                if entry._owner is None:  # cancelled
                    self._cancelled -= 1
                    continue
                callback, args = entry._callback, entry._args
                entry._owner = entry._callback = None
                entry._args = ()
                self._live -= 1
                try:
                    callback(*args)  # type: ignore[misc]
                except (SystemExit, KeyboardInterrupt):
                    raise
                except BaseException as exc:  # as the loop does for a failing callback
                    loop.call_exception_handler(
                        {"message": f"Exception in deadline callback {callback!r}", "exception": exc}
                    )
        finally:
            self._ticking = False
            while heap and heap[0][2]._owner is None:  # no wake-up for a cancelled entry
                heapq.heappop(heap)
                self._cancelled -= 1
            if heap:
                self._arm(heap[0][0])

    # --- cancelled entries ------------------------------------------------------------------------

    def _drop_all(self) -> None:
        """No live entry left: no heap to keep, no timer to run."""
        self._heap.clear()
        self._cancelled = 0
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _compact(self) -> None:
        heap = [item for item in self._heap if item[2]._owner is not None]
        heapq.heapify(heap)
        self._heap[:] = heap  # in place: `_tick` may be iterating over this very list
        self._cancelled = 0


def for_loop(loop: asyncio.AbstractEventLoop) -> Deadlines:
    """The scheduler of `loop`, made on first use. Kept on the loop itself: the two refer to
    each other (the loop timer holds its loop), and go together once the loop is unreferenced."""
    try:
        return loop._dockyard_deadlines  # type: ignore[attr-defined,no-any-return]
    except AttributeError:
        deadlines = loop._dockyard_deadlines = Deadlines(loop)  # type: ignore[attr-defined]
        return deadlines

"""The gateway's coarse deadlines (one loop timer per loop), on real asyncio and uvloop loops,
and the three places the proxy uses them: the reply head's deadline, the body read timeout and
the delay before watching for a disconnect."""

from __future__ import annotations

import asyncio
import gc
import threading
import weakref
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest
import uvloop

from dockyard.gateway import deadlines
from dockyard.gateway.deadlines import TICK_S, Deadlines
from dockyard.gateway.proxy import DisconnectWatch
from dockyard.gateway.upstream import UpstreamConnection

LOOPS = ["asyncio", "uvloop"]
SLACK_S = 0.25  # what a busy test machine may add to a callback's lateness on top of the tick


def new_loop(kind: str) -> asyncio.AbstractEventLoop:
    return uvloop.new_event_loop() if kind == "uvloop" else asyncio.new_event_loop()


def run(kind: str, main: Callable[[], Awaitable[Any]]) -> Any:
    loop = new_loop(kind)
    try:
        return loop.run_until_complete(main())
    finally:
        loop.close()


def assert_loop_timers(loop: asyncio.AbstractEventLoop, d: Deadlines, count: int) -> None:
    """`count` timers of ours pending; on a pure-asyncio loop also as the loop itself sees them
    (uvloop does not show its timers)."""
    assert d.armed == (count > 0)
    if isinstance(loop, asyncio.BaseEventLoop):
        assert sum(1 for handle in loop._scheduled if not handle.cancelled()) == count  # type: ignore[attr-defined]


@pytest.mark.parametrize("kind", LOOPS)
def test_fires_after_its_deadline_never_before_at_most_a_tick_late(kind: str) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        d = deadlines.for_loop(loop)
        fired: list[tuple[float, float]] = []
        start = loop.time()
        for offset in (0.0, 0.001, 0.01, 0.03, 0.05, 0.051, 0.074, 0.1, 0.13):
            when = start + offset
            d.add(when, lambda when=when: fired.append((when, loop.time())))
            # Deterministic part: the loop timer is never armed for later than a tick after
            # the earliest pending deadline.
            assert d._armed_at <= min(item[0] for item in d._heap if item[2].pending) + TICK_S + 1e-9
        while d.live:
            await asyncio.sleep(0.005)
        assert len(fired) == 9
        for when, at in fired:
            assert at >= when, f"fired {when - at:.4f} s early"
            assert at - when <= TICK_S + SLACK_S, f"fired {at - when:.4f} s late"

    run(kind, main)


@pytest.mark.parametrize("kind", LOOPS)
def test_fired_in_deadline_order(kind: str) -> None:
    async def main() -> list[int]:
        loop = asyncio.get_running_loop()
        d = deadlines.for_loop(loop)
        order: list[int] = []
        now = loop.time()
        for i in (3, 1, 4, 0, 2):
            d.add(now + 0.001 * i, order.append, i)
        while d.live:
            await asyncio.sleep(0.005)
        return order

    assert run(kind, main) == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("kind", LOOPS)
def test_cancel_prevents_firing(kind: str) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        d = deadlines.for_loop(loop)
        fired: list[str] = []
        keep = d.add(loop.time() + 0.03, fired.append, "kept")
        dropped = d.add(loop.time() + 0.01, fired.append, "cancelled")
        assert dropped.pending
        dropped.cancel()
        dropped.cancel()  # twice is harmless
        assert not dropped.pending
        await asyncio.sleep(0.03 + TICK_S + 0.05)
        assert fired == ["kept"]
        assert not keep.pending
        keep.cancel()  # after it fired: nothing
        assert d.live == 0

    run(kind, main)


@pytest.mark.parametrize("kind", LOOPS)
def test_cancelled_entries_do_not_accumulate(kind: str) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        d = deadlines.for_loop(loop)
        live = [d.add(loop.time() + 3600 + i, lambda: None) for i in range(100)]
        largest = 0
        for i in range(100_000):  # the proxy's pattern: far deadlines, nearly all cancelled early
            d.add(loop.time() + 60 + i * 1e-6, lambda: None).cancel()
            largest = max(largest, len(d._heap))
        assert d.live == 100
        assert largest <= 2 * 100 + deadlines._COMPACT_MIN + 2
        for entry in live:
            entry.cancel()
        assert d._heap == [] and d.live == 0

    run(kind, main)


@pytest.mark.parametrize("kind", LOOPS)
def test_no_loop_timer_once_all_fired_or_cancelled(kind: str) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        d = deadlines.for_loop(loop)
        assert_loop_timers(loop, d, 0)
        # All cancelled: the loop timer goes with the last one, at once.
        entries = [d.add(loop.time() + 60 + i, lambda: None) for i in range(10)]
        assert_loop_timers(loop, d, 1)  # one timer however many deadlines
        for entry in entries:
            entry.cancel()
        assert_loop_timers(loop, d, 0)
        # All fired, with cancelled ones left behind them in the heap: no wake-up for those.
        fired: list[int] = []
        d.add(loop.time() + 0.01, fired.append, 1)
        later = [d.add(loop.time() + 30, lambda: None) for _ in range(3)]
        kept = d.add(loop.time() + 0.02, fired.append, 2)
        for entry in later:
            entry.cancel()
        while d.live:
            await asyncio.sleep(0.005)
        assert fired == [1, 2] and not kept.pending
        assert_loop_timers(loop, d, 0)
        assert d._heap == []

    run(kind, main)


@pytest.mark.parametrize("kind", LOOPS)
def test_an_earlier_deadline_rearms_the_loop_timer(kind: str) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        d = deadlines.for_loop(loop)
        far = d.add(loop.time() + 60, lambda: None)
        fired = asyncio.Event()
        when = loop.time() + 0.02
        d.add(when, fired.set)
        assert d._armed_at <= when + TICK_S
        await asyncio.wait_for(fired.wait(), 5)
        assert d.armed and d._armed_at >= loop.time() + 50  # back to the far one
        far.cancel()
        assert not d.armed

    run(kind, main)


@pytest.mark.parametrize("kind", LOOPS)
def test_callbacks_may_add_and_cancel_and_a_failing_one_is_reported(kind: str) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        reported: list[dict[str, Any]] = []
        loop.set_exception_handler(lambda _loop, context: reported.append(context))
        d = deadlines.for_loop(loop)
        fired: list[str] = []
        victim = d.add(loop.time() + 0.015, fired.append, "victim")

        def first() -> None:
            fired.append("first")
            victim.cancel()
            d.add(loop.time() + 0.02, fired.append, "added")

        def boom() -> None:
            raise ValueError("boom")

        d.add(loop.time() + 0.005, first)
        d.add(loop.time() + 0.006, boom)
        d.add(loop.time() + 0.007, fired.append, "after")
        while d.live:
            await asyncio.sleep(0.005)
        assert fired == ["first", "after", "added"]
        assert len(reported) == 1 and isinstance(reported[0]["exception"], ValueError)
        assert not d.armed

    run(kind, main)


def test_each_loop_has_its_own_and_they_run_independently() -> None:
    results: dict[str, Any] = {}

    def in_thread(kind: str) -> None:
        async def main() -> None:
            loop = asyncio.get_running_loop()
            d = deadlines.for_loop(loop)
            assert deadlines.for_loop(loop) is d
            done = asyncio.Event()
            seen: list[Any] = []
            d.add(loop.time() + 0.03, lambda: (seen.append((asyncio.get_running_loop(), threading.get_ident())), done.set()))
            await asyncio.wait_for(done.wait(), 5)
            results[kind] = (id(d), seen == [(loop, threading.get_ident())], d.armed)

        run(kind, main)

    threads = [threading.Thread(target=in_thread, args=(kind,)) for kind in LOOPS]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert set(results) == set(LOOPS)
    assert results["asyncio"][0] != results["uvloop"][0]
    assert all(ok and not armed for _, ok, armed in results.values())


@pytest.mark.parametrize("kind", LOOPS)
def test_a_closed_loop_and_its_deadlines_are_collected(kind: str) -> None:
    # Counted, not weakly referred to: compiled (dockyard.compiled), a Deadlines takes no weak reference.
    def live() -> int:
        return sum(type(o) is deadlines.Deadlines for o in gc.get_objects())

    gc.collect()
    before = live()
    loop = new_loop(kind)
    d = deadlines.for_loop(loop)
    d.add(loop.time() + 60, lambda: None)  # still pending when the loop closes
    loop.close()
    gone = weakref.ref(loop)
    del loop, d
    gc.collect()
    assert gone() is None and live() == before


# --- where the proxy uses them -----------------------------------------------------------------


class SilentServer:
    """Takes a request and answers `head` (if any), then nothing more until the client leaves."""

    def __init__(self, head: bytes | None) -> None:
        self.head = head
        self.left = asyncio.Event()

    async def __aenter__(self) -> int:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()
        await asyncio.wait_for(self.left.wait(), 5)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            if self.head is not None:
                writer.write(self.head)
            await reader.read()  # until the client closes
            writer.close()
        finally:
            self.left.set()


@pytest.mark.parametrize("kind", LOOPS)
def test_wait_head_times_out_at_its_deadline(kind: str) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        async with SilentServer(None) as port:
            connection = await UpstreamConnection.open("127.0.0.1", port, 5)
            try:
                reply = connection.start(b"GET")
                connection.write(UpstreamConnection.head(b"GET", b"/", [(b"host", b"x")]))
                deadline = loop.time() + 0.1
                with pytest.raises(TimeoutError):
                    await reply.wait_head(deadline)
                assert deadline <= loop.time() <= deadline + TICK_S + SLACK_S
                assert connection.deadlines.live == 0 and not connection.deadlines.armed
            finally:
                connection.close()

    run(kind, main)


@pytest.mark.parametrize("kind", LOOPS)
def test_read_times_out_after_timeout_s_and_a_head_in_time_cancels_its_deadline(kind: str) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        async with SilentServer(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n") as port:
            connection = await UpstreamConnection.open("127.0.0.1", port, 5)
            try:
                reply = connection.start(b"GET")
                connection.write(UpstreamConnection.head(b"GET", b"/", [(b"host", b"x")]))
                await reply.wait_head(loop.time() + 60)
                assert reply.status == 200
                assert connection.deadlines.live == 0 and not connection.deadlines.armed
                started = loop.time()
                with pytest.raises(httpx.ReadTimeout, match="sent nothing for 0.1 s"):
                    await reply.read(0.1)
                assert started + 0.1 <= loop.time() <= started + 0.1 + TICK_S + SLACK_S
                assert connection.deadlines.live == 0 and not connection.deadlines.armed
                reply.close()
            finally:
                connection.close()

    run(kind, main)


@pytest.mark.parametrize("kind", LOOPS)
def test_disconnect_watch_starts_watching_only_after_its_delay(kind: str) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        received: list[float] = []
        never = loop.create_future()

        async def receive() -> dict[str, Any]:
            received.append(loop.time())
            await never
            return {"type": "http.disconnect"}

        # A quick exchange: stopped before the delay, it never watches.
        quick = DisconnectWatch(receive)
        quick.start()
        await asyncio.sleep(0.01)
        quick.stop()
        await asyncio.sleep(0.05 + TICK_S + 0.05)
        assert received == []
        # A slow one: watching begins after 50 ms, not before.
        slow = DisconnectWatch(receive)
        started = loop.time()
        slow.start()
        while not received:
            await asyncio.sleep(0.005)
        assert started + 0.05 <= received[0] <= started + 0.05 + TICK_S + SLACK_S
        slow.stop()
        assert deadlines.for_loop(loop).live == 0
        never.cancel()

    run(kind, main)

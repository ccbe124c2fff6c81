"""`PredictAuthorization`, the gateway's cached predict decision: one policy read per caller and
compartment at a time, however many requests arrive while it runs, and a failed read is never
kept as a decision."""

from __future__ import annotations

import asyncio
import threading

import pytest

from dockyard.auth.policy import MODEL_DEPLOYMENTS, Verb
from dockyard.auth.predict_authorization import PredictAuthorization
from dockyard.service.access import Access
from dockyard.service.context import Caller

C1 = "ocid1.compartment.oc1..one"
C2 = "ocid1.compartment.oc1..two"
ALICE, BOB = Caller("alice", "t"), Caller("bob", "t")


class Gated:
    """An authorizer whose reads wait until the test opens the gate, counting them."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, Verb, str, str]] = []
        self.gate = threading.Event()
        self.answer = True
        self.error: Exception | None = None

    def allowed(self, caller: Caller, verb: Verb, family: str, compartment_id: str) -> bool:
        self.asked.append((caller.user_id, verb, family, compartment_id))
        assert self.gate.wait(5)
        if self.error is not None:
            raise self.error
        return self.answer

    def registry_hosts_for(self, _: Caller) -> None:
        return None


async def started(tasks: list[asyncio.Task[bool]], authorizer: Gated, reads: int) -> None:
    """Waits until `reads` policy reads are running (each in its worker thread)."""
    for _ in range(500):
        if len(authorizer.asked) >= reads:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{len(authorizer.asked)} reads started, expected {reads}")


def test_requests_arriving_during_a_read_share_it() -> None:
    authorizer = Gated()
    now = [0.0]
    decide = PredictAuthorization(Access(authorizer), ttl_s=2.0, clock=lambda: now[0])  # type: ignore[arg-type]

    async def run() -> list[bool]:
        burst = [asyncio.create_task(decide(ALICE, C1)) for _ in range(50)]
        await started(burst, authorizer, 1)
        await asyncio.sleep(0.05)  # the others are waiting, not reading
        authorizer.gate.set()
        return await asyncio.gather(*burst)

    assert asyncio.run(run()) == [True] * 50
    assert authorizer.asked == [("alice", Verb.USE, MODEL_DEPLOYMENTS, C1)]


def test_each_caller_and_compartment_has_its_own_read() -> None:
    authorizer = Gated()
    decide = PredictAuthorization(Access(authorizer), ttl_s=2.0)  # type: ignore[arg-type]

    async def run() -> list[bool]:
        burst = [asyncio.create_task(decide(who, where)) for who in (ALICE, BOB) for where in (C1, C2) for _ in range(3)]
        await started(burst, authorizer, 4)
        authorizer.gate.set()
        return await asyncio.gather(*burst)

    assert asyncio.run(run()) == [True] * 12
    assert sorted(authorizer.asked) == sorted(
        (who.user_id, Verb.USE, MODEL_DEPLOYMENTS, where) for who in (ALICE, BOB) for where in (C1, C2)
    )


def test_a_failed_read_reaches_its_waiters_and_is_not_kept() -> None:
    authorizer = Gated()
    authorizer.error = RuntimeError("database is locked")
    decide = PredictAuthorization(Access(authorizer), ttl_s=2.0)  # type: ignore[arg-type]

    async def run() -> tuple[list[object], bool]:
        burst = [asyncio.create_task(decide(ALICE, C1)) for _ in range(5)]
        await started(burst, authorizer, 1)
        authorizer.gate.set()
        failures = await asyncio.gather(*burst, return_exceptions=True)
        authorizer.error = None  # the database is back: the next request reads again
        return failures, await decide(ALICE, C1)

    failures, after = asyncio.run(run())
    assert [str(f) for f in failures] == ["database is locked"] * 5
    assert after is True
    assert len(authorizer.asked) == 2


def test_a_waiter_that_goes_away_leaves_the_read_to_the_others() -> None:
    authorizer = Gated()
    decide = PredictAuthorization(Access(authorizer), ttl_s=2.0)  # type: ignore[arg-type]

    async def run() -> bool:
        first = asyncio.create_task(decide(ALICE, C1))
        second = asyncio.create_task(decide(ALICE, C1))
        await started([first, second], authorizer, 1)
        first.cancel()  # the client that started the read disconnected
        with pytest.raises(asyncio.CancelledError):
            await first
        authorizer.gate.set()
        return await second

    assert asyncio.run(run()) is True
    assert len(authorizer.asked) == 1


def test_a_decision_lasts_ttl_from_the_start_of_its_read() -> None:
    authorizer = Gated()
    authorizer.gate.set()
    now = [10.0]
    decide = PredictAuthorization(Access(authorizer), ttl_s=2.0, clock=lambda: now[0])  # type: ignore[arg-type]

    async def run() -> list[bool]:
        answers = [await decide(ALICE, C1)]
        authorizer.answer = False  # the policy changes ...
        now[0] = 11.9
        answers.append(await decide(ALICE, C1))  # ... still within the TTL: the old decision
        now[0] = 12.0
        answers.append(await decide(ALICE, C1))  # ... the TTL is over: read again
        return answers

    assert asyncio.run(run()) == [True, True, False]
    assert len(authorizer.asked) == 2


def test_no_verified_caller_is_never_allowed_and_reads_nothing() -> None:
    authorizer = Gated()
    decide = PredictAuthorization(Access(authorizer))  # type: ignore[arg-type]
    assert asyncio.run(decide(None, C1)) is False
    assert authorizer.asked == []


def test_a_read_left_behind_by_a_closed_event_loop_is_not_waited_for() -> None:
    authorizer = Gated()
    decide = PredictAuthorization(Access(authorizer))  # type: ignore[arg-type]
    old = asyncio.new_event_loop()

    async def abandon() -> None:
        task = asyncio.create_task(decide(ALICE, C1))
        await started([task], authorizer, 1)

    old.run_until_complete(abandon())  # the loop goes away with the read still running
    authorizer.gate.set()
    assert asyncio.run(decide(ALICE, C1)) is True
    old.run_until_complete(asyncio.gather(*asyncio.all_tasks(old)))  # (lets the abandoned read end quietly)
    old.close()
    assert len(authorizer.asked) == 2

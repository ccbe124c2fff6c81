"""The gateway's predict authorization: may a caller use a deployment, decided once per caller
and compartment for a few seconds (see `PredictAuthorization`).

Apart from service/access.py, and compiled with the gateway's request path (dockyard/compiled.py):
`known` is asked on every predict.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from dockyard.auth.policy import MODEL_DEPLOYMENTS, Verb
from dockyard.service.access import Access


class PredictAuthorization:
    """The gateway's hook: may `caller` use the deployment in `compartment_id` (predict)?

    Decisions are reused for `ttl_s` per (tenancy, user, key, compartment), so a burst of
    predictions costs one policy read per caller and compartment; a policy change therefore
    reaches the data plane within `ttl_s` plus one policy read. Only one read per key runs at a
    time: the requests that arrive while it runs (all of them at once when a busy caller's
    decision expires) wait for its answer instead of each reading the policies. A read that
    fails is not kept: its waiters get its error, and the next request reads again.
    """

    def __init__(self, access: Access, ttl_s: float = 2.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.access = access
        self.ttl_s = ttl_s
        self.clock = clock
        self._decisions: dict[tuple[str | None, str, str, str], tuple[float, bool]] = {}
        self._reading: dict[tuple[str | None, str, str, str], asyncio.Task[bool]] = {}

    # A caller is a `service.context.Caller`, or another object with its identity's attributes
    # (typed Any: compiled code would check a class annotation on every call).

    def known(self, caller: Any, compartment_id: str) -> bool | None:
        """The decision without waiting: False for no caller, a cached decision, else None."""
        if caller is None:
            return False
        cached = self._decisions.get((caller.tenancy_id, caller.user_id, getattr(caller, "fingerprint", ""), compartment_id))
        if cached is not None and self.clock() < cached[0]:
            return cached[1]
        return None

    async def __call__(self, caller: Any, compartment_id: str) -> bool:
        if caller is None:
            return False
        key = (caller.tenancy_id, caller.user_id, getattr(caller, "fingerprint", ""), compartment_id)
        cached = self._decisions.get(key)
        if cached is not None and self.clock() < cached[0]:
            return cached[1]
        reading = self._reading.get(key)
        if reading is None or reading.get_loop() is not asyncio.get_running_loop():  # (one left by a loop that is gone)
            reading = asyncio.ensure_future(self._read(key, caller, compartment_id))
            self._reading[key] = reading
        # shielded: a waiter that goes away (its client disconnected) leaves the read running for the others
        return await asyncio.shield(reading)

    async def _read(self, key: tuple[str | None, str, str, str], caller: Any, compartment_id: str) -> bool:
        """One policy read, whose answer is kept until `ttl_s` after it started."""
        started = self.clock()
        try:
            decision = await asyncio.to_thread(self.access.allowed, caller, Verb.USE, MODEL_DEPLOYMENTS, compartment_id)
        finally:
            self._reading.pop(key, None)
        if len(self._decisions) > 50_000:  # many callers must not grow memory without bound
            self._decisions.clear()
        self._decisions[key] = (started + self.ttl_s, decision)
        return decision

"""The one seam every operation passes: may this caller do VERB on FAMILY in this compartment?

Operations map to verbs as in OCI: list -> inspect; get, head, download -> read; predict -> use
(on model deployments); create, update, delete, activate, deactivate, change compartment ->
manage. A refusal is the same 404 NotAuthorizedOrNotFound, with the same message, that the
operation gives for an id that does not exist (OCI answers not-authorized writes with 404
too), so nobody learns that another tenant's resource or compartment exists.

`Authorizer` is what decides (`auth.access_store.PolicyAuthorizer` in a server); `ALLOW_ALL`
is for code without principals (unit tests, the server's own calls).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Protocol

from dockyard.auth.policy import MODEL_DEPLOYMENTS, MODELS, PROJECTS, WORK_REQUESTS, Verb
from dockyard.errors import NotAuthorizedOrNotFound
from dockyard.service.context import Caller

__all__ = ["ALLOW_ALL", "Access", "Authorizer", "Verb", "MODEL_DEPLOYMENTS", "MODELS", "PROJECTS", "WORK_REQUESTS"]

# The family of each resource kind of the metadata store.
FAMILY_OF_KIND = {"project": PROJECTS, "model": MODELS, "modeldeployment": MODEL_DEPLOYMENTS}


class Authorizer(Protocol):
    def allowed(self, caller: Caller, verb: Verb, family: str, compartment_id: str) -> bool: ...

    def registry_hosts_for(self, caller: Caller) -> set[str] | None:
        """Hosts whose configured registry credentials the caller's tenancy may use (C8); None: all."""
        ...


class _AllowAll:
    def allowed(self, caller: Caller, verb: Verb, family: str, compartment_id: str) -> bool:
        return True

    def registry_hosts_for(self, caller: Caller) -> set[str] | None:
        return None


ALLOW_ALL: Authorizer = _AllowAll()


class Access:
    """`require` raises; `allowed` answers. Blocking (the authorizer may read the database)."""

    def __init__(self, authorizer: Authorizer = ALLOW_ALL) -> None:
        self.authorizer = authorizer

    def allowed(self, caller: Caller, verb: Verb, family: str, compartment_id: str) -> bool:
        return self.authorizer.allowed(caller, verb, family, compartment_id)

    def require(self, caller: Caller, verb: Verb, family: str, compartment_id: str, not_found: str) -> None:
        """Raises NotAuthorizedOrNotFound(`not_found`): pass the message the operation gives for
        a missing resource (or compartment), so a refusal reads exactly like it."""
        if not self.authorizer.allowed(caller, verb, family, compartment_id):
            raise NotAuthorizedOrNotFound(not_found)

    def require_compartment(self, caller: Caller, verb: Verb, family: str, compartment_id: str) -> None:
        """For lists and creates: a compartment the caller may not act in reads as an unknown one."""
        self.require(caller, verb, family, compartment_id, compartment_not_found(compartment_id))

    def registry_hosts_for(self, caller: Caller) -> set[str] | None:
        return self.authorizer.registry_hosts_for(caller)


def compartment_not_found(compartment_id: str) -> str:
    return (
        f"compartment {compartment_id} was not found, or you are not allowed to use it; check the id "
        "(your tenancy OCID is your root compartment)"
    )


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

    def known(self, caller: Caller | None, compartment_id: str) -> bool | None:
        """The decision without waiting: False for no caller, a cached decision, else None."""
        if caller is None:
            return False
        cached = self._decisions.get((caller.tenancy_id, caller.user_id, getattr(caller, "fingerprint", ""), compartment_id))
        if cached is not None and self.clock() < cached[0]:
            return cached[1]
        return None

    async def __call__(self, caller: Caller | None, compartment_id: str) -> bool:
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

    async def _read(self, key: tuple[str | None, str, str, str], caller: Caller, compartment_id: str) -> bool:
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

"""Decide what to do about one deployment: `plan(desired, observed, now) -> Plan`.

Pure: no I/O, time passed in. The reconciler executes the plan and calls `plan` again until it
asks for nothing more. Tested as tables in tests/unit/test_plan.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from dockyard.domain.states import DeploymentState, Desired

S = DeploymentState


@dataclass(frozen=True)
class DesiredView:
    """What the user asked for, as the reconciler sees it."""

    deployment_id: str
    state: DeploymentState
    desired: Desired
    spec_hash: str
    replicas: int
    phase_started_at: datetime
    deadline_s: float
    has_open_work: bool  # a work request waits for this deployment to settle


@dataclass(frozen=True)
class ObservedInstance:
    instance_id: str
    spec_hash: str
    alive: bool  # process/container running
    healthy: bool
    exit_detail: str = ""


@dataclass(frozen=True)
class Start:
    count: int


@dataclass(frozen=True)
class Stop:
    instance_id: str
    reason: str


@dataclass(frozen=True)
class Settle:
    """Move the deployment to `state`; close its open work request (failed when `failure`)."""

    state: DeploymentState
    details: str
    failure: bool = False


@dataclass
class Plan:
    starts: int = 0
    stops: list[Stop] = field(default_factory=list)
    settle: Settle | None = None
    current_instances: int = 0

    @property
    def empty(self) -> bool:
        return not self.starts and not self.stops and self.settle is None


def plan(want: DesiredView, observed: list[ObservedInstance], now: datetime) -> Plan:
    result = Plan()
    if want.state is S.DELETED:
        result.stops = [Stop(i.instance_id, "the deployment is deleted") for i in observed]
        return result

    if want.desired in (Desired.DELETED, Desired.INACTIVE):
        reason = "the deployment is being deleted" if want.desired is Desired.DELETED else "the deployment is deactivated"
        result.stops = [Stop(i.instance_id, reason) for i in observed]
        if not observed:
            target = S.DELETED if want.desired is Desired.DELETED else S.INACTIVE
            if want.state is not target:
                result.settle = Settle(target, "Deleted" if target is S.DELETED else "Deactivated; instances stopped")
        return result

    # desired ACTIVE
    current = [i for i in observed if i.spec_hash == want.spec_hash]
    older = [i for i in observed if i.spec_hash != want.spec_hash]
    dead = [i for i in current if not i.alive]
    live = [i for i in current if i.alive]
    healthy = [i for i in live if i.healthy]
    result.current_instances = len(healthy)

    result.stops += [Stop(i.instance_id, f"instance exited: {i.exit_detail or 'no detail'}") for i in dead]
    if len(live) > want.replicas:
        # Scale down: the unhealthy go first, then the most recent (end of the list).
        surplus = sorted(live, key=lambda i: i.healthy)[: len(live) - want.replicas]
        result.stops += [Stop(i.instance_id, "scaled down") for i in surplus]
    elif len(live) < want.replicas:
        result.starts = want.replicas - len(live)

    if len(healthy) >= want.replicas:
        # The new version is fully up: only now may the old one go (never fewer healthy instances).
        result.stops += [Stop(i.instance_id, "replaced by the new configuration") for i in older]
        if want.state is not S.ACTIVE or want.has_open_work:
            result.settle = Settle(S.ACTIVE, f"Active; {want.replicas} of {want.replicas} instances healthy")
        return result

    waited = (now - want.phase_started_at).total_seconds()
    if want.state in (S.CREATING, S.UPDATING) and waited > want.deadline_s:
        reasons = "; ".join(sorted({i.exit_detail for i in current if i.exit_detail})) or "no instance became healthy"
        result.stops = [Stop(i.instance_id, "deadline passed") for i in current]
        result.starts = 0
        result.settle = Settle(
            S.FAILED,
            f"H2: {len(healthy)} of {want.replicas} instances healthy after {int(waited)} s "
            f"(deadline {int(want.deadline_s)} s): {reasons}",
            failure=True,
        )
        return result

    if want.state is S.ACTIVE and not older:
        result.settle = Settle(
            S.NEEDS_ATTENTION, f"{len(healthy)} of {want.replicas} instances healthy; replacing the others"
        )
    return result

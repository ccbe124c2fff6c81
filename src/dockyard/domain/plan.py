"""Decide what to do about one deployment: `plan(desired, observed, now) -> Plan`.

Pure: no I/O, time passed in. The reconciler executes the plan and calls `plan` again until it
asks for nothing more. Tested as tables in tests/unit/test_plan.py.

The rules, in words:
- deleting / deactivating: stop everything; when nothing is left, settle DELETED / INACTIVE;
- failed: stop everything and start nothing (activate, update or delete moves it on);
- active: keep `replicas` live instances of the desired version; replace exited ones and ones
  that keep failing their health probes (after a back-off); remove surplus ones;
- an older version's instances are stopped only once the new version has `replicas` healthy
  instances, so a rolling update never has fewer healthy instances than before;
- CREATING/UPDATING past the health deadline (H2) fails; ACTIVE with too few healthy
  instances is NEEDS_ATTENTION until they recover.
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
    not_before: datetime | None = None  # restart back-off: no new start before this time
    crashes: int = 0  # instances of this version that exited before it ever became ready
    max_crashes: int = 2  # while CREATING/UPDATING, this many crashes fail the operation
    last_failure: str = ""  # the latest failed probe or lost instance of this operation


@dataclass(frozen=True)
class ObservedInstance:
    instance_id: str
    spec_hash: str
    alive: bool  # process/container running
    healthy: bool
    failing: bool = False  # alive but failed its probes `retries` times in a row after start-up
    exit_detail: str = ""


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
    waiting_for_health: bool = False  # instances are starting: probe again soon
    backing_off: bool = False  # a start is due but held back by the restart back-off

    @property
    def empty(self) -> bool:
        return not self.starts and not self.stops and self.settle is None


def plan(want: DesiredView, observed: list[ObservedInstance], now: datetime) -> Plan:
    result = Plan()
    if want.state is S.DELETED:
        result.stops = [Stop(i.instance_id, "the deployment is deleted") for i in observed]
        return result
    if want.desired in (Desired.DELETED, Desired.INACTIVE):
        return _wind_down(want, observed)
    if want.state is S.FAILED:
        # A failed create/activate leaves nothing running until the user activates, updates or
        # deletes it; restarting here would crash-loop (or miss H2 again) forever, unreported.
        result.stops = [Stop(i.instance_id, "the deployment failed") for i in observed]
        return result
    return _keep_running(want, observed, now)


def _wind_down(want: DesiredView, observed: list[ObservedInstance]) -> Plan:
    result = Plan()
    deleting = want.desired is Desired.DELETED
    reason = "the deployment is being deleted" if deleting else "the deployment is deactivated"
    result.stops = [Stop(i.instance_id, reason) for i in observed]
    target = S.DELETED if deleting else S.INACTIVE
    if not observed and (want.state is not target or want.has_open_work):
        result.settle = Settle(target, "Deleted" if deleting else "Deactivated; instances stopped")
    return result


def _keep_running(want: DesiredView, observed: list[ObservedInstance], now: datetime) -> Plan:
    result = Plan()
    current = [i for i in observed if i.spec_hash == want.spec_hash]
    older = [i for i in observed if i.spec_hash != want.spec_hash]
    dead = [i for i in current if not i.alive]
    failing = [i for i in current if i.alive and i.failing]
    live = [i for i in current if i.alive and not i.failing]
    healthy = [i for i in live if i.healthy]

    result.stops += [Stop(i.instance_id, f"instance exited: {i.exit_detail or 'no detail'}") for i in dead]
    if dead and want.state in (S.CREATING, S.UPDATING) and want.crashes + len(dead) >= want.max_crashes:
        # A server that crashes at start will crash again: say why now rather than at the deadline.
        detail = dead[-1].exit_detail or "no detail"
        result.stops += [Stop(i.instance_id, "start failed") for i in current if i.alive]
        result.settle = Settle(S.FAILED, f"start: the instance exited before becoming healthy ({want.crashes + len(dead)} times): {detail}", failure=True)
        return result
    result.stops += [Stop(i.instance_id, f"instance failed its health checks: {i.exit_detail or 'unhealthy'}") for i in failing]
    if len(live) > want.replicas:
        # Scale down: the not-yet-healthy go first, then the most recently listed.
        surplus = sorted(live, key=lambda i: i.healthy)[: len(live) - want.replicas]
        result.stops += [Stop(i.instance_id, "scaled down") for i in surplus]
    elif len(live) < want.replicas:
        if want.not_before is not None and now < want.not_before:
            result.backing_off = True
        else:
            result.starts = want.replicas - len(live)

    if len(healthy) >= want.replicas:
        # The desired version is fully up: only now may the old one go.
        result.stops += [Stop(i.instance_id, "replaced by the new configuration") for i in older]
        if want.state is not S.ACTIVE or want.has_open_work:
            result.settle = Settle(S.ACTIVE, f"Active; {want.replicas} of {want.replicas} instances healthy")
        return result

    result.waiting_for_health = bool(live)
    waited = (now - want.phase_started_at).total_seconds()
    if want.state in (S.CREATING, S.UPDATING) and waited > want.deadline_s:
        # The instances alive now say why; when the last one was just replaced (its probes kept
        # failing), the reason it was replaced does.
        reasons = (
            "; ".join(sorted({i.exit_detail for i in current if i.exit_detail}))
            or want.last_failure
            or "no instance answered its health check with 200"
        )
        result.stops = [Stop(i.instance_id, "health deadline passed") for i in current]
        result.starts = 0
        result.settle = Settle(
            S.FAILED,
            f"health: H2 deadline passed: {len(healthy)} of {want.replicas} instances healthy after {int(waited)} s "
            f"(deadline {int(want.deadline_s)} s): {reasons}",
            failure=True,
        )
        return result

    if want.state is S.ACTIVE and not older:
        result.settle = Settle(S.NEEDS_ATTENTION, f"{len(healthy)} of {want.replicas} instances healthy; replacing the others")
    return result

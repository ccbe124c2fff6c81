"""The reconciler's decisions as tables: desired state + observed instances -> actions."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from dockyard.domain.plan import DesiredView, ObservedInstance, plan
from dockyard.domain.states import DeploymentState as S
from dockyard.domain.states import Desired

NOW = datetime(2026, 1, 1, tzinfo=timezone.utc)


def want(state: S = S.CREATING, desired: Desired = Desired.ACTIVE, replicas: int = 1, waited_s: float = 0, open_work: bool = True, **kw: object) -> DesiredView:
    return DesiredView(
        deployment_id="d", state=state, desired=desired, spec_hash="new", replicas=replicas,
        phase_started_at=NOW - timedelta(seconds=waited_s), deadline_s=600, has_open_work=open_work, **kw,  # type: ignore[arg-type]
    )  # fmt: skip


def inst(name: str, spec: str = "new", alive: bool = True, healthy: bool = True, failing: bool = False, detail: str = "") -> ObservedInstance:
    return ObservedInstance(name, spec, alive, healthy, failing, detail)


def test_create_starts_the_missing_instances() -> None:
    p = plan(want(replicas=3), [inst("a")], NOW)
    assert p.starts == 2 and not p.stops and p.settle is None


def test_create_settles_active_when_all_are_healthy() -> None:
    p = plan(want(replicas=2), [inst("a"), inst("b")], NOW)
    assert p.settle is not None and p.settle.state is S.ACTIVE and not p.settle.failure


def test_waiting_for_health_asks_for_a_quick_reprobe() -> None:
    p = plan(want(), [inst("a", healthy=False)], NOW)
    assert p.empty and p.waiting_for_health


def test_h2_deadline_fails_the_create_with_the_reason() -> None:
    p = plan(want(waited_s=601), [inst("a", healthy=False, detail="GET /health answered 500")], NOW)
    assert p.settle is not None and p.settle.state is S.FAILED and p.settle.failure
    assert "H2" in p.settle.details and "500" in p.settle.details
    assert [s.instance_id for s in p.stops] == ["a"]


def test_a_crash_before_ready_fails_fast_with_the_exit_detail() -> None:
    p = plan(want(crashes=1), [inst("a", alive=False, healthy=False, detail="exit code 3: boom")], NOW)
    assert p.settle is not None and p.settle.state is S.FAILED and "exit code 3: boom" in p.settle.details


def test_a_first_crash_is_retried() -> None:
    p = plan(want(crashes=0, max_crashes=2), [inst("a", alive=False, healthy=False, detail="exit 1")], NOW)
    assert p.settle is None and p.starts == 1 and [s.instance_id for s in p.stops] == ["a"]


def test_restart_back_off_holds_the_start() -> None:
    p = plan(want(state=S.ACTIVE, open_work=False, not_before=NOW + timedelta(seconds=5)), [], NOW)
    assert p.starts == 0 and p.backing_off


def test_active_with_a_failing_instance_replaces_it_and_needs_attention() -> None:
    p = plan(want(state=S.ACTIVE, open_work=False, replicas=2), [inst("a"), inst("b", healthy=False, failing=True)], NOW)
    assert [s.instance_id for s in p.stops] == ["b"] and p.starts == 1
    assert p.settle is not None and p.settle.state is S.NEEDS_ATTENTION


def test_needs_attention_returns_to_active() -> None:
    p = plan(want(state=S.NEEDS_ATTENTION, open_work=False), [inst("a")], NOW)
    assert p.settle is not None and p.settle.state is S.ACTIVE


def test_steady_state_does_nothing() -> None:
    assert plan(want(state=S.ACTIVE, open_work=False, replicas=2), [inst("a"), inst("b")], NOW).empty


def test_scale_down_stops_only_the_surplus() -> None:
    p = plan(want(state=S.UPDATING, replicas=1), [inst("a"), inst("b"), inst("c")], NOW)
    assert len(p.stops) == 2 and p.starts == 0


def test_rolling_update_keeps_old_until_new_is_healthy() -> None:
    old = inst("old", spec="old")
    p = plan(want(state=S.UPDATING), [old], NOW)
    assert p.starts == 1 and not p.stops
    p = plan(want(state=S.UPDATING), [old, inst("new1", healthy=False)], NOW)
    assert p.empty and p.waiting_for_health
    p = plan(want(state=S.UPDATING), [old, inst("new1")], NOW)
    assert [s.instance_id for s in p.stops] == ["old"] and p.settle is not None and p.settle.state is S.ACTIVE


def test_a_failed_rollout_stops_only_new_instances() -> None:
    old = inst("old", spec="old")
    p = plan(want(state=S.UPDATING, waited_s=601), [old, inst("new1", healthy=False)], NOW)
    assert [s.instance_id for s in p.stops] == ["new1"] and p.settle is not None and p.settle.failure


@pytest.mark.parametrize("desired, final", [(Desired.INACTIVE, S.INACTIVE), (Desired.DELETED, S.DELETED)])
def test_wind_down_stops_all_then_settles(desired: Desired, final: S) -> None:
    p = plan(want(state=S.UPDATING, desired=desired), [inst("a"), inst("b", spec="old")], NOW)
    assert len(p.stops) == 2 and p.settle is None
    p = plan(want(state=S.UPDATING, desired=desired), [], NOW)
    assert p.settle is not None and p.settle.state is final


def test_deleted_records_only_clean_up() -> None:
    p = plan(want(state=S.DELETED, desired=Desired.DELETED, open_work=False), [inst("a")], NOW)
    assert [s.instance_id for s in p.stops] == ["a"] and p.settle is None
    assert plan(want(state=S.DELETED, desired=Desired.DELETED, open_work=False), [], NOW).empty


def test_h2_deadline_with_no_instance_left_names_the_last_failure() -> None:
    # The last instance was just replaced for failing its probes: its reason is the answer.
    p = plan(want(waited_s=601, last_failure="health: GET /health answered 500, not 200 (C3)"), [], NOW)
    assert p.settle is not None and p.settle.state is S.FAILED
    assert "GET /health answered 500" in p.settle.details


def test_a_failed_deployment_runs_nothing() -> None:
    p = plan(want(state=S.FAILED, open_work=False), [], NOW)
    assert p.empty
    p = plan(want(state=S.FAILED, open_work=False), [inst("a"), inst("b", alive=False)], NOW)
    assert p.starts == 0 and p.settle is None and [s.instance_id for s in p.stops] == ["a", "b"]

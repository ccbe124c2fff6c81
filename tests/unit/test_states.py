"""The lifecycle table of platform-behaviours.md."""

from __future__ import annotations

import pytest

from dockyard.domain.states import TRANSITIONS, DeploymentState as S, Operation, can_transition, state_after


@pytest.mark.parametrize(
    "current, target",
    [
        (S.CREATING, S.ACTIVE), (S.CREATING, S.FAILED), (S.ACTIVE, S.UPDATING), (S.UPDATING, S.ACTIVE),
        (S.UPDATING, S.INACTIVE), (S.INACTIVE, S.UPDATING), (S.ACTIVE, S.NEEDS_ATTENTION),
        (S.NEEDS_ATTENTION, S.ACTIVE), (S.FAILED, S.DELETING), (S.DELETING, S.DELETED),
    ],
)  # fmt: skip
def test_allowed(current: S, target: S) -> None:
    assert can_transition(current, target)


@pytest.mark.parametrize("current, target", [(S.DELETED, S.ACTIVE), (S.INACTIVE, S.ACTIVE), (S.DELETING, S.ACTIVE), (S.CREATING, S.INACTIVE)])
def test_refused(current: S, target: S) -> None:
    assert not can_transition(current, target)


def test_every_live_state_can_be_deleted_and_deleted_is_final() -> None:
    for state in S:
        if state not in (S.DELETING, S.DELETED):
            assert state_after(Operation.DELETE, state) is S.DELETING
    assert TRANSITIONS[S.DELETED] == frozenset()


@pytest.mark.parametrize(
    "operation, state, after",
    [
        (Operation.ACTIVATE, S.INACTIVE, S.UPDATING), (Operation.ACTIVATE, S.ACTIVE, None),
        (Operation.DEACTIVATE, S.ACTIVE, S.UPDATING), (Operation.DEACTIVATE, S.INACTIVE, None),
        (Operation.UPDATE, S.ACTIVE, S.UPDATING), (Operation.UPDATE, S.INACTIVE, S.INACTIVE),
        (Operation.UPDATE, S.CREATING, None), (Operation.UPDATE, S.DELETED, None),
    ],
)  # fmt: skip
def test_operations(operation: Operation, state: S, after: S | None) -> None:
    assert state_after(operation, state) is after
    if after is not None and after is not state:
        assert can_transition(state, after)

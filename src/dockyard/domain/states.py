"""Lifecycle states with their OCI strings, and the transitions a deployment may take.

The transition table is the single place that says which state may follow which; services and
the reconciler ask it (`check_transition`) instead of comparing states themselves.
"""

from __future__ import annotations

import enum


class DeploymentState(str, enum.Enum):
    CREATING = "CREATING"
    ACTIVE = "ACTIVE"
    UPDATING = "UPDATING"
    INACTIVE = "INACTIVE"
    NEEDS_ATTENTION = "NEEDS_ATTENTION"
    FAILED = "FAILED"
    DELETING = "DELETING"
    DELETED = "DELETED"


class ModelState(str, enum.Enum):
    ACTIVE = "ACTIVE"
    INACTIVE = "INACTIVE"
    FAILED = "FAILED"
    DELETED = "DELETED"


class ProjectState(str, enum.Enum):
    ACTIVE = "ACTIVE"
    DELETING = "DELETING"
    DELETED = "DELETED"


class WorkRequestStatus(str, enum.Enum):
    ACCEPTED = "ACCEPTED"
    IN_PROGRESS = "IN_PROGRESS"
    FAILED = "FAILED"
    SUCCEEDED = "SUCCEEDED"
    CANCELING = "CANCELING"
    CANCELED = "CANCELED"

    @property
    def finished(self) -> bool:
        return self in (WorkRequestStatus.FAILED, WorkRequestStatus.SUCCEEDED, WorkRequestStatus.CANCELED)


class Operation(str, enum.Enum):
    """Work-request operation types (the OCI strings)."""

    CREATE = "MODEL_DEPLOYMENT_CREATE"
    UPDATE = "MODEL_DEPLOYMENT_UPDATE"
    ACTIVATE = "MODEL_DEPLOYMENT_ACTIVATE"
    DEACTIVATE = "MODEL_DEPLOYMENT_DEACTIVATE"
    DELETE = "MODEL_DEPLOYMENT_DELETE"
    PROJECT_DELETE = "PROJECT_DELETE"


class Desired(str, enum.Enum):
    """What the user asked a deployment to be; the reconciler converges towards it."""

    ACTIVE = "ACTIVE"
    INACTIVE = "INACTIVE"
    DELETED = "DELETED"


S = DeploymentState

# state -> states it may move to. DELETING is reachable from every live state (a delete
# cancels whatever was in progress); DELETED is final.
TRANSITIONS: dict[DeploymentState, frozenset[DeploymentState]] = {
    S.CREATING: frozenset({S.ACTIVE, S.FAILED, S.NEEDS_ATTENTION, S.DELETING}),
    S.ACTIVE: frozenset({S.UPDATING, S.NEEDS_ATTENTION, S.DELETING}),
    S.NEEDS_ATTENTION: frozenset({S.ACTIVE, S.UPDATING, S.FAILED, S.DELETING}),
    S.UPDATING: frozenset({S.ACTIVE, S.INACTIVE, S.NEEDS_ATTENTION, S.FAILED, S.DELETING}),
    S.INACTIVE: frozenset({S.UPDATING, S.DELETING}),
    S.FAILED: frozenset({S.UPDATING, S.DELETING}),
    S.DELETING: frozenset({S.DELETED}),
    S.DELETED: frozenset(),
}

# Which user operations each state accepts, and what the state becomes at once.
# update of INACTIVE/FAILED only stores the new configuration (it takes effect on activate).
ACCEPTS: dict[Operation, dict[DeploymentState, DeploymentState]] = {
    Operation.UPDATE: {
        S.ACTIVE: S.UPDATING,
        S.NEEDS_ATTENTION: S.UPDATING,
        S.INACTIVE: S.INACTIVE,
        S.FAILED: S.FAILED,
    },
    Operation.ACTIVATE: {S.INACTIVE: S.UPDATING, S.FAILED: S.UPDATING},
    Operation.DEACTIVATE: {S.ACTIVE: S.UPDATING, S.NEEDS_ATTENTION: S.UPDATING},
    Operation.DELETE: {
        s: S.DELETING for s in (S.CREATING, S.ACTIVE, S.NEEDS_ATTENTION, S.UPDATING, S.INACTIVE, S.FAILED)
    },
}

# States in which waiting will bring the deployment to a state that accepts the operation:
# answered with IncorrectState (the SDK retries), everything else with Conflict.
TRANSIENT = frozenset({S.CREATING, S.UPDATING, S.DELETING})


def can_transition(current: DeploymentState, target: DeploymentState) -> bool:
    return current == target or target in TRANSITIONS[current]


def state_after(operation: Operation, current: DeploymentState) -> DeploymentState | None:
    """The state a deployment enters when `operation` is accepted, or None when refused."""
    return ACCEPTS[operation].get(current)

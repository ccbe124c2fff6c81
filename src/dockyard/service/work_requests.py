"""Work requests: how long-running operations report progress, logs and errors.

Clients (SDK waiters, the CLI's --wait-for-state, ADS) poll these until SUCCEEDED or FAILED and
show the last log line, so every phase writes a log line a user can read, percentComplete is
always a number, and a failure writes both an error and a final log line with the reason.
"""

from __future__ import annotations

import contextlib
from typing import Any

from sqlalchemy import Connection

from dockyard.domain import ids
from dockyard.domain.states import Operation, WorkRequestStatus
from dockyard.errors import NotAuthorizedOrNotFound
from dockyard.service.access import WORK_REQUESTS, Access, Verb
from dockyard.service.context import Caller
from dockyard.service.resources import check_id
from dockyard.settings import Settings
from dockyard.store.metadata import Entry, SqlMetadataStore, WorkRequestRecord, now_iso

ENTITY_TYPES = {"modeldeployment": "modelDeployment", "project": "project", "model": "model"}
ENTITY_PATHS = {"modeldeployment": "modelDeployments", "project": "projects", "model": "models"}
ACTIONS = {
    Operation.CREATE: "CREATED",
    Operation.UPDATE: "UPDATED",
    Operation.ACTIVATE: "UPDATED",
    Operation.DEACTIVATE: "UPDATED",
    Operation.DELETE: "DELETED",
    Operation.PROJECT_DELETE: "DELETED",
}


class WorkRequests:
    def __init__(self, store: SqlMetadataStore, settings: Settings, access: Access | None = None) -> None:
        self.store = store
        self.settings = settings
        self.access = access or Access()

    def new_id(self) -> str:
        return ids.new_ocid(ids.WORK_REQUEST, self.settings.realm, self.settings.region)

    def open(
        self,
        operation: Operation,
        kind: str,
        resource_id: str,
        compartment_id: str,
        message: str,
        tx: Connection,
        work_request_id: str | None = None,
    ) -> WorkRequestRecord:
        now = now_iso()
        wr = WorkRequestRecord(
            id=work_request_id or self.new_id(),
            compartment_id=compartment_id,
            operation_type=operation.value,
            status=WorkRequestStatus.ACCEPTED.value,
            percent_complete=0.0,
            resource_id=resource_id,
            time_accepted=now,
            body={
                "resources": [
                    {
                        "actionType": "IN_PROGRESS",
                        "entityType": ENTITY_TYPES[kind],
                        "identifier": resource_id,
                        "entityUri": f"/20190101/{ENTITY_PATHS[kind]}/{resource_id}",
                    }
                ]
            },
        )
        self.store.insert_work_request(wr, tx)
        self.store.add_entry(wr.id, Entry("log", message, now), tx)
        return wr

    def get(self, work_request_id: str, caller: Caller) -> WorkRequestRecord:
        """The work request if `caller` may read work requests where its resource is now (a
        work request follows its resource when that changes compartment); else the 404 of an
        unknown id."""
        check_id(work_request_id, ids.WORK_REQUEST, "work request")
        wr = self.store.get_work_request(work_request_id)
        missing = f"work request {work_request_id} was not found; check the id"
        if wr is None:
            raise NotAuthorizedOrNotFound(missing)
        self.access.require(caller, Verb.READ, WORK_REQUESTS, self.compartment_of(wr), missing)
        return wr

    def compartment_of(self, wr: WorkRequestRecord) -> str:
        resource = self.store.get(wr.resource_id) if wr.resource_id else None
        return str(resource.body.get("compartmentId") or wr.compartment_id) if resource is not None else wr.compartment_id

    def require_list(self, caller: Caller, compartment_id: str) -> None:
        """ListWorkRequests in a compartment the caller may not inspect reads as an unknown one."""
        self.access.require_compartment(caller, Verb.INSPECT, WORK_REQUESTS, compartment_id)

    def log(self, work_request_id: str, message: str, percent: float | None = None, tx: Connection | None = None) -> None:
        """Add a progress line, unless the work request has finished: its last line is the
        outcome clients show, and a late progress line must not replace it."""
        with self.store.transaction() if tx is None else contextlib.nullcontext(tx) as conn:
            wr = self.store.get_work_request(work_request_id, conn, for_update=True)
            if wr is None or WorkRequestStatus(wr.status).finished:
                return
            now = now_iso()
            self.store.add_entry(work_request_id, Entry("log", message, now), conn)
            values: dict[str, Any] = {"status": WorkRequestStatus.IN_PROGRESS.value}
            if wr.time_started is None:
                values["time_started"] = now
            if percent is not None:
                values["percent_complete"] = max(wr.percent_complete, min(percent, 99.0))
            self.store.update_work_request_if_open(work_request_id, conn, **values)

    def finish(
        self,
        work_request_id: str,
        succeeded: bool,
        message: str,
        error_code: str = "DeploymentFailed",
        tx: Connection | None = None,
    ) -> None:
        with self.store.transaction() if tx is None else contextlib.nullcontext(tx) as conn:
            self._finish(work_request_id, succeeded, message, error_code, conn)

    def _finish(self, work_request_id: str, succeeded: bool, message: str, error_code: str, tx: Connection) -> None:
        wr = self.store.get_work_request(work_request_id, tx, for_update=True)
        if wr is None or WorkRequestStatus(wr.status).finished:
            return
        now = now_iso()
        if not succeeded:
            self.store.add_entry(work_request_id, Entry("error", message, now, code=error_code), tx)
        self.store.add_entry(work_request_id, Entry("log", message, now), tx)
        body = dict(wr.body)
        operation = Operation(wr.operation_type)
        body["resources"] = [
            dict(r, actionType=ACTIONS[operation] if succeeded else "RELATED") for r in body.get("resources", [])
        ]
        self.store.update_work_request(
            work_request_id,
            tx,
            status=(WorkRequestStatus.SUCCEEDED if succeeded else WorkRequestStatus.FAILED).value,
            percent_complete=100.0,
            time_started=wr.time_started or now,
            time_finished=now,
            body=body,
        )

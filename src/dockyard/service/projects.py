"""Projects: the folders models and deployments live in."""

from __future__ import annotations

from typing import Any

from dockyard.domain import ids
from dockyard.domain.states import Operation, ProjectState
from dockyard.errors import Conflict
from dockyard.schemas.catalog import CreateProjectDetails, UpdateProjectDetails
from dockyard.schemas.common import ChangeCompartmentDetails
from dockyard.service.access import Access, Verb
from dockyard.service.context import Caller, RetryToken
from dockyard.service.resources import ListResult, ResourceService
from dockyard.service.work_requests import WorkRequests
from dockyard.settings import Settings
from dockyard.store.metadata import Record, SqlMetadataStore, now_iso


class ProjectService(ResourceService):
    kind, label, ocid_type = "project", "project", ids.PROJECT

    def __init__(self, store: SqlMetadataStore, settings: Settings, work_requests: WorkRequests, access: Access | None = None) -> None:
        super().__init__(store, settings, access)
        self.work_requests = work_requests

    def create(self, details: CreateProjectDetails, caller: Caller, token: RetryToken | None) -> Record:
        self.require_in_compartment(caller, Verb.MANAGE, details.compartment_id)

        def create(tx: Any) -> tuple[Record, None]:
            now = now_iso()
            body = {
                "id": self.new_id(),
                "timeCreated": now,
                "displayName": details.display_name or f"project{now[:19].replace('-', '').replace(':', '').replace('T', '')}",
                "description": details.description,
                "compartmentId": details.compartment_id,
                "createdBy": caller.user_id,
                "lifecycleState": ProjectState.ACTIVE.value,
                "freeformTags": details.freeform_tags or {},
                "definedTags": details.defined_tags or {},
                "systemTags": {},
            }
            return self.store.insert(Record(id=body["id"], kind=self.kind, body=body), tx), None

        return self.create_once("CreateProject", token, create, caller)[0]

    def get(self, project_id: str, caller: Caller) -> Record:
        return self.authorized(caller, project_id, Verb.READ)

    def list(self, query: dict[str, Any], caller: Caller) -> ListResult:
        filters = {k: query.get(k) for k in ("compartmentId", "id", "displayName", "lifecycleState", "createdBy")}
        return self.list_records(
            caller,
            filters, query.get("limit"), query.get("page"), query.get("sortBy"), query.get("sortOrder"), lambda r: r.body
        )

    def update(self, project_id: str, details: UpdateProjectDetails, if_match: str | None, caller: Caller) -> Record:
        self.authorized(caller, project_id, Verb.MANAGE)
        changes = details.wire()

        def change(record: Record) -> Record:
            if record.state == ProjectState.DELETED.value:
                raise Conflict(f"project {project_id} is DELETED and cannot be updated")
            record.body.update(changes)
            return record

        return self.store.mutate(project_id, self.kind, self.label, change, if_match)

    def change_compartment(self, project_id: str, details: ChangeCompartmentDetails, if_match: str | None, caller: Caller) -> None:
        self.authorized(caller, project_id, Verb.MANAGE)
        self.require_in_compartment(caller, Verb.MANAGE, details.compartment_id)

        def change(record: Record) -> Record:
            record.body["compartmentId"] = details.compartment_id
            return record

        self.store.mutate(project_id, self.kind, self.label, change, if_match)

    def delete(self, project_id: str, if_match: str | None, caller: Caller) -> str:
        """Delete an empty project; returns the work request id (it finishes at once)."""
        record = self.authorized(caller, project_id, Verb.MANAGE)
        if record.state == ProjectState.DELETED.value:
            done = self.store.list_work_requests({"resourceId": project_id}, "timeAccepted", True, 0, 1).items
            if done:
                return done[0].id
        live_models = self.store.count("model", {"projectId": project_id}, exclude_states=("DELETED",))
        live_deployments = self.store.count("modeldeployment", {"projectId": project_id}, exclude_states=("DELETED",))
        if live_models or live_deployments:
            raise Conflict(
                f"project {project_id} still holds {live_models} model(s) and {live_deployments} deployment(s); "
                "delete them first"
            )
        with self.store.transaction() as tx:

            def change(current: Record) -> Record:
                current.body["lifecycleState"] = ProjectState.DELETED.value
                return current

            self.store.mutate(project_id, self.kind, self.label, change, if_match, tx)
            wr = self.work_requests.open(
                Operation.PROJECT_DELETE, "project", project_id, record.body["compartmentId"], "Project delete accepted", tx
            )
            self.work_requests.finish(wr.id, True, "Project deleted", tx=tx)
        return wr.id

"""Models of the catalog, their artifacts and provenance."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from dockyard.domain import ids
from dockyard.domain.states import ModelState, ProjectState
from dockyard.errors import Conflict, NoEtagMatch, NotAuthorizedOrNotFound, RelatedResourceNotFound
from dockyard.schemas.catalog import CreateModelDetails, ModelProvenanceDetails, UpdateModelDetails
from dockyard.schemas.common import ChangeCompartmentDetails
from dockyard.service.access import Access, Verb
from dockyard.service.context import Caller, RetryToken
from dockyard.service.resources import ListResult, ResourceService, check_id
from dockyard.settings import Settings
from dockyard.store.artifacts import FilesystemArtifactStore
from dockyard.store.metadata import ArtifactRecord, Record, SqlMetadataStore, new_etag, now_iso
from dockyard.store.zipcheck import inspect_zip

SUMMARY_FIELDS = (
    "compartmentId",
    "projectId",
    "id",
    "displayName",
    "createdBy",
    "timeCreated",
    "lifecycleState",
    "lifecycleDetails",
    "modelVersionSetId",
    "modelVersionSetName",
    "versionId",
    "versionLabel",
    "category",
    "isModelByReference",
    "freeformTags",
    "definedTags",
)
PROVENANCE_FIELDS = ("repositoryUrl", "gitBranch", "gitCommit", "scriptDir", "trainingScript", "trainingId")


class ModelService(ResourceService):
    kind, label, ocid_type = "model", "model", ids.MODEL
    sort_fields = ("timeCreated", "displayName", "lifecycleState")

    def __init__(self, store: SqlMetadataStore, settings: Settings, blobs: FilesystemArtifactStore, access: Access | None = None) -> None:
        super().__init__(store, settings, access)
        self.blobs = blobs

    # --- the model record ------------------------------------------------------------------------

    def create(self, details: CreateModelDetails, caller: Caller, token: RetryToken | None) -> Record:
        self.require_in_compartment(caller, Verb.MANAGE, details.compartment_id)
        check_id(details.project_id, ids.PROJECT, "project")
        project = self.store.get(details.project_id, "project")
        if project is None or project.state != ProjectState.ACTIVE.value or not self.readable(caller, project):
            raise RelatedResourceNotFound(
                f"projectId {details.project_id} is not an ACTIVE project; create the project first or check the id"
            )

        def create(tx: Any) -> tuple[Record, None]:
            now = now_iso()
            sent = details.wire()
            body = {
                "id": self.new_id(),
                "compartmentId": details.compartment_id,
                "projectId": details.project_id,
                "displayName": details.display_name or f"model{now[:19].replace('-', '').replace(':', '').replace('T', '')}",
                "description": details.description,
                "lifecycleState": ModelState.ACTIVE.value,
                "lifecycleDetails": "",
                "timeCreated": now,
                "createdBy": caller.user_id,
                "freeformTags": details.freeform_tags or {},
                "definedTags": details.defined_tags or {},
                "customMetadataList": sent.get("customMetadataList", []),
                "definedMetadataList": sent.get("definedMetadataList", []),
                "inputSchema": details.input_schema,
                "outputSchema": details.output_schema,
                "modelVersionSetId": details.model_version_set_id,
                "modelVersionSetName": None,
                "versionId": None,
                "versionLabel": details.version_label,
                "category": "USER",
                "isModelByReference": False,
                "retentionSetting": details.retention_setting,
                "backupSetting": details.backup_setting,
            }
            return self.store.insert(Record(id=body["id"], kind=self.kind, body=body), tx), None

        return self.create_once("CreateModel", token, create, caller)[0]

    def get(self, model_id: str, caller: Caller) -> Record:
        return self.authorized(caller, model_id, Verb.READ)

    def list(self, query: dict[str, Any], caller: Caller) -> ListResult:
        filters = {k: query.get(k) for k in ("compartmentId", "projectId", "id", "displayName", "lifecycleState", "createdBy")}
        return self.list_records(
            caller,
            filters,
            query.get("limit"),
            query.get("page"),
            query.get("sortBy"),
            query.get("sortOrder"),
            lambda r: {k: r.body.get(k) for k in SUMMARY_FIELDS},
        )

    def update(self, model_id: str, details: UpdateModelDetails, if_match: str | None, caller: Caller) -> Record:
        self.authorized(caller, model_id, Verb.MANAGE)
        changes = details.wire()

        def change(record: Record) -> Record:
            if record.state == ModelState.DELETED.value:
                raise Conflict(f"model {model_id} is DELETED and cannot be updated")
            record.body.update(changes)
            return record

        return self.store.mutate(model_id, self.kind, self.label, change, if_match)

    def set_active(self, model_id: str, active: bool, if_match: str | None, caller: Caller) -> Record:
        self.authorized(caller, model_id, Verb.MANAGE)
        target = ModelState.ACTIVE if active else ModelState.INACTIVE

        def change(record: Record) -> Record | None:
            if record.state == target.value:
                raise Conflict(f"model {model_id} is already {target.value}")
            if record.state not in (ModelState.ACTIVE.value, ModelState.INACTIVE.value):
                raise Conflict(f"model {model_id} is {record.state}; only ACTIVE and INACTIVE models can be switched")
            if not active:
                self._refuse_if_deployed(model_id, "deactivated")
            record.body["lifecycleState"] = target.value
            return record

        return self.store.mutate(model_id, self.kind, self.label, change, if_match)

    def change_compartment(self, model_id: str, details: ChangeCompartmentDetails, if_match: str | None, caller: Caller) -> None:
        self.authorized(caller, model_id, Verb.MANAGE)
        self.require_in_compartment(caller, Verb.MANAGE, details.compartment_id)

        def change(record: Record) -> Record:
            record.body["compartmentId"] = details.compartment_id
            return record

        self.store.mutate(model_id, self.kind, self.label, change, if_match)

    def delete(self, model_id: str, if_match: str | None, caller: Caller) -> None:
        record = self.authorized(caller, model_id, Verb.MANAGE)
        if record.state == ModelState.DELETED.value:
            return
        self._refuse_if_deployed(model_id, "deleted")

        def change(current: Record) -> Record:
            current.body["lifecycleState"] = ModelState.DELETED.value
            return current

        self.store.mutate(model_id, self.kind, self.label, change, if_match)

    def _refuse_if_deployed(self, model_id: str, verb: str) -> None:
        users = self.store.count("modeldeployment", {"modelId": model_id}, exclude_states=("DELETED",))
        if users:
            raise Conflict(
                f"model {model_id} is used by {users} deployment(s) and cannot be {verb}; "
                "delete those deployments or point them at another model first"
            )

    # --- artifacts ------------------------------------------------------------------------------

    async def put_artifact(
        self, model_id: str, chunks: AsyncIterator[bytes], content_disposition: str | None, if_match: str | None, caller: Caller
    ) -> ArtifactRecord:
        """Store a new artifact for the model; the previous one stays until this one is complete.

        The zip-safety rules (`dockyard.store.zipcheck`) run on the stored bytes before they are
        published, so a hostile or broken zip is refused at upload with the entry and the rule
        named (400), not later when a deployment unpacks it; the unpacker checks again anyway.
        Only zips are accepted: dockyard has no model-by-reference (its JSON artifact) and
        deployments can only mount a zip's tree.
        """
        model = self.authorized(caller, model_id, Verb.MANAGE)
        if model.state == ModelState.DELETED.value:
            raise Conflict(f"model {model_id} is DELETED; create a new model to upload an artifact")
        existing = self.store.get_artifact(model_id)
        if if_match is not None and (existing is None or existing.etag != if_match) and if_match != model.etag:
            raise_no_match(model_id, if_match)
        blob = await self.blobs.write(chunks, self.settings.max_artifact_bytes, check=inspect_zip)
        artifact = ArtifactRecord(
            model_id=model_id,
            sha256=blob.sha256,
            md5_b64=blob.md5_b64,
            size=blob.size,
            content_disposition=content_disposition or f'attachment; filename="{model_id}.zip"',
            time_created=now_iso(),
            etag=new_etag(),
        )
        self.store.put_artifact(artifact)
        return artifact

    def get_artifact(self, model_id: str, caller: Caller) -> ArtifactRecord:
        model = self.authorized(caller, model_id, Verb.READ)
        artifact = self.store.get_artifact(model_id)
        if artifact is None or model.state == ModelState.DELETED.value:
            raise NotAuthorizedOrNotFound(
                f"model {model_id} has no artifact; upload one with CreateModelArtifact "
                f"(POST /20190101/models/{model_id}/artifact)"
            )
        return artifact

    # --- provenance -----------------------------------------------------------------------------

    def put_provenance(
        self, model_id: str, details: ModelProvenanceDetails, replace_only: bool, caller: Caller
    ) -> tuple[dict[str, Any], str]:
        self.authorized(caller, model_id, Verb.MANAGE)
        if replace_only and self.store.get_provenance(model_id) is None:
            raise NotAuthorizedOrNotFound(f"model {model_id} has no provenance yet; create it with POST first")
        body = {k: None for k in PROVENANCE_FIELDS} | details.wire()
        return body, self.store.put_provenance(model_id, body)

    def get_provenance(self, model_id: str, caller: Caller) -> tuple[dict[str, Any], str]:
        self.authorized(caller, model_id, Verb.READ)
        found = self.store.get_provenance(model_id)
        if found is None:
            raise NotAuthorizedOrNotFound(f"model {model_id} has no provenance; create it with CreateModelProvenance")
        return found


def raise_no_match(resource_id: str, if_match: str) -> None:
    raise NoEtagMatch(f"if-match {if_match} does not match the current etag of {resource_id}; GET it and retry")

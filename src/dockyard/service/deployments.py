"""Model deployments: accept, validate and record what the user asks for.

Every change is stored as desired state in one transaction with its work request, then the
reconciler is woken to converge the running instances towards it. Nothing here runs containers.
"""

from __future__ import annotations

import zipfile
from collections.abc import Callable
from typing import Any, Protocol

from sqlalchemy import Connection

from dockyard.domain import deployments as rules
from dockyard.domain import ids
from dockyard.domain.merge import merge_deployment_update
from dockyard.domain.states import TRANSIENT, DeploymentState, Desired, ModelState, Operation, ProjectState, state_after
from dockyard.domain.validation import raise_if_any
from dockyard.errors import Conflict, IncorrectState, InvalidParameter, RelatedResourceNotFound
from dockyard.schemas.common import ChangeCompartmentDetails
from dockyard.schemas.deployments import CreateModelDeploymentDetails, UpdateModelDeploymentDetails
from dockyard.service.access import Access, Verb
from dockyard.service.context import Caller, RetryToken
from dockyard.service.resources import ListResult, ResourceService
from dockyard.service.work_requests import WorkRequests
from dockyard.settings import Settings
from dockyard.store.artifacts import FilesystemArtifactStore
from dockyard.store.metadata import Record, SqlMetadataStore, now_iso


class ImageResolver(Protocol):
    """Checks an image can be run and pins it (D2): returns the digest to record.

    `registry_hosts` are the registries whose configured credentials the caller's tenancy may
    use (C8); None: all of them."""

    def resolve(self, image: str, digest: str | None, registry_hosts: set[str] | None = None) -> str | None: ...


class PassThroughResolver:
    """Records the digest the user gave, if any, without asking a registry."""

    def resolve(self, image: str, digest: str | None, registry_hosts: set[str] | None = None) -> str | None:
        return digest


def deployment_view(record: Record, summary: bool = False) -> dict[str, Any]:
    """The wire document of a deployment; summaries (lists) omit lifecycleDetails."""
    body = dict(record.body)
    env = body["modelDeploymentConfigurationDetails"].get("environmentConfigurationDetails") or {}
    if env.get("environmentConfigurationType") == "OCIR_CONTAINER":
        config = dict(body["modelDeploymentConfigurationDetails"])
        config["environmentConfigurationDetails"] = env | {"defaultEnvironmentVariables": {"MODEL_DEPLOYMENT_OCID": record.id}}
        body["modelDeploymentConfigurationDetails"] = config
    if summary:
        body.pop("lifecycleDetails", None)
    return body


class DeploymentService(ResourceService):
    kind, label, ocid_type = "modeldeployment", "model deployment", ids.MODEL_DEPLOYMENT

    def __init__(
        self,
        store: SqlMetadataStore,
        settings: Settings,
        work_requests: WorkRequests,
        blobs: FilesystemArtifactStore,
        resolver: ImageResolver | None = None,
        on_change: Callable[[str], None] = lambda _id: None,
        access: Access | None = None,
    ) -> None:
        super().__init__(store, settings, access)
        self.work_requests = work_requests
        self.blobs = blobs
        self.resolver = resolver or PassThroughResolver()
        self.on_change = on_change

    # --- create ---------------------------------------------------------------------------------

    def create(self, details: CreateModelDeploymentDetails, caller: Caller, token: RetryToken | None) -> tuple[Record, str]:
        self.require_in_compartment(caller, Verb.MANAGE, details.compartment_id)
        project = self.store.get(details.project_id, "project") if ids.ocid_type(details.project_id) == ids.PROJECT else None
        if project is None or project.state != ProjectState.ACTIVE.value or not self.readable(caller, project):
            raise RelatedResourceNotFound(
                f"projectId {details.project_id} is not an ACTIVE project; create the project first or check the id"
            )
        config = rules.complete(details.model_deployment_configuration_details.wire())
        raise_if_any(rules.validate(config, self.settings.max_instances))
        artifact_sha = self._check_model(config, caller)
        self._pin_image(config, caller)

        def create(tx: Connection) -> tuple[Record, str]:
            now = now_iso()
            deployment_id = self.new_id()
            wr_id = self.work_requests.new_id()
            body = {
                "id": deployment_id,
                "timeCreated": now,
                "displayName": details.display_name or f"modeldeployment{now[:19].replace('-', '').replace(':', '').replace('T', '')}",
                "description": details.description,
                "projectId": details.project_id,
                "createdBy": caller.user_id,
                "compartmentId": details.compartment_id,
                "modelDeploymentConfigurationDetails": config,
                "categoryLogDetails": details.category_log_details.wire() if details.category_log_details else None,
                "modelDeploymentUrl": f"{self.settings.resolved_public_url}/{deployment_id}",
                "modelDeploymentSystemData": {"systemInfraType": "INSTANCE_POOL", "currentInstanceCount": 0},
                "lifecycleState": DeploymentState.CREATING.value,
                "lifecycleDetails": "Accepted; waiting to start instances",
                "freeformTags": details.freeform_tags or {},
                "definedTags": details.defined_tags or {},
            }
            internal = self._internal(config, artifact_sha, Desired.ACTIVE, Operation.CREATE, wr_id, generation=1)
            record = self.store.insert(Record(id=deployment_id, kind=self.kind, body=body, internal=internal), tx)
            self.work_requests.open(Operation.CREATE, self.kind, deployment_id, details.compartment_id, "Create accepted", tx, wr_id)
            return record, wr_id

        record, wr_id = self.create_once("CreateModelDeployment", token, create, caller)
        self.on_change(record.id)
        assert wr_id is not None
        return record, wr_id

    # --- read -----------------------------------------------------------------------------------

    def get(self, deployment_id: str, caller: Caller) -> Record:
        return self.authorized(caller, deployment_id, Verb.READ)

    def list(self, query: dict[str, Any], caller: Caller) -> ListResult:
        filters = {k: query.get(k) for k in ("compartmentId", "projectId", "id", "displayName", "lifecycleState", "createdBy")}
        return self.list_records(
            caller,
            filters,
            query.get("limit"),
            query.get("page"),
            query.get("sortBy"),
            query.get("sortOrder"),
            lambda r: deployment_view(r, summary=True),
        )

    # --- changes ----------------------------------------------------------------------------------

    def update(self, deployment_id: str, details: UpdateModelDeploymentDetails, if_match: str | None, caller: Caller) -> str:
        self.authorized(caller, deployment_id, Verb.MANAGE)
        update = details.wire()
        prepared: dict[str, Any] = {}

        def change(record: Record, wr_id: str) -> Record:
            state = DeploymentState(record.state)
            target = self._accept(Operation.UPDATE, record)
            merged = merge_deployment_update(record.body, update)
            config = merged["modelDeploymentConfigurationDetails"]
            raise_if_any(rules.validate(config, self.settings.max_instances))
            old_config = record.body["modelDeploymentConfigurationDetails"]
            artifact_sha = record.internal.get("artifactSha256")
            if rules.model_id(config) != rules.model_id(old_config):
                artifact_sha = self._check_model(config, caller)
            if rules.environment(config) != rules.environment(old_config):
                self._pin_image(config, caller)
            runs_differently = rules.spec_hash(config, artifact_sha) != record.internal.get("specHash") or rules.replicas(
                config
            ) != rules.replicas(old_config)
            record.body = merged
            prepared["apply_now"] = runs_differently and state in (DeploymentState.ACTIVE, DeploymentState.NEEDS_ATTENTION)
            internal = record.internal | {
                "modelId": rules.model_id(config),
                "artifactSha256": artifact_sha,
                "specHash": rules.spec_hash(config, artifact_sha),
                "replicas": rules.replicas(config),
            }
            if prepared["apply_now"]:
                record.body["lifecycleState"] = target.value
                record.body["lifecycleDetails"] = "Update accepted; rolling instances to the new configuration"
                internal |= {
                    "generation": int(record.internal.get("generation", 1)) + 1,
                    "operation": Operation.UPDATE.value,
                    "workRequestId": wr_id,
                    "phaseStartedAt": now_iso(),
                    "previous": {"config": old_config, "artifactSha256": record.internal.get("artifactSha256")},
                }
            record.internal = internal
            return record

        wr_id = self._change(deployment_id, Operation.UPDATE, change, if_match, "Update accepted")
        if prepared.get("apply_now"):
            self.on_change(deployment_id)
        else:
            self.work_requests.finish(wr_id, True, "Update stored; nothing that runs changed, so no instance was replaced")
        return wr_id

    def activate(self, deployment_id: str, if_match: str | None, caller: Caller) -> str:
        self.authorized(caller, deployment_id, Verb.MANAGE)
        return self._set_desired(deployment_id, Operation.ACTIVATE, Desired.ACTIVE, if_match, "Activation accepted; starting instances")

    def deactivate(self, deployment_id: str, if_match: str | None, caller: Caller) -> str:
        self.authorized(caller, deployment_id, Verb.MANAGE)
        return self._set_desired(deployment_id, Operation.DEACTIVATE, Desired.INACTIVE, if_match, "Deactivation accepted; stopping instances")

    def delete(self, deployment_id: str, if_match: str | None, caller: Caller) -> str:
        # Deletes carry no retry token and the SDK retries them: a repeated (or concurrent) delete
        # is answered with the work request of the first one.
        record = self.authorized(caller, deployment_id, Verb.MANAGE)
        if record.state in (DeploymentState.DELETING.value, DeploymentState.DELETED.value):
            return str(record.internal.get("deleteWorkRequestId") or record.internal.get("workRequestId"))
        try:
            return self._set_desired(deployment_id, Operation.DELETE, Desired.DELETED, if_match, "Deletion accepted; stopping instances")
        except (IncorrectState, Conflict):
            # A concurrent delete got there first (the state is now DELETING or DELETED).
            record = self.get_record(deployment_id)
            if record.state in (DeploymentState.DELETING.value, DeploymentState.DELETED.value) and record.internal.get("deleteWorkRequestId"):
                return str(record.internal["deleteWorkRequestId"])
            raise

    def change_compartment(self, deployment_id: str, details: ChangeCompartmentDetails, if_match: str | None, caller: Caller) -> None:
        self.authorized(caller, deployment_id, Verb.MANAGE)
        self.require_in_compartment(caller, Verb.MANAGE, details.compartment_id)

        def change(record: Record) -> Record:
            if record.state == DeploymentState.DELETED.value:
                raise Conflict(f"model deployment {deployment_id} is DELETED and cannot be moved")
            record.body["compartmentId"] = details.compartment_id
            return record

        self.store.mutate(deployment_id, self.kind, self.label, change, if_match)

    # --- helpers ----------------------------------------------------------------------------------

    def _set_desired(self, deployment_id: str, operation: Operation, desired: Desired, if_match: str | None, message: str) -> str:
        self.get_record(deployment_id)

        def change(record: Record, wr_id: str) -> Record:
            target = self._accept(operation, record)
            record.body["lifecycleState"] = target.value
            record.body["lifecycleDetails"] = message
            record.internal |= {
                "desired": desired.value,
                "operation": operation.value,
                "workRequestId": wr_id,
                "phaseStartedAt": now_iso(),
            }
            record.internal.pop("previous", None)
            if operation is Operation.DELETE:
                record.internal["deleteWorkRequestId"] = wr_id
            return record

        wr_id = self._change(deployment_id, operation, change, if_match, message)
        self.on_change(deployment_id)
        return wr_id

    def _change(
        self,
        deployment_id: str,
        operation: Operation,
        change: Callable[[Record, str], Record],
        if_match: str | None,
        message: str,
    ) -> str:
        """Apply `change` and open its work request in one transaction; the superseded work
        request (a delete during a create, say) is closed as failed with the reason."""
        wr_id = self.work_requests.new_id()
        superseded: list[str] = []

        def apply(record: Record) -> Record:
            previous = record.internal.get("workRequestId")
            if previous:
                superseded.append(previous)
            return change(record, wr_id)

        with self.store.transaction() as tx:
            record = self.store.mutate(deployment_id, self.kind, self.label, apply, if_match, tx)
            self.work_requests.open(operation, self.kind, deployment_id, record.body["compartmentId"], message, tx, wr_id)
            for old in superseded:
                self.work_requests.finish(old, False, f"Superseded by {operation.value} ({wr_id})", "Superseded", tx=tx)
        return wr_id

    @staticmethod
    def _accept(operation: Operation, record: Record) -> DeploymentState:
        state = DeploymentState(record.state)
        target = state_after(operation, state)
        if target is not None:
            return target
        verb = operation.value.removeprefix("MODEL_DEPLOYMENT_").lower()
        if state in TRANSIENT:
            raise IncorrectState(
                f"model deployment {record.id} is {state.value}; it cannot {verb} until that finishes. "
                "Wait for its work request, then retry"
            )
        hints = {
            DeploymentState.DELETED: "create a new deployment instead",
            DeploymentState.ACTIVE: "it is already running; use UpdateModelDeployment to change it",
            DeploymentState.NEEDS_ATTENTION: "it is already running; use UpdateModelDeployment to change it",
            DeploymentState.INACTIVE: "activate it first (ActivateModelDeployment)",
            DeploymentState.FAILED: "fix its configuration with UpdateModelDeployment, then activate it, or delete it",
        }
        raise Conflict(f"model deployment {record.id} is {state.value}; {verb} is not possible in that state: {hints.get(state, '')}")

    def _check_model(self, config: dict[str, Any], caller: Caller) -> str:
        """The model must exist, be ACTIVE and have an artifact (A1); DEFAULT needs score.py and
        runtime.yaml in it (A2). Returns the artifact digest the deployment pins (A5)."""
        model_id = rules.model_id(config)
        field = "modelDeploymentConfigurationDetails.modelConfigurationDetails.modelId"
        model = self.store.get(model_id, "model") if ids.ocid_type(model_id) == ids.MODEL else None
        if model is None or model.state == ModelState.DELETED.value or not self.readable(caller, model):
            raise RelatedResourceNotFound(f"{field}: model {model_id} was not found; check the id")
        if model.state != ModelState.ACTIVE.value:
            raise InvalidParameter(f"{field}: model {model_id} is {model.state}; activate it first")
        artifact = self.store.get_artifact(model_id)
        if artifact is None:
            raise InvalidParameter(
                f"A1 {field}: model {model_id} has no artifact; upload one (CreateModelArtifact) before deploying it",
                rule="A1",
            )
        if rules.environment(config).get("environmentConfigurationType") == "DEFAULT":
            self._check_default_artifact(model_id, artifact.sha256)
        return artifact.sha256

    def _check_default_artifact(self, model_id: str, sha256: str) -> None:
        try:
            with zipfile.ZipFile(self.blobs.path(sha256)) as archive:
                names = set(archive.namelist())
        except (zipfile.BadZipFile, OSError) as exc:
            raise InvalidParameter(f"the artifact of model {model_id} is not a zip archive; upload a zip", rule="A2") from exc
        missing = [n for n in ("score.py", "runtime.yaml") if n not in names]
        if missing:
            raise InvalidParameter(
                f"a DEFAULT deployment needs score.py and runtime.yaml at the top of the artifact; model {model_id}'s "
                f"artifact lacks {', '.join(missing)}. Add them, or deploy a container (OCIR_CONTAINER)",
                rule="A2",
            )

    def _pin_image(self, config: dict[str, Any], caller: Caller) -> None:
        env = rules.environment(config)
        if env.get("environmentConfigurationType") != "OCIR_CONTAINER":
            return
        digest = self.resolver.resolve(env["image"], env.get("imageDigest"), self.access.registry_hosts_for(caller))
        if digest:
            env["imageDigest"] = digest

    @staticmethod
    def _internal(
        config: dict[str, Any], artifact_sha: str, desired: Desired, operation: Operation, wr_id: str, generation: int
    ) -> dict[str, Any]:
        return {
            "desired": desired.value,
            "operation": operation.value,
            "workRequestId": wr_id,
            "phaseStartedAt": now_iso(),
            "generation": generation,
            "modelId": rules.model_id(config),
            "artifactSha256": artifact_sha,
            "specHash": rules.spec_hash(config, artifact_sha),
            "replicas": rules.replicas(config),
        }


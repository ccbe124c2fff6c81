"""The metadata store: resources, work requests, artifacts' metadata and retry tokens.

`SqlMetadataStore` runs on SQLAlchemy Core; SQLite by default (WAL, so readers never wait for a
writer), PostgreSQL by giving its URL. Every method is blocking: callers run them in threads
(FastAPI's thread pool for sync routes, `asyncio.to_thread` in the reconciler).

Writes of one resource are compare-and-swap on its etag, so two concurrent updates can never
both win: the loser sees `NoEtagMatch` (when it named an etag) or simply re-reads and re-applies.
Several writes that must land together share one transaction (`with store.transaction() as tx`).

The store is put together from parts: `metadata_engine` (engines, migration, transactions),
`metadata_resources`, `metadata_work_requests`, and here artifacts, provenance, instances and
retry tokens; the records are in `metadata_records`.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, and_, delete, insert, select
from sqlalchemy.exc import IntegrityError

from dockyard.errors import Conflict
from dockyard.store import schema as t
from dockyard.store.metadata_records import (
    ArtifactRecord,
    Entry,
    InstanceRecord,
    Page,
    Record,
    WorkRequestRecord,
    new_etag,
    now_iso,
)
from dockyard.store.metadata_resources import RESOURCE_FILTERS, SORT_COLUMNS, ResourceStore
from dockyard.store.metadata_work_requests import WorkRequestStore

__all__ = [
    "RESOURCE_FILTERS",
    "SORT_COLUMNS",
    "ArtifactRecord",
    "Entry",
    "InstanceRecord",
    "Page",
    "Record",
    "RetryTokenTaken",
    "SqlMetadataStore",
    "WorkRequestRecord",
    "new_etag",
    "now_iso",
]


class RetryTokenTaken(Conflict):
    """A concurrent request stored the same retry token first."""


class SqlMetadataStore(ResourceStore, WorkRequestStore):
    """The whole store; resources come from `ResourceStore`, work requests from `WorkRequestStore`."""

    # --- artifacts and provenance ----------------------------------------------------------------

    def get_artifact(self, model_id: str) -> ArtifactRecord | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(t.artifacts).where(t.artifacts.c.model_id == model_id)).first()
        return ArtifactRecord(**row._mapping) if row else None

    def put_artifact(self, artifact: ArtifactRecord) -> None:
        with self.writer.begin() as conn:
            conn.execute(delete(t.artifacts).where(t.artifacts.c.model_id == artifact.model_id))
            conn.execute(insert(t.artifacts).values(**artifact.__dict__))

    def artifact_digests_in_use(self) -> set[str]:
        with self.engine.connect() as conn:
            model_digests = {r.sha256 for r in conn.execute(select(t.artifacts.c.sha256)).all()}
            pinned = {
                (r.internal or {}).get("artifactSha256")
                for r in conn.execute(
                    select(t.resources.c.internal).where(
                        and_(t.resources.c.kind == "modeldeployment", t.resources.c.lifecycle_state != "DELETED")
                    )
                ).all()
            }
        return model_digests | {d for d in pinned if d}

    def get_provenance(self, model_id: str) -> tuple[dict[str, Any], str] | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(t.provenances).where(t.provenances.c.model_id == model_id)).first()
        return (dict(row.body), row.etag) if row else None

    def put_provenance(self, model_id: str, body: dict[str, Any]) -> str:
        etag = new_etag()
        with self.writer.begin() as conn:
            conn.execute(delete(t.provenances).where(t.provenances.c.model_id == model_id))
            conn.execute(insert(t.provenances).values(model_id=model_id, body=body, etag=etag))
        return etag

    # --- instances ------------------------------------------------------------------------------

    def replace_instances(self, deployment_id: str, observed: list[InstanceRecord]) -> None:
        """Record what is running for one deployment now (the whole set, atomically)."""
        with self.writer.begin() as conn:
            conn.execute(delete(t.instances).where(t.instances.c.deployment_id == deployment_id))
            if observed:
                conn.execute(insert(t.instances), [i.__dict__ for i in observed])

    def list_instances(self, deployment_id: str | None = None) -> list[InstanceRecord]:
        query = select(t.instances).order_by(t.instances.c.time_started, t.instances.c.instance_id)
        if deployment_id is not None:
            query = query.where(t.instances.c.deployment_id == deployment_id)
        with self.engine.connect() as conn:
            return [InstanceRecord(**row._mapping) for row in conn.execute(query).all()]

    # --- retry tokens ------------------------------------------------------------------------------

    def get_retry_token(self, operation: str, token: str, tx: Connection | None = None) -> Any:
        with self._read(tx) as conn:
            return conn.execute(
                select(t.retry_tokens).where(and_(t.retry_tokens.c.operation == operation, t.retry_tokens.c.token == token))
            ).first()

    def put_retry_token(
        self, operation: str, token: str, request_hash: str, resource_id: str, work_request_id: str | None, tx: Connection
    ) -> None:
        try:
            tx.execute(
                insert(t.retry_tokens).values(
                    operation=operation,
                    token=token,
                    request_hash=request_hash,
                    resource_id=resource_id,
                    work_request_id=work_request_id,
                    time_created=now_iso(),
                )
            )
        except IntegrityError as exc:  # two requests with this token raced: the other one won
            raise RetryTokenTaken(f"opc-retry-token {token} was just used by a concurrent request") from exc

    def prune_retry_tokens(self, older_than_iso: str) -> int:
        with self.writer.begin() as conn:
            return conn.execute(delete(t.retry_tokens).where(t.retry_tokens.c.time_created < older_than_iso)).rowcount

"""Resources in the metadata store: projects, models and model deployments.

Each is stored as its wire document plus the columns lists filter and sort on (`schema`).
Writes of one resource are compare-and-swap on its etag (`swap`, `mutate`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

from sqlalchemy import Connection, and_, func, insert, select, update

from dockyard.errors import Conflict, NoEtagMatch, NotAuthorizedOrNotFound
from dockyard.store import schema as t
from dockyard.store.metadata_engine import MetadataEngine
from dockyard.store.metadata_records import Page, Record, new_etag

SORT_COLUMNS = {
    "timeCreated": t.resources.c.time_created,
    "displayName": t.resources.c.display_name,
    "lifecycleState": t.resources.c.lifecycle_state,
}

RESOURCE_FILTERS = {
    "compartmentId": t.resources.c.compartment_id,
    "projectId": t.resources.c.project_id,
    "modelId": t.resources.c.model_id,
    "displayName": t.resources.c.display_name,
    "lifecycleState": t.resources.c.lifecycle_state,
    "createdBy": t.resources.c.created_by,
    "id": t.resources.c.id,
}


def _columns(record: Record) -> dict[str, Any]:
    body = record.body
    return {
        "id": record.id,
        "kind": record.kind,
        "compartment_id": body["compartmentId"],
        "project_id": body.get("projectId"),
        "model_id": record.internal.get("modelId"),
        "display_name": body.get("displayName"),
        "lifecycle_state": body["lifecycleState"],
        "time_created": body["timeCreated"],
        "created_by": body.get("createdBy"),
        "etag": record.etag,
        "body": body,
        "internal": record.internal,
    }


def _record(row: Any) -> Record:
    return Record(id=row.id, kind=row.kind, body=dict(row.body), internal=dict(row.internal or {}), etag=row.etag)


class ResourceStore(MetadataEngine):
    """The resource methods of `SqlMetadataStore`."""

    def insert(self, record: Record, tx: Connection | None = None) -> Record:
        with self._write(tx) as conn:
            conn.execute(insert(t.resources).values(**_columns(record)))
        return record

    def get(self, resource_id: str, kind: str | None = None, tx: Connection | None = None) -> Record | None:
        query = select(t.resources).where(t.resources.c.id == resource_id)
        if kind:
            query = query.where(t.resources.c.kind == kind)
        with self._read(tx) as conn:
            row = conn.execute(query).first()
        return _record(row) if row else None

    def require(self, resource_id: str, kind: str, label: str, tx: Connection | None = None) -> Record:
        record = self.get(resource_id, kind, tx)
        if record is None:
            raise NotAuthorizedOrNotFound(
                f"{label} {resource_id} was not found, or you are not allowed to see it; check the id"
            )
        return record

    def list(
        self,
        kind: str,
        filters: dict[str, Any],
        sort_by: str = "timeCreated",
        descending: bool = True,
        offset: int = 0,
        limit: int = 100,
    ) -> Page:
        sort_column = SORT_COLUMNS[sort_by]
        query = select(t.resources).where(t.resources.c.kind == kind)
        for name, value in filters.items():
            if value is not None:
                query = query.where(RESOURCE_FILTERS[name] == value)
        order = [sort_column.desc(), t.resources.c.id.desc()] if descending else [sort_column.asc(), t.resources.c.id.asc()]
        query = query.order_by(*order).offset(offset).limit(limit + 1)
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        return Page([_record(r) for r in rows[:limit]], has_more=len(rows) > limit)

    def list_all_live(self, kind: str, offset: int, limit: int) -> Page:
        """Every resource of `kind` not yet DELETED, oldest first (for the reconciler)."""
        query = (
            select(t.resources)
            .where(and_(t.resources.c.kind == kind, t.resources.c.lifecycle_state != "DELETED"))
            .order_by(t.resources.c.time_created, t.resources.c.id)
            .offset(offset)
            .limit(limit + 1)
        )
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        return Page([_record(r) for r in rows[:limit]], has_more=len(rows) > limit)

    def count(self, kind: str, filters: dict[str, Any], exclude_states: tuple[str, ...] = ()) -> int:
        query = select(func.count()).select_from(t.resources).where(t.resources.c.kind == kind)
        for name, value in filters.items():
            query = query.where(RESOURCE_FILTERS[name] == value)
        if exclude_states:
            query = query.where(t.resources.c.lifecycle_state.not_in(exclude_states))
        with self.engine.connect() as conn:
            return int(conn.execute(query).scalar() or 0)

    def swap(self, record: Record, expected_etag: str, tx: Connection | None = None) -> Record:
        """Write `record` if the stored etag is still `expected_etag`; a new etag is issued."""
        new = replace(record, etag=new_etag())
        with self._write(tx) as conn:
            result = conn.execute(
                update(t.resources)
                .where(and_(t.resources.c.id == record.id, t.resources.c.etag == expected_etag))
                .values(**_columns(new))
            )
        if result.rowcount != 1:
            raise NoEtagMatch(
                f"{record.id} changed since etag {expected_etag} was read; GET it again and retry with its new etag"
            )
        return new

    def mutate(
        self,
        resource_id: str,
        kind: str,
        label: str,
        change: Callable[[Record], Record | None],
        if_match: str | None = None,
        tx: Connection | None = None,
    ) -> Record:
        """Read, apply `change` (which returns the new record, or None for no change), swap.

        With `if_match` the caller's etag must be current (412 otherwise). Without it a lost race
        is retried on the fresh record, so concurrent writers never overwrite each other.
        """
        for _ in range(20):
            current = self.require(resource_id, kind, label, tx)
            if if_match is not None and if_match != current.etag:
                raise NoEtagMatch(
                    f"if-match {if_match} does not match the current etag of {resource_id}; "
                    "GET it again and retry with its etag"
                )
            changed = change(current.copy())
            if changed is None:
                return current
            try:
                return self.swap(changed, current.etag, tx)
            except NoEtagMatch:
                if if_match is not None:
                    raise
        raise Conflict(f"{resource_id} is being changed by many requests at once; retry shortly")

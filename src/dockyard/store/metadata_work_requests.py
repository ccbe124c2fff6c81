"""Work requests in the metadata store, and their log and error entries."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, and_, insert, select, update

from dockyard.store import schema as t
from dockyard.store.metadata_engine import MetadataEngine
from dockyard.store.metadata_records import Entry, Page, WorkRequestRecord


def _work_request(row: Any) -> WorkRequestRecord:
    return WorkRequestRecord(
        id=row.id,
        compartment_id=row.compartment_id,
        operation_type=row.operation_type,
        status=row.status,
        percent_complete=row.percent_complete,
        resource_id=row.resource_id,
        time_accepted=row.time_accepted,
        time_started=row.time_started,
        time_finished=row.time_finished,
        body=dict(row.body or {}),
    )


class WorkRequestStore(MetadataEngine):
    """The work request methods of `SqlMetadataStore`."""

    def insert_work_request(self, wr: WorkRequestRecord, tx: Connection | None = None) -> WorkRequestRecord:
        with self._write(tx) as conn:
            conn.execute(insert(t.work_requests).values(**wr.__dict__))
        return wr

    def get_work_request(
        self, work_request_id: str, tx: Connection | None = None, for_update: bool = False
    ) -> WorkRequestRecord | None:
        """With `for_update` (inside `tx`), the row stays locked until `tx` ends, so the writers
        of one work request take turns: their lines get times and seqs in the same order, and a
        percentage never moves back. SQLite needs no row lock: its write transactions take turns."""
        query = select(t.work_requests).where(t.work_requests.c.id == work_request_id)
        with self._read(tx) as conn:
            row = conn.execute(query.with_for_update() if for_update else query).first()
        return _work_request(row) if row else None

    def update_work_request(self, work_request_id: str, tx: Connection | None = None, **values: Any) -> None:
        with self._write(tx) as conn:
            conn.execute(update(t.work_requests).where(t.work_requests.c.id == work_request_id).values(**values))

    def update_work_request_if_open(self, work_request_id: str, tx: Connection, **values: Any) -> None:
        """Update only while the work request is not finished (progress never reopens one)."""
        c = t.work_requests.c
        tx.execute(
            update(t.work_requests)
            .where(and_(c.id == work_request_id, c.status.in_(("ACCEPTED", "IN_PROGRESS", "CANCELING"))))
            .values(**values)
        )

    def list_work_requests(self, filters: dict[str, Any], sort_by: str, descending: bool, offset: int, limit: int) -> Page:
        columns = {
            "compartmentId": t.work_requests.c.compartment_id,
            "id": t.work_requests.c.id,
            "resourceId": t.work_requests.c.resource_id,
            "operationType": t.work_requests.c.operation_type,
            "status": t.work_requests.c.status,
        }
        sort = {
            "timeAccepted": t.work_requests.c.time_accepted,
            "operationType": t.work_requests.c.operation_type,
            "status": t.work_requests.c.status,
        }[sort_by]
        query = select(t.work_requests)
        for name, value in filters.items():
            if value is not None:
                query = query.where(columns[name] == value)
        order = [sort.desc(), t.work_requests.c.id.desc()] if descending else [sort.asc(), t.work_requests.c.id.asc()]
        query = query.order_by(*order).offset(offset).limit(limit + 1)
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        return Page([_work_request(r) for r in rows[:limit]], has_more=len(rows) > limit)

    def unfinished_work_requests(self, resource_id: str) -> list[WorkRequestRecord]:
        query = (
            select(t.work_requests)
            .where(t.work_requests.c.resource_id == resource_id)
            .where(t.work_requests.c.status.in_(("ACCEPTED", "IN_PROGRESS", "CANCELING")))
            .order_by(t.work_requests.c.time_accepted)
        )
        with self.engine.connect() as conn:
            return [_work_request(r) for r in conn.execute(query).all()]

    def add_entry(self, work_request_id: str, entry: Entry, tx: Connection | None = None) -> None:
        with self._write(tx) as conn:
            conn.execute(
                insert(t.work_request_entries).values(
                    work_request_id=work_request_id, kind=entry.kind, code=entry.code, message=entry.message, timestamp=entry.timestamp
                )
            )

    def list_entries(self, work_request_id: str, kind: str, offset: int, limit: int) -> Page:
        c = t.work_request_entries.c
        query = (
            select(t.work_request_entries)
            .where(and_(c.work_request_id == work_request_id, c.kind == kind))
            .order_by(c.seq)
            .offset(offset)
            .limit(limit + 1)
        )
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        items = [Entry(kind=r.kind, message=r.message, timestamp=r.timestamp, code=r.code) for r in rows[:limit]]
        return Page(items, has_more=len(rows) > limit)

"""The metadata store: resources, work requests, artifacts' metadata and retry tokens.

`SqlMetadataStore` runs on SQLAlchemy Core; SQLite by default (WAL, so readers never wait for a
writer), PostgreSQL by giving its URL. Every method is blocking: callers run them in threads
(FastAPI's thread pool for sync routes, `asyncio.to_thread` in the reconciler).

Writes of one resource are compare-and-swap on its etag, so two concurrent updates can never
both win: the loser sees `NoEtagMatch` (when it named an etag) or simply re-reads and re-applies.
Several writes that must land together share one transaction (`with store.transaction() as tx`).
"""

from __future__ import annotations

import contextlib
import copy
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, and_, create_engine, delete, event, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from dockyard.errors import Conflict, DockyardError, NoEtagMatch, NotAuthorizedOrNotFound
from dockyard.store import schema as t
from dockyard.store.disk_full import report_full_disk


class RetryTokenTaken(Conflict):
    """A concurrent request stored the same retry token first."""


def now_iso(moment: datetime | None = None) -> str:
    """UTC time as RFC 3339 with microseconds and `Z`: fixed width, so it sorts as text."""
    moment = moment or datetime.now(timezone.utc)
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def new_etag() -> str:
    return secrets.token_hex(16)


@dataclass
class Record:
    """One project, model or model deployment: its wire document plus service-only state."""

    id: str
    kind: str
    body: dict[str, Any]
    internal: dict[str, Any] = field(default_factory=dict)
    etag: str = field(default_factory=new_etag)

    @property
    def state(self) -> str:
        return str(self.body["lifecycleState"])

    def copy(self) -> Record:
        return replace(self, body=copy.deepcopy(self.body), internal=copy.deepcopy(self.internal))


@dataclass
class WorkRequestRecord:
    id: str
    compartment_id: str
    operation_type: str
    status: str
    percent_complete: float
    resource_id: str
    time_accepted: str
    time_started: str | None = None
    time_finished: str | None = None
    body: dict[str, Any] = field(default_factory=dict)


@dataclass
class ArtifactRecord:
    model_id: str
    sha256: str
    md5_b64: str
    size: int
    content_disposition: str | None
    time_created: str
    etag: str


@dataclass
class InstanceRecord:
    """The reconciler's last observation of one instance (see schema.instances)."""

    instance_id: str
    deployment_id: str
    spec_hash: str
    runtime: str
    state: str
    health: str
    host: str
    server_port: int | None
    health_port: int | None
    restarts: int = 0
    time_started: str | None = None
    time_last_probe: str | None = None
    last_probe: str | None = None
    detail: str | None = None


@dataclass
class Entry:
    kind: str
    message: str
    timestamp: str
    code: str | None = None


@dataclass
class Page:
    items: list[Any]
    has_more: bool


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


class SqlMetadataStore:
    def __init__(self, url: str) -> None:
        self.url = url
        # Reads and writes use separate engines on SQLite: writes begin IMMEDIATE (one writer at a
        # time, waiting politely), reads stay deferred so they never wait for a writer (WAL).
        self.engine: Engine = self._make_engine(url)
        self.writer: Engine = self._make_engine(url, immediate=True) if url.startswith("sqlite") else self.engine
        self.migrate()

    @staticmethod
    def _make_engine(url: str, immediate: bool = False) -> Engine:
        if url.startswith("sqlite"):
            path = url.split("///", 1)[-1]
            if path and path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30}, pool_size=16, max_overflow=16)

            @event.listens_for(engine, "connect")
            def _pragmas(dbapi_conn: Any, _: Any) -> None:
                cur = dbapi_conn.cursor()
                cur.execute("PRAGMA journal_mode=WAL")  # readers never wait for the writer
                cur.execute("PRAGMA synchronous=FULL")  # a committed write survives power loss
                cur.execute("PRAGMA foreign_keys=ON")
                cur.execute("PRAGMA busy_timeout=30000")
                cur.close()
                if immediate:
                    dbapi_conn.isolation_level = None  # we emit BEGIN ourselves

            if immediate:

                @event.listens_for(engine, "begin")
                def _begin(conn: Any) -> None:
                    conn.exec_driver_sql("BEGIN IMMEDIATE")

            return report_full_disk(engine)
        return report_full_disk(create_engine(url, pool_pre_ping=True))

    def migrate(self) -> None:
        t.metadata.create_all(self.engine)
        with self.writer.begin() as conn:
            version = conn.execute(select(t.schema_info.c.version)).scalar()
            if version is None:
                conn.execute(insert(t.schema_info).values(id=1, version=t.SCHEMA_VERSION))
            elif version > t.SCHEMA_VERSION:
                raise DockyardError(
                    f"the database at {self.url} has schema version {version}, newer than this dockyard "
                    f"({t.SCHEMA_VERSION}); upgrade dockyard or point it at another --data-dir"
                )

    def close(self) -> None:
        self.engine.dispose()
        self.writer.dispose()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Connection]:
        """One write transaction; on SQLite it takes the write lock at once (BEGIN IMMEDIATE),
        so a read-then-write inside it can never fail on a snapshot another writer moved."""
        with self.writer.begin() as conn:
            yield conn

    @contextlib.contextmanager
    def _write(self, tx: Connection | None) -> Iterator[Connection]:
        if tx is not None:
            yield tx
        else:
            with self.writer.begin() as conn:
                yield conn

    @contextlib.contextmanager
    def _read(self, tx: Connection | None) -> Iterator[Connection]:
        if tx is not None:
            yield tx
        else:
            with self.engine.connect() as conn:
                yield conn

    # --- resources -----------------------------------------------------------------------------

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

    # --- work requests ---------------------------------------------------------------------------

    def insert_work_request(self, wr: WorkRequestRecord, tx: Connection | None = None) -> WorkRequestRecord:
        with self._write(tx) as conn:
            conn.execute(insert(t.work_requests).values(**wr.__dict__))
        return wr

    def get_work_request(self, work_request_id: str, tx: Connection | None = None) -> WorkRequestRecord | None:
        with self._read(tx) as conn:
            row = conn.execute(select(t.work_requests).where(t.work_requests.c.id == work_request_id)).first()
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

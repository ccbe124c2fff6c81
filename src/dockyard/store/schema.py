"""Tables of the metadata store (SQLAlchemy Core, portable between SQLite and PostgreSQL).

Resources are stored as their wire-format JSON document plus the columns that lists filter
and sort on. Keeping the document whole means a field added to the wire format needs no
migration; the indexed columns are the only schema that matters to queries.

`SCHEMA_VERSION` is recorded in the database; `migrate()` brings an older database forward
(it creates what is missing, then adds the columns each later version added: `ADDED_COLUMNS`)
and refuses a newer one.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)

SCHEMA_VERSION = 2

metadata = MetaData()

schema_info = Table(
    "schema_info",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("version", Integer, nullable=False),
)

# Projects, models and model deployments. `kind` is project | model | modeldeployment.
resources = Table(
    "resources",
    metadata,
    Column("id", String(255), primary_key=True),
    Column("kind", String(32), nullable=False),
    Column("compartment_id", String(255), nullable=False),
    Column("project_id", String(255)),
    Column("model_id", String(255)),  # deployments: the model they run
    Column("display_name", String(255)),
    Column("lifecycle_state", String(32), nullable=False),
    Column("time_created", String(40), nullable=False),  # fixed-width ISO-8601 UTC: sorts as text
    Column("created_by", String(255)),
    Column("etag", String(64), nullable=False),
    Column("body", JSON, nullable=False),  # the wire-format document
    Column("internal", JSON, nullable=False),  # service-only state (desired state, generation...)
    Index("ix_resources_list", "kind", "compartment_id", "time_created"),
)

artifacts = Table(
    "artifacts",
    metadata,
    Column("model_id", String(255), ForeignKey("resources.id"), primary_key=True),
    Column("sha256", String(64), nullable=False),
    Column("md5_b64", String(32), nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("content_disposition", Text),
    Column("time_created", String(40), nullable=False),
    Column("etag", String(64), nullable=False),
)

provenances = Table(
    "provenances",
    metadata,
    Column("model_id", String(255), ForeignKey("resources.id"), primary_key=True),
    Column("body", JSON, nullable=False),
    Column("etag", String(64), nullable=False),
)

work_requests = Table(
    "work_requests",
    metadata,
    Column("id", String(255), primary_key=True),
    Column("compartment_id", String(255), nullable=False),
    Column("operation_type", String(64), nullable=False),
    Column("status", String(32), nullable=False),
    Column("percent_complete", Float, nullable=False),
    Column("resource_id", String(255), nullable=False),
    Column("time_accepted", String(40), nullable=False),
    Column("time_started", String(40)),
    Column("time_finished", String(40)),
    Column("body", JSON, nullable=False),  # resources list and anything else on the wire
    Index("ix_work_requests_list", "compartment_id", "time_accepted"),
    Index("ix_work_requests_resource", "resource_id"),
)

# Log lines and errors of work requests, oldest first by `seq`.
work_request_entries = Table(
    "work_request_entries",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("work_request_id", String(255), nullable=False),
    Column("kind", String(8), nullable=False),  # log | error
    Column("code", String(64)),
    Column("message", Text, nullable=False),
    Column("timestamp", String(40), nullable=False),
    Index("ix_wr_entries", "work_request_id", "kind", "seq"),
)

# What the reconciler last observed of each instance: the gateway routes from this table (so
# gateways in other processes see the same routes) and the instances view reads it.
instances = Table(
    "instances",
    metadata,
    Column("instance_id", String(255), primary_key=True),
    Column("deployment_id", String(255), nullable=False),
    Column("spec_hash", String(64), nullable=False),
    Column("runtime", String(32), nullable=False),
    Column("state", String(32), nullable=False),
    Column("health", String(32), nullable=False),
    Column("host", String(255), nullable=False),
    Column("server_port", Integer),
    Column("health_port", Integer),
    Column("restarts", Integer, nullable=False, default=0),
    Column("time_started", String(40)),
    Column("time_last_probe", String(40)),
    Column("last_probe", Text),  # status code or error of the last probe, in words
    Column("detail", Text),
    Index("ix_instances_deployment", "deployment_id"),
)

# opc-retry-token: (operation, token) -> the resource it created and a hash of the request.
retry_tokens = Table(
    "retry_tokens",
    metadata,
    Column("operation", String(64), primary_key=True),
    Column("token", String(64), primary_key=True),
    Column("request_hash", String(64), nullable=False),
    Column("resource_id", String(255), nullable=False),
    Column("work_request_id", String(255)),
    Column("time_created", String(40), nullable=False),
)

# Access and predict logs of deployments (store/logs.py). `seq` never repeats (AUTOINCREMENT on
# SQLite), so a reader following with "seq > cursor" misses nothing even after retention has
# deleted every older row. Retention deletes by `time`; readers page by (deployment, seq).
log_entries = Table(
    "log_entries",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("deployment_id", String(255), nullable=False),
    Column("category", String(16), nullable=False),  # access | predict
    Column("time", String(40), nullable=False),  # fixed-width ISO-8601 UTC: sorts as text
    Column("instance_id", String(255)),
    Column("stream", String(16)),  # predict: stdout | stderr | combined
    Column("log_id", String(255)),  # categoryLogDetails.<category>.logId when the deployment names one
    Column("message", Text, nullable=False),
    Column("fields", JSON),  # access: the whole AccessEntry; predict: nothing more
    # Set on a row holding a block of access entries (store/log_rows.py): how many. The row's seq
    # is its last entry's, the entries before it have the seqs just below; `fields` is the list of
    # their field values. Empty on a row of one entry.
    Column("entries", Integer),
    Index("ix_log_entries_read", "deployment_id", "category", "seq"),
    Index("ix_log_entries_deployment", "deployment_id", "seq"),
    Index("ix_log_entries_time", "time"),
    sqlite_autoincrement=True,
)

# How far the predict-log collector has read each instance's output (the runtime's own cursor:
# a byte offset for local processes, a timestamp for containers). Written in the same
# transaction as the lines it covers, so a restart resumes exactly after the last stored line.
log_positions = Table(
    "log_positions",
    metadata,
    Column("instance_id", String(255), primary_key=True),
    Column("deployment_id", String(255), nullable=False),
    Column("position", String(64), nullable=False),
    Column("time_updated", String(40), nullable=False),
)


# The columns each schema version added to a table that already existed, by version: `migrate()`
# adds them to an older database (a new one gets them from `create_all`).
ADDED_COLUMNS: dict[int, list[tuple[Table, str]]] = {
    2: [(log_entries, "entries")],
}

"""The access log: one entry per data-plane request.

Each entry goes to the logger `dockyard.access` as one JSON line (at INFO) and to an optional
sink callable (durable storage plugs in there). A failing sink is logged, never the request's
problem.
"""

from __future__ import annotations

import json
import logging
import operator
from collections.abc import Callable, Sequence
from typing import Any, Final, NamedTuple, Protocol

log: Final = logging.getLogger("dockyard.access")
_problems: Final = logging.getLogger("dockyard.gateway")
# What `log.isEnabledFor` answered, by level: the logger's own cache, which logging clears in
# place whenever a level changes. Read directly, it saves a Python call on every request; where
# it is missing (another Python's logging) it stays empty and every write asks.
_enabled_levels: Final[dict[int, bool]] = getattr(log, "_cache", {})


class AccessEntry(NamedTuple):
    """Made on every request: a named tuple is made in one C call and read by index."""

    time: str  # when the request arrived, ISO-8601 UTC
    request_id: str
    deployment_id: str | None
    caller: str | None  # keyId of the request's OCI signature, when signed
    method: str
    path: str
    status: int  # what the caller got; 499 when it went away first
    bytes_in: int
    bytes_out: int
    latency_ms: float  # arrival to last byte sent
    upstream_ms: float | None  # first connection attempt to the container's last byte; None if never sent
    instance_id: str | None = None
    attempts: int = 0  # upstream connection attempts (more than one after a refused connection)
    error: str | None = None  # why the gateway answered itself or cut the reply, in words

    def as_dict(self) -> dict[str, Any]:
        return dict(zip(FIELD_NAMES, self))


FIELD_NAMES: tuple[str, ...] = AccessEntry._fields


def field_values(entry: AccessEntry) -> tuple[Any, ...]:
    """The values of an entry's fields, in the order AccessEntry(*values) takes them back: the
    named tuple's own items as a plain tuple (which JSON encoders and `marshal` take), copied
    whole by one C call (`_ALL_ITEMS`). tuple(entry) iterates, at 1.2k instructions an entry;
    attrgetter over the field names cost 2.4k, and a slice as compiled code makes it 1.5k."""
    return _ALL_ITEMS(entry)  # type: ignore[no-any-return]


_ALL_ITEMS: Final = operator.itemgetter(slice(None))


# Where a field is in those values (the log store reads a relayed entry's tuple by position).
TIME, DEPLOYMENT_ID, METHOD, PATH, STATUS, INSTANCE_ID = map(FIELD_NAMES.index, (
    "time", "deployment_id", "method", "path", "status", "instance_id"))  # fmt: skip

def entry_message(values: Sequence[Any]) -> str:
    """The stored message of an entry: `POST /{id}/predict 200`."""
    return "%s %s %s" % (values[METHOD], values[PATH], values[STATUS])


AccessSink = Callable[[AccessEntry], None]


class DurableAccessLog(Protocol):
    """Where a gateway's entries are kept: the log store (store/logs.py), or a worker's relay
    to its supervisor's log store (access_relay.py)."""

    def add_access(self, entry: AccessEntry) -> None: ...

    def flush(self) -> int: ...


class AccessLog:
    def __init__(self, sink: AccessSink | None = None) -> None:
        self.sink = sink

    def write(self, entry: AccessEntry) -> None:
        echo = None if log.disabled else _enabled_levels.get(logging.INFO)
        if echo is None:
            echo = log.isEnabledFor(logging.INFO)
        if echo:
            log.info(json.dumps(entry.as_dict(), separators=(",", ":")))
        if self.sink is not None:
            try:
                self.sink(entry)
            except Exception:
                _problems.exception("the access-log sink failed on request %s", entry.request_id)

"""What the gateway learns about one request while serving it, for the access log and metrics."""

from __future__ import annotations

import time
from typing import Final

from dockyard.gateway.accesslog import AccessEntry

_second: tuple[int, str] = (-1, "")
_new_entry: Final = tuple.__new__
_clock: Final = time.perf_counter  # (bound once, as in app.py)


def _calendar_second(whole: int) -> tuple[int, str]:
    """The calendar part of a time stamp for the second `whole` (time.time()), kept for the
    entries of that second: formatting it per request was once the gateway's dearest line."""
    global _second
    _second = (whole, time.strftime("%Y-%m-%dT%H:%M:%S.", time.gmtime(whole)))
    return _second


class Exchange:
    """One request's record. The fields most requests never change are class attributes: an
    instance stores only what was set, so making one costs a few stores rather than nineteen
    (it is made on every request)."""

    deployment_id: str | None = None
    known_deployment: bool = False  # the id named an existing deployment (metrics label it)
    status: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    upstream_started: float | None = None
    upstream_ended: float | None = None
    instance_id: str | None = None
    attempts: int = 0
    error: str | None = None
    response_started: bool = False
    response_complete: bool = False
    unanswered: str | None = None  # an instance dropped the request unanswered already (which, how): no other may

    def __init__(self, request_id: str, method: str, path: str, arrived_wall: float, arrived: float,
                 deployment_id: str | None = None, known_deployment: bool = False, caller: str | None = None) -> None:  # fmt: skip
        self.request_id = request_id
        self.method = method
        self.path = path
        self.arrived_wall = arrived_wall  # time.time() at arrival
        self.arrived = arrived  # perf_counter at arrival
        if deployment_id is not None:
            self.deployment_id = deployment_id
            self.known_deployment = known_deployment
        self.caller = caller

    def __repr__(self) -> str:
        return f"Exchange({self.__dict__!r})"

    def entry(self) -> AccessEntry:
        now = _clock()
        upstream_ms = None
        # Milliseconds to the microsecond: int(x + 0.5) / 1000 (round(x, 3) costs twice as much, formatting the float)
        if self.upstream_started is not None:
            upstream_ms = int(((self.upstream_ended or now) - self.upstream_started) * 1_000_000 + 0.5) / 1000
        # The arrival as `now_iso` writes it (RFC 3339, microseconds, `Z`), the microseconds truncated
        # and zero-padded by hand: str(1_000_000 + µs)[1:] costs half of what "%06d" % µs did.
        moment = self.arrived_wall
        whole = int(moment)
        second = _second if _second[0] == whole else _calendar_second(whole)
        micros = int((moment - whole) * 1_000_000)
        return _new_entry(AccessEntry, (  # the field order of AccessEntry; made in C, without its Python __new__
            second[1] + str(1_000_000 + micros)[1:] + "Z", self.request_id, self.deployment_id, self.caller, self.method, self.path,
            self.status, self.bytes_in, self.bytes_out, int((now - self.arrived) * 1_000_000 + 0.5) / 1000, upstream_ms,
            self.instance_id, self.attempts, self.error,
        ))  # fmt: skip

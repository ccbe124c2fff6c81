"""What a runtime hands the predict-log collector: one output line of an instance at a time.

`position` is the runtime's own read position just past the line (a byte offset into a local
process's output file; the container engine's nanosecond timestamp of the line). Passed back as
`after` to `follow_output`, it resumes exactly after that line, also in a new dockyard process.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

STDOUT, STDERR = "stdout", "stderr"
COMBINED = "combined"  # both streams in one file, in the order written (local processes)
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


@dataclass(frozen=True)
class OutputLine:
    time: datetime  # when the line was written (engine timestamp) or first read (local processes)
    stream: str  # stdout | stderr | combined
    text: str
    position: str


def engine_nanoseconds(stamp: str) -> int:
    """An engine's RFC 3339 timestamp with up to nine fraction digits ("...T16:48:58.1234Z") as
    nanoseconds since the epoch; ValueError when it is not one. (Engines trim trailing zeros,
    so these strings do not compare as text.)"""
    if not stamp.endswith("Z"):
        raise ValueError(f"not a UTC timestamp: {stamp!r}")
    head, _, fraction = stamp[:-1].partition(".")
    whole = datetime.strptime(head, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=timezone.utc)
    if fraction and not fraction.isdigit():
        raise ValueError(f"not a timestamp: {stamp!r}")
    return int(whole.timestamp()) * 1_000_000_000 + int((fraction + "000000000")[:9])


def from_nanoseconds(value: int) -> datetime:
    return EPOCH + timedelta(microseconds=value // 1000)

"""The one form log times are stored and compared in: fixed-width ISO-8601 UTC with
microseconds (`2026-11-26T23:07:05.451694Z`), so that times sort as text in any database."""

from __future__ import annotations

from datetime import datetime, timezone


def log_time(moment: datetime | None = None) -> str:
    """Fixed-width ISO-8601 UTC with microseconds, so times sort as text."""
    moment = (moment or datetime.now(timezone.utc)).astimezone(timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_log_time(text: str) -> datetime:
    """An RFC 3339 time (Z or an offset; any number of fraction digits) as an aware datetime;
    ValueError when it is not one."""
    value = text.strip()
    if value.endswith(("Z", "z")):
        value = value[:-1] + "+00:00"
    head, dot, rest = value.partition(".")
    if dot:  # fromisoformat takes at most 6 fraction digits on 3.11
        count = len(rest) - len(rest.lstrip("0123456789"))
        digits, zone = rest[:count][:9], rest[count:]
        value = f"{head}.{(digits + '000000')[:6]}{zone}"
    moment = datetime.fromisoformat(value)
    if moment.tzinfo is None:
        raise ValueError(f"{text!r} has no time zone")
    return moment.astimezone(timezone.utc)


def normalised_log_time(text: str) -> str:
    """`text` in the fixed-width form times are stored in (now, when it is not a time)."""
    if len(text) == 27 and text[19] == "." and text.endswith("Z"):
        return text  # already ours
    try:
        return log_time(parse_log_time(text))
    except ValueError:
        return log_time()

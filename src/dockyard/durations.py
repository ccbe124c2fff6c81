"""Durations in words, for messages that tell someone how far off a clock or a limit is."""

from __future__ import annotations


def _plural(n: int, unit: str) -> str:
    return f"{n} {unit}" if n == 1 else f"{n} {unit}s"


def duration_in_words(seconds: float) -> str:
    """A duration as people say it: "45 seconds", "2 minutes 5 seconds", "3 hours", "2 days"."""
    s = int(seconds)
    if s < 120:
        return _plural(s, "second")
    if s < 600:
        minutes, rest = divmod(s, 60)
        return _plural(minutes, "minute") + (f" {_plural(rest, 'second')}" if rest else "")
    if s < 2 * 3600:
        return _plural(round(seconds / 60), "minute")
    if s < 2 * 86400:
        return _plural(round(seconds / 3600), "hour")
    return _plural(round(seconds / 86400), "day")

"""The README's "Predictions" section tells container authors which headers reach them and which
errors the gateway answers itself: it must say what the gateway does."""

from __future__ import annotations

import re
from pathlib import Path

from dockyard import errors
from dockyard.gateway.headers import HOP_BY_HOP, REQUEST_DROP

README = Path(__file__).resolve().parents[2] / "README.md"


def _section() -> str:
    text = README.read_text()
    start = text.index("### Predictions: what reaches the container")
    return text[start : text.index("\n### ", start + 1)]


def _names(text: str) -> set[str]:
    return {name.lower() for name in re.findall(r"`([A-Za-z-]+)`", text)}


def test_the_headers_it_says_are_dropped_or_set_are_the_ones_the_gateway_drops_on_the_way_in() -> None:
    section = _section()
    dropped = section[section.index("- dropped:") : section.index("- set by the gateway:")]
    set_by_gateway = section[section.index("- set by the gateway:") : section.index("**The reply**")]
    hop_by_hop = dropped[dropped.index("(") : dropped.index(")")]
    assert _names(hop_by_hop) == {name.decode() for name in HOP_BY_HOP}
    replaced = {"host", "opc-request-id"}  # dropped from the caller's, then set anew
    assert replaced <= _names(set_by_gateway)
    assert _names(dropped) | replaced == {name.decode() for name in REQUEST_DROP}


def test_every_status_and_code_in_its_table_of_the_gateways_own_answers_is_the_errors_own() -> None:
    rows = re.findall(r"^\| (\d{3}(?: / \d{3})?) \| (`\w+`(?: / `\w+`)?) \|", _section(), re.M)
    assert len(rows) >= 12
    classes = [value for value in vars(errors).values() if isinstance(value, type) and issubclass(value, errors.DockyardError)]
    status_of = {cls.code: cls.status for cls in classes}
    for statuses, codes in rows:
        names = re.findall(r"`(\w+)`", codes)
        numbers = [int(s) for s in statuses.split(" / ")]
        for name in names:
            assert name in status_of, f"the README names an error code dockyard does not have: {name}"
            assert status_of[name] in numbers, f"{name} is {status_of[name]}, not {statuses} as the README says"

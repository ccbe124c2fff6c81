"""JSON text as SQLAlchemy's JSON type stores it, made with less CPU (the log store's hot path)."""

from __future__ import annotations

import json
from typing import Any


def _make_json_text() -> Any:
    """A function giving exactly the text `json.dumps(value)` gives (what SQLAlchemy's JSON type
    stores), with the C encoder made once: `json.dumps` makes a new one per call, which costs more
    than encoding a flat access entry. No circular-reference check: a shared `markers` dict would
    keep stale ids after an error; a circular value still fails (RecursionError), as it did."""
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:  # an interpreter without the C accelerator
        return json.dumps
    plain = json.JSONEncoder()
    encode = make(None, plain.default, json.encoder.encode_basestring_ascii, plain.indent, plain.key_separator,
                  plain.item_separator, plain.sort_keys, plain.skipkeys, plain.allow_nan)

    def json_text(value: Any) -> str:
        return "".join(encode(value, 0))

    return json_text


json_text = _make_json_text()

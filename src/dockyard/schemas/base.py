"""Base of every wire-format model: camelCase on the wire, snake_case in Python.

Unknown fields are ignored, as the OCI service does, so newer clients that send fields this
version does not know still work. Types are checked: a string where a number belongs (other
than a numeric port) is a 400.
"""

from __future__ import annotations

import json
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic.alias_generators import to_camel

from dockyard.errors import CannotParseRequest, InvalidParameter, MissingParameter

T = TypeVar("T", bound="Wire")


class Wire(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")

    def wire(self, *, keep_null: bool = False) -> dict[str, Any]:
        """The camelCase dict of the fields the client sent (nulls dropped unless `keep_null`)."""
        return self.model_dump(by_alias=True, exclude_unset=True, exclude_none=not keep_null)


# Discriminator fields and the values they accept: pydantic puts the chosen value into an
# error's location, which users never wrote, and a missing discriminator's error should list
# what may be sent.
DISCRIMINATORS: dict[str, tuple[str, ...]] = {
    "deploymentType": ("SINGLE_MODEL", "MODEL_GROUP", "SINGLE_MODEL_FLEX"),
    "environmentConfigurationType": ("DEFAULT", "OCIR_CONTAINER"),
    "policyType": ("FIXED_SIZE", "AUTOSCALING"),
}
_TAG_VALUES = frozenset(v for values in DISCRIMINATORS.values() for v in values)
# Maps whose keys are user data: a key there is never a tag value to hide.
_FREE_MAPS = frozenset({"environmentVariables", "freeformTags", "definedTags"})


def _unstorable(value: Any, where: tuple[Any, ...]) -> tuple[tuple[Any, ...], str] | None:
    """The first string of a parsed body (a key or a value) that a store cannot hold, where it
    is and what is wrong: a NUL character (PostgreSQL text refuses it; SQLite would keep it,
    so both refuse it here alike) or a lone surrogate (not Unicode: no UTF-8 for it)."""
    if isinstance(value, str):
        if "\x00" in value:
            return where, "a NUL character (\\u0000)"
        if not value.isascii():
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                return where, "a lone UTF-16 surrogate (an escape like \\ud800 without its pair)"
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            found = _unstorable(key, (*where, key)) or _unstorable(item, (*where, key))
            if found is not None:
                return found
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found = _unstorable(item, (*where, index))
            if found is not None:
                return found
    return None


def _location(loc: tuple[Any, ...]) -> str:
    """The JSON path of an error, as the client wrote it."""
    parts: list[str] = []
    previous: Any = None
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        elif item in ("function-after", "tagged-union") or str(item).startswith(("function-", "union[")):
            continue
        elif item in _TAG_VALUES and previous not in _FREE_MAPS:
            continue
        else:
            parts.append(("." if parts else "") + str(item))
        previous = item
    return "".join(parts) or "body"


def _discriminator(ctx: dict[str, Any]) -> str:
    """pydantic names a discriminator as "'python_name' | 'jsonName'"; keep the JSON name."""
    return str(ctx.get("discriminator", "")).split("|")[-1].strip(" '")


def parse_body(model: type[T], raw: bytes) -> T:
    """Decode a JSON request body into `model`, or raise a 400 that names every bad field."""
    if not raw.strip():
        raise MissingParameter("the request body is empty; send a JSON object")
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CannotParseRequest(f"the request body is not valid JSON ({exc}); send a JSON object") from exc
    if not isinstance(data, dict):
        raise InvalidParameter(f"the request body must be a JSON object, not {type(data).__name__}")
    if b"\\u" in raw:  # only an escape can put a NUL or a lone surrogate in a JSON string
        unstorable = _unstorable(data, ())
        if unstorable is not None:
            where, what = unstorable
            raise InvalidParameter(f"{_location(where)} holds {what}, which no field can store; remove it or send the text without it")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = []
        missing = True
        for err in exc.errors():
            where = _location(tuple(err["loc"]))
            if err["type"] == "missing":
                problems.append(f"{where} is required")
                continue
            missing = False
            if err["type"] == "union_tag_invalid":
                ctx = err.get("ctx", {})
                name = _discriminator(ctx)
                accepted = list(DISCRIMINATORS.get(name, ())) or ctx.get("expected_tags")
                problems.append(f"{where}.{name} {ctx.get('tag')!r} is not known; send one of {accepted}")
            elif err["type"] == "union_tag_not_found":
                name = _discriminator(err.get("ctx", {}))
                accepted = list(DISCRIMINATORS.get(name, ()))
                problems.append(f"{where} needs its type field {name}; send one of {accepted}")
            else:
                value = err.get("input")
                shown = json.dumps(value)[:80] if not isinstance(value, (dict, list)) else type(value).__name__
                problems.append(f"{where}: {err['msg']} (got {shown})")
        error = MissingParameter if missing else InvalidParameter
        raise error("; ".join(problems)) from exc

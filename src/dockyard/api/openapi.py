"""Request bodies for the OpenAPI document.

Routes read their bodies themselves (`read_json`, the streamed artifact upload) so that every
bad body gets an OCI error naming the rule, which FastAPI's own parsing would not give. FastAPI
then cannot see the bodies; these helpers describe them in each route's ``openapi_extra``, from
the same pydantic wire models, so clients and fuzzers learn the real shapes.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

_REF_PREFIX = "#/$defs/"


def json_body(model: type[BaseModel]) -> dict[str, Any]:
    """``openapi_extra`` for a route whose JSON body is ``model`` (camelCase, as on the wire)."""
    schema = model.model_json_schema(by_alias=True)
    definitions = schema.pop("$defs", {})
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": _inlined(schema, definitions, ())}},
        }
    }


def binary_body(description: str) -> dict[str, Any]:
    """``openapi_extra`` for a route whose body is raw bytes (the model artifact upload)."""
    return {
        "requestBody": {
            "required": True,
            "description": description,
            "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
        }
    }


def _inlined(node: Any, definitions: dict[str, Any], seen: tuple[str, ...]) -> Any:
    """Replace each local ``$ref`` by its definition: a route's schema must stand alone, since a
    ``#/$defs/...`` reference would resolve against the whole document, not this schema."""
    if isinstance(node, list):
        return [_inlined(item, definitions, seen) for item in node]
    if not isinstance(node, dict):
        return node
    ref = node.get("$ref")
    if isinstance(ref, str) and ref.startswith(_REF_PREFIX):
        name = ref[len(_REF_PREFIX):]
        if name in seen:  # a recursive model: keep it open rather than loop
            return {"type": "object"}
        siblings = {k: v for k, v in node.items() if k != "$ref"}
        return _inlined(definitions[name], definitions, seen + (name,)) | _inlined(siblings, definitions, seen)
    # A discriminator's mapping names definitions by reference; with them inlined, the
    # property name alone still says which member a body is.
    return {key: {"propertyName": value["propertyName"]} if key == "discriminator" and isinstance(value, dict)
            and "propertyName" in value else _inlined(value, definitions, seen) for key, value in node.items()}

"""Validation rules of the BYOC contract, as pure functions over the wire-format dicts.

Each check appends a `Problem` naming the rule, the field (as a JSON path), the value and the
fix; `raise_if_any` turns the list into one `InvalidParameter` so a user sees every mistake of a
request at once rather than one per round trip.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from dockyard.errors import InvalidParameter

PORT_MIN, PORT_MAX = 1024, 65535
RESERVED_PORTS = frozenset({24224, 8446, 8447})
DEFAULT_PORT = 8080
MAX_CMD_ENTRYPOINT_BYTES = 2048
MAX_ENV_BYTES = 2048
MAX_CUSTOM_ENDPOINTS = 15
HTTP_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})
# Variables the service injects into every instance: a user may not shadow them.
RESERVED_ENV = frozenset({"MODEL_DEPLOYMENT_OCID"})

_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
_ENV_KEY = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
_URI_SUFFIX = re.compile(r"^/[A-Za-z0-9._~!$&'()*+,;=:@/{}-]*$")


@dataclass(frozen=True)
class Problem:
    rule: str
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.rule} {self.field}: {self.message}"


def raise_if_any(problems: list[Problem]) -> None:
    if not problems:
        return
    if len(problems) == 1:
        raise InvalidParameter(str(problems[0]), rule=problems[0].rule)
    text = "; ".join(str(p) for p in problems)
    raise InvalidParameter(f"{len(problems)} problems: {text}", rule=problems[0].rule)


def check_port(value: Any, field: str, problems: list[Problem]) -> int | None:
    """C6. Accepts numbers and numeric strings (clients send both); returns the int."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        problems.append(Problem("C6", field, f"{value!r} is not a port number; send an integer such as 8080"))
        return None
    try:
        port = int(value)
    except ValueError:
        problems.append(Problem("C6", field, f"{value!r} is not a port number; send an integer such as 8080"))
        return None
    if not PORT_MIN <= port <= PORT_MAX:
        problems.append(
            Problem("C6", field, f"port {port} is outside {PORT_MIN}-{PORT_MAX}; choose a port in that range")
        )
    elif port in RESERVED_PORTS:
        problems.append(
            Problem("C6", field, f"port {port} is reserved by the service (24224, 8446, 8447); choose another port")
        )
    return port


def check_cmd_entrypoint(cmd: list[str] | None, entrypoint: list[str] | None, problems: list[Problem]) -> None:
    """C10: all arguments of cmd and entrypoint together at most 2048 bytes."""
    size = sum(len(arg.encode()) for arg in (cmd or []) + (entrypoint or []))
    if size > MAX_CMD_ENTRYPOINT_BYTES:
        problems.append(
            Problem(
                "C10",
                "cmd+entrypoint",
                f"cmd and entrypoint together are {size} bytes, over the {MAX_CMD_ENTRYPOINT_BYTES}-byte limit; "
                "put long arguments in a file inside the model artifact and pass its path instead",
            )
        )


def check_environment(env: dict[str, str] | None, field: str, problems: list[Problem]) -> None:
    """Environment variable rules: key shape, reserved names, total size."""
    if not env:
        return
    total = 0
    for key, value in env.items():
        total += len(key.encode()) + len(value.encode())
        where = f"{field}.{key}"
        # The SDK's docstring asks for at least 2 characters, but the BYOC document's own worked
        # example (U2) stores keys "a", "c", "e" and "x"; the original document wins, so a
        # single letter is accepted.
        if not 1 <= len(key) < 32:
            problems.append(Problem("ENV", where, f"key length {len(key)} is outside 1-31 characters; rename it"))
        elif not _ENV_KEY.match(key):
            problems.append(
                Problem("ENV", where, "a key starts with a letter and holds only letters, digits and '_'; rename it")
            )
        elif key.endswith("_"):
            problems.append(Problem("ENV", where, "a key may not end with '_'; rename it"))
        if key in RESERVED_ENV:
            problems.append(
                Problem("ENV", where, f"{key} is injected by the service and cannot be set; remove it")
            )
    if total > MAX_ENV_BYTES:
        problems.append(
            Problem(
                "ENV",
                field,
                f"keys and values together are {total} bytes, over the {MAX_ENV_BYTES}-byte limit; "
                "move large values into the model artifact",
            )
        )


def check_digest(value: str | None, field: str, problems: list[Problem]) -> None:
    if value is not None and not _DIGEST.match(value):
        problems.append(
            Problem(
                "D1",
                field,
                f"{value!r} is not an image digest; send 'sha256:' followed by 64 lowercase hex digits "
                "(as printed by `docker inspect --format '{{index .RepoDigests 0}}'`)",
            )
        )


def check_not_blank(value: Any, field: str, problems: list[Problem]) -> None:
    """N1: an empty value must be sent as null or omitted, not as ""."""
    if isinstance(value, str) and not value.strip():
        problems.append(Problem("N1", field, "an empty string is not a value; send null or omit the field"))


def check_custom_endpoints(endpoints: list[dict[str, Any]] | None, field: str, problems: list[Problem]) -> None:
    if not endpoints:
        return
    if len(endpoints) > MAX_CUSTOM_ENDPOINTS:
        problems.append(
            Problem("ENDPOINTS", field, f"{len(endpoints)} custom endpoints, at most {MAX_CUSTOM_ENDPOINTS} allowed")
        )
    seen: set[str] = set()
    for i, endpoint in enumerate(endpoints):
        suffix = endpoint.get("endpointUriSuffix")
        where = f"{field}[{i}]"
        if not isinstance(suffix, str) or not _URI_SUFFIX.match(suffix):
            problems.append(
                Problem("ENDPOINTS", f"{where}.endpointUriSuffix", f"{suffix!r} is not a path suffix like '/a2a/'")
            )
        elif suffix in seen:
            problems.append(Problem("ENDPOINTS", f"{where}.endpointUriSuffix", f"{suffix!r} is listed twice"))
        else:
            seen.add(suffix)
        methods = endpoint.get("httpMethods") or []
        bad = [m for m in methods if not isinstance(m, str) or m.upper() not in HTTP_METHODS]
        if not methods or bad:
            problems.append(
                Problem(
                    "ENDPOINTS",
                    f"{where}.httpMethods",
                    f"give one or more of {sorted(HTTP_METHODS)}" + (f"; not {bad}" if bad else ""),
                )
            )


def check_environment_configuration(env_config: dict[str, Any], field: str, problems: list[Problem]) -> None:
    """Every rule on a complete (stored or to-be-stored) environment configuration."""
    kind = env_config.get("environmentConfigurationType")
    check_environment(env_config.get("environmentVariables"), f"{field}.environmentVariables", problems)
    if kind != "OCIR_CONTAINER":
        return
    image = env_config.get("image")
    check_not_blank(image, f"{field}.image", problems)
    if image is None:
        problems.append(
            Problem("D1", f"{field}.image", "an OCIR_CONTAINER deployment needs an image such as 'host/repo/name:tag'")
        )
    check_not_blank(env_config.get("imageDigest"), f"{field}.imageDigest", problems)
    if env_config.get("imageDigest"):
        check_digest(env_config.get("imageDigest"), f"{field}.imageDigest", problems)
    for name in ("serverPort", "healthCheckPort"):
        port = check_port(env_config.get(name), f"{field}.{name}", problems)
        if port is not None:
            env_config[name] = port  # numeric strings are stored as numbers
    check_cmd_entrypoint(env_config.get("cmd"), env_config.get("entrypoint"), problems)
    check_custom_endpoints(env_config.get("customHttpEndpoints"), f"{field}.customHttpEndpoints", problems)

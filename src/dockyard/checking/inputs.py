"""What `dockyard check` / `dockyard run` are asked to do, validated before anything starts.

`parse_request` turns the command line's raw values into a `CheckRequest` or raises one
`InvalidParameter` naming every bad value, its flag and the fix: an image reference that does
not parse, an artifact that is neither a zip nor a folder, a port outside 1024-65535 or
reserved (C6), a malformed JSON sample, an `-e` without `=`. Contract rules that a deployment
would refuse but that do not stop a local run (C10 sizes, environment-variable rules) are
not errors here: the check reports them as rule lines.
"""

from __future__ import annotations

import json
import shlex
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from dockyard.domain.validation import Problem, check_digest, check_port
from dockyard.errors import InvalidParameter
from dockyard.registry import parse_image_reference

MAX_PAYLOAD_BYTES = 10 * 1024 * 1024  # the gateway's request limit (413 beyond)
DEFAULT_CONTENT_TYPE = "application/json"
DEFAULT_HEALTH_BUDGET_S = 600.0  # H2
DEFAULT_PATIENCE_S = 30.0
DEFAULT_STOP_TIMEOUT_S = 10.0  # the runtime's SIGTERM-to-SIGKILL grace


@dataclass(frozen=True)
class CheckRequest:
    """One image to try, with the deployment fields a user would give (validated).

    ``entrypoint`` / ``cmd``: None keeps the image's own (Docker semantics), [] clears it.
    ``predict_data``: the body POSTed to /predict; None sends ``{}``.
    ``patience_s``: how long a conclusive non-answer (a /health status other than 200 and 503,
    or a container listening only on other ports) must last before the check stops waiting
    for the rest of the health budget.
    """

    image: str
    artifact: Path | None = None
    server_port: int = 8080
    health_port: int = 8080
    entrypoint: list[str] | None = None
    cmd: list[str] | None = None
    environment: dict[str, str] = field(default_factory=dict)
    predict_data: bytes | None = None
    content_type: str = DEFAULT_CONTENT_TYPE
    image_digest: str | None = None
    health_budget_s: float = DEFAULT_HEALTH_BUDGET_S
    patience_s: float = DEFAULT_PATIENCE_S
    stop_timeout_s: float = DEFAULT_STOP_TIMEOUT_S
    docker_host: str | None = None

    @property
    def sample(self) -> bytes:
        return self.predict_data if self.predict_data is not None else b"{}"


def parse_request(
    image: str,
    *,
    artifact: str | Path | None = None,
    server_port: int | str = 8080,
    health_port: int | str = 8080,
    entrypoint: str | None = None,
    cmd: str | None = None,
    env: list[str] | None = None,
    predict_data: str | None = None,
    content_type: str | None = None,
    image_digest: str | None = None,
    health_budget_s: float = DEFAULT_HEALTH_BUDGET_S,
    patience_s: float = DEFAULT_PATIENCE_S,
    stop_timeout_s: float = DEFAULT_STOP_TIMEOUT_S,
    docker_host: str | None = None,
) -> CheckRequest:
    """Validate every value; raise `InvalidParameter` listing all that are wrong."""
    problems: list[Problem] = []
    try:
        parse_image_reference(image)
    except InvalidParameter as exc:
        problems.append(Problem("IMAGE", "IMAGE", exc.message))
    if image_digest is not None:
        check_digest(image_digest, "--image-digest", problems)
    artifact_path = _artifact(artifact, problems)
    ports = [check_port(value, flag, problems) for value, flag in
             ((server_port, "--server-port"), (health_port, "--health-port"))]
    variables = _environment(env or [], problems)
    kind = (content_type or DEFAULT_CONTENT_TYPE).strip()
    body = _sample(predict_data, kind, problems)
    for value, flag in ((health_budget_s, "--health-budget-s"), (patience_s, "--patience-s")):
        if not value > 0:
            problems.append(Problem("INPUT", flag, f"{value:g} is not a positive number of seconds"))
    if stop_timeout_s < 0:
        problems.append(Problem("INPUT", "--stop-timeout-s", f"{stop_timeout_s:g} is negative; give seconds, e.g. 10"))
    command = _argv(entrypoint, "--entrypoint", problems), _argv(cmd, "--cmd", problems)
    if problems:
        raise InvalidParameter(_words(problems))
    return CheckRequest(
        image=image,
        artifact=artifact_path,
        server_port=int(ports[0] or 8080),
        health_port=int(ports[1] or 8080),
        entrypoint=command[0],
        cmd=command[1],
        environment=variables,
        predict_data=body,
        content_type=kind,
        image_digest=image_digest,
        health_budget_s=float(health_budget_s),
        patience_s=float(patience_s),
        stop_timeout_s=float(stop_timeout_s),
        docker_host=docker_host or None,
    )


def _words(problems: list[Problem]) -> str:
    if len(problems) == 1:
        return f"{problems[0].field}: {problems[0].message}"
    return f"{len(problems)} problems: " + "; ".join(f"{p.field}: {p.message}" for p in problems)


def _artifact(value: str | Path | None, problems: list[Problem]) -> Path | None:
    if value is None or str(value) == "":
        return None
    path = Path(value).expanduser()
    if path.is_dir():
        return path
    if not path.exists():
        problems.append(Problem("A3", "--artifact", f"{path} does not exist; give the model artifact's zip or its "
                                                    "folder"))
    elif not path.is_file() or not zipfile.is_zipfile(path):
        problems.append(Problem("A3", "--artifact", f"{path} is neither a zip archive nor a folder; give the model "
                                                    "artifact's zip (as uploaded to the model catalog) or its folder"))
    else:
        return path
    return None


def _environment(pairs: list[str], problems: list[Problem]) -> dict[str, str]:
    variables: dict[str, str] = {}
    for pair in pairs:
        key, equals, value = pair.partition("=")
        if not equals or not key:
            problems.append(Problem("ENV", "-e", f"{pair!r} is not KEY=VALUE; write e.g. -e WEB_CONCURRENCY=2"))
            continue
        variables[key] = value
    return variables


def _sample(value: str | None, content_type: str, problems: list[Problem]) -> bytes | None:
    if value is None:
        return None
    if value.startswith("@"):
        path = Path(value[1:]).expanduser()
        try:
            body = path.read_bytes()
        except OSError as exc:
            problems.append(Problem("C2", "--predict-data", f"cannot read {path}: {exc.strerror or exc}; give "
                                                           "@FILE of an existing file, or the JSON itself"))
            return None
    else:
        body = value.encode()
    if len(body) > MAX_PAYLOAD_BYTES:
        problems.append(Problem("C2", "--predict-data", f"the sample is {len(body)} bytes, over the service's "
                                                       f"{MAX_PAYLOAD_BYTES // 1024**2} MB request limit; use a "
                                                       "smaller one"))
    elif _is_json(content_type):
        try:
            json.loads(body)
        except (UnicodeDecodeError, ValueError) as exc:
            problems.append(Problem("C2", "--predict-data", f"the sample is not valid JSON ({exc}); fix it, or give "
                                                           "--content-type for a non-JSON body"))
    return body


def _is_json(content_type: str) -> bool:
    kind = content_type.split(";", 1)[0].strip().lower()
    return kind == "application/json" or kind.endswith("+json")


def _argv(value: str | None, flag: str, problems: list[Problem]) -> list[str] | None:
    """A JSON list (``'["python", "app.py"]'``) or shell words (``'python app.py'``)."""
    if value is None:
        return None
    text = value.strip()
    if text.startswith("["):
        try:
            parsed = json.loads(text)
        except ValueError as exc:
            problems.append(Problem("C10", flag, f"{value!r} starts like a JSON list but is not one ({exc}); give a "
                                                 "JSON list of strings or shell words"))
            return None
        if not isinstance(parsed, list) or not all(isinstance(item, str) for item in parsed):
            problems.append(Problem("C10", flag, "the JSON list must hold only strings, one per argument"))
            return None
        return parsed
    try:
        return shlex.split(text)
    except ValueError as exc:
        problems.append(Problem("C10", flag, f"{value!r} is not valid shell words ({exc}); close the quotes, or give "
                                             "a JSON list"))
        return None

"""Fuzz every operation of the control plane's OpenAPI document against a live server.

schemathesis generates requests from the document (bodies from the wire models, see
`dockyard.api.openapi`), each signed with the server's admin key as the `oci` SDK signs, and
every answer must pass `not_a_server_error` and carry an OCI error body when it is a 4xx/5xx.
Half of the cases aim at real resources (a project, a model with an artifact, an ACTIVE
deployment on the fake runtime, a work request) instead of random ids, so the handlers behind
the 404 are exercised too.

The CI run makes DOCKYARD_FUZZ_EXAMPLES (default 8) examples per operation; benchmarks/fuzz_api.sh
runs 100 and prints the per-operation summary.
"""

from __future__ import annotations

import io
import json
import os
import time
import zipfile
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests

import schemathesis  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402

from tests.support.server import LiveServer  # noqa: E402
from tests.support.signed_clients import SignedAccess, signed_access  # noqa: E402

EXAMPLES = int(os.environ.get("DOCKYARD_FUZZ_EXAMPLES", "8"))
API = "/20190101"
# Path parameter -> which real resource it may be pointed at.
ID_KINDS = {"project_id": "project", "model_id": "model", "deployment_id": "deployment", "work_request_id": "work_request"}


@dataclass
class Target:
    server: LiveServer
    access: SignedAccess
    session: requests.Session
    real_ids: dict[str, str]
    statuses: dict[str, Counter[int]] = field(default_factory=lambda: defaultdict(Counter))


def artifact() -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr("api.py", "print('fuzz')\n")
    return out.getvalue()


def call(session: requests.Session, method: str, url: str, **kwargs: Any) -> requests.Response:
    response = session.request(method, url, timeout=30, **kwargs)
    assert response.status_code < 300, (method, url, response.status_code, response.text)
    return response


def seed(server: LiveServer, session: requests.Session, compartment: str) -> dict[str, str]:
    base = server.url + API
    project = call(session, "POST", f"{base}/projects", json={"compartmentId": compartment, "displayName": "fuzz"}).json()
    model = call(session, "POST", f"{base}/models", json={"compartmentId": compartment, "projectId": project["id"]}).json()
    call(session, "POST", f"{base}/models/{model['id']}/artifact", data=artifact(),
         headers={"content-type": "application/octet-stream"})  # fmt: skip
    body = {
        "compartmentId": compartment,
        "projectId": project["id"],
        "displayName": "fuzz",
        "modelDeploymentConfigurationDetails": {
            "deploymentType": "SINGLE_MODEL",
            "modelConfigurationDetails": {
                "modelId": model["id"],
                "instanceConfiguration": {"instanceShapeName": "VM.Standard.E4.Flex"},
                "scalingPolicy": {"policyType": "FIXED_SIZE", "instanceCount": 1},
            },
            "environmentConfigurationDetails": {
                "environmentConfigurationType": "OCIR_CONTAINER",
                "image": "127.0.0.1:5001/dockyard-test/base:bookworm",
                "imageDigest": "sha256:" + "a" * 64,
                "serverPort": 8080,
                "healthCheckPort": 8080,
            },
        },
    }
    created = call(session, "POST", f"{base}/modelDeployments", json=body)
    deployment = created.json()
    deadline = time.monotonic() + 60
    while call(session, "GET", f"{base}/modelDeployments/{deployment['id']}").json()["lifecycleState"] != "ACTIVE":
        assert time.monotonic() < deadline, "the seed deployment never became ACTIVE on the fake runtime"
        time.sleep(0.2)
    return {"project": project["id"], "model": model["id"], "deployment": deployment["id"],
            "work_request": created.headers["opc-work-request-id"]}  # fmt: skip


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory, store_kind: str) -> Iterator[Target]:
    root = tmp_path_factory.mktemp("fuzz")
    server = LiveServer(root / "data").start()
    try:
        access = signed_access(server, root / "keys")
        session = requests.Session()
        session.auth = access.signer()
        yield Target(server, access, session, seed(server, session, access.compartment))
    finally:
        server.stop()
        print_summary_if_asked()


def openapi_document(target: Target) -> dict[str, Any]:
    # Served by the control-plane app; fetched signed, as everything else on the server.
    for path in ("/openapi.json", f"{API}/openapi.json"):
        response = target.session.get(target.server.url + path, timeout=30)
        if response.status_code == 200:
            return response.json()  # type: ignore[no-any-return]
    raise AssertionError(f"no OpenAPI document on {target.server.url}: {response.status_code} {response.text}")


def operations(target: Target) -> list[Any]:
    schema = schemathesis.openapi.from_dict(openapi_document(target))
    found = [result.ok() for result in schema.get_all_operations()]
    # Deletes last, so the real resources live as long as possible.
    return sorted(found, key=lambda op: (op.method.upper() == "DELETE", op.label))


def is_oci_error(response: requests.Response) -> str | None:
    """None when the body is an OCI error ({"code": str, "message": str}); else what is wrong."""
    if response.request.method == "HEAD":
        return None  # a HEAD answer has no body by definition
    try:
        body = response.json()
    except ValueError:
        return f"not JSON: {response.text[:200]!r}"
    if not isinstance(body, dict) or not isinstance(body.get("code"), str) or not isinstance(body.get("message"), str):
        return f"not an OCI error body: {json.dumps(body)[:300]}"
    if not body["code"] or not body["message"]:
        return f"empty code or message: {body}"
    return None


def test_the_document_describes_every_body(target: Target) -> None:
    """Routes read their bodies themselves; the document must still say what they take."""
    doc = openapi_document(target)
    writes = [(method, path) for path, ops in doc["paths"].items() for method, op in ops.items()
              if method in ("post", "put") and "/actions/activate" not in path and "/actions/deactivate" not in path]
    assert writes, doc["paths"].keys()
    missing = [(m, p) for m, p in writes if "requestBody" not in doc["paths"][p][m]]
    assert missing == []
    create = doc["paths"][f"{API}/modelDeployments"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert {"compartmentId", "projectId", "modelDeploymentConfigurationDetails"} <= set(create["properties"])
    assert "$ref" not in json.dumps(create)


def test_no_operation_answers_with_a_server_error_and_every_error_is_an_oci_error(target: Target) -> None:
    ops = operations(target)
    assert len(ops) >= 30, [op.label for op in ops]
    failures: list[str] = []
    for operation in ops:
        failures += fuzz(target, operation)
    assert failures == [], "\n".join(failures[:20])


# Body and query fields that name real resources, and where their values come from.
REAL_FIELDS = {"compartmentId": "compartment", "projectId": "project", "modelId": "model"}


def aim(case: Any, target: Target) -> None:
    """Point a generated case at the seeded resources: ids in the path, the query and the body."""
    real = target.real_ids | {"compartment": target.access.compartment}
    for name, kind in ID_KINDS.items():
        if case.path_parameters and name in case.path_parameters:
            case.path_parameters[name] = real[kind]
    if case.query and "compartmentId" in case.query:
        case.query["compartmentId"] = real["compartment"]

    def patch(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key in REAL_FIELDS and isinstance(value, str):
                    node[key] = real[REAL_FIELDS[key]]
                else:
                    patch(value)
        elif isinstance(node, list):
            for item in node:
                patch(item)

    patch(case.body)


def fuzz(target: Target, operation: Any) -> list[str]:
    failures: list[str] = []
    counts = target.statuses[operation.label]

    # Both valid bodies (reach the handlers) and schema-violating ones (reach the validation).
    cases = st.one_of(operation.as_strategy(GenerationMode.POSITIVE), operation.as_strategy(GenerationMode.NEGATIVE))

    @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=False,
              suppress_health_check=list(HealthCheck))  # fmt: skip
    @given(case=cases, aim_at_real=st.booleans())
    def run(case: Any, aim_at_real: bool) -> None:
        if aim_at_real:
            aim(case, target)
        response = case.call(base_url=target.server.url, session=target.session)
        counts[response.status_code] += 1
        where = f"{operation.label} -> {response.status_code}: {case.as_curl_command()}"
        try:
            case.validate_response(response, checks=[not_a_server_error])
        except Exception as exc:  # noqa: BLE001 - collected and reported with the request
            failures.append(f"{where}\n  {type(exc).__name__}: {exc}\n  body: {response.text[:500]}")
            return
        if response.status_code >= 400:
            wrong = is_oci_error(response)
            if wrong:
                failures.append(f"{where}\n  {wrong}")

    run()
    _SUMMARY[operation.label] = counts
    return failures


_SUMMARY: dict[str, Counter[int]] = {}


def print_summary_if_asked() -> None:
    """With DOCKYARD_FUZZ_SUMMARY set (benchmarks/fuzz_api.sh), print what each operation answered."""
    if not os.environ.get("DOCKYARD_FUZZ_SUMMARY") or not _SUMMARY:
        return
    lines = [f"{'operation':<72} {'cases':>6}  statuses"]
    total = Counter[int]()
    for label, counts in sorted(_SUMMARY.items()):
        total.update(counts)
        statuses = " ".join(f"{code}x{n}" for code, n in sorted(counts.items()))
        lines.append(f"{label:<72} {sum(counts.values()):>6}  {statuses}")
    server_errors = sum(n for code, n in total.items() if code >= 500)
    lines.append(f"{len(_SUMMARY)} operations, {sum(total.values())} requests, {server_errors} server errors "
                 f"({EXAMPLES} examples per operation)")
    Path(os.environ["DOCKYARD_FUZZ_SUMMARY"]).write_text("\n".join(lines) + "\n")


def reply(status: int, body: bytes, method: str = "GET") -> requests.Response:
    response = requests.Response()
    response.status_code, response._content = status, body
    response.request = requests.Request(method, "http://127.0.0.1/x").prepare()
    return response


def test_the_error_body_check_tells_oci_errors_from_anything_else() -> None:
    """The check above must be able to fail: only {"code": str, "message": str} passes."""
    assert is_oci_error(reply(404, b'{"code": "NotAuthorizedOrNotFound", "message": "no such model"}')) is None
    assert is_oci_error(reply(404, b'{"detail": "Not Found"}'))  # FastAPI's own 404 body
    assert is_oci_error(reply(500, b"Internal Server Error"))
    assert is_oci_error(reply(400, b'{"code": "", "message": "x"}'))
    assert is_oci_error(reply(404, b"", method="HEAD")) is None

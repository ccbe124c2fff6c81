"""Bad input gets a clear 4xx, and nothing is stored half-way; partial updates follow U1-U7.

Every refusal is checked the way a user meets it: the status, the OCI error `code`, and a
`message` that names the field or rule and says what to do. After every refused create the
lists show that nothing new was stored (no resource, no work request); after every refused
update the resource and its etag are unchanged.
"""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator
from typing import Any

import pytest

pytest.register_assert_rewrite("tests.api.inprocess")  # before the import below: its asserts explain themselves

from tests.api.inprocess import (  # noqa: E402
    DEFAULT_ARTIFACT,
    DIGEST,
    IMAGE,
    OCID_TYPES,
    UNKNOWN_IDS,
    Api,
    Catalog,
    assert_error,
    byoc_environment,
    deployment_body,
    says_what_to_do,
)
from tests.support.oci_config import COMPARTMENT  # noqa: E402

pytest_plugins = ["tests.api.inprocess"]  # its fixtures: app, api, catalog, active, standing
pytestmark = pytest.mark.asyncio(loop_scope="module")

MDCD = "modelDeploymentConfigurationDetails"
ENV_PATH = f"{MDCD}.environmentConfigurationDetails"
MODEL_PATH = f"{MDCD}.modelConfigurationDetails"


async def refused(api: Api, method: str, path: str, status: int, code: str | tuple[str, ...], *fragments: str, **kw: Any) -> str:
    """Send a request that must be refused; prove that nothing was stored because of it."""
    before = await api.snapshot()
    response = await api.request(method, path, **kw)
    message = assert_error(response, status, code, *fragments)
    assert await api.snapshot() == before, "a refused request left something behind"
    return message


async def refused_update(api: Api, deployment_id: str, body: Any, status: int, code: str, *fragments: str, **kw: Any) -> str:
    """A refused UpdateModelDeployment leaves the deployment, its etag and the work requests as they were."""
    before, etag = await api.deployment(deployment_id)
    kw = {"json": body} | kw if body is not None else kw
    message = await refused(api, "PUT", f"/modelDeployments/{deployment_id}", status, code, *fragments, **kw)
    after, etag_after = await api.deployment(deployment_id)
    assert (after, etag_after) == (before, etag), "a refused update changed the deployment"
    return message


DROP = object()  # set_path: remove the field


def set_path(body: dict[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    """A copy of `body` with the field at `dotted` set (or removed when value is DROP)."""
    body = copy.deepcopy(body)
    *parents, leaf = dotted.split(".")
    node = body
    for name in parents:
        node = node[name]
    if value is DROP:
        del node[leaf]
    else:
        node[leaf] = value
    return body


# --- the body is not a JSON object ------------------------------------------------------------


CREATE_PATHS = ["/projects", "/models", "/modelDeployments"]


@pytest.mark.parametrize("path", CREATE_PATHS)
async def test_malformed_json_is_refused(api: Api, catalog: Catalog, path: str) -> None:
    message = await refused(
        api, "POST", path, 400, "CannotParseRequest", "JSON",
        content=b'{"compartmentId": "' + COMPARTMENT.encode() + b'",', headers={"content-type": "application/json"},
    )  # fmt: skip
    assert "not valid JSON" in message


@pytest.mark.parametrize("path", CREATE_PATHS)
@pytest.mark.parametrize("payload", [b'[{"compartmentId": "x"}]', b'"text"', b"null"])
async def test_a_json_value_that_is_not_an_object_is_refused(api: Api, catalog: Catalog, path: str, payload: bytes) -> None:
    await refused(
        api, "POST", path, 400, ("InvalidParameter", "CannotParseRequest"), "JSON object",
        content=payload, headers={"content-type": "application/json"},
    )  # fmt: skip


async def test_an_empty_body_is_refused(api: Api, catalog: Catalog) -> None:
    await refused(api, "POST", "/projects", 400, ("MissingParameter", "CannotParseRequest"), "empty",
                  content=b"", headers={"content-type": "application/json"})  # fmt: skip


@pytest.mark.parametrize("payload", [b"{not json", b"[]", b""])
async def test_update_with_a_body_that_is_not_an_object_is_refused(api: Api, standing: dict[str, Any], payload: bytes) -> None:
    await refused_update(
        api, standing["id"], None, 400, ("CannotParseRequest", "InvalidParameter", "MissingParameter"),
        content=payload, headers={"content-type": "application/json"},
    )  # fmt: skip


# --- wrong types --------------------------------------------------------------------------------


async def test_a_number_for_display_name_is_refused(api: Api, catalog: Catalog) -> None:
    await refused(api, "POST", "/projects", 400, "InvalidParameter", "displayName", "string",
                  json={"compartmentId": COMPARTMENT, "displayName": 5})  # fmt: skip
    body = catalog.deployment_body() | {"displayName": 12}
    await refused(api, "POST", "/modelDeployments", 400, "InvalidParameter", "displayName", "string", json=body)


async def test_text_no_store_can_hold_is_refused_naming_the_field(api: Api, catalog: Catalog) -> None:
    """A NUL character, or a lone UTF-16 surrogate, anywhere in a body (key or value) is a 400
    naming its place: PostgreSQL's text cannot hold a NUL (it was a 500 there, while SQLite kept
    it), and a lone surrogate is not Unicode at all."""
    await refused(api, "POST", "/projects", 400, "InvalidParameter", "displayName", "NUL", "remove it",
                  json={"compartmentId": COMPARTMENT, "displayName": "a\u0000b"})  # fmt: skip
    await refused(api, "POST", "/projects", 400, "InvalidParameter", "description", "surrogate",
                  content=b'{"compartmentId": "%s", "description": "a\\ud800b"}' % COMPARTMENT.encode(),
                  headers={"content-type": "application/json"})  # fmt: skip
    model = f"/models/{catalog.model['id']}"
    before = await api.request("GET", model)
    await refused(api, "PUT", model, 400, "InvalidParameter", "freeformTags.k", "NUL", json={"freeformTags": {"k\u0000": "v"}})
    await refused(api, "PUT", model, 400, "InvalidParameter", "customMetadataList[0].value", "NUL",
                  json={"customMetadataList": [{"key": "k", "value": "\u0000"}]})  # fmt: skip
    after = await api.request("GET", model)
    assert (after.json(), after.headers["etag"]) == (before.json(), before.headers["etag"]), "a refused update changed the model"
    # An escaped backslash before "u0000" is text like any other.
    made = await api.request("POST", "/projects", json={"compartmentId": COMPARTMENT, "displayName": "\\u0000"})
    assert made.status_code == 200 and made.json()["displayName"] == "\\u0000", made.text


@pytest.mark.parametrize("collection", ["projects", "models", "modelDeployments", "workRequests"])
async def test_a_nul_in_a_query_parameter_is_refused_naming_it(api: Api, collection: str) -> None:
    """A list filtered on text with a NUL in it is a 400 (it was a 500 on PostgreSQL)."""
    await refused(api, "GET", f"/{collection}?compartmentId={COMPARTMENT}&displayName=a%00b", 400, "InvalidParameter",
                  "displayName", "NUL", "remove it")  # fmt: skip


@pytest.mark.parametrize("count", ["two", "2", 1.5, True, None])
async def test_a_non_integer_instance_count_is_refused(api: Api, catalog: Catalog, count: Any) -> None:
    """schemas/base.py: "a string where a number belongs (other than a numeric port) is a 400"."""
    body = set_path(catalog.deployment_body(), f"{MODEL_PATH}.scalingPolicy.instanceCount", count)
    await refused(api, "POST", "/modelDeployments", 400, ("InvalidParameter", "MissingParameter"), "instanceCount", json=body)


@pytest.mark.parametrize("value", [{"nested": "object"}, ["a", "list"], 7, None])
async def test_a_non_string_environment_variable_value_is_refused(api: Api, catalog: Catalog, value: Any) -> None:
    body = catalog.deployment_body(env=byoc_environment(environmentVariables={"GOOD": "yes", "BAD": value}))
    message = await refused(api, "POST", "/modelDeployments", 400, "InvalidParameter", "environmentVariables", json=body)
    assert "BAD" in message and "GOOD" not in message


async def test_error_messages_name_fields_by_their_json_path(api: Api, catalog: Catalog) -> None:
    """The path in a message is the path in the JSON the user sent: no discriminator values
    (SINGLE_MODEL, OCIR_CONTAINER, FIXED_SIZE) and no Python names (snake_case) in it."""
    cases = [
        (set_path(catalog.deployment_body(), f"{MODEL_PATH}.scalingPolicy.instanceCount", "two"),
         f"{MODEL_PATH}.scalingPolicy.instanceCount"),
        (catalog.deployment_body(env=byoc_environment(environmentVariables={"K": {"a": 1}})),
         f"{ENV_PATH}.environmentVariables.K"),
        (set_path(catalog.deployment_body(), f"{MODEL_PATH}.modelId", DROP), f"{MODEL_PATH}.modelId"),
        (set_path(catalog.deployment_body(), f"{MDCD}.deploymentType", "BOGUS"), f"{MDCD}.deploymentType"),
        (set_path(catalog.deployment_body(), f"{ENV_PATH}.environmentConfigurationType", "X"),
         f"{ENV_PATH}.environmentConfigurationType"),
        (set_path(catalog.deployment_body(), f"{MODEL_PATH}.scalingPolicy.policyType", "Y"),
         f"{MODEL_PATH}.scalingPolicy.policyType"),
    ]  # fmt: skip
    wrong = []
    for body, path in cases:
        response = await api.post("/modelDeployments", json=body)
        assert response.status_code == 400, response.text
        message = response.json()["message"]
        if path not in message or "_type" in message:
            wrong.append(f"expected {path!r} in {message!r}")
    assert not wrong, "\n".join(wrong)


# --- missing required fields -----------------------------------------------------------------------


async def test_project_without_compartment_id_is_refused(api: Api) -> None:
    await refused(api, "POST", "/projects", 400, "MissingParameter", "compartmentId", json={"displayName": "p"})


async def test_model_without_project_id_is_refused(api: Api, catalog: Catalog) -> None:
    await refused(api, "POST", "/models", 400, "MissingParameter", "projectId", json={"compartmentId": COMPARTMENT})


@pytest.mark.parametrize(
    "dotted, field",
    [
        ("compartmentId", "compartmentId"),
        ("projectId", "projectId"),
        (MDCD, MDCD),
        (f"{MODEL_PATH}.modelId", "modelId"),
        (f"{MODEL_PATH}.instanceConfiguration", "instanceConfiguration"),
        (f"{MODEL_PATH}.instanceConfiguration.instanceShapeName", "instanceShapeName"),
    ],
)
async def test_deployment_without_a_required_field_is_refused(api: Api, catalog: Catalog, dotted: str, field: str) -> None:
    body = set_path(catalog.deployment_body(), dotted, DROP)
    await refused(api, "POST", "/modelDeployments", 400, "MissingParameter", field, "required", json=body)


# --- discriminators ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "dotted, value, field, accepted",
    [
        (f"{MDCD}.deploymentType", "BOGUS", "deploymentType", ["SINGLE_MODEL"]),
        (f"{ENV_PATH}.environmentConfigurationType", "X", "environmentConfigurationType", ["DEFAULT", "OCIR_CONTAINER"]),
        (f"{MODEL_PATH}.scalingPolicy.policyType", "Y", "policyType", ["FIXED_SIZE", "AUTOSCALING"]),
    ],
)
async def test_unknown_discriminator_is_refused_with_the_accepted_values(
    api: Api, catalog: Catalog, dotted: str, value: str, field: str, accepted: list[str]
) -> None:
    body = set_path(catalog.deployment_body(), dotted, value)
    message = await refused(api, "POST", "/modelDeployments", 400, "InvalidParameter", field, repr(value), json=body)
    for name in accepted:
        assert name in message, f"{name} is not offered in {message!r}"


@pytest.mark.parametrize(
    "dotted, field, accepted",
    [
        (f"{MDCD}.deploymentType", "deploymentType", ["SINGLE_MODEL"]),
        (f"{ENV_PATH}.environmentConfigurationType", "environmentConfigurationType", ["DEFAULT", "OCIR_CONTAINER"]),
        (f"{MODEL_PATH}.scalingPolicy.policyType", "policyType", ["FIXED_SIZE", "AUTOSCALING"]),
    ],
)
async def test_missing_discriminator_is_refused_with_the_accepted_values(
    api: Api, catalog: Catalog, dotted: str, field: str, accepted: list[str]
) -> None:
    """schemas/deployments.py: "a missing or unknown one is a 400 that lists the accepted values"."""
    body = set_path(catalog.deployment_body(), dotted, DROP)
    message = await refused(api, "POST", "/modelDeployments", 400, ("InvalidParameter", "MissingParameter"), field, json=body)
    for name in accepted:
        assert name in message, f"{name} is not offered in {message!r}"


@pytest.mark.parametrize("kind", ["MODEL_GROUP", "SINGLE_MODEL_FLEX"])
async def test_deployment_types_dockyard_does_not_serve_are_named_as_not_supported(api: Api, catalog: Catalog, kind: str) -> None:
    body = catalog.deployment_body()
    body[MDCD] = {
        "deploymentType": kind,
        "modelGroupConfigurationDetails": {"modelGroupId": "ocid1.datasciencemodelgroup.oc1..x"},
        "infrastructureConfigurationDetails": {"infrastructureType": "INSTANCE_POOL"},
    }
    message = await refused(api, "POST", "/modelDeployments", 400, "InvalidParameter", kind, "SINGLE_MODEL", json=body)
    assert "not served" in message or "not supported" in message, message


@pytest.mark.parametrize(
    "update, field",
    [
        ({MDCD: {"deploymentType": "BOGUS"}}, "deploymentType"),
        ({"environmentConfigurationDetails": {"environmentConfigurationType": "X"}}, "environmentConfigurationType"),
        ({MDCD: {"deploymentType": "SINGLE_MODEL", "environmentConfigurationDetails": {"environmentConfigurationType": "X"}}},
         "environmentConfigurationType"),
        ({MDCD: {"deploymentType": "SINGLE_MODEL", "modelConfigurationDetails": {"scalingPolicy": {"policyType": "Y"}}}},
         "policyType"),
        ({MDCD: {"deploymentType": "SINGLE_MODEL", "modelConfigurationDetails": {"scalingPolicy": {"instanceCount": 2}}}},
         "policyType"),
        ({MDCD: {"deploymentType": "MODEL_GROUP"}}, "MODEL_GROUP"),
    ],
)  # fmt: skip
async def test_update_with_a_bad_discriminator_is_refused(api: Api, standing: dict[str, Any], update: dict[str, Any], field: str) -> None:
    await refused_update(api, standing["id"], update, 400, "InvalidParameter", field)


# --- oversized bodies -------------------------------------------------------------------------------


LIMIT = 1024 * 1024  # Settings.max_json_body_bytes


def oversized_project_body() -> bytes:
    return b'{"compartmentId": "' + COMPARTMENT.encode() + b'", "description": "' + b"x" * LIMIT + b'"}'


async def test_an_oversized_json_body_with_content_length_is_refused(api: Api) -> None:
    before = await api.snapshot()
    response = await api.post("/projects", content=oversized_project_body(), headers={"content-type": "application/json"})
    assert int(response.request.headers["content-length"]) > LIMIT
    assert_error(response, 413, "PayloadTooLarge", str(LIMIT))
    assert await api.snapshot() == before


async def test_an_oversized_chunked_json_body_without_content_length_is_refused(api: Api) -> None:
    """A signed JSON POST must sign content-length (oci-api.md §5), so a chunked body cannot carry
    a valid signature: it is refused before the server reads it. Signed, the same body gets 413."""

    async def chunks() -> AsyncIterator[bytes]:
        body = oversized_project_body()
        for start in range(0, len(body), 64 * 1024):
            yield body[start : start + 64 * 1024]

    before = await api.snapshot()
    response = await api.post("/projects", content=chunks(), headers={"content-type": "application/json"}, auth=None)
    assert "content-length" not in response.request.headers
    assert response.request.headers["transfer-encoding"] == "chunked"
    assert_error(response, 401, "NotAuthenticated")
    response = await api.post("/projects", content=chunks(), headers={"content-type": "application/json"})
    assert_error(response, 413, "PayloadTooLarge", str(LIMIT))
    assert await api.snapshot() == before


async def test_an_oversized_deployment_update_is_refused(api: Api, standing: dict[str, Any]) -> None:
    body = b'{"displayName": "x", "description": "' + b"y" * LIMIT + b'"}'
    await refused_update(api, standing["id"], None, 413, "PayloadTooLarge", str(LIMIT),
                         content=body, headers={"content-type": "application/json"})  # fmt: skip


# --- ids in paths -----------------------------------------------------------------------------------


@pytest.mark.parametrize("collection", list(OCID_TYPES))
async def test_a_path_id_that_is_not_an_ocid_is_a_404_that_says_so(api: Api, collection: str) -> None:
    response = await api.get(f"/{collection}/not-an-ocid")
    message = assert_error(response, 404, "NotAuthorizedOrNotFound", "not-an-ocid")
    assert "not an OCID" in message, message


@pytest.mark.parametrize(
    "method, path",
    [
        ("PUT", "/projects/x1"),
        ("DELETE", "/projects/x1"),
        ("PUT", "/models/x1"),
        ("DELETE", "/models/x1"),
        ("POST", "/models/x1/actions/deactivate"),
        ("GET", "/models/x1/artifact/content"),
        ("HEAD", "/models/x1/artifact/content"),
        ("POST", "/models/x1/artifact"),
        ("PUT", "/modelDeployments/x1"),
        ("DELETE", "/modelDeployments/x1"),
        ("POST", "/modelDeployments/x1/actions/activate"),
        ("POST", "/modelDeployments/x1/actions/deactivate"),
        ("GET", "/workRequests/x1/logs"),
        ("GET", "/workRequests/x1/errors"),
    ],
)
async def test_every_operation_answers_a_non_ocid_path_id_with_404(api: Api, method: str, path: str) -> None:
    kw: dict[str, Any] = {"json": {"displayName": "x"}} if method == "PUT" else {}
    if path.endswith("/artifact"):
        kw = {"content": b"PK\x05\x06" + b"\x00" * 18}
    response = await api.request(method, path, **kw)
    assert response.status_code == 404, response.text
    if method != "HEAD":
        message = assert_error(response, 404, "NotAuthorizedOrNotFound", "x1")
        assert "not an OCID" in message, message


@pytest.mark.parametrize("collection", list(OCID_TYPES))
async def test_an_id_of_another_type_is_a_404_naming_the_type(api: Api, catalog: Catalog, collection: str) -> None:
    other = catalog.model_id if collection == "projects" else catalog.project_id
    other_type = "datasciencemodel" if collection == "projects" else "datascienceproject"
    response = await api.get(f"/{collection}/{other}")
    message = assert_error(response, 404, "NotAuthorizedOrNotFound", other)
    assert f"a {other_type}" in message, f"the message does not say the id is a {other_type}: {message!r}"
    assert OCID_TYPES[collection] in message, f"the message does not say which type was expected: {message!r}"


@pytest.mark.parametrize("collection", list(UNKNOWN_IDS))
async def test_a_well_formed_unknown_id_is_not_authorized_or_not_found(api: Api, catalog: Catalog, collection: str) -> None:
    response = await api.get(f"/{collection}/{UNKNOWN_IDS[collection]}")
    message = assert_error(response, 404, "NotAuthorizedOrNotFound", UNKNOWN_IDS[collection])
    assert "not found" in message, message


async def test_a_deployment_of_an_unknown_model_or_project_is_refused(api: Api, catalog: Catalog) -> None:
    body = deployment_body(catalog.project_id, UNKNOWN_IDS["models"])
    await refused(api, "POST", "/modelDeployments", 400, "RelatedResourceNotAuthorizedOrNotFound", "modelId", json=body)
    body = deployment_body(UNKNOWN_IDS["projects"], catalog.model_id)
    await refused(api, "POST", "/modelDeployments", 400, "RelatedResourceNotAuthorizedOrNotFound", "projectId", json=body)


# --- artifacts --------------------------------------------------------------------------------------


def artifact_files(api: Api) -> tuple[list[str], list[str]]:
    assert api.data_dir is not None
    root = api.data_dir / "artifacts"
    return sorted(p.name for p in (root / "blobs").iterdir()), sorted(p.name for p in (root / "tmp").iterdir())


@pytest.mark.parametrize("model_id", [UNKNOWN_IDS["models"], "not-an-ocid"])
async def test_artifact_upload_to_a_missing_model_is_a_404_and_stores_nothing(api: Api, catalog: Catalog, model_id: str) -> None:
    files = artifact_files(api)
    response = await api.post(f"/models/{model_id}/artifact", content=DEFAULT_ARTIFACT,
                              headers={"content-type": "application/octet-stream"})  # fmt: skip
    assert_error(response, 404, "NotAuthorizedOrNotFound", model_id)
    assert artifact_files(api) == files


async def test_deploying_a_model_without_an_artifact_is_refused_naming_a1(api: Api, catalog: Catalog) -> None:
    bare = await api.create_model(catalog.project_id, "bare", artifact=None)
    body = deployment_body(catalog.project_id, bare["id"])
    message = await refused(api, "POST", "/modelDeployments", 400, "InvalidParameter", "A1", bare["id"], json=body)
    assert "artifact" in message


async def test_a_default_deployment_needs_score_py_and_runtime_yaml_a2(api: Api, catalog: Catalog) -> None:
    body = catalog.deployment_body(env={"environmentConfigurationType": "DEFAULT"})
    await refused(api, "POST", "/modelDeployments", 400, "InvalidParameter", "A2", "score.py", "runtime.yaml", json=body)
    # The same request is accepted once the artifact has both files: the refusal was about A2 only.
    conda = await api.create_model(catalog.project_id, "conda", artifact=DEFAULT_ARTIFACT)
    await api.create_deployment(deployment_body(catalog.project_id, conda["id"], env={"environmentConfigurationType": "DEFAULT"}))


# --- C6 ports ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "field, port",
    [("serverPort", p) for p in (1023, 65536, 24224, 8446, 8447, 0, -1, "8x", 80.5)]
    + [("healthCheckPort", p) for p in (1023, 65536, 24224, 8446, 8447)],
)
async def test_ports_outside_c6_are_refused(api: Api, catalog: Catalog, field: str, port: Any) -> None:
    body = catalog.deployment_body(env=byoc_environment(**{field: port}))
    message = await refused(api, "POST", "/modelDeployments", 400, "InvalidParameter", field, json=body)
    assert "C6" in message or isinstance(port, (str, float)), message


async def test_a_numeric_string_port_is_accepted_and_stored_as_a_number(api: Api, catalog: Catalog) -> None:
    body = catalog.deployment_body(env=byoc_environment(serverPort="5000", healthCheckPort="5001"))
    created, _ = await api.create_deployment(body)
    stored, _ = await api.deployment(created["id"])
    env = stored[MDCD]["environmentConfigurationDetails"]
    assert env["serverPort"] == 5000 and type(env["serverPort"]) is int
    assert env["healthCheckPort"] == 5001 and type(env["healthCheckPort"]) is int
    assert created[MDCD]["environmentConfigurationDetails"]["serverPort"] == 5000


@pytest.mark.parametrize("port", [1024, 65535, 8080, 8445, 8448, 24223, 24225])
async def test_ports_inside_c6_are_accepted(api: Api, catalog: Catalog, port: int) -> None:
    await api.create_deployment(catalog.deployment_body(env=byoc_environment(serverPort=port, healthCheckPort=port)), wait=False)


async def test_update_to_a_reserved_port_is_refused(api: Api, standing: dict[str, Any]) -> None:
    await refused_update(api, standing["id"], {"environmentConfigurationDetails": {"serverPort": 8446}}, 400,
                         "InvalidParameter", "C6", "serverPort")  # fmt: skip


# --- C10 cmd + entrypoint -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "cmd, entrypoint",
    [(["x" * 3072], None), (["a" * 1500], ["b" * 600]), ([f"--arg{i}" for i in range(400)], ["python"])],
)
async def test_cmd_and_entrypoint_over_2048_bytes_are_refused_c10(api: Api, catalog: Catalog, cmd: list[str], entrypoint: Any) -> None:
    env = byoc_environment(cmd=cmd) | ({"entrypoint": entrypoint} if entrypoint is not None else {})
    message = await refused(api, "POST", "/modelDeployments", 400, "InvalidParameter", "C10", "2048",
                            json=catalog.deployment_body(env=env))  # fmt: skip
    assert "cmd" in message and "entrypoint" in message


async def test_cmd_and_entrypoint_of_exactly_2048_bytes_are_accepted(api: Api, catalog: Catalog) -> None:
    env = byoc_environment(cmd=["c" * 1024], entrypoint=["e" * 1024])
    await api.create_deployment(catalog.deployment_body(env=env), wait=False)


async def test_update_over_c10_is_refused(api: Api, standing: dict[str, Any]) -> None:
    await refused_update(api, standing["id"], {"environmentConfigurationDetails": {"cmd": ["z" * 3000]}}, 400,
                         "InvalidParameter", "C10")  # fmt: skip


# --- environment variables ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key",
    ["1abc", "a-b", "has space", "ab_", "KEY_", "MODEL_DEPLOYMENT_OCID", "", "K" * 32, "é_accent"],
)
async def test_bad_environment_variable_keys_are_refused(api: Api, catalog: Catalog, key: str) -> None:
    body = catalog.deployment_body(env=byoc_environment(environmentVariables={"GOOD": "1", key: "v"}))
    message = await refused(api, "POST", "/modelDeployments", 400, "InvalidParameter", "environmentVariables", json=body)
    if key:
        assert key in message, message
    if key.endswith("_"):
        assert "'_'" in message and "end" in message, message
    if key == "MODEL_DEPLOYMENT_OCID":
        assert "injected" in message or "reserved" in message, message


async def test_environment_variables_over_2048_bytes_are_refused(api: Api, catalog: Catalog) -> None:
    variables = {"K1": "x" * 1100, "K2": "y" * 1000}  # 2104 bytes of keys and values
    body = catalog.deployment_body(env=byoc_environment(environmentVariables=variables))
    await refused(api, "POST", "/modelDeployments", 400, "InvalidParameter", "environmentVariables", "2048", json=body)
    # The same rule holds for DEFAULT (conda) deployments.
    conda = await api.create_model(catalog.project_id, "conda", artifact=DEFAULT_ARTIFACT)
    body = deployment_body(catalog.project_id, conda["id"],
                           env={"environmentConfigurationType": "DEFAULT", "environmentVariables": variables})  # fmt: skip
    await refused(api, "POST", "/modelDeployments", 400, "InvalidParameter", "environmentVariables", "2048", json=body)


async def test_environment_variables_of_exactly_2048_bytes_are_accepted(api: Api, catalog: Catalog) -> None:
    variables = {"K1": "x" * 1022, "K2": "y" * 1022}
    await api.create_deployment(catalog.deployment_body(env=byoc_environment(environmentVariables=variables)), wait=False)


async def test_update_shadowing_model_deployment_ocid_is_refused(api: Api, standing: dict[str, Any]) -> None:
    update = {"environmentConfigurationDetails": {"environmentVariables": {"MODEL_DEPLOYMENT_OCID": "mine"}}}
    await refused_update(api, standing["id"], update, 400, "InvalidParameter", "MODEL_DEPLOYMENT_OCID")


# --- image, digest, N1, D4 ----------------------------------------------------------------------------


@pytest.mark.parametrize("digest", ["sha256:abc", "abc", "sha256:" + "A" * 64, "md5:" + "a" * 32, "sha256:" + "a" * 65])
async def test_a_malformed_digest_is_refused(api: Api, catalog: Catalog, digest: str) -> None:
    body = catalog.deployment_body(env=byoc_environment(imageDigest=digest))
    await refused(api, "POST", "/modelDeployments", 400, "InvalidParameter", "imageDigest", repr(digest), "sha256:", json=body)


@pytest.mark.parametrize("field", ["image", "imageDigest"])
async def test_an_empty_string_image_or_digest_is_refused_n1(api: Api, catalog: Catalog, field: str) -> None:
    body = catalog.deployment_body(env=byoc_environment(**{field: ""}))
    await refused(api, "POST", "/modelDeployments", 400, "InvalidParameter", "N1", field, json=body)


async def test_a_container_deployment_without_an_image_is_refused(api: Api, catalog: Catalog) -> None:
    env = byoc_environment()
    del env["image"]
    await refused(api, "POST", "/modelDeployments", 400, "InvalidParameter", "image",
                  json=catalog.deployment_body(env=env))  # fmt: skip


@pytest.mark.parametrize("field", ["image", "imageDigest"])
@pytest.mark.parametrize("shape", ["shorthand", "nested"])
async def test_update_cannot_clear_image_or_digest_d4(api: Api, standing: dict[str, Any], field: str, shape: str) -> None:
    env = {field: ""}
    update = {"environmentConfigurationDetails": env} if shape == "shorthand" else {
        MDCD: {"deploymentType": "SINGLE_MODEL", "environmentConfigurationDetails": env | {"environmentConfigurationType": "OCIR_CONTAINER"}}
    }  # fmt: skip
    await refused_update(api, standing["id"], update, 400, "InvalidParameter", "D4", field)


async def test_update_with_null_image_and_digest_leaves_them_unchanged_d4(api: Api, active: dict[str, Any]) -> None:
    update = {"environmentConfigurationDetails": {"image": None, "imageDigest": None, "serverPort": 6000}}
    response = await api.put(f"/modelDeployments/{active['id']}", json=update)
    assert response.status_code == 202, response.text
    env = (await api.wait_settled(active["id"]))[MDCD]["environmentConfigurationDetails"]
    assert (env["image"], env["imageDigest"], env["serverPort"]) == (IMAGE, DIGEST, 6000)


async def test_update_with_a_malformed_digest_is_refused(api: Api, standing: dict[str, Any]) -> None:
    update = {"environmentConfigurationDetails": {"imageDigest": "sha256:abc"}}
    await refused_update(api, standing["id"], update, 400, "InvalidParameter", "imageDigest", "sha256:abc")


# --- shapes -------------------------------------------------------------------------------------------


async def test_an_unknown_shape_is_refused_with_the_list_of_shapes(api: Api, catalog: Catalog) -> None:
    shapes = [s["name"] for s in await api.list_all("/modelDeploymentShapes")]
    assert shapes
    message = await refused(api, "POST", "/modelDeployments", 400, "InvalidParameter", "instanceShapeName", "VM.Bogus.Flex",
                            json=catalog.deployment_body(shape="VM.Bogus.Flex"))  # fmt: skip
    missing = [name for name in shapes if name not in message]
    assert not missing, f"shapes not offered: {missing}"


async def test_update_to_an_unknown_shape_is_refused(api: Api, standing: dict[str, Any]) -> None:
    update = {MDCD: {"deploymentType": "SINGLE_MODEL",
                     "modelConfigurationDetails": {"instanceConfiguration": {"instanceShapeName": "VM.Nope"}}}}  # fmt: skip
    await refused_update(api, standing["id"], update, 400, "InvalidParameter", "instanceShapeName", "VM.Nope")


# --- state conflicts ----------------------------------------------------------------------------------


async def test_update_of_a_deleted_deployment_is_a_permanent_conflict(api: Api, active: dict[str, Any]) -> None:
    deleted = await api.delete(f"/modelDeployments/{active['id']}")
    assert deleted.status_code == 202
    await api.wait_state(active["id"], "DELETED")
    # Conflict, not IncorrectState: the SDK retries IncorrectState for ten minutes.
    message = await refused_update(api, active["id"], {"displayName": "again"}, 409, "Conflict", "DELETED")
    assert says_what_to_do(message, "update"), f"no next step beyond the refused verb: {message!r}"


async def test_activate_of_an_active_deployment_is_a_permanent_conflict(api: Api, standing: dict[str, Any]) -> None:
    before, etag = await api.deployment(standing["id"])
    message = await refused(api, "POST", f"/modelDeployments/{standing['id']}/actions/activate", 409, "Conflict", "ACTIVE")
    assert await api.deployment(standing["id"]) == (before, etag)
    assert says_what_to_do(message, "activate"), f"no next step beyond the refused verb: {message!r}"


async def test_deactivate_of_an_inactive_deployment_is_a_permanent_conflict(api: Api, active: dict[str, Any]) -> None:
    response = await api.post(f"/modelDeployments/{active['id']}/actions/deactivate")
    assert response.status_code == 202
    await api.wait_state(active["id"], "INACTIVE")
    message = await refused(api, "POST", f"/modelDeployments/{active['id']}/actions/deactivate", 409, "Conflict", "INACTIVE")
    assert says_what_to_do(message, "deactivate"), f"no next step beyond the refused verb: {message!r}"


# --- list parameters ----------------------------------------------------------------------------------


LISTS = ["/projects", "/models", "/modelDeployments", "/workRequests", "/modelDeploymentShapes"]


@pytest.mark.parametrize("path", LISTS)
async def test_a_list_without_compartment_id_is_refused(api: Api, path: str) -> None:
    response = await api.get(path)
    assert_error(response, 400, ("MissingParameter", "InvalidParameter"), "compartmentId")


@pytest.mark.parametrize("path", LISTS)
@pytest.mark.parametrize("limit", [0, -1, "abc"])
async def test_a_bad_limit_is_refused(api: Api, path: str, limit: Any) -> None:
    response = await api.get(path, params={"compartmentId": COMPARTMENT, "limit": limit})
    assert_error(response, 400, "InvalidParameter", "limit")


@pytest.mark.parametrize("path", LISTS)
@pytest.mark.parametrize("page", ["garbage", "!!!", "bzotMQ"])  # bzotMQ = base64("o:-1")
async def test_a_garbage_page_token_is_refused(api: Api, path: str, page: str) -> None:
    response = await api.get(path, params={"compartmentId": COMPARTMENT, "page": page})
    assert_error(response, 400, "InvalidParameter", "page", "opc-next-page")


async def test_a_list_with_a_compartment_id_that_is_not_an_ocid_is_refused(api: Api) -> None:
    response = await api.get("/projects", params={"compartmentId": "my-compartment"})
    assert_error(response, 400, "InvalidParameter", "compartmentId", "my-compartment")


# === U1-U7: partial updates end to end =================================================================


U2_UPDATE_ENV = {"serverPort": 2000, "environmentVariables": {"x": "y"}, "entrypoint": []}
U2_SHAPES = {
    # what the SDK sends (UpdateSingleModelDeploymentConfigurationDetails + UpdateOcir...)
    "nested": {MDCD: {"deploymentType": "SINGLE_MODEL",
                      "environmentConfigurationDetails": {"environmentConfigurationType": "OCIR_CONTAINER", **U2_UPDATE_ENV}}},
    # what the BYOC document shows
    "shorthand": {"environmentConfigurationDetails": U2_UPDATE_ENV},
}  # fmt: skip


async def update_and_wait(api: Api, deployment_id: str, body: dict[str, Any], until: str = "settled") -> dict[str, Any]:
    """Update; then wait until the deployment is ACTIVE again (`settled`) or until the work
    request has finished (`finished`). Returns the work request as it is then.

    Waiting on the deployment keeps these tests about U1-U7; whether work requests of
    rolling updates finish is test_concurrency_and_tokens.py's business."""
    response = await api.put(f"/modelDeployments/{deployment_id}", json=body)
    assert response.status_code == 202, response.text
    assert response.content == b""
    wr_id = response.headers["opc-work-request-id"]
    if until == "finished":
        wr = await api.wait(wr_id)
        assert wr["status"] == "SUCCEEDED", wr
    else:
        await api.wait_settled(deployment_id)
        wr = (await api.get(f"/workRequests/{wr_id}")).json()
    assert wr["operationType"] == "MODEL_DEPLOYMENT_UPDATE"
    return wr  # type: ignore[no-any-return]


@pytest.mark.parametrize("shape", list(U2_SHAPES))
async def test_u2_worked_example(api: Api, active: dict[str, Any], shape: str) -> None:
    before, _ = await api.deployment(active["id"])
    await update_and_wait(api, active["id"], U2_SHAPES[shape])
    after = await api.wait_settled(active["id"])
    env = after[MDCD]["environmentConfigurationDetails"]
    assert env == {
        "environmentConfigurationType": "OCIR_CONTAINER",
        "serverPort": 2000,
        "image": IMAGE,
        "imageDigest": DIGEST,
        "environmentVariables": {"x": "y"},
        "entrypoint": [],
        "cmd": ["param1"],
        "defaultEnvironmentVariables": {"MODEL_DEPLOYMENT_OCID": active["id"]},
    }
    # U7: nothing outside the environment moved
    assert after[MDCD]["modelConfigurationDetails"] == before[MDCD]["modelConfigurationDetails"]
    for name in ("displayName", "description", "projectId", "compartmentId", "freeformTags", "definedTags", "timeCreated"):
        assert after[name] == before[name], name
    # and the instance that now runs has the new configuration
    specs = api.specs(active["id"])
    assert len(specs) == 1
    assert (specs[0].server_port, specs[0].entrypoint, specs[0].cmd) == (2000, [], ["param1"])
    assert specs[0].environment == {"x": "y", "MODEL_DEPLOYMENT_OCID": active["id"]}


U3_UPDATES = {
    "shorthand-empty": {"environmentConfigurationDetails": {}},
    "shorthand-null": {"environmentConfigurationDetails": None},
    "nested-empty": {MDCD: {"deploymentType": "SINGLE_MODEL", "environmentConfigurationDetails": {}}},
    "nested-null": {MDCD: {"deploymentType": "SINGLE_MODEL", "environmentConfigurationDetails": None}},
    "nested-type-only": {MDCD: {"deploymentType": "SINGLE_MODEL",
                                "environmentConfigurationDetails": {"environmentConfigurationType": "OCIR_CONTAINER"}}},
    "config-null": {MDCD: None},
    "empty-body": {},
}  # fmt: skip


@pytest.mark.parametrize("case", list(U3_UPDATES))
async def test_u3_an_empty_or_null_environment_changes_nothing(api: Api, active: dict[str, Any], case: str) -> None:
    before, _ = await api.deployment(active["id"])
    instances = api.specs(active["id"])
    wr = await update_and_wait(api, active["id"], U3_UPDATES[case], until="finished")
    assert wr["percentComplete"] == 100
    after, _ = await api.deployment(active["id"])
    assert after == before
    assert api.specs(active["id"]) == instances, "no instance was replaced"


async def test_an_update_of_several_groups_at_once_takes_effect_entirely(api: Api, active: dict[str, Any]) -> None:
    update = {
        "displayName": "renamed",
        "description": "two instances, new variables",
        MDCD: {
            "deploymentType": "SINGLE_MODEL",
            "modelConfigurationDetails": {"scalingPolicy": {"policyType": "FIXED_SIZE", "instanceCount": 2}},
            "environmentConfigurationDetails": {"environmentConfigurationType": "OCIR_CONTAINER",
                                                "environmentVariables": {"NEW_VAR": "1"}},
        },
    }  # fmt: skip
    await update_and_wait(api, active["id"], update)
    after = await api.wait_settled(active["id"])
    assert after["displayName"] == "renamed" and after["description"] == "two instances, new variables"
    model = after[MDCD]["modelConfigurationDetails"]
    assert model["scalingPolicy"] == {"policyType": "FIXED_SIZE", "instanceCount": 2}
    assert model["instanceConfiguration"] == active[MDCD]["modelConfigurationDetails"]["instanceConfiguration"]
    env = after[MDCD]["environmentConfigurationDetails"]
    assert env["environmentVariables"] == {"NEW_VAR": "1"}
    assert (env["image"], env["imageDigest"], env["cmd"], env["serverPort"]) == (IMAGE, DIGEST, ["param1"], 5454)
    specs = api.specs(active["id"])
    assert len(specs) == 2, specs
    assert all(s.environment == {"NEW_VAR": "1", "MODEL_DEPLOYMENT_OCID": active["id"]} for s in specs)
    assert after["modelDeploymentSystemData"]["currentInstanceCount"] == 2


async def test_u6_lists_and_maps_are_replaced_whole_and_u5_empty_clears(api: Api, active: dict[str, Any]) -> None:
    await update_and_wait(api, active["id"], {"environmentConfigurationDetails": {"cmd": ["only"], "environmentVariables": {}}})
    env = (await api.wait_settled(active["id"]))[MDCD]["environmentConfigurationDetails"]
    assert env["cmd"] == ["only"]
    assert env["environmentVariables"] == {}
    assert env["entrypoint"] == byoc_environment()["entrypoint"]

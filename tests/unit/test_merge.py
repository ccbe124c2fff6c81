"""U1–U7 and D4 as tables over the pure merge functions."""

from __future__ import annotations

import copy

import pytest

from dockyard.domain.merge import merge_deployment_update, merge_environment
from dockyard.errors import InvalidParameter

DIGEST = "sha256:a9c8468cb671929aec7ad947b9dccd6fe8e6d77f7bcecfe2e10e1c935a88c2a5"
STORED_ENV = {
    "environmentConfigurationType": "OCIR_CONTAINER",
    "serverPort": 5454,
    "image": "iad.ocir.io/testtenancy/md_byoc_ref_iris_data:1.0.1",
    "imageDigest": DIGEST,
    "environmentVariables": {"a": "b", "c": "d", "e": "f"},
    "entrypoint": ["python", "-m", "uvicorn", "a/model/server:app", "--port", "5000", "--host", "0.0.0.0"],
    "cmd": ["param1"],
}
U2_RESULT = {
    "environmentConfigurationType": "OCIR_CONTAINER",
    "serverPort": 2000,
    "image": "iad.ocir.io/testtenancy/md_byoc_ref_iris_data:1.0.1",
    "imageDigest": DIGEST,
    "environmentVariables": {"x": "y"},
    "entrypoint": [],
    "cmd": ["param1"],
}


def stored_deployment() -> dict:
    return {
        "id": "ocid1.datasciencemodeldeployment.oc1.local.x",
        "displayName": "before",
        "freeformTags": {"team": "a"},
        "categoryLogDetails": {"access": {"logId": "la", "logGroupId": "g"}, "predict": {"logId": "lp", "logGroupId": "g"}},
        "modelDeploymentConfigurationDetails": {
            "deploymentType": "SINGLE_MODEL",
            "modelConfigurationDetails": {
                "modelId": "ocid1.datasciencemodel.oc1.local.m",
                "instanceConfiguration": {
                    "instanceShapeName": "VM.Standard.E4.Flex",
                    "modelDeploymentInstanceShapeConfigDetails": {"ocpus": 1, "memoryInGBs": 16},
                },
                "scalingPolicy": {"policyType": "FIXED_SIZE", "instanceCount": 1},
                "bandwidthMbps": 10,
            },
            "environmentConfigurationDetails": copy.deepcopy(STORED_ENV),
        },
    }


def env_of(body: dict) -> dict:
    return body["modelDeploymentConfigurationDetails"]["environmentConfigurationDetails"]


U2_UPDATE = {"serverPort": 2000, "environmentVariables": {"x": "y"}, "entrypoint": []}


def test_u2_on_the_sdk_nested_shape() -> None:
    update = {
        "modelDeploymentConfigurationDetails": {
            "deploymentType": "SINGLE_MODEL",
            "environmentConfigurationDetails": {"environmentConfigurationType": "OCIR_CONTAINER", **U2_UPDATE},
        }
    }
    assert env_of(merge_deployment_update(stored_deployment(), update)) == U2_RESULT


def test_u2_on_the_shape_the_byoc_document_shows() -> None:
    assert env_of(merge_deployment_update(stored_deployment(), {"environmentConfigurationDetails": U2_UPDATE})) == U2_RESULT


@pytest.mark.parametrize("empty", [None, {}])
def test_u3_null_or_empty_environment_changes_nothing(empty: dict | None) -> None:
    before = stored_deployment()
    after = merge_deployment_update(before, {"modelDeploymentConfigurationDetails": {"environmentConfigurationDetails": empty}})
    assert after == before
    assert merge_deployment_update(before, {"environmentConfigurationDetails": empty}) == before


@pytest.mark.parametrize(
    "field, sent, expected",
    [
        ("cmd", None, ["param1"]),  # U4: null never clears
        ("cmd", [], []),  # U5: [] clears a list
        ("environmentVariables", {}, {}),  # U5: {} clears a map
        ("environmentVariables", {"a": "z"}, {"a": "z"}),  # U6: replaced whole, not merged per key
        ("entrypoint", ["x"], ["x"]),
        ("serverPort", 8080, 8080),  # U5: a default is set by sending it
    ],
)
def test_second_level_fields(field: str, sent: object, expected: object) -> None:
    merged = merge_environment(STORED_ENV, {field: sent})
    assert merged[field] == expected
    untouched = {k: v for k, v in STORED_ENV.items() if k != field}
    assert {k: merged[k] for k in untouched} == untouched


def test_u7_top_level_fields_absent_from_the_update_are_kept() -> None:
    before = stored_deployment()
    after = merge_deployment_update(before, {"displayName": "after"})
    assert after["displayName"] == "after"
    assert {k: v for k, v in after.items() if k != "displayName"} == {k: v for k, v in before.items() if k != "displayName"}


def test_nested_details_merge_field_by_field() -> None:
    update = {
        "modelDeploymentConfigurationDetails": {
            "modelConfigurationDetails": {
                "instanceConfiguration": {"modelDeploymentInstanceShapeConfigDetails": {"ocpus": 2}},
                "scalingPolicy": {"policyType": "FIXED_SIZE", "instanceCount": 3},
            }
        },
        "categoryLogDetails": {"predict": {"logId": "new", "logGroupId": "g"}},
    }
    after = merge_deployment_update(stored_deployment(), update)
    model = after["modelDeploymentConfigurationDetails"]["modelConfigurationDetails"]
    assert model["instanceConfiguration"]["instanceShapeName"] == "VM.Standard.E4.Flex"
    assert model["instanceConfiguration"]["modelDeploymentInstanceShapeConfigDetails"] == {"ocpus": 2, "memoryInGBs": 16}
    assert model["scalingPolicy"]["instanceCount"] == 3 and model["bandwidthMbps"] == 10
    assert after["categoryLogDetails"]["access"]["logId"] == "la"
    assert after["categoryLogDetails"]["predict"]["logId"] == "new"


@pytest.mark.parametrize("field", ["image", "imageDigest"])
def test_d4_image_and_digest_can_never_be_cleared(field: str) -> None:
    with pytest.raises(InvalidParameter, match="D4"):
        merge_environment(STORED_ENV, {field: ""})
    assert merge_environment(STORED_ENV, {field: None})[field] == STORED_ENV[field]


def test_a_new_image_without_digest_drops_the_old_digest_to_be_resolved_again() -> None:
    merged = merge_environment(STORED_ENV, {"image": "iad.ocir.io/t/other:2"})
    assert "imageDigest" not in merged
    assert merge_environment(STORED_ENV, {"image": "iad.ocir.io/t/other:2", "imageDigest": DIGEST})["imageDigest"] == DIGEST


def test_changing_the_deployment_type_is_refused() -> None:
    with pytest.raises(InvalidParameter, match="MODEL_GROUP"):
        merge_deployment_update(stored_deployment(), {"modelDeploymentConfigurationDetails": {"deploymentType": "MODEL_GROUP"}})


def test_the_environment_given_twice_is_refused() -> None:
    update = {"environmentConfigurationDetails": U2_UPDATE, "modelDeploymentConfigurationDetails": {"environmentConfigurationDetails": U2_UPDATE}}
    with pytest.raises(InvalidParameter, match="send it once"):
        merge_deployment_update(stored_deployment(), update)


def test_switching_environment_type_starts_from_the_new_type() -> None:
    merged = merge_environment(STORED_ENV, {"environmentConfigurationType": "DEFAULT", "environmentVariables": {"K": "v"}})
    assert merged == {"environmentConfigurationType": "DEFAULT", "environmentVariables": {"K": "v"}}


def test_response_only_fields_in_an_update_are_ignored() -> None:
    merged = merge_environment(STORED_ENV, {"defaultEnvironmentVariables": {"MODEL_DEPLOYMENT_OCID": "x"}})
    assert merged == STORED_ENV

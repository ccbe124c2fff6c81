"""The contract's validation rules as tables."""

from __future__ import annotations

import pytest

from dockyard.domain import deployments as rules
from dockyard.domain.validation import (
    Problem,
    check_cmd_entrypoint,
    check_custom_endpoints,
    check_digest,
    check_environment,
    check_port,
    raise_if_any,
)
from dockyard.errors import InvalidParameter


@pytest.mark.parametrize("value", [1024, 65535, 8080, "5000", 5001])
def test_c6_ports_accepted(value: object) -> None:
    problems: list[Problem] = []
    assert check_port(value, "serverPort", problems) == int(value)  # type: ignore[arg-type]
    assert problems == []


@pytest.mark.parametrize("value", [1023, 65536, 0, -1, 24224, 8446, 8447, "80", "abc", 5000.5, True])
def test_c6_ports_refused(value: object) -> None:
    problems: list[Problem] = []
    check_port(value, "serverPort", problems)
    assert len(problems) == 1 and problems[0].rule == "C6" and problems[0].field == "serverPort"


def test_c10_counts_cmd_and_entrypoint_together() -> None:
    problems: list[Problem] = []
    check_cmd_entrypoint(["a" * 1024], ["b" * 1024], problems)
    assert problems == []
    check_cmd_entrypoint(["a" * 1024], ["b" * 1025], problems)
    assert [p.rule for p in problems] == ["C10"] and "2049 bytes" in problems[0].message


def test_c10_counts_bytes_not_characters() -> None:
    problems: list[Problem] = []
    check_cmd_entrypoint(["é" * 1025], None, problems)  # 2050 bytes in UTF-8
    assert [p.rule for p in problems] == ["C10"]


@pytest.mark.parametrize(
    "env, ok",
    [
        ({"MODEL_FILE": "x"}, True),
        ({"x": "y"}, True),  # U2's own example uses one-letter keys
        ({"A" * 31: "v"}, True),
        ({"A" * 32: "v"}, False),
        ({"1ABC": "v"}, False),
        ({"AB-C": "v"}, False),
        ({"ABC_": "v"}, False),
        ({"MODEL_DEPLOYMENT_OCID": "v"}, False),
        ({"K": ""}, True),
        ({"KEY": "v" * 2045}, True),
        ({"KEY": "v" * 2046}, False),
    ],
)
def test_environment_rules(env: dict[str, str], ok: bool) -> None:
    problems: list[Problem] = []
    check_environment(env, "environmentVariables", problems)
    assert (problems == []) is ok, problems


@pytest.mark.parametrize(
    "digest, ok",
    [("sha256:" + "a" * 64, True), ("sha256:abc", False), ("sha256:" + "A" * 64, False), ("md5:" + "a" * 64, False)],
)
def test_digest_format(digest: str, ok: bool) -> None:
    problems: list[Problem] = []
    check_digest(digest, "imageDigest", problems)
    assert (problems == []) is ok


def test_custom_endpoints() -> None:
    problems: list[Problem] = []
    check_custom_endpoints([{"endpointUriSuffix": "/a2a/", "httpMethods": ["POST"]}], "e", problems)
    assert problems == []
    check_custom_endpoints([{"endpointUriSuffix": "a2a", "httpMethods": ["FETCH"]}], "e", problems)
    assert len(problems) == 2
    problems = []
    check_custom_endpoints([{"endpointUriSuffix": f"/e{i}", "httpMethods": ["GET"]} for i in range(16)], "e", problems)
    assert any("at most 15" in p.message for p in problems)


def test_all_problems_are_reported_at_once() -> None:
    problems = [Problem("C6", "serverPort", "bad"), Problem("C10", "cmd+entrypoint", "long")]
    with pytest.raises(InvalidParameter) as error:
        raise_if_any(problems)
    assert "serverPort" in error.value.message and "cmd+entrypoint" in error.value.message


def config(**env: object) -> dict:
    return rules.complete(
        {
            "deploymentType": "SINGLE_MODEL",
            "modelConfigurationDetails": {"modelId": "m", "instanceConfiguration": {"instanceShapeName": "VM.Standard.E4.Flex"}},
            "environmentConfigurationDetails": {"environmentConfigurationType": "OCIR_CONTAINER", "image": "h/r:1", **env},
        }
    )


def test_complete_makes_defaults_explicit() -> None:
    done = rules.complete({"deploymentType": "SINGLE_MODEL", "modelConfigurationDetails": {"modelId": "m"}})
    assert done["modelConfigurationDetails"]["scalingPolicy"] == {"policyType": "FIXED_SIZE", "instanceCount": 1}
    assert done["environmentConfigurationDetails"] == {"environmentConfigurationType": "DEFAULT"}


def test_numeric_string_ports_are_stored_as_numbers() -> None:
    c = config(serverPort="5000")
    assert rules.validate(c, 16) == []
    assert c["environmentConfigurationDetails"]["serverPort"] == 5000


def test_unknown_shape_and_fixed_shape_sizes() -> None:
    c = config()
    c["modelConfigurationDetails"]["instanceConfiguration"]["instanceShapeName"] = "VM.Bogus"
    assert [p.rule for p in rules.validate(c, 16)] == ["SHAPE"]
    c["modelConfigurationDetails"]["instanceConfiguration"] = {
        "instanceShapeName": "VM.Standard2.1",
        "modelDeploymentInstanceShapeConfigDetails": {"ocpus": 2},
    }
    assert [p.rule for p in rules.validate(c, 16)] == ["SHAPE"]


def test_instance_limit_and_replicas() -> None:
    c = config()
    c["modelConfigurationDetails"]["scalingPolicy"] = {"policyType": "FIXED_SIZE", "instanceCount": 20}
    assert [p.rule for p in rules.validate(c, 16)] == ["SCALE"]
    c["modelConfigurationDetails"]["scalingPolicy"] = {
        "policyType": "AUTOSCALING",
        "autoScalingPolicies": [{"autoScalingPolicyType": "THRESHOLD", "initialInstanceCount": 2, "minimumInstanceCount": 1}],
    }
    assert rules.replicas(c) == 2


def test_spec_hash_ignores_scaling_but_not_what_runs() -> None:
    a = config()
    b = config()
    b["modelConfigurationDetails"]["scalingPolicy"]["instanceCount"] = 3
    assert rules.spec_hash(a, "s") == rules.spec_hash(b, "s")
    c = config(environmentVariables={"K": "v"})
    assert rules.spec_hash(a, "s") != rules.spec_hash(c, "s")
    assert rules.spec_hash(a, "s") != rules.spec_hash(a, "t")


def test_triton_health_path() -> None:
    assert rules.health_path(config()) == "/health"
    assert rules.health_path(config(environmentVariables={"CONTAINER_TYPE": "TRITON"})) == "/v2/health/ready"
    assert rules.health_path(config(environmentVariables={"MODEL_DEPLOY_HEALTH_ENDPOINT": "/readyz"})) == "/readyz"

"""Container paths for data-plane requests: predict path, custom endpoints, the route header."""

from __future__ import annotations

import json

import pytest

from dockyard.errors import InvalidParameter, MethodNotAllowed, NotFound
from dockyard.gateway.endpoints import (
    CustomEndpoint,
    allowed_methods,
    checked_route_header,
    custom_endpoints,
    custom_target,
    predict_path,
)


def test_predict_path_is_the_variable_exactly() -> None:
    assert predict_path({}) == "/predict"
    assert predict_path({"MODEL_DEPLOY_PREDICT_ENDPOINT": "/mcp/"}) == "/mcp/"
    assert predict_path({"MODEL_DEPLOY_PREDICT_ENDPOINT": "/v1/chat/completions"}) == "/v1/chat/completions"
    assert predict_path({"MODEL_DEPLOY_PREDICT_ENDPOINT": ""}) == "/predict"


@pytest.mark.parametrize(
    ("pattern", "path", "matches"),
    [
        ("/a2a/", "/a2a/", True),
        ("/a2a/", "/a2a", False),  # C4: a trailing slash is part of the path
        ("/a2a", "/a2a/", False),
        ("/tasks/{}", "/tasks/17", True),
        ("/tasks/{}", "/tasks/", False),  # {} is one non-empty segment
        ("/tasks/{}", "/tasks/1/2", False),
        ("/tasks/{}/status", "/tasks/abc/status", True),
        ("/models/{name}/infer", "/models/m1/infer", True),
        ("/v1/models/model-{}", "/v1/models/model-7", True),
        ("/a.b", "/aXb", False),  # literal parts are not regular expressions
        ("/x/{}", "/x/%2F", True),  # an encoded slash stays inside its segment
    ],
)
def test_custom_endpoint_matching(pattern: str, path: str, matches: bool) -> None:
    assert CustomEndpoint.build(pattern, ["POST"]).matches(path) is matches


def test_custom_endpoints_from_both_sources_and_openai() -> None:
    variables = {"MODEL_DEPLOY_CUSTOM_ENDPOINTS": json.dumps([{"endpointURI": "/a2a/", "httpMethods": ["post"]}])}
    environment = {
        "customHttpEndpoints": [{"endpointUriSuffix": "/health/live", "httpMethods": ["GET"]}],
        "predictApiSpecification": "openai",
    }
    found = {e.uri: e.methods for e in custom_endpoints("md", variables, environment)}
    assert found == {
        "/a2a/": {"POST"},
        "/health/live": {"GET"},
        "/v1/completions": {"POST"},
        "/v1/chat/completions": {"POST"},
        "/v1/models": {"GET"},
    }


def test_malformed_declarations_are_skipped_not_fatal() -> None:
    variables = {"MODEL_DEPLOY_CUSTOM_ENDPOINTS": "not json"}
    environment = {"customHttpEndpoints": [{"endpointUriSuffix": "no-slash"}, "junk", {"endpointUriSuffix": "/ok"}]}
    assert [e.uri for e in custom_endpoints("md", variables, environment)] == ["/ok"]


def test_at_most_fifteen_custom_endpoints() -> None:
    environment = {"customHttpEndpoints": [{"endpointUriSuffix": f"/e{i}", "httpMethods": ["GET"]} for i in range(20)]}
    assert len(custom_endpoints("md", {}, environment)) == 15


def test_custom_target_checks_the_method() -> None:
    endpoints = (CustomEndpoint.build("/tasks/{}", ["GET", "DELETE"]),)
    assert custom_target(endpoints, "/tasks/9?verbose=1", "GET", "md") == "/tasks/9?verbose=1"
    with pytest.raises(MethodNotAllowed, match="GET, DELETE|DELETE, GET"):
        custom_target(endpoints, "/tasks/9", "POST", "md")
    assert allowed_methods(endpoints, "/tasks/9") == "DELETE, GET"
    with pytest.raises(NotFound, match="/tasks/{}"):
        custom_target(endpoints, "/other", "GET", "md")


@pytest.mark.parametrize("value", ["/v1/chat/completions", "/predict/", "/a?b=c"])
def test_route_header_accepts_paths(value: str) -> None:
    assert checked_route_header(value) == value


@pytest.mark.parametrize("value", ["v1/chat", "//evil.example/x", "http://x/", "/a b", "/a\r\nx: y", "/a#frag", "/" + "a" * 3000])
def test_route_header_rejects_anything_else(value: str) -> None:
    with pytest.raises(InvalidParameter):
        checked_route_header(value)

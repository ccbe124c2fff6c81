"""Triton mode's model choice for requests without model_name, over a stand-in repository index
(the real server is exercised in tests/integration/test_triton.py)."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from dockyard.errors import MissingParameter
from dockyard.gateway.triton import TritonModels, requested_model


def models(index: Any, status: int = 200, clock: list[float] | None = None) -> tuple[TritonModels, list[dict[str, Any]]]:
    asked: list[dict[str, Any]] = []

    def answer(request: httpx.Request) -> httpx.Response:
        asked.append({"path": request.url.path, "body": json.loads(request.content),
                      "connection": request.headers.get("connection")})
        content = index if isinstance(index, bytes) else json.dumps(index).encode()
        return httpx.Response(status, content=content)

    client = httpx.AsyncClient(transport=httpx.MockTransport(answer))
    now = clock or [0.0]
    return TritonModels(client, ttl_s=5, timeout_s=1, clock=lambda: now[0]), asked


async def test_one_model_listed_once_per_version_is_the_only_model() -> None:
    triton, asked = models([{"name": "m", "version": "1", "state": "READY"}, {"name": "m", "version": "2", "state": "READY"}])
    assert await triton.only_model("md", "http://x", "rid") == "m"
    assert asked == [{"path": "/v2/repository/index", "body": {"ready": True}, "connection": "close"}]


async def test_two_models_name_the_rule_the_models_and_both_header_spellings() -> None:
    triton, _ = models([{"name": "a", "state": "READY"}, {"name": "b", "state": "READY"}, {"name": "c", "state": "UNAVAILABLE"}])
    with pytest.raises(MissingParameter) as caught:
        await triton.only_model("md", "http://x", "rid")
    assert caught.value.message == (
        "T1: this Triton deployment serves 2 models (a, b), so the request must name one: send the model_name header "
        "(or model-name), and model_version (or model-version) for a version other than the newest")


async def test_many_models_are_listed_in_part() -> None:
    triton, _ = models([{"name": f"m{i}", "state": "READY"} for i in range(25)])
    with pytest.raises(MissingParameter, match=r"serves 25 models \(m0, .*, m19 and 5 more\)"):
        await triton.only_model("md", "http://x", "rid")


@pytest.mark.parametrize(("index", "status", "expected"), [
    ([], 200, "has no ready model"),
    (b"<html>", 200, "is not JSON"),
    ({"error": "no"}, 400, "did not list its models (HTTP 400"),
])
async def test_no_usable_list_says_how_to_name_the_model(index: Any, status: int, expected: str) -> None:
    triton, _ = models(index, status)
    with pytest.raises(MissingParameter) as caught:
        await triton.only_model("md", "http://x", "rid")
    assert expected in caught.value.message and "model_name (or model-name) header" in caught.value.message


async def test_the_list_is_kept_for_its_ttl() -> None:
    clock = [0.0]
    triton, asked = models([{"name": "m", "state": "READY"}], clock=clock)
    await triton.only_model("md", "http://x", "r1")
    clock[0] = 4.9
    await triton.only_model("md", "http://x", "r2")
    clock[0] = 5.1
    await triton.only_model("md", "http://x", "r3")
    assert len(asked) == 2


def test_a_version_without_a_name_is_refused_with_its_value() -> None:
    with pytest.raises(MissingParameter, match=r"^T1: model_version '3' was sent without model_name"):
        requested_model({b"model-version": b"3"})
    assert requested_model({b"model-name": b" m ", b"model_version": b""}) == ("m", None)

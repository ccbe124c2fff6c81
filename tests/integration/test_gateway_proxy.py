"""The gateway in-process (httpx ASGI transport) in front of real upstream HTTP servers.

What a caller of `<deployment>/predict` notices: the container's reply comes back untouched,
paths are forwarded exactly (C4), custom endpoints and Triton headers work, and every error
the gateway answers itself is JSON with the right status.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import socket
from typing import Any

import httpx
import pytest

from dockyard.gateway import AccessEntry, create_gateway, gateway_metrics_app
from tests.support.raw_server import RawServer
from tests.integration.test_gateway_harness import (  # noqa: F401 (fixtures)
    Deployments,
    Upstreams,
    client_for,
    dead_port,
    deployments,
    gateway,
    store,
    upstreams,
)


def echoed_headers(reply: httpx.Response) -> dict[str, str]:
    return {k: v for k, v in reply.json()["headers"]}


def assert_json_error(reply: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert reply.status_code == status, reply.text
    assert reply.headers["content-type"] == "application/json"
    document = reply.json()
    assert document["code"] == code, document
    assert document["message"]
    assert reply.headers["opc-request-id"]
    return dict(document)


# --- pass-through ---------------------------------------------------------------------------------


async def test_predict_passes_body_and_content_type_through(gateway: Any, deployments: Deployments, upstreams: Upstreams) -> None:
    deployment_id = deployments.add([upstreams.echo[0].port])
    payload = b'{"line": "12"}'
    async with client_for(gateway) as client:
        reply = await client.post(f"/{deployment_id}/predict?x=1&y=%2F", content=payload,
                                  headers={"content-type": "application/json", "x-custom": "kept"})  # fmt: skip
    assert reply.status_code == 200
    assert reply.headers["content-type"] == "application/json"
    document = reply.json()
    assert document["method"] == "POST" and document["path"] == "/predict"
    assert document["query"] == "x=1&y=%2F"
    assert base64.b64decode(document["body_b64"]) == payload
    headers = echoed_headers(reply)
    assert headers["content-type"] == "application/json"
    assert headers["x-custom"] == "kept"
    assert headers["content-length"] == str(len(payload))
    assert reply.headers["x-upstream"] == "A"


async def test_binary_body_and_octet_stream_reply(gateway: Any, deployments: Deployments, upstreams: Upstreams) -> None:
    deployment_id = deployments.add([upstreams.echo[0].port], variables={"MODEL_DEPLOY_PREDICT_ENDPOINT": "/octet"})
    payload = bytes(range(255, -1, -1)) * 10
    async with client_for(gateway) as client:
        reply = await client.post(
            f"/{deployment_id}/predict", content=payload, headers={"content-type": "application/octet-stream"}
        )
    assert reply.status_code == 200
    assert reply.headers["content-type"] == "application/octet-stream"
    assert reply.content == bytes(range(256)) + payload


async def test_text_reply_and_container_errors_come_back_unchanged(
    gateway: Any, deployments: Deployments, upstreams: Upstreams
) -> None:
    text_id = deployments.add([upstreams.echo[1].port], variables={"MODEL_DEPLOY_PREDICT_ENDPOINT": "/text"})
    error_id = deployments.add([upstreams.echo[1].port], variables={"MODEL_DEPLOY_PREDICT_ENDPOINT": "/status/422"})
    async with client_for(gateway) as client:
        text = await client.post(f"/{text_id}/predict", content=b"x", headers={"content-type": "application/text"})
        error = await client.post(f"/{error_id}/predict", json={"bad": True})
    assert text.status_code == 200
    assert text.headers["content-type"] == "application/text"
    assert text.text == "plain words from B"
    assert error.status_code == 422
    assert error.json() == {"error": "model says 422", "server": "B"}


async def test_garbage_reply_is_not_rewritten(gateway: Any, deployments: Deployments, upstreams: Upstreams) -> None:
    deployment_id = deployments.add([upstreams.garbage.port])
    async with client_for(gateway) as client:
        reply = await client.post(f"/{deployment_id}/predict", json={})
    assert reply.status_code == 207
    assert reply.headers["content-type"] == "application/x-garbage; charset=binary"
    assert reply.content == b"\x00\xff<html>not json}"


async def test_large_reply_streams_through(gateway: Any, deployments: Deployments, upstreams: Upstreams) -> None:
    size = 5 * 1024 * 1024 + 7
    deployment_id = deployments.add([upstreams.echo[0].port], variables={"MODEL_DEPLOY_PREDICT_ENDPOINT": "/big"})
    async with client_for(gateway) as client:
        reply = await client.post(f"/{deployment_id}/predict?n={size}", content=b"")
    assert reply.status_code == 200
    assert len(reply.content) == size
    assert reply.headers["content-length"] == str(size)


async def test_chunked_request_body_is_streamed_upstream(gateway: Any, deployments: Deployments, upstreams: Upstreams) -> None:
    deployment_id = deployments.add([upstreams.echo[0].port])

    async def parts() -> Any:
        for i in range(5):
            yield f"part{i};".encode()

    async with client_for(gateway) as client:
        reply = await client.post(f"/{deployment_id}/predict", content=parts())
    assert reply.status_code == 200
    assert base64.b64decode(reply.json()["body_b64"]) == b"part0;part1;part2;part3;part4;"
    assert "transfer-encoding" in echoed_headers(reply)  # re-framed as chunked by the gateway, not buffered


async def test_hop_by_hop_headers_are_dropped_both_ways(gateway: Any, deployments: Deployments, upstreams: Upstreams) -> None:
    deployment_id = deployments.add([upstreams.echo[0].port])
    async with client_for(gateway) as client:
        reply = await client.post(
            f"/{deployment_id}/predict",
            content=b"{}",
            headers={"connection": "keep-alive, x-private", "x-private": "secret", "keep-alive": "timeout=5",
                     "proxy-authorization": "Basic abc", "te": "trailers", "upgrade": "h2c"},
        )  # fmt: skip
    sent = echoed_headers(reply)
    for name in ("x-private", "keep-alive", "proxy-authorization", "te", "upgrade"):
        assert name not in sent
    assert sent["x-forwarded-proto"] == "http"


async def test_request_id_is_echoed_and_forwarded(gateway: Any, deployments: Deployments, upstreams: Upstreams) -> None:
    deployment_id = deployments.add([upstreams.echo[0].port])
    async with client_for(gateway) as client:
        given = await client.post(f"/{deployment_id}/predict", content=b"{}", headers={"opc-request-id": "MY-REQUEST-1"})
        made = await client.post(f"/{deployment_id}/predict", content=b"{}")
        unsafe = await client.post(f"/{deployment_id}/predict", content=b"{}", headers={"opc-request-id": "bad id\twith tab"})
    assert given.headers["opc-request-id"] == "MY-REQUEST-1"
    assert echoed_headers(given)["opc-request-id"] == "MY-REQUEST-1"
    generated = made.headers["opc-request-id"]
    assert len(generated) == 32 and generated == generated.upper()
    assert echoed_headers(made)["opc-request-id"] == generated
    assert unsafe.headers["opc-request-id"] != "bad id\twith tab"


async def test_upstream_cookies_do_not_leak_between_callers(gateway: Any, deployments: Deployments, upstreams: Upstreams) -> None:
    deployment_id = deployments.add([upstreams.echo[0].port])
    async with client_for(gateway) as first, client_for(gateway) as second:
        got = await first.post(f"/{deployment_id}/predict", content=b"{}")
        assert "session=secret" in got.headers["set-cookie"]  # the caller gets the container's cookie
        other = await second.post(f"/{deployment_id}/predict", content=b"{}")
    assert "cookie" not in echoed_headers(other)  # the gateway never replays it for someone else


# --- paths (C4, route header, custom endpoints) ---------------------------------------------------


async def test_predict_and_predict_slash_stay_distinct(gateway: Any, deployments: Deployments, upstreams: Upstreams) -> None:
    deployment_id = deployments.add([upstreams.c4.port])
    async with client_for(gateway) as client:
        plain = await client.post(f"/{deployment_id}/predict", json={})
        slash = await client.post(f"/{deployment_id}/predict/", json={})
    assert (plain.status_code, plain.json()) == (200, {"endpoint": "no-slash"})
    assert (slash.status_code, slash.json()) == (201, {"endpoint": "slash"})


async def test_predict_endpoint_variable_keeps_its_trailing_slash(
    gateway: Any, deployments: Deployments, upstreams: Upstreams
) -> None:
    slash_id = deployments.add([upstreams.echo[0].port], variables={"MODEL_DEPLOY_PREDICT_ENDPOINT": "/mcp/"})
    bare_id = deployments.add([upstreams.echo[0].port], variables={"MODEL_DEPLOY_PREDICT_ENDPOINT": "/generate"})
    async with client_for(gateway) as client:
        slash = await client.post(f"/{slash_id}/predict", json={})
        bare = await client.post(f"/{bare_id}/predict", json={})
    assert slash.json()["path"] == "/mcp/"
    assert bare.json()["path"] == "/generate"


async def test_route_header_picks_the_container_path(gateway: Any, deployments: Deployments, upstreams: Upstreams) -> None:
    deployment_id = deployments.add([upstreams.echo[0].port], variables={"MODEL_DEPLOY_PREDICT_ENDPOINT": "/generate"})
    async with client_for(gateway) as client:
        routed = await client.post(f"/{deployment_id}/predict", json={}, headers={"route": "/v1/chat/completions"})
        bad = await client.post(f"/{deployment_id}/predict", json={}, headers={"route": "http://elsewhere/x"})
    assert routed.json()["path"] == "/v1/chat/completions"
    assert "route" not in echoed_headers(routed)
    assert_json_error(bad, 400, "InvalidParameter")


async def test_custom_endpoints_from_variable_and_api_field(gateway: Any, deployments: Deployments, upstreams: Upstreams) -> None:
    deployment_id = deployments.add(
        [upstreams.echo[0].port],
        variables={"MODEL_DEPLOY_CUSTOM_ENDPOINTS": json.dumps([{"endpointURI": "/a2a/", "httpMethods": ["POST"]}])},
        custom=[
            {"endpointUriSuffix": "/v1/models", "httpMethods": ["GET"]},
            {"endpointUriSuffix": "/tasks/{}/status", "httpMethods": ["GET", "DELETE"]},
        ],
    )
    async with client_for(gateway) as client:
        a2a = await client.post(f"/{deployment_id}/predict/a2a/", json={"msg": 1})
        models = await client.get(f"/{deployment_id}/predict/v1/models?limit=2")
        task = await client.delete(f"/{deployment_id}/predict/tasks/42/status")
        wrong_method = await client.post(f"/{deployment_id}/predict/v1/models", json={})
        two_segments = await client.get(f"/{deployment_id}/predict/tasks/4/2/status")
        no_slash = await client.post(f"/{deployment_id}/predict/a2a", json={})
        unknown = await client.post(f"/{deployment_id}/predict/admin", json={})
    assert (a2a.status_code, a2a.json()["path"], a2a.json()["method"]) == (200, "/a2a/", "POST")
    assert (models.json()["path"], models.json()["query"]) == ("/v1/models", "limit=2")
    assert (task.json()["path"], task.json()["method"]) == ("/tasks/42/status", "DELETE")
    assert_json_error(wrong_method, 405, "MethodNotAllowed")
    assert wrong_method.headers["allow"] == "GET"
    assert_json_error(two_segments, 404, "NotFound")  # {} is exactly one segment
    assert_json_error(no_slash, 404, "NotFound")  # /a2a/ is declared, /a2a is not (C4)
    assert "/a2a/" in assert_json_error(unknown, 404, "NotFound")["message"]


async def test_predict_accepts_post_only(gateway: Any, deployments: Deployments, upstreams: Upstreams) -> None:
    deployment_id = deployments.add([upstreams.echo[0].port])
    async with client_for(gateway) as client:
        reply = await client.get(f"/{deployment_id}/predict")
    assert_json_error(reply, 405, "MethodNotAllowed")
    assert reply.headers["allow"] == "POST"


# --- Triton -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name_header", "version_header"), [("model_name", "model_version"), ("model-name", "model-version")])
async def test_triton_headers_map_to_infer_paths(
    gateway: Any, deployments: Deployments, upstreams: Upstreams, name_header: str, version_header: str
) -> None:
    deployment_id = deployments.add([upstreams.triton_many.port], variables={"CONTAINER_TYPE": "TRITON"})
    request = {"inputs": [{"name": "INPUT0", "shape": [1], "datatype": "INT32", "data": [7]}]}
    async with client_for(gateway) as client:
        versioned = await client.post(
            f"/{deployment_id}/predict", json=request, headers={name_header: "simple", version_header: "3"}
        )
        unversioned = await client.post(f"/{deployment_id}/predict", json=request, headers={name_header: "ensemble"})
        unknown = await client.post(f"/{deployment_id}/predict", json=request, headers={name_header: "nope"})
    assert versioned.json() == {
        "model_name": "simple",
        "model_version": "3",
        "outputs": [{"name": "echo", "data": request["inputs"]}],
    }
    assert unversioned.json()["model_name"] == "ensemble"
    assert unknown.status_code == 400  # Triton's own error, unchanged
    assert "unknown model" in unknown.json()["error"]


async def test_triton_without_model_name(gateway: Any, deployments: Deployments, upstreams: Upstreams) -> None:
    single = deployments.add([upstreams.triton_one.port], variables={"CONTAINER_TYPE": "triton"})
    several = deployments.add([upstreams.triton_many.port], variables={"CONTAINER_TYPE": "TRITON"})
    async with client_for(gateway) as client:
        only = await client.post(f"/{single}/predict", json={"inputs": []})
        ambiguous = await client.post(f"/{several}/predict", json={"inputs": []})
        version_only = await client.post(f"/{several}/predict", json={}, headers={"model_version": "1"})
    assert only.status_code == 200 and only.json()["model_name"] == "densenet_onnx"
    message = assert_json_error(ambiguous, 400, "MissingParameter")["message"]
    assert "model_name" in message and "simple" in message and "ensemble" in message
    assert_json_error(version_only, 400, "MissingParameter")


# --- errors the gateway answers itself ------------------------------------------------------------


async def test_unknown_and_deleted_deployments_are_404(gateway: Any, deployments: Deployments, upstreams: Upstreams) -> None:
    deleted = deployments.add([upstreams.echo[0].port], state="DELETED")
    async with client_for(gateway) as client:
        unknown = await client.post("/ocid1.datasciencemodeldeployment.oc1.local.nope/predict", json={})
        gone = await client.post(f"/{deleted}/predict", json={})
        junk = await client.post("/some/where/else", json={})
    assert_json_error(unknown, 404, "NotAuthorizedOrNotFound")
    assert_json_error(gone, 404, "NotAuthorizedOrNotFound")
    assert_json_error(junk, 404, "NotFound")


@pytest.mark.parametrize("state", ["CREATING", "INACTIVE", "FAILED", "DELETING"])
async def test_deployment_not_serving_is_409_naming_its_state(
    gateway: Any, deployments: Deployments, upstreams: Upstreams, state: str
) -> None:
    deployment_id = deployments.add([upstreams.echo[0].port], state=state)
    async with client_for(gateway) as client:
        reply = await client.post(f"/{deployment_id}/predict", json={})
    assert state in assert_json_error(reply, 409, "Conflict")["message"]


@pytest.mark.parametrize("state", ["NEEDS_ATTENTION", "UPDATING"])
async def test_deployment_serves_while_updating_or_needing_attention(
    gateway: Any, deployments: Deployments, upstreams: Upstreams, state: str
) -> None:
    deployment_id = deployments.add([upstreams.echo[0].port], state=state)
    async with client_for(gateway) as client:
        reply = await client.post(f"/{deployment_id}/predict", json={})
    assert reply.status_code == 200


async def test_active_without_healthy_instance_is_503(gateway: Any, deployments: Deployments, upstreams: Upstreams) -> None:
    deployment_id = deployments.add([upstreams.echo[0].port], health="UNHEALTHY")
    async with client_for(gateway) as client:
        reply = await client.post(f"/{deployment_id}/predict", json={})
        status = await client.get(f"/{deployment_id}")
    assert "no healthy instance" in assert_json_error(reply, 503, "ServiceUnavailable")["message"]
    assert_json_error(status, 503, "ServiceUnavailable")


async def test_status_of_a_serving_deployment(gateway: Any, deployments: Deployments, upstreams: Upstreams) -> None:
    deployment_id = deployments.add(
        [upstreams.echo[0].port, upstreams.echo[1].port], variables={"MODEL_DEPLOY_ENABLE_STREAMING": "true"}
    )
    async with client_for(gateway) as client:
        reply = await client.get(f"/{deployment_id}")
        health = await client.get("/health")
    assert reply.status_code == 200
    assert reply.json()["readyInstances"] == 2 and reply.json()["streaming"] is True
    assert health.json()["status"] == "ok"


async def test_body_over_the_limit_is_413_from_content_length(store: Any, deployments: Deployments, upstreams: Upstreams) -> None:
    app = create_gateway(store, max_body_bytes=1000)
    deployment_id = deployments.add([upstreams.echo[0].port])
    async with client_for(app) as client:
        reply = await client.post(f"/{deployment_id}/predict", content=b"x" * 1001)
        fits = await client.post(f"/{deployment_id}/predict", content=b"x" * 1000)
    await app.aclose()
    assert "1000 bytes" in assert_json_error(reply, 413, "PayloadTooLarge")["message"]
    assert fits.status_code == 200


async def test_chunked_body_over_the_limit_is_413_while_streaming(
    store: Any, deployments: Deployments, upstreams: Upstreams
) -> None:
    app = create_gateway(store, max_body_bytes=10_000)
    deployment_id = deployments.add([upstreams.echo[0].port])

    async def endless() -> Any:
        for _ in range(100):
            yield b"y" * 1000

    async with client_for(app) as client:
        reply = await client.post(f"/{deployment_id}/predict", content=endless())
        after = await client.post(f"/{deployment_id}/predict", content=b"{}")
    await app.aclose()
    assert_json_error(reply, 413, "PayloadTooLarge")
    assert after.status_code == 200


@pytest.mark.parametrize("gateway", ["asgi"], indirect=True)  # over a real connection such a body would be the next request
async def test_post_without_length_or_chunking_is_411(gateway: Any, deployments: Deployments, upstreams: Upstreams) -> None:
    deployment_id = deployments.add([upstreams.echo[0].port])
    async with client_for(gateway) as client:
        request = client.build_request("POST", f"/{deployment_id}/predict", content=b"{}")
        del request.headers["content-length"]
        reply = await client.send(request)
    assert_json_error(reply, 411, "LengthRequired")


async def test_slow_model_is_504(store: Any, deployments: Deployments, upstreams: Upstreams) -> None:
    app = create_gateway(store, request_timeout_s=0.3)
    deployment_id = deployments.add([upstreams.slow.port])
    async with client_for(app) as client:
        reply = await client.post(f"/{deployment_id}/predict?s=2", json={})
        quick = await client.post(f"/{deployment_id}/predict?s=0.01", json={})
    await app.aclose()
    assert "took too long" in assert_json_error(reply, 504, "GatewayTimeout")["message"]
    assert quick.status_code == 200


async def test_every_instance_refusing_is_503(gateway: Any, deployments: Deployments) -> None:
    deployment_id = deployments.add([dead_port(), dead_port()])
    async with client_for(gateway) as client:
        reply = await client.post(f"/{deployment_id}/predict", json={})
    message = assert_json_error(reply, 503, "ServiceUnavailable")["message"]
    assert "accepted a connection" in message


async def test_container_closing_before_a_reply_is_502(gateway: Any, deployments: Deployments, upstreams: Upstreams) -> None:
    deployment_id = deployments.add([upstreams.cut.port], variables={"MODEL_DEPLOY_PREDICT_ENDPOINT": "/reset"})
    async with client_for(gateway) as client:
        reply = await client.post(f"/{deployment_id}/predict", json={})
    assert_json_error(reply, 502, "BadGateway")


# --- streaming endpoint -----------------------------------------------------------------------------


async def test_streaming_endpoint_needs_the_variable(gateway: Any, deployments: Deployments, upstreams: Upstreams) -> None:
    deployment_id = deployments.add([upstreams.sse.port])
    async with client_for(gateway) as client:
        reply = await client.post(f"/{deployment_id}/predictWithResponseStream", json={})
    assert "MODEL_DEPLOY_ENABLE_STREAMING" in assert_json_error(reply, 409, "Conflict")["message"]


async def test_streaming_endpoint_passes_events_through(gateway: Any, deployments: Deployments, upstreams: Upstreams) -> None:
    deployment_id = deployments.add(
        [upstreams.sse.port], variables={"MODEL_DEPLOY_ENABLE_STREAMING": "true", "MODEL_DEPLOY_PREDICT_ENDPOINT": "/stream"}
    )
    async with client_for(gateway) as client:
        reply = await client.post(f"/{deployment_id}/predictWithResponseStream?n=3&delay=0.01", json={"stream": True},
                                  headers={"accept": "text/event-stream"})  # fmt: skip
    assert reply.status_code == 200
    assert reply.headers["content-type"] == "text/event-stream"
    assert reply.text == 'data: {"token": 0}\n\ndata: {"token": 1}\n\ndata: {"token": 2}\n\ndata: [DONE]\n\n'


async def test_streaming_endpoint_with_a_plain_reply_is_409(gateway: Any, deployments: Deployments, upstreams: Upstreams) -> None:
    deployment_id = deployments.add(
        [upstreams.sse.port], variables={"MODEL_DEPLOY_ENABLE_STREAMING": "true", "MODEL_DEPLOY_PREDICT_ENDPOINT": "/json"}
    )
    async with client_for(gateway) as client:
        reply = await client.post(f"/{deployment_id}/predictWithResponseStream", json={})
        plain = await client.post(f"/{deployment_id}/predict", json={})
    assert "non-streaming" in assert_json_error(reply, 409, "Conflict")["message"]
    assert plain.json() == {"not": "a stream"}


async def test_chunked_reply_counts_as_streaming(gateway: Any, deployments: Deployments, upstreams: Upstreams) -> None:
    deployment_id = deployments.add(
        [upstreams.echo[0].port], variables={"MODEL_DEPLOY_ENABLE_STREAMING": "true", "MODEL_DEPLOY_PREDICT_ENDPOINT": "/chunked"}
    )
    async with client_for(gateway) as client:
        reply = await client.post(f"/{deployment_id}/predictWithResponseStream", json={})
    assert reply.status_code == 200
    assert reply.text == '{"i": 0}\n{"i": 1}\n{"i": 2}\n'


# --- access log and metrics -----------------------------------------------------------------------


async def test_access_log_entry_per_request(
    store: Any, deployments: Deployments, upstreams: Upstreams, caplog: pytest.LogCaptureFixture
) -> None:
    entries: list[AccessEntry] = []
    app = create_gateway(store, access_sink=entries.append)
    deployment_id = deployments.add([upstreams.echo[0].port])
    signature = 'Signature version="1",keyId="ocid1.tenancy.oc1..t/ocid1.user.oc1..u/aa:bb",algorithm="rsa-sha256",signature="x"'
    with caplog.at_level(logging.INFO, logger="dockyard.access"):
        async with client_for(app) as client:
            await client.post(f"/{deployment_id}/predict?q=1", content=b"12345",
                              headers={"authorization": signature, "opc-request-id": "REQ-1"})  # fmt: skip
            await client.post("/ocid1.datasciencemodeldeployment.oc1.local.nope/predict", content=b"{}")
    await app.aclose()
    ok, missing = entries
    assert (ok.deployment_id, ok.method, ok.path, ok.status) == (deployment_id, "POST", f"/{deployment_id}/predict", 200)
    assert ok.caller == "ocid1.tenancy.oc1..t/ocid1.user.oc1..u/aa:bb"
    assert ok.request_id == "REQ-1" and ok.bytes_in == 5 and ok.bytes_out > 100
    assert ok.upstream_ms is not None and 0 < ok.upstream_ms <= ok.latency_ms
    assert ok.instance_id and ok.attempts == 1 and ok.time.endswith("Z")
    assert missing.status == 404 and missing.upstream_ms is None and missing.error
    logged = [json.loads(r.getMessage()) for r in caplog.records if r.name == "dockyard.access"]
    assert [line["status"] for line in logged] == [200, 404]
    assert logged[0]["request_id"] == "REQ-1"


@pytest.mark.parametrize("declared", [1000, 3 * 1024 * 1024], ids=["small body", "streamed body"])
async def test_a_caller_that_hangs_up_mid_body_is_logged_499_with_the_bytes_it_sent(
    store: Any, deployments: Deployments, upstreams: Upstreams, declared: int
) -> None:
    """A small body is read whole before it goes upstream, a large one streams: either way the
    access entry of a caller gone mid-body says 499 and counts the bytes that did come."""
    from tests.integration.test_gateway_harness import OwnServerClient

    entries: list[AccessEntry] = []
    app = create_gateway(store, access_sink=entries.append)
    deployment_id = deployments.add([upstreams.echo[0].port])
    sent = 600 if declared < 1024 * 1024 else 1024 * 1024
    served = OwnServerClient(app)
    async with served:
        with socket.create_connection(("127.0.0.1", served.server.port)) as sock:
            sock.sendall(b"POST /%b/predict HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n\r\n" % (deployment_id.encode(), declared))
            sock.sendall(b"x" * sent)
            await asyncio.sleep(0.3)  # the gateway has read what came
        for _ in range(100):
            if entries:
                break
            await asyncio.sleep(0.05)
    await app.aclose()
    assert len(entries) == 1, entries
    assert entries[0].status == 499 and entries[0].error and "went away" in entries[0].error
    assert entries[0].bytes_in == sent


async def test_metrics_count_requests_and_latencies(store: Any, deployments: Deployments, upstreams: Upstreams) -> None:
    app = create_gateway(store)
    deployment_id = deployments.add([upstreams.echo[0].port])
    async with client_for(app) as client:
        for _ in range(3):
            await client.post(f"/{deployment_id}/predict", json={})
        await client.post("/ocid1.datasciencemodeldeployment.oc1.local.nope/predict", json={})
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=gateway_metrics_app(app)), base_url="http://m") as metrics:
        text = (await metrics.get("/")).text
    await app.aclose()
    assert f'dockyard_gateway_requests_total{{deployment="{deployment_id}",status="200"}} 3.0' in text
    assert 'dockyard_gateway_requests_total{deployment="-",status="404"} 1.0' in text
    assert f'dockyard_gateway_upstream_duration_seconds_count{{deployment="{deployment_id}"}} 3.0' in text
    assert f'dockyard_gateway_request_duration_seconds_count{{deployment="{deployment_id}"}} 3.0' in text
    assert "dockyard_gateway_overhead_seconds_count 3.0" in text
    assert f'dockyard_gateway_inflight_requests{{deployment="{deployment_id}"}} 0.0' in text


async def test_repeated_predicts_take_the_direct_path_and_reach_the_container_the_same(
    store: Any, deployments: Deployments, upstreams: Upstreams
) -> None:
    """The first predict of a deployment reads its route the general way (`_dispatch`); the next
    ones are decided from the caches (`_plain_predict`) and arrive at the container as sent."""
    app = create_gateway(store, route_cache_ttl_s=30)
    deployment_id = deployments.add([upstreams.echo[0].port])
    path = f"/{deployment_id}/predict"

    def plain(query: bytes = b"", **headers: bytes) -> bool:
        """Whether the caches alone decide such a request (asked, not replaced: the gateway's
        methods are fixed once compiled, dockyard.compiled)."""
        length = {b"content-length": b"2"}
        return app._plain_route("POST", path, {"query_string": query}, length | {k.encode(): v for k, v in headers.items()}) is not None

    try:
        async with client_for(app) as client:
            assert not plain(), "nothing cached yet: the first predict goes the general way"
            for n in range(3):
                body = b'{"n": %d}' % n
                reply = await client.post(path, content=body, headers={"opc-request-id": f"r{n}"})
                assert reply.status_code == 200 and reply.headers["opc-request-id"] == f"r{n}"
                echoed = reply.json()
                assert (echoed["path"], base64.b64decode(echoed["body_b64"])) == ("/predict", body)
                assert echoed_headers(reply)["opc-request-id"] == f"r{n}"
                assert plain(), "after the first, from the caches"
            # Anything else still goes the general way: a query string, a route header.
            assert not plain(b"x=1") and not plain(route=b"/r")
            assert (await client.post(f"{path}?x=1", content=b"{}")).json()["query"] == "x=1"
            assert (await client.post(path, content=b"{}", headers={"route": "/r"})).json()["path"] == "/r"
    finally:
        await app.aclose()


class _NamesHopHeaders(RawServer):
    """Answers every request with a Connection header that names another header as hop-by-hop."""

    def handle(self, conn: socket.socket) -> None:
        conn.recv(65536)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: X-Hop, close\r\nX-Hop: secret\r\n"
                     b"Keep-Alive: timeout=5\r\nX-Model: v2\r\nContent-Length: 2\r\n\r\n{}")  # fmt: skip


async def test_response_headers_a_container_names_in_connection_are_dropped(store: Any, deployments: Deployments) -> None:
    upstream = _NamesHopHeaders()
    app = create_gateway(store, route_cache_ttl_s=30)
    try:
        deployment_id = deployments.add([upstream.port])
        async with client_for(app) as client:
            for _ in range(2):  # the general path, then the direct one
                reply = await client.post(f"/{deployment_id}/predict", content=b"{}")
                assert reply.status_code == 200 and reply.json() == {}
                assert reply.headers["x-model"] == "v2"
                assert "x-hop" not in reply.headers and "keep-alive" not in reply.headers
    finally:
        await app.aclose()
        upstream.stop()

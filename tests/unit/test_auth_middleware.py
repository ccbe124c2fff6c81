"""`SignatureAuthMiddleware` in front of a small ASGI app, with requests signed by `oci.signer.Signer`."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import oci
import pytest
import requests

from dockyard.auth import keys
from dockyard.auth.identity import KeyId, Principal, RegisteredKey
from dockyard.auth.middleware import SignatureAuthMiddleware, request_target
from dockyard.auth.verifier import Verifier
from dockyard.service.context import ANONYMOUS

pytest.register_assert_rewrite("tests.api.inprocess")  # before the import below, as every user of it does
from tests.api.inprocess import says_what_to_do  # noqa: E402

TENANCY = "ocid1.tenancy.oc1..aaaaaaaatenancy"
USER = "ocid1.user.oc1..aaaaaaaauser"
BASE = "http://dockyard.test"
KEY = keys.generate_private_key()
FP = keys.fingerprint(KEY.public_key())
PRINCIPAL = Principal(user_id=USER, tenancy_id=TENANCY, fingerprint=FP)
SIGNER = oci.signer.Signer(TENANCY, USER, FP, None, private_key_content=keys.private_pem(KEY).decode())
ARTIFACT = "/20190101/models/ocid1.datasciencemodel.oc1..m/artifact"


def lookup(key_id: KeyId) -> RegisteredKey | None:
    if key_id == KeyId(TENANCY, USER, FP):
        return RegisteredKey(PRINCIPAL, keys.public_pem(KEY.public_key()))
    return None


class Recorder:
    """An app that reads its whole body and answers what it saw."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        messages = []
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] == "http.disconnect" or not message.get("more_body", False):
                break
        caller = scope.get("state", {}).get("caller")
        seen = {
            "caller": caller,
            "body": b"".join(m.get("body", b"") for m in messages),
            "messages": len(messages),
            "disconnected": messages[-1]["type"] == "http.disconnect",
            "target": request_target(scope),
        }
        self.seen.append(seen)
        reply = json.dumps({"user": getattr(caller, "user_id", None), "bytes": len(seen["body"])}).encode()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": reply})


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


def client_for(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE)


@pytest.fixture
async def client(recorder: Recorder) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(SignatureAuthMiddleware(recorder, Verifier(lookup), max_body_bytes=1024)) as c:
        yield c


def sign(method: str, path: str, body: bytes | None = None, *, enforce: bool = True) -> tuple[dict[str, str], bytes]:
    headers = {"content-type": "application/json"} if enforce else {}
    prepared = requests.Request(method, BASE + path, data=body, headers=headers).prepare()
    SIGNER(prepared, enforce_content_headers=enforce)
    sent = prepared.body or b""
    sent = sent.encode() if isinstance(sent, str) else sent
    assert isinstance(sent, bytes)
    return {k: str(v) for k, v in prepared.headers.items()}, sent


async def chunks(data: bytes, size: int) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


def assert_401(response: httpx.Response, fragment: str) -> None:
    assert response.status_code == 401, response.text
    body = response.json()
    assert body["code"] == "NotAuthenticated"
    assert fragment in body["message"], body["message"]
    assert says_what_to_do(body["message"]), body["message"]
    assert response.headers["opc-request-id"]


async def test_signed_json_post_reaches_the_app_with_its_body_and_principal(client: httpx.AsyncClient, recorder: Recorder) -> None:
    body = json.dumps({"displayName": "x"}).encode()
    headers, sent = sign("POST", "/20190101/projects", body)
    response = await client.post("/20190101/projects", content=sent, headers=headers)
    assert response.status_code == 200, response.text
    assert response.json() == {"user": USER, "bytes": len(body)}
    assert recorder.seen[0]["caller"] == PRINCIPAL
    assert recorder.seen[0]["body"] == body


async def test_tampered_body_is_refused_before_the_app_runs(client: httpx.AsyncClient, recorder: Recorder) -> None:
    headers, sent = sign("POST", "/20190101/projects", b'{"displayName": "aaaa"}')
    response = await client.post("/20190101/projects", content=sent.replace(b"aaaa", b"bbbb"), headers=headers)
    assert_401(response, "header x-content-sha256 does not match the body")
    assert recorder.seen == []


async def test_unsigned_request_is_refused(client: httpx.AsyncClient, recorder: Recorder) -> None:
    response = await client.get("/20190101/projects", headers={"opc-request-id": "MINE"})
    assert_401(response, "the request is not signed")
    assert response.headers["opc-request-id"] == "MINE"
    assert response.headers["www-authenticate"].startswith("Signature")
    assert recorder.seen == []


async def test_health_is_open(client: httpx.AsyncClient, recorder: Recorder) -> None:
    response = await client.get("/health")
    assert response.status_code == 200
    assert recorder.seen[0]["caller"] is None


async def test_query_string_reaches_the_verifier_as_sent(client: httpx.AsyncClient) -> None:
    path = "/20190101/projects?compartmentId=ocid1.compartment.oc1..c&limit=2"
    headers, _ = sign("GET", path)
    assert (await client.get(path, headers=headers)).status_code == 200
    response = await client.get(path.replace("limit=2", "limit=3"), headers=headers)
    assert_401(response, "signature does not verify")


async def test_allow_unsigned_lets_unsigned_requests_pass_as_anonymous(recorder: Recorder) -> None:
    async with client_for(SignatureAuthMiddleware(recorder, Verifier(lookup), allow_unsigned=True)) as client:
        response = await client.post("/20190101/projects", content=b"{}")
        assert response.status_code == 200
        assert recorder.seen[0]["caller"] is ANONYMOUS
        headers, sent = sign("POST", "/20190101/projects", b"{}")
        headers["date"] = "Mon, 01 Jan 2024 00:00:00 GMT"  # signed requests are still verified
        assert_401(await client.post("/20190101/projects", content=sent, headers=headers), "off the server's clock")


async def test_allow_unsigned_still_verifies_an_authorization_header_whatever_its_case(recorder: Recorder) -> None:
    app = SignatureAuthMiddleware(recorder, Verifier(lookup), allow_unsigned=True)
    for name in (b"authorization", b"Authorization", b"AUTHORIZATION"):
        scope = {"type": "http", "method": "GET", "path": "/20190101/projects", "raw_path": b"/20190101/projects",
                 "query_string": b"", "headers": [(b"host", b"dockyard.test"), (name, b'Signature keyId="x"')]}  # fmt: skip
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        await app(scope, receive, send)
        assert sent[0]["status"] == 401, name  # refused, not let through as anonymous
    assert recorder.seen == []


async def test_signed_body_over_the_limit_is_413(client: httpx.AsyncClient, recorder: Recorder) -> None:
    body = json.dumps({"description": "x" * 2000}).encode()
    headers, sent = sign("POST", "/20190101/projects", body)
    response = await client.post("/20190101/projects", content=sent, headers=headers)
    assert response.status_code == 413
    assert response.json()["code"] == "PayloadTooLarge"
    assert recorder.seen == []


async def test_artifact_upload_streams_through_untouched(client: httpx.AsyncClient, recorder: Recorder) -> None:
    """Larger than the buffering limit and chunked: it reaches the app chunk by chunk."""
    data = bytes(range(256)) * 40  # 10 KiB, over max_body_bytes=1024
    headers, _ = sign("POST", ARTIFACT, data, enforce=False)
    headers["content-type"] = "application/octet-stream"
    response = await client.post(ARTIFACT, content=chunks(data, 1000), headers=headers)
    assert response.status_code == 200, response.text
    assert recorder.seen[0]["body"] == data
    assert recorder.seen[0]["messages"] > 1
    assert recorder.seen[0]["caller"] == PRINCIPAL


async def test_json_post_signed_like_an_upload_is_refused(client: httpx.AsyncClient) -> None:
    headers, sent = sign("POST", "/20190101/projects", b"{}", enforce=False)
    assert_401(await client.post("/20190101/projects", content=sent, headers=headers), "must cover content-length, content-type, x-content-sha256 on POST")


async def test_body_signed_upload_with_a_tampered_stream_is_refused(client: httpx.AsyncClient, recorder: Recorder) -> None:
    """A client may sign an upload's hash; then the last chunk waits until the hash matches."""
    data = b"A" * 5000
    headers, _ = sign("POST", ARTIFACT, data, enforce=True)
    response = await client.post(ARTIFACT, content=chunks(b"B" + data[1:], 1000), headers=headers)
    assert_401(response, "header x-content-sha256 does not match the body")
    assert recorder.seen[0]["disconnected"], "the app must not see a complete upload"
    recorder.seen.clear()
    response = await client.post(ARTIFACT, content=chunks(data, 1000), headers=headers)
    assert response.status_code == 200 and recorder.seen[0]["body"] == data


async def test_lifespan_passes_through() -> None:
    events: list[str] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        events.append(scope["type"])

    await SignatureAuthMiddleware(app, Verifier(lookup))({"type": "lifespan"}, None, None)  # type: ignore[arg-type]
    assert events == ["lifespan"]


async def test_aclose_reaches_the_wrapped_gateway() -> None:
    closed: list[bool] = []

    class Closable:
        async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None: ...

        async def aclose(self) -> None:
            closed.append(True)

    await SignatureAuthMiddleware(Closable(), Verifier(lookup)).aclose()
    await SignatureAuthMiddleware(Recorder(), Verifier(lookup)).aclose()  # nothing to close: no error
    assert closed == [True]


def test_header_map_lower_cases_names_and_joins_repeated_headers() -> None:
    from dockyard.auth.middleware import header_map

    assert header_map([(b"Host", b"h:1"), (b"X-A", b"1"), (b"date", b"d")]) == {"host": "h:1", "x-a": "1", "date": "d"}
    assert header_map([(b"X-A", b"1"), (b"host", b"h"), (b"x-a", b"2"), (b"X-a", b"\xe9")]) == {"x-a": "1, 2, \xe9", "host": "h"}
    assert header_map([]) == {}

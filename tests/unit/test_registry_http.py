"""RegistryClient's HTTP choices and failure translation, over an in-memory transport.

What a real registry cannot easily be made to do (HTTPS hosts, Docker Hub's API host, a
missing or lying Docker-Content-Digest, schema-1 answers, 5xx, 403) is played here by a
handler; everything else runs against a real registry in tests/integration.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable

import httpx
import pytest

from dockyard.errors import InvalidParameter, ServiceUnavailable
from dockyard.registry import RegistryClient
from dockyard.registry import manifests as m

MANIFEST = json.dumps(
    {
        "schemaVersion": 2,
        "mediaType": m.OCI_MANIFEST,
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": "sha256:" + "1" * 64,
            "size": 10,
        },
        "layers": [
            {
                "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                "digest": "sha256:" + "2" * 64,
                "size": 90,
            }
        ],
    }
).encode()
MANIFEST_DIGEST = "sha256:" + hashlib.sha256(MANIFEST).hexdigest()

Handler = Callable[[httpx.Request], httpx.Response]


def _manifest_response(
    *,
    digest_header: str | None = MANIFEST_DIGEST,
    body: bytes = MANIFEST,
    content_type: str = m.OCI_MANIFEST,
) -> httpx.Response:
    headers = {"Content-Type": content_type}
    if digest_header:
        headers["Docker-Content-Digest"] = digest_header
    return httpx.Response(200, headers=headers, content=body)


def _client(handler: Handler, **kwargs: object) -> RegistryClient:
    return RegistryClient(transport=httpx.MockTransport(handler), platform="linux/amd64", **kwargs)  # type: ignore[arg-type]


async def test_remote_registries_are_asked_over_https_with_all_four_accept_types() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return _manifest_response()

    async with _client(handler) as client:
        resolved = await client.resolve("registry.example.com/team/model:1.0")
    assert str(seen[0].url) == "https://registry.example.com/v2/team/model/manifests/1.0"
    for media_type in (m.DOCKER_MANIFEST, m.DOCKER_MANIFEST_LIST, m.OCI_MANIFEST, m.OCI_INDEX):
        assert media_type in seen[0].headers["Accept"]
    assert resolved.digest == MANIFEST_DIGEST
    assert resolved.compressed_size_bytes == 100


@pytest.mark.parametrize(
    ("image", "plain", "url"),
    [
        ("python:3.11", (), "https://registry-1.docker.io/v2/library/python/manifests/3.11"),
        (
            "registry.lan:5000/m:1",
            ("registry.lan:5000",),
            "http://registry.lan:5000/v2/m/manifests/1",
        ),
        ("localhost:5000/m:1", (), "http://localhost:5000/v2/m/manifests/1"),
        ("[::1]:5000/m:1", (), "http://[::1]:5000/v2/m/manifests/1"),
    ],
)
async def test_the_api_url_follows_the_host(image: str, plain: tuple[str, ...], url: str) -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return _manifest_response()

    async with _client(handler, plain_http_hosts=plain) as client:
        await client.resolve(image)
    assert seen == [url]


async def test_without_docker_content_digest_the_digest_is_the_hash_of_the_body() -> None:
    async with _client(lambda _: _manifest_response(digest_header=None)) as client:
        resolved = await client.resolve("registry.example.com/team/model:1.0")
    assert resolved.digest == MANIFEST_DIGEST


async def test_a_digest_header_that_does_not_match_the_body_is_not_trusted() -> None:
    lying = "sha256:" + "f" * 64
    async with _client(lambda _: _manifest_response(digest_header=lying)) as client:
        with pytest.raises(ServiceUnavailable, match="does not match its digest"):
            await client.resolve("registry.example.com/team/model:1.0")


async def test_content_served_for_a_digest_must_hash_to_it() -> None:
    wanted = "sha256:" + "e" * 64
    async with _client(lambda _: _manifest_response(digest_header=wanted)) as client:
        with pytest.raises(ServiceUnavailable, match=r"registry registry\.example\.com served"):
            await client.resolve(f"registry.example.com/team/model@{wanted}")


async def test_a_schema1_answer_is_refused_under_c13() -> None:
    body = json.dumps({"schemaVersion": 1, "name": "team/model", "fsLayers": []}).encode()
    response = _manifest_response(
        digest_header=None,
        body=body,
        content_type="application/vnd.docker.distribution.manifest.v1+prettyjws",
    )
    async with _client(lambda _: response) as client:
        with pytest.raises(InvalidParameter) as caught:
            await client.resolve("registry.example.com/team/model:1.0")
    assert caught.value.message.startswith("C13: ")
    assert "schema-1" in caught.value.message


async def test_a_manifest_that_is_not_json_is_refused_under_c13() -> None:
    response = _manifest_response(
        digest_header=None, body=b"<html>login</html>", content_type="text/html"
    )
    async with _client(lambda _: response) as client:
        with pytest.raises(InvalidParameter, match=r"C13: .*not valid JSON"):
            await client.resolve("registry.example.com/team/model:1.0")


@pytest.mark.parametrize(
    ("status", "error", "expected"),
    [
        (500, ServiceUnavailable, "registry registry.example.com failed to answer"),
        (503, ServiceUnavailable, "(503"),
        (429, ServiceUnavailable, "rate-limiting requests (429 TOOMANYREQUESTS)"),
        (400, InvalidParameter, "(400 NAME_INVALID: invalid repository name)"),
    ],
)
async def test_registry_failures_name_the_host_and_status(
    status: int, error: type[Exception], expected: str
) -> None:
    codes = {429: "TOOMANYREQUESTS", 400: "NAME_INVALID"}
    body = {
        "errors": [{"code": codes.get(status, "UNKNOWN"), "message": "invalid repository name"}]
    }
    async with _client(lambda _: httpx.Response(status, json=body)) as client:
        with pytest.raises(error) as caught:
            await client.resolve("registry.example.com/team/model:1.0")
    assert expected in str(caught.value)


async def test_forbidden_with_credentials_asks_for_pull_access_under_c8() -> None:
    async with _client(
        lambda _: httpx.Response(403), credentials={"registry.example.com": ("ns/ci-user", "tok")}
    ) as client:
        with pytest.raises(InvalidParameter) as caught:
            await client.resolve("registry.example.com/team/model:1.0")
    assert caught.value.message.startswith("C8: registry registry.example.com refused access (403)")
    assert "user 'ns/ci-user'" in caught.value.message and "pull access" in caught.value.message


async def test_a_bearer_token_is_fetched_once_and_reused() -> None:
    token_calls: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "auth.example.com":
            token_calls.append(request)
            return httpx.Response(200, json={"access_token": "tok-1"})
        if request.headers.get("Authorization") != "Bearer tok-1":
            return httpx.Response(
                401,
                headers={
                    "WWW-Authenticate": (
                        'Bearer realm="https://auth.example.com/token",service="reg",'
                        'scope="repository:team/model:pull"'
                    )
                },
            )
        return _manifest_response()

    creds = {"registry.example.com": ("alice", "pw")}
    async with _client(handler, credentials=creds) as client:
        await client.resolve("registry.example.com/team/model:1.0")
        await client.resolve("registry.example.com/team/model:1.0")
    assert len(token_calls) == 1
    assert token_calls[0].url.params["scope"] == "repository:team/model:pull"
    assert token_calls[0].url.params["service"] == "reg"
    assert token_calls[0].headers["Authorization"].startswith("Basic ")


async def test_passwords_are_not_sent_to_a_remote_token_service_over_plain_http() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.host != "auth.example.com", "credentials sent in clear text"
        return httpx.Response(
            401, headers={"WWW-Authenticate": 'Bearer realm="http://auth.example.com/t"'}
        )

    async with _client(handler, credentials={"registry.example.com": ("alice", "pw")}) as client:
        with pytest.raises(InvalidParameter, match=r"C8: .*over plain HTTP; refusing"):
            await client.resolve("registry.example.com/team/model:1.0")


async def test_an_unusable_challenge_is_reported() -> None:
    response = httpx.Response(401, headers={"WWW-Authenticate": "Negotiate"})
    async with _client(lambda _: response) as client:
        with pytest.raises(ServiceUnavailable, match="without a usable WWW-Authenticate"):
            await client.resolve("registry.example.com/team/model:1.0")


async def test_a_digest_given_twice_must_agree() -> None:
    a, b = "sha256:" + "a" * 64, "sha256:" + "b" * 64
    async with _client(lambda _: _manifest_response()) as client:
        with pytest.raises(InvalidParameter, match=r"D1: .*carries digest"):
            await client.resolve(f"registry.example.com/team/model@{a}", digest=b)
        with pytest.raises(InvalidParameter, match="is not a valid digest"):
            await client.resolve("registry.example.com/team/model:1", digest="sha256:nope")


async def test_an_oversized_manifest_is_not_read_to_the_end() -> None:
    huge = b"{" + b" " * (5 * 1024 * 1024) + b"}"
    async with _client(lambda _: _manifest_response(digest_header=None, body=huge)) as client:
        with pytest.raises(InvalidParameter, match=r"C13: .*larger than"):
            await client.resolve("registry.example.com/team/model:1.0")

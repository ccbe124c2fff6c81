"""Manifest rules: media types, platform choice, sizes, and auth challenge parsing."""

from __future__ import annotations

import pytest

from dockyard.registry import manifests as m
from dockyard.registry.auth import parse_challenges, token_from_response, token_request_params

DIGEST_A = "sha256:" + "a" * 64
DIGEST_B = "sha256:" + "b" * 64
DIGEST_C = "sha256:" + "c" * 64


def _entry(digest: str, os: str, arch: str, variant: str | None = None) -> dict[str, object]:
    platform = {"os": os, "architecture": arch} | ({"variant": variant} if variant else {})
    return {"mediaType": m.OCI_MANIFEST, "digest": digest, "size": 500, "platform": platform}


INDEX = {
    "schemaVersion": 2,
    "mediaType": m.OCI_INDEX,
    "manifests": [
        _entry(DIGEST_A, "linux", "arm64", "v8"),
        _entry(DIGEST_B, "linux", "amd64"),
        _entry(DIGEST_C, "unknown", "unknown"),  # a BuildKit attestation
    ],
}


@pytest.mark.parametrize(
    ("wanted", "digest"),
    [("linux/amd64", DIGEST_B), ("linux/arm64", DIGEST_A), ("linux/arm64/v8", DIGEST_A)],
)
def test_the_index_entry_for_the_wanted_platform_is_chosen(wanted: str, digest: str) -> None:
    assert m.select_platform(INDEX, m.Platform.parse(wanted)).digest == digest


@pytest.mark.parametrize("wanted", ["linux/s390x", "windows/amd64", "linux/arm64/v7"])
def test_a_missing_platform_names_what_the_index_offers_without_attestations(wanted: str) -> None:
    with pytest.raises(m.ManifestError) as caught:
        m.select_platform(INDEX, m.Platform.parse(wanted))
    assert str(caught.value) == (
        f"the image index has no {wanted} image (it offers: linux/arm64/v8, linux/amd64)"
    )


def test_an_index_entry_with_a_malformed_digest_is_refused() -> None:
    index = {"manifests": [_entry("sha256:../../evil", "linux", "amd64")]}
    with pytest.raises(m.ManifestError, match="no valid sha256 digest"):
        m.select_platform(index, m.Platform.parse("linux/amd64"))


@pytest.mark.parametrize("text", ["linux", "linux/", "/amd64", "a/b/c/d", ""])
def test_bad_platforms_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="must look like 'linux/amd64'"):
        m.Platform.parse(text)


def test_the_host_platform_is_linux() -> None:
    assert m.Platform.of_host().os == "linux"
    assert m.Platform.of_host().architecture in {"amd64", "arm64", "arm", "ppc64le", "s390x"}


def test_compressed_size_is_config_plus_layers() -> None:
    manifest = {
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "size": 7},
        "layers": [{"size": 100}, {"size": 2000}],
    }
    assert m.compressed_size(manifest) == 2107


@pytest.mark.parametrize(
    ("manifest", "problem"),
    [
        ({"layers": []}, "no 'config' object"),
        (
            {
                "config": {"mediaType": "application/vnd.cncf.helm.config.v1+json", "size": 1},
                "layers": [],
            },
            "application/vnd.cncf.helm.config.v1+json",
        ),
        (
            {
                "config": {
                    "mediaType": "application/vnd.docker.container.image.v1+json",
                    "size": 1,
                },
                "layers": [{"size": -1}],
            },
            "layer descriptor has no valid 'size'",
        ),
        (
            {
                "config": {
                    "mediaType": "application/vnd.docker.container.image.v1+json",
                    "size": True,
                },
                "layers": [],
            },
            "config descriptor has no valid 'size'",
        ),
    ],
)
def test_manifests_that_are_not_images_are_refused(
    manifest: dict[str, object], problem: str
) -> None:
    with pytest.raises(m.ManifestError, match=problem.replace(".", r"\.").replace("+", r"\+")):
        m.compressed_size(manifest)


@pytest.mark.parametrize(
    ("content_type", "document", "expected"),
    [
        (m.OCI_INDEX, {}, m.OCI_INDEX),
        (f"{m.DOCKER_MANIFEST}; charset=utf-8", {}, m.DOCKER_MANIFEST),
        ("application/json", {"mediaType": m.DOCKER_MANIFEST_LIST}, m.DOCKER_MANIFEST_LIST),
        ("application/json", {"manifests": []}, m.OCI_INDEX),
        (None, {"config": {}, "layers": []}, m.OCI_MANIFEST),
        (
            "application/json",
            {"schemaVersion": 1},
            "application/vnd.docker.distribution.manifest.v1+json",
        ),
    ],
)
def test_media_type_comes_from_the_header_then_the_document(
    content_type: str | None, document: dict[str, object], expected: str
) -> None:
    assert m.media_type_of(content_type, document) == expected


@pytest.mark.parametrize("body", [b"not json", b"[1, 2]", b"\xff\xfe"])
def test_a_manifest_must_be_a_json_object(body: bytes) -> None:
    with pytest.raises(m.ManifestError):
        m.parse_document(body)


def test_the_accept_header_names_all_four_manifest_types() -> None:
    for media_type in (m.DOCKER_MANIFEST, m.DOCKER_MANIFEST_LIST, m.OCI_MANIFEST, m.OCI_INDEX):
        assert media_type in m.ACCEPT_HEADER


# --- WWW-Authenticate ---------------------------------------------------------------------------


def test_a_bearer_challenge_keeps_commas_inside_quotes() -> None:
    [challenge] = parse_challenges(
        [
            'Bearer realm="https://auth.example/token",service="registry.example",'
            'scope="repository:team/model:pull,push"'
        ]
    )
    assert challenge.scheme == "bearer"
    assert challenge.params == {
        "realm": "https://auth.example/token",
        "service": "registry.example",
        "scope": "repository:team/model:pull,push",
    }
    assert token_request_params(challenge, "team/model") == {
        "scope": "repository:team/model:pull,push",
        "service": "registry.example",
    }


def test_several_challenges_and_headers_are_all_read() -> None:
    challenges = parse_challenges(['Basic realm="r", Bearer realm="https://a/t"', "Negotiate"])
    assert [c.scheme for c in challenges] == ["basic", "bearer", "negotiate"]
    assert challenges[0].params == {"realm": "r"}
    assert challenges[1].params == {"realm": "https://a/t"}


def test_without_a_scope_the_token_asks_for_pull_access() -> None:
    [challenge] = parse_challenges(['Bearer realm="https://a/t"'])
    assert token_request_params(challenge, "ns/m") == {"scope": "repository:ns/m:pull"}


@pytest.mark.parametrize(
    ("document", "token"),
    [
        ({"token": "t1"}, "t1"),
        ({"access_token": "t2"}, "t2"),
        ({"token": ""}, None),
        ([], None),
        ({"token": "t1", "access_token": "t2"}, "t1"),
    ],
)
def test_tokens_are_read_from_either_field(document: object, token: str | None) -> None:
    assert token_from_response(document) == token

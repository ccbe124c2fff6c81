"""Image references parse and normalise as Docker does, and bad ones say how to fix them."""

from __future__ import annotations

import pytest

from dockyard.errors import InvalidParameter
from dockyard.registry.references import ImageReference, parse_image_reference, validate_digest

D1 = "sha256:" + "a" * 64
D2 = "sha256:" + "0123456789abcdef" * 4


@pytest.mark.parametrize(
    ("image", "registry", "repository", "tag", "digest"),
    [
        # Docker Hub defaults
        ("python", "docker.io", "library/python", "latest", None),
        ("python:3.11-slim", "docker.io", "library/python", "3.11-slim", None),
        ("pytorch/pytorch:2.1.0", "docker.io", "pytorch/pytorch", "2.1.0", None),
        ("docker.io/nginx", "docker.io", "library/nginx", "latest", None),
        ("index.docker.io/nginx:1", "docker.io", "library/nginx", "1", None),
        ("docker.io/library/nginx", "docker.io", "library/nginx", "latest", None),
        # host detection: '.', ':' or localhost in the first component
        ("iad.ocir.io/ns/model:1.0.1", "iad.ocir.io", "ns/model", "1.0.1", None),
        (
            "ocir.us-ashburn-1.oci.oraclecloud.com/ns/a/b:v",
            "ocir.us-ashburn-1.oci.oraclecloud.com",
            "ns/a/b",
            "v",
            None,
        ),
        ("localhost/model", "localhost", "model", "latest", None),
        ("localhost:5000/team/model:v2", "localhost:5000", "team/model", "v2", None),
        ("127.0.0.1:5001/m", "127.0.0.1:5001", "m", "latest", None),
        ("[::1]:5000/m:t", "[::1]:5000", "m", "t", None),
        ("Registry.Example.COM/team/m", "registry.example.com", "team/m", "latest", None),
        ("team/model", "docker.io", "team/model", "latest", None),  # no '.', ':' -> Docker Hub
        # digests, with and without a tag
        (f"iad.ocir.io/ns/m@{D1}", "iad.ocir.io", "ns/m", None, D1),
        (f"iad.ocir.io/ns/m:1.0@{D2}", "iad.ocir.io", "ns/m", "1.0", D2),
        (f"localhost:5000/m:t@{D1}", "localhost:5000", "m", "t", D1),
        # separators inside path components
        ("a.b/c_d/e__f/g-h/i---j", "a.b", "c_d/e__f/g-h/i---j", "latest", None),
        ("host.io/a:_tag", "host.io", "a", "_tag", None),
        ("host.io/a:" + "t" * 128, "host.io", "a", "t" * 128, None),
    ],
)
def test_valid_references_are_normalised(
    image: str, registry: str, repository: str, tag: str | None, digest: str | None
) -> None:
    assert parse_image_reference(image) == ImageReference(registry, repository, tag, digest)


@pytest.mark.parametrize(
    ("image", "problem"),
    [
        ("Foo//bar", "repository path components must be lowercase"),
        ("iad.ocir.io/NS/model:1", "must be lowercase"),
        ("iad.ocir.io/ns//model", "empty component"),
        ("iad.ocir.io/ns/model/", "empty component"),
        ("iad.ocir.io/ns/-model", "'-model'"),
        ("iad.ocir.io/ns/mo___del", "'mo___del'"),
        ("iad.ocir.io/ns/mo..del", "'mo..del'"),
        ("iad.ocir.io/ns/model:", "tag ''"),
        ("iad.ocir.io/ns/model:-1", "tag '-1'"),
        ("iad.ocir.io/ns/model:.1", "tag '.1'"),
        ("iad.ocir.io/ns/model:" + "t" * 129, "at most 128"),
        ("iad.ocir.io/ns/model:tä", "tag 'tä'"),
        ("iad.ocir.io/ns/model@", "nothing follows '@'"),
        ("iad.ocir.io/ns/model@sha256:abc", "exactly 64 hex characters (got 3)"),
        ("iad.ocir.io/ns/model@sha256:" + "A" * 64, "lower case"),
        ("iad.ocir.io/ns/model@sha512:" + "a" * 128, "must be sha256"),
        ("iad.ocir.io/ns/model@" + "a" * 64, "no 'sha256:' prefix"),
        ("-bad.io/ns/model", "registry host '-bad.io'"),
        ("host.io:0/model", "port 0"),
        ("host.io:70000/model", "port 70000"),
        ("a" * 64, "image ID"),
        ("", "empty"),
        ("iad.ocir.io/ns/model: 1", "whitespace"),
        ("iad.ocir.io/" + "a" * 250, "longer than 255"),
    ],
)
def test_invalid_references_name_the_value_the_problem_and_the_fix(
    image: str, problem: str
) -> None:
    with pytest.raises(InvalidParameter) as caught:
        parse_image_reference(image)
    message = caught.value.message
    assert message.startswith(f"image '{image}' is not a valid image reference: ")
    assert problem in message
    assert "use" in message.split(problem, 1)[1]  # the fix comes after the problem


def test_the_documented_example_message() -> None:
    with pytest.raises(InvalidParameter) as caught:
        parse_image_reference("Foo//bar")
    assert caught.value.message == (
        "image 'Foo//bar' is not a valid image reference: repository path components must be "
        "lowercase; use a reference like 'iad.ocir.io/namespace/name:tag'"
    )
    assert caught.value.status == 400


def test_pinned_replaces_the_tag_with_the_digest() -> None:
    ref = parse_image_reference("iad.ocir.io/ns/model:1.0")
    assert ref.pinned(D1) == f"iad.ocir.io/ns/model@{D1}"
    assert (
        parse_image_reference(f"iad.ocir.io/ns/model:1.0@{D2}").pinned()
        == f"iad.ocir.io/ns/model@{D2}"
    )
    assert parse_image_reference("python").pinned(D1) == f"docker.io/library/python@{D1}"
    assert parse_image_reference(ref.pinned(D1)) == ImageReference(
        "iad.ocir.io", "ns/model", None, D1
    )


def test_pinned_refuses_a_bad_or_missing_digest() -> None:
    ref = parse_image_reference("iad.ocir.io/ns/model:1.0")
    with pytest.raises(InvalidParameter, match="no digest to pin"):
        ref.pinned()
    with pytest.raises(InvalidParameter, match="'sha256:xyz' is not a valid digest"):
        ref.pinned("sha256:xyz")


def test_a_reference_prints_back_in_canonical_form() -> None:
    assert str(parse_image_reference("python:3")) == "docker.io/library/python:3"
    assert str(parse_image_reference(f"iad.ocir.io/ns/m:1@{D1}")) == f"iad.ocir.io/ns/m:1@{D1}"
    assert parse_image_reference(f"iad.ocir.io/ns/m@{D1}").manifest_reference == D1
    assert parse_image_reference(f"iad.ocir.io/ns/m:1@{D1}").manifest_reference == D1
    assert parse_image_reference("iad.ocir.io/ns/m:1").manifest_reference == "1"


@pytest.mark.parametrize("digest", [D1, D2])
def test_valid_digests_pass_unchanged(digest: str) -> None:
    assert validate_digest(digest) == digest


@pytest.mark.parametrize(
    "digest",
    [
        "",
        "sha256:",
        "sha256:abc",
        "SHA256:" + "a" * 64,
        "sha256:" + "g" * 64,
        "sha256:" + "a" * 65,
        "md5:" + "a" * 32,
        "a" * 64,
        " sha256:" + "a" * 64,
    ],
)
def test_invalid_digests_say_what_a_digest_looks_like(digest: str) -> None:
    with pytest.raises(InvalidParameter) as caught:
        validate_digest(digest, what="imageDigest")
    assert caught.value.message.startswith(f"imageDigest '{digest}' is not a valid digest: ")
    assert "64 lower-case hex characters" in caught.value.message

"""C11: images only from the service's own registry and region."""

from __future__ import annotations

import pytest

from dockyard.errors import InvalidParameter
from dockyard.registry.hosts import is_loopback_host, split_host_port
from dockyard.registry.regions import (
    OCI_REGION_KEYS,
    check_registry_allowed,
    normalize_region,
    ocir_host_for,
    ocir_region,
)


@pytest.mark.parametrize(
    ("region", "key"),
    [
        ("us-ashburn-1", "iad"),
        ("us-phoenix-1", "phx"),
        ("eu-frankfurt-1", "fra"),
        ("uk-london-1", "lhr"),
        ("ap-tokyo-1", "nrt"),
        ("ap-sydney-1", "syd"),
        ("ca-toronto-1", "yyz"),
        ("sa-saopaulo-1", "gru"),
        ("ap-mumbai-1", "bom"),
        ("eu-amsterdam-1", "ams"),
        ("me-jeddah-1", "jed"),
        ("ap-seoul-1", "icn"),
        ("us-sanjose-1", "sjc"),
        ("eu-zurich-1", "zrh"),
    ],
)
def test_the_region_table_knows_the_common_regions(region: str, key: str) -> None:
    assert OCI_REGION_KEYS[region] == key
    assert normalize_region(key.upper()) == region
    assert ocir_host_for(region) == f"{key}.ocir.io"


def test_region_keys_are_unique() -> None:
    assert len(set(OCI_REGION_KEYS.values())) == len(OCI_REGION_KEYS)


@pytest.mark.parametrize(
    ("host", "region"),
    [
        ("iad.ocir.io", "us-ashburn-1"),
        ("FRA.ocir.io", "eu-frankfurt-1"),
        ("us-phoenix-1.ocir.io", "us-phoenix-1"),
        ("ocir.uk-london-1.oci.oraclecloud.com", "uk-london-1"),
        ("iad.ocir.io:443", "us-ashburn-1"),
        ("xyz.ocir.io", "xyz"),  # a region newer than the table keeps its own name
        ("ocir.io", None),
        ("evil.iad.ocir.io", None),
        ("iad.ocir.io.evil.com", None),
        ("ghcr.io", None),
        ("docker.io", None),
        ("127.0.0.1:5000", None),
    ],
)
def test_ocir_hosts_are_recognised_with_their_region(host: str, region: str | None) -> None:
    assert ocir_region(host) == region


@pytest.mark.parametrize(
    ("host", "service_region", "allowed"),
    [
        # loopback: the operator's own registry, any port, no listing needed
        ("127.0.0.1:5000", "us-ashburn-1", ()),
        ("127.8.9.10:1", "local", ()),
        ("localhost", "local", ()),
        ("localhost:5001", "eu-frankfurt-1", ()),
        ("[::1]:5000", "local", ()),
        # OCIR in the service's region, named by identifier or key on either side
        ("iad.ocir.io", "us-ashburn-1", ()),
        ("iad.ocir.io", "IAD", ()),
        ("ocir.us-ashburn-1.oci.oraclecloud.com", "iad", ()),
        ("us-ashburn-1.ocir.io", "us-ashburn-1", ()),
        ("xyz.ocir.io", "xyz", ()),
        # other registries only when listed exactly
        ("registry.example.com", "us-ashburn-1", ("registry.example.com",)),
        ("Registry.Example.com:5000", "local", ("registry.example.com:5000",)),
        ("docker.io", "local", ("docker.io", "ghcr.io")),
    ],
)
def test_allowed_registries(host: str, service_region: str, allowed: tuple[str, ...]) -> None:
    check_registry_allowed(host, service_region, allowed)


@pytest.mark.parametrize(
    ("host", "service_region", "allowed", "expected"),
    [
        (
            "fra.ocir.io",
            "us-ashburn-1",
            (),
            [
                "'fra.ocir.io' is in region 'eu-frankfurt-1'",
                "runs in region 'us-ashburn-1'",
                "push the image to iad.ocir.io",
            ],
        ),
        (
            "ocir.uk-london-1.oci.oraclecloud.com",
            "phx",
            (),
            ["region 'uk-london-1'", "region 'us-phoenix-1'", "phx.ocir.io"],
        ),
        # listing an OCIR host of another region does not lift the no-cross-region rule
        ("fra.ocir.io", "us-ashburn-1", ("fra.ocir.io",), ["region 'eu-frankfurt-1'"]),
        # a service that is not in an OCI region must be told which one it stands for
        ("iad.ocir.io", "local", (), ["runs in region 'local'", "DOCKYARD_REGION=us-ashburn-1"]),
        (
            "registry.example.com",
            "us-ashburn-1",
            (),
            ["'registry.example.com'", "DOCKYARD_ALLOWED_REGISTRIES"],
        ),
        (
            "registry.example.com:5000",
            "local",
            ("registry.example.com",),
            ["'registry.example.com:5000'", "DOCKYARD_ALLOWED_REGISTRIES"],
        ),
        ("docker.io", "us-ashburn-1", ("ghcr.io",), ["'docker.io'", "DOCKYARD_ALLOWED_REGISTRIES"]),
        ("10.0.0.5:5000", "local", (), ["'10.0.0.5:5000'", "DOCKYARD_ALLOWED_REGISTRIES"]),
        ("localhost.example.com", "local", (), ["DOCKYARD_ALLOWED_REGISTRIES"]),
    ],
)
def test_refused_registries_name_c11_the_host_and_the_way_out(
    host: str, service_region: str, allowed: tuple[str, ...], expected: list[str]
) -> None:
    with pytest.raises(InvalidParameter) as caught:
        check_registry_allowed(host, service_region, allowed)
    assert caught.value.message.startswith("C11: ")
    assert caught.value.rule == "C11"
    for part in expected:
        assert part in caught.value.message


@pytest.mark.parametrize(
    ("host", "bare", "port"),
    [
        ("127.0.0.1:5000", "127.0.0.1", 5000),
        ("[::1]:5000", "::1", 5000),
        ("[::1]", "::1", None),
        ("Example.com", "example.com", None),
        ("::1", "::1", None),
        ("h:x", "h", None),
    ],
)
def test_split_host_port(host: str, bare: str, port: int | None) -> None:
    assert split_host_port(host) == (bare, port)


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.255.0.1:80", True),
        ("localhost:1", True),
        ("[::1]:5000", True),
        ("::1", True),
        ("10.0.0.1", False),
        ("localhost.evil.com", False),
        ("128.0.0.1", False),
        ("iad.ocir.io", False),
    ],
)
def test_loopback_hosts(host: str, loopback: bool) -> None:
    assert is_loopback_host(host) is loopback

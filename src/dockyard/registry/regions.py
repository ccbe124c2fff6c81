"""The C11 rule: images come only from the service's own registry, in the service's region.

OCI Container Registry (OCIR) names its regional endpoints two ways:
``<region key>.ocir.io`` (``iad.ocir.io``; the long identifier also works there,
``us-ashburn-1.ocir.io``) and ``ocir.<region identifier>.oci.oraclecloud.com``.
A self-hosted service has two more kinds of registry: one on the same machine (loopback,
the operator's own, trusted by default) and others the operator lists explicitly.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from types import MappingProxyType

from dockyard.errors import InvalidParameter
from dockyard.registry.hosts import is_loopback_host, split_host_port

ALLOWED_REGISTRIES_SETTING = "DOCKYARD_ALLOWED_REGISTRIES"
REGION_SETTING = "DOCKYARD_REGION"

#: Commercial-realm (oc1) OCI region identifiers and their three-letter region keys.
OCI_REGION_KEYS: Mapping[str, str] = MappingProxyType(
    {
        "af-johannesburg-1": "jnb",
        "ap-chuncheon-1": "yny",
        "ap-hyderabad-1": "hyd",
        "ap-melbourne-1": "mel",
        "ap-mumbai-1": "bom",
        "ap-osaka-1": "kix",
        "ap-seoul-1": "icn",
        "ap-singapore-1": "sin",
        "ap-sydney-1": "syd",
        "ap-tokyo-1": "nrt",
        "ca-montreal-1": "yul",
        "ca-toronto-1": "yyz",
        "eu-amsterdam-1": "ams",
        "eu-frankfurt-1": "fra",
        "eu-madrid-1": "mad",
        "eu-marseille-1": "mrs",
        "eu-milan-1": "lin",
        "eu-paris-1": "cdg",
        "eu-stockholm-1": "arn",
        "eu-zurich-1": "zrh",
        "il-jerusalem-1": "mtz",
        "me-abudhabi-1": "auh",
        "me-dubai-1": "dxb",
        "me-jeddah-1": "jed",
        "mx-monterrey-1": "mty",
        "mx-queretaro-1": "qro",
        "sa-bogota-1": "bog",
        "sa-santiago-1": "scl",
        "sa-saopaulo-1": "gru",
        "sa-valparaiso-1": "vap",
        "sa-vinhedo-1": "vcp",
        "uk-cardiff-1": "cwl",
        "uk-london-1": "lhr",
        "us-ashburn-1": "iad",
        "us-chicago-1": "ord",
        "us-phoenix-1": "phx",
        "us-sanjose-1": "sjc",
    }
)
_REGION_BY_KEY: Mapping[str, str] = MappingProxyType({k: r for r, k in OCI_REGION_KEYS.items()})


def normalize_region(region: str) -> str:
    """The region identifier for a region identifier or key, case-insensitively
    (``IAD`` -> ``us-ashburn-1``). A name not in the table comes back lower-cased, so a
    region newer than the table still compares equal to itself."""
    region = region.strip().lower()
    return _REGION_BY_KEY.get(region, region)


def ocir_region(host: str) -> str | None:
    """The region of an OCIR host, normalised by :func:`normalize_region`; ``None`` when
    ``host`` is not an OCIR endpoint. Never raises."""
    bare, _ = split_host_port(host)
    if bare.endswith(".ocir.io"):
        label = bare.removesuffix(".ocir.io")
    elif bare.startswith("ocir.") and bare.endswith(".oci.oraclecloud.com"):
        label = bare.removeprefix("ocir.").removesuffix(".oci.oraclecloud.com")
    else:
        return None
    # A dot left in the label is a deeper name (x.iad.ocir.io), not a regional endpoint.
    if not label or "." in label:
        return None
    return normalize_region(label)


def ocir_host_for(region: str) -> str | None:
    """The ``<key>.ocir.io`` endpoint of a known region, for error messages; else ``None``."""
    key = OCI_REGION_KEYS.get(normalize_region(region))
    return f"{key}.ocir.io" if key else None


def check_registry_allowed(
    host: str, service_region: str, allowed_hosts: Collection[str] = ()
) -> None:
    """Return when images may be pulled from registry ``host`` (``host[:port]``); raise otherwise.

    Allowed are: loopback registries (any port); an OCIR endpoint of ``service_region``
    (identifier or key); any other host listed exactly (``host[:port]``, case-insensitive)
    in ``allowed_hosts``. An OCIR endpoint of another region is refused even when listed:
    C11 forbids cross-region pulls.

    Raises InvalidParameter (rule C11) naming the host, and for OCIR both regions.
    """
    host = host.strip().lower()
    if is_loopback_host(host):
        return
    region = ocir_region(host)
    if region is not None:
        service = normalize_region(service_region)
        if region == service:
            return
        raise InvalidParameter(_cross_region_message(host, region, service), rule="C11")
    if host in {h.strip().lower() for h in allowed_hosts}:
        return
    raise InvalidParameter(
        f"registry '{host}' is not a registry this service may pull from: only the service's "
        f"own registry is supported (OCIR in region '{normalize_region(service_region)}', "
        "or a registry on this machine); push the image there, or have the operator add "
        f"'{host}' to {ALLOWED_REGISTRIES_SETTING}",
        rule="C11",
    )


def _cross_region_message(host: str, region: str, service: str) -> str:
    text = (
        f"registry '{host}' is in region '{region}' but this service runs in region "
        f"'{service}', and images are pulled only from the service's own region "
        "(no cross-region pulls); "
    )
    own = ocir_host_for(service)
    if own:
        return text + f"push the image to {own} and use that reference"
    # The service region is not an OCI region (the default 'local'): the operator must say
    # which region this installation stands for before any OCIR image can be used.
    return text + (
        f"push the image to a registry of this service, or set {REGION_SETTING} to the "
        f"region this service stands for (e.g. {REGION_SETTING}={region})"
    )

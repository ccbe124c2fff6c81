"""Registry host names: splitting off the port and recognising loopback registries.

A registry "host" here is what sits in front of the first ``/`` of an image reference:
``iad.ocir.io``, ``127.0.0.1:5000``, ``[::1]:5000``, ``localhost``.
"""

from __future__ import annotations

import ipaddress


def split_host_port(host: str) -> tuple[str, int | None]:
    """Split ``host[:port]`` (IPv6 literals in brackets) into the bare host and the port.

    The bare host is lower-cased and loses its brackets (``[::1]:5000`` -> ``("::1", 5000)``).
    A missing or non-numeric port gives ``None``; this function never raises, because it is
    used on hosts that the reference parser has already validated.
    """
    host = host.strip().lower()
    if host.startswith("["):
        end = host.find("]")
        if end == -1:
            return host, None
        bare, rest = host[1:end], host[end + 1 :]
        port_text = rest[1:] if rest.startswith(":") else ""
    elif host.count(":") == 1:
        bare, _, port_text = host.partition(":")
    else:
        # No port, or a bare IPv6 literal (several colons, no brackets).
        bare, port_text = host, ""
    return bare, int(port_text) if port_text.isdigit() else None


def is_loopback_host(host: str) -> bool:
    """Whether ``host[:port]`` names this machine: ``localhost``, 127.0.0.0/8 or ``::1``.

    Loopback registries are trusted by default (they are the operator's own) and are spoken
    to over plain HTTP, as Docker does.
    """
    bare, _ = split_host_port(host)
    if bare == "localhost":
        return True
    try:
        return ipaddress.ip_address(bare).is_loopback
    except ValueError:
        return False

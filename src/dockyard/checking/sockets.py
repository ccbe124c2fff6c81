"""What a container listens on, read from its /proc/net/tcp and /proc/net/tcp6 (pure).

Each table row gives ``local_address`` as hex ``ADDRESS:PORT`` (IPv4: one little-endian 32-bit
word; IPv6: four of them) and ``st``, the TCP state (``0A`` = LISTEN). Reading the tables from
inside the container's network namespace shows what the server really bound, including the
classic mistakes: another port than declared, or 127.0.0.1 only (unreachable through the
published port).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

_LISTEN = "0A"


@dataclass(frozen=True, order=True)
class Listener:
    port: int
    address: str  # "0.0.0.0", "::", "127.0.0.1", ...

    @property
    def loopback(self) -> bool:
        """Reachable only from inside the container (the published port cannot reach it)."""
        address = ipaddress.ip_address(self.address)
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return address.is_loopback

    def __str__(self) -> str:
        return f"[{self.address}]:{self.port}" if ":" in self.address else f"{self.address}:{self.port}"


def parse_socket_table(text: str) -> list[Listener]:
    """The listening sockets in the concatenated tcp/tcp6 tables, sorted, without duplicates."""
    found: set[Listener] = set()
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 4 or not fields[0].endswith(":") or fields[3].upper() != _LISTEN:
            continue
        host, _, port = fields[1].partition(":")
        try:
            found.add(Listener(int(port, 16), _address(host)))
        except ValueError:
            continue  # a row this parser does not understand: skip it rather than guess
    return sorted(found)


def _address(hex_address: str) -> str:
    raw = bytes.fromhex(hex_address)
    if len(raw) == 4:
        return str(ipaddress.IPv4Address(raw[::-1]))
    if len(raw) == 16:
        words = b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4))
        return str(ipaddress.IPv6Address(words))
    raise ValueError(f"unexpected address length {len(raw)}")


def reachable_on(listeners: list[Listener], port: int) -> bool:
    """Something listens on `port` on an address the published port reaches."""
    return any(item.port == port and not item.loopback for item in listeners)


def loopback_only_on(listeners: list[Listener], port: int) -> bool:
    on_port = [item for item in listeners if item.port == port]
    return bool(on_port) and all(item.loopback for item in on_port)

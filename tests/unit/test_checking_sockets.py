"""Reading what a container listens on from /proc/net/tcp and tcp6 (tables captured from containers)."""

from __future__ import annotations

import ipaddress

from dockyard.checking.sockets import Listener, loopback_only_on, parse_socket_table, reachable_on

TABLES = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 306272 1 0000 100 0 0 10 0
   1: 0100007F:1389 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 305844 1 0000 100 0 0 10 0
   2: 060011AC:1F90 010011AC:C876 06 00000000:00000000 03:00001767 00000000     0        0 0 3 0000
  sl  local_address                         remote_address                        st tx_queue rx_queue tr
   0: 00000000000000000000000000000000:1F91 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000
   1: 00000000000000000000000001000000:1F92 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000
   2: 0000000000000000FFFF00000100007F:1F93 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000
"""


def test_listening_sockets_are_found_and_decoded() -> None:
    assert parse_socket_table(TABLES) == [
        Listener(5001, "127.0.0.1"),
        Listener(8080, "0.0.0.0"),
        Listener(8081, "::"),
        Listener(8082, "::1"),
        Listener(8083, str(ipaddress.IPv6Address("::ffff:127.0.0.1"))),
    ]  # the TIME_WAIT row (06) is not a listener


def test_loopback_and_reachability() -> None:
    listeners = parse_socket_table(TABLES)
    assert reachable_on(listeners, 8080) and reachable_on(listeners, 8081)
    assert not reachable_on(listeners, 5001) and loopback_only_on(listeners, 5001)
    assert loopback_only_on(listeners, 8082) and loopback_only_on(listeners, 8083)
    assert not reachable_on(listeners, 9999) and not loopback_only_on(listeners, 9999)
    assert str(Listener(8081, "::")) == "[::]:8081" and str(Listener(80, "0.0.0.0")) == "0.0.0.0:80"


def test_garbage_is_ignored() -> None:
    assert parse_socket_table("cat: /proc/net/tcp6: No such file\n  0: zz:zz 0 0A\n") == []

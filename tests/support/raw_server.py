"""A TCP server on 127.0.0.1 that speaks whatever a test needs, one connection at a time: for
upstreams that misbehave below HTTP (close without a word, reset, answer garbage)."""

from __future__ import annotations

import socket
import threading


def read_request(conn: socket.socket, buffer: bytes = b"") -> tuple[bytes, bytes, bytes] | None:
    """One HTTP/1.1 request read from `conn` (after the bytes already in `buffer`): its head
    (request line and headers, without the blank line), its body (as long as its Content-Length,
    or what came before the connection closed) and the bytes read past it. None when the
    connection closes before a whole head."""
    while b"\r\n\r\n" not in buffer:
        more = conn.recv(65536)
        if not more:
            return None
        buffer += more
    head, _, rest = buffer.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(rest) < length:
        more = conn.recv(65536)
        if not more:
            break
        rest += more
    return head, rest[:length], rest[length:]


class RawServer:
    """Accepts connections in a thread and gives each to `handle` (override it); the connection
    is closed when `handle` returns. `port` is where it listens; `stop()` ends it."""

    def __init__(self) -> None:
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(64)
        self._sock.settimeout(0.2)
        self.port = self._sock.getsockname()[1]
        self._stop = False
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def handle(self, conn: socket.socket) -> None:
        raise NotImplementedError

    def _serve(self) -> None:
        while not self._stop:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                continue
            with conn:
                try:
                    self.handle(conn)
                except OSError:
                    pass  # the other side went away: the next connection is served all the same

    def stop(self) -> None:
        self._stop = True
        self._thread.join(5)
        self._sock.close()

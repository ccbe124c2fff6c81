"""The gateway's HTTP/1.1 server, over a real listening socket (raw sockets and httpx)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.support.own_server import Running


@pytest.fixture
def serving() -> Iterator[Any]:
    started: list[Running] = []

    def start(app: Any, **options: Any) -> Running:
        running = Running(app, **options)
        started.append(running)
        return running

    yield start
    for running in started:
        running.stop(1)


def read_reply(sock: socket.socket, buffer: bytearray | None = None, head_only: bool = False) -> tuple[int, dict[str, str], bytes, bytearray]:
    """One response from `sock` (Content-Length or chunked), and the bytes read past it."""
    data = buffer if buffer is not None else bytearray()
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed before a whole head: {bytes(data)!r}")
        data += chunk
    head, _, rest = bytes(data).partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    body = bytearray(rest)
    if head_only:
        return status, headers, b"", body
    if "content-length" in headers:
        length = int(headers["content-length"])
        while len(body) < length:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed inside the body")
            body += chunk
        return status, headers, bytes(body[:length]), bytearray(body[length:])
    if headers.get("transfer-encoding") == "chunked":
        out = bytearray()
        while True:
            while b"\r\n" not in body:
                body += sock.recv(65536)
            size_line, _, tail = bytes(body).partition(b"\r\n")
            size = int(size_line, 16)
            body = bytearray(tail)
            while len(body) < size + 2:
                body += sock.recv(65536)
            out += body[:size]
            body = body[size + 2 :]
            if size == 0:
                return status, headers, bytes(out), body
    return status, headers, b"", body


def closed_by_peer(sock: socket.socket, timeout: float = 5) -> bool:
    sock.settimeout(timeout)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


async def echo(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Answers with the request's method, path, query and body as JSON."""
    if scope["type"] != "http":
        return
    body = bytearray()
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    reply = json.dumps({
        "method": scope["method"], "path": scope["path"], "raw_path": scope["raw_path"].decode(),
        "query": scope["query_string"].decode(), "body": body.decode("latin-1"), "http_version": scope["http_version"],
        "client": list(scope["client"]), "server": list(scope["server"]), "state": scope["state"],
        "headers": [[n.decode(), v.decode()] for n, v in scope["headers"]],
    }).encode()  # fmt: skip
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(reply))]})
    await send({"type": "http.response.body", "body": reply})


def test_scope_and_keep_alive_reuse(serving: Any) -> None:
    running = serving(echo)
    with httpx.Client(base_url=running.url) as client:
        first = client.post("/a%20b/c?x=1&y=2", content=b"hello", headers={"X-Thing": "One"})
        second = client.get("/again")
    assert first.status_code == 200
    got = first.json()
    assert got["method"] == "POST" and got["path"] == "/a b/c" and got["raw_path"] == "/a%20b/c"
    assert got["query"] == "x=1&y=2" and got["body"] == "hello" and got["http_version"] == "1.1"
    assert ["x-thing", "One"] in got["headers"] and got["state"] == {}
    assert got["server"] == ["127.0.0.1", running.port] and got["client"][0] == "127.0.0.1"
    assert first.headers["server"] == "dockyard" and "GMT" in first.headers["date"]
    # one connection for both
    assert second.json()["client"] == got["client"]


def test_a_head_in_pieces_is_one_request(serving: Any) -> None:
    """A request whose target and headers arrive over several reads, a byte at a time, then a
    second one on the same connection: each is parsed whole, the second without the first's."""
    running = serving(echo)
    first = b"POST /pie/ces?q=1 HTTP/1.1\r\nHost: x\r\nX-One: a\r\nContent-Length: 2\r\n\r\nhi"
    second = b"GET /next HTTP/1.1\r\nHost: x\r\nX-Two: b\r\n\r\n"
    with running.connect() as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for byte in first:
            sock.sendall(bytes([byte]))
            time.sleep(0.001)
        status, _, body, rest = read_reply(sock, bytearray())
        assert status == 200
        got = json.loads(body)
        assert got["path"] == "/pie/ces" and got["query"] == "q=1" and got["body"] == "hi"
        assert got["headers"] == [["host", "x"], ["x-one", "a"], ["content-length", "2"]]
        sock.sendall(second[:9])
        time.sleep(0.05)
        sock.sendall(second[9:])
        status, _, body, rest = read_reply(sock, rest)
        got = json.loads(body)
        assert status == 200 and got["path"] == "/next" and got["headers"] == [["host", "x"], ["x-two", "b"]]


def test_pipelined_requests_are_answered_in_order(serving: Any) -> None:
    async def slow_first(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await receive()
        if scope["path"] == "/1":
            await asyncio.sleep(0.2)
        body = scope["path"].encode()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"%d" % len(body))]})
        await send({"type": "http.response.body", "body": body})

    running = serving(slow_first)
    with running.connect() as sock:
        sock.sendall(b"".join(b"GET /%d HTTP/1.1\r\nHost: x\r\n\r\n" % n for n in range(1, 6)))
        rest = bytearray()
        bodies = []
        for _ in range(5):
            status, _, body, rest = read_reply(sock, rest)
            assert status == 200
            bodies.append(body)
    assert bodies == [b"/1", b"/2", b"/3", b"/4", b"/5"]


def test_a_read_that_ends_inside_a_head_keeps_the_next_read_in_that_head(serving: Any) -> None:
    """A whole request, then in the same read the start of the next one, whose header value
    the next read completes; that read is also, by itself, a whole simple request. It is read
    as the rest of the open head (as httptools reads it), not as a request of its own."""
    running = serving(echo)
    with running.connect() as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(b"POST /one HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhiGET /two HTTP/1.1\r\nX-Value: ")
        status, _, body, rest = read_reply(sock, bytearray())
        assert status == 200 and json.loads(body)["path"] == "/one"
        time.sleep(0.1)
        sock.sendall(b"POST /three HTTP/1.1\r\n\r\n")
        status, _, body, rest = read_reply(sock, rest)
        got = json.loads(body)
        assert status == 200 and got["path"] == "/two" and got["headers"] == [["x-value", "POST /three HTTP/1.1"]]
        sock.sendall(b"GET /four HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\n\r\n")  # whole again
        status, _, body, _ = read_reply(sock, rest)
        got = json.loads(body)
        assert status == 200 and got["path"] == "/four" and got["http_version"] == "1.1"
        assert got["headers"] == [["host", "x"], ["connection", "keep-alive"]]


def test_nothing_is_read_after_a_request_that_ends_its_connection(serving: Any) -> None:
    """After `connection: close` the connection answers that request and ends: a whole request
    sent behind it is not answered."""
    running = serving(echo)
    with running.connect() as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(b"GET /last HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        time.sleep(0.05)
        with contextlib.suppress(OSError):
            sock.sendall(b"GET /more HTTP/1.1\r\nHost: x\r\n\r\n")
        status, headers, body, rest = read_reply(sock, bytearray())
        assert status == 200 and json.loads(body)["path"] == "/last" and headers["connection"] == "close"
        assert b"HTTP/1.1" not in rest
        assert closed_by_peer(sock)


def test_chunked_request_body_arrives_dechunked(serving: Any) -> None:
    running = serving(echo)
    with running.connect() as sock:
        sock.sendall(b"POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
        time.sleep(0.05)
        sock.sendall(b"6\r\n world\r\n0\r\n\r\n")
        status, _, body, _ = read_reply(sock)
    assert status == 200 and json.loads(body)["body"] == "hello world"


def test_expect_100_continue_on_first_receive(serving: Any) -> None:
    running = serving(echo)
    with running.connect() as sock:
        sock.sendall(b"POST /e HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n")
        interim = sock.recv(100)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(b"data")
        status, _, body, _ = read_reply(sock)
    assert status == 200 and json.loads(body)["body"] == "data"


def test_big_body_with_backpressure_both_ways(serving: Any) -> None:
    size = 8 * 1024 * 1024
    seen: dict[str, int] = {}

    async def slow_reader(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        total, biggest = 0, 0
        while True:
            message = await receive()
            total += len(message["body"])
            biggest = max(biggest, len(message["body"]))
            await asyncio.sleep(0.001)
            if not message["more_body"]:
                break
        seen.update(total=total, biggest=biggest)
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"%d" % size)]})
        for _ in range(size // 65536):  # writes wait for the transport to drain
            await send({"type": "http.response.body", "body": b"y" * 65536, "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    running = serving(slow_reader)
    with httpx.Client(base_url=running.url, timeout=30) as client:
        reply = client.post("/big", content=b"x" * size)
    assert reply.status_code == 200 and len(reply.content) == size
    assert seen["total"] == size
    # reading paused while 64 KiB waited: no single receive() took the body whole
    assert seen["biggest"] < 1024 * 1024


def test_head_has_headers_only(serving: Any) -> None:
    running = serving(echo)
    with running.connect() as sock:
        sock.sendall(b"HEAD /h HTTP/1.1\r\nHost: x\r\n\r\nGET /next HTTP/1.1\r\nHost: x\r\n\r\n")
        status, headers, _, rest = read_reply(sock, head_only=True)
        assert status == 200 and int(headers["content-length"]) > 0
        # nothing of the HEAD body sits before the next reply
        assert not rest or rest.startswith(b"HTTP/1.1 200")
        status, _, body, _ = read_reply(sock, rest)
        assert status == 200 and json.loads(body)["path"] == "/next"


async def no_content(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 204, "headers": []})
    await send({"type": "http.response.body", "body": b""})


def test_204_has_no_body_framing(serving: Any) -> None:
    running = serving(no_content)
    with running.connect() as sock:
        sock.sendall(b"DELETE /x HTTP/1.1\r\nHost: x\r\n\r\n")
        time.sleep(0.1)
        data = sock.recv(65536)
    head, _, rest = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 204 No Content\r\n")
    assert b"transfer-encoding" not in head and b"content-length" not in head and rest == b""


async def stream(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Answers "one two three" in three body messages, without a length."""
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    for part in (b"one ", b"two ", b"three"):
        await send({"type": "http.response.body", "body": part, "more_body": True})
    await send({"type": "http.response.body", "body": b"", "more_body": False})


def test_streamed_reply_is_chunked(serving: Any) -> None:
    running = serving(stream)
    with running.connect() as sock:
        sock.sendall(b"GET /s HTTP/1.1\r\nHost: x\r\n\r\n")
        status, headers, body, _ = read_reply(sock)
    assert status == 200 and headers["transfer-encoding"] == "chunked" and body == b"one two three"
    with httpx.Client(base_url=running.url) as client:
        assert client.get("/s").text == "one two three"


def test_disconnect_wakes_a_waiting_receive(serving: Any) -> None:
    seen: list[dict[str, Any]] = []
    done = threading.Event()

    async def watcher(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        seen.append(await receive())  # the (empty) body
        seen.append(await receive())  # waits: only a disconnect can come
        seen.append(await receive())  # at once after it
        done.set()

    running = serving(watcher)
    with running.connect() as sock:
        sock.sendall(b"GET /w HTTP/1.1\r\nHost: x\r\n\r\n")
        time.sleep(0.1)
    assert done.wait(5)
    assert seen[0] == {"type": "http.request", "body": b"", "more_body": False}
    assert seen[1] == {"type": "http.disconnect"} and seen[2] == {"type": "http.disconnect"}


def test_receive_after_the_response_completes_is_a_disconnect(serving: Any) -> None:
    seen: list[Any] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await receive()
        waiting = asyncio.ensure_future(receive())  # a disconnect watch
        await asyncio.sleep(0.01)
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})
        seen.append(await asyncio.wait_for(waiting, 2))
        seen.append(await receive())

    running = serving(app)
    with httpx.Client(base_url=running.url) as client:
        assert client.get("/").text == "ok"
        time.sleep(0.1)
    assert seen == [{"type": "http.disconnect"}, {"type": "http.disconnect"}]


def test_bad_request_is_400_json_and_close(serving: Any) -> None:
    running = serving(echo)
    with running.connect() as sock:
        sock.sendall(b"GARBAGE\x01 / HTTP/1.1\r\n\r\n")
        status, headers, body, _ = read_reply(sock)
        assert status == 400 and headers["connection"] == "close"
        assert json.loads(body)["code"] == "InvalidParameter"
        assert closed_by_peer(sock)


def test_upgrade_is_refused(serving: Any) -> None:
    running = serving(echo)
    with running.connect() as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
        status, _, body, _ = read_reply(sock)
        assert status == 400 and json.loads(body)["code"] == "InvalidParameter"
        assert closed_by_peer(sock)


def test_oversized_head_is_431(serving: Any) -> None:
    running = serving(echo)
    with running.connect() as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-Pad-%d: %s\r\n" % (n, b"p" * 1000) for n in range(70)) + b"\r\n")
        status, _, body, _ = read_reply(sock)
        assert status == 431 and json.loads(body)["code"] == "InvalidParameter"
        assert closed_by_peer(sock)
    # The same size of head in two reads, split before, at and after the limit: its size is the
    # sum of both reads, the one it began in included.
    head = b"POST / HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-Pad-%d: %s\r\n" % (n, b"p" * 1000) for n in range(70)) + b"\r\n"
    for split in (1000, 40_000, 64_000, 70_000):
        with running.connect() as sock:
            sock.sendall(head[:split])
            time.sleep(0.05)
            sock.sendall(head[split:])
            status, _, body, _ = read_reply(sock)
            assert status == 431 and json.loads(body)["code"] == "InvalidParameter", split
    with running.connect() as sock:  # one header that never ends
        sock.sendall(b"GET / HTTP/1.1\r\nX-Long: ")
        with contextlib.suppress(ConnectionError):  # refused while still sending
            for _ in range(40):
                sock.sendall(b"z" * 8192)
        sock.settimeout(5)
        try:
            answer = sock.recv(65536)
        except ConnectionResetError:
            answer = b""  # closed with the head unread: the 431 may be lost to the reset
        assert answer == b"" or answer.startswith(b"HTTP/1.1 431 ")


def test_app_exception_is_500_json_and_close(serving: Any) -> None:
    async def broken(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            raise ValueError("boom")

    running = serving(broken)
    with running.connect() as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        status, headers, body, _ = read_reply(sock)
        assert status == 500 and headers["connection"] == "close"
        assert json.loads(body)["code"] == "InternalServerError"
        assert closed_by_peer(sock)


def test_exception_after_the_start_cuts_the_reply(serving: Any) -> None:
    async def half(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"10")]})
        await send({"type": "http.response.body", "body": b"abc", "more_body": True})
        raise ValueError("boom")

    running = serving(half)
    with httpx.Client(base_url=running.url) as client, pytest.raises(httpx.RemoteProtocolError):
        client.get("/")


@pytest.mark.parametrize("header", [(b"x-evil", b"a\r\nset-cookie: x=1"), (b"x-evil\n", b"a"), (b"x-nul", b"a\0b")])
def test_header_splitting_is_refused(serving: Any, header: tuple[bytes, bytes]) -> None:
    errors: list[BaseException] = []

    async def splitter(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        try:
            await send({"type": "http.response.start", "status": 200, "headers": [header]})
        except RuntimeError as exc:
            errors.append(exc)
            raise

    running = serving(splitter)
    with httpx.Client(base_url=running.url) as client:
        reply = client.get("/")
    assert reply.status_code == 500 and "set-cookie" not in reply.headers and "x-evil" not in reply.headers
    assert errors and isinstance(errors[0], RuntimeError)


def test_a_streamed_reply_to_http_1_0_ends_with_the_connection(serving: Any) -> None:
    """HTTP/1.0 has no chunked framing: a reply of unknown length goes as it is, and the close ends it."""

    running = serving(stream)
    with running.connect() as sock:
        sock.sendall(b"GET /s HTTP/1.0\r\n\r\n")
        reply = b""
        while chunk := sock.recv(65536):  # to the close
            reply += chunk
    head, _, body = reply.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    assert lines[0] == "HTTP/1.1 200 OK" and "transfer-encoding" not in headers and "content-length" not in headers
    assert headers["connection"] == "close" and body == b"one two three"


def test_connection_close_and_http_1_0(serving: Any) -> None:
    running = serving(echo)
    with running.connect() as sock:
        sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
        status, headers, body, _ = read_reply(sock)
        assert status == 200 and headers["connection"] == "close" and json.loads(body)["http_version"] == "1.0"
        assert closed_by_peer(sock)
    with running.connect() as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        status, headers, _, _ = read_reply(sock)
        assert status == 200 and headers["connection"] == "close"
        assert closed_by_peer(sock)


def test_the_scope_names_each_request_s_own_http_version(serving: Any) -> None:
    """The version comes from the parser unless the head settles it (kept alive, no `connection`
    header: HTTP/1.1); every other head asks, one connection after another."""
    running = serving(echo)
    heads = [
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "1.1"),
        (b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", "1.0"),
        (b"GET / HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\n\r\n", "1.1"),
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "1.1"),  # the flag of the head before is not kept
        (b"GET / HTTP/1.0\r\nX-Connection: keep-alive\r\n\r\n", "1.0"),  # not kept alive: asked
    ]
    with running.connect() as sock:
        for head, version in heads:
            sock.sendall(head)
            status, _, body, _ = read_reply(sock)
            assert status == 200 and json.loads(body)["http_version"] == version, head
    with running.connect() as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert json.loads(read_reply(sock)[2])["http_version"] == "1.1"


def test_idle_keep_alive_connection_is_closed(serving: Any) -> None:
    running = serving(echo, keep_alive_s=1)
    with running.connect() as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_reply(sock)[0] == 200
        started = time.monotonic()
        assert closed_by_peer(sock, timeout=5)
        assert 0.5 < time.monotonic() - started < 3.5


def trickle(sock: socket.socket, data: bytes, every_s: float, until_s: float) -> bool:
    """Sends `data` a byte at a time, one every `every_s`, for up to `until_s`; True when the
    server closed the connection meanwhile (a send fails or a reply arrives)."""
    sock.settimeout(every_s)
    deadline = time.monotonic() + until_s
    for byte in data:
        try:
            sock.sendall(bytes([byte]))
            sock.recv(1, socket.MSG_PEEK)  # waits up to `every_s` for a reply or the close (left unread)
            return True
        except TimeoutError:
            pass  # nothing came: the next byte
        except OSError:
            return True
        if time.monotonic() > deadline:
            return False
    return False


def test_a_head_trickled_a_byte_at_a_time_is_cut_off_with_408(serving: Any) -> None:
    # A caller that never finishes its head (slowloris) holds a connection for at most the head
    # timeout, however often a byte comes: each byte used to count as activity and kept it open.
    running = serving(echo, keep_alive_s=30, head_timeout_s=1)
    with running.connect() as sock:
        started = time.monotonic()
        assert trickle(sock, b"POST /predict HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 200, every_s=0.2, until_s=6)
        status, headers, body, _ = read_reply(sock)
        assert status == 408 and headers["connection"] == "close"
        assert json.loads(body)["code"] == "RequestTimeout"
        assert "1 s" in json.loads(body)["message"]
        assert closed_by_peer(sock)
        assert 2.0 < time.monotonic() - started < 4.5  # the head opens with its target, 6 bytes (1.2 s) in


def test_blank_lines_trickled_before_a_request_do_not_keep_a_connection(serving: Any) -> None:
    # Empty lines before a request line are allowed (RFC 9112 2.2) and open no head: the
    # keep-alive limit applies, counted from the last reply, not from the last byte.
    running = serving(echo, keep_alive_s=1, head_timeout_s=30)
    with running.connect() as sock:
        started = time.monotonic()
        assert trickle(sock, b"\r\n" * 100, every_s=0.2, until_s=6)
        assert closed_by_peer(sock)
        assert time.monotonic() - started < 3.5


def test_a_slow_but_timely_head_is_served(serving: Any) -> None:
    running = serving(echo, keep_alive_s=1, head_timeout_s=3)
    with running.connect() as sock:
        time.sleep(0.3)  # idle first: the head's time counts from its first byte
        head = b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n"
        assert not trickle(sock, head[:-1], every_s=0.05, until_s=10)
        sock.sendall(head[-1:])
        assert json.loads(read_reply(sock)[2])["path"] == "/slow"


def test_a_body_that_stops_coming_is_cut_off_with_408(serving: Any) -> None:
    # A caller that sends its head and part of its body, then nothing (a stalled upload), gets
    # a 408 once no byte has come for the body timeout; its connection used to stay open, its
    # app call waiting in receive() for as long.
    seen: list[dict[str, Any]] = []

    async def reader(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        while (message := await receive())["type"] == "http.request" and message.get("more_body"):
            pass
        seen.append(message)  # the last one: the body's end, or the caller gone

    running = serving(reader, body_timeout_s=1)
    with running.connect() as sock:
        sock.sendall(b"PUT /artifact HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n" + b"z" * 10)
        started = time.monotonic()
        status, headers, body, _ = read_reply(sock)
        waited = time.monotonic() - started
        assert status == 408 and headers["connection"] == "close"
        assert json.loads(body) == {"code": "RequestTimeout", "message": "the request's body stopped coming: no byte of it for 1 s; "
                                                                         "send the body without such pauses"}  # fmt: skip
        assert closed_by_peer(sock)
        assert 0.9 < waited < 3.5  # the timeout, and at most a sweep's second more
    deadline = time.monotonic() + 5
    while not seen and time.monotonic() < deadline:
        time.sleep(0.02)
    assert seen == [{"type": "http.disconnect"}]  # the app call ended: it was told the caller is gone
    assert not running.server.connections


def test_a_slow_but_steady_body_is_served(serving: Any) -> None:
    # The body timeout is for a body that stops, not a slow one: each byte resets it.
    running = serving(echo, body_timeout_s=1)
    with running.connect() as sock:
        sock.sendall(b"POST /slow HTTP/1.1\r\nHost: x\r\nContent-Length: 12\r\n\r\n")
        assert not trickle(sock, b"0123456789a", every_s=0.3, until_s=10)  # 3.3 s in all, beyond the timeout
        sock.sendall(b"b")
        status, _, body, _ = read_reply(sock)
        assert status == 200 and json.loads(body)["body"] == "0123456789ab"


@pytest.mark.parametrize("case", ["expect-100-continue", "body-paused-on-the-app"])
def test_a_body_the_app_has_not_asked_for_is_not_timed_out(serving: Any, case: str) -> None:
    # The clock runs only while the app waits for bytes the caller owes: not before a 100
    # Continue invites the body, nor while reading is paused because the app has more than it
    # takes. The app here waits 2.5 s, over twice the timeout, before it reads.
    async def late_echo(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            await asyncio.sleep(2.5)
            await echo(scope, receive, send)

    running = serving(late_echo, body_timeout_s=1)
    with running.connect() as sock:
        if case == "expect-100-continue":
            sock.sendall(b"POST /late HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
            status, _, _, rest = read_reply(sock, head_only=True)
            assert status == 100
            sock.sendall(b"hello")
            status, _, body, _ = read_reply(sock, rest)
            assert status == 200 and json.loads(body)["body"] == "hello"
        else:
            payload = b"p" * (512 * 1024)  # well over the 64 KiB read ahead of the app
            sock.sendall(b"POST /late HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(payload) + payload)
            status, _, body, _ = read_reply(sock)
            assert status == 200 and len(json.loads(body)["body"]) == len(payload)


def test_graceful_stop_finishes_a_request_in_progress(serving: Any) -> None:
    async def slow(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await asyncio.sleep(0.5)
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"4")]})
        await send({"type": "http.response.body", "body": b"done"})

    running = serving(slow)
    with running.connect() as idle, running.connect() as busy:
        idle.sendall(b"")  # connected, never asks
        busy.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        time.sleep(0.1)
        stopper = threading.Thread(target=running.stop, args=(5,))
        stopper.start()
        status, headers, body, _ = read_reply(busy)
        assert status == 200 and body == b"done" and headers["connection"] == "close"
        assert closed_by_peer(idle) and closed_by_peer(busy)
        stopper.join(10)
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", running.port), timeout=2).close()


def test_lifespan_runs_around_serving() -> None:
    events: list[str] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                events.append(message["type"])
                await send({"type": message["type"] + ".complete"})
                if message["type"] == "lifespan.shutdown":
                    return
        else:
            await no_content(scope, receive, send)

    running = Running(app)
    assert events == ["lifespan.startup"]
    running.stop()
    assert events == ["lifespan.startup", "lifespan.shutdown"]


def test_app_without_lifespan_is_tolerated() -> None:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        await no_content(scope, receive, send)

    running = Running(app)
    try:
        with httpx.Client(base_url=running.url) as client:
            assert client.get("/").status_code == 204
    finally:
        running.stop()


def test_a_formatted_head_is_the_head_start_response_writes() -> None:
    """A reply the gateway relays directly starts with its header lines already formatted
    (Cycle.start_formatted): the head, framing and state must be what start_response gives."""
    from dockyard.gateway.httpcycle import Cycle
    from dockyard.gateway.httpserver import Connection, HttpServer

    conn = Connection(HttpServer(app=None))
    cases = [
        (200, [(b"content-type", b"application/json"), (b"content-length", b"12")], True),
        (200, [(b"content-type", b"text/event-stream"), (b"x-model", b"v2")], True),  # no length: chunked
        (404, [(b"content-length", b"0")], False),  # the caller asked to close
        (204, [(b"x-a", b"1")], True),
        (201, [], False),
    ]
    for status, headers, keep_alive in cases:
        careful, formatted = (Cycle(conn, {"method": "POST"}, keep_alive, False) for _ in range(2))
        careful.start_response(status, headers)
        length = next((int(v) for n, v in headers if n == b"content-length"), -1)
        formatted.start_formatted(status, b"".join(b"%s: %s\r\n" % h for h in headers), len(headers), length)
        assert formatted.pending_head == careful.pending_head
        state = ("keep_alive", "body_allowed", "chunked", "remaining", "started")
        assert [getattr(formatted, name) for name in state] == [getattr(careful, name) for name in state]
    with pytest.raises(RuntimeError):
        Cycle(conn, {"method": "POST"}, True, False).start_formatted(200, b"x-a: 1\r\nx-b: 2\r\n", 1, -1)  # type: ignore[arg-type]

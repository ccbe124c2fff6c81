"""The one-step parser of whole, simple messages (gateway/simplehead.py) against httptools: what
it takes, llhttp takes and parses alike; what llhttp refuses, it leaves to llhttp."""

from __future__ import annotations

import httptools
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dockyard.gateway.headers import (
    client_response_headers,
    client_response_lines,
    forwarding_lines,
    upstream_request_headers,
    with_request_id,
)
from dockyard.gateway.simplehead import parse_reply, parse_request
from tests.unit.test_gateway_parser_strictness import SMUGGLED


class Recorder:
    """What httptools makes of bytes, through the callbacks the gateway uses."""

    def __init__(self) -> None:
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.body = b""
        self.messages = 0
        self.heads = 0

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        self.heads += 1

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        self.messages += 1


def by_httptools(data: bytes, reply: bool) -> tuple[Recorder, object] | None:
    """(what httptools parsed, its parser), or None when it refuses the bytes."""
    recorder = Recorder()
    parser = (httptools.HttpResponseParser if reply else httptools.HttpRequestParser)(recorder)
    try:
        parser.feed_data(data)
    except httptools.HttpParserError:
        return None
    return recorder, parser


def check_request(data: bytes) -> bool:
    """Both parsers agree on `data` wherever the shortcut takes it; whether it took it."""
    fast = parse_request(data)
    if fast is None:
        return False
    parsed = by_httptools(data, reply=False)
    assert parsed is not None, f"llhttp refuses {data!r}, which the shortcut took"
    recorder, parser = parsed
    line, headers, body, relayed = fast
    method, target = line.method, line.target
    assert line.method_name == method.decode()
    assert line.plain_path == (None if any(mark in target for mark in (b"?", b"#", b"%")) else target.decode())
    assert (recorder.messages, recorder.heads) == (1, 1), data
    # The forwarded lines are what the general path makes of the same headers.
    if relayed is None:
        assert b"x-forwarded-for" in dict(headers)
    else:
        assert b"".join(relayed) + forwarding_lines("ID1", "10.0.0.1") == formatted(
            upstream_request_headers(headers, "ID1", "10.0.0.1", "http")
        )
    assert parser.get_method() == method  # type: ignore[attr-defined]
    assert recorder.url == target
    assert recorder.headers == headers
    assert recorder.body == body
    assert parser.should_keep_alive() and not parser.should_upgrade()  # type: ignore[attr-defined]
    assert parser.get_http_version() == "1.1"  # type: ignore[attr-defined]
    return True


def check_reply(data: bytes) -> bool:
    fast = parse_reply(data)
    if fast is None:
        return False
    parsed = by_httptools(data, reply=True)
    assert parsed is not None, f"llhttp refuses {data!r}, which the shortcut took"
    recorder, parser = parsed
    status, headers, length, content_type, body, relayed, count = fast
    assert (recorder.messages, recorder.heads) == (1, 1), data
    general = client_response_headers(headers, "ID1")
    assert (with_request_id(relayed, "ID1"), count + 1) == (formatted(general), len(general))
    if b"connection" not in dict(headers):  # (the one-pass formatting is for a reply without one)
        assert client_response_lines(headers, "ID1") == (with_request_id(relayed, "ID1"), count + 1)
    assert parser.get_status_code() == status  # type: ignore[attr-defined]
    assert recorder.headers == headers
    assert recorder.body == body
    assert dict(headers).get(b"content-length") == length
    assert [v for n, v in headers if n == b"content-type"][-1:] == ([content_type] if content_type is not None else [])
    return True


def formatted(headers: list[tuple[bytes, bytes]]) -> bytes:
    return b"".join(name + b": " + value + b"\r\n" for name, value in headers)


REQUEST = b'POST /predict HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nContent-Type: application/json\r\nContent-Length: 13\r\n\r\n{"line": "1"}'
REPLY = b"HTTP/1.1 200 OK\r\ndate: Sat, 28 Nov 2026 18:00:00 GMT\r\nserver: uvicorn\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}"

# As the oci SDK's ModelDeploymentClient sends a predict (its signature shortened to a made-up one).
SDK_REQUEST = (
    b"POST /ocid1.datasciencemodeldeployment.oc1.iad." + b"z" * 60 + b"/predict HTTP/1.1\r\n"
    b"user-agent: Oracle-PythonSDK/2.189.0 (python 3.11.7; x86_64-Linux)\r\naccept-encoding: gzip, deflate\r\n"
    b"accept: application/json\r\nconnection: keep-alive\r\ncontent-type: application/json\r\nopc-client-retries: true\r\n"
    b"opc-client-info: Oracle-PythonSDK/2.189.0\r\nopc-request-id: EA66A3D92DD7429D811F7F46AC1853CD\r\nContent-Length: 14\r\n"
    b"date: Sun, 29 Nov 2026 05:25:43 GMT\r\nhost: 127.0.0.1:42751\r\nx-content-sha256: slyWDQsPXefqAkOjeuCAWlLNHIdyfyN5xGwXQOSLwlM=\r\n"
    b'authorization: Signature algorithm="rsa-sha256",headers="date (request-target) host content-length content-type '
    b'x-content-sha256",keyId="ocid1.tenancy.oc1..aaaaaaaa' + b"x" * 52 + b"/ocid1.user.oc1..aaaaaaaa" + b"y" * 52
    + b'/d0:ad:bf:31:dd:07:bd:b1:cc:1a:77:8a:84:da:ad:24",signature="' + b"A/b+" * 86 + b'",version="1"\r\n\r\n{"line": "12"}'
)


def test_the_commonest_request_and_reply_are_taken_and_parsed_as_httptools_parses_them() -> None:
    assert check_request(REQUEST)
    assert check_request(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    assert check_request(b"GET / HTTP/1.1\r\n\r\n")
    assert check_request(b"POST /a/b?x=1&y=%20#frag HTTP/1.1\r\nX-Empty:\r\nX-Tabs: \t v \t\r\ncontent-length: 0\r\n\r\n")
    assert check_request(REQUEST.replace(b"Host", b"Connection: keep-alive\r\nHost"))  # as python-requests sends
    assert check_request(REQUEST.replace(b"Host", b"connection: Keep-Alive\r\nHost"))
    assert check_request(b"PUT /x HTTP/1.1\r\nContent-Length: 010\r\n\r\n\r\n{\r\n}\r\n\r\n")  # line breaks in the body
    # The oci SDK's signed predict: 1.3 KB, over the 1 KiB a reply may have.
    assert len(SDK_REQUEST) > 1024 and check_request(SDK_REQUEST)
    assert check_reply(REPLY)
    assert check_reply(b"HTTP/1.1 404\r\ncontent-length: 0\r\n\r\n")
    assert check_reply(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\n\r\n\r\n")
    assert check_reply(b"HTTP/1.1 503 Service Unavailable\r\nX-Obs: caf\xc3\xa9\r\nContent-Length: 3\r\n\r\nabc")


def test_the_lines_relayed_are_those_the_gateway_forwards() -> None:
    """A request's headers less those the gateway sets or drops (host, the request id, `route`,
    hop-by-hop ones); a reply's less hop-by-hop ones, `date`, `server` and the request id."""
    request = REQUEST.replace(b"Host", b"opc-request-id: abc\r\nRoute: /x\r\nKeep-Alive: 5\r\nConnection: keep-alive\r\nHost")
    relayed = parse_request(request)[3]  # type: ignore[index]
    assert relayed == [b"content-type: application/json\r\n", b"content-length: 13\r\n"]
    assert check_request(request)
    # X-Forwarded-For is added to, the general way: no lines are relayed for such a request.
    with_forwarded = REQUEST.replace(b"Host", b"X-Forwarded-For: 10.1.1.1\r\nHost")
    assert check_request(with_forwarded) and parse_request(with_forwarded)[3] is None  # type: ignore[index]
    reply = parse_reply(REPLY.replace(b"server", b"Connection: keep-alive\r\nopc-request-id: x\r\nX-A: 1\r\nserver"))
    assert reply is not None and reply[5:] == (b"x-a: 1\r\ncontent-type: application/json\r\ncontent-length: 2\r\n", 3)


@pytest.mark.parametrize("data", [
    REQUEST[:-1],  # the body not all here
    REQUEST + b"x",  # more than the body: pipelined
    REQUEST.replace(b"Content-Length: 13", b"Transfer-Encoding: chunked"),
    REQUEST.replace(b"Host", b"Connection: close\r\nHost"),
    REQUEST.replace(b"Host", b"Expect: 100-continue\r\nHost"),
    REQUEST.replace(b"Host", b"Upgrade: websocket\r\nHost"),
    REQUEST.replace(b"Host", b"Proxy-Connection: close\r\nHost"),
    REQUEST.replace(b"HTTP/1.1", b"HTTP/1.0"),
    REQUEST.replace(b"POST", b"CONNECT"),
    REQUEST.replace(b"/predict", b"http://host/predict"),
    REQUEST.replace(b"Content-Length: 13", b"Content-Length: 13\r\nContent-Length: 13"),
    b"\r\n" + REQUEST,
    REQUEST.replace(b"Host", b"X-Long: " + b"a" * 4000 + b"\r\nHost"),  # a request over 4 KiB
])  # fmt: skip
def test_a_request_that_is_not_simple_is_left_to_httptools(data: bytes) -> None:
    assert parse_request(data) is None


@pytest.mark.parametrize("data", [
    REPLY.replace(b"200 OK", b"100 Continue"),
    REPLY.replace(b"200 OK", b"204 No Content"),
    REPLY.replace(b"200 OK", b"304 Not Modified"),
    REPLY.replace(b"200 OK", b"101 Switching Protocols"),
    REPLY.replace(b"content-length: 2", b"transfer-encoding: chunked"),
    REPLY.replace(b"content-length: 2", b"x-no-length: 2"),  # ends with the connection
    REPLY.replace(b"server", b"connection: close\r\nserver"),
    REPLY.replace(b"HTTP/1.1", b"HTTP/1.0"),
    REPLY[:-1],
    REPLY + b"HTTP/1.1 200 OK\r\n",
    REPLY.replace(b"server", b"x-long: " + b"a" * 1000 + b"\r\nserver"),  # a reply over 1 KiB
])  # fmt: skip
def test_a_reply_that_is_not_simple_is_left_to_httptools(data: bytes) -> None:
    assert parse_reply(data) is None


@pytest.mark.parametrize("byte", range(256))
def test_every_byte_in_each_place_is_taken_only_where_llhttp_takes_it(byte: int) -> None:
    char = bytes([byte])
    for data in (
        REQUEST.replace(b"/predict", b"/pre" + char + b"dict"),
        REQUEST.replace(b"/predict", b"/predict?q=" + char),
        REQUEST.replace(b"POST", b"PO" + char + b"ST"),
        REQUEST.replace(b"Host:", b"Ho" + char + b"st:"),
        REQUEST.replace(b"Host: ", b"Host: " + char),
        REQUEST.replace(b"8080", b"80" + char + b"80"),
        REQUEST.replace(b"8080", b"8080" + char),
        REQUEST.replace(b"HTTP/1.1", b"HTTP/1" + char + b"1"),
        REQUEST.replace(b"13\r\n", b"1" + char + b"3\r\n"),
    ):
        check_request(data)
    for data in (
        REPLY.replace(b"200 OK", b"200 O" + char + b"K"),
        REPLY.replace(b"200 OK", b"2" + char + b"0 OK"),
        REPLY.replace(b"server:", b"ser" + char + b"ver:"),
        REPLY.replace(b"uvicorn", b"uvi" + char + b"corn"),
        REPLY.replace(b"content-length: 2", b"content-length: " + char + b"2"),
    ):
        check_reply(data)


# Messages built from parts, many of them off the rules: both parsers are held to agreeing.
_TOKEN = st.text("abcXYZ-_!#~0129", min_size=1, max_size=8).map(str.encode)
_ODD = st.sampled_from([b"", b" ", b"\t", b"\r", b"\n", b"\x00", b"\x7f", b"\x80", b":", b"(", b"\r\n", b" \r\n ", b"\r\n\r\n"])
_TEXT = st.text("abc /;=,\"*", max_size=4).map(str.encode)
# Mostly well-formed parts, with an odd one often enough that most messages hold one or two.
_VALUE = st.lists(st.one_of(*[_TEXT] * 15, _ODD), max_size=4).map(b"".join)
_NAME = st.one_of(*[_TOKEN] * 20,
                  st.sampled_from([b"Content-Length", b"content-type", b"Transfer-Encoding", b"Connection", b"Expect",
                                   b"X-Forwarded-For", b"Host", b"opc-request-id", b"Date", b"Server", b"Keep-Alive", b"Route"]),
                  st.tuples(_TOKEN, _ODD).map(b"".join))  # fmt: skip


@st.composite
def messages(draw: st.DrawFn, reply: bool) -> bytes:
    if reply:
        first = b"HTTP/1.1 " + draw(st.sampled_from([b"200", b"201", b"404", b"500", b"599", b"600", b"199", b"20"])) + draw(
            st.sampled_from([b" OK", b" OK", b"", b" ", b" Not Found", b" \t", b"x"])
        )
    else:
        method = draw(st.sampled_from([b"GET", b"POST", b"PUT", b"DELETE", b"PATCH", b"HEAD", b"OPTIONS", b"CONNECT", b"get", b"BREW"]))
        parts = st.one_of(*[_TOKEN] * 8, _ODD, st.sampled_from([b"?", b"#", b"%20", b"/"]))
        target = b"/" + draw(st.lists(parts, max_size=4).map(b"".join))
        first = method + draw(st.sampled_from([b" ", b" ", b" ", b"  ", b"\t"])) + target + draw(
            st.sampled_from([b" HTTP/1.1", b" HTTP/1.1", b" HTTP/1.1", b" HTTP/1.0", b" HTTP/1.1 "])
        )
    body = draw(st.binary(max_size=12))
    lines = [first]
    for _ in range(draw(st.integers(0, 5))):
        lines.append(draw(_NAME) + draw(st.sampled_from([b":", *[b": "] * 10, b":  ", b": \t", b" :"])) + draw(_VALUE))
    if reply or draw(st.booleans()):
        length = len(body) + draw(st.sampled_from([0, 0, 0, 0, 0, 1, -1]))
        lines.append(b"Content-Length: " + str(length).encode())
        if draw(st.integers(0, 9)) == 7:  # (not 0: generation leans to the smallest values)
            lines.append(b"Content-Length: " + str(length).encode())
    else:
        body = draw(st.sampled_from([b"", b"", b"", body]))
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(messages(reply=False))
def test_generated_requests_are_parsed_alike_or_left_to_httptools(data: bytes) -> None:
    check_request(data)


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(messages(reply=True))
def test_generated_replies_are_parsed_alike_or_left_to_httptools(data: bytes) -> None:
    check_reply(data)


@pytest.mark.parametrize("line", SMUGGLED)
def test_a_header_with_a_line_break_or_nul_is_not_taken(line: bytes) -> None:
    """What the direct path relies on of httptools (test_gateway_parser_strictness.py) holds here
    too: such a message is left to llhttp, which refuses it."""
    assert parse_request(b"POST /d/predict HTTP/1.1\r\nHost: a\r\n" + line + b"Content-Length: 0\r\n\r\n") is None
    assert parse_reply(b"HTTP/1.1 200 OK\r\nHost: a\r\n" + line + b"Content-Length: 0\r\n\r\n") is None

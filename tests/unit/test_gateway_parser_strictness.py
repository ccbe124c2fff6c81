"""What the direct path relies on: the HTTP parser (httptools' llhttp, strict) refuses a CR, LF
or NUL inside a header name or value, in requests and in replies alike.

The direct path formats the headers it forwards straight from what the parser gave, without
searching them for line breaks again (`UpstreamConnection.parsed_head`, `Cycle.write_whole`).
A parser that let one through (a lenient build, an obs-fold continuation kept in the value)
would let a caller or a container add a header, or a whole request, of their own: this test
fails first.
"""

from __future__ import annotations

import httptools
import pytest

SMUGGLED = [
    b"X-A: one\r\n two\r\n",  # obs-fold: a continuation line
    b"X-A: one\rtwo\r\n",  # a bare CR in a value
    b"X-A: one\ntwo: x\r\n",  # a bare LF in a value
    b"X-A: one\x00two\r\n",  # a NUL in a value
    b"X-\rA: one\r\n",  # a CR in a name
    b"X-A\x00: one\r\n",  # a NUL in a name
    b" X-A: one\r\n",  # a line that begins with a space
]


class _Headers:
    def __init__(self) -> None:
        self.headers: list[tuple[bytes, bytes]] = []

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))


def _passed(parser_type: type, start: bytes, line: bytes, end: bytes) -> list[tuple[bytes, bytes]] | None:
    """The headers the parser gave, or None when it refused the message."""
    seen = _Headers()
    try:
        parser_type(seen).feed_data(start + b"Host: a\r\n" + line + end)
    except httptools.HttpParserError:
        return None
    return seen.headers


@pytest.mark.parametrize("line", SMUGGLED)
def test_a_request_header_with_a_line_break_or_nul_is_refused(line: bytes) -> None:
    headers = _passed(httptools.HttpRequestParser, b"POST /d/predict HTTP/1.1\r\n", line, b"Content-Length: 0\r\n\r\n")
    assert headers is None or not any(0x0A in part or 0x0D in part or 0 in part for header in headers for part in header), headers


@pytest.mark.parametrize("line", SMUGGLED)
def test_a_reply_header_with_a_line_break_or_nul_is_refused(line: bytes) -> None:
    headers = _passed(httptools.HttpResponseParser, b"HTTP/1.1 200 OK\r\n", line, b"Content-Length: 0\r\n\r\n")
    assert headers is None or not any(0x0A in part or 0x0D in part or 0 in part for header in headers for part in header), headers


def test_a_clean_header_passes_as_sent() -> None:
    """The check above can fail: a clean header comes through, value whole."""
    headers = _passed(httptools.HttpRequestParser, b"POST /d/predict HTTP/1.1\r\n", b"X-A: one two\r\n", b"Content-Length: 0\r\n\r\n")
    assert headers == [(b"Host", b"a"), (b"X-A", b"one two"), (b"Content-Length", b"0")]

"""A request's head as the HTTP server reads it: its size limit, its method and its target.

Split from httpserver.py: these are the pure functions and constants of one request's head,
apart from the connection that parses it.
"""

from __future__ import annotations

from typing import Any, Final
from urllib.parse import unquote

import httptools

MAX_HEAD_BYTES: Final = 64 * 1024  # request line and headers; more is answered 431
HEAD_TOO_LARGE: Final = (431, f"the request line and headers are larger than {MAX_HEAD_BYTES // 1024} KiB")
METHODS: Final = {m.encode(): m for m in ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT")}

# Byte values, found by `in` without the failed integer conversion `b"?" in url` starts with.
QUERY: Final = 0x3F
FRAGMENT: Final = 0x23
PERCENT: Final = 0x25


class HeadTooLarge(Exception):
    pass


class BadTarget(Exception):
    pass


def head_size(url: bytes, headers: list[tuple[bytes, bytes]]) -> int:
    """The request line's target and the header lines, as counted against MAX_HEAD_BYTES."""
    return len(url) + sum(len(name) + len(value) + 4 for name, value in headers)


def split_target(url: bytes) -> tuple[str, bytes, bytes]:
    """(path percent-decoded, raw path, query string) of a request target."""
    if url[:1] == b"/":
        raw_path, _, query = url.partition(b"?")
        raw_path = raw_path.partition(b"#")[0]
    else:  # absolute-form (`GET http://host/path`) or `*`
        try:
            parsed = httptools.parse_url(url)
        except httptools.HttpParserInvalidURLError:
            raise BadTarget(f"the request target {url[:200]!r} is not a URL") from None
        raw_path, query = parsed.path or b"/", parsed.query or b""
    try:
        path = raw_path.decode("ascii")
    except UnicodeDecodeError:
        raise BadTarget("the request path holds bytes that are not ASCII") from None
    if "%" in path:
        path = unquote(path)
    return path, raw_path, query


def address(info: Any) -> tuple[str, int] | None:
    """A socket address as ASGI gives it, (host, port), from a transport's extra info."""
    if isinstance(info, tuple) and len(info) >= 2:
        return (str(info[0]), int(info[1]))
    return None

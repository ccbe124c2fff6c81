"""The commonest HTTP/1.1 messages, parsed whole in one step: a request or a reply that came in one
read, with a Content-Length body (or, for a request, no body) and no header that changes how
the message is framed or how the connection goes on.

Why: httptools (llhttp) calls back into Python for the target, each header, the end of the
head, the body and the end of the message, and each call costs more than llhttp's own parsing.
A small predict, its request and its reply, spent about 20k instructions there
(benchmarks/gateway_instructions.py). Here a message is split at its line ends, and each line
is looked up among the lines seen before: a client sends the same request line and most of
the same header lines on every request, and a line found there was checked when it was first
seen (its name is lower-cased, its value taken, once). Only the methods of `bytes` that take
their arguments the fast way are used (split, translate, `in`): find and count parse theirs
the slow way, at several hundred instructions a call. A header line is kept as a `HeaderLine`,
not a tuple: compiled code would unpack a tuple and build it anew on every return.

What this accepts, llhttp (strict, as httptools runs it) accepts and parses alike. Anything
else returns None, and the caller feeds the same bytes to httptools, which parses them or
answers the error it always has. So this is a shortcut, never a second set of rules:
- head bytes: HTAB, 0x20 to 0x7E and 0x80 to 0xFF (obs-text), CR LF only as line ends;
- a request line `METHOD SP origin-form-target SP HTTP/1.1`, the target visible ASCII, or
  a status line `HTTP/1.1 NNN[ reason]` with NNN from 200 to 599 (not 204 or 304);
- header names of token characters (lower-cased here, as the callers keep them), values
  after optional spaces or tabs, kept up to the line end as llhttp keeps them;
- at most one Content-Length of digits only, and none of Transfer-Encoding, Connection (but
  `keep-alive`), Proxy-Connection, Upgrade or Expect (each changes the framing or the
  connection);
- a request of at most 4 KiB, a reply of at most 1 KiB;
- the body exactly the Content-Length (or nothing after the head): nothing pipelined behind.
tests/unit/test_simplehead.py holds both parsers to this on generated messages.

Each message also comes with the header lines the gateway relays of it, formatted: a request's
as the container receives them (headers.py: `upstream_request_lines` less its own lines at the
end), a reply's as the caller receives them (`client_response_lines` less the request id).
A header line kept here carries both forms, made once, so a relayed message's head is joined
from them rather than formatted header by header (about 1k instructions a header line less).
"""

from __future__ import annotations

from typing import Any, Final

from dockyard.gateway.headers import REQUEST_DROP, RESPONSE_DROP

Headers = list[tuple[bytes, bytes]]

# A larger message goes to httptools: splitting a message splits its body too, which costs
# little only for a small one. A request may be larger than a reply: the oci SDK's signed
# predict is about 1.3 KB of head (its Authorization line alone about 600 bytes, 900 with a
# 4096-bit key): parsed here, it costs about 19k instructions fewer than through httptools'
# callbacks for its fourteen headers (benchmarks/gateway_instructions.py, target `sdk`).
MAX_REQUEST_BYTES: Final = 4096
MAX_REPLY_BYTES: Final = 1024
CRLF: Final = b"\r\n"
# Maps each byte a head line may not hold (a control character other than HTAB, CR and LF
# included: a line holds neither) to NUL, and every other byte to itself: `NUL in
# line.translate(_REFUSED_TO_NUL)` finds any of them in one pass.
_REFUSED_TO_NUL: Final = bytes(0 if b < 0x20 and b != 0x09 or b == 0x7F else b for b in range(256))
_TOKEN_BYTES: Final = b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
# Maps each byte a header name may not hold to NUL (NUL itself included), a token byte to itself
# (a table, not `translate(None, delete)`, which builds a table of its own on every call).
_NOT_TOKEN_TO_NUL: Final = bytes(b if b in _TOKEN_BYTES else 0 for b in range(256))
_REQUEST_METHODS: Final = frozenset({b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"PATCH", b"OPTIONS"})
_VERSION: Final = b"HTTP/1.1"
_STATUS_PREFIX: Final = b"HTTP/1.1 "
# Names whose header changes the framing or the connection (but `connection: keep-alive`): such
# a message goes to httptools.
_FRAMING: Final = frozenset({b"transfer-encoding", b"connection", b"proxy-connection", b"upgrade", b"expect"})
_OWS: Final = b" \t"
NUL: Final = 0x00
TAB: Final = 0x09
SPACE: Final = 0x20
SLASH: Final = 0x2F
# What a header line is, kept with it: its Content-Length as a number (0 or more), or one of these.
_PLAIN: Final = -1
_CONTENT_TYPE: Final = -2
_REFUSED: Final = -3  # a header that changes the framing or the connection, or a Content-Length not of digits
_FORWARDED_FOR: Final = -4  # X-Forwarded-For: the gateway adds to it, so a request with one is formatted the general way

# Lines seen and checked: a request line as a `RequestLine`, a status line as its code, a header
# line as a `HeaderLine`. Bounded: each empties when full (a
# client whose lines all differ, a date or an id in each, fills it; the lines every request
# repeats are back after one request). A longer line is checked each time instead of kept.
_REQUEST_LINES: Final[dict[bytes, RequestLine]] = {}
_STATUS_LINES: Final[dict[bytes, int]] = {}
_HEADER_LINES: Final[dict[bytes, HeaderLine]] = {}
_LINES_MAX: Final = 4096
_LINE_KEPT_MAX: Final = 256


class RequestLine:
    """A request line checked: its method and target, and what the server's scope takes of them:
    the method's name, and the target as the path when it is a plain one (no query, fragment or
    percent-escape: the commonest), else None (the server splits it)."""

    __slots__ = ("method", "target", "method_name", "plain_path")

    def __init__(self, method: bytes, target: bytes) -> None:
        self.method = method
        self.target = target
        self.method_name = method.decode("ascii")
        # (made once per line kept: how it is searched does not matter)
        plain = b"?" not in target and b"#" not in target and b"%" not in target
        self.plain_path: str | None = target.decode("ascii") if plain else None


class HeaderLine:
    """A header line checked: its header as the callers keep it, what it is, and how the gateway
    relays it (`name: value` and its line end; b"" where the gateway drops it)."""

    __slots__ = ("header", "value", "kind", "to_upstream", "to_client")

    def __init__(self, header: tuple[bytes, bytes], kind: int) -> None:
        self.header: Any = header  # Any: the tuple itself, passed on as it is (never unpacked and rebuilt)
        self.value = header[1]
        self.kind = kind
        name = header[0]
        formatted = name + b": " + header[1] + CRLF
        self.to_upstream = b"" if name in REQUEST_DROP else formatted
        self.to_client = b"" if name in RESPONSE_DROP else formatted


def _refused_byte_in(line: bytes) -> bool:
    return NUL in line.translate(_REFUSED_TO_NUL)


def _is_token(name: bytes) -> bool:
    return bool(name) and NUL not in name.translate(_NOT_TOKEN_TO_NUL)


def _header_line(line: bytes) -> HeaderLine | None:
    """A header line checked, or None when llhttp would refuse it (or might: an obs-fold, a
    name with spaces)."""
    kept = len(line) <= _LINE_KEPT_MAX
    if kept:  # (a longer line is never kept: hashing it to look, 600 bytes of a signature, costs 1k)
        known = _HEADER_LINES.get(line)
        if known is not None:
            return known
    name, colon, value = line.partition(b":")
    if not colon or not _is_token(name) or _refused_byte_in(value):
        return None
    name = name.lower()
    value = value.lstrip(_OWS)
    kind = _PLAIN
    if name == b"content-length":
        kind = int(value) if value.isdigit() and len(value) <= 15 else _REFUSED
    elif name == b"content-type":
        kind = _CONTENT_TYPE
    elif name == b"connection" and value.lower() == b"keep-alive":
        pass  # what HTTP/1.1 does without it (python-requests sends it on every request)
    elif name in _FRAMING:
        kind = _REFUSED
    elif name == b"x-forwarded-for":
        kind = _FORWARDED_FOR
    known = HeaderLine((name, value), kind)
    if kept:
        if len(_HEADER_LINES) >= _LINES_MAX:
            _HEADER_LINES.clear()
        _HEADER_LINES[line] = known
    return known


def _request_line(line: bytes) -> RequestLine | None:
    """`METHOD SP /target SP HTTP/1.1` checked, or None."""
    known = _REQUEST_LINES.get(line)
    if known is not None:
        return known
    parts = line.split(b" ")
    if len(parts) != 3 or parts[2] != _VERSION:
        return None
    method, target = parts[0], parts[1]
    if method not in _REQUEST_METHODS or not target or target[0] != SLASH or not target.isascii() or TAB in target:
        return None
    if _refused_byte_in(target):
        return None
    known = RequestLine(method, target)
    if len(line) <= _LINE_KEPT_MAX:
        if len(_REQUEST_LINES) >= _LINES_MAX:
            _REQUEST_LINES.clear()
        _REQUEST_LINES[line] = known
    return known


def _status_line(line: bytes) -> int:
    """The code of `HTTP/1.1 NNN[ reason]`, NNN from 200 to 599 and not 204 or 304; else 0."""
    known = _STATUS_LINES.get(line)
    if known is not None:
        return known
    digits = line[9:12]
    if not line.startswith(_STATUS_PREFIX) or len(digits) != 3 or not digits.isdigit():
        return 0
    if len(line) > 12 and (line[12] != SPACE or _refused_byte_in(line)):
        return 0
    status = int(digits)
    if status < 200 or status > 599 or status == 204 or status == 304:
        return 0
    if len(line) <= _LINE_KEPT_MAX:
        if len(_STATUS_LINES) >= _LINES_MAX:
            _STATUS_LINES.clear()
        _STATUS_LINES[line] = status
    return status


def _split(data: bytes, limit: int) -> tuple[list[bytes], int, bytes] | None:
    """(lines, index of the blank line that ends the head, body) of a message of at most
    `limit` bytes, or None."""
    if len(data) > limit:
        return None
    lines = data.split(CRLF)
    count = len(lines)
    for i in range(1, count):
        if len(lines[i]) == 0:
            if i + 2 == count:
                return lines, i, lines[i + 1]
            if i + 1 == count:
                return None  # no blank line: the head goes on in the next read
            return lines, i, CRLF.join(lines[i + 1 :])  # a body with line breaks of its own
    return None


def _headers(lines: list[bytes], end: int, reply: bool) -> tuple[Headers, int, bytes, bytes | None, list[bytes] | None] | None:
    """(headers, Content-Length (-1 without one) as a number and as sent, Content-Type, the
    relayed lines (None: a request the gateway formats the general way)) of lines 1 to `end` - 1,
    or None when one is not for this shortcut."""
    headers: list[Any] = []
    relayed: list[bytes] | None = []
    length = -1
    length_sent = b""
    content_type: bytes | None = None
    for i in range(1, end):
        line = _header_line(lines[i])
        if line is None:
            return None
        header = line.header
        kind = line.kind
        if kind != _PLAIN:
            if kind >= 0:
                if length >= 0:
                    return None  # two of them: llhttp refuses a second
                length = kind
                length_sent = line.value
            elif kind == _CONTENT_TYPE:
                content_type = line.value
            elif kind == _FORWARDED_FOR:
                if not reply:
                    relayed = None
            else:
                return None
        headers.append(header)
        if relayed is not None:
            formatted = line.to_client if reply else line.to_upstream
            if formatted:
                relayed.append(formatted)
    return headers, length, length_sent, content_type, relayed


def parse_request(data: bytes) -> tuple[RequestLine, Headers, bytes, list[bytes] | None] | None:
    """(request line, headers, body, relayed lines) of the one whole request `data` holds, or
    None when it is not one this shortcut takes (see the module's docstring). The relayed lines
    are a list, joined only by the gateway (a request the server answers itself needs none),
    and None for a request with X-Forwarded-For."""
    split = _split(data, MAX_REQUEST_BYTES)
    if split is None:
        return None
    lines, end, body = split
    request_line = _request_line(lines[0])
    if request_line is None:
        return None
    parsed = _headers(lines, end, False)
    if parsed is None:
        return None
    headers, length, _, _, relayed = parsed
    if len(body) != max(length, 0):
        return None
    return request_line, headers, body, relayed


def parse_reply(data: bytes) -> tuple[int, Headers, bytes, bytes | None, bytes, bytes, int] | None:
    """(status, headers, Content-Length, Content-Type, body, relayed lines, their count) of the one
    whole reply `data` holds, or None when it is not one this shortcut takes (see the module's
    docstring)."""
    split = _split(data, MAX_REPLY_BYTES)
    if split is None:
        return None
    lines, end, body = split
    status = _status_line(lines[0])
    if not status:
        return None
    parsed = _headers(lines, end, True)
    if parsed is None:
        return None
    headers, length, length_sent, content_type, relayed = parsed
    if length < 0 or len(body) != length or relayed is None:
        return None
    return status, headers, length_sent, content_type, body, b"".join(relayed), len(relayed)

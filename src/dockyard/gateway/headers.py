"""Headers on the way through: hop-by-hop ones dropped both ways, the request id, the caller.

Headers are ASGI/httpx raw pairs of lower-case `bytes`; nothing here decodes more than it reads.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from typing import Final

RawHeaders = list[tuple[bytes, bytes]]

# RFC 9110 §7.6.1 plus the old names still seen in the wild. `host` is set for the upstream by
# the client; `content-length` / `transfer-encoding` are re-framed by each hop.
HOP_BY_HOP: Final = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"trailers",
        b"transfer-encoding",
        b"upgrade",
    }
)
REQUEST_DROP: Final = HOP_BY_HOP | {b"host", b"opc-request-id", b"route", b"expect"}
# The edge server writes its own `date` and `server`; two of either would be malformed.
RESPONSE_DROP: Final = HOP_BY_HOP | {b"opc-request-id", b"date", b"server"}

REQUEST_ID: Final = b"opc-request-id"
_SAFE_ID: Final = re.compile(rb"^[A-Za-z0-9._/:-]{1,98}$")
_KEY_ID = re.compile(r'keyId="([^"]*)"')
# New request ids: 32 random upper-case hex digits, made `_ID_BATCH` at a time from one read of
# os.urandom (a read per request was one of the dearest lines of a small request), then taken one
# by one. A fork starts with none (see below), so no two processes hand out the same ones.
_ID_BATCH: Final = 256
_fresh_ids: Final[list[str]] = []


os.register_at_fork(after_in_child=_fresh_ids.clear)


def request_id(incoming: bytes | None) -> str:
    """The caller's `opc-request-id` when it is a sane token, else a new one (32 hex digits, as
    the SDK makes). Taking a new one costs about 0.3k instructions, compiled; a per-process
    prefix and a formatted counter cost 2.7k (benchmarks/gateway_instructions.py)."""
    if incoming:
        # Letters and digits alone (the SDK's 32 hex digits): checked in C for a fifth of the match.
        if (len(incoming) <= 98 and incoming.isalnum()) or _SAFE_ID.match(incoming):
            return incoming.decode("ascii")
    while True:
        if _fresh_ids:
            try:
                return _fresh_ids.pop()
            except IndexError:  # another thread took the last one meanwhile
                pass
        digits = os.urandom(16 * _ID_BATCH).hex().upper()
        _fresh_ids.extend([digits[start : start + 32] for start in range(0, len(digits), 32)])


def _connection_tokens(value: bytes) -> set[bytes]:
    """The header names a `Connection` header lists (they are hop-by-hop too)."""
    return {token.strip().lower() for token in value.split(b",")}


def upstream_request_headers(
    headers: RawHeaders, request_id_value: str, client_host: str | None, scheme: str, present: Mapping[bytes, bytes] | None = None
) -> RawHeaders:
    """What the container receives: the caller's headers (ASGI: lower-case names) less
    hop-by-hop ones, plus the request id and the usual forwarding headers.

    `present`: the same headers as a dict, when the caller has one; a request without
    `Connection` and `X-Forwarded-For` (nearly all) is then filtered in one pass."""
    if present is not None and b"connection" not in present and b"x-forwarded-for" not in present:
        out = [header for header in headers if header[0] not in REQUEST_DROP]
        forwarded_for = b""
    else:
        out, forwarded_for = _filtered_request_headers(headers)
    out.append((REQUEST_ID, request_id_value.encode()))
    if client_host:
        chain = forwarded_for + b", " + client_host.encode() if forwarded_for else client_host.encode()
        out.append((b"x-forwarded-for", chain))
    out.append((b"x-forwarded-proto", scheme.encode()))
    return out


def upstream_request_lines(
    headers: RawHeaders, present: Mapping[bytes, bytes], request_id_value: str, client_host: str | None,
    relayed: list[bytes] | None = None,
) -> bytes | None:
    """`upstream_request_headers` (scheme http) as head lines, for a request without
    X-Forwarded-For and whose Connection header, if any, is `keep-alive` or `close` (`present`:
    its headers as a dict); None for any other, which `upstream_request_headers` filters. The
    commonest request's headers are filtered and formatted in one pass; `relayed`: those lines
    already, of a request parsed in one step (gateway/simplehead.py), which are joined instead."""
    if relayed is not None:
        return b"".join(relayed) + forwarding_lines(request_id_value, client_host)
    if b"x-forwarded-for" in present:
        return None
    connection = present.get(b"connection")
    # `Connection: keep-alive` (as the oci SDK and python-requests send it) names no header to
    # drop but the hop-by-hop ones dropped anyway; any other, or a repeated header (the dict
    # kept one of them), is filtered the general way.
    if connection is not None and (connection.lower() not in _NAMES_NOTHING or len(present) != len(headers)):
        return None
    # A loop, not a list comprehension: for a few headers, the comprehension's own call costs more.
    # Each line is `b": ".join(header)` and one join puts the line ends between them: a `%` format
    # parses its format string every time, and cost a quarter more for a signed request's headers
    # (9.7k against 7.7k instructions, benchmarks/gateway_instructions.py).
    lines = []
    for header in headers:
        if header[0] not in REQUEST_DROP:
            lines.append(b": ".join(header))
    lines.append(b"")  # the last line's end
    return b"\r\n".join(lines) + forwarding_lines(request_id_value, client_host)


_NAMES_NOTHING: Final = frozenset({b"keep-alive", b"close"})


def forwarding_lines(request_id_value: str, client_host: str | None) -> bytes:
    """The lines the gateway adds to every request it forwards (scheme http), after the caller's
    own (`upstream_request_lines`, or a request's relayed lines from gateway/simplehead.py)."""
    if client_host:
        return b"opc-request-id: " + request_id_value.encode() + b"\r\nx-forwarded-for: " + client_host.encode() + _PROTO_LINE
    return b"opc-request-id: " + request_id_value.encode() + _PROTO_LINE


_PROTO_LINE: Final = b"\r\nx-forwarded-proto: http\r\n"


def _filtered_request_headers(headers: RawHeaders) -> tuple[RawHeaders, bytes]:
    """The headers less hop-by-hop ones and those `Connection` names; the X-Forwarded-For value."""
    out: RawHeaders = []
    named: set[bytes] | None = None  # listed by Connection: dropped as well
    forwarded_for = b""
    for name, value in headers:
        if name in REQUEST_DROP:
            if name == b"connection":
                named = _connection_tokens(value) | (named or set())
            continue
        if name == b"x-forwarded-for":
            forwarded_for = value
            continue
        out.append((name, value))
    if named:
        out = [header for header in out if header[0] not in named]
    return out, forwarded_for


def client_response_headers(headers: Iterable[tuple[bytes, bytes]], request_id_value: str, connection_seen: bool = True) -> RawHeaders:
    """What the caller receives: the container's headers (names lower-cased) less hop-by-hop
    ones, plus the request id. `connection_seen=False` (the reply has no `Connection` header,
    so none names others to drop) filters in one pass."""
    if not connection_seen:
        out = [(lowered, value) for name, value in headers if (lowered := name.lower()) not in RESPONSE_DROP]
        out.append((REQUEST_ID, request_id_value.encode()))
        return out
    out = []
    named: set[bytes] | None = None
    for name, value in headers:
        lowered = name.lower()
        if lowered in RESPONSE_DROP:
            if lowered == b"connection":
                named = _connection_tokens(value) | (named or set())
            continue
        out.append((lowered, value))
    if named:
        out = [header for header in out if header[0] not in named]
    out.append((REQUEST_ID, request_id_value.encode()))
    return out


def client_response_lines(headers: RawHeaders, request_id_value: str) -> tuple[bytes, int]:
    """`client_response_headers` of a reply without a `Connection` header whose names are
    lower-cased already (the upstream connection keeps them so), as head lines: (the lines,
    their count). The commonest reply's headers are filtered and formatted in one pass."""
    lines = []  # a loop of joins, as in upstream_request_lines
    for header in headers:
        if header[0] not in RESPONSE_DROP:
            lines.append(b": ".join(header))
    lines.append(b"opc-request-id: " + request_id_value.encode())
    count = len(lines)
    lines.append(b"")  # the last line's end
    return b"\r\n".join(lines), count


def with_request_id(relayed: bytes, request_id_value: str) -> bytes:
    """A reply's relayed lines (gateway/simplehead.py) and the request id: `client_response_lines`
    for a reply parsed in one step (its count is one more than the relayed lines')."""
    return relayed + b"opc-request-id: " + request_id_value.encode() + b"\r\n"


# Recent Authorization values and their caller: a client repeats its signature for every request
# it sends within the same second, and searching a signature for its keyId costs more than a
# lookup (whose hash the signature memo computed already). Bounded: values longer than any real
# signature are not kept, and the whole is cleared when full.
_CALLERS: dict[bytes, str | None] = {}
_CALLERS_SIZE = 1024
_CALLERS_MAX_BYTES = 4096


def caller(authorization: bytes | None) -> str | None:
    """Who signed the request: the keyId of an OCI signature (session tokens are not logged)."""
    if not authorization:
        return None
    try:
        return _CALLERS[authorization]
    except KeyError:
        pass
    found = _caller(authorization)
    if len(authorization) <= _CALLERS_MAX_BYTES:
        if len(_CALLERS) >= _CALLERS_SIZE:
            _CALLERS.clear()
        _CALLERS[authorization] = found
    return found


def _caller(authorization: bytes) -> str | None:
    match = _KEY_ID.search(authorization.decode("latin-1"))
    if not match:
        return None
    key_id = match.group(1)
    if key_id.startswith("ST$"):
        return "ST$<session token>"  # the token itself is a credential
    return key_id

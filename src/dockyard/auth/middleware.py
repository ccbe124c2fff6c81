"""`SignatureAuthMiddleware`: every HTTP request is OCI-signed by a registered key, or refused.

A pure ASGI middleware for the control plane and the data plane alike:

- the signature is verified from the headers first, before any body is read, so unsigned or
  forged requests never make the server buffer anything;
- a body the signature covers (``x-content-sha256``, ``content-length``) is buffered up to
  `max_body_bytes`, checked, then handed to the app unchanged;
- binary uploads (``POST .../20190101/models/{id}/artifact``, which the SDK signs without body
  headers) stream through untouched; if a client does sign their hash, it is computed on the way
  and the last chunk is held back until it matches;
- the verified `Principal` goes to ``scope["state"]["caller"]`` (``request.state.caller``);
- a refusal is ``401 {"code": "NotAuthenticated", "message": <the check that failed>}``.

With `allow_unsigned`, requests without an Authorization header pass as `ANONYMOUS` (signed
ones are still verified). `open_paths` (default ``/health``) are never checked.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import re
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from dockyard.auth.signing import BODY_METHODS, body_sha256, check_body, is_streamed_upload, parse_authorization
from dockyard.auth.verifier import RequestVerifier
from dockyard.errors import DockyardError, NotAuthenticated, PayloadTooLarge
from dockyard.service.context import ANONYMOUS

log = logging.getLogger("dockyard.auth")

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

MiB = 1024 * 1024
# A byte's value: `in` finds it at once, where `b"?" in raw` first fails to read its operand as an
# integer (raising and clearing a TypeError on every signed request).
QUESTION_MARK = 0x3F
_SAFE_ID = re.compile(r"^[A-Za-z0-9._/:-]{1,98}$")


def request_target(scope: Scope) -> str:
    """The raw path and query as the client sent them: what ``(request-target)`` signs.

    ``raw_path`` keeps ``//`` and percent-escapes as received (uvicorn puts a ``--root-path``
    in front of it, which is what a client behind a prefix-stripping proxy signed)."""
    return raw_request_target(scope).decode("latin-1")


def raw_request_target(scope: Scope) -> bytes:
    """`request_target` as the bytes received (what a remembered signature is compared with)."""
    raw: bytes | None = scope.get("raw_path")
    if raw is None:
        raw = scope["path"].encode("utf-8")
    if QUESTION_MARK in raw:  # some servers leave the query on raw_path
        return raw
    query: bytes = scope.get("query_string", b"")
    return raw + b"?" + query if query else raw


def header_map(raw: list[tuple[bytes, bytes]]) -> dict[str, str]:
    """Lower-case names to latin-1 values; a repeated header's values joined with ", " (cavage §2.3)."""
    headers = {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in raw}
    if len(headers) == len(raw):  # no name repeated: the usual request, mapped in one pass
        return headers
    return _joined_header_map(raw)


def _joined_header_map(raw: list[tuple[bytes, bytes]]) -> dict[str, str]:
    headers: dict[str, str] = {}
    for name, value in raw:
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        headers[key] = f"{headers[key]}, {text}" if key in headers else text
    return headers


def _has_authorization(raw: list[tuple[bytes, bytes]]) -> bool:
    """Whether an Authorization header came, without mapping every header (names are lower-case
    in ASGI, but not every client of an ASGI app keeps to that)."""
    for name, _ in raw:
        if len(name) == 13 and name.lower() == b"authorization":
            return True
    return False


class _Refused(Exception):
    def __init__(self, error: DockyardError) -> None:
        self.error = error


class _Gone(Exception):
    """The client disconnected while its body was being read."""


class SignatureAuthMiddleware:
    """See the module docstring. `verify` is a `verifier.Verifier` (or anything with its call
    signature); it may block on the key store, so it runs in a worker thread unless it has a
    `would_block(headers)` method that says it will not (a cached key)."""

    def __init__(
        self,
        app: Any,
        verify: RequestVerifier,
        allow_unsigned: bool = False,
        *,
        max_body_bytes: int = 10 * MiB,
        open_paths: frozenset[str] = frozenset({"/health"}),
        streamed: Callable[[str, str], bool] = is_streamed_upload,
        drain_limit_bytes: int = 64 * MiB,
    ) -> None:
        self.app = app
        self.verify = verify
        self.allow_unsigned = allow_unsigned
        self.max_body_bytes = max_body_bytes
        self.open_paths = open_paths
        self.streamed = streamed
        self.drain_limit_bytes = drain_limit_bytes
        self._app_direct = getattr(app, "direct", None)
        # What `direct` asks of the verifier, looked up once (a Verifier has both).
        self._would_block = getattr(verify, "would_block", None)
        self._remembered = getattr(verify, "remembered", None)

    async def aclose(self) -> None:
        """Closes the wrapped app when it has `aclose` (a `Gateway`), so this can stand in for it
        where the composition closes the gateway on shutdown (`gateway.beside`)."""
        close = getattr(self.app, "aclose", None)
        if close is not None:
            await close()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") in self.open_paths:
            await self.app(scope, receive, send)
            return
        if self.allow_unsigned and not _has_authorization(scope["headers"]):
            # Checked on the raw headers: mapping them all costs more than the rest of this.
            scope.setdefault("state", {})["caller"] = ANONYMOUS
            await self.app(scope, receive, send)
            return
        headers = header_map(scope["headers"])
        state = scope.setdefault("state", {})
        method: str = scope["method"]
        streamed = self.streamed(method, scope["path"])
        target = request_target(scope)
        body_rule = method in BODY_METHODS and not streamed
        verify = self.verify
        would_block = getattr(verify, "would_block", None)
        try:
            if would_block is not None and not would_block(headers):
                principal = verify(method, target, headers, body_sha256_b64=None, body_length=None, body_headers_required=body_rule)
            else:  # the key lookup may wait on the database
                principal = await asyncio.to_thread(
                    verify, method, target, headers, body_sha256_b64=None, body_length=None, body_headers_required=body_rule
                )
        except NotAuthenticated as exc:
            await self._refuse(scope, headers, receive, send, exc)
            return
        state["caller"] = principal
        signed = parse_authorization(headers["authorization"]).headers  # it verified, so it parses: a remembered parse
        if "x-content-sha256" not in signed and "content-length" not in signed:
            await self.app(scope, receive, send)
        elif streamed:
            await self._streamed(scope, headers, signed, receive, send)
        else:
            await self._buffered(scope, headers, signed, receive, send)

    def direct(self, cycle: Any) -> bool:
        """dockyard's own server offers a request whose whole body is in (gateway/httpserver.py):
        checked here as `__call__` would, without waiting, then offered to the app's `direct`.
        False (the ASGI call serves it, and checks it again) for anything but a request that
        passes: unsigned where that is allowed, or signed by a cached key over that very body.
        A refusal is always the ASGI call's, with its drain and its log line."""
        app_direct = self._app_direct
        if app_direct is None:
            return False
        scope = cycle.scope
        raw = scope["headers"]
        if scope.get("path") in self.open_paths:
            return app_direct(cycle) is True
        # dockyard's server lower-cases header names; the app reads this map too.
        by_name = cycle.by_name = dict(raw)
        if self.allow_unsigned and b"authorization" not in by_name:
            scope["state"]["caller"] = ANONYMOUS
            return app_direct(cycle) is True
        verify = self.verify
        would_block = self._would_block
        if would_block is None:
            return False
        method: str = scope["method"]
        target = raw_request_target(scope)
        body_rule = method in BODY_METHODS
        # A signature this verifier knows already is recognised from the raw header bytes; a
        # repeated header (joined before it is signed) goes the usual way. (A streamed upload's
        # never is: it is not remembered, below.)
        remembered = self._remembered if len(by_name) == len(raw) else None
        if remembered is not None:
            body = cycle.whole_body()
            if len(body) > self.max_body_bytes:
                return False
            principal = remembered(method, target, by_name, body, body_rule)
            if principal is not None:
                scope["state"]["caller"] = principal
                return app_direct(cycle) is True
        if self.streamed(method, scope["path"]):
            return False
        headers = header_map(raw)
        if would_block(headers):
            return False
        try:
            principal = verify(method, target.decode("latin-1"), headers, body_sha256_b64=None, body_length=None,
                               body_headers_required=body_rule)  # fmt: skip
            signed = parse_authorization(headers["authorization"]).headers
            if "x-content-sha256" in signed or "content-length" in signed:
                body = cycle.whole_body()
                if len(body) > self.max_body_bytes:
                    return False
                check_body(signed, headers, body_sha256(body), len(body))
        except NotAuthenticated:
            return False
        if remembered is not None:
            verify.remember(method, target, by_name, body_rule, principal, cycle.whole_body())  # type: ignore[attr-defined]
        scope["state"]["caller"] = principal
        return app_direct(cycle) is True

    # --- bodies ----------------------------------------------------------------------------------

    async def _buffered(self, scope: Scope, headers: Mapping[str, str], signed: tuple[str, ...], receive: Receive, send: Send) -> None:
        declared = headers.get("content-length", "")
        try:
            if declared.isdigit() and int(declared) > self.max_body_bytes:
                raise _Refused(self._too_large())
            body = await self._read_body(receive)
            check_body(signed, headers, body_sha256(body), len(body))
        except _Gone:
            return
        except _Refused as refused:
            await self._refuse(scope, headers, receive, send, refused.error)
            return
        except NotAuthenticated as exc:
            self._log(scope, headers, exc)
            await self._reply(scope, headers, send, exc)  # the body is read: nothing to drain
            return
        delivered = False

        async def replay() -> Message:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: only http.disconnect can come

        await self.app(scope, replay, send)

    async def _read_body(self, receive: Receive) -> bytes:
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _Gone()
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                raise _Refused(self._too_large())
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    def _too_large(self) -> PayloadTooLarge:
        return PayloadTooLarge(
            f"the request body is over {self.max_body_bytes} bytes, the most a signed body may have here; send a smaller body"
        )

    async def _streamed(self, scope: Scope, headers: Mapping[str, str], signed: tuple[str, ...], receive: Receive, send: Send) -> None:
        """A binary upload whose signature covers its hash or length: hash on the way, hold the
        last chunk back until it matches; on a mismatch the app sees a disconnect and the client 401."""
        digest = hashlib.sha256()
        size = 0
        failure: NotAuthenticated | None = None
        started = False

        async def checked_receive() -> Message:
            nonlocal size, failure
            message = await receive()
            if message["type"] != "http.request":
                return message
            chunk = message.get("body", b"")
            digest.update(chunk)
            size += len(chunk)
            if not message.get("more_body", False):
                try:
                    check_body(signed, headers, base64.b64encode(digest.digest()).decode("ascii"), size)
                except NotAuthenticated as exc:
                    failure = exc
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if failure is not None:
                return  # the app's answer to the disconnect goes nowhere: the client gets the 401
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, checked_receive, guarded_send)
        except Exception:
            if failure is None:
                raise
        if failure is not None and not started:
            self._log(scope, headers, failure)
            await self._reply(scope, headers, send, failure)

    # --- refusals --------------------------------------------------------------------------------

    async def _refuse(self, scope: Scope, headers: Mapping[str, str], receive: Receive, send: Send, error: DockyardError) -> None:
        """Reads (and drops) what the client is still sending, up to a limit, then answers:
        a client that is mid-upload when the server closes sees a broken pipe, not the 401."""
        self._log(scope, headers, error)
        close = False
        if headers.get("expect", "").lower() != "100-continue" and (
            headers.get("content-length", "0") not in ("", "0") or "transfer-encoding" in headers
        ):
            drained = 0
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return
                drained += len(message.get("body", b""))
                if not message.get("more_body", False):
                    break
                if drained > self.drain_limit_bytes:
                    close = True
                    break
        await self._reply(scope, headers, send, error, close=close)

    def _log(self, scope: Scope, headers: Mapping[str, str], error: DockyardError) -> None:
        client = scope.get("client") or ("-", 0)
        log.info("refused %s %s from %s: %s %s", scope.get("method"), scope.get("path"), client[0], error.code, error.message)

    async def _reply(self, scope: Scope, headers: Mapping[str, str], send: Send, error: DockyardError, close: bool = False) -> None:
        request_id = scope.get("state", {}).get("request_id") or headers.get("opc-request-id", "")
        if not _SAFE_ID.match(request_id):
            request_id = uuid.uuid4().hex.upper()
        body = json.dumps({"code": error.code, "message": error.message}).encode()
        reply_headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"opc-request-id", request_id.encode()),
        ]
        if error.status == 401:
            reply_headers.append((b"www-authenticate", b'Signature headers="date (request-target) host"'))
        if close:
            reply_headers.append((b"connection", b"close"))
        await send({"type": "http.response.start", "status": error.status, "headers": reply_headers})
        await send({"type": "http.response.body", "body": body, "more_body": False})

"""The request body, streamed from the caller to the container without being held whole.

`check_framing` answers 411/413 from the headers before anything is read; `RequestBody` counts
the bytes as they pass and stops at the limit (413), so a chunked upload cannot get round it.
A small body with a declared length is read whole instead (`read_small`).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Final

from dockyard.errors import InvalidParameter, LengthRequired, PayloadTooLarge, RequestTimeout

Receive = Callable[[], Awaitable[dict[str, Any]]]

METHODS_WITH_BODY = frozenset({"POST", "PUT", "PATCH"})
# Bodies up to this size are kept as they pass, so that a request whose instance dropped the
# connection without a word can go to another instance (see proxy.py); larger ones stream only.
KEEP_FOR_RETRY_BYTES: Final = 1024 * 1024


class ClientGone(Exception):
    """The caller disconnected before its request body was complete, after `received` bytes of it."""

    def __init__(self, message: str, received: int = 0) -> None:
        super().__init__(message)
        self.received = received


def too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"the request body is over the limit of {limit} bytes ({limit / 1024 / 1024:g} MiB); send a smaller payload"
    )


def check_framing(method: str, content_length: bytes | None, transfer_encoding: bytes | None, limit: int) -> int | None:
    """The declared body length (None when chunked or absent); raises 411, 413 or 400."""
    chunked = transfer_encoding is not None and b"chunked" in transfer_encoding.lower()
    if content_length is None:
        if method in METHODS_WITH_BODY and not chunked:
            raise LengthRequired(f"{method} needs a Content-Length header or a chunked body (Transfer-Encoding: chunked)")
        return None
    try:
        length = int(content_length)
    except ValueError as exc:
        raise InvalidParameter(f"Content-Length {content_length[:40]!r} is not a number of bytes") from exc
    if length < 0:
        raise InvalidParameter(f"Content-Length {length} is negative")
    if length > limit:
        raise too_large(limit)
    return length


def body_too_slow(timeout_s: float, received: int) -> RequestTimeout:
    error = RequestTimeout(
        f"the request body did not arrive whole within {timeout_s:g} s ({received} bytes came); "
        "send the body with its head, without pauses"
    )
    error.received = received
    return error


async def read_small(receive: Receive, limit: int, timeout_s: float) -> bytes:
    """The whole body of a request that declared no more than `KEEP_FOR_RETRY_BYTES`: read before
    anything is sent, so that head and body go upstream in one write and can go again to another
    instance. Raises ClientGone, 413 past `limit`, or 408 when the rest of the body is not in
    within `timeout_s` (a caller that stops sending must not hold its in-flight slot for ever).
    Every small request takes this path: it is `RequestBody` without the object and the async
    generator, and the body that came with its head (nearly every one) is taken without a timer."""
    chunks: list[bytes] = []
    message = await receive()
    received = _take(message, chunks, 0, limit)
    if message.get("more_body", False):
        try:
            async with asyncio.timeout(timeout_s):
                while message.get("more_body", False):
                    message = await receive()
                    received = _take(message, chunks, received, limit)
        except TimeoutError:
            raise body_too_slow(timeout_s, received) from None
    if len(chunks) == 1:
        return chunks[0]
    return b"".join(chunks)


def _take(message: dict[str, Any], chunks: list[bytes], received: int, limit: int) -> int:
    """One body message into `chunks`; the bytes received with it (`received` before)."""
    if message["type"] == "http.disconnect":
        raise ClientGone("the caller went away while sending its request body", received)
    chunk = message.get("body", b"")
    if chunk:
        received += len(chunk)
        if received > limit:
            raise too_large(limit)
        chunks.append(chunk)
    return received


class RequestBody:
    """An async byte stream over ASGI `receive`, iterable once, with a byte limit.

    `started` tells whether any of it may have left for the upstream; `replayable` whether it
    can be sent again all the same (complete, and small enough to have been kept: iterating
    it again yields the kept chunks). `received` counts bytes for the access log.
    """

    def __init__(
        self, receive: Receive, limit: int, on_complete: Callable[[], None] | None = None, keep_bytes: int = KEEP_FOR_RETRY_BYTES
    ) -> None:
        self._receive = receive
        self.limit = limit
        self.on_complete = on_complete
        self.keep_bytes = keep_bytes
        self.started = False
        self.complete = False
        self.received = 0
        self._kept: list[bytes] | None = []  # None once the body outgrew keep_bytes

    @property
    def replayable(self) -> bool:
        return self.complete and self._kept is not None

    def __aiter__(self) -> AsyncIterator[bytes]:
        if self.started:
            if self.replayable:
                return self._replay()
            raise RuntimeError("a request body can be sent once only")
        self.started = True
        return self._chunks()

    async def _replay(self) -> AsyncIterator[bytes]:
        for chunk in self._kept or ():
            yield chunk

    async def _chunks(self) -> AsyncIterator[bytes]:
        while True:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                raise ClientGone("the caller went away while sending its request body", self.received)
            chunk = message.get("body", b"")
            if chunk:
                self.received += len(chunk)
                if self.received > self.limit:
                    raise too_large(self.limit)
                if self._kept is not None:
                    if self.received <= self.keep_bytes:
                        self._kept.append(chunk)
                    else:
                        self._kept = None
                yield chunk
            if not message.get("more_body", False):
                self.complete = True
                if self.on_complete is not None:
                    self.on_complete()
                return

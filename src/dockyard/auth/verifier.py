"""`Verifier`: OCI request signatures verified (signing.py) against registered keys, with the
caches a busy server needs: keys read from the store for a few seconds, and signatures verified
already remembered, so a client repeating a signed request does not cost an RSA check each time.

Thread-safe: the middleware calls it from worker threads, since a key lookup may block on the
database.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import threading
import time
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from typing import Final, NamedTuple, Protocol, cast

from dockyard.auth.identity import KeyId, KeyLookup, Principal, RegisteredKey
from dockyard.auth.signing import (
    DEFAULT_MAX_SKEW_S,
    check_body,
    check_date,
    key_id_of,
    lowered_names,
    parse_authorization,
    signed_date,
    signing_string,
    verify_request,
)
from dockyard.errors import NotAuthenticated


class RequestVerifier(Protocol):
    """What the middleware calls: `Verifier`, or any callable with this signature."""

    def __call__(
        self,
        method: str,
        target: str,
        headers: Mapping[str, str],
        *,
        body_sha256_b64: str | None,
        body_length: int | None,
        body_headers_required: bool,
    ) -> Principal: ...


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


class _RawEntry(NamedTuple):
    """What `Verifier.remembered` compares a request with."""

    expiry: float  # time.monotonic()
    principal: Principal
    authorization: bytes  # the whole header (it is found by its end: `_raw_key`)
    method: str
    target: bytes  # the request target as received (latin-1 bytes of what `(request-target)` signs)
    body_headers_required: bool
    names: tuple[bytes, ...]  # the signed headers, (request-target) aside
    values: tuple[bytes, ...]  # their raw values, as verified
    earliest: float  # the signed date, less the allowed skew (POSIX seconds)
    latest: float  # ... and plus it
    digest: bytes | None  # the signed x-content-sha256, when signed
    length: int | None  # the signed content-length, when signed
    body: bytes | None  # the body checked against `digest`, when it is small


# The largest body a remembered signature keeps (so at most cache_size times this is held).
_KEPT_BODY_BYTES = 4096
# Read on every remembered signature, bound once: compiled code looks `module.x` up at each call.
# (time.monotonic stays looked up: tests stand in for it on the time module.)
_wall_clock: Final = time.time
_compare_digest: Final = hmac.compare_digest
# How many bytes at the end of an Authorization value find its remembered entry: the end of the
# signature (the OCI SDK writes `,version="1"` after it), which differs between any two
# signatures. Hashing the whole value (600 bytes and more) cost a signed request about 1.3k
# instructions; the whole value is compared once found.
_RAW_KEY_BYTES: Final = 48


def _raw_key(authorization: bytes) -> bytes:
    return authorization[-_RAW_KEY_BYTES:]


class _Flight:
    """One key lookup in progress; the threads that need the same key wait for it instead of
    each reading the database (when a cached key expires under load, every request needs it)."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.found: RegisteredKey | None = None
        self.failed = False


class Verifier:
    """`verify_request` bound to a key lookup, a clock and a skew limit, with a short key cache.

    A registered key is remembered for `cache_ttl_s` seconds, so deleting a key takes effect
    within that time; unknown keys are never cached. Thread-safe (the middleware calls it from
    worker threads, since the lookup may block on the database); concurrent lookups of one key
    share a single read.
    """

    def __init__(
        self,
        lookup_key: KeyLookup,
        *,
        max_skew_s: float = DEFAULT_MAX_SKEW_S,
        clock: Callable[[], datetime] = utc_now,
        cache_ttl_s: float = 5.0,
        cache_size: int = 1024,
    ) -> None:
        self.lookup_key = lookup_key
        self.max_skew_s = max_skew_s
        self.clock = clock
        self.cache_ttl_s = cache_ttl_s
        self.cache_size = cache_size
        self._cache: dict[KeyId, tuple[float, RegisteredKey]] = {}
        # (Authorization, signing string, body rule) -> (expiry, principal, signed header names, signed date)
        self._verified: dict[tuple[str, ...], tuple[float, Principal, tuple[str, ...], datetime]] = {}
        # The end of the Authorization bytes (`_raw_key`) -> a signature verified over raw header
        # bytes (`remembered`).
        self._raw: dict[bytes, _RawEntry] = {}
        # Authorization bytes verified once and not yet remembered (see `remember`).
        self._seen_once: set[bytes] = set()
        self._flights: dict[KeyId, _Flight] = {}
        self._lock = threading.Lock()

    def _lookup(self, key_id: KeyId) -> RegisteredKey | None:
        moment = time.monotonic()
        with self._lock:
            hit = self._cache.get(key_id)
            if hit is not None and hit[0] > moment:
                return hit[1]
            flight = self._flights.get(key_id)
            leading = flight is None
            if flight is None:
                flight = self._flights[key_id] = _Flight()
        if not leading:
            flight.done.wait()
            if not flight.failed:
                return flight.found
            return self._read(key_id, time.monotonic())  # that read failed: this request tries on its own
        try:
            flight.found = self._read(key_id, moment)
        except BaseException:
            flight.failed = True
            raise
        finally:
            with self._lock:
                self._flights.pop(key_id, None)
            flight.done.set()
        return flight.found

    def _read(self, key_id: KeyId, moment: float) -> RegisteredKey | None:
        """Reads a key from the store and caches it (a registered one) from `moment` on."""
        found = self.lookup_key(key_id)
        with self._lock:
            if found is None:
                self._cache.pop(key_id, None)
            elif self.cache_ttl_s > 0:
                if len(self._cache) >= self.cache_size:
                    self._cache.clear()
                self._cache[key_id] = (moment + self.cache_ttl_s, found)
        return found

    def would_block(self, headers: Mapping[str, str]) -> bool:
        """False when the key a request names is cached, so verifying it needs no lookup and the
        event loop may run it inline (about 0.2 ms of CPU) instead of paying for a thread hop."""
        try:
            key_id = key_id_of(parse_authorization(headers.get("authorization", "")).key_id)
        except NotAuthenticated:
            return False  # refused without any lookup
        with self._lock:
            hit = self._cache.get(key_id)
        return hit is None or hit[0] <= time.monotonic()

    def forget(self) -> None:
        """Drop every cached key and verified signature (after keys were deleted in this process)."""
        with self._lock:
            self._cache.clear()
            self._verified.clear()
            self._raw.clear()
            self._seen_once.clear()

    def __call__(
        self,
        method: str,
        target: str,
        headers: Mapping[str, str],
        *,
        body_sha256_b64: str | None = None,
        body_length: int | None = None,
        body_headers_required: bool,
    ) -> Principal:
        # A signature already verified for the very same signed content is not verified again
        # (RSA is most of a signed request's cost): same Authorization (signature, key, header
        # list) and same signing string give the same answer. The date and the body are still
        # checked on every request, and an entry lives no longer than a cached key, so replay
        # protection and key deletion behave exactly as without it.
        lowered = lowered_names(headers)
        memo = self._memo_key(method, target, lowered, body_headers_required)
        if memo is not None:
            with self._lock:
                hit = self._verified.get(memo)
            if hit is not None and hit[0] > time.monotonic():
                now = self.clock()
                if abs((now - hit[3]).total_seconds()) > self.max_skew_s:  # the signed date, parsed once
                    check_date(lowered["date"], now, self.max_skew_s)  # raises, saying how far off
                check_body(hit[2], lowered, body_sha256_b64, body_length)
                return hit[1]
        principal = verify_request(
            method, target, lowered, body_sha256_b64, self._lookup, self.clock(), self.max_skew_s,
            body_headers_required=body_headers_required, body_length=body_length,
        )  # fmt: skip
        if memo is not None and self.cache_ttl_s > 0:
            params = parse_authorization(lowered["authorization"])
            signed_at = signed_date(lowered["date"])  # it passed check_date
            with self._lock:
                key_hit = self._cache.get(key_id_of(params.key_id))
                if key_hit is not None:  # never outlives the cached key it was verified with
                    if len(self._verified) >= self.cache_size:
                        self._verified.clear()
                    expiry = min(key_hit[0], time.monotonic() + self.cache_ttl_s)
                    self._verified[memo] = (expiry, principal, params.headers, signed_at)
        return principal

    def remembered(self, method: str, target: bytes, raw: dict[bytes, bytes], body: bytes, body_headers_required: bool) -> Principal | None:
        """The principal of a signature verified before (`remember`) over the very same bytes,
        read straight from the raw headers: the same Authorization value, method, target and
        body rule, and every header it signs with the raw value it was verified with. Its date
        must still be within the allowed skew, its key still cached, the body must match the
        signed digest and length. None: verify the usual way, which also says what is wrong.

        `target`: the request target as received, in bytes (`middleware.raw_request_target`).
        `raw`: the request's headers by lower-case name, each name once (a repeated header is
        joined before it is signed: those requests go the usual way). This is the memo of
        `__call__` without decoding, mapping or joining any header: on a busy data plane, a
        repeated signature cost more than the rest of its request."""
        authorization = raw.get(b"authorization")
        if authorization is None:
            return None
        entry = self._raw.get(_raw_key(authorization))
        if (
            entry is None or entry.authorization != authorization or entry.expiry <= time.monotonic() or entry.method != method
            or entry.target != target or entry.body_headers_required != body_headers_required
        ):  # fmt: skip
            return None
        # Each signed header as verified, compared in a loop of bytes comparisons (a tuple made of
        # the request's values and compared whole cost three times as much).
        values = entry.values
        index = 0
        for name in entry.names:
            value = raw.get(name)
            if value is None or value != values[index]:
                return None
            index += 1
        # The default clock read as time.time(): a datetime made and compared costs ten times more.
        now = _wall_clock() if self.clock is utc_now else self.clock().timestamp()
        if not entry.earliest <= now <= entry.latest:
            return None  # the usual way says how far off the date is
        if entry.length is not None and len(body) != entry.length:
            return None
        digest = entry.digest
        if digest is not None and not (entry.body is not None and _compare_digest(body, entry.body)):
            if not _compare_digest(base64.b64encode(hashlib.sha256(body).digest()), digest):
                return None
        return entry.principal

    def remember(self, method: str, target: bytes, raw: Mapping[bytes, bytes], body_headers_required: bool, principal: Principal,
                 body: bytes) -> None:  # fmt: skip
        """After `__call__` verified this request as `principal` and `body` was checked against
        it, so that `remembered` knows it again. `target` and `raw` as `remembered` takes them. Lives no
        longer than the cached key it was verified with, nor than `cache_ttl_s`. A small body
        is kept: a request that repeats it (the same signature is the same signed digest) is
        compared with it rather than hashed again.

        Only a signature seen again is remembered: the first time, its bytes are only noted. A
        client that signs every request anew (a new body, or a new second) never repeats one,
        and making the entry costs about a tenth of the RSA check it would save."""
        if self.cache_ttl_s <= 0:
            return
        authorization = raw.get(b"authorization")
        if authorization is None:
            return
        with self._lock:
            if authorization not in self._seen_once:
                if len(self._seen_once) >= self.cache_size:
                    self._seen_once.clear()
                self._seen_once.add(authorization)
                return
            self._seen_once.discard(authorization)
        try:
            params = parse_authorization(authorization.decode("latin-1"))
            names = tuple(name.encode("latin-1") for name in params.headers if name != "(request-target)")
            values = tuple(map(raw.get, names))
            signed_at = signed_date(raw[b"date"].decode("latin-1"))
        except (KeyError, UnicodeEncodeError, NotAuthenticated, TypeError, ValueError, IndexError):
            return  # it verified, so none of this fails; if it did, the usual way serves it every time
        if None in values:
            return
        signed_values = cast("tuple[bytes, ...]", values)
        digest = raw[b"x-content-sha256"].strip() if b"x-content-sha256" in names else None
        length = None
        if b"content-length" in names:
            declared = raw[b"content-length"].strip()
            if not declared.isdigit():
                return
            length = int(declared)
        signed_s = signed_at.timestamp()
        with self._lock:
            key_hit = self._cache.get(key_id_of(params.key_id))
            if key_hit is None:
                return
            if len(self._raw) >= self.cache_size:
                self._raw.clear()
            expiry = min(key_hit[0], time.monotonic() + self.cache_ttl_s)
            self._raw[_raw_key(authorization)] = _RawEntry(
                expiry, principal, authorization, method, target, body_headers_required, names, signed_values,
                signed_s - self.max_skew_s, signed_s + self.max_skew_s, digest, length,
                body if digest is not None and len(body) <= _KEPT_BODY_BYTES else None,
            )  # fmt: skip

    @staticmethod
    def _memo_key(method: str, target: str, lowered: Mapping[str, str], body_headers_required: bool) -> tuple[str, ...] | None:
        """`lowered`: the request's headers by lower-case name."""
        try:
            authorization = lowered["authorization"]
            message = signing_string(parse_authorization(authorization).headers, method, target, lowered)
        except Exception:  # unsigned or malformed: verify_request says what is wrong
            return None
        return (authorization, message.decode("latin-1"), "body" if body_headers_required else "")

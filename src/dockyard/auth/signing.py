"""OCI request signatures (draft-cavage HTTP Signatures, OCI "version 1"): build and verify.

Pure: no I/O beyond the `lookup_key` callable it is given. `verify_request` mirrors what
`oci.signer.Signer` does (oci-api.md §5):

- ``Authorization: Signature algorithm="rsa-sha256",headers="...",keyId="<tenancy>/<user>/<fp>",
  signature="<base64>",version="1"``;
- every request signs ``date (request-target) host``; POST/PUT/PATCH with a JSON body (and the
  empty-body actions) also sign ``content-length content-type x-content-sha256``; binary uploads
  (CreateModelArtifact) are signed without the body headers;
- the signing string is ``"<name>: <value>"`` per signed header, in the listed order, joined by
  ``\\n``, with ``(request-target)`` = lower-case method, a space, the raw path and query exactly as
  sent (a ``//20190101`` path stays as it is);
- RSA PKCS#1 v1.5 over SHA-256.

Every refusal raises `dockyard.errors.NotAuthenticated` naming the check that failed.
"""

from __future__ import annotations

import base64
import binascii
import email.utils
import functools
import hashlib
import hmac
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from dockyard.auth.identity import KeyId, KeyLookup, Principal
from dockyard.auth.keys import loaded_public_key
from dockyard.durations import duration_in_words
from dockyard.errors import InvalidParameter, NotAuthenticated

GENERIC_HEADERS = ("date", "(request-target)", "host")
BODY_HEADERS = ("content-length", "content-type", "x-content-sha256")
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
ALGORITHM = "rsa-sha256"
VERSION = "1"
DEFAULT_MAX_SKEW_S = 300
EMPTY_BODY_SHA256 = "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="

_ARTIFACT_UPLOAD = re.compile(r"^/*20190101/models/[^/]+/artifact/?$")
_HOW_TO_SIGN = "use an OCI API key to sign it (the oci CLI or SDK with a config file, e.g. <data dir>/oci/config that `dockyard serve` writes)"
_PARAM = re.compile(r'\s*([A-Za-z][A-Za-z0-9_-]*)\s*=\s*"([^"]*)"\s*(?:,|$)')
# The template the OCI SDK (and `sign_request`) fills in, its fields always in this order
# (oci-api.md §5), read with one match. A request signed anew is parsed once: pair by pair that
# took about 7 µs of the 51 µs its whole check takes in-process, RSA included; in one match,
# about 4. Any other spelling (spaces, another order, case, algorithm or version) is read pair
# by pair, which also says what is wrong.
_SDK_TEMPLATE = re.compile(
    r'Signature algorithm="rsa-sha256",headers="([a-z0-9()-]+(?: [a-z0-9()-]+)*)",keyId="([^"]+)",'
    r'signature="([A-Za-z0-9+/]+={0,2})",version="1"'
)
# Stateless, so made once rather than for every signature checked.
_PKCS1V15 = padding.PKCS1v15()
_SHA256 = hashes.SHA256()


@dataclass(frozen=True)
class SignatureParams:
    """The parameters of an ``Authorization: Signature ...`` header."""

    key_id: str
    algorithm: str
    headers: tuple[str, ...]
    signature: bytes
    version: str | None = None


def _malformed(why: str) -> NotAuthenticated:
    return NotAuthenticated(
        f"the Authorization header is not an OCI signature ({why}); expected "
        'Signature algorithm="rsa-sha256",headers="date (request-target) host",keyId="<tenancy>/<user>/<fingerprint>",'
        f'signature="<base64>",version="1": {_HOW_TO_SIGN}'
    )


# A signed request has its Authorization header read several times (by the middleware, the
# verifier, its memo), and a client repeating a request sends the same value again: the parsed
# parameters (immutable) are kept for the most recent values. Refusals are never kept (each
# raises afresh), and neither are values longer than any real signature, so the memory is bounded.
_PARSED_CACHE_SIZE = 1024
_PARSED_MAX_CHARS = 4096


def parse_authorization(value: str) -> SignatureParams:
    """The parameters of an Authorization header; raises NotAuthenticated when it is malformed."""
    if len(value) > _PARSED_MAX_CHARS:
        return _parse_authorization(value)
    return _parsed_authorization(value)


def _parse_authorization(value: str) -> SignatureParams:
    return _sdk_template(value) or _parse_pairs(value)


def _sdk_template(value: str) -> SignatureParams | None:
    """`_parse_pairs` of a value in the SDK's template, read with one match; None for any other
    value, or one `_parse_pairs` refuses (a header listed twice, a signature not base64)."""
    template = _SDK_TEMPLATE.fullmatch(value)
    if template is None:
        return None
    names = tuple(template.group(1).split(" "))
    if len(set(names)) != len(names):
        return None
    try:  # what base64.b64decode(validate=True) calls
        signature = binascii.a2b_base64(template.group(3), strict_mode=True)
    except binascii.Error:
        return None
    return SignatureParams(template.group(2), ALGORITHM, names, signature, VERSION)


def _parse_pairs(value: str) -> SignatureParams:
    scheme, _, rest = value.strip().partition(" ")
    if scheme.lower() != "signature":
        raise _malformed(f"its scheme is {scheme[:30]!r}, not Signature")
    rest = rest.strip()
    params: dict[str, str] = {}
    pos = 0
    while pos < len(rest):
        match = _PARAM.match(rest, pos)
        if not match:
            raise _malformed(f'cannot read a name="value" pair at {rest[pos:pos + 30]!r}')
        name = match.group(1).lower()
        if name in params:
            raise _malformed(f"{match.group(1)} appears twice")
        params[name] = match.group(2)
        pos = match.end()
    for name in ("keyid", "signature"):
        if not params.get(name):
            raise _malformed(f"it has no {'keyId' if name == 'keyid' else name}")
    algorithm = params.get("algorithm", ALGORITHM).lower()
    if algorithm != ALGORITHM:
        raise NotAuthenticated(f"signature algorithm {algorithm[:30]!r} is not supported; use {ALGORITHM} (what the OCI SDK signs with)")
    version = params.get("version")
    if version is not None and version != VERSION:
        raise NotAuthenticated(f"signature version {version[:10]!r} is not supported; use version=\"{VERSION}\" (what the OCI SDK sends)")
    names = tuple(params.get("headers", "date").lower().split())
    if not names:
        raise _malformed("its headers list is empty")
    if len(set(names)) != len(names):
        raise _malformed("its headers list names a header twice")
    try:
        signature = base64.b64decode(params["signature"], validate=True)
    except (binascii.Error, ValueError) as exc:
        raise _malformed("its signature is not base64") from exc
    return SignatureParams(params["keyid"], algorithm, names, signature, version)


_parsed_authorization = functools.lru_cache(maxsize=_PARSED_CACHE_SIZE)(_parse_authorization)


@functools.lru_cache(maxsize=_PARSED_CACHE_SIZE)
def key_id_of(text: str) -> KeyId:
    """`KeyId.parse`, remembered for recent texts (a refusal raises afresh each time)."""
    return KeyId.parse(text)


def signing_string(signed_headers: Iterable[str], method: str, target: str, headers: Mapping[str, str]) -> bytes:
    """The bytes that are signed: one ``name: value`` line per signed header, in order.

    `headers` maps lower-case names to values as received (latin-1 text of the raw bytes);
    `target` is the raw path plus ``?query``. Raises KeyError for a header `headers` lacks.
    """
    lines = []
    for name in signed_headers:
        if name == "(request-target)":
            lines.append(f"(request-target): {method.lower()} {target}")
        else:
            lines.append(f"{name}: {headers[name]}")
    return "\n".join(lines).encode("latin-1")


def body_sha256(body: bytes) -> str:
    """The `x-content-sha256` value of a body: base64 of its SHA-256."""
    return base64.b64encode(hashlib.sha256(body).digest()).decode("ascii")


def is_streamed_upload(method: str, path: str) -> bool:
    """CreateModelArtifact, the one route the SDK signs without body headers (oci-api.md §9.6):
    its body streams, so neither side hashes it."""
    return method.upper() == "POST" and _ARTIFACT_UPLOAD.match(path) is not None


def required_headers(body_headers_required: bool) -> tuple[str, ...]:
    return GENERIC_HEADERS + BODY_HEADERS if body_headers_required else GENERIC_HEADERS


def _require_covered(signed: tuple[str, ...], method: str, body_headers_required: bool) -> None:
    missing = [h for h in GENERIC_HEADERS if h not in signed]
    if missing:
        raise NotAuthenticated(
            f"the signature must cover {' '.join(GENERIC_HEADERS)} (it covers {' '.join(signed)}; "
            f"{', '.join(missing)} missing): {_HOW_TO_SIGN}"
        )
    if body_headers_required:
        missing = [h for h in BODY_HEADERS if h not in signed]
        if missing:
            raise NotAuthenticated(
                f"the signature must cover {', '.join(BODY_HEADERS)} on {method.upper()} requests with a JSON body "
                f"(it covers {' '.join(signed)}; {', '.join(missing)} missing): sign the body too, as the OCI "
                "SDK's Signer does by default (enforce_content_headers=True)"
            )


def _require_present(signed: tuple[str, ...], headers: Mapping[str, str]) -> None:
    for name in signed:
        if name != "(request-target)" and name not in headers:
            raise NotAuthenticated(
                f"header {name} is listed in the signature but the request does not carry it; "
                "send every header the signature lists (a proxy on the way may have dropped it)"
            )


@functools.lru_cache(maxsize=256)
def signed_date(value: str) -> datetime:
    """The moment an HTTP date names, aware. Every request signed within the same second carries
    the same date, so recent values are remembered; an unreadable one raises afresh each time
    (TypeError, ValueError or IndexError, as `email.utils.parsedate_to_datetime` does)."""
    signed_at = email.utils.parsedate_to_datetime(value)
    if signed_at.tzinfo is None:  # "-0000" means UTC with no claim about the local zone
        signed_at = signed_at.replace(tzinfo=timezone.utc)
    return signed_at


def check_date(value: str, now: datetime, max_skew_s: float = DEFAULT_MAX_SKEW_S) -> None:
    """Raises NotAuthenticated when `value` is no HTTP date or lies more than `max_skew_s` from `now`.

    The limit is what keeps a captured request from being replayed later."""
    try:
        signed_at = signed_date(value)
    except (TypeError, ValueError, IndexError):
        raise NotAuthenticated(
            f"header date {value[:60]!r} is not an HTTP date (e.g. Wed, 25 Nov 2026 13:10:21 GMT); "
            "send the date header the OCI signer sets"
        ) from None
    skew = (now - signed_at).total_seconds()
    if abs(skew) > max_skew_s:
        server = email.utils.format_datetime(now.astimezone(timezone.utc), usegmt=True)
        raise NotAuthenticated(
            f"date is {duration_in_words(abs(skew))} off the server's clock ({'behind' if skew > 0 else 'ahead of'} it: "
            f"the request says {value}, the server {server}); at most {duration_in_words(max_skew_s)} are allowed so that "
            "a captured request cannot be replayed later: sync your clock (NTP) and send a freshly signed request"
        )


def check_body(signed: Iterable[str], headers: Mapping[str, str], sha256_b64: str | None, length: int | None) -> None:
    """Compares the signed `x-content-sha256` and `content-length` with the body actually received.

    A check is skipped when its header is not signed or the body's value is not known (None).
    Raises NotAuthenticated on a mismatch."""
    signed = tuple(signed)
    if sha256_b64 is not None and "x-content-sha256" in signed:
        declared = headers.get("x-content-sha256", "").strip()
        if not hmac.compare_digest(declared.encode("latin-1"), sha256_b64.encode("ascii")):
            raise NotAuthenticated(
                "header x-content-sha256 does not match the body (the body was changed after it was signed); "
                "send the body exactly as it was signed"
            )
    if length is not None and "content-length" in signed:
        declared = headers.get("content-length", "").strip()
        if not declared.isdigit() or int(declared) != length:
            raise NotAuthenticated(
                f"header content-length ({declared[:20]}) does not match the body, which has {length} bytes; "
                "send the body exactly as it was signed"
            )


def lowered_names(headers: Mapping[str, str]) -> Mapping[str, str]:
    names = "\n".join(headers)  # every name lower-case exactly when their joined text is
    if names == names.lower():
        return headers
    return {name.lower(): value for name, value in headers.items()}


def verify_request(
    method: str,
    target: str,
    headers: Mapping[str, str],
    body_sha256_b64: str | None,
    lookup_key: KeyLookup,
    now: datetime,
    max_skew_s: float = DEFAULT_MAX_SKEW_S,
    *,
    body_headers_required: bool,
    body_length: int | None = None,
) -> Principal:
    """The principal whose registered key signed this request.

    - `target`: the raw path plus ``?query`` exactly as received (no normalisation);
    - `headers`: header values as received, by lower-case name (repeated headers joined ``", "``);
    - `body_sha256_b64` / `body_length`: the hash and length of the body actually received.
      None means "not known here" (a streamed body): the signature is verified without them and
      the caller must run `check_body` once it has the body;
    - `body_headers_required`: the route expects ``content-length content-type x-content-sha256``
      in the signature (POST/PUT/PATCH with a JSON body; not binary uploads).

    Raises NotAuthenticated naming the check that failed.
    """
    headers = lowered_names(headers)
    authorization = headers.get("authorization")
    if not authorization:
        raise NotAuthenticated(f"the request is not signed (it has no Authorization header); {_HOW_TO_SIGN}")
    params = parse_authorization(authorization)
    key_id = key_id_of(params.key_id)
    _require_covered(params.headers, method, body_headers_required)
    _require_present(params.headers, headers)
    check_date(headers["date"], now, max_skew_s)
    registered = lookup_key(key_id)
    if registered is None:
        raise NotAuthenticated(
            f"key {key_id} is not registered (no such fingerprint for that user in that tenancy); check user, "
            "tenancy and fingerprint in your OCI config, or register the public key with `dockyard keys add`"
        )
    try:
        public_key = loaded_public_key(registered.public_pem)
    except InvalidParameter as exc:  # a stored key that no longer loads: refuse, do not crash
        raise NotAuthenticated(
            f"key {key_id} is registered but cannot be loaded ({exc.message}); delete it and add it again with `dockyard keys add`"
        ) from exc
    try:
        message = signing_string(params.headers, method, target, headers)
        public_key.verify(params.signature, message, _PKCS1V15, _SHA256)
    except (InvalidSignature, UnicodeEncodeError):
        raise NotAuthenticated(
            f"signature does not verify with key {key_id.fingerprint} of user {key_id.user_id}: the request was "
            "changed after signing (path, query, host or a signed header), or it was signed with another private "
            "key; check that key_file in your OCI config is the private half of that fingerprint"
        ) from None
    check_body(params.headers, headers, body_sha256_b64, body_length)
    return registered.principal


def sign_request(
    method: str,
    target: str,
    headers: Mapping[str, str],
    key_id: str,
    private_key: rsa.RSAPrivateKey,
    signed_headers: Iterable[str],
) -> str:
    """The Authorization header value for a request carrying `headers` (the client side of
    `verify_request`, for dockyard's own CLI and for tests)."""
    names = tuple(signed_headers)
    message = signing_string(names, method, target, lowered_names(headers))
    signature = base64.b64encode(private_key.sign(message, padding.PKCS1v15(), hashes.SHA256())).decode("ascii")
    return f'Signature algorithm="{ALGORITHM}",headers="{" ".join(names)}",keyId="{key_id}",signature="{signature}",version="{VERSION}"'


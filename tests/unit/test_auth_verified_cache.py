"""The verifier's memo of verified signatures: a repeated signed request skips the RSA check,
and nothing else changes (date skew, body, tampering, key deletion, expiry)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from dockyard.auth.identity import KeyId, RegisteredKey
from dockyard.auth.signing import body_sha256
from dockyard.auth.verifier import Verifier
from dockyard.errors import NotAuthenticated
from tests.unit.test_auth_signing import PRINCIPAL, REGISTERED, received, signed

BODY = '{"inputs": [1, 2, 3]}'


class Clock:
    def __init__(self) -> None:
        self.now = datetime.now(timezone.utc)

    def __call__(self) -> datetime:
        return self.now


class CountingRsa:
    """Counts the RSA verifications by wrapping the public-key loader the verifier uses."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        import dockyard.auth.signing as signing

        self.calls = 0
        original = signing.loaded_public_key

        def counted(pem: str) -> object:
            key = original(pem)
            outer = self

            class Key:
                def verify(self, *args: object) -> None:
                    outer.calls += 1
                    key.verify(*args)

            return Key()

        monkeypatch.setattr(signing, "loaded_public_key", counted)


def call(verifier: Verifier, prepared: object, body: bytes | None = None) -> object:
    method, target, headers, sent = received(prepared)  # type: ignore[arg-type]
    actual = sent if body is None else body
    return verifier(method, target, headers, body_sha256_b64=body_sha256(actual), body_length=len(actual), body_headers_required=True)


def test_a_repeated_signed_request_is_verified_once(monkeypatch: pytest.MonkeyPatch) -> None:
    rsa = CountingRsa(monkeypatch)
    verifier = Verifier(REGISTERED.get, clock=Clock())
    request = signed("POST", "/dep/predict", BODY)
    assert [call(verifier, request) for _ in range(5)] == [PRINCIPAL] * 5
    assert rsa.calls == 1
    call(verifier, signed("POST", "/dep/predict", BODY + " "))  # another body: another signature
    assert rsa.calls == 2


def test_a_remembered_signature_still_gets_its_date_and_body_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    rsa = CountingRsa(monkeypatch)
    clock = Clock()
    verifier = Verifier(REGISTERED.get, clock=clock, cache_ttl_s=3600)
    request = signed("POST", "/dep/predict", BODY)
    call(verifier, request)
    with pytest.raises(NotAuthenticated, match="x-content-sha256 does not match"):
        call(verifier, request, body=b'{"inputs": [6, 6, 6]}')  # the same headers over another body
    clock.now += timedelta(minutes=6)  # past the 5-minute skew window: a replay
    with pytest.raises(NotAuthenticated, match="off the server's clock"):
        call(verifier, request)
    assert rsa.calls == 1


def test_a_tampered_header_is_not_served_from_the_memo() -> None:
    verifier = Verifier(REGISTERED.get, clock=Clock())
    request = signed("POST", "/dep/predict", BODY)
    call(verifier, request)
    method, target, headers, body = received(request)
    with pytest.raises(NotAuthenticated, match="does not verify"):
        verifier(method, "/other/predict", headers, body_sha256_b64=body_sha256(body), body_length=len(body), body_headers_required=True)
    with pytest.raises(NotAuthenticated, match="does not verify"):
        verifier(method, target, headers | {"host": "evil:1"}, body_sha256_b64=body_sha256(body), body_length=len(body),
                 body_headers_required=True)  # fmt: skip


def test_a_deleted_key_stops_working_when_its_cached_key_expires(monkeypatch: pytest.MonkeyPatch) -> None:
    keys: dict[KeyId, RegisteredKey] = dict(REGISTERED)
    ticks = [1000.0]
    monkeypatch.setattr("dockyard.auth.verifier.time.monotonic", lambda: ticks[0])
    verifier = Verifier(keys.get, clock=Clock(), cache_ttl_s=5)
    request = signed("POST", "/dep/predict", BODY)
    call(verifier, request)
    keys.clear()  # `dockyard keys delete`
    ticks[0] += 4
    assert call(verifier, request) == PRINCIPAL  # within the key cache's 5 s, as before the memo
    ticks[0] += 1.5
    with pytest.raises(NotAuthenticated, match="is not registered"):
        call(verifier, request)


# --- the memo by raw header bytes (the data plane's signed predict, served from callbacks) ----------


def raw_of(headers: dict[str, str]) -> dict[bytes, bytes]:
    return {name.encode("latin-1"): value.encode("latin-1") for name, value in headers.items()}


def verified_and_remembered(verifier: Verifier, request: object, sights: int = 2) -> tuple[str, bytes, dict[bytes, bytes], bytes]:
    """Verified the usual way and handed to `remember`, `sights` times, as the middleware does
    each time `remembered` does not know a request. The target as `remembered` takes it: bytes."""
    method, target, headers, body = received(request)  # type: ignore[arg-type]
    raw = raw_of(headers)
    raw_target = target.encode("latin-1")
    for _ in range(sights):
        principal = verifier(method, target, headers, body_sha256_b64=body_sha256(body), body_length=len(body), body_headers_required=True)
        verifier.remember(method, raw_target, raw, True, principal, body)
    return method, raw_target, raw, body


def test_a_remembered_signature_is_known_again_by_its_raw_bytes_without_rsa(monkeypatch: pytest.MonkeyPatch) -> None:
    rsa = CountingRsa(monkeypatch)
    verifier = Verifier(REGISTERED.get, clock=Clock())
    request = signed("POST", "/dep/predict", BODY)
    method, raw_target, raw, body = verified_and_remembered(verifier, request, sights=0)  # headers and target only
    assert verifier.remembered(method, raw_target, raw, body, True) is None  # never verified: the usual way
    method, raw_target, raw, body = verified_and_remembered(verifier, request)
    assert [verifier.remembered(method, raw_target, dict(raw), body, True) for _ in range(3)] == [PRINCIPAL] * 3
    assert rsa.calls == 1


def test_only_a_signature_seen_again_is_remembered() -> None:
    """A client that signs every request anew never repeats a signature: its first sight is only noted."""
    verifier = Verifier(REGISTERED.get, clock=Clock())
    request = signed("POST", "/dep/predict", BODY)
    method, target, raw, body = verified_and_remembered(verifier, request, sights=1)
    assert verifier.remembered(method, target, raw, body, True) is None
    verified_and_remembered(verifier, request, sights=1)
    assert verifier.remembered(method, target, raw, body, True) == PRINCIPAL


@pytest.mark.parametrize("change", [
    "another body", "another target", "another method", "another signed header", "a signed header missing", "another body rule",
    "another authorization", "another authorization with the same end",
])  # fmt: skip
def test_a_request_that_differs_from_the_remembered_one_in_anything_signed_is_not_known(change: str) -> None:
    verifier = Verifier(REGISTERED.get, clock=Clock())
    method, target, raw, body = verified_and_remembered(verifier, signed("POST", "/dep/predict", BODY))
    rule = True
    if change == "another body":
        body = b'{"inputs": [6, 6, 6]}'
    elif change == "another target":
        target = b"/other/predict"
    elif change == "another method":
        method = "PUT"
    elif change == "another signed header":
        raw[b"host"] = b"evil:1"
    elif change == "a signed header missing":
        del raw[b"x-content-sha256"]
    elif change == "another body rule":
        rule = False
    elif change == "another authorization":
        raw[b"authorization"] = raw[b"authorization"].replace(b'version="1"', b'version="1" ')
    else:  # found by its end, then compared whole
        raw[b"authorization"] = raw[b"authorization"].replace(b"Signature ", b"Signature  ", 1)
    assert verifier.remembered(method, target, raw, body, rule) is None


def test_a_remembered_signature_is_not_known_past_its_date_window_or_its_key(monkeypatch: pytest.MonkeyPatch) -> None:
    ticks = [1000.0]
    monkeypatch.setattr("dockyard.auth.verifier.time.monotonic", lambda: ticks[0])
    clock = Clock()
    verifier = Verifier(REGISTERED.get, clock=clock, cache_ttl_s=5)
    method, target, raw, body = verified_and_remembered(verifier, signed("POST", "/dep/predict", BODY))
    clock.now += timedelta(minutes=4, seconds=59)
    assert verifier.remembered(method, target, raw, body, True) == PRINCIPAL
    clock.now += timedelta(seconds=2)  # past the 5-minute skew window
    assert verifier.remembered(method, target, raw, body, True) is None
    clock.now -= timedelta(minutes=5)
    ticks[0] += 5  # the cached key it was verified with expired
    assert verifier.remembered(method, target, raw, body, True) is None
    ticks[0] = 1000.0
    verifier.forget()  # keys deleted in this process
    assert verifier.remembered(method, target, raw, body, True) is None


def test_nothing_is_remembered_when_signatures_are_not_cached() -> None:
    verifier = Verifier(REGISTERED.get, clock=Clock(), cache_ttl_s=0)
    method, target, raw, body = verified_and_remembered(verifier, signed("POST", "/dep/predict", BODY))
    assert verifier.remembered(method, target, raw, body, True) is None


@pytest.mark.parametrize("size", [len(BODY), 10_000], ids=["kept body", "body too large to keep"])
def test_a_remembered_signature_checks_its_body_whether_or_not_the_body_was_kept(size: int) -> None:
    verifier = Verifier(REGISTERED.get, clock=Clock())
    sent = ('{"inputs": "' + "x" * (size - 14) + '"}') if size > len(BODY) else BODY
    method, target, raw, body = verified_and_remembered(verifier, signed("POST", "/dep/predict", sent))
    assert verifier.remembered(method, target, raw, bytes(bytearray(body)), True) == PRINCIPAL  # an equal body, another object
    changed = body[:-3] + b"y" + body[-2:]  # the same length, one byte off
    assert verifier.remembered(method, target, raw, changed, True) is None

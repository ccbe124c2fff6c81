"""The verifier against requests signed by the real `oci.signer.Signer`.

Each request is a `requests.PreparedRequest` made the way the SDK makes it, signed by the SDK's
own signer, then handed to `verify_request` as a server receives it: method, raw path+query,
header values, the hash and length of the body.
"""

from __future__ import annotations

import email.utils
import json
import time
from datetime import datetime, timedelta, timezone
from typing import Any

import oci
import pytest
import requests

from dockyard.auth import keys
from dockyard.auth.identity import KeyId, Principal, RegisteredKey
from dockyard.auth.signing import EMPTY_BODY_SHA256, body_sha256, parse_authorization, sign_request, verify_request
from dockyard.auth.verifier import Verifier
from dockyard.errors import NotAuthenticated

pytest.register_assert_rewrite("tests.api.inprocess")  # before the import below, as every user of it does
from tests.api.inprocess import says_what_to_do  # noqa: E402

TENANCY = "ocid1.tenancy.oc1..aaaaaaaatenancy"
USER = "ocid1.user.oc1..aaaaaaaauser"
HOST = "127.0.0.1:18555"
KEY = keys.generate_private_key()
OTHER_KEY = keys.generate_private_key()
FP = keys.fingerprint(KEY.public_key())
PRINCIPAL = Principal(user_id=USER, tenancy_id=TENANCY, fingerprint=FP, user_name="alice")
REGISTERED = {KeyId(TENANCY, USER, FP): RegisteredKey(PRINCIPAL, keys.public_pem(KEY.public_key()))}


def lookup(key_id: KeyId) -> RegisteredKey | None:
    return REGISTERED.get(key_id)


def sdk_signer(key: object = KEY, fingerprint: str = FP, user: str = USER) -> oci.signer.Signer:
    return oci.signer.Signer(TENANCY, user, fingerprint, None, private_key_content=keys.private_pem(key).decode())  # type: ignore[arg-type]


def signed(
    method: str,
    path: str,
    body: str | bytes | None = None,
    *,
    enforce_content_headers: bool = True,
    signer: oci.signer.Signer | None = None,
    date: str | None = None,
    base: str = f"http://{HOST}",
) -> requests.PreparedRequest:
    """A request as the SDK sends it: JSON ops carry content-type application/json (GET too)."""
    headers = {"accept": "application/json", "opc-request-id": "ABC"}
    if enforce_content_headers:
        headers["content-type"] = "application/json"
    if date:
        headers["date"] = date
    prepared = requests.Request(method, base + path, data=body, headers=headers).prepare()
    (signer or sdk_signer())(prepared, enforce_content_headers=enforce_content_headers)
    return prepared


def received(prepared: requests.PreparedRequest) -> tuple[str, str, dict[str, str], bytes]:
    """What the server sees: method, raw request-target, lower-case headers, body bytes."""
    body = prepared.body or b""
    if isinstance(body, str):
        body = body.encode()
    assert isinstance(body, bytes)
    headers = {k.lower(): str(v) for k, v in prepared.headers.items()}
    return prepared.method or "", prepared.path_url, headers, body


def verify(
    prepared: requests.PreparedRequest,
    *,
    body_headers_required: bool | None = None,
    now: datetime | None = None,
    target: str | None = None,
    body: bytes | None = None,
) -> Principal:
    method, path, headers, sent = received(prepared)
    body = sent if body is None else body
    required = method in ("POST", "PUT", "PATCH") if body_headers_required is None else body_headers_required
    return verify_request(
        method, target or path, headers, body_sha256(body), lookup, now or datetime.now(timezone.utc),
        body_headers_required=required, body_length=len(body),
    )  # fmt: skip


def refused(prepared: requests.PreparedRequest, *fragments: str, **kw: object) -> str:
    with pytest.raises(NotAuthenticated) as info:
        verify(prepared, **kw)  # type: ignore[arg-type]
    message = info.value.message
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    assert info.value.status == 401 and info.value.code == "NotAuthenticated"
    assert says_what_to_do(message), f"the message does not say what to do: {message!r}"
    return message


# --- accepted ----------------------------------------------------------------------------------


def test_get_is_signed_over_date_target_and_host_only() -> None:
    request = signed("GET", "/20190101/projects/ocid1.datascienceproject.oc1..x")
    assert parse_authorization(str(request.headers["authorization"])).headers == ("date", "(request-target)", "host")
    assert verify(request) == PRINCIPAL


def test_post_json_is_body_signed_and_verifies() -> None:
    body = json.dumps({"compartmentId": "ocid1.compartment.oc1..c", "displayName": "p"})
    request = signed("POST", "/20190101/projects", body)
    params = parse_authorization(str(request.headers["authorization"]))
    assert params.headers == ("date", "(request-target)", "host", "content-length", "content-type", "x-content-sha256")
    assert params.key_id == f"{TENANCY}/{USER}/{FP}"
    assert verify(request).user_id == USER


def test_put_json_verifies() -> None:
    request = signed("PUT", "/20190101/models/ocid1.datasciencemodel.oc1..m", json.dumps({"displayName": "x"}))
    assert verify(request) == PRINCIPAL


def test_empty_body_action_signs_the_hash_of_nothing() -> None:
    request = signed("POST", "/20190101/modelDeployments/ocid1.datasciencemodeldeployment.oc1..d/actions/activate")
    assert request.headers["x-content-sha256"] == EMPTY_BODY_SHA256
    assert request.headers["content-length"] == "0"
    assert verify(request) == PRINCIPAL


def test_artifact_upload_is_signed_without_body_headers() -> None:
    zip_bytes = b"PK\x03\x04" + b"\x00" * 1000
    request = signed("POST", "/20190101/models/ocid1.datasciencemodel.oc1..m/artifact", zip_bytes, enforce_content_headers=False)
    assert parse_authorization(str(request.headers["authorization"])).headers == ("date", "(request-target)", "host")
    assert "x-content-sha256" not in request.headers
    method, path, headers, _ = received(request)
    principal = verify_request(
        method, path, headers, None, lookup, datetime.now(timezone.utc), body_headers_required=False, body_length=None
    )
    assert principal == PRINCIPAL


def test_query_string_is_signed_as_sent() -> None:
    request = signed("GET", "/20190101/modelDeployments?compartmentId=ocid1.compartment.oc1..c&lifecycleState=ACTIVE&limit=2")
    assert request.path_url.endswith("?compartmentId=ocid1.compartment.oc1..c&lifecycleState=ACTIVE&limit=2")
    assert verify(request) == PRINCIPAL


def test_double_slash_path_verifies_only_unnormalised() -> None:
    """A service_endpoint with a trailing slash gives //20190101 (oci-api.md §9.7)."""
    request = signed("GET", "//20190101/projects?compartmentId=c")
    assert request.path_url.startswith("//20190101/")
    assert verify(request) == PRINCIPAL
    refused(request, "signature does not verify", target="/20190101/projects?compartmentId=c")


def test_data_plane_predict_is_body_signed() -> None:
    request = signed("POST", "/ocid1.datasciencemodeldeployment.oc1..d/predict", json.dumps({"data": [1, 2]}))
    assert verify(request) == PRINCIPAL


# --- refused ------------------------------------------------------------------------------------


def test_wrong_private_key_under_a_registered_fingerprint() -> None:
    request = signed("GET", "/20190101/projects", signer=sdk_signer(OTHER_KEY, FP))
    refused(request, "signature does not verify with key", FP, "key_file")


def test_unknown_key_is_not_registered() -> None:
    other_fp = keys.fingerprint(OTHER_KEY.public_key())
    request = signed("GET", "/20190101/projects", signer=sdk_signer(OTHER_KEY, other_fp))
    refused(request, f"key {TENANCY}/{USER}/{other_fp} is not registered", "dockyard keys add")


def test_registered_key_of_another_user_is_not_accepted() -> None:
    request = signed("GET", "/20190101/projects", signer=sdk_signer(KEY, FP, user="ocid1.user.oc1..aaaaaaaamallory"))
    refused(request, "is not registered")


def test_tampered_body_fails_the_hash_check() -> None:
    body = json.dumps({"compartmentId": "c", "displayName": "innocent"})
    request = signed("POST", "/20190101/projects", body)
    tampered = body.replace("innocent", "maliciou").encode()
    assert len(tampered) == len(body)
    refused(request, "header x-content-sha256 does not match the body", body=tampered)


def test_truncated_body_fails_the_length_check() -> None:
    body = json.dumps({"compartmentId": "c"})
    request = signed("POST", "/20190101/projects", body)
    method, path, headers, _ = received(request)
    short = body.encode()[:-1]
    with pytest.raises(NotAuthenticated, match="content-length"):
        verify_request(method, path, headers, headers["x-content-sha256"], lookup, datetime.now(timezone.utc),
                       body_headers_required=True, body_length=len(short))  # fmt: skip


def test_tampered_path_fails_the_signature() -> None:
    request = signed("DELETE", "/20190101/projects/ocid1.datascienceproject.oc1..mine")
    refused(request, "signature does not verify", target="/20190101/projects/ocid1.datascienceproject.oc1..yours")


def test_tampered_query_fails_the_signature() -> None:
    request = signed("GET", "/20190101/projects?compartmentId=a")
    refused(request, "signature does not verify", target="/20190101/projects?compartmentId=b")


def test_tampered_signed_header_fails_the_signature() -> None:
    request = signed("GET", "/20190101/projects")
    request.headers["host"] = "evil.example:443"
    refused(request, "signature does not verify")


def test_post_signed_without_body_headers_is_refused() -> None:
    """A JSON POST signed like an artifact upload: its body would not be covered."""
    request = signed("POST", "/20190101/projects", json.dumps({"a": 1}), enforce_content_headers=False)
    refused(request, "the signature must cover content-length, content-type, x-content-sha256 on POST", "x-content-sha256 missing")


def test_signature_without_host_is_refused() -> None:
    request = signed("GET", "/20190101/projects")
    headers = {k.lower(): str(v) for k, v in request.headers.items()}
    auth = sign_request("GET", request.path_url, headers, f"{TENANCY}/{USER}/{FP}", KEY, ["date", "(request-target)"])
    request.headers["authorization"] = auth
    refused(request, "the signature must cover date (request-target) host", "host missing")


def test_header_listed_in_the_signature_but_not_sent() -> None:
    request = signed("POST", "/20190101/projects", json.dumps({"a": 1}))
    del request.headers["x-content-sha256"]
    refused(request, "header x-content-sha256 is listed in the signature but the request does not carry it")


def test_date_six_minutes_old_is_refused_as_a_replay() -> None:
    moment = int(time.time())  # whole seconds, as in the Date header: the skew is exactly 6 min
    old = email.utils.formatdate(moment - 360, usegmt=True)
    request = signed("GET", "/20190101/projects", date=old)
    now = datetime.fromtimestamp(moment, timezone.utc)
    message = refused(request, "date is 6 minutes off the server's clock", "behind", "sync your clock", now=now)
    assert "5 minutes" in message


def test_replay_of_a_valid_request_six_minutes_later() -> None:
    moment = int(time.time())
    request = signed("POST", "/20190101/projects", json.dumps({"a": 1}), date=email.utils.formatdate(moment, usegmt=True))
    assert verify(request) == PRINCIPAL
    refused(request, "6 minutes off", now=datetime.fromtimestamp(moment, timezone.utc) + timedelta(minutes=6))


def test_date_from_the_future_is_refused_too() -> None:
    moment = int(time.time())
    request = signed("GET", "/20190101/projects", date=email.utils.formatdate(moment + 3 * 3600, usegmt=True))
    refused(request, "3 hours off", "ahead of", now=datetime.fromtimestamp(moment, timezone.utc))


def test_date_within_five_minutes_is_accepted() -> None:
    request = signed("GET", "/20190101/projects", date=email.utils.formatdate(time.time() - 240, usegmt=True))
    assert verify(request) == PRINCIPAL


def test_unparseable_date() -> None:
    request = signed("GET", "/20190101/projects", date="yesterday")
    refused(request, "header date 'yesterday' is not an HTTP date")


@pytest.mark.parametrize(
    "authorization, fragment",
    [
        ("Bearer abc", "its scheme is 'Bearer'"),
        ("Signature", "it has no keyId"),
        ('Signature keyId="a/b/c"', "it has no signature"),
        ('Signature keyId="x",signature="abc', "cannot read a name"),
        ('Signature keyId="x",keyId="y",signature="AAAA"', "keyId appears twice"),
        ('Signature keyId="x",signature="not base64!"', "not base64"),
        ('Signature algorithm="hmac-sha256",keyId="x",signature="AAAA"', "algorithm 'hmac-sha256' is not supported"),
        ('Signature version="2",keyId="x",signature="AAAA"', "version '2' is not supported"),
        ('Signature headers="date host",keyId="only-one-part",signature="AAAA"', "is not <tenancy OCID>/<user OCID>/<fingerprint>"),
        ('Signature headers="date",keyId="t/u/not-a-fingerprint",signature="AAAA"', "is not 16 colon-separated hex bytes"),
        ('Signature headers="date",keyId="ST$eyJhbGciOi",signature="AAAA"', "session-token signatures"),
    ],
)
def test_malformed_authorization_header(authorization: str, fragment: str) -> None:
    request = signed("GET", "/20190101/projects")
    request.headers["authorization"] = authorization
    refused(request, fragment)


def test_unsigned_request() -> None:
    request = signed("GET", "/20190101/projects")
    del request.headers["authorization"]
    refused(request, "the request is not signed")


def test_verifier_caches_keys_but_forgets_deleted_ones_after_the_ttl() -> None:
    calls: list[KeyId] = []
    table = dict(REGISTERED)

    def counting(key_id: KeyId) -> RegisteredKey | None:
        calls.append(key_id)
        return table.get(key_id)

    verifier = Verifier(counting, cache_ttl_s=60)
    request = signed("GET", "/20190101/projects")
    method, path, headers, _ = received(request)
    for _ in range(3):
        assert verifier(method, path, headers, body_headers_required=False) == PRINCIPAL
    assert len(calls) == 1
    table.clear()  # the key is deleted
    verifier.forget()
    with pytest.raises(NotAuthenticated, match="is not registered"):
        verifier(method, path, headers, body_headers_required=False)


def test_verifier_uses_its_clock() -> None:
    request = signed("GET", "/20190101/projects")
    method, path, headers, _ = received(request)
    late = Verifier(lookup, clock=lambda: datetime.now(timezone.utc) + timedelta(minutes=7))
    with pytest.raises(NotAuthenticated, match="date is 7 minutes off the server's clock"):
        late(method, path, headers, body_headers_required=False)


def test_dockyards_own_signer_is_accepted_by_the_sdks_verifier() -> None:
    """sign_request (used by dockyard's CLI) produces what OCI's vendored verifier accepts."""
    from oci._vendor.httpsig_cffi.verify import HeaderVerifier

    headers = {"date": email.utils.formatdate(usegmt=True), "host": HOST, "content-type": "application/json"}
    names = ["date", "(request-target)", "host"]
    headers["authorization"] = sign_request("GET", "/20190101/projects?limit=1", headers, f"{TENANCY}/{USER}/{FP}", KEY, names)
    checker = HeaderVerifier(headers, keys.public_pem(KEY.public_key()), names, "GET", "/20190101/projects?limit=1", HOST)
    assert checker.verify()


# --- what is remembered between requests ---------------------------------------------------------


def test_a_malformed_authorization_is_refused_every_time_with_the_same_message() -> None:
    request = signed("GET", "/20190101/projects")
    request.headers["authorization"] = 'Signature keyId="x",signature="not base64!"'
    assert refused(request, "not base64") == refused(request, "not base64")


def test_a_parsed_authorization_is_the_same_whether_remembered_or_not() -> None:
    value = str(signed("POST", "/dep/predict", '{"a": 1}').headers["authorization"])
    first, again = parse_authorization(value), parse_authorization(value)
    assert first == again and first.headers == ("date", "(request-target)", "host", "content-length", "content-type", "x-content-sha256")
    padded = value + "," + ",".join(f'x{i}="{"y" * 40}"' for i in range(100))  # longer than any real signature
    assert len(padded) > 4096 and parse_authorization(padded) == first


def test_headers_with_upper_case_names_verify() -> None:
    method, path, headers, body = received(signed("POST", "/dep/predict", '{"a": 1}'))
    mixed = {name.title(): value for name, value in headers.items()}
    assert Verifier(lookup)(method, path, mixed, body_sha256_b64=body_sha256(body), body_length=len(body),
                            body_headers_required=True) == PRINCIPAL  # fmt: skip


def test_concurrent_requests_for_an_uncached_key_read_it_once() -> None:
    import threading

    calls: list[KeyId] = []
    gate = threading.Event()

    def slow(key_id: KeyId) -> RegisteredKey | None:
        calls.append(key_id)
        assert gate.wait(5)
        return REGISTERED.get(key_id)

    verifier = Verifier(slow)
    method, path, headers, _ = received(signed("GET", "/20190101/projects"))
    answers: list[object] = []

    def call() -> None:
        answers.append(verifier(method, path, headers, body_headers_required=False))

    threads = [threading.Thread(target=call) for _ in range(8)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 5
    while not (calls and len(verifier._flights) == 1) and time.monotonic() < deadline:
        time.sleep(0.005)
    time.sleep(0.05)  # the others reach the wait
    gate.set()
    for thread in threads:
        thread.join(5)
    assert answers == [PRINCIPAL] * 8
    assert len(calls) == 1


def test_when_a_shared_key_read_fails_each_waiter_reads_for_itself() -> None:
    import threading

    calls: list[str] = []
    gate = threading.Event()
    first = threading.Event()

    def flaky(key_id: KeyId) -> RegisteredKey | None:
        if not calls:
            calls.append("failing")
            first.set()
            assert gate.wait(5)
            raise RuntimeError("database is locked")
        calls.append("ok")
        return REGISTERED.get(key_id)

    verifier = Verifier(flaky)
    method, path, headers, _ = received(signed("GET", "/20190101/projects"))
    outcomes: list[object] = []

    def call() -> None:
        try:
            outcomes.append(verifier(method, path, headers, body_headers_required=False))
        except RuntimeError as exc:
            outcomes.append(str(exc))

    leader = threading.Thread(target=call)
    leader.start()
    assert first.wait(5)
    followers = [threading.Thread(target=call) for _ in range(3)]
    for thread in followers:
        thread.start()
    time.sleep(0.05)  # the followers wait for the leader's read
    gate.set()
    for thread in [leader, *followers]:
        thread.join(5)
    assert sorted(map(str, outcomes)) == sorted(["database is locked"] + [str(PRINCIPAL)] * 3)
    assert calls[0] == "failing" and 1 <= calls.count("ok") <= 3


# --- the SDK's template, read in one match ----------------------------------------------------------


def test_what_the_sdk_and_dockyards_signer_send_is_read_in_one_match_with_the_same_result() -> None:
    from dockyard.auth.signing import _parse_pairs, _sdk_template

    headers = {"date": email.utils.formatdate(usegmt=True), "host": HOST}
    values = [
        str(signed("POST", "/dep/predict", '{"a": 1}').headers["authorization"]),
        str(signed("GET", "/20190101/projects").headers["authorization"]),
        sign_request("GET", "/20190101/projects", headers, f"{TENANCY}/{USER}/{FP}", KEY, ["date", "(request-target)", "host"]),
    ]
    for value in values:
        fast = _sdk_template(value)
        assert fast is not None, value
        assert fast == _parse_pairs(value)


@pytest.mark.parametrize(
    "variant, refusal",
    [
        (lambda v: v.replace('headers="date', 'headers="date date', 1), "names a header twice"),
        (lambda v: v.replace('",version="1"', 'A",version="1"'), "not base64"),  # padding no longer fits
        (lambda v: v.replace('headers="date', 'headers="Date', 1), None),  # upper case: read pair by pair, alike
        (lambda v: v.replace(",keyId=", ", keyId=", 1), None),  # a space between pairs: the same
        (lambda v: " " + v + " ", None),
        (lambda v: v.replace("Signature ", "signature ", 1), None),
        (lambda v: v.replace('version="1"', 'version="2"'), "version '2' is not supported"),
        (lambda v: v.replace('algorithm="rsa-sha256"', 'algorithm="RSA-SHA256"'), None),
    ],
)
def test_any_other_spelling_is_read_pair_by_pair_and_refused_or_accepted_as_before(variant: Any, refusal: str | None) -> None:
    from dockyard.auth.signing import _parse_pairs, _sdk_template

    value = variant(str(signed("POST", "/dep/predict", '{"a": 1}').headers["authorization"]))
    assert _sdk_template(value) is None
    if refusal is None:
        assert parse_authorization(value) == _parse_pairs(value)
    else:
        with pytest.raises(NotAuthenticated, match=refusal):
            parse_authorization(value)

"""What checking a signed request costs the gateway, in-process: CPU per request of
`SignatureAuthMiddleware` around a trivial ASGI app, and of the predict authorization hook.

    .venv/bin/python benchmarks/signature_cost.py [--requests 20000] [--rounds 5] [--concurrency 64]

Requests are signed by `oci.signer.Signer` exactly as the SDK sends them and handed to the
middleware as uvicorn would (lower-case header names, raw path). CPU is the process's
(`time.process_time`, every thread), so lookups run in worker threads are counted too; the best
of `--rounds` rounds is printed, in µs per request:

- unsigned passthrough: no Authorization header, `allow_unsigned` (the floor: scope handling);
- signed GET / signed POST with body: the same signed request again and again (what wrk sends),
  so the key and the verified signature are cached;
- signed POST, each signed anew: `--distinct` requests with signatures of their own, as SDK
  clients send them, so the RSA check runs for each;
- signed POST, key expired: `--concurrency` requests arrive together just after the key's cache
  entry expired (what every key-cache expiry costs under load);
- authorization cached: a fresh predict decision;
- authorization expired: `--concurrency` predicts arrive together just after the decision
  expired, the policy read by SQLite as in a server.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import oci
import requests
from sqlalchemy import create_engine

from dockyard.auth import keys
from dockyard.auth.access_store import AccessStore, PolicyAuthorizer
from dockyard.auth.identity import Principal
from dockyard.auth.middleware import SignatureAuthMiddleware
from dockyard.auth.principals import PrincipalStore
from dockyard.auth.verifier import Verifier
from dockyard.auth.predict_authorization import PredictAuthorization
from dockyard.service.access import Access

HOST = "127.0.0.1:8081"
PATH = "/ocid1.datasciencemodeldeployment.oc1.iad.amaaaaaabenchmarkdeployment/predict"
BODY = b'{"instances": [[5.1, 3.5, 1.4, 0.2], [6.2, 2.9, 4.3, 1.3]]}'

Scope = dict[str, Any]


def sdk_request(method: str, body: bytes | None, key: Any, key_id: tuple[str, str, str], number: int = 1) -> requests.PreparedRequest:
    """A request as the oci SDK prepares and signs it (JSON content type on every operation)."""
    headers = {"accept": "application/json", "content-type": "application/json", "opc-request-id": f"BENCH{number:010d}"}
    prepared = requests.Request(method, f"http://{HOST}{PATH}", data=body, headers=headers).prepare()
    tenancy, user, fingerprint = key_id
    signer = oci.signer.Signer(tenancy, user, fingerprint, None, private_key_content=keys.private_pem(key).decode())
    signer(prepared)
    return prepared


def scope_of(prepared: requests.PreparedRequest | None, method: str = "GET") -> Scope:
    """The ASGI scope uvicorn builds: lower-case header names, what `requests` adds on the wire too."""
    wire = {"host": HOST, "user-agent": "Oracle-PythonSDK/2.0", "accept-encoding": "gzip, deflate", "connection": "keep-alive"}
    if prepared is not None:
        wire |= {k.lower(): str(v) for k, v in prepared.headers.items()}
        method = prepared.method or method
    headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in wire.items()]
    return {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
        "path": PATH, "raw_path": PATH.encode(), "query_string": b"", "root_path": "",
        "headers": headers, "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 8081),
    }  # fmt: skip


async def trivial_app(scope: Scope, receive: Callable[[], Awaitable[dict[str, Any]]], send: Any) -> None:
    """Reads the body and answers 200: what the middleware hands requests to."""
    while True:
        message = await receive()
        if message["type"] != "http.request" or not message.get("more_body", False):
            break
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"{}", "more_body": False})


async def drive(app: Any, template: Scope, body: bytes) -> None:
    """One request through `app`; the reply must be a 200."""
    status: list[int] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            status.append(message["status"])

    await app(dict(template), receive, send)
    assert status == [200], f"the middleware answered {status}"


def cpu_per_call(run: Callable[[], Awaitable[int]], rounds: int) -> float:
    """The best round's process CPU per call (µs); `run` returns how many calls it made."""
    best = float("inf")
    for _ in range(rounds):
        started = time.process_time()
        calls = asyncio.run(run())
        best = min(best, (time.process_time() - started) / calls)
    return best * 1e6


def middleware_cases(args: argparse.Namespace, principals: PrincipalStore) -> list[tuple[str, float]]:
    key = keys.generate_private_key()
    tenancy = principals.create_tenancy("signers")
    user = principals.create_user("signer", tenancy.id)
    fingerprint = principals.add_key(user.id, keys.public_pem(key.public_key())).fingerprint
    key_id = (tenancy.id, user.id, fingerprint)
    unsigned = scope_of(None, "POST")
    get, post = scope_of(sdk_request("GET", None, key, key_id)), scope_of(sdk_request("POST", BODY, key, key_id))
    # Requests an SDK client sends one after another: each has its own signature (another body,
    # another date), so nothing remembered from another request applies and the RSA check runs each time.
    bodies = [BODY[:-1] + b', "n": %d}' % number for number in range(args.distinct)]
    anew = [(scope_of(sdk_request("POST", body, key, key_id, number)), body) for number, body in enumerate(bodies)]
    assert len({dict(scope["headers"])[b"authorization"] for scope, _ in anew}) == len(anew)

    def steady(template: Scope, body: bytes, allow_unsigned: bool = False) -> Callable[[], Awaitable[int]]:
        async def run() -> int:
            app = SignatureAuthMiddleware(trivial_app, Verifier(principals.lookup_key), allow_unsigned=allow_unsigned)
            await drive(app, template, body)  # the first one looks the key up and checks the RSA signature
            for _ in range(args.requests):
                await drive(app, template, body)
            return args.requests

        return run

    def distinct(signed: list[tuple[Scope, bytes]]) -> Callable[[], Awaitable[int]]:
        async def run() -> int:
            app = SignatureAuthMiddleware(trivial_app, Verifier(principals.lookup_key))
            for template, body in signed:
                await drive(app, template, body)
            return len(signed)

        return run

    def key_expired(template: Scope, body: bytes) -> Callable[[], Awaitable[int]]:
        async def run() -> int:
            verifier = Verifier(principals.lookup_key)
            app = SignatureAuthMiddleware(trivial_app, verifier)
            bursts = max(1, args.requests // (args.concurrency * 20))
            for _ in range(bursts):
                verifier.forget()  # the cached key (and the signatures verified with it) expired just now
                await asyncio.gather(*(drive(app, template, body) for _ in range(args.concurrency)))
            return bursts * args.concurrency

        return run

    return [
        ("unsigned passthrough", cpu_per_call(steady(unsigned, BODY, allow_unsigned=True), args.rounds)),
        ("signed GET", cpu_per_call(steady(get, b""), args.rounds)),
        ("signed POST with body", cpu_per_call(steady(post, BODY), args.rounds)),
        ("signed POST, each signed anew", cpu_per_call(distinct(anew), args.rounds)),
        (f"signed POST, key expired, {args.concurrency} at once", cpu_per_call(key_expired(post, BODY), args.rounds)),
    ]


def authorization_cases(args: argparse.Namespace, principals: PrincipalStore, store: AccessStore) -> list[tuple[str, float]]:
    home = principals.create_tenancy("home")
    user = principals.create_user("u", home.id)
    compartments = [store.create_compartment(home.id, f"c{i}") for i in range(10)]
    for g in range(5):
        store.create_group(home.id, f"g{g}")
        store.add_member(home.id, f"g{g}", user.id)
        store.add_statement(home.id, f"allow group g{g} to use data-science-family in compartment c{g}")
    caller = Principal(user_id=user.id, tenancy_id=home.id, fingerprint="aa:" * 15 + "aa")
    access = Access(PolicyAuthorizer(store))
    target = compartments[4].id

    async def cached() -> int:
        predict = PredictAuthorization(access, ttl_s=3600)
        assert await predict(caller, target)
        for _ in range(args.requests):
            await predict(caller, target)
        return args.requests

    async def expired() -> int:
        now = [0.0]
        predict = PredictAuthorization(access, ttl_s=2.0, clock=lambda: now[0])
        bursts = max(1, args.requests // (args.concurrency * 20))
        for _ in range(bursts):
            now[0] += 10.0  # the decision expired just now
            answers = await asyncio.gather(*(predict(caller, target) for _ in range(args.concurrency)))
            assert all(answers)
        return bursts * args.concurrency

    return [
        ("authorization cached", cpu_per_call(cached, args.rounds)),
        (f"authorization expired, {args.concurrency} at once", cpu_per_call(expired, args.rounds)),
    ]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--distinct", type=int, default=1500, help="differently signed requests (more than are remembered)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:  # keys and policies in SQLite, as in a server
        engine = create_engine(f"sqlite:///{Path(tmp) / 'bench.db'}")
        principals, store = PrincipalStore(engine), AccessStore(engine)
        results = middleware_cases(args, principals) + authorization_cases(args, principals, store)
    width = max(len(name) for name, _ in results) + 2
    print(f"{'case':<{width}}{'CPU µs/request':>16}")
    for name, micros in results:
        print(f"{name:<{width}}{micros:>16.1f}")


if __name__ == "__main__":
    main()

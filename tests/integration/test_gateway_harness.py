"""Real upstream model servers and a real SQLite store for the gateway tests.

Every upstream is a real HTTP server on 127.0.0.1 (uvicorn in a thread, or a raw socket server
for replies no framework would send); deployments and their instance rows go into a real
`SqlMetadataStore`, exactly as the control plane and the reconciler write them. The other
`test_gateway_*` modules import the fixtures from here; the tests below check the harness.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import parse_qs

import httpx
import pytest
import uvicorn

from dockyard.gateway import Gateway, create_gateway
from dockyard.store.metadata import InstanceRecord, Record, SqlMetadataStore, now_iso
from tests.support.raw_server import read_request

Scope = dict[str, Any]


# --- upstream apps --------------------------------------------------------------------------------


async def _read_body(receive: Any) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


async def _reply(
    send: Any, status: int, body: bytes, content_type: bytes, extra: list[tuple[bytes, bytes]] | None = None
) -> None:
    headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode()), *(extra or [])]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def echo_app(name: str) -> Callable[..., Any]:
    """Echoes method, path, query, headers and body as JSON; a few paths behave differently.

    /status/<code>  answers that status with a JSON error of its own
    /octet          answers application/octet-stream bytes
    /text           answers application/text
    /chunked        streams 3 chunks with no Content-Length
    /big?n=         streams n bytes in 64 KiB chunks
    """

    async def app(scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        path = scope["path"]
        query = parse_qs(scope["query_string"].decode())
        body = await _read_body(receive)
        if path.startswith("/status/"):
            code = int(path.rsplit("/", 1)[1])
            await _reply(send, code, json.dumps({"error": f"model says {code}", "server": name}).encode(), b"application/json")
            return
        if path == "/octet":
            await _reply(send, 200, bytes(range(256)) + body, b"application/octet-stream")
            return
        if path == "/text":
            await _reply(send, 200, b"plain words from " + name.encode(), b"application/text")
            return
        if path == "/chunked":
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/x-ndjson")]})
            for i in range(3):
                await send({"type": "http.response.body", "body": json.dumps({"i": i}).encode() + b"\n", "more_body": True})
            await send({"type": "http.response.body", "body": b""})
            return
        if path == "/big":
            size = int(query.get("n", ["1048576"])[0])
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/octet-stream"),
                        (b"content-length", str(size).encode())]})  # fmt: skip
            sent = 0
            while sent < size:
                part = min(65536, size - sent)
                sent += part
                await send({"type": "http.response.body", "body": b"x" * part, "more_body": sent < size})
            return
        document = {
            "server": name,
            "method": scope["method"],
            "path": path,
            "raw_path": (scope.get("raw_path") or b"").decode("latin-1"),
            "query": scope["query_string"].decode(),
            "headers": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in scope["headers"]],
            "body_b64": base64.b64encode(body).decode(),
            "body_len": len(body),
            "client_port": (scope.get("client") or ("", 0))[1],  # tells connections apart
        }
        await _reply(send, 200, json.dumps(document).encode(), b"application/json", [(b"x-upstream", name.encode()),
                     (b"set-cookie", b"session=secret; Path=/")])  # fmt: skip

    return app


async def c4_app(scope: Scope, receive: Any, send: Any) -> None:
    """`/predict` and `/predict/` answer differently, as real containers do (C4)."""
    if scope["type"] != "http":
        return
    await _read_body(receive)
    if scope["path"] == "/predict":
        await _reply(send, 200, b'{"endpoint": "no-slash"}', b"application/json")
    elif scope["path"] == "/predict/":
        await _reply(send, 201, b'{"endpoint": "slash"}', b"application/json")
    else:
        await _reply(send, 404, b'{"endpoint": "unknown"}', b"application/json")


class SseApp:
    """Streams `n` server-sent events `delay_s` apart and records when each left."""

    def __init__(self) -> None:
        self.sent_at: dict[str, list[float]] = {}
        self.gone_at: dict[str, float] = {}  # when the gateway closed the connection mid-stream

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await _read_body(receive)
        query = parse_qs(scope["query_string"].decode())
        count = int(query.get("n", ["5"])[0])
        delay = float(query.get("delay", ["0.2"])[0])
        key = query.get("key", ["-"])[0]
        if scope["path"] == "/json":  # a plain, non-streaming reply
            await _reply(send, 200, b'{"not": "a stream"}', b"application/json")
            return
        times = self.sent_at.setdefault(key, [])
        gone = asyncio.Event()

        async def watch() -> None:
            if (await receive())["type"] == "http.disconnect":
                self.gone_at[key] = time.monotonic()
                gone.set()

        watcher = asyncio.create_task(watch())
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]})  # fmt: skip
        for i in range(count):
            if gone.is_set():
                return
            times.append(time.monotonic())
            await send({"type": "http.response.body", "body": f'data: {{"token": {i}}}\n\n'.encode(), "more_body": True})
            if i < count - 1:
                await asyncio.sleep(delay)
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n"})
        watcher.cancel()


async def slow_app(scope: Scope, receive: Any, send: Any) -> None:
    """Waits `?s=` seconds before answering."""
    if scope["type"] != "http":
        return
    await _read_body(receive)
    seconds = float(parse_qs(scope["query_string"].decode()).get("s", ["5"])[0])
    await asyncio.sleep(seconds)
    await _reply(send, 200, b'{"slow": true}', b"application/json")


async def garbage_app(scope: Scope, receive: Any, send: Any) -> None:
    """Answers bytes that are not JSON under a content type of its own, with an odd status."""
    if scope["type"] != "http":
        return
    await _read_body(receive)
    await _reply(send, 207, b"\x00\xff<html>not json}", b"application/x-garbage; charset=binary")


class TritonApp:
    """The parts of Triton's HTTP API the gateway uses: repository index and infer."""

    def __init__(self, models: list[str]) -> None:
        self.models = models

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = await _read_body(receive)
        path = scope["path"]
        if path == "/v2/repository/index" and scope["method"] == "POST":
            index = [{"name": m, "version": "1", "state": "READY"} for m in self.models]
            await _reply(send, 200, json.dumps(index).encode(), b"application/json")
        elif path.startswith("/v2/models/") and path.endswith("/infer"):
            parts = path.split("/")
            name = parts[3]
            version = parts[5] if len(parts) > 6 and parts[4] == "versions" else None
            if name not in self.models:
                await _reply(send, 400, json.dumps({"error": f"Request for unknown model: '{name}' is not found"}).encode(),
                             b"application/json")  # fmt: skip
                return
            request = json.loads(body or b"{}")
            await _reply(send, 200, json.dumps({"model_name": name, "model_version": version or "1",
                         "outputs": [{"name": "echo", "data": request.get("inputs", [])}]}).encode(),  # fmt: skip
                         b"application/json")  # fmt: skip
        else:
            await _reply(send, 404, json.dumps({"error": f"no route {path}"}).encode(), b"application/json")


# --- servers --------------------------------------------------------------------------------------


def _bound_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


def dead_port() -> int:
    """A port nothing listens on: connecting to it is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class ThreadServer:
    """A uvicorn server on 127.0.0.1 in a thread of its own."""

    app: Any
    lifespan: Literal["auto", "on", "off"] = "off"
    port: int = 0
    _server: uvicorn.Server | None = None
    _thread: threading.Thread | None = None

    def start(self) -> ThreadServer:
        sock = _bound_socket()
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.app,
            log_level="warning",
            lifespan=self.lifespan,
            access_log=False,
            timeout_keep_alive=30,
            timeout_graceful_shutdown=2,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]}, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("a test upstream did not start within 10 s")
            time.sleep(0.01)
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self, wait: bool = True) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if wait and self._thread is not None:
            self._thread.join(10)


class CutServer:
    """Raw HTTP/1.1 server that starts a reply and closes the connection half way.

    /sse     : text/event-stream, two events, then the socket closes (no final chunk)
    /length  : Content-Length 1000, 10 bytes, then the socket closes
    /reset   : closes at once without a reply
    """

    def __init__(self) -> None:
        self._sock = _bound_socket()
        self.port = self._sock.getsockname()[1]
        self._sock.listen(64)
        self._stop = False
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def start(self) -> CutServer:
        self._thread.start()
        return self

    def _serve(self) -> None:
        self._sock.settimeout(0.2)
        while not self._stop:
            try:
                conn, _ = self._sock.accept()
            except (TimeoutError, OSError):
                continue
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        with conn:
            request = read_request(conn)
            if request is None:
                return
            path = request[0].split(b" ")[1]
            if path.startswith(b"/sse"):
                conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
                for i in range(2):
                    event = f"data: {i}\n\n".encode()
                    conn.sendall(f"{len(event):x}\r\n".encode() + event + b"\r\n")
                    time.sleep(0.05)
            elif path.startswith(b"/length"):
                conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n" + b"0123456789")
                time.sleep(0.05)
            # /reset and anything else: close without a word
            with contextlib.suppress(OSError):  # the gateway may have hung up first
                conn.shutdown(socket.SHUT_RDWR)

    def stop(self) -> None:
        self._stop = True
        self._thread.join(5)
        self._sock.close()


@dataclass
class Upstreams:
    echo: list[ThreadServer]
    c4: ThreadServer
    sse: ThreadServer
    sse_app: SseApp
    slow: ThreadServer
    garbage: ThreadServer
    triton_one: ThreadServer
    triton_many: ThreadServer
    cut: CutServer


@pytest.fixture(scope="session")
def upstreams() -> Iterator[Upstreams]:
    sse_app = SseApp()
    servers = Upstreams(
        echo=[ThreadServer(echo_app(name)).start() for name in ("A", "B", "C")],
        c4=ThreadServer(c4_app).start(),
        sse=ThreadServer(sse_app).start(),
        sse_app=sse_app,
        slow=ThreadServer(slow_app).start(),
        garbage=ThreadServer(garbage_app).start(),
        triton_one=ThreadServer(TritonApp(["densenet_onnx"])).start(),
        triton_many=ThreadServer(TritonApp(["simple", "ensemble"])).start(),
        cut=CutServer().start(),
    )
    yield servers
    threaded = [*servers.echo, servers.c4, servers.sse, servers.slow, servers.garbage, servers.triton_one, servers.triton_many]
    for server in threaded:  # all at once: each may wait out its open connections
        server.stop(wait=False)
    for server in threaded:
        server.stop()
    servers.cut.stop()


# --- the store ------------------------------------------------------------------------------------


@dataclass
class Deployments:
    """Writes deployments and instance rows the way the control plane and reconciler do."""

    store: SqlMetadataStore
    created: list[str] = field(default_factory=list)

    def add(
        self,
        ports: list[int],
        *,
        state: str = "ACTIVE",
        variables: dict[str, str] | None = None,
        custom: list[dict[str, Any]] | None = None,
        health: str = "HEALTHY",
        extra_env: dict[str, Any] | None = None,
    ) -> str:
        deployment_id = f"ocid1.datasciencemodeldeployment.oc1.local.{uuid.uuid4().hex}"
        env: dict[str, Any] = {
            "environmentConfigurationType": "OCIR_CONTAINER",
            "image": "local/model:1",
            "serverPort": 8080,
            "environmentVariables": variables or {},
        }
        if custom is not None:
            env["customHttpEndpoints"] = custom
        env.update(extra_env or {})
        body = {
            "id": deployment_id,
            "compartmentId": "ocid1.compartment.oc1..test",
            "projectId": "ocid1.datascienceproject.oc1.local.test",
            "displayName": "gateway test",
            "lifecycleState": state,
            "timeCreated": now_iso(),
            "modelDeploymentUrl": f"http://gw/{deployment_id}",
            "modelDeploymentConfigurationDetails": {
                "deploymentType": "SINGLE_MODEL",
                "modelConfigurationDetails": {"modelId": "ocid1.datasciencemodel.oc1.local.m",
                                              "instanceConfiguration": {"instanceShapeName": "VM.Standard.E4.Flex"}},
                "environmentConfigurationDetails": env,
            },
        }  # fmt: skip
        self.store.insert(Record(id=deployment_id, kind="modeldeployment", body=body))
        self.set_instances(deployment_id, ports, health=health)
        self.created.append(deployment_id)
        return deployment_id

    def set_instances(self, deployment_id: str, ports: list[int], health: str = "HEALTHY", probe_time: str | None = None) -> None:
        self.store.replace_instances(
            deployment_id,
            [
                InstanceRecord(
                    instance_id=f"{deployment_id[-6:]}-i{n}-{port}",
                    deployment_id=deployment_id,
                    spec_hash="h",
                    runtime="process",
                    state="RUNNING",
                    health=health,
                    host="127.0.0.1",
                    server_port=port,
                    health_port=port,
                    time_started=now_iso(),
                    time_last_probe=probe_time or now_iso(),
                )
                for n, port in enumerate(ports)
            ],
        )

    def set_state(self, deployment_id: str, state: str) -> None:
        def change(record: Record) -> Record:
            record.body["lifecycleState"] = state
            return record

        self.store.mutate(deployment_id, "modeldeployment", "deployment", change)


@pytest.fixture(scope="session")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SqlMetadataStore]:
    """One store for the session: every test adds deployments of its own (ids are unique)."""
    metadata = SqlMetadataStore(f"sqlite:///{tmp_path_factory.mktemp('gateway')}/db.sqlite")
    yield metadata
    metadata.close()


@pytest.fixture
def deployments(store: SqlMetadataStore) -> Deployments:
    return Deployments(store)


# Gateways `client_for` reaches over real HTTP through dockyard's own server (the gateway role's,
# which relays the commonest predict without the ASGI call: gateway/direct.py), by id.
_OWN_SERVER: set[int] = set()


@pytest.fixture(params=["asgi", "own server"])
async def gateway(store: SqlMetadataStore, request: pytest.FixtureRequest) -> Any:
    """A gateway, reached by `client_for` in-process (ASGI) or through dockyard's own server."""
    app = create_gateway(store, route_cache_ttl_s=0.05)
    if request.param == "own server":
        _OWN_SERVER.add(id(app))
    yield app
    _OWN_SERVER.discard(id(app))
    await app.aclose()


def client_for(app: Gateway) -> Any:
    """An httpx client of `app` (`async with client_for(app) as client`): in-process, or over
    real HTTP through dockyard's own server when the `gateway` fixture says so."""
    if id(app) in _OWN_SERVER:
        return OwnServerClient(app)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway.test", timeout=30)


class _HttpOnly:
    """The app for every HTTP request, without its lifespan: the fixture closes the gateway.
    Counts the requests that reached the ASGI call (the rest were relayed by `direct`)."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.direct = getattr(app, "direct", None)
        self.asgi_calls = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            self.asgi_calls += 1
            await self.app(scope, receive, send)
        elif scope["type"] == "lifespan":
            raise RuntimeError("no lifespan here")  # tolerated: the server goes on without one


class OwnServerClient:
    """dockyard's HTTP server serving `app` on this event loop, and an httpx client of it."""

    def __init__(self, app: Any, **options: Any) -> None:
        from dockyard.gateway.httpserver import HttpServer

        self.app = _HttpOnly(app)
        self.server = HttpServer(self.app, **options)
        self.client: httpx.AsyncClient | None = None

    async def __aenter__(self) -> httpx.AsyncClient:
        await self.server.start(host="127.0.0.1", port=0)
        self.client = httpx.AsyncClient(base_url=f"http://127.0.0.1:{self.server.port}", timeout=30)
        return self.client

    async def __aexit__(self, *exc: object) -> None:
        assert self.client is not None
        await self.client.aclose()
        await self.server.stop(graceful_s=5)


# --- the harness itself ---------------------------------------------------------------------------


def test_upstreams_answer_directly(upstreams: Upstreams) -> None:
    reply = httpx.post(upstreams.echo[0].url + "/predict", content=b"hi")
    assert reply.json()["server"] == "A" and reply.json()["body_len"] == 2
    assert httpx.post(upstreams.c4.url + "/predict/").json() == {"endpoint": "slash"}
    with pytest.raises(httpx.ConnectError):
        httpx.post(f"http://127.0.0.1:{dead_port()}/predict")


def test_deployments_land_in_the_store(deployments: Deployments, store: SqlMetadataStore) -> None:
    deployment_id = deployments.add([1234, 1235])
    assert store.get(deployment_id, "modeldeployment").state == "ACTIVE"  # type: ignore[union-attr]
    instances: list[InstanceRecord] = store.list_instances(deployment_id)  # type: ignore[assignment]
    assert [i.server_port for i in instances] == [1234, 1235]

"""RegistryClient against a real registry (Debian's docker-registry, distribution 2.8).

Three registries share one storage folder, so content pushed to the open one is visible
through the others: one open, one with htpasswd Basic auth, one with Bearer token auth
served by a small token service in this file. No Docker engine is needed: test images are
pushed through the distribution API (blob uploads, then a manifest under a tag).
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import http.server
import json
import os
import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

from dockyard.errors import InvalidParameter, ServiceUnavailable
from dockyard.registry import RegistryClient, parse_image_reference

pytestmark = pytest.mark.integration

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
FORMATS = {
    "oci": (OCI_MANIFEST, OCI_CONFIG, OCI_LAYER, OCI_INDEX),
    "docker": (DOCKER_MANIFEST, DOCKER_CONFIG, DOCKER_LAYER, DOCKER_LIST),
}
USER, PASSWORD = "deployer", "s3cret-pass"
TOKEN_SERVICE, TOKEN_ISSUER = "dockyard-test-registry", "dockyard-test-token-issuer"


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- registries --------------------------------------------------------------------------------


@dataclass
class Registry:
    host: str  # 127.0.0.1:PORT, as it appears in image references
    process: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"http://{self.host}"


def _ensure_installed() -> None:
    if shutil.which("docker-registry") and shutil.which("htpasswd"):
        return
    install = [
        "apt-get",
        "install",
        "-y",
        "--no-install-recommends",
        "docker-registry",
        "apache2-utils",
    ]
    if subprocess.run(install, capture_output=True, timeout=900).returncode != 0:
        subprocess.run(["apt-get", "update"], capture_output=True, timeout=900)
        subprocess.run(install, capture_output=True, timeout=900)
    if not (shutil.which("docker-registry") and shutil.which("htpasswd")):
        pytest.fail(
            "needs Debian's docker-registry and apache2-utils: "
            "apt-get install -y docker-registry apache2-utils"
        )


def _start_registry(workdir: Path, storage: Path, extra_config: str) -> Registry:
    workdir.mkdir(parents=True, exist_ok=True)
    for _attempt in range(3):  # the free port may be taken between probe and bind
        port = _free_port()
        config = workdir / "config.yml"
        config.write_text(
            "version: 0.1\n"
            "log: {level: warn}\n"
            f"storage: {{filesystem: {{rootdirectory: {storage}}}, delete: {{enabled: true}}}}\n"
            f"http: {{addr: 127.0.0.1:{port}}}\n" + extra_config
        )
        log = (workdir / "registry.log").open("wb")
        process = subprocess.Popen(
            ["docker-registry", "serve", str(config)], stdout=log, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and process.poll() is None:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/v2/", timeout=1).status_code in (200, 401):
                    return Registry(f"127.0.0.1:{port}", process)
            except httpx.HTTPError:
                time.sleep(0.05)
        process.terminate()
        process.wait(10)
    pytest.fail(f"docker-registry did not start: {(workdir / 'registry.log').read_text()}")


def _stop(registry: Registry) -> None:
    registry.process.terminate()
    try:
        registry.process.wait(10)
    except subprocess.TimeoutExpired:
        registry.process.kill()
        registry.process.wait()


@pytest.fixture(scope="module")
def storage(tmp_path_factory: pytest.TempPathFactory) -> Path:
    _ensure_installed()
    return tmp_path_factory.mktemp("registry-storage")


@pytest.fixture(scope="module")
def open_registry(storage: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    registry = _start_registry(tmp_path_factory.mktemp("open"), storage, "")
    yield registry
    _stop(registry)


@pytest.fixture(scope="module")
def basic_registry(storage: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    workdir = tmp_path_factory.mktemp("basic")
    htpasswd = subprocess.run(
        ["htpasswd", "-Bbn", USER, PASSWORD], check=True, capture_output=True
    ).stdout
    (workdir / "htpasswd").write_bytes(htpasswd)
    registry = _start_registry(
        workdir,
        storage,
        f"auth: {{htpasswd: {{realm: dockyard-test, path: {workdir / 'htpasswd'}}}}}\n",
    )
    yield registry
    _stop(registry)


# --- a Bearer token service, as Docker Hub / OCIR / Harbor run one --------------------------------


class TokenService:
    """Issues registry JWTs (RS256, certificate in x5c) to ``USER``; anonymous callers get a
    token with no access; wrong passwords get 401."""

    def __init__(self, workdir: Path) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dockyard test token signer")])
        now = dt.datetime.now(dt.UTC)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        self.cert_path = workdir / "token-signer.pem"
        self.cert_path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))
        self.requests: list[dict[str, list[str]]] = []
        service = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                query = parse_qs(urlparse(self.path).query)
                service.requests.append(query)
                status, body = service.answer(self.headers.get("Authorization"), query)
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(json.dumps(body).encode())

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.realm = f"http://127.0.0.1:{self.server.server_address[1]}/token"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def answer(
        self, authorization: str | None, query: dict[str, list[str]]
    ) -> tuple[int, dict[str, object]]:
        user = ""
        if authorization:
            given = base64.b64decode(authorization.removeprefix("Basic ")).decode()
            if given != f"{USER}:{PASSWORD}":
                return 401, {"details": "incorrect username or password"}
            user = USER
        access: list[dict[str, object]] = []
        for scope in query.get("scope", []):
            kind, name, actions = scope.split(":")
            if user:
                access.append({"type": kind, "name": name, "actions": actions.split(",")})
        return 200, {"token": self.sign(user, access), "expires_in": 300}

    def sign(self, subject: str, access: list[dict[str, object]]) -> str:
        def b64(data: bytes) -> str:
            return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

        der = self.cert.public_bytes(serialization.Encoding.DER)
        header = {"typ": "JWT", "alg": "RS256", "x5c": [base64.b64encode(der).decode()]}
        now = int(time.time())
        claims = {
            "iss": TOKEN_ISSUER,
            "sub": subject,
            "aud": TOKEN_SERVICE,
            "exp": now + 300,
            "nbf": now - 30,
            "iat": now - 30,
            "jti": uuid.uuid4().hex,
            "access": access,
        }
        signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
        signature = self.key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        return f"{signing_input}.{b64(signature)}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def token_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TokenService]:
    service = TokenService(tmp_path_factory.mktemp("token"))
    yield service
    service.close()


@pytest.fixture(scope="module")
def token_registry(
    storage: Path, token_service: TokenService, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Registry]:
    registry = _start_registry(
        tmp_path_factory.mktemp("bearer"),
        storage,
        f"auth: {{token: {{realm: '{token_service.realm}', service: {TOKEN_SERVICE}, "
        f"issuer: {TOKEN_ISSUER}, rootcertbundle: {token_service.cert_path}}}}}\n",
    )
    yield registry
    _stop(registry)


# --- pushing test images through the distribution API --------------------------------------------


@dataclass(frozen=True)
class Pushed:
    digest: str  # of the manifest, as the registry reported it on PUT
    compressed_size: int  # config + layers
    manifest_bytes: int


class Pusher:
    def __init__(self, registry: Registry) -> None:
        self.base = registry.url
        self.http = httpx.Client(timeout=10)

    def blob(self, repo: str, data: bytes) -> str:
        started = self.http.post(f"{self.base}/v2/{repo}/blobs/uploads/")
        assert started.status_code == 202, started.text
        location = httpx.URL(started.headers["Location"])
        if not location.is_absolute_url:
            location = httpx.URL(self.base).join(location)
        # Merge, not replace: the upload URL carries its own _state parameter.
        done = self.http.put(
            location.copy_merge_params({"digest": _digest(data)}),
            content=data,
            headers={"Content-Type": "application/octet-stream"},
        )
        assert done.status_code == 201, done.text
        return _digest(data)

    def manifest(self, repo: str, reference: str, document: dict[str, object]) -> Pushed:
        body = json.dumps(document, indent=2).encode()
        answer = self.http.put(
            f"{self.base}/v2/{repo}/manifests/{reference}",
            content=body,
            headers={"Content-Type": str(document["mediaType"])},
        )
        assert answer.status_code == 201, answer.text
        assert answer.headers["Docker-Content-Digest"] == _digest(body)
        return Pushed(answer.headers["Docker-Content-Digest"], 0, len(body))

    def image(
        self,
        repo: str,
        tag: str,
        *,
        fmt: str = "oci",
        arch: str = "amd64",
        layer: bytes | None = None,
        config_type: str | None = None,
    ) -> Pushed:
        manifest_type, default_config_type, layer_type, _ = FORMATS[fmt]
        config = json.dumps(
            {"architecture": arch, "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}}
        ).encode()
        layer = layer if layer is not None else os.urandom(2048)
        descriptors = [
            {
                "mediaType": config_type or default_config_type,
                "digest": self.blob(repo, config),
                "size": len(config),
            },
            {"mediaType": layer_type, "digest": self.blob(repo, layer), "size": len(layer)},
        ]
        pushed = self.manifest(
            repo,
            tag,
            {
                "schemaVersion": 2,
                "mediaType": manifest_type,
                "config": descriptors[0],
                "layers": descriptors[1:],
            },
        )
        return Pushed(pushed.digest, len(config) + len(layer), pushed.manifest_bytes)

    def index(
        self, repo: str, tag: str, children: dict[str, Pushed], *, fmt: str = "oci"
    ) -> Pushed:
        manifest_type, _, _, index_type = FORMATS[fmt]
        entries = [
            {
                "mediaType": manifest_type,
                "digest": child.digest,
                "size": child.manifest_bytes,
                "platform": {"architecture": arch, "os": "linux"},
            }
            for arch, child in children.items()
        ]
        return self.manifest(
            repo, tag, {"schemaVersion": 2, "mediaType": index_type, "manifests": entries}
        )


@pytest.fixture(scope="module")
def pusher(open_registry: Registry) -> Iterator[Pusher]:
    pusher = Pusher(open_registry)
    yield pusher
    pusher.http.close()


@pytest.fixture
def repo() -> str:
    """A fresh repository per test: the registries live for the whole module."""
    return f"dockyard-test/img-{uuid.uuid4().hex[:12]}"


def _client(**kwargs: object) -> RegistryClient:
    kwargs.setdefault("timeout_s", 5.0)
    kwargs.setdefault("platform", "linux/amd64")
    return RegistryClient(**kwargs)  # type: ignore[arg-type]


# --- resolving ------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["oci", "docker"])
async def test_a_tag_resolves_to_the_digest_and_size_that_were_pushed(
    open_registry: Registry, pusher: Pusher, repo: str, fmt: str
) -> None:
    pushed = pusher.image(repo, "1.0", fmt=fmt)
    async with _client() as client:
        resolved = await client.resolve(f"{open_registry.host}/{repo}:1.0")
    assert resolved.digest == pushed.digest
    assert resolved.platform_digest == pushed.digest
    assert resolved.media_type == FORMATS[fmt][0]
    assert resolved.compressed_size_bytes == pushed.compressed_size
    assert resolved.pinned == f"{open_registry.host}/{repo}@{pushed.digest}"


async def test_pushing_again_under_the_same_tag_moves_the_tag_but_the_old_digest_still_resolves(
    open_registry: Registry, pusher: Pusher, repo: str
) -> None:
    first = pusher.image(repo, "stable")
    second = pusher.image(repo, "stable", layer=os.urandom(4096))
    assert first.digest != second.digest
    async with _client() as client:
        now = await client.resolve(f"{open_registry.host}/{repo}:stable")
        pinned = await client.resolve(f"{open_registry.host}/{repo}@{first.digest}")
        tag_and_digest = await client.resolve(f"{open_registry.host}/{repo}:stable@{first.digest}")
        separately = await client.resolve(
            f"{open_registry.host}/{repo}:stable", digest=first.digest
        )
    assert now.digest == second.digest
    assert now.compressed_size_bytes == second.compressed_size
    # D2: a deployment pinned to the first push keeps getting exactly that content.
    for resolved in (pinned, tag_and_digest, separately):
        assert resolved.digest == first.digest
        assert resolved.compressed_size_bytes == first.compressed_size


@pytest.mark.parametrize("fmt", ["oci", "docker"])
@pytest.mark.parametrize("platform", ["linux/amd64", "linux/arm64"])
async def test_a_multi_platform_index_resolves_to_the_index_and_the_platform_image(
    open_registry: Registry, pusher: Pusher, repo: str, fmt: str, platform: str
) -> None:
    children = {
        arch: pusher.image(
            repo,
            f"only-{arch}",
            fmt=fmt,
            arch=arch,
            layer=os.urandom(1000 if arch == "amd64" else 3000),
        )
        for arch in ("amd64", "arm64")
    }
    index = pusher.index(repo, "multi", children, fmt=fmt)
    async with _client(platform=platform) as client:
        resolved = await client.resolve(f"{open_registry.host}/{repo}:multi")
    chosen = children[platform.split("/")[1]]
    assert resolved.digest == index.digest  # the index is what the tag points at: pin that
    assert resolved.media_type == FORMATS[fmt][3]
    assert resolved.platform_digest == chosen.digest
    assert resolved.platform == platform
    assert resolved.compressed_size_bytes == chosen.compressed_size


async def test_an_index_without_the_wanted_platform_is_refused_naming_what_it_offers(
    open_registry: Registry, pusher: Pusher, repo: str
) -> None:
    pusher.index(repo, "arm-only", {"arm64": pusher.image(repo, "a", arch="arm64")})
    async with _client(platform="linux/amd64") as client:
        with pytest.raises(InvalidParameter) as caught:
            await client.resolve(f"{open_registry.host}/{repo}:arm-only")
    assert "C13" in caught.value.message
    assert "linux/amd64" in caught.value.message and "linux/arm64" in caught.value.message


async def test_an_artifact_that_is_not_a_container_image_is_refused(
    open_registry: Registry, pusher: Pusher, repo: str
) -> None:
    pusher.image(repo, "chart", config_type="application/vnd.cncf.helm.config.v1+json")
    async with _client() as client:
        with pytest.raises(InvalidParameter) as caught:
            await client.resolve(f"{open_registry.host}/{repo}:chart")
    assert caught.value.message.startswith("C13:")
    assert "application/vnd.cncf.helm.config.v1+json" in caught.value.message


async def test_an_image_over_the_size_limit_is_refused_with_its_size(
    open_registry: Registry, pusher: Pusher, repo: str
) -> None:
    pushed = pusher.image(repo, "big", layer=os.urandom(10_000))
    async with _client(max_compressed_bytes=5_000) as client:
        with pytest.raises(InvalidParameter) as caught:
            await client.resolve(f"{open_registry.host}/{repo}:big")
    assert caught.value.message.startswith("C7:")
    assert f"({pushed.compressed_size} bytes)" in caught.value.message


# --- what does not exist ------------------------------------------------------------------------


async def test_an_unknown_tag_says_not_found_and_how_to_fix_it(
    open_registry: Registry, pusher: Pusher, repo: str
) -> None:
    pusher.image(repo, "1.0")
    async with _client() as client:
        with pytest.raises(InvalidParameter) as caught:
            await client.resolve(f"{open_registry.host}/{repo}:2.0")
    message = caught.value.message
    assert (
        f"'{open_registry.host}/{repo}:2.0' not found in registry {open_registry.host}" in message
    )
    assert "404" in message and "push it first or fix the tag" in message


async def test_an_unknown_repository_says_not_found(open_registry: Registry, repo: str) -> None:
    async with _client() as client:
        with pytest.raises(InvalidParameter) as caught:
            await client.resolve(f"{open_registry.host}/{repo}:1.0")
    assert f"not found in registry {open_registry.host} (404" in caught.value.message


async def test_a_digest_that_does_not_exist_is_refused_under_d2(
    open_registry: Registry, pusher: Pusher, repo: str
) -> None:
    pusher.image(repo, "1.0")
    missing = "sha256:" + "0" * 64
    async with _client() as client:
        with pytest.raises(InvalidParameter) as caught:
            await client.resolve(f"{open_registry.host}/{repo}:1.0", digest=missing)
    assert caught.value.message.startswith("D2:")
    assert missing in caught.value.message and open_registry.host in caught.value.message


# --- authentication -----------------------------------------------------------------------------


@pytest.fixture(params=["basic", "bearer"])
def private_registry(request: pytest.FixtureRequest) -> Registry:
    registry: Registry = request.getfixturevalue(
        f"{'token' if request.param == 'bearer' else 'basic'}_registry"
    )
    return registry


async def test_configured_credentials_open_a_private_registry(
    private_registry: Registry, pusher: Pusher, repo: str
) -> None:
    pushed = pusher.image(repo, "1.0")
    credentials = {private_registry.host: (USER, PASSWORD)}
    async with _client(credentials=credentials) as client:
        resolved = await client.resolve(f"{private_registry.host}/{repo}:1.0")
        again = await client.resolve(f"{private_registry.host}/{repo}@{pushed.digest}")
    assert resolved.digest == again.digest == pushed.digest


async def test_bearer_tokens_are_asked_for_pull_access_to_the_repository(
    token_registry: Registry, token_service: TokenService, pusher: Pusher, repo: str
) -> None:
    pusher.image(repo, "1.0")
    async with _client(credentials={token_registry.host: (USER, PASSWORD)}) as client:
        await client.resolve(f"{token_registry.host}/{repo}:1.0")
    assert token_service.requests[-1]["service"] == [TOKEN_SERVICE]
    assert token_service.requests[-1]["scope"] == [f"repository:{repo}:pull"]


async def test_a_private_registry_without_credentials_is_refused_under_c8(
    private_registry: Registry, pusher: Pusher, repo: str
) -> None:
    pusher.image(repo, "1.0")
    async with _client() as client:
        with pytest.raises(InvalidParameter) as caught:
            await client.resolve(f"{private_registry.host}/{repo}:1.0")
    message = caught.value.message
    assert message.startswith(f"C8: registry {private_registry.host} refused access (401)")
    assert (
        f"configure credentials for {private_registry.host} with DOCKYARD_REGISTRY_CREDENTIALS"
        in message
    )


async def test_wrong_credentials_are_refused_under_c8_naming_the_user(
    private_registry: Registry, pusher: Pusher, repo: str
) -> None:
    pusher.image(repo, "1.0")
    async with _client(credentials={private_registry.host: (USER, "wrong")}) as client:
        with pytest.raises(InvalidParameter) as caught:
            await client.resolve(f"{private_registry.host}/{repo}:1.0")
    message = caught.value.message
    assert message.startswith(f"C8: registry {private_registry.host} refused access (401)")
    assert f"user '{USER}'" in message and "DOCKYARD_REGISTRY_CREDENTIALS" in message


async def test_credentials_are_used_only_for_their_own_host(
    basic_registry: Registry, pusher: Pusher, repo: str
) -> None:
    pusher.image(repo, "1.0")
    async with _client(credentials={"127.0.0.1:1": (USER, PASSWORD)}) as client:
        with pytest.raises(InvalidParameter) as caught:
            await client.resolve(f"{basic_registry.host}/{repo}:1.0")
    assert "refused access (401)" in caught.value.message


# --- a registry that is not there ----------------------------------------------------------------


async def test_a_registry_that_is_down_is_service_unavailable_naming_it() -> None:
    host = f"127.0.0.1:{_free_port()}"  # nothing listens here
    async with _client() as client:
        with pytest.raises(ServiceUnavailable) as caught:
            await client.resolve(f"{host}/team/model:1.0")
    assert f"registry {host} is unreachable" in caught.value.message
    assert isinstance(caught.value.__cause__, httpx.ConnectError)


async def test_a_registry_that_never_answers_times_out_as_service_unavailable() -> None:
    with socket.socket() as silent:  # accepts connections (backlog) but never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        host = f"127.0.0.1:{silent.getsockname()[1]}"
        started = time.monotonic()
        async with _client(timeout_s=0.5) as client:
            with pytest.raises(ServiceUnavailable) as caught:
                await client.resolve(parse_image_reference(f"{host}/team/model:1.0"))
    assert time.monotonic() - started < 5
    assert f"registry {host} did not answer within 0.5 s" in caught.value.message

"""Hostile artifacts through real HTTP and the official `oci` SDK: refused at upload, and at unpack.

Upload: every kind of hostile zip gets a 400 InvalidParameter naming the entry and the rule,
and leaves the model's previous artifact (bytes, etag, md5) and the blob store exactly as they
were; so does an upload that stops coming (a 408 once no byte came for the body timeout). Unpack: a blob that reached the store anyway (stored before the upload check existed, or
changed on disk) makes the deployment FAIL in its unpack phase, and nothing is written outside
the unpack directory.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import secrets
import socket
import stat
import time
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import oci
import pytest
from oci.data_science import models as m

from tests.support.server import LiveServer
from tests.support.signed_clients import SignedAccess, signed_access
from tests.unit.test_zipcheck import Raw, build_zip, zeros_deflated

BODY_TIMEOUT_S = 2  # this module's server's: long enough for every upload here to come whole
MiB = 1 << 20
GiB = 1 << 30
TOKEN = secrets.token_hex(4)  # names the escape attempts, so a stray file is found anywhere
LINK = (stat.S_IFLNK | 0o777) << 16
CHAR_DEVICE = (stat.S_IFCHR | 0o600) << 16


def zip_of(files: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return out.getvalue()


def total_size_bomb() -> bytes:
    """16 GiB + 1 MiB of zeros in ~20 MB: 16385 entries of 1 MiB, each small enough to be
    exempt from the ratio rule, so only the total-size limit (16 GiB) can stop it."""
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    one_mib = c.compress(bytes(MiB)) + c.flush()
    crc = zlib.crc32(bytes(MiB))
    entries = [Raw(f"shard-{i:05}.bin", one_mib, zipfile.ZIP_DEFLATED, crc=crc, size=MiB) for i in range(16 * 1024 + 1)]
    return build_zip(entries)


def file_count_bomb() -> bytes:
    """100 001 empty files (~10 MB), one past the entry-count limit (zipfile writes the zip64
    end record that so many entries need)."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as archive:
        for i in range(100_001):
            archive.writestr(f"f{i}", b"")
    return out.getvalue()


def ratio_bomb() -> bytes:
    """1 GiB of zeros in one entry (~1 MB): expands about 1030:1, past the 1000:1 limit."""
    return build_zip([Raw("score.py", b"x = 1\n"), Raw("zeros.bin", zeros_deflated(GiB), zipfile.ZIP_DEFLATED, crc=0, size=GiB)])


def truncated() -> bytes:
    whole = zip_of({"api.py": b"print('hi')\n" * 200, "weights.bin": bytes(range(256)) * 64})
    return whole[: len(whole) // 2]


@dataclass(frozen=True)
class Hostile:
    make: Callable[[], bytes]
    says: tuple[str, ...]  # fragments the error message must hold: the entry and the rule

    @property
    def content(self) -> bytes:
        return _built(self.make)


@functools.cache
def _built(make: Callable[[], bytes]) -> bytes:
    return make()


HOSTILE = {
    "dotdot": Hostile(lambda: build_zip([Raw("api.py", b"ok"), Raw(f"../../escape-{TOKEN}.txt", b"pwned")]),
                      (f"'../../escape-{TOKEN}.txt'", "'..' path components are not allowed")),
    "absolute": Hostile(lambda: build_zip([Raw(f"/tmp/escape-{TOKEN}.txt", b"pwned")]),
                        (f"'/tmp/escape-{TOKEN}.txt'", "absolute paths are not allowed")),
    "link-out": Hostile(lambda: build_zip([Raw("model/passwd", b"../../etc/passwd", external_attr=LINK)]),
                        ("'model/passwd'", "symbolic links are not allowed", "outside the artifact")),
    "device": Hostile(lambda: build_zip([Raw("dev/null", external_attr=CHAR_DEVICE)]),
                      ("'dev/null'", "device, fifo and socket entries are not allowed")),
    "duplicate": Hostile(lambda: build_zip([Raw("model.bin", b"one"), Raw("model.bin", b"two")]),
                         ("'model.bin'", "another entry unpacks to the same path")),
    "encrypted": Hostile(lambda: build_zip([Raw("score.py", b"\x00" * 12 + b"secret", flags=0x1)]),
                         ("'score.py'", "encrypted entries are not allowed")),
    "ratio-bomb": Hostile(ratio_bomb, ("'zeros.bin'", "over the zip-bomb limit of 1000:1")),
    "size-bomb": Hostile(total_size_bomb, ("'shard-16384.bin'", f"more than {16 * GiB} bytes, the zip-bomb limit")),
    "count-bomb": Hostile(file_count_bomb, ("declares 100001 entries", "zip-bomb limit of 100000")),
    "truncated": Hostile(truncated, ("not a zip archive, or it is truncated or corrupt",)),
    "not-a-zip": Hostile(lambda: b"name,value\n1,2\n", ("not a zip archive",)),
}
UNPACK_KINDS = ("dotdot", "absolute", "link-out", "device", "duplicate", "encrypted", "ratio-bomb", "not-a-zip")


@dataclass
class Catalog:
    server: LiveServer
    access: SignedAccess
    client: oci.data_science.DataScienceClient
    project_id: str

    def new_model(self, artifact: bytes | None, name: str = "m") -> str:
        details = m.CreateModelDetails(compartment_id=self.access.compartment, project_id=self.project_id, display_name=name)
        model_id = self.client.create_model(details).data.id
        if artifact is not None:
            self.client.create_model_artifact(model_id, artifact, content_disposition='attachment; filename="good.zip"')
        return str(model_id)

    @property
    def blobs(self) -> Path:
        return self.server.data_dir / "artifacts" / "blobs"

    @property
    def tmp(self) -> Path:
        return self.server.data_dir / "artifacts" / "tmp"


@pytest.fixture(scope="module")
def catalog(tmp_path_factory: pytest.TempPathFactory, store_kind: str) -> Iterator[Catalog]:
    root = tmp_path_factory.mktemp("hostile")
    server = LiveServer(root / "data", env={"DOCKYARD_BODY_TIMEOUT_S": str(BODY_TIMEOUT_S)}).start()
    try:
        access = signed_access(server, root / "keys")
        client = access.data_science(server, timeout=(10, 240))
        project = client.create_project(m.CreateProjectDetails(compartment_id=access.compartment, display_name="hostile")).data
        yield Catalog(server, access, client, project.id)
    finally:
        server.stop()


@pytest.fixture(scope="module")
def kept(catalog: Catalog) -> tuple[str, bytes]:
    """A model with a good artifact, which every refused upload must leave untouched."""
    good = zip_of({"api.py": b"print('kept')\n", "weights.bin": secrets.token_bytes(4096)})
    return catalog.new_model(good, "kept"), good


def test_the_artifact_store_lives_where_these_tests_look(catalog: Catalog, kept: tuple[str, bytes]) -> None:
    _, good = kept
    assert (catalog.blobs / hashlib.sha256(good).hexdigest()).is_file(), sorted(catalog.blobs.iterdir())


@pytest.mark.parametrize("kind", list(HOSTILE))
def test_hostile_upload_is_refused_naming_entry_and_rule(catalog: Catalog, kept: tuple[str, bytes], kind: str) -> None:
    model_id, good = kept
    hostile = HOSTILE[kind]
    before_head = catalog.client.head_model_artifact(model_id).headers
    blobs_before = sorted(p.name for p in catalog.blobs.iterdir())

    with pytest.raises(oci.exceptions.ServiceError) as refused:
        catalog.client.create_model_artifact(model_id, hostile.content, content_disposition='attachment; filename="evil.zip"')

    error = refused.value
    assert (error.status, error.code) == (400, "InvalidParameter"), error
    for fragment in hostile.says:
        assert fragment in error.message, (fragment, error.message)
    assert "artifact" in error.message and ";" in error.message  # the rule, then what to do instead
    after_head = catalog.client.head_model_artifact(model_id).headers
    for header in ("etag", "content-md5", "content-length", "content-disposition"):
        assert after_head[header] == before_head[header], header
    assert catalog.client.get_model_artifact_content(model_id).data.content == good
    assert sorted(p.name for p in catalog.blobs.iterdir()) == blobs_before
    assert [p.name for p in catalog.tmp.iterdir()] == []


def test_an_upload_that_stops_coming_is_a_408_that_keeps_the_previous_artifact(catalog: Catalog, kept: tuple[str, bytes]) -> None:
    # Half an artifact, then nothing: the caller used to hold its connection, and the server
    # its half-written file, for as long as the connection stayed open.
    model_id, good = kept
    before = catalog.client.head_model_artifact(model_id).headers
    whole = zip_of({"score.py": b"print('never')\n", "weights.bin": secrets.token_bytes(256 * 1024)})
    request = httpx.Request("POST", f"{catalog.server.url}/20190101/models/{model_id}/artifact", content=whole,
                            headers={"content-type": "application/octet-stream", "opc-request-id": "STALLED-UPLOAD"})  # fmt: skip
    signed = next(catalog.server.auth.auth_flow(request))  # signed for the whole body, of which half is sent
    head = f"POST {signed.url.raw_path.decode()} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in signed.headers.items())
    with socket.create_connection(("127.0.0.1", catalog.server.port), timeout=BODY_TIMEOUT_S + 8) as sock:
        sock.sendall(head.encode("latin-1") + b"\r\n" + whole[: len(whole) // 2])
        started = time.monotonic()
        reply = b""
        while chunk := sock.recv(65536):  # to the server's close
            reply += chunk
        waited = time.monotonic() - started
    status_line, _, rest = reply.partition(b"\r\n")
    assert status_line == b"HTTP/1.1 408 Request Timeout", reply
    assert b"connection: close" in rest.lower()
    assert json.loads(rest.partition(b"\r\n\r\n")[2]) == {
        "code": "RequestTimeout",
        "message": f"the request's body stopped coming: no byte of it for {BODY_TIMEOUT_S} s; send the body without such pauses",
    }
    assert BODY_TIMEOUT_S - 0.1 < waited < BODY_TIMEOUT_S + 2.5  # the timeout, and at most a sweep's second more
    after = catalog.client.head_model_artifact(model_id).headers
    for header in ("etag", "content-md5", "content-length", "content-disposition"):
        assert after[header] == before[header], header
    assert catalog.client.get_model_artifact_content(model_id).data.content == good
    assert [p.name for p in catalog.tmp.iterdir()] == []  # the half-written file is gone
    # A caller's stall is no failure of the server's: it logged a traceback ("failed
    # unexpectedly"), then that the app returned no response. (The server runs at warning.)
    assert [line for line in catalog.server.log().splitlines() if " ERROR " in line or " WARNING " in line] == []


def test_a_refused_first_upload_leaves_the_model_without_an_artifact(catalog: Catalog) -> None:
    model_id = catalog.new_model(None, "never-had-one")
    with pytest.raises(oci.exceptions.ServiceError) as refused:
        catalog.client.create_model_artifact(model_id, HOSTILE["dotdot"].content)
    assert refused.value.status == 400
    with pytest.raises(oci.exceptions.ServiceError) as missing:
        catalog.client.head_model_artifact(model_id)
    assert missing.value.status == 404


def test_a_good_zip_is_still_accepted_after_refusals(catalog: Catalog, kept: tuple[str, bytes]) -> None:
    model_id = catalog.new_model(None, "later-good")
    good = zip_of({"api.py": b"print('fine')\n", "nested/dir/file.txt": b"x"})
    catalog.client.create_model_artifact(model_id, good)
    assert catalog.client.get_model_artifact_content(model_id).data.content == good


# -- the second line of defence: unpacking at deployment start -----------------------------------------


def deployment_details(catalog: Catalog, model_id: str, name: str) -> m.CreateModelDeploymentDetails:
    return m.CreateModelDeploymentDetails(
        display_name=name,
        project_id=catalog.project_id,
        compartment_id=catalog.access.compartment,
        model_deployment_configuration_details=m.SingleModelDeploymentConfigurationDetails(
            model_configuration_details=m.ModelConfigurationDetails(
                model_id=model_id,
                instance_configuration=m.InstanceConfiguration(instance_shape_name="VM.Standard.E4.Flex"),
                scaling_policy=m.FixedSizeScalingPolicy(instance_count=1),
            ),
            environment_configuration_details=m.OcirModelDeploymentEnvironmentConfigurationDetails(
                image="127.0.0.1:5001/dockyard-test/base:bookworm",
                image_digest="sha256:" + "a" * 64,
                server_port=8080,
                health_check_port=8080,
            ),
        ),
    )


def test_a_hostile_blob_already_in_the_store_fails_the_deployment_at_unpack(catalog: Catalog) -> None:
    """Each model gets a good artifact, then its blob is overwritten on disk with a hostile zip:
    the unpacker must judge the bytes it reads, not trust the upload."""
    client = catalog.client
    planted: dict[str, str] = {}  # deployment id -> kind
    for kind in UNPACK_KINDS:
        good = zip_of({"api.py": f"# {kind} {secrets.token_hex(8)}\n".encode()})
        model_id = catalog.new_model(good, f"unpack-{kind}")
        (catalog.blobs / hashlib.sha256(good).hexdigest()).write_bytes(HOSTILE[kind].content)
        deployment = client.create_model_deployment(deployment_details(catalog, model_id, f"unpack-{kind}")).data
        planted[deployment.id] = kind

    unpacked = catalog.server.data_dir / "unpacked"
    deadline = time.monotonic() + 120
    pending = dict(planted)
    while pending and time.monotonic() < deadline:
        for deployment_id in list(pending):
            got = client.get_model_deployment(deployment_id).data
            assert got.lifecycle_state != "ACTIVE", (pending[deployment_id], got.lifecycle_details)
            if got.lifecycle_state == "FAILED":
                details = got.lifecycle_details or ""
                kind = pending.pop(deployment_id)
                assert "unpack" in details, (kind, details)
                for fragment in HOSTILE[kind].says:
                    assert fragment in details, (kind, fragment, details)
        time.sleep(0.5)
    assert not pending, {k: client.get_model_deployment(d).data.lifecycle_details for d, k in pending.items()}

    # Nothing landed outside the unpack directory, nor inside it: no tree, no work directory.
    strays = list(catalog.server.data_dir.parent.rglob(f"escape-{TOKEN}*")) + list(Path("/tmp").glob(f"escape-{TOKEN}*"))
    assert strays == []
    assert not Path("/etc/passwd").is_symlink()
    leftovers = [p.name for p in unpacked.iterdir() if not p.name.startswith(".lock-")] if unpacked.exists() else []
    assert leftovers == []

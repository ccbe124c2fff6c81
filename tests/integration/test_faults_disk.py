"""A full disk under a live server: clear errors, no corruption, and recovery once space returns.

The server's whole data directory (SQLite database, artifact blobs, unpack cache) sits on a
64 MiB tmpfs mounted for the test, so "the disk is full" is real ENOSPC from the kernel, not a
simulation. Needs root (mount); skipped otherwise, or failed under DOCKYARD_TEST_REQUIRE_INFRA=1.
"""

from __future__ import annotations

import io
import os
import shutil
import sqlite3
import subprocess
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import oci
import pytest
from oci.data_science import models as m

from tests.support.server import LiveServer
from tests.support.signed_clients import SignedAccess, signed_access

MiB = 1 << 20
TMPFS_MIB = 64


def require_root() -> None:
    if os.geteuid() == 0:
        return
    message = "mounting a small tmpfs needs root: run the tests as root (scripts/test does)"
    if os.environ.get("DOCKYARD_TEST_REQUIRE_INFRA") == "1":
        pytest.fail(message)
    pytest.skip(message)


def zip_of(files: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return out.getvalue()


@dataclass
class SmallDisk:
    mount: Path
    server: LiveServer
    access: SignedAccess
    client: oci.data_science.DataScienceClient

    def free(self) -> int:
        return shutil.disk_usage(self.mount).free

    def files_under(self, sub: str) -> list[str]:
        root = self.server.data_dir / sub
        return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()) if root.exists() else []


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[SmallDisk]:
    require_root()
    mount = tmp_path / "small-disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={TMPFS_MIB}m,mode=0755", "tmpfs", str(mount)], check=True)
    server: LiveServer | None = None
    try:
        server = LiveServer(mount).start()  # the data dir is the tmpfs; the server log stays outside it
        access = signed_access(server, tmp_path / "keys")
        yield SmallDisk(mount, server, access, access.data_science(server, timeout=(10, 120)))
    finally:
        if server is not None:
            server.stop()
        subprocess.run(["umount", str(mount)], check=False)
        if os.path.ismount(mount):
            subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(disk: SmallDisk, leave_bytes: int = 0) -> Path:
    """Fill the tmpfs until at most `leave_bytes` are free; return the filler file."""
    filler = disk.mount / "filler.bin"
    block = b"\xa5" * MiB
    with filler.open("wb") as out:
        try:
            while disk.free() > leave_bytes + MiB:
                out.write(block)
                out.flush()
            while disk.free() > leave_bytes:
                out.write(block[:4096])
                out.flush()
        except OSError:
            pass  # ENOSPC: as full as it gets
    return filler


def test_an_upload_larger_than_the_free_space_is_507_and_keeps_the_previous_artifact(small_disk: SmallDisk, tmp_path: Path) -> None:
    disk, client = small_disk, small_disk.client
    project = client.create_project(m.CreateProjectDetails(compartment_id=disk.access.compartment, display_name="disk")).data
    model = client.create_model(m.CreateModelDetails(compartment_id=disk.access.compartment, project_id=project.id)).data
    previous = zip_of({"api.py": b"print('previous')\n", "weights.bin": os.urandom(2 * MiB)})
    client.create_model_artifact(model.id, previous, content_disposition='attachment; filename="previous.zip"')
    head_before = client.head_model_artifact(model.id).headers
    blobs_before = disk.files_under("artifacts/blobs")

    big = tmp_path / "big.zip"  # on the real disk: larger than all the tmpfs holds
    with zipfile.ZipFile(big, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("weights.bin", os.urandom((TMPFS_MIB + 16) * MiB))
    assert big.stat().st_size > disk.free()
    with big.open("rb") as body, pytest.raises(oci.exceptions.ServiceError) as refused:
        client.create_model_artifact(model.id, body, content_disposition='attachment; filename="big.zip"')

    error = refused.value
    assert (error.status, error.code) == (507, "InsufficientStorage"), error
    assert "ran out of disk space" in error.message and "nothing was stored" in error.message, error.message
    assert "upload again" in error.message
    # The previous artifact is untouched: same headers, byte-identical content.
    head_after = client.head_model_artifact(model.id).headers
    for header in ("etag", "content-md5", "content-length", "content-disposition"):
        assert head_after[header] == head_before[header], header
    assert client.get_model_artifact_content(model.id).data.content == previous
    # No partial file anywhere in the artifact store; the space is free again.
    assert disk.files_under("artifacts/blobs") == blobs_before
    assert disk.files_under("artifacts/tmp") == []
    assert disk.free() > 50 * MiB
    # The server is healthy and still writes.
    assert httpx.get(f"{disk.server.url}/health", timeout=10).status_code == 200
    again = zip_of({"api.py": b"print('after')\n"})
    client.create_model_artifact(model.id, again)
    assert client.get_model_artifact_content(model.id).data.content == again


def test_metadata_writes_on_a_full_disk_fail_clearly_and_recover(small_disk: SmallDisk) -> None:
    disk, client = small_disk, small_disk.client
    compartment = disk.access.compartment
    kept = client.create_project(m.CreateProjectDetails(compartment_id=compartment, display_name="kept")).data
    filler = fill(disk)
    try:
        failures = []
        for attempt in range(5):  # SQLite may absorb a write or two in pages it already holds
            try:
                client.create_project(m.CreateProjectDetails(compartment_id=compartment, display_name=f"full-{attempt}",
                                                             description="x" * 400))  # fmt: skip
            except oci.exceptions.ServiceError as exc:
                failures.append(exc)
        assert failures, "every write succeeded on a full disk: the test did not fill it"
        for exc in failures:
            assert (exc.status, exc.code) == (507, "InsufficientStorage"), exc
            assert "disk" in exc.message and "free" in exc.message, exc.message
        # Reads keep working while the disk is full.
        assert client.get_project(kept.id).data.display_name == "kept"
        assert httpx.get(f"{disk.server.url}/health", timeout=10).status_code == 200
    finally:
        filler.unlink()
    # With space back, writes succeed and nothing earlier was lost or corrupted.
    created = client.create_project(m.CreateProjectDetails(compartment_id=compartment, display_name="after")).data
    names = {p.display_name for p in client.list_projects(compartment_id=compartment).data}
    assert {"kept", "after"} <= names
    assert client.get_project(created.id).data.lifecycle_state == "ACTIVE"
    with sqlite3.connect(disk.server.data_dir / "dockyard.db") as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)

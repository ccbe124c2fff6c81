"""Artifact blobs on the local filesystem, content-addressed by SHA-256.

An upload streams into a temporary file under ``tmp/`` while SHA-256 and MD5 are computed,
is fsynced, checked (the caller's ``check``, e.g. the zip-safety rules), and only then renamed
to ``blobs/<sha256>``: a crash at any moment leaves either no blob or a complete one, never a
partial or unchecked one under a real name. Memory stays constant whatever the size: chunks are
written as they arrive.
"""

from __future__ import annotations

import asyncio
import base64
import errno
import hashlib
import os
import secrets
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

from dockyard.errors import DockyardError, PayloadTooLarge

WRITE_BATCH_BYTES = 1024 * 1024


class InsufficientStorage(DockyardError):
    code, status = "InsufficientStorage", 507


@dataclass(frozen=True)
class BlobInfo:
    sha256: str
    md5_b64: str
    size: int


class FilesystemArtifactStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.blobs = root / "blobs"
        self.tmp = root / "tmp"
        self.blobs.mkdir(parents=True, exist_ok=True)
        self.tmp.mkdir(parents=True, exist_ok=True)

    def path(self, sha256: str) -> Path:
        return self.blobs / sha256

    def exists(self, sha256: str) -> bool:
        return self.path(sha256).is_file()

    def remove_partial_uploads(self) -> int:
        """Delete temporary files left by uploads that never finished (e.g. a killed server)."""
        removed = 0
        for leftover in self.tmp.glob("*.part"):
            leftover.unlink(missing_ok=True)
            removed += 1
        return removed

    def remove_unreferenced(self, keep: set[str]) -> int:
        removed = 0
        for blob in self.blobs.iterdir():
            if blob.name not in keep:
                blob.unlink(missing_ok=True)
                removed += 1
        return removed

    async def write(
        self, chunks: AsyncIterator[bytes], max_bytes: int, check: Callable[[Path], object] | None = None
    ) -> BlobInfo:
        """Stream `chunks` into a new blob; raises PayloadTooLarge past `max_bytes`.

        `check` runs (in a thread) on the complete temporary file before it is published; when
        it raises, the error propagates and no blob is left behind.
        """
        temp = self.tmp / f"{secrets.token_hex(8)}.part"
        sha, md5 = hashlib.sha256(), hashlib.md5()
        size = 0
        pending: list[bytes] = []
        pending_bytes = 0
        handle = await asyncio.to_thread(open, temp, "wb")
        try:
            async for chunk in chunks:
                if not chunk:
                    continue
                size += len(chunk)
                if size > max_bytes:
                    raise PayloadTooLarge(
                        f"the artifact is larger than this server's limit of {max_bytes} bytes "
                        "(setting DOCKYARD_MAX_ARTIFACT_BYTES)"
                    )
                sha.update(chunk)
                md5.update(chunk)
                pending.append(chunk)
                pending_bytes += len(chunk)
                if pending_bytes >= WRITE_BATCH_BYTES:
                    await asyncio.to_thread(handle.write, b"".join(pending))
                    pending, pending_bytes = [], 0
            if pending:
                await asyncio.to_thread(handle.write, b"".join(pending))
            await asyncio.to_thread(_flush_and_sync, handle)
            handle.close()
            if check is not None:
                await asyncio.to_thread(check, temp)
            digest = sha.hexdigest()
            await asyncio.to_thread(os.replace, temp, self.path(digest))
            await asyncio.to_thread(_fsync_dir, self.blobs)
            return BlobInfo(sha256=digest, md5_b64=base64.b64encode(md5.digest()).decode(), size=size)
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise InsufficientStorage(
                    f"the server ran out of disk space after {size} bytes of the artifact; nothing was stored. "
                    f"Free space under {self.root} and upload again"
                ) from exc
            raise
        finally:
            if not handle.closed:
                handle.close()
            temp.unlink(missing_ok=True)


def _flush_and_sync(handle: object) -> None:
    handle.flush()  # type: ignore[attr-defined]
    os.fsync(handle.fileno())  # type: ignore[attr-defined]


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

"""The model artifact, laid out exactly as a deployment mounts it (A3, A4).

A zip goes through the service's own `ArtifactUnpacker` (the same safety checks, the same
layout and permissions). A folder is first zipped the way `zip -r` would (symbolic links
followed, empty folders kept), then unpacked the same way, so a folder that would not survive
the upload-and-unpack trip fails here too. No artifact gives an empty folder: a deployment
always mounts one. Blocking: callers run it in a thread.
"""

from __future__ import annotations

import hashlib
import os
import stat
import zipfile
from pathlib import Path

from dockyard.checking.measurements import ArtifactEvidence
from dockyard.errors import InvalidParameter
from dockyard.store.unpacking import ArtifactUnpacker

_CHUNK = 1024 * 1024


def prepare_artifact(source: Path | None, work_dir: Path) -> tuple[Path, ArtifactEvidence]:
    """Unpack `source` (zip or folder; None: empty) under `work_dir`; return the folder to mount.

    Raises `InvalidParameter` when the artifact is unsafe or unreadable, with the unpacker's
    words (the entry, the rule, the fix).
    """
    work_dir.mkdir(parents=True, exist_ok=True)
    if source is None:
        empty = work_dir / "empty-artifact"
        empty.mkdir(mode=0o755, exist_ok=True)
        os.chmod(empty, 0o755)
        return empty, ArtifactEvidence("none (an empty folder, as for an artifact without files)", 0, 0)
    if source.is_dir():
        archive = work_dir / "artifact.zip"
        _zip_folder(source, archive)
        words = f"folder {source}"
    else:
        archive = source
        words = f"zip {source}"
    digest = _sha256(archive)
    try:
        folder = ArtifactUnpacker(work_dir / "unpacked").unpack(archive, digest)
    except InvalidParameter as exc:
        raise InvalidParameter(f"unpack: the artifact {source} cannot be deployed: {exc.message}", rule="A3") from exc
    files, size = _tally(folder)
    return folder, ArtifactEvidence(words, files, size)


def _zip_folder(folder: Path, target: Path) -> None:
    """Store every file and empty folder under `folder` (uncompressed: it is unpacked at once)."""
    try:
        with zipfile.ZipFile(target, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
            seen: set[tuple[int, int]] = set()
            for root, dirs, files in os.walk(folder, followlinks=True):
                base = Path(root)
                identity = os.stat(base)
                if (identity.st_dev, identity.st_ino) in seen:
                    dirs[:] = []  # a link back up the tree: zip -r would stop here too
                    continue
                seen.add((identity.st_dev, identity.st_ino))
                dirs.sort()
                rel_root = base.relative_to(folder)
                if not dirs and not files and rel_root != Path("."):
                    archive.write(base, f"{rel_root.as_posix()}/")
                for name in sorted(files):
                    path = base / name
                    if not stat.S_ISREG(os.stat(path).st_mode):
                        continue  # sockets, fifos, devices: nothing a zip can carry
                    archive.write(path, (rel_root / name).as_posix())
    except OSError as exc:
        raise InvalidParameter(f"--artifact: cannot read {exc.filename or folder} ({exc.strerror or exc}); make the "
                               "artifact folder readable", rule="A3") from exc


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fp:
        while chunk := fp.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _tally(folder: Path) -> tuple[int, int]:
    files = size = 0
    for root, _, names in os.walk(folder):
        for name in names:
            files += 1
            size += os.lstat(os.path.join(root, name)).st_size
    return files, size

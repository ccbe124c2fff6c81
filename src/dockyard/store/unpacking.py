"""Unpack model artifacts once per digest into a cache the runtimes mount read-only (A3).

Layout of ``cache_dir`` (every name the unpacker makes starts with a dot, except finished
trees, and a digest never starts with a dot, so the two cannot collide)::

    <digest>/                     a complete unpacked artifact; appears only by an atomic rename
    .unpacking-<digest>-<hex>/    work in progress, or debris of a crash (swept on the next call)
    .removing-<digest>-<hex>/     a tree being deleted by `remove` (renamed away first)
    .lock-<digest>                an flock per digest; exists while the digest is cached or busy

The per-digest lock is an ``flock`` on its own file descriptor, so it excludes both threads
and other processes sharing the cache, and the kernel drops it when a process dies: a
leftover work directory whose lock is free is therefore debris, and is deleted.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import lzma
import os
import posixpath
import re
import secrets
import shutil
import stat
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

from dockyard.errors import InternalServerError, InvalidParameter
from dockyard.store.zipcheck import (
    EntryKind,
    Limits,
    ZipEntry,
    ZipSummary,
    open_checked,
    reject_entry,
)

_DIGEST = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,199}")
_WORK = ".unpacking-"
_TRASH = ".removing-"
_LOCK = ".lock-"
_CHUNK = 1024 * 1024
_FILE_MODE = 0o644  # world-readable: some images run as a non-root user
_EXEC_MODE = 0o755
_DIR_MODE = 0o755
# Reading a zip member fails with any of these on corrupt or lying data; each means "bad
# artifact", never "bad server". (bz2 reports a corrupt stream as a plain OSError.)
_CORRUPT = (zipfile.BadZipFile, EOFError, zlib.error, lzma.LZMAError, OSError, ValueError,
            NotImplementedError, RuntimeError)


class ArtifactUnpacker:
    """A cache of unpacked artifacts under ``cache_dir``, one directory per digest.

    Blocking: async callers run it in a thread. Safe to share between threads and between
    processes that use the same ``cache_dir``.
    """

    def __init__(self, cache_dir: str | Path, limits: Limits | None = None) -> None:
        self._cache_dir = Path(cache_dir)
        self._limits = limits or Limits()

    @property
    def cache_dir(self) -> Path:
        return self._cache_dir

    def unpack(self, zip_path: str | Path, digest: str) -> Path:
        """Return ``cache_dir/<digest>``, unpacking ``zip_path`` there on first use.

        The caller vouches that ``digest`` identifies the content of ``zip_path`` (the
        artifact store computed it at upload); a cached digest is returned without reading
        the zip. The tree holds exactly the zip's layout (A4), empty directories included,
        files 0644 (0755 when the zip marks them executable), directories 0755.

        Raises `InvalidParameter` when the artifact is unsafe or corrupt (see
        `dockyard.store.zipcheck`) or ``digest`` is not a plain name; nothing is left behind
        then. Raises `InternalServerError` when the cache cannot be written (disk full,
        permissions), and `OSError` when ``zip_path`` cannot be opened (the caller's file).
        """
        name = _checked_digest(digest)
        final = self._cache_dir / name
        if final.is_dir():
            return final  # complete trees only ever appear by rename: no lock needed to read
        try:
            self._cache_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise _cannot_write(self._cache_dir, exc) from exc
        with self._locked(name):
            if final.is_dir():
                return final  # another thread or process finished it while we waited
            self._sweep(name)
            with open(zip_path, "rb") as fp:
                archive, summary = open_checked(fp, self._limits)
                with archive:
                    self._check_space(summary)
                    self._publish(archive, summary, final)
        return final

    def remove(self, digest: str) -> bool:
        """Delete the unpacked tree of ``digest``; return whether there was one.

        Only for digests no deployment mounts: a running container would lose its files.
        Raises `InvalidParameter` for a malformed digest.
        """
        name = _checked_digest(digest)
        final = self._cache_dir / name
        if not self._cache_dir.is_dir():
            return False
        with self._locked(name):
            existed = final.is_dir()
            if existed:
                # Rename first: the cache entry disappears atomically, even if the slow
                # delete below is interrupted (the next sweep finishes it).
                trash = self._cache_dir / f"{_TRASH}{name}-{secrets.token_hex(4)}"
                os.rename(final, trash)
            self._sweep(name)
        return existed

    def prune(self, keep: set[str]) -> list[str]:
        """Delete every cached digest not in ``keep`` and any crash debris; return those deleted.

        Entries of ``cache_dir`` that the unpacker did not make are left alone.
        """
        if not self._cache_dir.is_dir():
            return []
        removed = []
        for entry in sorted(os.listdir(self._cache_dir)):
            ours = _DIGEST.fullmatch(entry) and (self._cache_dir / entry).is_dir()
            if ours and entry not in keep and self.remove(entry):
                removed.append(entry)
        self._sweep(None)
        return removed

    # -- extraction ---------------------------------------------------------------------------

    def _check_space(self, summary: ZipSummary) -> None:
        # Fail before writing anything rather than half-way with ENOSPC.
        free = shutil.disk_usage(self._cache_dir).free
        if summary.total_uncompressed_bytes > free:
            raise InternalServerError(
                f"the artifact unpacks to {summary.total_uncompressed_bytes} bytes but only "
                f"{free} are free under {self._cache_dir}; free disk space and retry")

    def _publish(self, archive: zipfile.ZipFile, summary: ZipSummary, final: Path) -> None:
        """Extract into a private work directory, then rename it to ``final`` in one step."""
        work = self._cache_dir / f"{_WORK}{final.name}-{secrets.token_hex(4)}"
        try:
            work.mkdir(mode=0o700)  # private until complete: nobody mounts half an artifact
            _extract(archive, summary, work, self._limits)
            os.chmod(work, _DIR_MODE)
            try:
                os.rename(work, final)
            except OSError as exc:
                # Only a process ignoring our lock (or a filesystem without flock) gets here:
                # the tree already in place holds the same digest, so theirs wins.
                if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY) or not final.is_dir():
                    raise
                shutil.rmtree(work, ignore_errors=True)
                return
            _fsync_dir(self._cache_dir)
        except OSError as exc:
            # Read-side failures were already turned into InvalidParameter: this one is ours.
            shutil.rmtree(work, ignore_errors=True)
            raise _cannot_write(self._cache_dir, exc) from exc
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise

    # -- locking and clean-up -------------------------------------------------------------------

    def _locked(self, name: str) -> AbstractContextManager[None]:
        return _flock(self._cache_dir, name)

    def _sweep(self, held: str | None) -> None:
        """Delete work and trash directories that nobody is working on.

        ``held`` names the digest whose lock the caller holds (its leftovers are debris for
        sure); for any other digest the lock is tried without waiting and a busy one is left.
        """
        leftovers: dict[str, list[Path]] = {}
        for entry in os.listdir(self._cache_dir):
            for prefix in (_WORK, _TRASH):
                if entry.startswith(prefix) and "-" in entry[len(prefix):]:
                    digest = entry[len(prefix):].rsplit("-", 1)[0]
                    leftovers.setdefault(digest, []).append(self._cache_dir / entry)
        for digest, paths in leftovers.items():
            if digest == held:
                _delete_all(paths)
            elif _DIGEST.fullmatch(digest):
                try:
                    with _flock(self._cache_dir, digest, wait=False):
                        _delete_all(paths)
                except _Busy:
                    pass  # being unpacked or removed right now


def _extract(archive: zipfile.ZipFile, summary: ZipSummary, root: Path, limits: Limits) -> None:
    tree = _Tree(root)
    written = 0
    for entry in summary.entries:
        if entry.kind is EntryKind.DIRECTORY:
            tree.directory(entry.path, entry)
        else:
            budget = limits.max_total_uncompressed_bytes - written
            written += _write_file(archive, entry, tree.file(entry.path, entry), budget)
    tree.sync()


class _Tree:
    """The directories made so far under one root, each known to resolve inside it.

    Paths are resolved one component at a time, which is both the proof and cheap: every
    directory is checked with lstat to be a real directory (never a link) whose parent was
    already checked, and files are opened with O_NOFOLLOW | O_EXCL. So each entry's resolved
    path is its lexical path under the root. (Calling Path.resolve() per entry would re-walk
    every component, cubic in depth counting the kernel's walks: half a minute for 1200 levels.)
    """

    def __init__(self, root: Path) -> None:
        self._dirs: dict[str, Path] = {"": root.resolve()}

    def file(self, rel: str, entry: ZipEntry) -> Path:
        """The path to create ``rel`` at, after creating its missing parents."""
        self.directory(posixpath.dirname(rel), entry)
        return self._child(rel, entry)

    def directory(self, rel: str, entry: ZipEntry) -> None:
        """Create ``rel`` and its missing parents, each 0755 (zips often omit parent entries)."""
        missing = []
        while rel not in self._dirs:  # a loop, not recursion: paths may be 256 levels deep
            missing.append(rel)
            parent = posixpath.dirname(rel)
            if parent == rel:  # "/" is its own parent: an absolute name
                raise _outside(entry)
            rel = parent
        for rel in reversed(missing):
            path = self._child(rel, entry)
            with contextlib.suppress(FileExistsError):  # an earlier entry made it, or a
                os.mkdir(path, _DIR_MODE)  # name collision, caught just below
            if not stat.S_ISDIR(os.lstat(path).st_mode):
                # zipcheck rules out a file here, but a case- or normalisation-insensitive
                # filesystem can still merge two distinct names: refuse rather than overwrite.
                raise _collides(entry)
            os.chmod(path, _DIR_MODE)  # mkdir's mode is filtered by the umask
            self._dirs[rel] = path

    def _child(self, rel: str, entry: ZipEntry) -> Path:
        parent, name = posixpath.split(rel)
        # zipcheck already refused these; checking again keeps this module safe on its own.
        if name in ("", ".", "..") or "\0" in name or parent not in self._dirs:
            raise _outside(entry)
        return self._dirs[parent] / name

    def sync(self) -> None:
        """Make the directory entries durable before the tree is published by rename."""
        for path in self._dirs.values():
            _fsync_dir(path)


def _write_file(archive: zipfile.ZipFile, entry: ZipEntry, target: Path, budget: int) -> int:
    """Write one member to ``target`` and return its size.

    Counts the real decompressed bytes and stops before writing any byte beyond the declared
    size or the artifact's remaining ``budget``, so a lying header cannot fill the disk.
    (zipfile itself also stops at the declared size and then checks the CRC; this count does
    not rely on that.)
    """
    try:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600)
    except FileExistsError:
        raise _collides(entry) from None
    size = 0
    with os.fdopen(fd, "wb") as dst:
        try:
            src = archive.open(entry.info)
        except _CORRUPT as exc:
            raise _corrupt(entry, exc) from exc
        with src:
            while True:
                try:
                    # Ask for one byte more than may remain, so an overrun is seen, not trusted.
                    chunk = src.read(min(_CHUNK, entry.size - size + 1))
                except _CORRUPT as exc:
                    raise _corrupt(entry, exc) from exc
                if not chunk:
                    break
                size += len(chunk)
                if size > entry.size:
                    raise reject_entry(entry.name, f"it unpacks to more than its declared "
                                                   f"{entry.size} bytes (a lying header, as in "
                                                   "zip bombs)", _REMEDY)
                if size > budget:
                    raise reject_entry(entry.name, "with it the artifact unpacks to more than "
                                                   "the zip-bomb limit", "make the artifact "
                                                   "smaller, or keep large weights in object "
                                                   "storage")
                dst.write(chunk)
        if size != entry.size:
            raise _corrupt(entry, EOFError(f"{size} of {entry.size} declared bytes"))
        dst.flush()
        os.fchmod(fd, _EXEC_MODE if entry.executable else _FILE_MODE)
        os.fsync(fd)  # the rename publishes the tree; its data must be on disk by then
    return size


# -- digests, locks, directories ---------------------------------------------------------------

def _checked_digest(digest: str) -> str:
    # The digest becomes a directory name: anything but a plain name could point elsewhere.
    if not isinstance(digest, str) or not _DIGEST.fullmatch(digest):
        raise InvalidParameter(f"artifact digest {digest!r} is not a plain name (letters, "
                               "digits, '_', '.', ':', '-'; up to 200); pass the digest the "
                               "artifact store reported")
    return digest


class _Busy(Exception):
    """The non-blocking lock is held by someone else."""


@contextmanager
def _flock(cache_dir: Path, name: str, *, wait: bool = True) -> Iterator[None]:
    """Hold the flock of ``name``; on release, delete the lock file unless the digest is cached.

    Deleting a lock file is safe only because every taker checks, once locked, that the file
    it locked is still the one at the path, and starts over otherwise.
    """
    path = cache_dir / f"{_LOCK}{name}"
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except BlockingIOError:
                raise _Busy(name) from None
            mine = os.fstat(fd)
            try:
                current = os.stat(path)
            except FileNotFoundError:
                current = None
            if current is not None and (current.st_ino, current.st_dev) == (mine.st_ino,
                                                                            mine.st_dev):
                break
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)  # the file was deleted while we waited for it: lock the new one
    try:
        yield
    finally:
        try:
            if not (cache_dir / name).is_dir():
                os.unlink(path)
        finally:
            os.close(fd)


def _delete_all(paths: list[Path]) -> None:
    for path in paths:
        shutil.rmtree(path, ignore_errors=True)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# -- errors ------------------------------------------------------------------------------------

_REMEDY = "re-create the zip with a standard tool and upload it again"


def _corrupt(entry: ZipEntry, exc: BaseException) -> InvalidParameter:
    return reject_entry(entry.name, f"its data does not match its header ({exc}); the zip is "
                                    "corrupt or was tampered with", _REMEDY)


def _outside(entry: ZipEntry) -> InvalidParameter:
    return reject_entry(entry.name, "it would be written outside the model directory",
                        "store paths relative to the artifact root")


def _collides(entry: ZipEntry) -> InvalidParameter:
    return reject_entry(entry.name, "another entry already unpacked to this path (names that "
                                    "differ only in case or Unicode form collide on this "
                                    "filesystem)", "rename one of them")


def _cannot_write(cache_dir: Path, exc: OSError) -> InternalServerError:
    reason = "no space left" if exc.errno == errno.ENOSPC else (exc.strerror or str(exc))
    return InternalServerError(f"could not write the unpacked artifact under {cache_dir} "
                               f"({reason}); free disk space or fix the cache directory's "
                               "permissions, then retry")

"""Inspect an uploaded model artifact (a zip) before anything is unpacked.

`inspect_zip` reads the zip's central directory and each entry's local header (a few dozen
bytes per entry, never the data), and decompresses only a symbolic link's target (at most a
few KiB) to name it in the error. It rejects, with `InvalidParameter`, everything that would
make unpacking unsafe or ambiguous:

* data that is not a zip, or a truncated or self-contradicting one;
* names that could land outside the unpack directory (``..``, absolute paths, drive letters,
  backslashes, NUL bytes) or that a filesystem cannot hold (too long, too deep);
* symbolic links (all of them, see `_reject_link`), devices, fifos and sockets;
* two entries that unpack to the same path, or a file where a directory must be;
* encrypted entries and compression methods Python cannot read;
* zip bombs: too many entries, too many bytes in total, an entry that expands by more than
  the allowed ratio, or entries whose data overlap (one blob counted many times).

Every message names the entry, the rule it breaks, and what to do instead.
"""

from __future__ import annotations

import contextlib
import enum
import posixpath
import re
import stat
import struct
import unicodedata
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from dockyard.errors import InvalidParameter

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB

_REMEDY = ("re-create the zip with a standard tool (e.g. `zip -r` or Python's zipfile) and "
           "upload it again")


@dataclass(frozen=True)
class Limits:
    """Zip-bomb limits checked at upload and again, on real bytes, while unpacking.

    ``max_file_count`` counts every entry, directories included: each costs an inode.
    The ratio rule applies only to entries larger than ``ratio_check_min_bytes``, because small
    files of repeated bytes (padding, empty JSON arrays) legitimately compress very well.
    """

    max_total_uncompressed_bytes: int = 16 * GiB
    max_file_count: int = 100_000
    max_compression_ratio: int = 1000
    ratio_check_min_bytes: int = 1 * MiB


class EntryKind(enum.Enum):
    FILE = "file"
    DIRECTORY = "directory"


@dataclass(frozen=True)
class ZipEntry:
    """One entry that is safe to unpack.

    ``name`` is the entry's name as its author wrote it (for messages); ``path`` is the normalised
    relative POSIX path it unpacks to (``a/./b//c`` becomes ``a/b/c``; never empty, never
    leaves the tree). ``size`` is the declared uncompressed size, which the unpacker enforces.
    """

    name: str
    path: str
    kind: EntryKind
    size: int
    compressed_size: int
    executable: bool
    info: zipfile.ZipInfo = field(repr=False, compare=False)


@dataclass(frozen=True)
class ZipSummary:
    """What an artifact holds, in central-directory order (parents may follow children)."""

    file_count: int
    dir_count: int
    total_uncompressed_bytes: int
    entries: tuple[ZipEntry, ...]


# Compression methods zipfile can decompress: stored, deflate, bzip2, lzma.
_READABLE_METHODS = {zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA}
_FLAG_ENCRYPTED = 0x0001
_FLAG_PATCHED = 0x0020
_FLAG_STRONG_ENCRYPTION = 0x0040
_FLAG_UTF8 = 0x0800
_METHOD_AES = 99  # WinZip AES: encrypted even when a tool forgets flag bit 0
_LOCAL_HEADER = struct.Struct("<4s2B4HL2L2H")
_LOCAL_SIGNATURE = b"PK\x03\x04"
_EOCD = struct.Struct("<4s4H2LH")
_EOCD_SIGNATURE = b"PK\x05\x06"
_ZIP64_LOCATOR = struct.Struct("<4sLQL")
_ZIP64_LOCATOR_SIGNATURE = b"PK\x06\x07"
_ZIP64_EOCD = struct.Struct("<4sQ2H2L4Q")
_ZIP64_EOCD_SIGNATURE = b"PK\x06\x06"
_MAX_COMPONENT_BYTES = 255  # NAME_MAX on Linux and macOS
_MAX_PATH_BYTES = 3000  # PATH_MAX is 4096, and the cache directory's own path comes first
# Deleting a tree (shutil.rmtree on Python 3.11) recurses once per level; real model trees are
# a dozen levels deep, and a hostile 1500-level one must not make the cache undeletable.
# Not a Limits field: it protects the service's own code, not a resource budget.
_MAX_DEPTH = 256
_MAX_LINK_TARGET_BYTES = 4 * KiB
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_DRIVE = re.compile(r"^[A-Za-z]:")


def inspect_zip(path: str | Path, limits: Limits | None = None) -> ZipSummary:
    """Check the zip at ``path`` and describe what unpacking it would create.

    Raises `InvalidParameter` (naming the entry, the rule and the fix) when the artifact is
    not a readable zip or breaks any rule listed in the module docstring. Raises `OSError`
    when ``path`` itself cannot be opened: that is the caller's fault, not the uploader's.
    """
    with open(path, "rb") as fp:
        archive, summary = open_checked(fp, limits or Limits())
        with archive:
            return summary


def open_checked(fp: BinaryIO, limits: Limits) -> tuple[zipfile.ZipFile, ZipSummary]:
    """Open the zip in ``fp`` and check it; return the open archive and its summary.

    The unpacker extracts from the very archive object that was checked, so the bytes it
    writes are the bytes that were judged. The caller closes the archive. Raises like
    `inspect_zip`.
    """
    _check_declared_entry_count(fp, limits)
    try:
        archive = zipfile.ZipFile(fp)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, ValueError, OSError, struct.error,
            NotImplementedError) as exc:
        raise InvalidParameter(
            f"the artifact is not a zip archive, or it is truncated or corrupt ({exc}); "
            f"{_REMEDY}") from exc
    try:
        summary = _summarise(archive, fp, limits)
    except BaseException:
        archive.close()
        raise
    return archive, summary


def _summarise(archive: zipfile.ZipFile, fp: BinaryIO, limits: Limits) -> ZipSummary:
    infos = archive.infolist()
    _check_local_headers(infos, fp, archive)
    entries: list[ZipEntry] = []
    kinds: dict[str, EntryKind] = {}  # normalised path -> what an entry put there
    implied_dirs: set[str] = set()  # parents of entries, which must be directories
    total = 0
    for index, info in enumerate(infos):
        name = _decoded(info)
        shown = _shown(name)
        if index + 1 > limits.max_file_count:
            raise _bad(shown, f"the artifact holds more than {limits.max_file_count} entries "
                              "(files and directories), the zip-bomb limit",
                       "put fewer, larger files in the artifact (e.g. a tar of the small ones)")
        rel, marked_dir = _normalise(name, shown)
        kind = _kind(info, shown, marked_dir, rel, archive)
        if rel == "":
            if kind is EntryKind.DIRECTORY:
                continue  # "./": the unpack directory itself, nothing to create
            raise _bad(shown, "a file entry without a name", _REMEDY)
        _check_storage(info, shown, kind, limits)
        total += info.file_size
        if total > limits.max_total_uncompressed_bytes:
            raise _bad(shown, f"with this entry the artifact unpacks to more than "
                              f"{limits.max_total_uncompressed_bytes} bytes, the zip-bomb limit",
                       "make the artifact smaller, or keep large weights in object storage")
        _check_unique(rel, kind, shown, kinds, implied_dirs)
        mode = info.external_attr >> 16
        entries.append(ZipEntry(
            name=name, path=rel, kind=kind, size=info.file_size,
            compressed_size=info.compress_size, executable=bool(mode & 0o111), info=info))
    files = sum(1 for e in entries if e.kind is EntryKind.FILE)
    return ZipSummary(file_count=files, dir_count=len(entries) - files,
                      total_uncompressed_bytes=total, entries=tuple(entries))


def reject_entry(name: str, rule: str, remedy: str) -> InvalidParameter:
    """The error for one bad entry: which entry, which rule it breaks, what to do instead."""
    return _bad(_shown(name), rule, remedy)


def _bad(shown: str, rule: str, remedy: str) -> InvalidParameter:
    return InvalidParameter(f"artifact entry {shown} is rejected: {rule}; {remedy}")


def _decoded(info: zipfile.ZipInfo) -> str:
    """The entry's name as its author spelled it (NUL bytes included, unlike ZipInfo.filename)."""
    name = info.orig_filename
    if not info.flag_bits & _FLAG_UTF8:
        # Many tools (macOS Archive Utility, older Info-ZIP) store UTF-8 names without setting
        # the UTF-8 flag; zipfile then decodes them as cp437 and the user would find mojibake
        # paths in the container. Bytes that are valid UTF-8 are almost never intended cp437.
        with contextlib.suppress(UnicodeError):
            name = name.encode("cp437").decode("utf-8")
    return name


def _shown(name: str) -> str:
    # repr() makes hostile names visible (NUL, newlines, escape sequences); cap the length so
    # a 64 KiB name cannot flood a log line.
    text = repr(name)
    return text if len(text) <= 200 else text[:197] + "...'"


def _check_declared_entry_count(fp: BinaryIO, limits: Limits) -> None:
    """Refuse an absurd entry count before zipfile builds one object per entry in memory."""
    fp.seek(0, 2)
    size = fp.tell()
    tail_start = max(0, size - (_EOCD.size + 0xFFFF))  # the record, then a comment of <=64 KiB
    fp.seek(tail_start)
    tail = fp.read()
    at = tail.rfind(_EOCD_SIGNATURE)
    if at < 0 or len(tail) - at < _EOCD.size:
        return  # zipfile will say precisely why this is not a zip
    count = _EOCD.unpack_from(tail, at)[4]
    locator_at = at - _ZIP64_LOCATOR.size
    if count == 0xFFFF and locator_at >= 0:
        sig, _, zip64_offset, _ = _ZIP64_LOCATOR.unpack_from(tail, locator_at)
        if sig == _ZIP64_LOCATOR_SIGNATURE and 0 <= zip64_offset <= size - _ZIP64_EOCD.size:
            fp.seek(zip64_offset)
            record = fp.read(_ZIP64_EOCD.size)
            if record[:4] == _ZIP64_EOCD_SIGNATURE:
                count = _ZIP64_EOCD.unpack(record)[6]
    if count > limits.max_file_count:
        raise InvalidParameter(
            f"the artifact declares {count} entries (files and directories), more than the "
            f"zip-bomb limit of {limits.max_file_count}; put fewer, larger files in the artifact")


def _check_local_headers(infos: list[zipfile.ZipInfo], fp: BinaryIO,
                         archive: zipfile.ZipFile) -> None:
    """Each entry's data must sit where the central directory says, once, before the directory.

    This catches truncated data, a local name that differs from the central one (two tools
    would unpack different files), and overlapping entries: the "better zip bomb" points many
    entries at one highly compressed blob, so every entry looks modest on its own.
    """
    fp.seek(0, 2)
    data_limit = min(fp.tell(), getattr(archive, "start_dir", fp.tell()))
    spans: list[tuple[int, int, str]] = []
    for info in infos:
        shown = _shown(_decoded(info))
        fp.seek(max(info.header_offset, 0))
        header = fp.read(_LOCAL_HEADER.size)
        if info.header_offset < 0 or len(header) < _LOCAL_HEADER.size \
                or header[:4] != _LOCAL_SIGNATURE:
            raise _bad(shown, "its data is missing (the zip is truncated or corrupt)", _REMEDY)
        fields = _LOCAL_HEADER.unpack(header)
        flags, name_len, extra_len = fields[3], fields[10], fields[11]
        raw_name = fp.read(name_len)
        try:
            local_name = raw_name.decode("utf-8" if flags & _FLAG_UTF8 else "cp437")
        except UnicodeDecodeError:
            local_name = None
        if local_name != info.orig_filename:
            raise _bad(shown, f"its local header names it {raw_name!r} instead (tools would "
                              "disagree on what it unpacks to)", _REMEDY)
        start = info.header_offset
        end = start + _LOCAL_HEADER.size + name_len + extra_len + info.compress_size
        if end > data_limit:
            raise _bad(shown, "its data runs past the end of the archive data (the zip is "
                              "truncated or corrupt)", _REMEDY)
        spans.append((start, end, shown))
    spans.sort()
    for (_, end, shown), (next_start, _, other) in zip(spans, spans[1:], strict=False):
        if end > next_start:
            raise _bad(shown, f"its data overlaps entry {other} (a zip-bomb construction)",
                       _REMEDY)


def _normalise(name: str, shown: str) -> tuple[str, bool]:
    """Return (relative path, whether the name ends in '/') or reject an unsafe name."""
    if not name:
        raise _bad(shown, "an entry with an empty name", _REMEDY)
    if "\x00" in name or _CONTROL.search(name):
        raise _bad(shown, "names may not contain NUL or control characters", "rename the file")
    if "\\" in name:
        raise _bad(shown, "names may not contain backslashes (Windows separators or an attempt "
                          "to hide '..\\')", "re-create the zip with '/' as the separator")
    if name.startswith("/"):
        raise _bad(shown, "absolute paths are not allowed", "store paths relative to the "
                          "artifact root (e.g. `cd` into the folder before zipping)")
    if _DRIVE.match(name):
        raise _bad(shown, "Windows drive letters are not allowed",
                   "store paths relative to the artifact root")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise _bad(shown, "'..' path components are not allowed (they could write outside "
                          "the model directory)", "store paths relative to the artifact root")
    rel = "/".join(parts)
    if len(parts) > _MAX_DEPTH:
        raise _bad(shown, f"it is nested {len(parts)} levels deep, more than {_MAX_DEPTH}",
                   "flatten the folder structure")
    if len(rel.encode()) > _MAX_PATH_BYTES or any(
            len(p.encode()) > _MAX_COMPONENT_BYTES for p in parts):
        raise _bad(shown, f"a name component is longer than {_MAX_COMPONENT_BYTES} bytes or "
                          f"the path longer than {_MAX_PATH_BYTES}", "use shorter names")
    return rel, name.endswith("/")


def _kind(info: zipfile.ZipInfo, shown: str, marked_dir: bool, rel: str,
          archive: zipfile.ZipFile) -> EntryKind:
    # The high 16 bits of external_attr hold a Unix st_mode when the creating tool was Unix-like;
    # they are zero otherwise, and then only the trailing '/' says "directory".
    fmt = stat.S_IFMT(info.external_attr >> 16)
    if fmt == stat.S_IFLNK:
        _reject_link(info, shown, rel, archive)
    if fmt not in (0, stat.S_IFREG, stat.S_IFDIR):
        raise _bad(shown, "device, fifo and socket entries are not allowed (only files and "
                          "directories can be mounted as a model)", "remove it from the zip")
    if marked_dir or fmt == stat.S_IFDIR:
        if info.file_size:
            raise _bad(shown, "a directory entry that carries data", _REMEDY)
        return EntryKind.DIRECTORY
    return EntryKind.FILE


def _reject_link(info: zipfile.ZipInfo, shown: str, rel: str, archive: zipfile.ZipFile) -> None:
    """Reject every symbolic link, whether or not its target stays inside the artifact.

    Why all of them: the tree is mounted at /opt/ds/model/deployed_model, so an absolute target
    resolves against the container's filesystem, not the artifact; a relative link that is
    harmless alone lets a later entry write *through* it (``d -> ..`` then ``d/x``); artifacts
    are copied between storage backends that do not all keep links; and `zip -r` stores the
    linked file itself unless asked not to (-y), so the fix is easy. Allowing in-tree links
    would buy little and cost a proof that no chain of them ever escapes.
    """
    where = ""
    target = _link_target(info, archive)
    if target is not None:
        joined = posixpath.normpath(posixpath.join(posixpath.dirname(rel), target))
        escapes = target.startswith("/") or joined == ".." or joined.startswith("../")
        where = f" (this one points to {_shown(target)}, " \
                f"{'outside' if escapes else 'inside'} the artifact)"
    raise _bad(shown, f"symbolic links are not allowed{where}",
               "replace the link with a copy of the file or folder it points to "
               "(plain `zip -r` does this; do not pass -y/--symlinks)")


def _link_target(info: zipfile.ZipInfo, archive: zipfile.ZipFile) -> str | None:
    """The link's target for the error message, or None when it cannot be read cheaply."""
    if info.flag_bits & (_FLAG_ENCRYPTED | _FLAG_STRONG_ENCRYPTION) \
            or info.compress_type not in _READABLE_METHODS:
        return None
    try:
        with archive.open(info) as src:
            raw = src.read(_MAX_LINK_TARGET_BYTES)
        return raw.decode("utf-8", errors="replace")
    except Exception:  # any decode failure only costs the message its detail
        return None


def _check_storage(info: zipfile.ZipInfo, shown: str, kind: EntryKind, limits: Limits) -> None:
    """Encryption, compression method and the per-entry zip-bomb ratio."""
    if info.flag_bits & (_FLAG_ENCRYPTED | _FLAG_STRONG_ENCRYPTION) \
            or info.compress_type == _METHOD_AES:
        raise _bad(shown, "encrypted entries are not allowed (the service cannot unpack them)",
                   "zip the artifact without a password")
    if info.flag_bits & _FLAG_PATCHED or info.compress_type not in _READABLE_METHODS:
        raise _bad(shown, f"compression method {info.compress_type} is not supported (only "
                          "stored, deflate, bzip2 and lzma)",
                   "re-create the zip with standard deflate compression (Windows Explorer "
                   "uses Deflate64 for large files; `zip -r` or 7-Zip with -mm=Deflate do not)")
    if info.compress_type == zipfile.ZIP_STORED and info.compress_size != info.file_size:
        raise _bad(shown, f"it is stored uncompressed but declares {info.compress_size} stored "
                          f"and {info.file_size} unpacked bytes (a lying header)", _REMEDY)
    if kind is EntryKind.FILE and info.file_size > limits.ratio_check_min_bytes \
            and info.file_size > limits.max_compression_ratio * info.compress_size:
        ratio = info.file_size // max(info.compress_size, 1)
        raise _bad(shown, f"it expands {ratio}:1 ({info.compress_size} -> {info.file_size} "
                          f"bytes), over the zip-bomb limit of "
                          f"{limits.max_compression_ratio}:1",
                   "store such data compressed in a real format or generate it at start-up")


def _check_unique(rel: str, kind: EntryKind, shown: str, kinds: dict[str, EntryKind],
                  implied_dirs: set[str]) -> None:
    """Each path appears once, and nothing is both a file and a directory.

    Paths compare after NFC normalisation: some filesystems (APFS) treat "é" composed and
    decomposed as one name, and a duplicate there would silently overwrite.
    """
    key = unicodedata.normalize("NFC", rel)
    if key in kinds:
        raise _bad(shown, "another entry unpacks to the same path (duplicate names would "
                          "silently overwrite each other)", "keep one copy of it in the zip")
    if kind is EntryKind.FILE and key in implied_dirs:
        raise _bad(shown, "it is a file, but other entries need a directory at this path",
                   "rename the file or the folder")
    parent = posixpath.dirname(key)
    while parent:
        if kinds.get(parent) is EntryKind.FILE:
            raise _bad(shown, f"its parent {_shown(parent)} is a file in this zip",
                       "rename the file or the folder")
        if parent in implied_dirs:
            break  # its own parents were checked when it was first seen
        implied_dirs.add(parent)
        parent = posixpath.dirname(parent)
    kinds[key] = kind

"""inspect_zip: what an uploader sees when an artifact is accepted or refused.

Hostile archives are written byte by byte (`build_zip`) because zipfile will not produce most
of them; friendly ones come from zipfile itself, as a user's tools would make them.
"""

from __future__ import annotations

import io
import os
import stat
import struct
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import pytest

from dockyard.errors import InvalidParameter
from dockyard.store.zipcheck import EntryKind, Limits, inspect_zip

MiB = 1 << 20
FILE = (stat.S_IFREG | 0o644) << 16


@dataclass
class Raw:
    """One entry of a hand-made zip; every header field can lie."""

    name: str | bytes
    data: bytes = b""  # the stored bytes (already compressed when method is deflate)
    method: int = zipfile.ZIP_STORED
    crc: int | None = None
    size: int | None = None  # declared uncompressed size
    compressed_size: int | None = None  # declared compressed size
    flags: int = 0
    external_attr: int = FILE
    create_system: int = 3
    local_name: str | bytes | None = None

    @classmethod
    def deflated(cls, name: str | bytes, plain: bytes, **kw: object) -> Raw:
        c = zlib.compressobj(9, zlib.DEFLATED, -15)
        data = c.compress(plain) + c.flush()
        fields: dict[str, object] = {"crc": zlib.crc32(plain), "size": len(plain)} | kw
        return cls(name, data, zipfile.ZIP_DEFLATED, **fields)  # type: ignore[arg-type]


def _b(name: str | bytes) -> bytes:
    return name.encode() if isinstance(name, str) else name


def build_zip(entries: list[Raw], *, declared_count: int | None = None) -> bytes:
    out = io.BytesIO()
    central = []
    for e in entries:
        offset = out.tell()
        crc = zlib.crc32(e.data) if e.crc is None else e.crc
        size = len(e.data) if e.size is None else e.size
        csize = len(e.data) if e.compressed_size is None else e.compressed_size
        name = _b(e.name)
        local = _b(e.local_name) if e.local_name is not None else name
        out.write(struct.pack("<4sHHHHHLLLHH", b"PK\x03\x04", 20, e.flags, e.method, 0, 0x21,
                              crc, csize, size, len(local), 0) + local + e.data)
        central.append(struct.pack("<4sHHHHHHLLLHHHHHLL", b"PK\x01\x02",
                                   (e.create_system << 8) | 20, 20, e.flags, e.method, 0, 0x21,
                                   crc, csize, size, len(name), 0, 0, 0, 0, e.external_attr,
                                   offset) + name)
    start = out.tell()
    out.write(b"".join(central))
    count = len(entries) if declared_count is None else declared_count
    out.write(struct.pack("<4sHHHHLLH", b"PK\x05\x06", 0, 0, count, count,
                          out.tell() - start, start, 0))
    return out.getvalue()


def write(tmp_path: Path, content: bytes, name: str = "artifact.zip") -> Path:
    path = tmp_path / name
    path.write_bytes(content)
    return path


def rejected(path: Path, limits: Limits | None = None) -> str:
    with pytest.raises(InvalidParameter) as caught:
        inspect_zip(path, limits)
    assert caught.value.status == 400
    return caught.value.message


def friendly_zip(tmp_path: Path, files: dict[str, bytes]) -> Path:
    path = tmp_path / "friendly.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return path


# -- not a zip at all --------------------------------------------------------------------------

@pytest.mark.parametrize("content", [
    os.urandom(4096),
    b"",
    b"name,value\n1,2\n",
    b"PK\x05\x06" + b"\x00" * 10,  # an end record cut short
], ids=["random", "empty", "csv", "cut-end-record"])
def test_data_that_is_not_a_zip_is_refused_with_advice(tmp_path: Path, content: bytes) -> None:
    message = rejected(write(tmp_path, content))
    assert "the artifact is not a zip archive" in message
    assert "upload it again" in message


def test_truncated_zip_is_refused_wherever_it_was_cut(tmp_path: Path) -> None:
    whole = friendly_zip(tmp_path, {"model.bin": os.urandom(5000), "score.py": b"x = 1\n"})
    data = whole.read_bytes()
    for cut in (10, len(data) // 2, len(data) - 30, len(data) - 1):
        message = rejected(write(tmp_path, data[:cut], f"cut{cut}.zip"))
        assert "truncated" in message or "not a zip archive" in message


def test_entry_whose_data_runs_past_the_archive_is_named(tmp_path: Path) -> None:
    entry = Raw.deflated("weights.bin", b"w" * 100)
    entry.compressed_size = len(entry.data) + 500
    message = rejected(write(tmp_path, build_zip([entry])))
    assert "'weights.bin'" in message and "truncated" in message


# -- names that would escape ------------------------------------------------------------------

@pytest.mark.parametrize(("name", "rule"), [
    ("../evil", "'..'"),
    ("models/../../evil", "'..'"),
    ("..", "'..'"),
    ("/etc/x", "absolute"),
    ("//server/share/x", "absolute"),
    ("C:/Windows/x", "drive letter"),
    ("c:evil", "drive letter"),
    ("..\\evil", "backslash"),
    ("models\\..\\..\\evil", "backslash"),
    ("evil\x00.txt", "NUL"),
    ("line\nbreak", "control"),
])
def test_names_that_could_escape_are_refused_and_named(tmp_path: Path, name: str,
                                                       rule: str) -> None:
    path = write(tmp_path, build_zip([Raw("ok.txt", b"fine"), Raw(name, b"payload")]))
    message = rejected(path)
    assert repr(name) in message
    assert rule in message
    assert "ok.txt" not in message


def test_local_header_naming_another_file_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, build_zip([Raw("model.bin", b"m", local_name="../evil.bin")]))
    message = rejected(path)
    assert "'model.bin'" in message and "local header" in message


def test_overlong_name_is_refused_before_the_filesystem_does(tmp_path: Path) -> None:
    name = "x" * 300
    message = rejected(write(tmp_path, build_zip([Raw(name, b"m")])))
    assert "longer than 255" in message


def test_absurdly_deep_nesting_is_refused(tmp_path: Path) -> None:
    # Deleting such a tree later would overflow Python's recursion limit in shutil.rmtree.
    name = "d/" * 1200 + "model.bin"
    message = rejected(write(tmp_path, build_zip([Raw(name, b"m")])))
    assert "nested 1201 levels deep" in message and "flatten" in message


# -- links and special files ------------------------------------------------------------------

def test_symlink_out_of_the_tree_is_refused_naming_its_target(tmp_path: Path) -> None:
    link = Raw("model/passwd", b"../../etc/passwd", external_attr=(stat.S_IFLNK | 0o777) << 16)
    message = rejected(write(tmp_path, build_zip([link])))
    assert "'model/passwd'" in message
    assert "symbolic links are not allowed" in message
    assert "'../../etc/passwd', outside the artifact" in message
    assert "copy of the file" in message


def test_symlink_inside_the_tree_is_refused_too(tmp_path: Path) -> None:
    link = Raw("latest.bin", b"v2/model.bin", external_attr=(stat.S_IFLNK | 0o777) << 16)
    path = write(tmp_path, build_zip([Raw("v2/model.bin", b"m"), link]))
    message = rejected(path)
    assert "'latest.bin'" in message and "inside the artifact" in message


@pytest.mark.parametrize("kind", [stat.S_IFCHR, stat.S_IFBLK, stat.S_IFIFO, stat.S_IFSOCK])
def test_device_fifo_and_socket_entries_are_refused(tmp_path: Path, kind: int) -> None:
    path = write(tmp_path, build_zip([Raw("dev/thing", external_attr=(kind | 0o600) << 16)]))
    message = rejected(path)
    assert "'dev/thing'" in message and "device, fifo and socket" in message


def test_directory_entry_carrying_data_is_refused(tmp_path: Path) -> None:
    message = rejected(write(tmp_path, build_zip([Raw("models/", b"hidden")])))
    assert "'models/'" in message and "directory entry that carries data" in message


# -- duplicates -------------------------------------------------------------------------------

@pytest.mark.parametrize(("first", "second"), [
    ("model.bin", "model.bin"),
    ("model.bin", "./model.bin"),
    ("a/b.txt", "a//b.txt"),
    ("weights/", "weights"),
    ("caf\u00e9.txt", "cafe\u0301.txt"),  # composed vs decomposed: one name on macOS
])
def test_two_entries_unpacking_to_one_path_are_refused(tmp_path: Path, first: str,
                                                       second: str) -> None:
    path = write(tmp_path, build_zip([Raw(first), Raw(second)], ))
    message = rejected(path)
    assert repr(second) in message and "same path" in message


@pytest.mark.parametrize("names", [["model", "model/weights.bin"], ["model/weights.bin", "model"]])
def test_a_path_that_is_both_file_and_directory_is_refused(tmp_path: Path,
                                                           names: list[str]) -> None:
    message = rejected(write(tmp_path, build_zip([Raw(n, b"x") for n in names])))
    assert repr(names[1]) in message and "file" in message


# -- what the service cannot read ---------------------------------------------------------------

def test_encrypted_entry_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, build_zip([Raw("score.py", b"\x00" * 12 + b"secret", flags=0x1)]))
    message = rejected(path)
    assert "'score.py'" in message and "encrypted" in message and "without a password" in message


def test_aes_entry_is_refused_as_encrypted(tmp_path: Path) -> None:
    message = rejected(write(tmp_path, build_zip([Raw("model.bin", b"x" * 40, method=99)])))
    assert "'model.bin'" in message and "encrypted" in message


def test_deflate64_is_refused_with_a_way_out(tmp_path: Path) -> None:
    message = rejected(write(tmp_path, build_zip([Raw("big.bin", b"x" * 40, method=9)])))
    assert "'big.bin'" in message and "method 9" in message and "Deflate" in message


# -- zip bombs --------------------------------------------------------------------------------

def zeros_deflated(total: int) -> bytes:
    """Raw deflate of ``total`` zero bytes (a multiple of 1 MiB) in milliseconds.

    Once the window is all zeros, each flushed MiB of zeros compresses to the same bytes, so
    one block is compressed and repeated instead of pushing a GiB through zlib.
    """
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    chunk = bytes(MiB)
    first = c.compress(chunk) + c.flush(zlib.Z_FULL_FLUSH)
    steady = c.compress(chunk) + c.flush(zlib.Z_FULL_FLUSH)
    assert c.compress(chunk) + c.flush(zlib.Z_FULL_FLUSH) == steady
    return first + steady * (total // MiB - 2) + c.compress(chunk) + c.flush()


def test_one_gib_of_zeros_is_refused_for_its_ratio(tmp_path: Path) -> None:
    data = zeros_deflated(1024 * MiB)
    bomb = Raw("zeros.bin", data, zipfile.ZIP_DEFLATED, crc=0, size=1024 * MiB)
    path = write(tmp_path, build_zip([Raw("score.py", b"x = 1\n"), bomb]))
    message = rejected(path)
    assert "'zeros.bin'" in message and "zip-bomb limit of 1000:1" in message


def test_small_files_may_compress_very_well(tmp_path: Path) -> None:
    summary = inspect_zip(write(tmp_path, build_zip([Raw.deflated("pad.bin", bytes(MiB))])))
    assert summary.file_count == 1


def test_stored_entry_whose_sizes_disagree_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, build_zip([Raw("model.bin", b"abc", size=10 * MiB)]))
    message = rejected(path)
    assert "'model.bin'" in message and "lying header" in message


def test_total_size_limit_names_the_entry_that_crosses_it(tmp_path: Path) -> None:
    path = friendly_zip(tmp_path, {"a.bin": os.urandom(600), "b.bin": os.urandom(600)})
    message = rejected(path, Limits(max_total_uncompressed_bytes=1000))
    assert "'b.bin'" in message and "1000 bytes" in message


def test_entry_count_limit_is_checked_before_reading_the_directory(tmp_path: Path) -> None:
    path = friendly_zip(tmp_path, {f"f{i}.txt": b"x" for i in range(5)})
    message = rejected(path, Limits(max_file_count=3))
    assert "declares 5 entries" in message and "limit of 3" in message


def test_entry_count_limit_holds_when_the_end_record_lies(tmp_path: Path) -> None:
    path = write(tmp_path, build_zip([Raw(f"f{i}.txt", b"x") for i in range(5)],
                                     declared_count=1))
    message = rejected(path, Limits(max_file_count=3))
    assert "'f3.txt'" in message and "more than 3 entries" in message


def test_overlapping_entries_are_refused(tmp_path: Path) -> None:
    # The "better zip bomb": entry A's declared data covers entry B's header and data.
    a = Raw.deflated("a.bin", b"a" * 100)
    b = Raw.deflated("b.bin", b"b" * 100)
    a.compressed_size = len(a.data) + 30 + len("b.bin") + len(b.data)
    message = rejected(write(tmp_path, build_zip([a, b])))
    assert "'a.bin'" in message and "overlaps entry 'b.bin'" in message


# -- what is accepted ---------------------------------------------------------------------------

def test_summary_describes_files_directories_and_sizes(tmp_path: Path) -> None:
    path = tmp_path / "model.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("score.py", b"def predict(x):\n    return x\n")
        zf.writestr("runtime.yaml", b"MODEL_ARTIFACT_VERSION: '3.0'\n")
        zf.writestr("models/ensemble/1/", b"")  # empty version folder Triton needs
        zf.writestr("models/ensemble/config.pbtxt", b"name: 'ensemble'\n")
        run = zipfile.ZipInfo("bin/serve.sh")
        run.external_attr = (stat.S_IFREG | 0o755) << 16
        zf.writestr(run, b"#!/bin/sh\n")
    summary = inspect_zip(path)
    assert (summary.file_count, summary.dir_count) == (4, 1)
    assert summary.total_uncompressed_bytes == sum(e.size for e in summary.entries)
    by_path = {e.path: e for e in summary.entries}
    assert by_path["models/ensemble/1"].kind is EntryKind.DIRECTORY
    assert by_path["bin/serve.sh"].executable
    assert not by_path["score.py"].executable


def test_windows_zip_without_unix_modes_is_accepted(tmp_path: Path) -> None:
    entries = [Raw("Model/", external_attr=0x10, create_system=0),
               Raw("Model/weights.bin", b"w", external_attr=0x20, create_system=0)]
    summary = inspect_zip(write(tmp_path, build_zip(entries)))
    assert [(e.path, e.kind) for e in summary.entries] == [
        ("Model", EntryKind.DIRECTORY), ("Model/weights.bin", EntryKind.FILE)]


def test_utf8_names_without_the_utf8_flag_keep_their_spelling(tmp_path: Path) -> None:
    summary = inspect_zip(write(tmp_path, build_zip([Raw("modèle.bin".encode(), b"m")])))
    assert summary.entries[0].path == "modèle.bin"


def test_dot_slash_names_are_normalised_and_the_root_entry_ignored(tmp_path: Path) -> None:
    summary = inspect_zip(write(tmp_path, build_zip([Raw("./"), Raw("./a/./b.txt", b"b")])))
    assert [e.path for e in summary.entries] == ["a/b.txt"]


def test_empty_zip_is_a_valid_byoc_artifact(tmp_path: Path) -> None:
    summary = inspect_zip(friendly_zip(tmp_path, {}))
    assert (summary.file_count, summary.dir_count, summary.entries) == (0, 0, ())


def test_streamed_zip_with_data_descriptors_is_accepted(tmp_path: Path) -> None:
    class Unseekable(io.RawIOBase):
        def __init__(self) -> None:
            self.buffer = bytearray()

        def writable(self) -> bool:
            return True

        def write(self, b):  # type: ignore[no-untyped-def]
            self.buffer += b
            return len(b)

    sink = Unseekable()
    with zipfile.ZipFile(sink, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("model.bin", os.urandom(2000))
    summary = inspect_zip(write(tmp_path, bytes(sink.buffer)))
    assert summary.entries[0].size == 2000


def test_inspection_reads_headers_not_data(tmp_path: Path) -> None:
    # Garbage where deflate data should be: only unpacking can notice, so inspecting passes.
    entry = Raw("model.bin", os.urandom(64), zipfile.ZIP_DEFLATED, size=100)
    assert inspect_zip(write(tmp_path, build_zip([entry]))).file_count == 1


def test_limits_have_the_documented_defaults() -> None:
    limits = Limits()
    assert limits.max_total_uncompressed_bytes == 16 * 1024**3
    assert limits.max_file_count == 100_000
    assert limits.max_compression_ratio == 1000
    assert limits.ratio_check_min_bytes == MiB

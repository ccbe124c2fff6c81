"""ArtifactUnpacker: the tree a container finds at /opt/ds/model/deployed_model.

Every hostile case also proves that nothing was written outside the cache, and that a refused
artifact leaves the cache exactly as it was.
"""

from __future__ import annotations

import fcntl
import os
import stat
import struct
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from dockyard.errors import InvalidParameter
from dockyard.store.unpacking import ArtifactUnpacker
from dockyard.store.zipcheck import Limits

DIGEST = "sha256-1f0c3a"


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    path = tmp_path / "cache"
    path.mkdir()
    return path


@pytest.fixture
def unpacker(cache: Path) -> ArtifactUnpacker:
    return ArtifactUnpacker(cache)


def make_zip(tmp_path: Path, entries: dict[str, bytes | None], *,
             modes: dict[str, int] | None = None, name: str = "artifact.zip") -> Path:
    """A zip as a user's tools make it; ``None`` content means a directory entry."""
    path = tmp_path / name
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for entry, content in entries.items():
            info = zipfile.ZipInfo(entry)
            mode = (modes or {}).get(entry, 0o755 if content is None else 0o644)
            kind = stat.S_IFDIR if content is None else stat.S_IFREG
            info.external_attr = (kind | mode) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, b"" if content is None else content)
    return path


def patch_entry(path: Path, name: str, *, crc: int | None = None,
                size: int | None = None) -> None:
    """Make one entry's headers (local and central) lie about its CRC or size."""
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo(name)
    central = next(i for i in _find_all(data, b"PK\x01\x02")
                   if data[i + 46:i + 46 + len(name)] == name.encode())
    for field_at, value in ((14, crc), (22, size)):
        if value is not None:
            struct.pack_into("<L", data, info.header_offset + field_at, value)
            struct.pack_into("<L", data, central + field_at + 2, value)
    path.write_bytes(bytes(data))


def _find_all(data: bytearray, needle: bytes) -> Iterator[int]:
    at = data.find(needle)
    while at >= 0:
        yield at
        at = data.find(needle, at + 1)


def snapshot(root: Path) -> dict[str, tuple[str, int, int]]:
    """Every path under ``root`` with its type, size and (for files) mtime."""
    seen = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for entry in dirnames + filenames:
            path = Path(dirpath, entry)
            st = path.lstat()
            is_file = stat.S_ISREG(st.st_mode)
            seen[str(path.relative_to(root))] = (
                stat.filemode(st.st_mode)[0], st.st_size if is_file else 0,
                st.st_mtime_ns if is_file else 0)
    return seen


def tree(root: Path) -> dict[str, str]:
    """Relative path -> 'dir' or the file's text, for comparing layouts."""
    out = {}
    for path in sorted(root.rglob("*")):
        out[path.relative_to(root).as_posix()] = "dir" if path.is_dir() else path.read_text()
    return out


# -- layout (A4), empty directories, permissions ------------------------------------------------

def test_files_zipped_at_top_level_land_at_the_top(tmp_path: Path,
                                                   unpacker: ArtifactUnpacker) -> None:
    root = unpacker.unpack(make_zip(tmp_path, {"model.joblib": b"m", "score.py": b"s"}), DIGEST)
    assert root == unpacker.cache_dir / DIGEST
    assert tree(root) == {"model.joblib": "m", "score.py": "s"}


def test_a_zipped_folder_keeps_its_folder(tmp_path: Path, unpacker: ArtifactUnpacker) -> None:
    zipped = make_zip(tmp_path, {"folder/": None, "folder/model.joblib": b"m"})
    root = unpacker.unpack(zipped, DIGEST)
    assert tree(root) == {"folder": "dir", "folder/model.joblib": "m"}


def test_missing_parent_entries_are_created(tmp_path: Path, unpacker: ArtifactUnpacker) -> None:
    root = unpacker.unpack(make_zip(tmp_path, {"a/b/c/model.bin": b"m"}), DIGEST)
    assert tree(root) == {"a": "dir", "a/b": "dir", "a/b/c": "dir", "a/b/c/model.bin": "m"}


def test_empty_directories_survive_for_triton(tmp_path: Path, unpacker: ArtifactUnpacker) -> None:
    zipped = make_zip(tmp_path, {
        "model_repository/ensemble/config.pbtxt": b"name: 'ensemble'",
        "model_repository/ensemble/1/": None,
        "logs/": None,
    })
    root = unpacker.unpack(zipped, DIGEST)
    assert (root / "model_repository/ensemble/1").is_dir()
    assert list((root / "model_repository/ensemble/1").iterdir()) == []
    assert (root / "logs").is_dir()


def test_a_non_root_reader_can_read_everything_whatever_the_umask(
        tmp_path: Path, unpacker: ArtifactUnpacker) -> None:
    zipped = make_zip(tmp_path, {"private/": None, "private/secret.bin": b"s", "run.sh": b"#!"},
                      modes={"private/": 0o700, "private/secret.bin": 0o600, "run.sh": 0o700})
    old = os.umask(0o077)
    try:
        root = unpacker.unpack(zipped, DIGEST)
    finally:
        os.umask(old)
    assert stat.S_IMODE(root.stat().st_mode) == 0o755
    assert stat.S_IMODE((root / "private").stat().st_mode) == 0o755
    assert stat.S_IMODE((root / "private/secret.bin").stat().st_mode) == 0o644
    assert stat.S_IMODE((root / "run.sh").stat().st_mode) == 0o755  # executable stays so
    for path in [root, *root.rglob("*")]:
        mode = path.stat().st_mode
        assert mode & stat.S_IROTH, path  # "other" may read files and list directories
        assert not path.is_dir() or mode & stat.S_IXOTH, path
        assert not mode & (stat.S_IWOTH | stat.S_IWGRP), path


def test_utf8_names_land_with_their_spelling(tmp_path: Path, unpacker: ArtifactUnpacker) -> None:
    root = unpacker.unpack(make_zip(tmp_path, {"modèle/données.json": b"{}"}), DIGEST)
    assert (root / "modèle" / "données.json").read_text() == "{}"


def test_empty_zip_gives_an_empty_model_directory(tmp_path: Path,
                                                  unpacker: ArtifactUnpacker) -> None:
    root = unpacker.unpack(make_zip(tmp_path, {}), DIGEST)
    assert root.is_dir() and list(root.iterdir()) == []


# -- the cache --------------------------------------------------------------------------------

def test_second_unpack_of_a_digest_is_a_cache_hit(tmp_path: Path,
                                                  unpacker: ArtifactUnpacker) -> None:
    zipped = make_zip(tmp_path, {"model.bin": b"v1"})
    root = unpacker.unpack(zipped, DIGEST)
    before = (root / "model.bin").stat().st_mtime_ns
    zipped.unlink()  # a hit must not even read the zip
    assert unpacker.unpack(zipped, DIGEST) == root
    assert (root / "model.bin").stat().st_mtime_ns == before
    assert ArtifactUnpacker(unpacker.cache_dir).unpack(zipped, DIGEST) == root  # after restart


def test_different_digests_get_different_trees(tmp_path: Path,
                                               unpacker: ArtifactUnpacker) -> None:
    one = unpacker.unpack(make_zip(tmp_path, {"m": b"1"}, name="1.zip"), "sha256-aaa")
    two = unpacker.unpack(make_zip(tmp_path, {"m": b"2"}, name="2.zip"), "sha256-bbb")
    assert ((one / "m").read_text(), (two / "m").read_text()) == ("1", "2")


class CountingUnpacker(ArtifactUnpacker):
    def __init__(self, cache_dir: Path) -> None:
        super().__init__(cache_dir)
        self.extractions = 0

    def _publish(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        self.extractions += 1
        return super()._publish(*args, **kwargs)


def test_concurrent_unpacks_of_one_digest_extract_once(tmp_path: Path, cache: Path) -> None:
    files = {f"shard{i}/weights.bin": os.urandom(64 * 1024) for i in range(8)}
    zipped = make_zip(tmp_path, dict(files))
    unpacker = CountingUnpacker(cache)
    start = threading.Barrier(8)
    results: list[Path] = []
    errors: list[BaseException] = []

    def worker() -> None:
        start.wait()
        try:
            results.append(unpacker.unpack(zipped, DIGEST))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert errors == []
    assert set(results) == {cache / DIGEST} and len(results) == 8
    assert unpacker.extractions == 1
    for name, content in files.items():
        assert (cache / DIGEST / name).read_bytes() == content
    assert sorted(os.listdir(cache)) == sorted([DIGEST, f".lock-{DIGEST}"])


def test_crash_debris_is_cleaned_by_the_next_call(tmp_path: Path, cache: Path,
                                                  unpacker: ArtifactUnpacker) -> None:
    # What a process killed mid-unpack leaves: a half-written work directory.
    for digest in (DIGEST, "sha256-other"):
        debris = cache / f".unpacking-{digest}-0badf00d"
        (debris / "half").mkdir(parents=True)
        (debris / "half" / "weights.bin").write_bytes(b"\0" * 100)
    root = unpacker.unpack(make_zip(tmp_path, {"model.bin": b"m"}), DIGEST)
    assert tree(root) == {"model.bin": "m"}
    assert sorted(os.listdir(cache)) == sorted([DIGEST, f".lock-{DIGEST}"])


def test_work_in_progress_of_another_process_is_left_alone(tmp_path: Path, cache: Path,
                                                           unpacker: ArtifactUnpacker) -> None:
    busy = cache / ".unpacking-sha256-busy-12345678"
    busy.mkdir()
    fd = os.open(cache / ".lock-sha256-busy", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # as the other process holds it while extracting
        unpacker.unpack(make_zip(tmp_path, {"m": b"m"}), DIGEST)
        assert busy.is_dir()
    finally:
        os.close(fd)
    assert unpacker.prune(keep={DIGEST}) == []
    assert not busy.exists()


def test_remove_and_prune_clean_the_cache(tmp_path: Path, cache: Path,
                                          unpacker: ArtifactUnpacker) -> None:
    zipped = make_zip(tmp_path, {"m": b"m"})
    for digest in ("sha256-a", "sha256-b", "sha256-c"):
        unpacker.unpack(zipped, digest)
    (cache / "README").write_text("not ours")
    assert unpacker.remove("sha256-a") is True
    assert unpacker.remove("sha256-a") is False
    assert unpacker.prune(keep={"sha256-c"}) == ["sha256-b"]
    assert sorted(os.listdir(cache)) == [".lock-sha256-c", "README", "sha256-c"]
    assert unpacker.unpack(zipped, "sha256-a").is_dir()  # a removed digest unpacks again


@pytest.mark.parametrize("digest", ["", "../x", "a/b", ".hidden", "-rf", "x" * 300])
def test_a_digest_that_is_not_a_plain_name_is_refused(tmp_path: Path, cache: Path,
                                                      unpacker: ArtifactUnpacker,
                                                      digest: str) -> None:
    before = snapshot(tmp_path)
    with pytest.raises(InvalidParameter, match="not a plain name"):
        unpacker.unpack(make_zip(tmp_path, {"m": b"m"}, name="d.zip"), digest)
    assert {k: v for k, v in snapshot(tmp_path).items() if k != "d.zip"} == before


# -- hostile artifacts ------------------------------------------------------------------------

def hostile_zip(tmp_path: Path, case: str) -> tuple[Path, str]:
    """A refused artifact and the entry name its error must mention."""
    path = tmp_path / "zips" / f"{case}.zip"
    path.parent.mkdir(exist_ok=True)
    if case == "random":
        path.write_bytes(os.urandom(2048))
        return path, "not a zip archive"
    if case == "truncated":
        whole = make_zip(path.parent, {"model.bin": os.urandom(4096)}, name="whole.zip")
        path.write_bytes(whole.read_bytes()[:3000])
        whole.unlink()
        return path, "not a zip archive"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("score.py", b"ok")
        if case == "dotdot":
            zf.writestr("../../evil.txt", b"pwned")
            return path, "'../../evil.txt'"
        if case == "absolute":
            zf.writestr(zipfile.ZipInfo("/tmp/evil.txt"), b"pwned")
            return path, "'/tmp/evil.txt'"
        if case in ("symlink", "symlink-write-through"):
            link = zipfile.ZipInfo("escape")
            link.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(link, b"../..")
            if case == "symlink-write-through":
                zf.writestr("escape/evil.txt", b"pwned")
            return path, "'escape'"
        if case == "duplicate":
            with pytest.warns(UserWarning):
                zf.writestr("score.py", b"second")
            return path, "'score.py'"
    raise AssertionError(case)


@pytest.mark.parametrize("case", ["random", "truncated", "dotdot", "absolute", "symlink",
                                  "symlink-write-through", "duplicate"])
def test_hostile_artifacts_are_refused_and_write_nothing(tmp_path: Path, cache: Path,
                                                         unpacker: ArtifactUnpacker,
                                                         case: str) -> None:
    zipped, named = hostile_zip(tmp_path, case)
    before = snapshot(tmp_path)
    with pytest.raises(InvalidParameter) as caught:
        unpacker.unpack(zipped, DIGEST)
    assert named in caught.value.message
    assert snapshot(tmp_path) == before  # the cache's parent, the cache, and the zips
    assert os.listdir(cache) == []


def test_entry_bigger_than_its_header_says_cannot_fill_the_disk(tmp_path: Path, cache: Path,
                                                               unpacker: ArtifactUnpacker) -> None:
    # Declares 1000 bytes (too small for the ratio rule to look at) but inflates to 16 MiB.
    zipped = make_zip(tmp_path, {"score.py": b"ok", "weights.bin": bytes(16 << 20)})
    patch_entry(zipped, "weights.bin", size=1000)
    before = snapshot(tmp_path)
    with pytest.raises(InvalidParameter) as caught:
        unpacker.unpack(zipped, DIGEST)
    assert "'weights.bin'" in caught.value.message
    assert "does not match its header" in caught.value.message
    assert snapshot(tmp_path) == before and os.listdir(cache) == []


def test_corrupt_data_mid_archive_leaves_no_half_tree(tmp_path: Path, cache: Path,
                                                      unpacker: ArtifactUnpacker) -> None:
    zipped = make_zip(tmp_path, {"a.bin": b"a" * 1000, "b.bin": b"b" * 1000, "c/": None})
    patch_entry(zipped, "b.bin", crc=0xDEADBEEF)
    with pytest.raises(InvalidParameter, match="'b.bin'.*does not match its header"):
        unpacker.unpack(zipped, DIGEST)
    assert os.listdir(cache) == []


def test_total_limit_is_enforced_on_unpack(tmp_path: Path, cache: Path) -> None:
    unpacker = ArtifactUnpacker(cache, Limits(max_total_uncompressed_bytes=1500))
    zipped = make_zip(tmp_path, {"a.bin": b"a" * 1000, "b.bin": b"b" * 1000})
    with pytest.raises(InvalidParameter, match="'b.bin'.*zip-bomb limit"):
        unpacker.unpack(zipped, DIGEST)
    assert os.listdir(cache) == []


def test_deeply_nested_paths_unpack(tmp_path: Path, unpacker: ArtifactUnpacker) -> None:
    deep = "d/" * 255 + "model.bin"  # the deepest allowed: 256 levels
    root = unpacker.unpack(make_zip(tmp_path, {deep: b"m"}), DIGEST)
    assert (root / deep).read_bytes() == b"m"
    assert unpacker.remove(DIGEST) and not root.exists()


@pytest.mark.parametrize(("declared", "budget", "rule"), [
    (10, 10_000, "more than its declared 10 bytes"),
    (1000, 100, "zip-bomb limit"),
])
def test_bytes_are_counted_while_writing_not_taken_from_headers(
        tmp_path: Path, declared: int, budget: int, rule: str) -> None:
    # Defence in depth, below the public API: today's zipfile stops at the header's size by
    # itself, so hand the writer an entry that claims less than the member really holds.
    from dockyard.store.unpacking import _write_file
    from dockyard.store.zipcheck import EntryKind, ZipEntry

    zipped = make_zip(tmp_path, {"weights.bin": b"w" * 1000})
    target = tmp_path / "out.bin"
    with zipfile.ZipFile(zipped) as zf:
        info = zf.getinfo("weights.bin")
        entry = ZipEntry(name="weights.bin", path="weights.bin", kind=EntryKind.FILE,
                         size=declared, compressed_size=info.compress_size, executable=False,
                         info=info)
        with pytest.raises(InvalidParameter, match=f"'weights.bin'.*{rule}"):
            _write_file(zf, entry, target, budget)
    assert target.stat().st_size <= min(declared, budget)


@pytest.mark.parametrize("name", ["../evil", "a/../../evil", "/etc/evil", "a/./../evil", ""])
def test_the_writer_refuses_escaping_paths_on_its_own(tmp_path: Path, name: str) -> None:
    # Defence in depth, below the public API: zipcheck never lets these through, and the
    # writer would refuse them anyway.
    from dockyard.store.unpacking import _Tree
    from dockyard.store.zipcheck import EntryKind, ZipEntry

    root = tmp_path / "root"
    root.mkdir()
    before = snapshot(tmp_path)
    entry = ZipEntry(name=name, path=name, kind=EntryKind.FILE, size=0, compressed_size=0,
                     executable=False, info=zipfile.ZipInfo("x"))
    with pytest.raises(InvalidParameter, match="outside the model directory"):
        _Tree(root).file(name, entry)
    created = set(snapshot(tmp_path)) - set(before)
    assert all(path.startswith("root/") for path in created)

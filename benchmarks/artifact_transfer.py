"""Upload and download a large artifact through a live dockyard server; print throughput and
the server's peak memory (VmHWM).

    .venv/bin/python benchmarks/artifact_transfer.py --size-gb 2

The artifact (a zip holding one stored file, since the server refuses anything else) is
streamed from a generator (no file of that size is needed on the client side) and the
download is hashed as it arrives, so the figures measure the server, not the disk
space of the client.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import struct
import sys
import tempfile
import time
import zlib
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.support.server import LiveServer  # noqa: E402

CHUNK = 1024 * 1024


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def stored_zip_frame(block: bytes, size: int) -> tuple[bytes, bytes]:
    """The bytes before and after ``size`` bytes of repeated ``block`` that make them a valid zip
    of one stored file (no zip64, so under 4 GiB)."""
    if size >= 0xFFFFFFFF:
        raise SystemExit("--size-gb must stay under 4 (this benchmark writes no zip64 records)")
    crc, remaining = 0, size
    while remaining > 0:
        piece = block[: min(CHUNK, remaining)]
        crc = zlib.crc32(piece, crc)
        remaining -= len(piece)
    name = b"weights.bin"
    local = struct.pack("<4sHHHHHLLLHH", b"PK\x03\x04", 20, 0, 0, 0, 0x21, crc, size, size, len(name), 0) + name
    central = struct.pack("<4sHHHHHHLLLHHHHHLL", b"PK\x01\x02", (3 << 8) | 20, 20, 0, 0, 0, 0x21, crc, size, size,
                          len(name), 0, 0, 0, 0, 0o100644 << 16, 0) + name  # fmt: skip
    end = struct.pack("<4sHHHHLLH", b"PK\x05\x06", 0, 0, 1, 1, len(central), len(local) + size, 0)
    return local, central + end


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-gb", type=float, default=2.0)
    args = parser.parse_args()
    size = int(args.size_gb * 1024**3)
    block = os.urandom(CHUNK)

    with tempfile.TemporaryDirectory(prefix="dockyard-bench-") as tmp:
        server = LiveServer(Path(tmp) / "data").start()
        try:
            client = server.client(base_url=server.url + "/20190101", timeout=600)
            compartment = server.oci_config()["tenancy"]  # the administrator's root compartment
            project = client.post("/projects", json={"compartmentId": compartment}).json()
            model = client.post("/models", json={"compartmentId": compartment, "projectId": project["id"]}).json()
            assert server.process is not None
            idle_rss = peak_rss_mb(server.process.pid)

            sent = hashlib.sha256()

            head, tail = stored_zip_frame(block, size)
            total = len(head) + size + len(tail)

            def body() -> object:
                sent.update(head)
                yield head
                remaining = size
                while remaining > 0:
                    piece = block[: min(CHUNK, remaining)]
                    sent.update(piece)
                    remaining -= len(piece)
                    yield piece
                sent.update(tail)
                yield tail

            started = time.perf_counter()
            response = client.post(f"/models/{model['id']}/artifact", content=body(), headers={"content-length": str(total)})
            upload_s = time.perf_counter() - started
            response.raise_for_status()
            upload_rss = peak_rss_mb(server.process.pid)

            received = hashlib.sha256()
            count = 0
            started = time.perf_counter()
            with client.stream("GET", f"/models/{model['id']}/artifact/content") as download:
                download.raise_for_status()
                for chunk in download.iter_raw(CHUNK):
                    received.update(chunk)
                    count += len(chunk)
            download_s = time.perf_counter() - started
            peak = peak_rss_mb(server.process.pid)

            assert count == total and received.hexdigest() == sent.hexdigest(), "download differs from upload"
            mb = size / 1024**2
            print(f"artifact size        {mb:10.0f} MB")
            print(f"upload               {upload_s:10.1f} s   {mb / upload_s:8.0f} MB/s")
            print(f"download             {download_s:10.1f} s   {mb / download_s:8.0f} MB/s")
            print(f"server RSS idle      {idle_rss:10.0f} MB")
            print(f"server peak RSS      {upload_rss:10.0f} MB after upload, {peak:.0f} MB after download")
            print(f"identical            {received.hexdigest() == sent.hexdigest()}")
            print(f"peak under 200 MB    {peak < 200}")
        finally:
            server.stop()


if __name__ == "__main__":
    main()

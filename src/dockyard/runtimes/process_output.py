"""Following a local instance's output file (stdout and stderr together, as written).

The position is a byte offset into the file, which only grows while the instance lives, so a
follower resumes exactly after the last line it stored. The file has no timestamps: a line's
time is when it was read, within `poll_s` of being written while dockyard runs (lines written
while dockyard was down get the time it read them after its restart).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import BinaryIO

from dockyard.runtimes.output import COMBINED, OutputLine

READ_BYTES = 1024 * 1024  # at most this much per read


async def follow_file(path: Path, running: Callable[[], bool], after: str | None = None, *,
                      poll_s: float = 0.2, read_bytes: int = READ_BYTES) -> AsyncIterator[OutputLine]:
    """Lines of `path` after byte offset `after` (0 when None), then new ones as they come, until
    `running()` (a blocking check) says the writer ended and the file is read to its end.

    The file stays open while followed: when the runtime removes it right after stopping the
    instance, its last lines (what a server prints while shutting down) are still read."""
    offset = int(after) if after and after.isdigit() else 0
    try:
        handle = await asyncio.to_thread(open, path, "rb")
    except FileNotFoundError:
        return  # stopped and removed before anyone followed it
    try:
        while True:
            # Checked before reading: whatever the writer wrote before ending is in this read.
            alive = await asyncio.to_thread(_still_written, handle, running)
            chunk = await asyncio.to_thread(_read_from, handle, offset, read_bytes)
            more = len(chunk) == read_bytes
            end = chunk.rfind(b"\n") + 1
            if end == 0 and (more or not alive):
                end = len(chunk)  # a line longer than one read, or the unterminated last line
            now = datetime.now(timezone.utc)
            for raw in _lines(chunk[:end]):
                offset += len(raw)
                yield OutputLine(now, COMBINED, raw.rstrip(b"\r\n").decode("utf-8", errors="replace"), str(offset))
            if not alive and not more and end == len(chunk):
                return
            if not more:
                await asyncio.sleep(poll_s)
    finally:
        handle.close()


def _still_written(handle: BinaryIO, running: Callable[[], bool]) -> bool:
    """False once the writer ended, or the file was removed (the instance was stopped)."""
    return os.fstat(handle.fileno()).st_nlink > 0 and running()


def _read_from(handle: BinaryIO, offset: int, max_bytes: int) -> bytes:
    handle.seek(offset)
    return handle.read(max_bytes)


def _lines(data: bytes) -> list[bytes]:
    """`data` cut after each newline (the last piece may lack one); b"" gives []."""
    pieces = data.split(b"\n")
    lines = [piece + b"\n" for piece in pieces[:-1]]
    return lines + [pieces[-1]] if pieces[-1] else lines

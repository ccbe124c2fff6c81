"""Following a container's stdout and stderr line by line, with the engine's timestamps.

The engine keeps each line's timestamp (nanoseconds), so a follower resumes after the last line
it stored by asking for lines `since` that second and skipping those at or before the stored
timestamp. The two streams are read separately (the Docker SDK's log stream does not say which
stream a chunk came from), each in a daemon thread of its own: a follow lasts as long as the
container runs, and must not hold a worker of the event loop's shared thread pool.

Because the two threads deliver independently, a stdout line may arrive after a later stderr
line; one timestamp could not say where each stream stopped. The position is therefore
"<stdout ns>:<stderr ns>", the last line delivered of each stream (a bare number, as older
positions were, applies to both).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from typing import Any

import docker
import docker.errors
import requests

from dockyard.runtimes.output import STDERR, STDOUT, OutputLine, engine_nanoseconds, from_nanoseconds


def parse_position(after: str | None) -> dict[str, int]:
    """The last delivered timestamp of each stream in `after` ("<stdout>:<stderr>" or one number)."""
    out, _, err = (after or "").partition(":")
    first = int(out) if out.isdigit() else 0
    return {STDOUT: first, STDERR: int(err) if err.isdigit() else first}


async def follow_container_output(client: docker.DockerClient, container_id: str, after: str | None) -> AsyncIterator[OutputLine]:
    """Every line of the container after position `after` (all when None), then each new one as
    it is written, until the container stops or the caller stops iterating."""
    after_ns = parse_position(after)
    loop = asyncio.get_running_loop()
    lines: asyncio.Queue[tuple[int, str, str] | None] = asyncio.Queue()
    streams: list[Any] = []
    closed = threading.Event()

    def put(item: tuple[int, str, str] | None) -> None:
        try:
            loop.call_soon_threadsafe(lines.put_nowait, item)
        except RuntimeError:
            pass  # the loop is gone: nobody is reading any more

    def emit(raw: str, stream_name: str) -> None:
        stamp, _, text = raw.partition(" ")
        try:
            ns = engine_nanoseconds(stamp)
        except ValueError:
            return  # not a line the engine stamped (cannot happen with timestamps=True)
        if ns > after_ns[stream_name]:
            put((ns, stream_name, text.rstrip("\r")))

    def pump(stream_name: str) -> None:
        pending = ""
        try:
            since = max(1, after_ns[stream_name] // 1_000_000_000) if after_ns[stream_name] else None
            stream = client.api.logs(container_id, stdout=stream_name == STDOUT, stderr=stream_name == STDERR,
                                     stream=True, follow=True, timestamps=True, since=since)
            streams.append(stream)
            if closed.is_set():
                stream.close()
            for chunk in stream:
                pending += chunk.decode("utf-8", errors="replace") if isinstance(chunk, bytes) else chunk
                *complete, pending = pending.split("\n")
                for raw in complete:
                    emit(raw, stream_name)
        except (docker.errors.APIError, requests.exceptions.RequestException, OSError, ValueError, AttributeError):
            pass  # the container went away, or the caller closed the stream
        finally:
            if pending:
                emit(pending, stream_name)
            put(None)

    for name in (STDOUT, STDERR):
        threading.Thread(target=pump, args=(name,), name=f"dockyard-output-{container_id[:12]}-{name}", daemon=True).start()
    last = dict(after_ns)
    try:
        ended = 0
        while ended < 2:
            item = await lines.get()
            if item is None:
                ended += 1
                continue
            ns, stream_name, text = item
            last[stream_name] = ns
            yield OutputLine(from_nanoseconds(ns), stream_name, text, f"{last[STDOUT]}:{last[STDERR]}")
    finally:
        closed.set()
        for stream in list(streams):
            try:
                stream.close()
            except Exception:
                pass  # closing a stream the engine already ended

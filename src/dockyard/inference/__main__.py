"""`python -m dockyard.inference`: serve a DEFAULT artifact's score.py over HTTP.

    python -m dockyard.inference --artifact-dir DIR [--host 127.0.0.1] [--port 8080]
    python -m dockyard.inference --artifact-dir DIR --fd 3      # accept on an inherited socket
    python -m dockyard.inference --artifact-dir DIR --check     # validate only

Exit codes: 2 when the artifact is invalid (each problem on stderr naming the file), 1 when
score.py fails to import or load, 0 after a passing --check. On SIGTERM/SIGINT open requests
get --graceful-shutdown-s to finish, then the process ends by that signal (uvicorn re-raises it).
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import time
import traceback
from pathlib import Path


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m dockyard.inference", description=__doc__.split("\n")[0])
    parser.add_argument("--artifact-dir", required=True, type=Path, help="the unpacked artifact (score.py, runtime.yaml)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8080, help="port to listen on (default 8080)")
    parser.add_argument("--fd", type=int, default=None, help="listen on this inherited, bound socket instead")
    parser.add_argument("--threads", type=int, default=4, help="predict() calls that may run at once (default 4)")
    parser.add_argument("--graceful-shutdown-s", type=float, default=5.0, help="time open requests get on SIGTERM")
    parser.add_argument("--check", action="store_true", help="validate the artifact, print the problems, and exit")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    from dockyard.inference.artifact import errors, validate_artifact

    problems = validate_artifact(args.artifact_dir)
    for problem in problems:
        print(problem, file=sys.stderr if problem.is_error else sys.stdout, flush=True)
    if errors(problems):
        print(f"dockyard inference: the artifact at {args.artifact_dir} cannot be served (A2); fix the problems above",
              file=sys.stderr, flush=True)
        return 2
    if args.check:
        print(f"dockyard inference: {args.artifact_dir} is a valid DEFAULT artifact", flush=True)
        return 0

    from dockyard.inference.scoring import ScoreFileError, load_scorer

    try:
        scorer = load_scorer(args.artifact_dir)
    except ScoreFileError as exc:
        if exc.__cause__ is not None:
            traceback.print_exception(exc.__cause__, file=sys.stderr)
        print(f"dockyard inference: {exc.message}", file=sys.stderr, flush=True)
        return 1

    import uvicorn

    from dockyard.inference.server import create_app

    app = create_app(scorer, threads=args.threads)
    config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        lifespan="off",
        access_log=False,  # RequestLog prints one line per request
        log_level="warning",
        timeout_graceful_shutdown=args.graceful_shutdown_s,
        server_header=False,
    )
    server = uvicorn.Server(config)
    sockets = None
    if args.fd is not None:
        sock = socket.socket(fileno=args.fd)  # family and type are read from the descriptor
        sockets = [sock]
        host, port = sock.getsockname()[:2]
    else:
        host, port = args.host, args.port
    print(
        f"dockyard inference: serving {args.artifact_dir} on http://{host}:{port} (pid {os.getpid()}, "
        f"model loaded in {scorer.load_seconds * 1000:.0f} ms, ready {time.perf_counter() - started:.2f} s after start)",
        flush=True,
    )
    server.run(sockets=sockets)
    return 0


if __name__ == "__main__":
    sys.exit(main())

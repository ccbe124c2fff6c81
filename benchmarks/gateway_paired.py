"""Two versions of the gateway side by side, under the same load at the same time: the CPU each
spends per request. For telling whether a change to the request path helps, on a machine whose
speed drifts (gateway_overhead.py measures its targets one after the other, and the drift
between them can be larger than the change).

    python benchmarks/gateway_paired.py --base HEAD~1 [--rounds 4] [--duration 15] [--workers 2] [--signed | --sdk]

`--base` is a git revision of this repository (checked out into a temporary worktree) or a
directory holding another checkout's `src`. Both gateways run as users run them (`dockyard
serve --role gateway`, `--gateway-workers N`) over throw-away data directories, in front of the
same fast upstream (gateway_overhead.py's). Each round, one wrk per gateway (32 connections,
the same small JSON body, signed with `--signed`, or sent with every header the oci SDK's
ModelDeploymentClient sends with `--sdk`) runs at the same time; the figures are the
requests each gateway answered and the CPU time of all its processes (supervisor and workers)
per request. Needs wrk (`apt-get install -y wrk`).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gateway_overhead as load  # noqa: E402  (the upstream, the store, the signed headers, CPU time)

REPO = Path(__file__).resolve().parents[1]


def base_source(base: str, work: Path) -> Path:
    """The `src` directory of `base`: a directory given as is, else a worktree of that revision."""
    given = Path(base)
    if (given / "src" / "dockyard").is_dir():
        return given / "src"
    if (given / "dockyard").is_dir():
        return given
    tree = work / "base"
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", "--quiet", str(tree), base], check=True)
    return tree / "src"


def write_store(source: Path, data_dir: Path, upstream_port: int, port: int) -> Path:
    """gateway_overhead.py's store, written by `source`'s own dockyard: a database made by a
    newer one has a schema version an older gateway refuses."""
    code = ("import sys; from pathlib import Path; sys.path.insert(0, sys.argv[1]); import gateway_overhead as g; "
            "print(g.write_store(Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])))")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code, str(Path(__file__).resolve().parent), str(data_dir), str(upstream_port), str(port)],
                         env=os.environ | {"PYTHONPATH": str(source)}, check=True, capture_output=True, text=True).stdout  # fmt: skip
    return Path(out.strip().splitlines()[-1])


def start_gateway(source: Path, data_dir: Path, port: int, workers: int, signed: bool) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "dockyard.cli.main", "serve", "--role", "gateway", "--host", "127.0.0.1",
               "--port", str(port), "--data-dir", str(data_dir), "--gateway-workers", str(workers), "--log-level", "warning"]  # fmt: skip
    if not signed:
        command.append("--insecure-no-auth")
    env = os.environ | {"PYTHONPATH": str(source), "DOCKYARD_GATEWAY_INFLIGHT_PER_INSTANCE": "100000"}
    return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def answered(url: str, script: Path, duration_s: int) -> int:
    out = subprocess.run(["wrk", "-t1", "-c32", f"-d{duration_s}s", "-s", str(script), url],
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    return int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", required=True, help="a git revision, or a directory with another checkout's src")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--duration", type=int, default=15, help="seconds per round")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--signed", action="store_true")
    parser.add_argument("--sdk", action="store_true", help="signed, with the headers the SDK sends (gateway_overhead.sdk_headers)")
    args = parser.parse_args()
    args.signed = args.signed or args.sdk
    if shutil.which("wrk") is None:
        sys.exit("needs wrk: apt-get install -y wrk")
    work = Path(tempfile.mkdtemp(prefix="dockyard-paired-"))
    sources = {"base": base_source(args.base, work), "this": REPO / "src"}
    upstream_port = load.free_port()
    upstream = load.start_upstream(upstream_port)
    gateways: dict[str, tuple[subprocess.Popen[bytes], str, Path]] = {}
    try:
        load.wait_for(upstream_port)
        for name, source in sources.items():
            data_dir = work / f"data-{name}"
            data_dir.mkdir()
            port = load.free_port()
            config = write_store(source, data_dir, upstream_port, port)
            process = start_gateway(source, data_dir, port, args.workers, args.signed)
            url = f"http://127.0.0.1:{port}/{load.DEPLOYMENT_ID}/predict"
            load.wait_for(port)
            headers = (load.sdk_headers if args.sdk else load.signed_headers)(config, url) if args.signed else {}
            gateways[name] = (process, url, load.lua_script(work, headers))
            answered(url, gateways[name][2], 2)  # warm: routes, keys and decisions cached
        print(f"{'SDK' if args.sdk else 'signed' if args.signed else 'unsigned'} requests; base = {args.base} ({sources['base']}), this = {sources['this']}; "
              f"{args.workers} workers each, both loaded at once with 32 connections each, {args.duration} s per round")  # fmt: skip
        print(f"this gateway: {load.gateway_build()}", flush=True)
        ratios = []
        for round_ in range(1, args.rounds + 1):
            before = {name: load.cpu_seconds(g[0].pid) for name, g in gateways.items()}
            counts: dict[str, int] = {}
            threads = [threading.Thread(target=lambda n=name, g=g: counts.__setitem__(n, answered(g[1], g[2], args.duration)))
                       for name, g in gateways.items()]  # fmt: skip
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            cpu = {name: 1e6 * (load.cpu_seconds(g[0].pid) - before[name]) / max(1, counts[name]) for name, g in gateways.items()}
            ratios.append(cpu["this"] / cpu["base"])
            print(f"round {round_}: " + ", ".join(
                f"{name} {counts[name] / args.duration:,.0f} req/s, {cpu[name]:.0f} us CPU per request" for name in gateways
            ) + f"; this/base CPU {ratios[-1]:.3f}", flush=True)  # fmt: skip
        print(f"this/base CPU per request, each round: {', '.join(f'{r:.3f}' for r in ratios)}")
    finally:
        for process, _, _ in gateways.values():
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
                process.wait(20)
        load.stop(upstream)
        if (work / "base").exists():
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(work / "base")], check=False)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

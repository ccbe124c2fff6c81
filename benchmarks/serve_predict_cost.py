"""What a predict costs `dockyard serve` itself (the default role: control plane, reconciler and
gateway in one process), as users first run it: the bundled example model deployed on the
process runtime, loaded by wrk with the example's request.

    python benchmarks/serve_predict_cost.py [--src DIR] [--connections 16] [--duration 8] [--rounds 3]

Starts `dockyard serve --example --runtime process --insecure-no-auth` from `--src` (default this
checkout's src; give another checkout's to compare two versions) over a throw-away data
directory, waits for the example to be ACTIVE, then for each round prints the requests/s, the p50
and p99 latency and the CPU time (user + system) of the dockyard process per request: the gateway's
work, its access log and the predict-log collection, not the model's (the instance is a process
of its own). The model server is the bottleneck here, so requests/s says little; the CPU per
request is the figure to compare. Needs wrk (`apt-get install -y wrk`).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def own_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process `pid` (all its threads, not its children)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").strip().splitlines()[0])
    parser.add_argument("--src", type=Path, default=SRC, help="the src directory of the dockyard to run (default: this checkout's)")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--duration", type=int, default=8, help="seconds per round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("needs wrk: apt-get install -y wrk")
    work = Path(tempfile.mkdtemp(prefix="dockyard-serve-bench-"))
    port = free_port()
    log_path = work / "serve.log"
    with log_path.open("w") as log:
        serve = subprocess.Popen(
            [sys.executable, "-m", "dockyard.cli.main", "serve", "--data-dir", str(work / "data"), "--port", str(port),
             "--runtime", "process", "--example", "--insecure-no-auth", "--log-level", "warning"],
            env=os.environ | {"PYTHONPATH": str(args.src.resolve())}, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        found = None
        deadline = time.monotonic() + 300
        while found is None and time.monotonic() < deadline and serve.poll() is None:
            found = re.search(r"/(ocid1[^/\s]+)/predict .* -d '([^']+)'", log_path.read_text())
            time.sleep(0.5)
        if found is None:
            sys.exit(f"the example did not become ACTIVE; dockyard printed:\n{log_path.read_text()[-3000:]}")
        deployment_id, body = found.groups()
        script = work / "predict.lua"
        script.write_text(f'wrk.method = "POST"\nwrk.body = {json.dumps(body)}\nwrk.headers["Content-Type"] = "application/json"\n')
        url = f"http://127.0.0.1:{port}/{deployment_id}/predict"
        wrk = ["wrk", "-t1", f"-c{args.connections}", "--latency", "-s", str(script), url]
        subprocess.run([*wrk, "-d2s"], capture_output=True, check=True)  # warm-up: connections, caches
        print(f"dockyard serve from {args.src}, example model on the process runtime, wrk {args.connections} connections")
        for number in range(args.rounds):
            before = own_cpu_seconds(serve.pid)
            out = subprocess.run([*wrk, f"-d{args.duration}s"], capture_output=True, text=True, check=True).stdout
            spent = own_cpu_seconds(serve.pid) - before
            rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
            p50 = re.search(r"\s50%\s+(\S+)", out).group(1)  # type: ignore[union-attr]
            p99 = re.search(r"\s99%\s+(\S+)", out).group(1)  # type: ignore[union-attr]
            failed = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
            print(f"round {number + 1}: {rps:,.0f} req/s, p50 {p50}, p99 {p99}, dockyard's CPU {spent / (rps * args.duration) * 1e6:.0f} us per request"
                  f"{f', {failed.group(1)} failed' if failed else ''}", flush=True)  # fmt: skip
    finally:
        os.killpg(serve.pid, signal.SIGTERM)
        try:
            serve.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(serve.pid, signal.SIGKILL)
        # The example's instance outlives dockyard on purpose (a restart adopts it): end it here.
        for state in (work / "data" / "processes" / "instances").glob("*.json"):
            try:
                os.killpg(int(json.loads(state.read_text())["pid"]), signal.SIGKILL)
            except (OSError, ValueError, KeyError):
                pass
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

"""Predict requests through the gateway while one of three instances is killed (`docker kill`):
how many were sent, succeeded, failed before delivery, and were lost (lost must be 0).

    bash scripts/infra/docker.sh && bash scripts/infra/registry.sh && bash scripts/infra/images.sh
    .venv/bin/python benchmarks/predict_kill_load.py [--requests 10000] [--concurrency 16] [--instances 3]

A real `dockyard serve` (Docker runtime, short health settings) runs a deployment of a small
echo model server (tests/support/kill_load.py) on the base test image. Every request is signed
as the administrator (the OCI config the server writes) and carries its own opc-request-id;
each instance logs the ids it received, which tells delivered requests from undelivered ones.
Once `--kill-after` of the requests are sent, one instance is killed; after the run the script
waits for the deployment to serve on all its instances again and checks that each answers.

"lost": no HTTP reply at all, or a 5xx for a request no instance received. "failed after
delivery" (the killed instance's requests in flight, a clear 502) is reported apart. Exit status
1 when anything is lost or the deployment does not recover.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from tests.support.kill_load import (  # noqa: E402
    LoadPlan,
    admin_auth,
    admin_config,
    classify,
    containers_by_instance,
    create_echo_deployment,
    echo_artifact,
    run_load,
    serving_instances,
    spread,
    wait_serving,
    DeliveryLog,
)
from tests.support.server import LiveServer  # noqa: E402

IMAGE = "127.0.0.1:5001/dockyard-test/base:bookworm"
HEALTH_ENV = {
    "DOCKYARD_HEALTH_START_PERIOD_S": "10",
    "DOCKYARD_HEALTH_INTERVAL_S": "1",
    "DOCKYARD_HEALTH_TIMEOUT_S": "1",
    "DOCKYARD_HEALTH_RETRIES": "2",
    "DOCKYARD_HEALTH_DEADLINE_S": "60",
    "DOCKYARD_RECONCILE_INTERVAL_S": "0.5",
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rate", type=float, default=None, help="requests per second (default: as fast as possible)")
    parser.add_argument("--instances", type=int, default=3)
    parser.add_argument("--kill-after", type=float, default=0.35, help="fraction of the requests sent before the kill")
    args = parser.parse_args()

    import docker

    engine = docker.from_env(version="auto", timeout=120)
    root = Path(tempfile.mkdtemp(prefix="dockyard-kill-load-"))
    prefix = f"dykl{secrets.token_hex(3)}"
    server = LiveServer(root / "data", runtime="docker", env=HEALTH_ENV | {"DOCKYARD_LABEL_PREFIX": prefix})
    server.start(timeout_s=60)
    deployment_id = ""
    seen_containers: dict[str, object] = {}
    try:
        import oci

        config = admin_config(server.data_dir)
        auth = admin_auth(server.data_dir)
        ds = oci.data_science.DataScienceClient(config, service_endpoint=server.url)
        deployment_id = create_echo_deployment(ds, config["tenancy"], echo_artifact(root / "echo.zip"), IMAGE,
                                               args.instances, f"kill-load-{prefix}")  # fmt: skip
        wait_serving(server.url, auth, deployment_id, args.instances, 120)
        url = ds.get_model_deployment(deployment_id).data.model_deployment_url + "/predict"

        def containers() -> list[object]:
            found = containers_by_instance(engine, server.url, auth, deployment_id)
            seen_containers.update({c.id: c for c in found})  # type: ignore[attr-defined]
            return found

        log = DeliveryLog(engine, containers).start()
        victim = containers()[0]
        first = serving_instances(server.url, auth, deployment_id)

        killed: list[float] = []
        recovered: list[float] = []

        def watch_recovery() -> None:
            """The first moment after the kill that all instances serve again, a new one among them."""
            while not killed:
                time.sleep(0.1)
            before = {i["instanceId"] for i in first}
            deadline = time.monotonic() + 600
            while time.monotonic() < deadline:
                try:
                    serving = serving_instances(server.url, auth, deployment_id)
                except Exception:  # a busy server: ask again
                    serving = []
                if len(serving) == args.instances and {i["instanceId"] for i in serving} - before:
                    recovered.append(time.monotonic())
                    return
                time.sleep(0.25)

        def kill() -> None:
            victim.kill()  # type: ignore[attr-defined]  # SIGKILL, as `docker kill`
            killed.append(time.monotonic())

        plan = LoadPlan(requests=args.requests, concurrency=args.concurrency, rate_per_s=args.rate, kill_after=args.kill_after)
        print(f"{args.requests} predict requests, {args.concurrency} at a time, to {args.instances} instances; "
              f"killing {victim.name} after {int(args.requests * args.kill_after)}")  # type: ignore[attr-defined]  # fmt: skip
        watcher = threading.Thread(target=watch_recovery, daemon=True)
        watcher.start()
        started = time.monotonic()
        outcomes, _ = asyncio.run(run_load(url, plan, auth, kill))
        duration = time.monotonic() - started
        watcher.join(600)
        recovered_after = recovered[0] - killed[0] if recovered and killed else None
        answering = asyncio.run(spread(url, auth, 30 * args.instances))
        report = classify(outcomes, log.receipts())
        report.duration_s = duration
        running = {c.id[:12] for c in containers_by_instance(engine, server.url, auth, deployment_id)}  # type: ignore[attr-defined]
        print(f"requests sent:           {report.sent}")
        print(f"succeeded:               {report.succeeded}")
        print(f"failed before delivery:  {report.failed_before_delivery}")
        print(f"lost:                    {report.lost}")
        print(f"failed after delivery:   {report.failed_after_delivery} (in flight on the killed instance)")
        print(f"delivered twice:         {report.delivered_twice}")
        print(f"run: {duration:.1f} s, {report.sent / duration:.0f} requests/s; outcomes {dict(report.statuses)}")
        print(f"served by: {dict(report.served_by)}")
        if report.lost_examples:
            print(f"lost, e.g.: {report.lost_examples}")
        print(f"gateway sent on to another instance: {server.log().count('sending it to another instance')} request(s)")
        print(f"all {args.instances} serving again {recovered_after:.1f} s after the kill (a replacement among them)"
              if recovered_after is not None else "the deployment did not recover")  # fmt: skip
        print(f"after the run, answers came from {dict(answering)}; running containers {sorted(running)}")
        ok = report.lost == 0 and recovered_after is not None and \
            set(answering) == running and len(running) == args.instances
        return 0 if ok else 1
    finally:
        if deployment_id:
            try:
                import httpx

                httpx.delete(f"{server.url}/20190101/modelDeployments/{deployment_id}", auth=admin_auth(server.data_dir),
                             timeout=30, trust_env=False)  # fmt: skip
                time.sleep(2)
            except Exception:
                pass
        server.stop()
        for container in engine.containers.list(all=True, filters={"label": f"{prefix}.managed=true"}):
            container.remove(force=True)
        engine.close()


if __name__ == "__main__":
    sys.exit(main())

"""Time from CreateModelDeployment to ACTIVE for the seed's Flask LDA image (already pulled),
with dockyard's phase breakdown, next to the container's own start-up time.

    bash scripts/infra/docker.sh && bash scripts/infra/registry.sh && bash scripts/infra/images.sh
    bash scripts/infra/lda-artifact.sh
    .venv/bin/python benchmarks/time_to_ready.py --runs 3

"Container alone" is `docker run` of the same image and command until /health answers 200,
polled every 10 ms: the floor any platform starts from. The difference is what dockyard adds
(validation, registry resolution, unpacking, probing cadence, bookkeeping).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from tests.support.server import LiveServer  # noqa: E402

IMAGE = "127.0.0.1:5001/dockyard-test/lda-flask:1.0.0"
ARTIFACT = REPO / "build" / "lda-artifact.zip"
COMMAND = ["python", "/opt/ds/model/deployed_model/api.py"]


def container_alone(artifact_dir: Path) -> float:
    started = time.perf_counter()
    cid = subprocess.check_output(
        ["docker", "run", "-d", "--init", "-p", "127.0.0.1::5000", "-v", f"{artifact_dir}:/opt/ds/model/deployed_model:ro", IMAGE, *COMMAND],
        text=True,
    ).strip()
    try:
        port = subprocess.check_output(["docker", "port", cid, "5000/tcp"], text=True).split(":")[-1].strip()
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    return time.perf_counter() - started
            except httpx.HTTPError:
                pass
            time.sleep(0.01)
    finally:
        subprocess.run(["docker", "rm", "-f", cid], capture_output=True)


def through_dockyard(api: httpx.Client, compartment: str, project_id: str, model_id: str) -> tuple[float, str]:
    body = {
        "projectId": project_id,
        "compartmentId": compartment,
        "modelDeploymentConfigurationDetails": {
            "deploymentType": "SINGLE_MODEL",
            "modelConfigurationDetails": {"modelId": model_id, "instanceConfiguration": {"instanceShapeName": "VM.Standard.E4.Flex"}},
            "environmentConfigurationDetails": {
                "environmentConfigurationType": "OCIR_CONTAINER", "image": IMAGE, "serverPort": 5000, "healthCheckPort": 5000, "entrypoint": COMMAND,
            },
        },
    }  # fmt: skip
    started = time.perf_counter()
    created = api.post("/modelDeployments", json=body)
    created.raise_for_status()
    deployment_id, wr_id = created.json()["id"], created.headers["opc-work-request-id"]
    while True:
        state = api.get(f"/modelDeployments/{deployment_id}").json()["lifecycleState"]
        if state in ("ACTIVE", "FAILED"):
            elapsed = time.perf_counter() - started
            break
        time.sleep(0.01)
    last = api.get(f"/workRequests/{wr_id}/logs").json()[-1]["message"]
    api.delete(f"/modelDeployments/{deployment_id}")
    if state != "ACTIVE":
        raise SystemExit(f"the deployment FAILED: {last}")
    return elapsed, last


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    if not ARTIFACT.exists():
        raise SystemExit(f"{ARTIFACT} is missing: run bash scripts/infra/lda-artifact.sh")
    with tempfile.TemporaryDirectory(prefix="dockyard-ttr-") as tmp:
        unpacked = Path(tmp) / "artifact"
        unpacked.mkdir()
        subprocess.run(["python3", "-m", "zipfile", "-e", str(ARTIFACT), str(unpacked)], check=True)
        alone = [container_alone(unpacked) for _ in range(args.runs)]
        server = LiveServer(Path(tmp) / "data", runtime="docker", env={"DOCKYARD_HEALTH_START_PERIOD_S": "5", "DOCKYARD_LABEL_PREFIX": "dockyard-bench"}).start()
        try:
            api = server.client(base_url=server.url + "/20190101", timeout=60)
            compartment = server.oci_config()["tenancy"]  # the administrator's root compartment
            project = api.post("/projects", json={"compartmentId": compartment}).json()
            model = api.post("/models", json={"compartmentId": compartment, "projectId": project["id"]}).json()
            api.post(f"/models/{model['id']}/artifact", content=ARTIFACT.read_bytes()).raise_for_status()
            results = [through_dockyard(api, compartment, project["id"], model["id"]) for _ in range(args.runs)]
        finally:
            server.stop()
    dockyard = [r[0] for r in results]
    print(f"container alone (docker run -> first 200)   median {statistics.median(alone):.2f} s  runs {[round(x, 2) for x in alone]}")
    print(f"dockyard (create -> ACTIVE)                 median {statistics.median(dockyard):.2f} s  runs {[round(x, 2) for x in dockyard]}")
    print(f"added by dockyard                           median {statistics.median(dockyard) - statistics.median(alone):+.2f} s")
    for _, breakdown in results:
        print(f"  {breakdown}")


if __name__ == "__main__":
    main()

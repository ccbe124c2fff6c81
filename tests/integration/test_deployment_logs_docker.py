"""Predict logs of a container deployment on a real engine, end to end: `dockyard serve` with the
docker runtime follows the container's stdout and stderr apart, with the engine's timestamps,
and resumes after a restart of dockyard without storing a line twice."""

from __future__ import annotations

import io
import time
import zipfile
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest

from tests.integration.docker_fixtures import BASE, HEALTH, SERVER_ENV
from tests.integration.test_deployment_logs import logs, predict, wait_for
from tests.support.oci_config import COMPARTMENT
from tests.support.server import LiveServer

pytestmark = pytest.mark.integration

MARKER = "container-log-marker"
# Prints a numbered line on stdout and on stderr for every POST /predict.
SERVER_PY = r'''
import http.server, json, socketserver, sys

calls = 0


class Handler(http.server.BaseHTTPRequestHandler):
    def reply(self, code, body):
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        self.reply(200 if self.path == "/health" else 404, {"status": "ok"})

    def do_POST(self):
        global calls
        calls += 1
        print("MARKER call %d on stdout" % calls, flush=True)
        print("MARKER call %d on stderr" % calls, file=sys.stderr, flush=True)
        self.reply(200, {"calls": calls})

    def log_message(self, *args):
        pass


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True


Server(("0.0.0.0", 8080), Handler).serve_forever()
'''.replace("MARKER", MARKER)


def artifact() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("server.py", SERVER_PY)
    return buffer.getvalue()


def markers(entries: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return sorted((e["message"], e["stream"]) for e in entries if MARKER in e["message"])


def test_container_predict_logs_by_stream_survive_a_restart(tmp_path: Path) -> None:
    try:
        engine = docker.from_env(timeout=30)
        engine.ping()
    except docker.errors.DockerException as exc:
        pytest.fail(f"needs the Docker engine (scripts/infra/docker.sh): {exc}")
    # The server's own label prefix (LiveServer's), not the docker fixtures' shared one.
    env = {k: v for k, v in SERVER_ENV.items() if k != "DOCKYARD_LABEL_PREFIX"}
    server = LiveServer(tmp_path / "data", runtime="docker", env=env).start()
    try:
        api = server.client(timeout=120)
        project = api.post("/20190101/projects", json={"compartmentId": COMPARTMENT}).json()
        model = api.post("/20190101/models", json={"compartmentId": COMPARTMENT, "projectId": project["id"]}).json()
        api.post(f"/20190101/models/{model['id']}/artifact", content=artifact()).raise_for_status()
        created = api.post("/20190101/modelDeployments", json={
            "projectId": project["id"], "compartmentId": COMPARTMENT,
            "modelDeploymentConfigurationDetails": {
                "deploymentType": "SINGLE_MODEL",
                "modelConfigurationDetails": {"modelId": model["id"], "instanceConfiguration": {"instanceShapeName": "VM.Standard.E4.Flex"}},
                "environmentConfigurationDetails": {
                    "environmentConfigurationType": "OCIR_CONTAINER", "image": BASE,
                    "cmd": ["python3", "/opt/ds/model/deployed_model/server.py"], "serverPort": 8080, "healthCheckPort": 8080},
            },
        })  # fmt: skip
        assert created.status_code == 200, created.text
        deployment_id = created.json()["id"]
        state = wait_for("ACTIVE", lambda: (
            (d := api.get(f"/20190101/modelDeployments/{deployment_id}").json())["lifecycleState"] in ("ACTIVE", "FAILED") and d
        ), timeout_s=HEALTH["deadline_s"] + 120)  # fmt: skip
        assert state["lifecycleState"] == "ACTIVE", state["lifecycleDetails"]
        [instance] = api.get(f"/20190101/modelDeployments/{deployment_id}/instances").json()

        predict(api, deployment_id)
        first = wait_for("call 1's lines", lambda: len(markers(got := logs(api, deployment_id, category="predict"))) == 2 and got)
        assert markers(first) == [(f"{MARKER} call 1 on stderr", "stderr"), (f"{MARKER} call 1 on stdout", "stdout")]
        assert {e["instanceId"] for e in first if MARKER in e["message"]} == {instance["instanceId"]}

        server.stop()
        server.start()
        api = server.client(timeout=120)
        predict(api, deployment_id)
        wait_for("call 2's lines", lambda: len(markers(logs(api, deployment_id, category="predict"))) >= 4)
        time.sleep(2)  # give a duplicating collector time to show itself
        assert markers(logs(api, deployment_id, category="predict")) == sorted(
            (f"{MARKER} call {n} on {stream}", stream) for n in (1, 2) for stream in ("stdout", "stderr"))
    finally:
        server.stop()
        for container in engine.containers.list(all=True, filters={"label": f"{server.label_prefix}.managed"}):
            container.remove(force=True, v=True)
        engine.close()

"""dockyard on PostgreSQL (`DOCKYARD_DATABASE_URL=postgresql+psycopg://...`), end to end: a real
`dockyard serve` keeps its state there and serves a DEFAULT deployment as a local process; a
`dockyard serve --role gateway` with two workers, started elsewhere on the same database, routes
to it and verifies signatures against the principals stored there; every predict through
either leaves its access entry, read back through the control plane; a restart keeps it all.
The database password never reaches the console."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx

from dockyard.example import EXAMPLE_DIR, artifact_bytes, sample_request
from tests.integration.test_deployment_logs import _answers, deploy, logs, wait_for
from tests.support.postgres import fresh_database
from tests.support.server import LiveServer, free_port, stop_process

SRC = Path(__file__).resolve().parents[2] / "src"


def predict(client: httpx.Client, url: str, request_id: str) -> None:
    answer = client.post(url, content=sample_request(), headers={"content-type": "application/json", "opc-request-id": request_id})
    assert answer.status_code == 200, answer.text
    assert answer.headers["opc-request-id"] == request_id


def test_serve_and_a_gateway_of_its_own_share_one_postgresql_database(tmp_path: Path) -> None:
    with fresh_database() as url:
        password = url.split("://", 1)[1].split("@", 1)[0].split(":", 1)[1]
        server = LiveServer(tmp_path / "data", runtime="process", env={"DOCKYARD_DATABASE_URL": url}).start()
        gateway: subprocess.Popen[bytes] | None = None
        gateway_log = tmp_path / "gateway.log"
        try:
            api = server.client(timeout=60)
            deployment_id = deploy(api, artifact_bytes(EXAMPLE_DIR))["id"]
            assert not (tmp_path / "data" / "dockyard.db").exists()  # the state is in PostgreSQL, not SQLite
            for n in range(3):
                predict(api, f"/{deployment_id}/predict", f"pg-serve-{n}")

            port = free_port()
            with gateway_log.open("wb") as out:
                gateway = subprocess.Popen(
                    [sys.executable, "-m", "dockyard.cli.main", "serve", "--role", "gateway", "--host", "127.0.0.1", "--port", str(port),
                     "--data-dir", str(tmp_path / "gateway"), "--gateway-workers", "2"],
                    env=os.environ | {"PYTHONPATH": str(SRC), "DOCKYARD_DATABASE_URL": url}, stdout=out, stderr=out, start_new_session=True,
                )  # fmt: skip
            gateway_url = f"http://127.0.0.1:{port}"
            wait_for("the gateway role answering", lambda: _answers(gateway_url + "/health"), timeout_s=60)
            for n in range(6):  # each on a connection of its own, which the kernel gives either worker
                with httpx.Client(base_url=gateway_url, auth=server.auth, timeout=60, trust_env=False) as signed:
                    predict(signed, f"/{deployment_id}/predict", f"pg-gateway-{n}")
            unsigned = httpx.post(f"{gateway_url}/{deployment_id}/predict", content=sample_request(), timeout=30, trust_env=False)
            assert unsigned.status_code == 401, unsigned.text  # signatures are checked against the shared database's keys

            wanted = {f"pg-serve-{n}" for n in range(3)} | {f"pg-gateway-{n}" for n in range(6)}

            def stored() -> set[str]:
                return {e["fields"]["requestId"] for e in logs(api, deployment_id, category="access")} & wanted

            assert wait_for("every access entry stored", lambda: stored() == wanted and stored(), timeout_s=30) == wanted

            server.stop()
            server.start()
            api = server.client(timeout=60)
            state = api.get(f"/20190101/modelDeployments/{deployment_id}").json()
            assert state["lifecycleState"] == "ACTIVE", state
            assert stored() == wanted
            predict(api, f"/{deployment_id}/predict", "pg-after-restart")
        finally:
            if gateway is not None:
                stop_process(gateway)
            server.stop()
            server.stop_local_instances()
        console = gateway_log.read_text() + server.log()
        assert "postgresql+psycopg://dockyard:***@" in console, console[-2000:]
        assert f":{password}@" not in console, "the database password was printed"


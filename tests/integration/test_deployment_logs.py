"""Deployment logs end to end, on a real `dockyard serve` running a DEFAULT deployment as a local
process: a predict call leaves an access entry with its fields and the score.py's prints as
predict lines of its instance; `dockyard logs --follow` (a real subprocess) prints new lines as
they happen; a restart of dockyard neither repeats nor loses a predict line."""

from __future__ import annotations

import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from dockyard.example import EXAMPLE_DIR, artifact_bytes, sample_request
from tests.support.server import LiveServer

from tests.support.oci_config import COMPARTMENT  # registered by LiveServer
MARKER = "predict-log-marker"

# Appended to the example's score.py: every call prints a numbered line to stdout and one to
# stderr, so each call's lines can be told apart and counted.
PRINTING_PREDICT = f'''

import sys as _sys

_calls = 0
_score = predict


def predict(data, model=load_model()):
    global _calls
    _calls += 1
    print("{MARKER} call %d on stdout" % _calls, flush=True)
    print("{MARKER} call %d on stderr" % _calls, file=_sys.stderr, flush=True)
    return _score(data, model=model)
'''


def printing_artifact(tmp_path: Path) -> bytes:
    directory = tmp_path / "artifact"
    shutil.copytree(EXAMPLE_DIR, directory, ignore=shutil.ignore_patterns("__pycache__"))
    score = directory / "score.py"
    score.write_text(score.read_text() + PRINTING_PREDICT)
    return artifact_bytes(directory)


def wait_for(what: str, check: Any, timeout_s: float = 90.0, every_s: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(every_s)


def deploy(api: httpx.Client, artifact: bytes) -> dict[str, Any]:
    project = api.post("/20190101/projects", json={"compartmentId": COMPARTMENT}).json()
    model = api.post("/20190101/models", json={"compartmentId": COMPARTMENT, "projectId": project["id"]}).json()
    api.post(f"/20190101/models/{model['id']}/artifact", content=artifact).raise_for_status()
    created = api.post("/20190101/modelDeployments", json={
        "projectId": project["id"],
        "compartmentId": COMPARTMENT,
        "modelDeploymentConfigurationDetails": {
            "deploymentType": "SINGLE_MODEL",
            "modelConfigurationDetails": {"modelId": model["id"], "instanceConfiguration": {"instanceShapeName": "VM.Standard.E4.Flex"}},
        },
        "categoryLogDetails": {"access": {"logId": "ocid1.log.access", "logGroupId": "ocid1.loggroup.x"},
                               "predict": {"logId": "ocid1.log.predict", "logGroupId": "ocid1.loggroup.x"}},
    })  # fmt: skip
    assert created.status_code == 200, created.text
    deployment: dict[str, Any] = created.json()
    state = wait_for("the deployment to settle", lambda: (
        (d := api.get(f"/20190101/modelDeployments/{deployment['id']}").json())["lifecycleState"] in ("ACTIVE", "FAILED") and d
    ), timeout_s=180)  # fmt: skip
    assert state["lifecycleState"] == "ACTIVE", state["lifecycleDetails"]
    return deployment


def logs(api: httpx.Client, deployment_id: str, **params: Any) -> list[dict[str, Any]]:
    response = api.get(f"/20190101/modelDeployments/{deployment_id}/logs", params=params | {"limit": 1000})
    assert response.status_code == 200, response.text
    assert response.headers["opc-next-page"].isdigit()
    return response.json()  # type: ignore[no-any-return]


def predict(api: httpx.Client, deployment_id: str) -> None:
    answer = api.post(f"/{deployment_id}/predict", content=sample_request(), headers={"content-type": "application/json"})
    assert answer.status_code == 200, answer.text


def marker_lines(entries: list[dict[str, Any]]) -> list[str]:
    return [e["message"] for e in entries if e["category"] == "predict" and MARKER in e["message"]]


class LineReader:
    """A subprocess's stdout, line by line, readable with a deadline."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        assert process.stdout is not None
        stdout = process.stdout
        self.thread = threading.Thread(target=lambda: [self.lines.put(line.rstrip("\n")) for line in stdout], daemon=True)
        self.thread.start()

    def rest(self) -> list[str]:
        """Everything printed, once the process has ended."""
        self.thread.join(30)
        while not self.lines.empty():
            self.seen.append(self.lines.get())
        return self.seen

    def until(self, what: str, matches: Any, timeout_s: float = 60.0) -> str:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                break
            self.seen.append(line)
            if matches(line):
                return line
        raise AssertionError(f"`dockyard logs --follow` printed no {what} within {timeout_s:g} s; it printed:\n" + "\n".join(self.seen))


def test_access_and_predict_logs_follow_and_survive_a_restart(tmp_path: Path) -> None:
    server = LiveServer(tmp_path / "data", runtime="process").start()
    follower: subprocess.Popen[str] | None = None
    try:
        api = server.client(timeout=60)
        deployment = deploy(api, printing_artifact(tmp_path))
        deployment_id = deployment["id"]
        [instance] = api.get(f"/20190101/modelDeployments/{deployment_id}/instances").json()
        instance_id = instance["instanceId"]

        # One predict call: an access entry with the request's facts, and the prints as predict lines.
        predict(api, deployment_id)
        [access] = wait_for("the access entry", lambda: logs(api, deployment_id, category="access"))
        fields = access["fields"]
        assert (access["category"], access["deploymentId"], access["instanceId"], access["logId"]) == (
            "access", deployment_id, instance_id, "ocid1.log.access")
        assert (fields["method"], fields["path"], fields["status"]) == ("POST", f"/{deployment_id}/predict", 200)
        assert fields["bytesIn"] == len(sample_request().encode()) and fields["bytesOut"] > 0
        assert fields["latencyMs"] > 0 and fields["upstreamMs"] is not None and fields["requestId"]
        assert fields["caller"], "a signed predict call names its caller"
        wait_for("both prints of call 1", lambda: len(marker_lines(logs(api, deployment_id, category="predict"))) == 2)
        predict_entries = [e for e in logs(api, deployment_id, category="predict") if MARKER in e["message"]]
        assert {e["instanceId"] for e in predict_entries} == {instance_id}
        assert {e["logId"] for e in predict_entries} == {"ocid1.log.predict"}
        assert sorted(e["message"] for e in predict_entries) == [f"{MARKER} call 1 on stderr", f"{MARKER} call 1 on stdout"]

        # `dockyard logs --follow` shows what happens after it started.
        env = os.environ | {"DOCKYARD_CONFIG_FILE": str(server.config_path), "DOCKYARD_ENDPOINT": server.url, "COLUMNS": "400"}
        follower = subprocess.Popen(
            [sys.executable, "-m", "dockyard.cli.main", "logs", deployment_id, "--follow", "--interval", "0.3"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        )  # fmt: skip
        reader = LineReader(follower)
        reader.until("line of the earlier call", lambda line: f"{MARKER} call 1 on stdout" in line)
        predict(api, deployment_id)
        # Its access line and its predict lines, in either order: within one flush the store
        # gives a block of access entries the seqs after the batch's single rows.
        new_lines: dict[str, str] = {}

        def new_access_or_predict_line(line: str) -> bool:
            if " access " in line and f"POST /{deployment_id}/predict 200" in line and line not in reader.seen[:-1]:
                new_lines["access"] = line
            elif f"{MARKER} call 2 on stdout" in line:
                new_lines["predict"] = line
            return len(new_lines) == 2

        reader.until("new access line and new predict line", new_access_or_predict_line)
        assert f" predict {instance_id} " in new_lines["predict"]

        # A restart resumes after the stored lines: nothing twice, nothing lost; the follower
        # waits through it and goes on from its cursor.
        wait_for("call 2's lines stored", lambda: len(marker_lines(logs(api, deployment_id, category="predict"))) == 4)
        server.stop()
        server.start()
        api = server.client(timeout=60)
        predict(api, deployment_id)
        wait_for("call 3's lines", lambda: len([m for m in marker_lines(logs(api, deployment_id, category="predict")) if "call 3" in m]) == 2)
        reader.until("predict line after the restart", lambda line: f"{MARKER} call 3 on stdout" in line)
        time.sleep(2)  # give a duplicating collector time to show itself
        lines = marker_lines(logs(api, deployment_id, category="predict"))
        assert sorted(lines) == sorted(f"{MARKER} call {n} on {stream}" for n in (1, 2, 3) for stream in ("stdout", "stderr")), lines
        starting = [e for e in logs(api, deployment_id, category="predict") if e["message"].startswith("[dockyard] starting")]
        assert len(starting) == 1, starting
        assert len(logs(api, deployment_id, category="access")) == 3

        follower.send_signal(signal.SIGINT)
        assert follower.wait(30) == 0, follower.stderr.read() if follower.stderr else ""
        follower = None
        printed = [line.split(": ", 1)[1] for line in reader.rest() if " predict " in line and MARKER in line]
        assert sorted(printed) == sorted(lines), "the follower printed:\n" + "\n".join(reader.seen)
    finally:
        if follower is not None and follower.poll() is None:
            follower.kill()
        server.stop()
        server.stop_local_instances()


def test_the_logs_api_refuses_bad_input_and_unknown_deployments(tmp_path: Path) -> None:
    server = LiveServer(tmp_path / "data", runtime="fake").start()
    try:
        api = server.client()
        unknown = api.get("/20190101/modelDeployments/ocid1.datasciencemodeldeployment.oc1.local.aaaanone/logs")
        assert unknown.status_code == 404, unknown.text
        project = api.post("/20190101/projects", json={"compartmentId": COMPARTMENT}).json()
        model = api.post("/20190101/models", json={"compartmentId": COMPARTMENT, "projectId": project["id"]}).json()
        api.post(f"/20190101/models/{model['id']}/artifact", content=artifact_bytes()).raise_for_status()
        deployment = api.post("/20190101/modelDeployments", json={
            "projectId": project["id"], "compartmentId": COMPARTMENT,
            "modelDeploymentConfigurationDetails": {
                "deploymentType": "SINGLE_MODEL",
                "modelConfigurationDetails": {"modelId": model["id"], "instanceConfiguration": {"instanceShapeName": "VM.Standard.E4.Flex"}},
            },
        }).json()  # fmt: skip
        path = f"/20190101/modelDeployments/{deployment['id']}/logs"
        for params, words in (
            ({"category": "stdout"}, "access, predict"),
            ({"since": "yesterday"}, "RFC 3339"),
            ({"limit": "0"}, "from 1 to 1000"),
            ({"page": "abc"}, "opc-next-page"),
            ({"page": "\u00b2"}, "opc-next-page"),  # a digit to str.isdigit, not to int()
            ({"since": "99999999999999d"}, "RFC 3339"),  # before year 1
            ({"tail": "-1"}, "from 0 to 1000"),
        ):
            answer = api.get(path, params=params)
            assert answer.status_code == 400, (params, answer.text)
            assert answer.json()["code"] == "InvalidParameter" and words in answer.json()["message"], answer.text
        empty = api.get(path, params={"since": "10m"})
        assert empty.status_code == 200 and empty.json() == [] and empty.headers["opc-next-page"].isdigit()
    finally:
        server.stop()
        server.stop_local_instances()


def test_a_separate_gateway_process_writes_access_entries_the_control_plane_serves(tmp_path: Path) -> None:
    """`dockyard serve --role gateway` shares the database: its access entries join the same
    ordered log, and a follower's cursor sees them."""
    from tests.support.server import free_port

    server = LiveServer(tmp_path / "data", runtime="process").start()
    gateway: subprocess.Popen[bytes] | None = None
    try:
        api = server.client(timeout=60)
        deployment_id = deploy(api, printing_artifact(tmp_path))["id"]
        cursor = logs_page(api, deployment_id)["cursor"]
        port = free_port()
        gateway = subprocess.Popen(
            [sys.executable, "-m", "dockyard.cli.main", "serve", "--role", "gateway", "--port", str(port),
             "--data-dir", str(server.data_dir), "--log-level", "warning"],
            stdout=(tmp_path / "gateway.log").open("ab"), stderr=subprocess.STDOUT,
            # Flushes far apart: the entry of a call made just before SIGTERM is written only by
            # the flush at exit.
            env=os.environ | {"DOCKYARD_LOG_FLUSH_INTERVAL_S": "10"},
        )  # fmt: skip
        wait_for("the gateway to answer", lambda: _answers(f"http://127.0.0.1:{port}/health"), timeout_s=60)
        via_gateway = httpx.Client(base_url=f"http://127.0.0.1:{port}", auth=server.auth, trust_env=False, timeout=60)
        predict(via_gateway, deployment_id)
        [entry] = wait_for("the gateway's access entry", lambda: logs(api, deployment_id, category="access", page=cursor))
        assert entry["fields"]["status"] == 200 and entry["seq"] > int(cursor)
        # The gateway process writes its last entries when it stops.
        predict(via_gateway, deployment_id)
        gateway.send_signal(signal.SIGTERM)
        assert gateway.wait(30) is not None
        gateway = None
        assert len(logs(api, deployment_id, category="access", page=cursor)) == 2
    finally:
        if gateway is not None and gateway.poll() is None:
            gateway.kill()
        server.stop()
        server.stop_local_instances()


def logs_page(api: httpx.Client, deployment_id: str) -> dict[str, Any]:
    response = api.get(f"/20190101/modelDeployments/{deployment_id}/logs")
    assert response.status_code == 200, response.text
    return {"entries": response.json(), "cursor": response.headers["opc-next-page"]}


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2, trust_env=False).status_code == 200
    except httpx.HTTPError:
        return False

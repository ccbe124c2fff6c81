"""State survives a crash: a real server is SIGKILLed (no shutdown code runs) and a new one
started on the same data directory must show every record as it was and serve the artifacts
byte for byte; a crash in the middle of an artifact upload leaves no partial blob behind and
the model keeps its previous artifact.

These start real server processes (tests/support/server.py), so they take a few seconds each.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import secrets
import signal
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.api.inprocess import API, IMAGE, Api, Catalog, zip_bytes
from tests.support.oci_config import COMPARTMENT
from tests.support.server import LiveServer

pytestmark = pytest.mark.slow

# Fields of a deployment that the reconciler of a new process may rewrite while it brings the
# instances back (the fake runtime keeps instances in memory, so a crash loses them and the new
# process starts them again: ACTIVE -> NEEDS_ATTENTION -> ACTIVE). Everything else must match.
RUNTIME_FIELDS = ("lifecycleState", "lifecycleDetails", "modelDeploymentSystemData")


@asynccontextmanager
async def connect(server: LiveServer) -> AsyncIterator[Api]:
    async with httpx.AsyncClient(base_url=server.url + API, timeout=30, auth=server.auth) as client:
        yield Api(client, data_dir=server.data_dir)


def killed(server: LiveServer) -> None:
    server.kill()
    assert server.process is not None and server.process.returncode == -signal.SIGKILL


async def record(api: Api, path: str) -> tuple[dict[str, Any], str | None]:
    response = await api.get(path)
    assert response.status_code == 200, f"{path}: {response.status_code} {response.text}"
    return response.json(), response.headers.get("etag")


async def everything(api: Api, catalog_ids: dict[str, list[str]]) -> dict[str, Any]:
    """Every record the API shows, with its etag; work requests with their logs and errors."""
    state: dict[str, Any] = {}
    for collection, ids in catalog_ids.items():
        for resource_id in ids:
            state[f"/{collection}/{resource_id}"] = await record(api, f"/{collection}/{resource_id}")
    for wr in await api.list_all("/workRequests"):
        path = f"/workRequests/{wr['id']}"
        body, _ = await record(api, path)
        state[path] = body
        state[path + "/logs"] = (await record(api, path + "/logs"))[0]
        state[path + "/errors"] = (await record(api, path + "/errors"))[0]
    for kind in ("/projects", "/models", "/modelDeployments"):
        state[f"list {kind}"] = sorted(r["id"] for r in await api.list_all(kind))
    return state


async def artifact_of(api: Api, model_id: str) -> tuple[bytes, dict[str, str]]:
    response = await api.get(f"/models/{model_id}/artifact/content")
    assert response.status_code == 200, response.text
    head = await api.client.head(f"/models/{model_id}/artifact/content")
    headers = {k: head.headers[k] for k in ("etag", "content-md5", "content-length", "content-disposition", "last-modified")}
    return response.content, headers


async def test_every_record_survives_a_sigkill(tmp_path: Path) -> None:
    data = tmp_path / "data"
    artifact = zip_bytes({"api.py": "print('hi')\n", "weights.bin": os.urandom(512 * 1024)})
    second_artifact = zip_bytes({"api.py": "print('two')\n"})
    token = secrets.token_hex(15)

    first = LiveServer(data).start()
    try:
        async with connect(first) as api:
            kept = await api.create_project("kept")
            tokened = await api.post("/projects", json={"compartmentId": COMPARTMENT, "displayName": "tokened"},
                                     headers={"opc-retry-token": token})  # fmt: skip
            assert tokened.status_code == 200
            gone = await api.create_project("gone")
            assert (await api.delete(f"/projects/{gone['id']}")).status_code == 202

            model = await api.create_model(kept["id"], "with-artifact", artifact=artifact)
            other = await api.create_model(kept["id"], "second", artifact=second_artifact)
            inactive_model = await api.create_model(kept["id"], "inactive", artifact=None)
            assert (await api.post(f"/models/{inactive_model['id']}/actions/deactivate")).status_code == 200
            provenance = {"repositoryUrl": "https://example.invalid/repo.git", "gitCommit": "abc123"}
            assert (await api.post(f"/models/{model['id']}/provenance", json=provenance)).status_code == 200

            catalog = Catalog(kept, model)
            running, _ = await api.create_deployment(catalog.deployment_body(name="running", instance_count=2))
            updated, _ = await api.create_deployment(catalog.deployment_body(name="updated"))
            stopped, _ = await api.create_deployment(catalog.deployment_body(name="stopped"))
            deleted, _ = await api.create_deployment(Catalog(kept, other).deployment_body(name="deleted"))
            for d in (running, updated, stopped, deleted):
                await api.wait_settled(d["id"])
            reply = await api.put(f"/modelDeployments/{updated['id']}",
                                  json={"environmentConfigurationDetails": {"serverPort": 2000, "environmentVariables": {"x": "y"}}})  # fmt: skip
            assert reply.status_code == 202, reply.text
            reply = await api.post(f"/modelDeployments/{stopped['id']}/actions/deactivate")
            assert reply.status_code == 202, reply.text
            reply = await api.delete(f"/modelDeployments/{deleted['id']}")
            assert reply.status_code == 202, reply.text
            await wait_for_port(api, updated["id"], 2000)
            await api.wait_settled(updated["id"])
            await wait_for_count(api, stopped["id"], "INACTIVE", 0)
            await api.wait_state(deleted["id"], "DELETED")

            ids = {
                "projects": [kept["id"], tokened.json()["id"], gone["id"]],
                "models": [model["id"], other["id"], inactive_model["id"]],
                "modelDeployments": [running["id"], updated["id"], stopped["id"], deleted["id"]],
            }
            before = await everything(api, ids)
            before_provenance = await record(api, f"/models/{model['id']}/provenance")
            before_artifacts = {m: await artifact_of(api, m) for m in (model["id"], other["id"])}
    finally:
        killed(first)

    second = LiveServer(data).start()
    try:
        async with connect(second) as api:
            for d in (running["id"], updated["id"]):
                await api.wait_settled(d, timeout_s=30)  # the new process brings the instances back
            after = await everything(api, ids)
            assert after.keys() == before.keys()
            changed = []
            for key, old in before.items():
                new = after[key]
                if key.startswith("/modelDeployments/") and key.rsplit("/", 1)[1] in (running["id"], updated["id"]):
                    (old_body, _), (new_body, _) = old, new
                    old_body = {k: v for k, v in old_body.items() if k not in RUNTIME_FIELDS}
                    new_body = {k: v for k, v in new_body.items() if k not in RUNTIME_FIELDS}
                    if old_body != new_body:
                        changed.append(f"{key}: {old_body} != {new_body}")
                    continue
                if old != new:
                    changed.append(f"{key}:\n  before {old}\n  after  {new}")
            assert not changed, "records changed across the crash:\n" + "\n".join(changed)
            assert await record(api, f"/models/{model['id']}/provenance") == before_provenance

            for model_id, (content, headers) in before_artifacts.items():
                assert await artifact_of(api, model_id) == (content, headers)
            assert before_artifacts[model["id"]][0] == artifact

            # the retry token of a create before the crash still answers with the same project
            again = await api.post("/projects", json={"compartmentId": COMPARTMENT, "displayName": "tokened"},
                                   headers={"opc-retry-token": token})  # fmt: skip
            assert again.status_code == 200 and again.json()["id"] == tokened.json()["id"]

            # and the restored catalog is usable: the model deploys again, the stopped one starts
            fresh, _ = await api.create_deployment(catalog.deployment_body(name="after-restart"))
            await api.wait_settled(fresh["id"])
            reply = await api.post(f"/modelDeployments/{stopped['id']}/actions/activate")
            assert reply.status_code == 202, reply.text
            await api.wait_settled(stopped["id"])
            env = (await api.wait_settled(updated["id"]))["modelDeploymentConfigurationDetails"]["environmentConfigurationDetails"]
            assert (env["serverPort"], env["environmentVariables"], env["image"]) == (2000, {"x": "y"}, IMAGE)
    finally:
        second.stop()


async def wait_for_port(api: Api, deployment_id: str, port: int, timeout_s: float = 15.0) -> None:
    """Until the instances that run are the updated version (the update has rolled out)."""
    deadline = time.monotonic() + timeout_s
    while True:
        body, _ = await api.deployment(deployment_id)
        env = body["modelDeploymentConfigurationDetails"]["environmentConfigurationDetails"]
        if body["lifecycleState"] == "ACTIVE" and env["serverPort"] == port:
            return
        assert time.monotonic() < deadline, body
        await asyncio.sleep(0.05)


async def wait_for_count(api: Api, deployment_id: str, state: str, count: int, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        body, _ = await api.deployment(deployment_id)
        if body["lifecycleState"] == state and body["modelDeploymentSystemData"]["currentInstanceCount"] == count:
            return
        assert time.monotonic() < deadline, body
        await asyncio.sleep(0.05)


async def test_a_sigkill_during_an_artifact_upload_leaves_no_partial_blob(tmp_path: Path) -> None:
    data = tmp_path / "data"
    original = zip_bytes({"api.py": "print('v1')\n", "weights.bin": os.urandom(256 * 1024)})
    temp_dir = data / "artifacts" / "tmp"
    blob_dir = data / "artifacts" / "blobs"

    first = LiveServer(data).start()
    upload_done = threading.Event()
    stop_sending = threading.Event()
    outcome: dict[str, Any] = {}
    try:
        async with connect(first) as api:
            project = await api.create_project("upload")
            model = await api.create_model(project["id"], "crash", artifact=original)
            before = await artifact_of(api, model["id"])
            blobs_before = sorted(p.name for p in blob_dir.iterdir())
            assert blobs_before == [hashlib.sha256(original).hexdigest()]

        def body() -> Iterator[bytes]:
            yield os.urandom(3 * 1024 * 1024)  # past the server's 1 MiB write batch: bytes reach the disk
            while not stop_sending.is_set():
                yield os.urandom(64 * 1024)
                time.sleep(0.02)

        def upload() -> None:
            try:
                outcome["response"] = httpx.post(
                    f"{first.url}{API}/models/{model['id']}/artifact",
                    content=body(),
                    headers={"content-type": "application/octet-stream", "content-disposition": 'attachment; filename="v2.zip"'},
                    timeout=30,
                    auth=first.auth,
                )
            except httpx.HTTPError as exc:
                outcome["error"] = exc
            finally:
                upload_done.set()

        sender = threading.Thread(target=upload, daemon=True)
        sender.start()
        deadline = time.monotonic() + 15
        partial: Path | None = None
        while partial is None:
            parts = [p for p in temp_dir.glob("*") if p.is_file() and p.stat().st_size > 0]
            partial = parts[0] if parts else None
            assert time.monotonic() < deadline, "the upload never reached the server's temporary file"
            assert not upload_done.is_set(), f"the upload ended before the crash: {outcome}"
            await asyncio.sleep(0.02)
    finally:
        killed(first)
        stop_sending.set()
    assert upload_done.wait(15)
    assert "response" not in outcome, f"the upload finished although the server was killed: {outcome}"
    assert partial.exists(), "the crash should have left the unfinished upload for the next start to clean"

    second = LiveServer(data).start()
    try:
        assert sorted(p.name for p in temp_dir.iterdir()) == [], "a partial upload survived the restart"
        assert sorted(p.name for p in blob_dir.iterdir()) == blobs_before, "a partial blob was kept"
        async with connect(second) as api:
            content, headers = await artifact_of(api, model["id"])
            assert content == original
            assert (content, headers) == before
            # and the model takes a new artifact normally afterwards
            replacement = zip_bytes({"api.py": "print('v2')\n"})
            await api.upload(model["id"], replacement)
            assert await api.download(model["id"]) == replacement
    finally:
        second.stop()

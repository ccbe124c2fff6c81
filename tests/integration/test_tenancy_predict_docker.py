"""Predict on a real container is decided by the tenancy's policies.

A docker-runtime dockyard runs one deployment of tenancy A (a small HTTP server on the test base
image). Tenancy B's administrator gets, for it, exactly what they get for a deployment that does
not exist; a user of A without a statement gets the same; once a statement gives their group
`use` on model deployments, their predictions reach the container (within the gateway's brief
decision reuse).
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from dockyard.auth.client import signing_from_config
from dockyard.domain import ids
from tests.integration.docker_fixtures import Harness, running_harness

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def run_cli(data_dir: Path, *args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "dockyard.cli.main", *args, "--data-dir", str(data_dir)],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, f"dockyard {' '.join(args)} failed: {done.stdout}{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    yield from running_harness(tmp_path_factory.mktemp("tenancy-predict"))


def predict(url: str, config: Path, deployment_id: str) -> tuple[int, dict[str, Any]]:
    signing = signing_from_config(config)
    assert signing is not None
    response = httpx.post(f"{url}/{deployment_id}/predict", json={"x": 1}, auth=signing.auth, timeout=30, trust_env=False)
    return response.status_code, response.json()


def test_only_callers_with_use_on_the_compartment_reach_the_container(harness: Harness, tmp_path: Path) -> None:
    h = harness
    deployment_id, wr_id = h.create_server("tenancy-predict")
    assert h.wait_work_request(wr_id, timeout_s=180).status == "SUCCEEDED", h.logs(wr_id)
    url, data, config_a = h.url, h.data_dir, h.server.config_path  # type: ignore[union-attr]

    status, body = predict(url, config_a, deployment_id)
    assert status == 200, body

    run_cli(data, "tenancies", "create", "other")
    run_cli(data, "users", "create", "boris", "--tenancy", "other", "--admin")
    run_cli(data, "keys", "add", "boris", "--out", str(tmp_path / "boris"), "--endpoint", url)
    tenancy_a = h.server.oci_config()["tenancy"]  # type: ignore[union-attr]
    run_cli(data, "users", "create", "una", "--tenancy", tenancy_a)
    run_cli(data, "keys", "add", "una", "--out", str(tmp_path / "una"), "--endpoint", url)

    unknown = ids.new_ocid(ids.MODEL_DEPLOYMENT, "oc1", "local")
    for config in (tmp_path / "boris" / "config", tmp_path / "una" / "config"):
        status, body = predict(url, config, deployment_id)
        fake_status, fake_body = predict(url, config, unknown)
        assert (status, body["code"]) == (fake_status, fake_body["code"]) == (404, "NotAuthorizedOrNotFound"), body
        assert body["message"].replace(deployment_id, "<id>") == fake_body["message"].replace(unknown, "<id>")

    # a statement giving una's group `use` opens predict to her (not to the other tenancy)
    run_cli(data, "groups", "create", "callers", "--tenancy", tenancy_a)
    run_cli(data, "groups", "add-user", "callers", "una")
    run_cli(data, "policies", "add", "allow group callers to use data-science-model-deployments in tenancy", "--tenancy", tenancy_a)
    deadline = time.monotonic() + 30  # the gateway reuses a decision for a couple of seconds
    while (answer := predict(url, tmp_path / "una" / "config", deployment_id))[0] == 404 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert answer[0] == 200, answer
    assert predict(url, tmp_path / "boris" / "config", deployment_id)[0] == 404

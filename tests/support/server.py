"""A real dockyard server in a subprocess, for tests that talk to it over HTTP.

Every request to it must be signed: the server writes an administrator's OCI config file to
``<data_dir>/oci/config`` on first start, and `oci_config()`, `auth` and `client()` sign with it.
Each server labels its containers with a prefix of its own (derived from its data dir, so a
restarted server keeps it), so servers of parallel tests never remove each other's containers.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from dockyard.auth.client import signing_from_config
from tests.support.compartments import register_in_database
from tests.support.oci_config import COMPARTMENT
from tests.support.postgres import database_url_for


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class LiveServer:
    data_dir: Path
    runtime: str = "fake"
    port: int = field(default_factory=free_port)
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def config_path(self) -> Path:
        """The administrator's OCI config file (exists once the server has started)."""
        return self.data_dir / "oci" / "config"

    @property
    def label_prefix(self) -> str:
        return "dockyard-t" + hashlib.sha256(str(self.data_dir.resolve()).encode()).hexdigest()[:8]

    def oci_config(self) -> dict[str, str]:
        """The administrator's config for the `oci` SDK (`oci.config.from_file`)."""
        import oci

        return dict(oci.config.from_file(str(self.config_path)))

    @property
    def auth(self) -> httpx.Auth:
        signing = signing_from_config(self.config_path)
        assert signing is not None, f"{self.config_path} does not exist: has the server started?"
        return signing.auth

    def client(self, **kwargs: object) -> httpx.Client:
        """A signed client whose base URL is the server (paths like /20190101/projects)."""
        return httpx.Client(**({"base_url": self.url, "auth": self.auth, "trust_env": False, "timeout": 30} | kwargs))  # type: ignore[arg-type]

    def async_client(self, **kwargs: object) -> httpx.AsyncClient:
        return httpx.AsyncClient(**({"base_url": self.url, "auth": self.auth, "trust_env": False, "timeout": 30} | kwargs))  # type: ignore[arg-type]

    def start(self, timeout_s: float = 30.0) -> LiveServer:
        self.log_path = self.data_dir.parent / f"server-{self.port}.log"
        _started.append(self)
        env = os.environ | {"DOCKYARD_RECONCILE_INTERVAL_S": "0.5", "DOCKYARD_LABEL_PREFIX": self.label_prefix}
        if self.runtime == "fake":
            env["DOCKYARD_VERIFY_IMAGES"] = "false"  # nothing runs, so no registry is needed
        if "DOCKYARD_DATABASE_URL" not in self.env:
            database_url = database_url_for(self.data_dir)  # PostgreSQL when the test chose it
            if database_url is not None:
                self.env["DOCKYARD_DATABASE_URL"] = database_url
        env |= self.env
        self.process = subprocess.Popen(
            [sys.executable, "-m", "dockyard.cli.main", "serve", "--port", str(self.port), "--data-dir", str(self.data_dir),
             "--runtime", self.runtime, "--log-level", "warning"],
            stdout=self.log_path.open("ab"),
            stderr=subprocess.STDOUT,
            env=env,
        )  # fmt: skip
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"dockyard exited with {self.process.returncode}:\n{self.log()}")
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    # a signed caller acts only in compartments of their tenancy: make the tests' one so
                    register_in_database(self.env.get("DOCKYARD_DATABASE_URL") or f"sqlite:///{self.data_dir / 'dockyard.db'}", COMPARTMENT)
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"dockyard did not answer within {timeout_s} s:\n{self.log()}")

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs, as in a crash."""
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()

    def stop_local_instances(self) -> int:
        """Kill the instances the process runtime started for this server (each leads a process
        group of its own, recorded under <data_dir>/processes/instances/). They outlive `stop()`
        on purpose, as they would a restart: a test that is done with them ends them here."""
        killed = 0
        for state in (self.data_dir / "processes" / "instances").glob("*.json"):
            try:
                os.killpg(int(json.loads(state.read_text())["pid"]), signal.SIGKILL)
                killed += 1
            except (OSError, ValueError, KeyError):
                pass  # already gone, or a record being rewritten
        return killed

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path and self.log_path.exists() else ""


def stop_process(process: subprocess.Popen[bytes], timeout_s: float = 30.0) -> None:
    """SIGTERM, and SIGKILL when it has not ended within `timeout_s` (a teardown that must end)."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


_started: list[LiveServer] = []


@atexit.register
def _stop_every_local_instance() -> None:
    """Local instances of every server this test process started, whatever its test left."""
    for server in _started:
        server.stop_local_instances()

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import oci
import pytest

from tests.support.server import LiveServer


@pytest.fixture
def live_server(tmp_path: Path) -> Iterator[LiveServer]:
    server = LiveServer(tmp_path / "data").start()
    yield server
    server.stop()


@pytest.fixture
def oci_config(live_server: LiveServer) -> dict[str, str]:
    """The administrator's OCI config, which the server wrote on its first start."""
    return live_server.oci_config()


@pytest.fixture
def ds_client(live_server: LiveServer, oci_config: dict[str, str]) -> oci.data_science.DataScienceClient:
    return oci.data_science.DataScienceClient(oci_config, service_endpoint=live_server.url)

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import oci
import pytest

from tests.support.oci_config import make_config
from tests.support.server import LiveServer


@pytest.fixture
def live_server(tmp_path: Path) -> Iterator[LiveServer]:
    server = LiveServer(tmp_path / "data").start()
    yield server
    server.stop()


@pytest.fixture
def oci_config(tmp_path: Path) -> dict[str, str]:
    return make_config(tmp_path)


@pytest.fixture
def ds_client(live_server: LiveServer, oci_config: dict[str, str]) -> oci.data_science.DataScienceClient:
    return oci.data_science.DataScienceClient(oci_config, service_endpoint=live_server.url)

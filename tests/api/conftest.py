from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import oci
import pytest

from tests.support.postgres import servers_on
from tests.support.server import LiveServer


@pytest.fixture(scope="module", autouse=True, params=["sqlite", "postgresql"])
def store_kind(request: pytest.FixtureRequest) -> Iterator[str]:
    """Every API test runs on both stores dockyard supports: the servers and in-process apps a
    module makes while this is PostgreSQL get a database of their own on the test server
    (tests/support/postgres.py), dropped when the module's tests on it are done.

    A module-scoped fixture that makes a server or an app must take this fixture: else pytest
    makes it once, on SQLite, and both runs share it (checked below)."""
    with servers_on(request.param) as made:
        yield request.param
        if request.param == "postgresql" and not made:
            pytest.fail(f"{request.module.__name__} ran its PostgreSQL run without a server on PostgreSQL: its "
                        "module-scoped fixture that makes the server must take `store_kind`", pytrace=False)  # fmt: skip


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

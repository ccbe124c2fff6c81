"""The database URL (DOCKYARD_DATABASE_URL): shown only with its password masked, and a store
that cannot be opened refuses to start with one line saying why and what to do."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from dockyard.settings import Settings
from dockyard.store.metadata import SqlMetadataStore
from dockyard.store.metadata_engine import StoreUnavailable, url_for_display

SRC = Path(__file__).resolve().parents[2] / "src"


@pytest.mark.parametrize(("url", "shown"), [
    ("postgresql+psycopg://dockyard:s3cret@db.example:5432/dockyard", "postgresql+psycopg://dockyard:***@db.example:5432/dockyard"),
    ("postgresql://dockyard@db/dockyard", "postgresql://dockyard@db/dockyard"),
    ("sqlite:////var/lib/dockyard/dockyard.db", "sqlite:////var/lib/dockyard/dockyard.db"),
    ("not a url :s3cret@", "(a database URL that cannot be read)"),
])  # fmt: skip
def test_a_database_url_is_shown_without_its_password(url: str, shown: str) -> None:
    assert url_for_display(url) == shown
    assert Settings(database_url=url).database_for_display == shown


@pytest.mark.parametrize(("url", "says"), [
    ("not a url :s3cret@", "is not one dockyard can read"),
    ("mysql://dockyard:s3cret@127.0.0.1/dockyard", "needs a driver that is not installed"),
    ("postgresql+psycopg://dockyard:s3cret@127.0.0.1:1/dockyard", "cannot open the database postgresql+psycopg://dockyard:***@127.0.0.1:1/dockyard"),
    ("sqlite:////proc/s3cret/dockyard.db", "check that the data directory can be made and written"),
])  # fmt: skip
def test_a_store_that_cannot_be_opened_says_why_without_the_password(url: str, says: str) -> None:
    pytest.importorskip("psycopg")
    with pytest.raises(StoreUnavailable) as raised:
        SqlMetadataStore(url)
    assert says in raised.value.message and ":s3cret@" not in raised.value.message


def test_dockyard_serve_refuses_to_start_on_a_database_it_cannot_open(tmp_path: Path) -> None:
    for role in ("all", "gateway"):
        done = subprocess.run(
            [sys.executable, "-m", "dockyard.cli.main", "serve", "--role", role, "--data-dir", str(tmp_path), "--port", "1"],
            env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(SRC), "DOCKYARD_DATABASE_URL": "postgresql+psycopg://dockyard:s3cret@127.0.0.1:1/x",
                 "COLUMNS": "400"},
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert done.returncode == 2, done.stdout + done.stderr
        printed = done.stdout + done.stderr
        assert "refusing to start: cannot open the database postgresql+psycopg://dockyard:***@127.0.0.1:1/x" in printed
        assert "s3cret" not in printed and "Traceback" not in printed

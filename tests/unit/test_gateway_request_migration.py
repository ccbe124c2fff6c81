"""The gateway supervisor turns net.ipv4.tcp_migrate_req on when it can, and says when it cannot."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from dockyard.cli.gateway_workers import enable_request_migration


def test_off_is_turned_on(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    knob = tmp_path / "tcp_migrate_req"
    knob.write_text("0\n")
    with caplog.at_level(logging.INFO, logger="dockyard"):
        assert enable_request_migration(knob) is True
    assert knob.read_text().strip() == "1"
    assert "tcp_migrate_req=1" in caplog.text


def test_on_is_left_alone(tmp_path: Path) -> None:
    knob = tmp_path / "tcp_migrate_req"
    knob.write_text("1\n")
    assert enable_request_migration(knob) is True


def test_unavailable_is_a_warning_naming_the_sysctl(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="dockyard"):
        assert enable_request_migration(tmp_path / "missing" / "tcp_migrate_req") is False
    assert "sysctl -w net.ipv4.tcp_migrate_req=1" in caplog.text

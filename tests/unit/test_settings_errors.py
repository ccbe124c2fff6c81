"""A bad DOCKYARD_* setting ends a command with a line that names it, not a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from dockyard.settings import Settings, describe_invalid


def test_each_bad_setting_is_named_with_its_value_rule_and_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKYARD_HEAD_TIMEOUT_S", "-1")
    monkeypatch.setenv("DOCKYARD_KEEP_ALIVE_S", "soon")
    with pytest.raises(ValidationError) as caught:
        Settings()
    lines = describe_invalid(caught.value).splitlines()
    assert len(lines) == 2
    keep_alive, head = sorted(lines, key=lambda line: "HEAD" in line)
    assert keep_alive.startswith("DOCKYARD_KEEP_ALIVE_S='soon': input should be a valid number")
    assert head.startswith("DOCKYARD_HEAD_TIMEOUT_S='-1': input should be greater than 0")
    assert head.endswith("give a valid value, or unset it for the default (30.0)")


@pytest.mark.parametrize("command", [["serve", "--role", "gateway"], ["serve"], ["users", "list"]])
def test_a_command_with_a_bad_setting_exits_2_with_one_line_for_it(command: list[str], tmp_path: Path) -> None:
    env = os.environ | {"DOCKYARD_SEND_TIMEOUT_S": "0", "DOCKYARD_DATA_DIR": str(tmp_path)}
    done = subprocess.run([sys.executable, "-m", "dockyard.cli.main", *command], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    assert "DOCKYARD_SEND_TIMEOUT_S='0': input should be greater than 0" in done.stderr

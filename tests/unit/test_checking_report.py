"""The report as text (one line per rule, with the fix) and JSON, and the commands' exit status."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from dockyard.checking.findings import Finding, Report, Verdict
from dockyard.checking.report import as_json, as_text, line
from dockyard.cli.main import app


def report(*findings: Finding) -> Report:
    return Report(image="127.0.0.1:5001/team/app:1", ran="127.0.0.1:5001/team/app@sha256:" + "a" * 64,
                  deployment_id="ocid1.datasciencemodeldeployment.oc1.local.x", artifact="zip model.zip",
                  server_port=8080, health_port=8080, seconds=3.2, findings=findings)


PASSING = Finding("C3", "GET /health returns 200", Verdict.PASS, "answered 200")
FAILING = Finding("C6", "ports valid and listened on", Verdict.FAIL, "listens on 8081", "declare --server-port 8081")
FOLLOWING = Finding("H2", "healthy within the budget", Verdict.SKIP, "not healthy", cause="C6")


def test_one_line_per_rule_with_the_fix_on_root_problems() -> None:
    assert line(PASSING).startswith("PASS  C3    GET /health returns 200") and "fix" not in line(PASSING)
    assert line(FAILING).endswith("listens on 8081  -> fix: declare --server-port 8081")
    assert line(FOLLOWING).endswith("not healthy (because of C6)")
    text = as_text(report(PASSING, FAILING, FOLLOWING))
    lines = text.splitlines()
    assert lines[0] == "dockyard check 127.0.0.1:5001/team/app:1"
    assert len(lines) == 2 + 3 + 1
    assert lines[-1] == "FAIL: 1 PASS, 0 WARN, 1 FAIL, 1 SKIP in 3.2 s; to fix: C6"


def test_json_is_the_same_report() -> None:
    document = json.loads(as_json(report(PASSING, FAILING, FOLLOWING)))
    assert document["passed"] is False and document["flagged"] == ["C6"]
    assert document["counts"] == {"PASS": 1, "WARN": 0, "FAIL": 1, "SKIP": 1}
    assert document["findings"][1] == {"rule": "C6", "check": "ports valid and listened on", "verdict": "FAIL",
                                       "measured": "listens on 8081", "fix": "declare --server-port 8081",
                                       "cause": None}


def test_exit_status_follows_fail_only() -> None:
    assert report(PASSING).exit_code == 0
    assert report(PASSING, Finding("STOP", "clean stop", Verdict.WARN, "killed", "handle SIGTERM")).exit_code == 0
    assert report(PASSING, FAILING).exit_code == 1


@pytest.mark.parametrize("command", ["check", "run"])
@pytest.mark.parametrize("args, words", [
    (["app:1", "--server-port", "80"], "outside 1024-65535"),
    (["app:1", "--predict-data", "{nope"], "not valid JSON"),
    (["app:1", "--artifact", "pyproject.toml"], "neither a zip archive nor a folder"),
    (["app:1", "-e", "NOEQUALS"], "is not KEY=VALUE"),
])
def test_bad_input_ends_with_status_2_before_anything_starts(command: str, args: list[str], words: str) -> None:
    result = CliRunner().invoke(app, [command, *args])
    assert result.exit_code == 2
    assert words in " ".join(result.output.split())

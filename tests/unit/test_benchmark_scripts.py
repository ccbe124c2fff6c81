"""Every script under benchmarks/ still starts: the figures quoted for it can be reproduced.

A benchmark is run by hand, not by the tests, so a module it imports that moved would go
unnoticed until someone wanted its figures (two of them imported a class from where it had
been). `--help` imports everything the script needs and parses its options, and runs nothing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
SCRIPTS = sorted(path.name for path in BENCHMARKS.glob("*.py"))


def test_there_are_benchmark_scripts() -> None:
    assert "gateway_overhead.py" in SCRIPTS


@pytest.mark.parametrize("script", SCRIPTS)
def test_the_benchmark_script_starts(script: str) -> None:
    done = subprocess.run([sys.executable, str(BENCHMARKS / script), "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"benchmarks/{script} --help failed:\n{done.stderr[-3000:]}"
    assert "usage" in done.stdout.lower()

"""The gateway's compiled request path (dockyard/compiled.py): loaded only when built from the
sources as they are, and the same code still right when it runs interpreted."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dockyard import compiled

PACKAGE_ROOT = Path(compiled.__file__).resolve().parent
UNIT_TESTS = Path(__file__).resolve().parent
REPO = UNIT_TESTS.parent.parent


def copy_of_the_modules(into: Path) -> Path:
    for module in compiled.MODULES:
        relative = Path(*module.split(".")[1:]).with_suffix(".py")
        (into / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(PACKAGE_ROOT / relative, into / relative)
    return into


def test_the_key_is_the_sources_and_changes_with_any_of_them(tmp_path: Path) -> None:
    root = copy_of_the_modules(tmp_path / "dockyard")
    assert compiled.source_key(root) == compiled.source_key(PACKAGE_ROOT)
    keys = {compiled.source_key(root)}
    for module in ("dockyard.gateway.direct", "dockyard.auth.verifier"):
        source = root.joinpath(*module.split(".")[1:]).with_suffix(".py")
        source.write_text(source.read_text() + "\n# an edit\n")
        keys.add(compiled.source_key(root))
    assert len(keys) == 3


@pytest.fixture
def fresh_lookup(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No lookup made yet in this process, and builds kept under tmp_path."""
    monkeypatch.setattr(compiled, "_found", None)
    monkeypatch.setattr(compiled, "builds_root", lambda: tmp_path / "builds")
    monkeypatch.delenv(compiled.SWITCH, raising=False)
    return tmp_path / "builds"


def test_a_build_for_other_sources_is_not_used(fresh_lookup: Path) -> None:
    (fresh_lookup / "0123456789abcdef0123").mkdir(parents=True)
    (fresh_lookup / "0123456789abcdef0123" / "built.json").write_text("{}")
    package_path = ["/src/dockyard/gateway"]
    compiled.use("dockyard.gateway", package_path)
    assert package_path == ["/src/dockyard/gateway"]
    build, why = compiled.lookup()
    assert build is None and why.startswith("interpreted: not compiled for these sources") and "build" in why


def test_a_build_for_these_sources_goes_in_front_of_the_package(fresh_lookup: Path) -> None:
    build = fresh_lookup / compiled.source_key()
    build.mkdir(parents=True)
    package_path = ["/src/dockyard/gateway"]
    compiled.use("dockyard.gateway", package_path)
    assert package_path == ["/src/dockyard/gateway"], "a build without its marker is unfinished: not used"
    compiled._found = None
    (build / "built.json").write_text("{}")
    compiled.use("dockyard.gateway", package_path)
    compiled.use("dockyard.gateway", package_path)  # once only
    assert package_path == [str(build / "dockyard" / "gateway"), "/src/dockyard/gateway"]
    assert str(build) in sys.path
    sys.path.remove(str(build))


def test_the_switch_runs_interpreted_whatever_is_built(fresh_lookup: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    build = fresh_lookup / compiled.source_key()
    build.mkdir(parents=True)
    (build / "built.json").write_text("{}")
    monkeypatch.setenv(compiled.SWITCH, "0")
    package_path = ["/src/dockyard/gateway"]
    compiled.use("dockyard.gateway", package_path)
    assert package_path == ["/src/dockyard/gateway"]
    assert compiled.lookup() == (None, "interpreted: DOCKYARD_COMPILED=0")


@pytest.mark.skipif(os.environ.get("DOCKYARD_TEST_REQUIRE_INFRA") != "1", reason="scripts/test builds the compiled gateway")
def test_the_tests_run_the_compiled_gateway() -> None:
    """What scripts/test sets up, as scripts/run does: the suite then exercises the compiled code."""
    import dockyard.gateway.direct

    assert compiled.status().startswith("compiled ("), compiled.status()
    assert dockyard.gateway.direct.__file__.endswith(".so")


@pytest.mark.slow
def test_the_interpreted_gateway_passes_its_server_direct_path_and_signature_tests() -> None:
    """The fallback (no compiler, or an edited source) is the same code run by CPython: its own
    server's, the direct path's and the signature cache's tests run on it in a process of their own."""
    env = os.environ | {compiled.SWITCH: "0"}
    said = subprocess.run([sys.executable, "-m", "dockyard.compiled", "status"], env=env, capture_output=True, text=True, check=True)
    assert said.stdout.strip() == "interpreted: DOCKYARD_COMPILED=0"
    files = ["test_gateway_httpserver.py", "test_gateway_deadlines.py", "test_gateway_request_migration.py", "test_auth_verified_cache.py"]
    ran = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *(str(UNIT_TESTS / f) for f in files)],
                         env=env, cwd=REPO, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert ran.returncode == 0, ran.stdout[-3000:] + ran.stderr[-2000:]
    assert " passed" in ran.stdout.splitlines()[-1]

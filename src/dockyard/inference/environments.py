"""The Python a DEFAULT artifact is served with: its requirements.txt installed, once per content.

`ensure_environment(artifact_dir, cache_dir)` returns the interpreter to run
`python -m dockyard.inference` with. Without requirements.txt that is dockyard's own. With one,
it is a virtual environment under `cache_dir`, keyed by the sha256 of requirements.txt (and the
Python tag), built once and shared by every artifact with the same requirements.

How the environment reaches dockyard's own runtime dependencies (starlette, uvicorn, PyYAML and
dockyard itself): a `.pth` file that calls `site.addsitedir()` on dockyard's site-packages.
`addsitedir` appends, so the artifact's requirements (in the environment's own site-packages)
come first and win any version clash, and it processes the `.pth` files found there, so an
editable dockyard install works too. Installing dockyard into every environment instead would
download and resolve dockyard's whole dependency tree per requirements.txt, could pick other
versions than the running server's, and needs the network for what is already on disk. The
price: packages dockyard has but the artifact did not ask for are importable (after its own),
so the environment is isolated from the system's site-packages but not from dockyard's. After
the install, the new interpreter must import the inference server; requirements that break it
(say, an old starlette pin) fail the build with that message.

Atomic publication: the environment is built in `envs/<key>.<random>` and published by
renaming a symlink `<key>` onto it. The symlink rather than the directory is renamed because a
virtual environment is not relocatable (pip writes its absolute path into script shebangs).
Builds of one key are serialised with a lock file; a half-built environment is never visible.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.util
import json
import os
import secrets
import shutil
import site
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path

from dockyard.errors import InvalidParameter

REQUIREMENTS_FILE = "requirements.txt"
PTH_NAME = "_dockyard_runtime.pth"
MARKER = "dockyard-environment.json"
SMOKE_IMPORT = "import dockyard.inference.server, dockyard.inference.scoring, uvicorn"

ProgressFn = Callable[[str], None]


class EnvironmentBuildFailed(InvalidParameter):
    """The artifact's requirements.txt could not be installed; the message ends with pip's
    last output lines."""


def ensure_environment(
    artifact_dir: Path | str,
    cache_dir: Path | str,
    progress: ProgressFn | None = None,
    *,
    python: str = sys.executable,
    pip_timeout_s: float = 1800.0,
) -> str:
    """The python executable that serves `artifact_dir`, building its environment if needed.

    Without requirements.txt: `python` itself. Otherwise a virtual environment built from
    `python` (which must be able to import dockyard) under `cache_dir`. Raises
    `EnvironmentBuildFailed` when pip (or the check that the server still imports) fails.
    """
    say = progress or (lambda _line: None)
    requirements = Path(artifact_dir) / REQUIREMENTS_FILE
    if not requirements.is_file():
        return python
    content = requirements.read_bytes()
    digest = hashlib.sha256(content).hexdigest()
    runtime = _runtime_paths(python)
    key = f"{digest}-{runtime['tag']}"
    cache = Path(cache_dir)
    link = cache / key
    executable = link / "bin" / "python"
    if _is_ready(link):
        _refresh_pth(link, runtime["sitedirs"])
        say(f"using the Python environment for requirements.txt (sha256 {digest[:12]}), built before")
        return str(executable)

    (cache / "envs").mkdir(parents=True, exist_ok=True)
    with _locked(cache / f".{key}.lock"):
        if _is_ready(link):  # another caller built it while we waited
            _refresh_pth(link, runtime["sitedirs"])
            return str(executable)
        _remove_abandoned(cache, key, link)
        build = cache / "envs" / f"{key}.{secrets.token_hex(4)}"
        started = time.monotonic()
        say(f"creating a Python environment for requirements.txt (sha256 {digest[:12]}) in {build}")
        try:
            _run([python, "-m", "venv", "--without-pip", str(build)], "create the virtual environment", say,
                 timeout_s=120.0, echo=False)
            _install(python, build, requirements, say, pip_timeout_s)
            _write_pth(build, runtime["sitedirs"])
            _run([str(build / "bin" / "python"), "-c", SMOKE_IMPORT],
                 "import dockyard's inference server with these requirements (a requirement replaces a "
                 "package the server needs with an incompatible version)", say, timeout_s=120.0, echo=False)
            (build / MARKER).write_text(json.dumps({"requirementsSha256": digest, "python": runtime["tag"],
                                                    "created": time.time()}))
            _publish(link, build)
        except BaseException:
            shutil.rmtree(build, ignore_errors=True)
            raise
        say(f"Python environment ready in {time.monotonic() - started:.1f} s")
    return str(executable)


def _runtime_paths(python: str) -> dict[str, object]:
    """The Python tag (cp311) of `python`, and the site directories where it finds dockyard."""
    if os.path.abspath(python) == os.path.abspath(sys.executable):
        return {"tag": _tag(), "sitedirs": dockyard_sitedirs()}
    script = ("import json, sys; from dockyard.inference import environments as e; "
              "print(json.dumps({'tag': e._tag(), 'sitedirs': e.dockyard_sitedirs()}))")
    try:
        out = subprocess.run([python, "-c", script], capture_output=True, text=True, timeout=60, check=True).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise EnvironmentBuildFailed(f"{python} cannot import dockyard, so it cannot build environments for "
                                     f"requirements.txt: {exc}") from exc
    return json.loads(out)  # type: ignore[no-any-return]


def _tag() -> str:
    return f"{sys.implementation.name[:2]}{sys.version_info.major}{sys.version_info.minor}"


def dockyard_sitedirs() -> list[str]:
    """Directories that give the running interpreter dockyard and its dependencies."""
    dirs = [d for d in site.getsitepackages() if os.path.isdir(d)]
    import dockyard

    root = str(Path(dockyard.__file__).resolve().parent.parent)
    if root not in dirs:  # dockyard from a source checkout on sys.path
        dirs.append(root)
    return dirs


def _install(python: str, build: Path, requirements: Path, say: ProgressFn, timeout_s: float) -> None:
    target = str(build / "bin" / "python")
    # The host's pip drives the new interpreter (--python): no pip inside the environment, and
    # no ensurepip run per build. cwd is the artifact so relative paths in requirements resolve.
    command = [python, "-m", "pip", "--python", target, "install", "--no-input", "--disable-pip-version-check",
               "--progress-bar", "off", "-r", str(requirements)]
    if not _has_pip(python):
        _run([target, "-m", "ensurepip", "--default-pip"], "install pip into the environment", say, timeout_s=300.0)
        command = [target, "-m", "pip", "install", "--no-input", "--disable-pip-version-check",
                   "--progress-bar", "off", "-r", str(requirements)]
    _run(command, "install requirements.txt with pip", say, timeout_s=timeout_s, cwd=requirements.parent)


def _has_pip(python: str) -> bool:
    if os.path.abspath(python) == os.path.abspath(sys.executable):
        return importlib.util.find_spec("pip") is not None
    return subprocess.run([python, "-m", "pip", "--version"], capture_output=True).returncode == 0


def _run(command: list[str], what: str, say: ProgressFn, *, timeout_s: float, echo: bool = True,
         cwd: Path | None = None) -> None:
    """Run `command`, passing its output lines to `say` (when `echo`), keeping the last ones."""
    tail: deque[str] = deque(maxlen=20)
    try:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   text=True, errors="replace", cwd=cwd)
    except OSError as exc:
        raise EnvironmentBuildFailed(f"could not {what}: {exc}") from exc

    def pump() -> None:
        assert process.stdout is not None
        for raw in process.stdout:
            line = raw.rstrip()
            if line:
                tail.append(line)
                if echo:
                    say(line)

    reader = threading.Thread(target=pump, name="pip-output", daemon=True)
    reader.start()
    try:
        code = process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        reader.join(5)
        raise EnvironmentBuildFailed(f"could not {what}: no result after {timeout_s:.0f} s; last output:\n"
                                     + "\n".join(tail)) from None
    finally:
        reader.join(5)
        if process.stdout is not None:
            process.stdout.close()
    if code != 0:
        raise EnvironmentBuildFailed(f"could not {what} (exit code {code}); last output:\n" + "\n".join(tail))


def _pth_text(sitedirs: object) -> str:
    assert isinstance(sitedirs, list)
    lines = [f"import site; site.addsitedir({d!r})" for d in sitedirs]
    return "# dockyard's own runtime dependencies, after this environment's packages\n" + "\n".join(lines) + "\n"


def _site_packages(env: Path) -> Path:
    return next((env / "lib").glob("python*/site-packages"))


def _write_pth(env: Path, sitedirs: object) -> None:
    (_site_packages(env) / PTH_NAME).write_text(_pth_text(sitedirs))


def _refresh_pth(link: Path, sitedirs: object) -> None:
    """Point an existing environment at where dockyard lives now (it may have been reinstalled
    elsewhere since the environment was built). Written atomically."""
    path = _site_packages(link.resolve()) / PTH_NAME
    text = _pth_text(sitedirs)
    with contextlib.suppress(OSError):
        if path.read_text() == text:
            return
    tmp = path.with_name(f".{PTH_NAME}.{secrets.token_hex(4)}")
    tmp.write_text(text)
    os.replace(tmp, path)


def _is_ready(link: Path) -> bool:
    return (link / MARKER).is_file() and (link / "bin" / "python").exists()


def _publish(link: Path, build: Path) -> None:
    tmp = link.with_name(f".{link.name}.{secrets.token_hex(4)}")
    os.symlink(os.path.relpath(build, link.parent), tmp)
    os.replace(tmp, link)


def _remove_abandoned(cache: Path, key: str, link: Path) -> None:
    """Builds of `key` that a crash left behind (we hold the key's lock, so none is running)."""
    current = link.resolve() if link.is_symlink() else None
    for path in (cache / "envs").glob(f"{key}.*"):
        if path.resolve() != current:
            shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)

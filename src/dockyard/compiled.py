"""The gateway's request path compiled to C with mypyc, used only when built from these very sources.

Why: on the request path most of a gateway worker's CPU is Python's own work (calls, attribute
reads, the interpreter loop), not I/O or parsing. The same source compiled by mypyc takes about a
third fewer instructions per request (benchmarks/gateway_instructions.py), which on a machine
shared with the model's containers is throughput.

    python -m dockyard.compiled build     # scripts/setup-python runs it; about a minute
    python -m dockyard.compiled status    # which way this checkout's gateway runs, and why

A build compiles `MODULES` into `<sys.prefix>/share/dockyard/compiled/<key>/`, where the key is a
hash of the Python version, the module list and the modules' source bytes. `use()`, called by
the `dockyard.gateway` and `dockyard.auth` packages before anything else, puts that directory in
front of the package's `__path__` when it exists. So an edited source has a new key and its
stale build is never loaded: the package runs interpreted (the same source, the same behaviour,
more CPU per request) until the next build. `DOCKYARD_COMPILED=0` runs interpreted regardless.

What compiling asks of the modules (mypyc's rules, checked by the build): annotations that are
true at run time (a wrong one is a TypeError where it is crossed), class attributes that are
`ClassVar`s, no async generators, and no monkeypatching of their classes or functions.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

# The request path of a direct predict, and what it calls per request. Order does not matter.
MODULES = (
    "dockyard.auth.middleware",
    "dockyard.auth.predict_authorization",
    "dockyard.auth.verifier",
    "dockyard.gateway.access_relay",
    "dockyard.gateway.accesslog",
    "dockyard.gateway.app",
    "dockyard.gateway.balancer",
    "dockyard.gateway.compose",
    "dockyard.gateway.deadlines",
    "dockyard.gateway.direct",
    "dockyard.gateway.exchange",
    "dockyard.gateway.headers",
    "dockyard.gateway.httpconnection",
    "dockyard.gateway.httpcycle",
    "dockyard.gateway.httpserver",
    "dockyard.gateway.metrics",
    "dockyard.gateway.options",
    "dockyard.gateway.pool",
    "dockyard.gateway.requesthead",
    "dockyard.gateway.routes",
    "dockyard.gateway.simplehead",
    "dockyard.gateway.upstream",
)
SWITCH = "DOCKYARD_COMPILED"  # "0": interpreted, whatever is built
_FORMAT = "1"  # bumped when the layout of a build changes
_PACKAGE_ROOT = Path(__file__).resolve().parent  # .../dockyard
_MARKER = "built.json"


def builds_root() -> Path:
    """Where builds live: with the Python environment they were compiled for."""
    return Path(sys.prefix) / "share" / "dockyard" / "compiled"


def source_key(package_root: Path = _PACKAGE_ROOT) -> str:
    """The key of a build of the modules as they are now under `package_root`."""
    digest = hashlib.sha256(f"{_FORMAT}\n{sys.implementation.cache_tag}\n{','.join(MODULES)}\n".encode())
    for module in MODULES:
        digest.update(_source_path(package_root, module).read_bytes())
    return digest.hexdigest()[:20]


def _source_path(package_root: Path, module: str) -> Path:
    return package_root.joinpath(*module.split(".")[1:]).with_suffix(".py")


_found: tuple[Path | None, str] | None = None  # (build directory, why) once looked up in this process


def lookup() -> tuple[Path | None, str]:
    """The build for the sources as they are (or None) and a sentence saying why."""
    global _found
    if _found is None:
        if os.environ.get(SWITCH, "1") == "0":
            _found = (None, f"interpreted: {SWITCH}=0")
        else:
            try:
                key = source_key()
            except OSError as error:  # a module missing from an installed copy
                _found = (None, f"interpreted: cannot read the sources to compile ({error})")
            else:
                build = builds_root() / key
                if (build / _MARKER).is_file():
                    _found = (build, f"compiled ({build})")
                else:
                    _found = (None, f"interpreted: not compiled for these sources (key {key}); `python -m dockyard.compiled build` compiles them")
    return _found


def use(package: str, package_path: list[str]) -> None:
    """Load `package`'s compiled modules, when built for these sources, ahead of their source."""
    build, _why = lookup()
    if build is None:
        return
    compiled_modules = str(build.joinpath(*package.split(".")))
    if compiled_modules not in package_path:
        package_path.insert(0, compiled_modules)
    if str(build) not in sys.path:
        sys.path.append(str(build))  # the one shared library all the compiled modules import


def status() -> str:
    """Which way the gateway runs in this process, checked on the modules actually imported."""
    build, why = lookup()
    if build is None:
        return why
    loaded = [name for name in MODULES if not str(importlib.import_module(name).__file__).endswith(".py")]
    if len(loaded) != len(MODULES):
        return f"partly compiled: {len(loaded)} of {len(MODULES)} modules ({build})"
    return why


def _missing_tools() -> str | None:
    """What the build needs and this machine lacks, as a sentence; None when nothing."""
    if shutil.which(os.environ.get("CC", "cc")) is None and shutil.which("gcc") is None:
        return "no C compiler (install gcc)"
    include = Path(sysconfig.get_paths()["include"]) / "Python.h"
    if not include.is_file():
        return f"no Python headers at {include} (install python3-dev)"
    if importlib.util.find_spec("mypyc") is None:
        return "mypyc is not installed (pip install 'dockyard[compiled]')"
    return None


def build(log: Callable[[str], None] = print) -> Path | None:
    """Compile `MODULES` for the sources as they are; the build's directory, or None when the
    machine lacks what it takes (then the gateway runs interpreted and `log` says why)."""
    missing = _missing_tools()
    if missing is not None:
        log(f"not compiling the gateway: {missing}; it runs interpreted, with more CPU per request")
        return None
    key = source_key()
    target = builds_root() / key
    if (target / _MARKER).is_file():
        log(f"the gateway is compiled for these sources: {target}")
        return target
    started = time.monotonic()
    log(f"compiling the gateway's request path ({len(MODULES)} modules, about a minute)")
    # The sources themselves, not a copy, so that a compiled module's traceback names its source.
    files = [str(_source_path(_PACKAGE_ROOT, module)) for module in MODULES]
    with tempfile.TemporaryDirectory(prefix="dockyard-compile-") as scratch:
        output = Path(scratch)
        for module in MODULES:  # where the build puts each compiled module
            _made(output.joinpath(*module.split(".")[:-1]))
        command = [sys.executable, "-m", "mypyc", "--ignore-missing-imports", "--follow-imports=silent", *files]
        done = subprocess.run(command, cwd=output, capture_output=True, text=True)
        if done.returncode != 0:
            said = [line for line in (done.stdout + done.stderr).splitlines() if not line.startswith("gcc ")]
            tail = "\n".join(said[-30:])
            raise RuntimeError(f"mypyc failed (exit {done.returncode}); the gateway runs interpreted:\n{tail}")
        if source_key() != key:
            raise RuntimeError("a source changed while it was being compiled; build again")
        stage = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=_made(builds_root())))
        for library in output.glob("*__mypyc*.so"):
            shutil.copy2(library, stage / library.name)
        for module in MODULES:
            parts = module.split(".")
            (found,) = output.joinpath(*parts[:-1]).glob(f"{parts[-1]}.*.so")
            _made(stage.joinpath(*parts[:-1]))
            shutil.copy2(found, stage.joinpath(*parts[:-1], found.name))
    seconds = round(time.monotonic() - started, 1)
    (stage / _MARKER).write_text(json.dumps({"modules": MODULES, "python": sys.version, "seconds": seconds}))
    shutil.rmtree(target, ignore_errors=True)
    stage.rename(target)
    for other in builds_root().iterdir():  # earlier builds: of sources that are no more
        if other != target:
            shutil.rmtree(other, ignore_errors=True)
    log(f"compiled the gateway's request path in {seconds} s: {target}")
    return target


def _made(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def main(argv: list[str]) -> int:
    command = argv[0] if argv else "status"
    if command == "build":
        try:
            build(lambda line: print(f"[compile] {line}", flush=True))
        except RuntimeError as error:
            print(f"[compile] {error}", file=sys.stderr)
            return 1
        return 0
    if command == "status":
        print(status())
        return 0
    print("usage: python -m dockyard.compiled [build|status]", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

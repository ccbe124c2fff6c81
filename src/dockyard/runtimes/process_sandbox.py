"""Wrap an instance's command so the artifact is at /opt/ds/model/deployed_model, read-only (A3).

Three ways, best first (machine-recipes.md):

- `bwrap` (Debian `bubblewrap`): the host's file system read-only, a private /tmp and /opt,
  the artifact bound read-only, its own pid namespace, every capability dropped, so the
  instance can neither write outside /tmp nor undo the read-only mount.
- `unshare` (util-linux, always present): a user and mount namespace with a tmpfs over /opt,
  the artifact bound read-only and capabilities dropped with `setpriv` where it exists. The
  rest of the host's file system stays as writable as it is to dockyard's user.
- `none`: the command runs as it is. The artifact is NOT at /opt/ds/model/deployed_model and
  not read-only; DEFAULT deployments still work (the server is given the real directory).

In both sandboxes the host's /opt entries stay visible at their usual paths (only /opt/ds is
replaced), and no `--die-with-parent` is used: instances outlive dockyard and are adopted when
it restarts. The network is the host's: instances listen on 127.0.0.1.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

MOUNT_POINT = "/opt/ds/model/deployed_model"
SANDBOXES = ("auto", "bwrap", "unshare", "none")
# Directories the bwrap sandbox replaces with empty tmpfs; what the instance needs from them
# (its Python, dockyard itself) is bound back read-only.
MASKED = ("/tmp",)

# Runs in the new user+mount namespace: $1 = artifact dir ("" for none), $2 = working dir,
# then the command. The host's /opt and the artifact are held open as fds 7 and 8 before the
# tmpfs hides /opt, and mounted from /proc/self/fd (mount -c keeps the path uncanonicalised),
# so both may live under /opt themselves.
UNSHARE_SCRIPT = r"""set -e
art=$1; cwd=$2; shift 2
# The instance's PATH (from its environment variables) may lack the system tools used here.
instance_path=$PATH; PATH=/usr/sbin:/usr/bin:/sbin:/bin:$PATH
exec 7</opt
[ -n "$art" ] && exec 8<"$art"
mount -t tmpfs -o mode=755 dockyard-opt /opt
for e in /proc/self/fd/7/* /proc/self/fd/7/.[!.]*; do
  [ -e "$e" ] || [ -L "$e" ] || continue
  n=${e##*/}
  [ "$n" = ds ] && continue
  if [ -d "$e" ]; then mkdir "/opt/$n"; else : > "/opt/$n"; fi
  mount -c --rbind "$e" "/opt/$n"
done
mkdir -p /opt/ds/model/deployed_model
[ -n "$art" ] && mount -c --bind -o ro /proc/self/fd/8 /opt/ds/model/deployed_model
exec 7<&- 8<&-
cd "$cwd"
setpriv=$(command -v setpriv || true)
PATH=$instance_path; export PATH
if [ -n "$setpriv" ]; then
  exec "$setpriv" --bounding-set=-all --inh-caps=-all --no-new-privs -- "$@"
fi
exec "$@"
"""


@dataclass(frozen=True)
class Sandbox:
    name: str  # "bwrap", "unshare" or "none"

    @property
    def mounts_artifact(self) -> bool:
        return self.name != "none"

    def artifact_path(self, artifact_dir: Path | None) -> str | None:
        """Where the instance sees the artifact."""
        if artifact_dir is None:
            return None
        return MOUNT_POINT if self.mounts_artifact else str(artifact_dir)

    def wrap(self, command: list[str], artifact_dir: Path | None, cwd: str, expose: list[str]) -> list[str]:
        """`command` run inside this sandbox, started in `cwd` (a path inside the sandbox).
        `expose`: host paths the command needs (its interpreter, libraries), kept visible."""
        if self.name == "bwrap":
            return bwrap_argv(command, artifact_dir, cwd, expose)
        if self.name == "unshare":
            return [_tool("unshare"), "--user", "--map-root-user", "--mount", "--propagation", "private",
                    "/bin/sh", "-c", UNSHARE_SCRIPT, "dockyard-sandbox", str(artifact_dir or ""), cwd, *command]
        return list(command)


def bwrap_argv(command: list[str], artifact_dir: Path | None, cwd: str, expose: list[str]) -> list[str]:
    argv = [_tool("bwrap"), "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc"]
    for masked in MASKED:
        argv += ["--tmpfs", masked]
    argv += ["--tmpfs", "/opt"]
    for entry in sorted(os.listdir("/opt")) if os.path.isdir("/opt") else []:
        if entry == "ds":
            continue
        path = os.path.join("/opt", entry)
        if os.path.islink(path):
            argv += ["--symlink", os.readlink(path), path]
        elif os.path.exists(path):
            argv += ["--ro-bind", path, path]
    for path in _under_masked(expose):
        argv += ["--ro-bind", path, path]
    if artifact_dir is not None:
        argv += ["--ro-bind", str(artifact_dir), MOUNT_POINT]
    else:
        argv += ["--dir", MOUNT_POINT]
    argv += ["--unshare-pid", "--cap-drop", "ALL", "--chdir", cwd, "--", *command]
    return argv


def _tool(name: str) -> str:
    """An absolute path: the instance's environment (and its PATH) is the user's to set."""
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin:/sbin:/bin") or name


def _under_masked(paths: list[str]) -> list[str]:
    """The existing paths (and their symlink targets) that lie in a masked directory, outermost
    first, without paths already inside another one."""
    found: set[str] = set()
    for raw in paths:
        for path in {os.path.abspath(raw), os.path.realpath(raw)}:
            if os.path.exists(path) and any(path == m or path.startswith(m + "/") for m in MASKED):
                found.add(path)
    kept: list[str] = []
    for path in sorted(found, key=len):
        if not any(path == k or path.startswith(k + "/") for k in kept):
            kept.append(path)
    return kept


def probe(name: str) -> tuple[bool, str]:
    """Whether sandbox `name` works on this machine: it runs `cat` on a file of a scratch
    artifact through the real wrapping, and checks the mount is read-only."""
    if name == "none":
        return True, ""
    tool = "bwrap" if name == "bwrap" else "unshare"
    if shutil.which(tool) is None:
        return False, f"{tool} is not on PATH"
    with tempfile.TemporaryDirectory(prefix="dockyard-sandbox-probe-") as scratch:
        artifact = Path(scratch) / "artifact"
        artifact.mkdir()
        (artifact / "probe.txt").write_text("ok")
        check = f"cat {MOUNT_POINT}/probe.txt && ! touch {MOUNT_POINT}/written 2>/dev/null"
        argv = Sandbox(name).wrap(["sh", "-c", check], artifact, "/", [])
        try:
            result = subprocess.run(argv, capture_output=True, text=True, timeout=20, stdin=subprocess.DEVNULL)
        except (OSError, subprocess.SubprocessError) as exc:
            return False, str(exc)
        if result.returncode != 0 or result.stdout.strip() != "ok":
            detail = (result.stderr or result.stdout).strip().splitlines()
            return False, detail[-1] if detail else f"exit code {result.returncode}"
    return True, ""

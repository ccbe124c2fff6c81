"""What the process runtime remembers of each instance, on disk, and what /proc says of it.

One JSON file per instance under `<state_dir>/instances/` is the runtime's whole memory: a new
ProcessRuntime (after dockyard restarts) finds every instance there. A pid alone is not an
identity, since pids are reused; the process start time (field 22 of /proc/<pid>/stat, in clock
ticks since boot) and the boot id are recorded with it and compared on every look.
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

STATE_VERSION = 1


@dataclass
class InstanceRecord:
    instance_id: str
    deployment_id: str
    spec_hash: str
    kind: str
    pid: int  # leader of the instance's own session and process group (pgid == pid)
    start_ticks: int | None  # /proc/<pid>/stat start time; None where there is no /proc
    boot_id: str | None
    started_at: str  # ISO 8601, UTC
    server_port: int
    health_port: int
    sandbox: str
    command: list[str]
    log_file: str
    exit_file: str
    version: int = STATE_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> InstanceRecord:
        known = {name for name in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})


class StateDir:
    """The layout under state_dir: instances/<id>.json, logs/<id>.log, run/<id>/exit."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.instances = root / "instances"
        self.logs = root / "logs"
        self.run = root / "run"

    def create(self) -> None:
        for path in (self.instances, self.logs, self.run):
            path.mkdir(parents=True, exist_ok=True)

    def state_file(self, instance_id: str) -> Path:
        return self.instances / f"{instance_id}.json"

    def log_file(self, instance_id: str) -> Path:
        return self.logs / f"{instance_id}.log"

    def run_dir(self, instance_id: str) -> Path:
        return self.run / instance_id

    def write(self, record: InstanceRecord) -> None:
        path = self.state_file(record.instance_id)
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
        tmp.write_text(json.dumps(asdict(record), indent=1))
        os.replace(tmp, path)

    def read(self, instance_id: str) -> InstanceRecord | None:
        try:
            return InstanceRecord.from_json(json.loads(self.state_file(instance_id).read_text()))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, TypeError):
            return None  # a torn or foreign file: not an instance we can act on

    def read_all(self) -> list[InstanceRecord]:
        records = []
        for path in sorted(self.instances.glob("*.json")):
            record = self.read(path.stem)
            if record is not None:
                records.append(record)
        return records

    def remove(self, instance_id: str) -> None:
        for path in (self.state_file(instance_id), self.log_file(instance_id)):
            try:
                path.unlink()
            except FileNotFoundError:
                pass
        run = self.run_dir(instance_id)
        if run.is_dir():
            for child in run.iterdir():
                child.unlink(missing_ok=True)
            run.rmdir()


# --- /proc ------------------------------------------------------------------------------------


def boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat from the state on (field 3): the command name in field 2 may
    hold spaces and parentheses, so the line is split after its last ')'."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (OSError, ValueError):
        return None
    return text[text.rfind(")") + 2 :].split()


def start_ticks(pid: int) -> int | None:
    fields = _stat_fields(pid)
    return int(fields[19]) if fields else None  # field 22 overall


def has_proc() -> bool:
    return Path("/proc/self/stat").exists()


def is_alive(record: InstanceRecord) -> bool:
    """The recorded process still runs and is the one we started (not a zombie, not a reused pid)."""
    if record.start_ticks is None or not has_proc():
        try:
            os.kill(record.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    if record.boot_id and record.boot_id != boot_id():
        return False
    fields = _stat_fields(record.pid)
    if fields is None or fields[0] in ("Z", "X"):
        return False
    return int(fields[19]) == record.start_ticks


def pid_taken_by_other(record: InstanceRecord) -> bool:
    """The recorded pid now belongs to another process (so its process group is not ours)."""
    if record.start_ticks is None or not has_proc():
        return False
    fields = _stat_fields(record.pid)
    if fields is None:
        return False
    return (record.boot_id is not None and record.boot_id != boot_id()) or int(fields[19]) != record.start_ticks


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of process group `pgid`."""
    if not has_proc():
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return []
        return [pgid]
    members = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(int(entry.name))
        if fields and fields[0] not in ("Z", "X") and int(fields[2]) == pgid:
            members.append(int(entry.name))
    return members


def tail(path: Path, lines: int, max_bytes: int = 64 * 1024) -> str:
    """The last `lines` lines of a file (reading at most `max_bytes` from its end)."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - max_bytes))
            data = handle.read()
    except OSError:
        return ""
    text = data.decode("utf-8", errors="replace")
    return "\n".join(text.splitlines()[-lines:]) if lines > 0 else ""

"""The runtime for machines without a Docker engine: every instance is a local process.

- DEFAULT deployments (A2) run `python -m dockyard.inference` over the artifact, with the
  Python that has the artifact's requirements.txt installed, on a free 127.0.0.1 port that the
  runtime binds itself and hands over as an inherited socket (no race for the port).
- OCIR_CONTAINER deployments run in local-development mode: the given entrypoint + cmd on
  this host, without the image, on the deployment's own ports.

Either way the artifact is at /opt/ds/model/deployed_model, read-only, through a sandbox
(`process_sandbox`). Instances are detached: each is the leader of its own session, outlives
dockyard, and is found again after a restart from its state file (`process_state`), the way
containers are. A small `sh` wrapper around each instance writes its exit code to a file, so
the code of an instance that ended while dockyard was down is still known.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import logging
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import datetime, timezone
from pathlib import Path

import httpx

from dockyard.errors import DockyardError, InvalidParameter
from dockyard.inference.artifact import errors as artifact_errors
from dockyard.inference.artifact import validate_artifact
from dockyard.inference.environments import EnvironmentBuildFailed, dockyard_sitedirs, ensure_environment
from dockyard.runtimes import process_state as proc
from dockyard.runtimes import triton
from dockyard.runtimes.base import Health, Instance, InstanceSpec, InstanceState, ProbeResult, Progress
from dockyard.runtimes.output import OutputLine
from dockyard.runtimes.process_output import follow_file
from dockyard.runtimes.process_sandbox import MOUNT_POINT, SANDBOXES, Sandbox, probe as probe_sandbox
from dockyard.runtimes.process_state import InstanceRecord, StateDir

log = logging.getLogger("dockyard.runtimes.process")

# Variables of dockyard's own environment an instance inherits; the rest (DOCKYARD_* settings,
# credentials) stays out. spec.environment comes on top.
PASSED_ENVIRONMENT = (
    "PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TZ",
    "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE",
    "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy",
)
# Writes the instance's exit code next to its state, then exits with it: $1 is the file.
# (A shell builtin and an atomic rename by `mv`; the file is written only when nobody stops us.)
EXIT_WRAPPER = 'f=$1; shift; "$@"; c=$?; echo "$c" > "$f.tmp" && /bin/mv -f "$f.tmp" "$f"; exit "$c"'


class ProcessRuntime:
    """Runs instances as local processes; see the module docstring.

    `state_dir` holds one state file and one log per instance (and, by default, the Python
    environments of artifacts with a requirements.txt under `venvs/`). `python` serves DEFAULT
    artifacts without requirements.txt and is the base of the others' environments: it must
    import dockyard. `sandbox` is "auto" (bwrap, else unshare, else none with a warning; each
    is tried before it is chosen), or one of them by name.
    """

    name = "process"

    def __init__(
        self,
        state_dir: Path,
        python: str = sys.executable,
        sandbox: str = "auto",
        venv_cache_dir: Path | None = None,
        *,
        stop_timeout_s: float = 10.0,
        probe_timeout_s: float = 3.0,
        pip_timeout_s: float = 1800.0,
        detail_lines: int = 20,
    ) -> None:
        if sandbox not in SANDBOXES:
            raise ValueError(f"unknown sandbox {sandbox!r}; use one of {', '.join(SANDBOXES)}")
        self.state = StateDir(Path(state_dir))
        self.state.create()
        self.python = python if os.path.isabs(python) else (shutil.which(python) or python)
        self.venv_cache_dir = Path(venv_cache_dir) if venv_cache_dir else self.state.root / "venvs"
        self.stop_timeout_s = stop_timeout_s
        self.probe_timeout_s = probe_timeout_s
        self.pip_timeout_s = pip_timeout_s
        self.detail_lines = detail_lines
        self._sandbox_request = sandbox
        self._sandbox: Sandbox | None = None
        self._sandbox_lock = asyncio.Lock()
        self._children: dict[str, subprocess.Popen[bytes]] = {}
        self._client: httpx.AsyncClient | None = None

    # --- sandbox ----------------------------------------------------------------------------------

    async def sandbox(self, progress: Progress | None = None) -> Sandbox:
        """The sandbox in use, chosen (and tried) on first use."""
        async with self._sandbox_lock:
            if self._sandbox is None:
                self._sandbox = await asyncio.to_thread(self._choose_sandbox)
            if progress is not None:
                progress(self._sandbox_words(self._sandbox))
            return self._sandbox

    def _choose_sandbox(self) -> Sandbox:
        request = self._sandbox_request
        if request != "auto":
            works, why = probe_sandbox(request)
            if not works:
                raise DockyardError(f"the {request} sandbox does not work on this machine ({why}); install it, "
                                    "or start dockyard with another process sandbox (auto, bwrap, unshare, none)")
            return Sandbox(request)
        reasons = []
        for name in ("bwrap", "unshare"):
            works, why = probe_sandbox(name)
            if works:
                return Sandbox(name)
            reasons.append(f"{name}: {why}")
        log.warning("no process sandbox works here (%s): instances run without one, the artifact is NOT mounted "
                    "at %s nor read-only; install bubblewrap to fix this", "; ".join(reasons), MOUNT_POINT)
        return Sandbox("none")

    @staticmethod
    def _sandbox_words(sandbox: Sandbox) -> str:
        if sandbox.mounts_artifact:
            return f"process runtime: sandbox {sandbox.name}, the artifact is mounted read-only at {MOUNT_POINT}"
        return (f"process runtime: WARNING instances run without a sandbox: the artifact is not mounted at "
                f"{MOUNT_POINT} and not read-only (install bubblewrap, or let util-linux unshare work)")

    # --- Runtime protocol -------------------------------------------------------------------------

    async def prepare(self, spec: InstanceSpec, progress: Progress) -> None:
        say = _threadsafe(progress)
        sandbox = await self.sandbox(progress)
        if spec.kind == "DEFAULT":
            if spec.artifact_dir is None:
                raise InvalidParameter("prepare: a DEFAULT deployment is served from its model artifact's score.py "
                                       "and runtime.yaml, and this one has no artifact", rule="A2")
            problems = await asyncio.to_thread(validate_artifact, spec.artifact_dir)
            for problem in problems:
                if not problem.is_error:
                    progress(str(problem))
            bad = artifact_errors(problems)
            if bad:
                raise InvalidParameter("prepare: the artifact cannot be served by the built-in inference server "
                                       "(DEFAULT deployments need score.py and runtime.yaml): "
                                       + "; ".join(str(p) for p in bad), rule="A2")
            python = await asyncio.to_thread(self._python_for, spec.artifact_dir, say, "prepare")
            progress(f"process runtime: the built-in inference server will run on {python}")
        elif spec.kind == "OCIR_CONTAINER":
            command = _container_command(spec)
            image = spec.image or "(no image)"
            progress(f"process runtime: the image {image} is NOT used (local-development mode): each instance runs "
                     f"`{shlex.join(command)}` on this host, listening on port {spec.server_port}")
            _check_executable(command[0], spec, sandbox)
        else:
            raise InvalidParameter(f"prepare: unknown environment configuration type {spec.kind!r}; "
                                   "use DEFAULT or OCIR_CONTAINER")

    async def start(self, spec: InstanceSpec) -> Instance:
        sandbox = await self.sandbox()
        if spec.kind == "DEFAULT":
            if spec.artifact_dir is None:
                raise InvalidParameter("start: a DEFAULT deployment needs its model artifact", rule="A2")
            python = await asyncio.to_thread(self._python_for, spec.artifact_dir, None, "start")
            record = await asyncio.to_thread(self._start_default, spec, sandbox, python)
        elif spec.kind == "OCIR_CONTAINER":
            record = await asyncio.to_thread(self._start_container, spec, sandbox)
        else:
            raise InvalidParameter(f"start: unknown environment configuration type {spec.kind!r}")
        log.info("%s: started instance %s (pid %d, port %d, sandbox %s)", spec.deployment_id, record.instance_id,
                 record.pid, record.server_port, sandbox.name)
        return self._observe(record)

    async def stop(self, instance_id: str) -> None:
        record = await asyncio.to_thread(self.state.read, instance_id)
        if record is not None:
            await self._terminate(record)
        child = self._children.pop(instance_id, None)
        if child is not None:
            await asyncio.to_thread(_reap, child)
        await asyncio.to_thread(self.state.remove, instance_id)

    async def list(self, deployment_id: str | None = None) -> list[Instance]:
        records = await asyncio.to_thread(self.state.read_all)
        instances = []
        for record in records:
            if deployment_id is not None and record.deployment_id != deployment_id:
                continue
            instances.append(await asyncio.to_thread(self._observe, record))
        return sorted(instances, key=lambda i: i.started_at or datetime.min.replace(tzinfo=timezone.utc))

    async def probe(self, instance: Instance, path: str) -> ProbeResult:
        if instance.health_port is None:
            return ProbeResult(healthy=False, detail="the instance has no health port")
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=self.probe_timeout_s, trust_env=False)
        url = f"http://127.0.0.1:{instance.health_port}{path}"
        try:
            response = await self._client.get(url)
        except httpx.TimeoutException:
            return ProbeResult(healthy=False, detail=f"GET {url} got no answer within {self.probe_timeout_s:g} s")
        except httpx.HTTPError as exc:
            return ProbeResult(healthy=False, detail=f"GET {url} failed: {exc or type(exc).__name__}")
        healthy = response.status_code == 200
        return ProbeResult(healthy=healthy, status_code=response.status_code,
                           detail="" if healthy else f"GET {url} answered {response.status_code}, not 200 (C3)")

    async def logs(self, instance_id: str, tail: int = 50) -> str:
        return await asyncio.to_thread(proc.tail, self.state.log_file(instance_id), tail)

    async def follow_output(self, instance_id: str, after: str | None = None) -> AsyncIterator[OutputLine]:
        """Each line of the instance's output file after byte offset `after`, then each new one,
        until the instance is gone and its file read (`process_output`)."""

        def running() -> bool:
            record = self.state.read(instance_id)
            return record is not None and proc.is_alive(record)

        async for line in follow_file(self.state.log_file(instance_id), running, after):
            yield line

    async def close(self) -> None:
        """Forget the clients; instances keep running and are adopted by the next runtime."""
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    # --- starting -----------------------------------------------------------------------------------

    def _python_for(self, artifact_dir: Path, say: Progress | None, phase: str) -> str:
        try:
            return ensure_environment(artifact_dir, self.venv_cache_dir, say, python=self.python,
                                      pip_timeout_s=self.pip_timeout_s)
        except EnvironmentBuildFailed as exc:
            raise EnvironmentBuildFailed(f"{phase}: {exc.message}") from exc

    def _start_default(self, spec: InstanceSpec, sandbox: Sandbox, python: str) -> InstanceRecord:
        # Bind here and pass the listening socket down: the port is ours from this moment, so
        # no other process can take it between choosing and listening.
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            listener.bind(("127.0.0.1", 0))
            listener.listen(128)
            port = listener.getsockname()[1]
            artifact = sandbox.artifact_path(spec.artifact_dir)
            assert artifact is not None
            # Hand it down above fd 9: the unshare sandbox's script uses fds 7 and 8 itself.
            inherited = fcntl.fcntl(listener.fileno(), fcntl.F_DUPFD_CLOEXEC, 10)
            command = [python, "-m", "dockyard.inference", "--artifact-dir", artifact, "--fd", str(inherited)]
            expose = [python, os.path.dirname(os.path.dirname(python)), str(self.venv_cache_dir),
                      sys.prefix, sys.base_prefix, *dockyard_sitedirs()]
            environment = {"PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1"}
            try:
                return self._launch(spec, sandbox, command, artifact, expose, environment, (port, port), (inherited,))
            finally:
                os.close(inherited)
        finally:
            listener.close()

    def _start_container(self, spec: InstanceSpec, sandbox: Sandbox) -> InstanceRecord:
        command = _container_command(spec)
        ports = sorted({spec.server_port, spec.health_port})
        for record in self.state.read_all():
            taken = {record.server_port, record.health_port} & set(ports)
            if taken and proc.is_alive(record):
                raise DockyardError(
                    f"start: port {min(taken)} is already used by instance {record.instance_id} of "
                    f"{record.deployment_id}; the process runtime runs an OCIR_CONTAINER deployment on its own ports "
                    "(C6), so only one instance can hold them: use one replica, other ports, or the docker runtime"
                )
        for port in ports:
            if not _port_free(port):
                raise DockyardError(
                    f"start: port {port} is in use on this host; the process runtime runs the container's command "
                    "directly on the host, on the deployment's serverPort/healthCheckPort (C6): free the port or "
                    "choose another one"
                )
        cwd = sandbox.artifact_path(spec.artifact_dir) or "/"
        expose = [command[0]] if os.path.isabs(command[0]) else []
        return self._launch(spec, sandbox, command, cwd, expose, {"PYTHONUNBUFFERED": "1"},
                            (spec.server_port, spec.health_port), ())

    def _launch(self, spec: InstanceSpec, sandbox: Sandbox, command: list[str], cwd: str, expose: list[str],
                defaults: dict[str, str], ports: tuple[int, int], fds: tuple[int, ...]) -> InstanceRecord:
        instance_id = f"proc-{secrets.token_hex(6)}"
        log_path = self.state.log_file(instance_id)
        run_dir = self.state.run_dir(instance_id)
        run_dir.mkdir(parents=True, exist_ok=True)
        exit_file = run_dir / "exit"
        environment = _environment(defaults, spec.environment)
        argv = ["/bin/sh", "-c", EXIT_WRAPPER, "dockyard-instance", str(exit_file),
                *sandbox.wrap(command, spec.artifact_dir, cwd, expose)]
        with open(log_path, "ab") as output:
            output.write(f"[dockyard] starting {shlex.join(command)} (sandbox {sandbox.name})\n".encode())
            output.flush()
            try:
                child = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=output,
                    stderr=subprocess.STDOUT,
                    env=environment,
                    cwd="/" if sandbox.mounts_artifact else (cwd if os.path.isdir(cwd) else "/"),
                    start_new_session=True,  # its own session and process group: survives us, stops as one
                    pass_fds=fds,
                    close_fds=True,
                )
            except OSError as exc:
                shutil.rmtree(run_dir, ignore_errors=True)
                raise DockyardError(f"start: could not run {shlex.join(command)}: {exc}") from exc
        self._children[instance_id] = child
        record = InstanceRecord(
            instance_id=instance_id,
            deployment_id=spec.deployment_id,
            spec_hash=spec.spec_hash,
            kind=spec.kind,
            pid=child.pid,
            start_ticks=proc.start_ticks(child.pid),
            boot_id=proc.boot_id(),
            started_at=datetime.now(timezone.utc).isoformat(),
            server_port=ports[0],
            health_port=ports[1],
            sandbox=sandbox.name,
            command=command,
            log_file=str(log_path),
            exit_file=str(exit_file),
        )
        self.state.write(record)
        return record

    # --- observing and stopping ---------------------------------------------------------------------

    def _observe(self, record: InstanceRecord) -> Instance:
        child = self._children.get(record.instance_id)
        if child is not None:
            child.poll()  # reap our own exited child, so it does not linger as a zombie
        alive = proc.is_alive(record)
        instance = Instance(
            instance_id=record.instance_id,
            deployment_id=record.deployment_id,
            spec_hash=record.spec_hash,
            state=InstanceState.RUNNING if alive else InstanceState.EXITED,
            health=Health.UNKNOWN,
            server_port=record.server_port,
            health_port=record.health_port,
            started_at=datetime.fromisoformat(record.started_at),
        )
        if not alive:
            instance.exit_code = _exit_code(record, child)
            instance.detail = self._exit_detail(record, instance.exit_code)
        return instance

    def _exit_detail(self, record: InstanceRecord, exit_code: int | None) -> str:
        if exit_code is None:
            what = "the process is gone (killed, or the machine restarted) and its exit code is unknown"
        else:
            what = f"exited with code {exit_code}"
            if exit_code > 128:
                try:
                    what += f" (killed by {signal.Signals(exit_code - 128).name})"
                except ValueError:
                    pass
        output = proc.tail(Path(record.log_file), self.detail_lines)
        return f"{what}; last output:\n{output}" if output else f"{what}; it wrote no output"

    async def _terminate(self, record: InstanceRecord) -> None:
        """SIGTERM the instance's process group, SIGKILL what is left after stop_timeout_s."""
        if proc.pid_taken_by_other(record):
            return  # the instance is long gone and its pid now belongs to someone else
        if not await asyncio.to_thread(proc.group_members, record.pid):
            return
        for sig, wait_s in ((signal.SIGTERM, self.stop_timeout_s), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(record.pid, sig)
            except ProcessLookupError:
                return
            except PermissionError as exc:
                raise DockyardError(f"stop: not allowed to signal instance {record.instance_id} "
                                    f"(pid {record.pid}): {exc}") from exc
            loop = asyncio.get_running_loop()
            deadline = loop.time() + wait_s
            while loop.time() < deadline:
                child = self._children.get(record.instance_id)
                if child is not None:
                    child.poll()
                if not await asyncio.to_thread(proc.group_members, record.pid):
                    return
                await asyncio.sleep(0.05)
            if sig is signal.SIGTERM:
                log.warning("instance %s did not stop within %g s of SIGTERM; killing it", record.instance_id, wait_s)


# --- helpers ------------------------------------------------------------------------------------------


def _container_command(spec: InstanceSpec) -> list[str]:
    spec = triton.with_server_command(spec)  # Triton mode without a command: the platform's tritonserver
    command = list(spec.entrypoint or []) + list(spec.cmd or [])
    if not command:
        raise InvalidParameter(
            "prepare: the process runtime cannot run an image; give entrypoint/cmd (the command that starts the "
            "server, run on this host in local-development mode) or use the docker runtime", rule="C10"
        )
    return command


def _check_executable(program: str, spec: InstanceSpec, sandbox: Sandbox) -> None:
    if "/" in program:
        path = program
        if program.startswith(MOUNT_POINT + "/") and spec.artifact_dir is not None:
            path = str(spec.artifact_dir) + program[len(MOUNT_POINT):]
        if not os.path.exists(path):
            raise InvalidParameter(f"prepare: the command {program!r} does not exist on this host; the process runtime "
                                   "runs entrypoint/cmd without the image, so it must be installed here (or use the "
                                   "docker runtime)")
        return
    search = spec.environment.get("PATH") or os.environ.get("PATH") or os.defpath
    if shutil.which(program, path=search) is None:
        raise InvalidParameter(f"prepare: {program!r} is not on this host's PATH; the process runtime runs "
                               "entrypoint/cmd without the image, so install it here, or use the docker runtime")


def _environment(defaults: dict[str, str], spec_environment: dict[str, str]) -> dict[str, str]:
    environment = {k: v for k, v in os.environ.items() if k in PASSED_ENVIRONMENT or k.startswith("LC_")}
    environment.setdefault("PATH", os.defpath)
    environment.update(defaults)
    environment.update(spec_environment)
    return environment


def _port_free(port: int) -> bool:
    """Nothing listens on `port` on any address (binding the wildcard address fails then)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("0.0.0.0", port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise
    return True


def _exit_code(record: InstanceRecord, child: subprocess.Popen[bytes] | None) -> int | None:
    try:
        return int(Path(record.exit_file).read_text().strip())
    except (OSError, ValueError):
        pass
    if child is not None and child.returncode is not None:
        code = child.returncode
        return 128 - code if code < 0 else code  # killed by a signal: report it the way shells do
    return None


def _reap(child: subprocess.Popen[bytes]) -> None:
    try:
        child.wait(timeout=1)
    except subprocess.TimeoutExpired:
        pass


def _threadsafe(progress: Progress) -> Progress:
    """`progress` called on the event loop even when the caller runs in a worker thread."""
    loop = asyncio.get_running_loop()

    def report(line: str) -> None:
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            progress(line)
        else:
            loop.call_soon_threadsafe(progress, line)

    return report

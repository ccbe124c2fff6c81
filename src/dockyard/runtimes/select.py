"""Choose the runtime by name; `auto` takes Docker when an engine answers, else local processes.

Implementations are imported lazily so that a machine without the `docker` package or an
engine can still run the process runtime.
"""

from __future__ import annotations

import logging

from dockyard.runtimes.base import Runtime
from dockyard.settings import Settings

log = logging.getLogger("dockyard.runtimes")

NAMES = ("auto", "docker", "process", "fake")


def docker_runtime(settings: Settings) -> Runtime:
    from dockyard.runtimes.docker import DockerRuntime

    return DockerRuntime(
        base_url=settings.docker_host or None,
        health_start_period_s=settings.health_start_period_s,
        health_interval_s=settings.health_interval_s,
        health_timeout_s=settings.health_timeout_s,
        health_retries=settings.health_retries,
        require_curl=settings.require_curl,
        registry_auth=settings.registry_credentials_by_host(),
        label_prefix=settings.label_prefix,
    )


def process_runtime(settings: Settings) -> Runtime:
    from dockyard.runtimes.process import ProcessRuntime

    return ProcessRuntime(state_dir=settings.data_dir / "processes", venv_cache_dir=settings.data_dir / "venvs")


def with_processes_for_default(containers: Runtime, settings: Settings) -> Runtime:
    from dockyard.runtimes.routing import RoutingRuntime

    return RoutingRuntime(containers, process_runtime(settings))


def engine_answers(settings: Settings) -> bool:
    try:
        import docker
    except ImportError:
        return False
    try:
        client = docker.DockerClient(base_url=settings.docker_host or None, timeout=3) if settings.docker_host else docker.from_env(timeout=3)
        client.ping()
        client.close()
        return True
    except Exception:  # any failure to reach an engine means "no engine here"
        return False


def runtime_for(settings: Settings) -> Runtime:
    name = settings.runtime
    if name not in NAMES:
        raise ValueError(f"unknown runtime {name!r}; use one of {', '.join(NAMES)}")
    if name == "fake":
        from dockyard.runtimes.fake import FakeRuntime

        return FakeRuntime()
    if name == "docker":
        return with_processes_for_default(docker_runtime(settings), settings)
    if name == "process":
        return process_runtime(settings)
    if engine_answers(settings):
        log.info("a Docker engine answers: containers run on it, DEFAULT (score.py) deployments as local processes")
        return with_processes_for_default(docker_runtime(settings), settings)
    log.info("no Docker engine answers: using the process runtime (bubblewrap/unshare sandboxes)")
    return process_runtime(settings)

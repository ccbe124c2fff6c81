"""All settings of dockyard in one typed object, read once at start-up and passed in.

Every field can be set through an environment variable ``DOCKYARD_<NAME>`` (upper case) or by
the matching ``dockyard serve`` flag. Units are in the names.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict


def default_data_dir() -> Path:
    return Path.home() / ".dockyard"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DOCKYARD_", extra="ignore")

    # --- where and how to listen -------------------------------------------------------------
    host: str = "127.0.0.1"
    port: int = 8080
    # The public base URL of the gateway, used to build modelDeploymentUrl. Empty: derived
    # from host and port (http://HOST:PORT).
    public_url: str = ""

    # --- who may call ---------------------------------------------------------------------------
    # Every request must carry an OCI API-key signature (oci-api.md §5) unless this is set; it
    # is refused at start-up on a non-loopback bind (anyone who reached the port could act).
    insecure_no_auth: bool = False
    # How far a signed request's `date` may be from the server's clock.
    signature_max_skew_s: float = 300.0
    # /metrics answers unsigned scrapes when True (a Prometheus on a trusted network). Off by
    # default: the metrics name every deployment, which another tenant must not learn.
    public_metrics: bool = False

    # --- embedded defaults: state lives under data_dir ---------------------------------------
    data_dir: Path = Field(default_factory=default_data_dir)
    # SQLAlchemy URL of the metadata store. Empty: SQLite at <data_dir>/dockyard.db.
    # A PostgreSQL URL (postgresql+psycopg://...) switches backends without other changes.
    database_url: str = ""

    # --- identity of this installation, as it appears inside OCIDs ---------------------------
    realm: str = "oc1"
    region: str = "local"

    # --- limits of the control plane ----------------------------------------------------------
    max_json_body_bytes: int = 1024 * 1024
    max_artifact_bytes: int = 64 * 1024**3
    retry_token_ttl_s: int = 24 * 3600
    max_instances: int = 16

    # --- runtime --------------------------------------------------------------------------------
    # auto: Docker when an engine answers, else local processes. fake: nothing runs; instances
    # count as healthy at once (for exercising the API without an engine).
    runtime: str = "auto"
    # The Docker Engine API endpoint (also Podman's compatible socket); empty: DOCKER_HOST or
    # the default socket.
    docker_host: str = ""
    # Prefix of the labels on this installation's containers. Each installation sharing one
    # engine needs its own: dockyard removes containers with its labels that no record owns.
    label_prefix: str = "dockyard"
    # C9: an image without curl fails at once; False turns that into a warning and dockyard
    # probes health from outside the container only.
    require_curl: bool = True

    # --- registries ---------------------------------------------------------------------------
    # C11: registries other than loopback ones and the service region's OCIR, comma-separated
    # host[:port] list.
    allowed_registries: str = ""
    # Credentials per registry host: "host=user:password,host2=user:password".
    registry_credentials: str = ""
    # Registries spoken to over plain HTTP besides loopback ones, comma-separated.
    plain_http_registries: str = ""
    registry_timeout_s: float = 30.0
    # D2: resolve and pin each image's digest at create/update by asking its registry. False
    # records only what the user gave (for API tests without a registry).
    verify_images: bool = True
    reconcile_interval_s: float = 5.0
    # H1/H2: the service's health check. The start period is also the time an instance may take
    # before failed probes count against it; the deadline is how long CREATING/UPDATING may wait.
    health_deadline_s: float = 600.0
    health_start_period_s: float = 600.0
    health_interval_s: float = 30.0
    health_timeout_s: float = 3.0
    health_retries: int = 3
    # Crashes of a new version before it ever became healthy that fail the operation at once.
    max_start_crashes: int = 2
    restart_backoff_max_s: float = 60.0

    def registry_credentials_by_host(self) -> dict[str, tuple[str, str]]:
        credentials: dict[str, tuple[str, str]] = {}
        for item in filter(None, (part.strip() for part in self.registry_credentials.split(","))):
            host, _, secret = item.partition("=")
            user, _, password = secret.partition(":")
            if host and user:
                credentials[host.strip()] = (user, password)
        return credentials

    @staticmethod
    def _hosts(value: str) -> list[str]:
        return [h.strip() for h in value.split(",") if h.strip()]

    @property
    def allowed_registry_hosts(self) -> list[str]:
        return self._hosts(self.allowed_registries)

    @property
    def plain_http_registry_hosts(self) -> list[str]:
        return self._hosts(self.plain_http_registries)

    # --- the gateway (data plane) ---------------------------------------------------------------
    gateway_max_body_bytes: int = 10 * 1024 * 1024
    gateway_request_timeout_s: float = 60.0
    gateway_inflight_per_instance: int = 32
    gateway_route_cache_ttl_s: float = 0.5
    gateway_ejection_s: float = 10.0
    gateway_connect_timeout_s: float = 5.0
    # Every access entry goes to the durable deployment log (`dockyard logs`); True also prints
    # each as a JSON line on the server's log (logger dockyard.access), at ~0.1 ms per request.
    access_log_lines: bool = False
    # How long the server keeps an idle client connection open. Longer than clients' own idle
    # limit (httpx, requests: 5 s), so a client never reuses a connection the server is closing.
    keep_alive_s: float = 75.0
    # How long a client may take to send a request's head, from its first byte: a head sent a
    # byte at a time (slowloris) would otherwise hold its connection for as long as bytes come.
    head_timeout_s: float = Field(default=30.0, gt=0)
    # How long a client may take none of a reply that waits for it before its connection is
    # closed: a hung client would otherwise hold its request (and the model's in-flight slot).
    send_timeout_s: float = Field(default=60.0, gt=0)
    # How long a request's body may pause (no byte) before the request is answered 408 and its
    # connection closed: a stalled upload would otherwise hold its connection and what its
    # request holds (a half-written artifact) for as long as the connection stays open.
    body_timeout_s: float = Field(default=60.0, gt=0)

    def http_server_options(self) -> dict[str, float]:
        """The limits dockyard's HTTP server (gateway/httpserver.py) takes, in both roles."""
        return {"keep_alive_s": self.keep_alive_s, "head_timeout_s": self.head_timeout_s,
                "send_timeout_s": self.send_timeout_s, "body_timeout_s": self.body_timeout_s}  # fmt: skip

    def apply_access_log_lines(self) -> None:
        logging.getLogger("dockyard.access").setLevel(logging.INFO if self.access_log_lines else logging.WARNING)

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'dockyard.db'}"

    @property
    def database_for_display(self) -> str:
        """`resolved_database_url` with any password masked: for logs and the console."""
        from dockyard.store.metadata_engine import url_for_display

        return url_for_display(self.resolved_database_url)

    @property
    def artifacts_dir(self) -> Path:
        return self.data_dir / "artifacts"

    @property
    def unpacked_dir(self) -> Path:
        return self.data_dir / "unpacked"

    @property
    def resolved_public_url(self) -> str:
        if self.public_url:
            return self.public_url.rstrip("/")
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host
        return f"http://{host}:{self.port}"

    # --- deployment logs (access and predict; store/logs.py) -------------------------------------
    # Entries older than this are deleted (checked every minute).
    log_retention_hours: float = 72.0
    # Per deployment and category, only the newest this many entries are kept.
    log_max_entries_per_deployment: int = 1_000_000
    # Entries waiting to be written; beyond this new entries are dropped (and counted) rather
    # than slowing the gateway or growing memory without bound.
    log_queue_max_entries: int = 100_000
    # How often queued entries are written, one transaction per batch.
    log_flush_interval_s: float = 0.2


def describe_invalid(error: ValidationError) -> str:
    """One line per bad setting: its variable, the value given, the rule it breaks, and the fix."""
    lines = []
    for problem in error.errors():
        name = str(problem["loc"][0]) if problem["loc"] else "?"
        field = Settings.model_fields.get(name)
        default = "" if field is None or field.default is None else f" ({field.default!r})"
        lines.append(f"DOCKYARD_{name.upper()}={problem.get('input')!r}: {problem['msg'].lower()}; "
                     f"give a valid value, or unset it for the default{default}")  # fmt: skip
    return "\n".join(lines)


def settings_or_exit(**overrides: Any) -> Settings:
    """The settings for a command; a bad value ends it with status 2 and one line per setting
    on standard error, rather than a traceback."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        print(f"dockyard: invalid setting\n{describe_invalid(exc)}", file=sys.stderr)
        raise SystemExit(2) from None

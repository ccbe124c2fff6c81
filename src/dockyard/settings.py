"""All settings of dockyard in one typed object, read once at start-up and passed in.

Every field can be set through an environment variable ``DOCKYARD_<NAME>`` (upper case) or by
the matching ``dockyard serve`` flag. Units are in the names.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
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
    reconcile_interval_s: float = 5.0
    health_deadline_s: float = 600.0

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'dockyard.db'}"

    @property
    def artifacts_dir(self) -> Path:
        return self.data_dir / "artifacts"

    @property
    def resolved_public_url(self) -> str:
        if self.public_url:
            return self.public_url.rstrip("/")
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host
        return f"http://{host}:{self.port}"

"""Runtime settings, read from ``SENSECARE_*`` environment variables and CLI flags."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Everything a SenseCare process needs to know about its surroundings.

    The defaults are the embedded profile: SQLite index and files under ``data_dir``.
    """

    model_config = SettingsConfigDict(env_prefix="SENSECARE_", extra="ignore")

    data_dir: Path = Path("var")
    db: str | None = Field(
        default=None,
        description="SQLAlchemy URL of the index; default sqlite file under data_dir",
    )
    host: str = "127.0.0.1"
    port: int = 8042
    dicom_port: int = 11112
    ae_title: str = "SENSECARE"
    admin_token: str | None = None
    cors_origins: list[str] = Field(default_factory=list)
    default_tenant: str = "default"
    stow_max_instance_bytes: int = 2 * 1024**3
    audit_reads: bool = True

    @property
    def database_url(self) -> str:
        if self.db:
            return self.db
        return f"sqlite:///{(self.data_dir / 'index.sqlite').resolve()}"

    @property
    def storage_dir(self) -> Path:
        return self.data_dir / "objects"

    @property
    def spool_dir(self) -> Path:
        """Where incoming uploads are written before they are committed (same filesystem as storage)."""
        return self.data_dir / "spool"

"""What every route needs, built once per process."""

from __future__ import annotations

from dataclasses import dataclass, field

from sensecare.archive.audit import AuditLog
from sensecare.archive.service import Archive
from sensecare.auth import TokenStore
from sensecare.config import Settings


@dataclass
class ServiceContext:
    settings: Settings
    archive: Archive
    tokens: TokenStore
    audit: AuditLog
    #: Names of listeners that must be up before /healthz says 200 (e.g. "http", "dimse").
    ready: dict[str, bool] = field(default_factory=dict)

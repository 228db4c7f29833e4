"""What every route needs, built once per process."""

from __future__ import annotations

from collections.abc import Callable
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
    #: Listener name -> probe; /healthz says 200 when every probe answers True.
    health_checks: dict[str, Callable[[], bool]] = field(default_factory=dict)

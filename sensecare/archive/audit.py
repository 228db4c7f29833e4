"""Audit trail of PHI access and changes (who, when, what, from where)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select

from sensecare.archive.db import Database
from sensecare.archive.models import AuditEvent


@dataclass(frozen=True)
class AuditRecord:
    tenant_id: str
    actor: str
    role: str
    action: str
    resource: str
    query: str | None
    client: str | None
    outcome: int


class AuditLog:
    def __init__(self, db: Database) -> None:
        self.db = db

    def record(self, record: AuditRecord) -> None:
        with self.db.write() as session:
            session.add(AuditEvent(**record.__dict__))

    def search(
        self,
        tenant_id: str | None,
        *,
        action: str | None = None,
        since: datetime | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[dict[str, Any]]:
        stmt = select(AuditEvent).order_by(AuditEvent.id.desc())
        if tenant_id:
            stmt = stmt.where(AuditEvent.tenant_id == tenant_id)
        if action:
            stmt = stmt.where(AuditEvent.action == action)
        if since:
            stmt = stmt.where(AuditEvent.occurred_at >= since)
        stmt = stmt.limit(limit).offset(offset)
        with self.db.read() as session:
            rows = session.scalars(stmt).all()
        return [
            {
                "id": r.id,
                "occurred_at": r.occurred_at.isoformat(),
                "tenant_id": r.tenant_id,
                "actor": r.actor,
                "role": r.role,
                "action": r.action,
                "resource": r.resource,
                "query": r.query,
                "client": r.client,
                "outcome": r.outcome,
            }
            for r in rows
        ]

"""Administration under /api/v1: audit trail and tokens."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, Field

from sensecare.api.context import ServiceContext
from sensecare.api.dependencies import client_address, get_context, require
from sensecare.archive.audit import AuditRecord
from sensecare.auth import Permission, Principal, Role
from sensecare.errors import PermissionDeniedError

router = APIRouter(prefix="/api/v1", tags=["admin"])


@router.get("/audit")
async def search_audit(
    action: str | None = None,
    since: datetime | None = None,
    limit: int = Query(100, ge=1, le=10000),
    offset: int = Query(0, ge=0),
    principal: Principal = Depends(require(Permission.READ_AUDIT)),
    ctx: ServiceContext = Depends(get_context),
) -> list[dict]:
    """Audit events of the caller's tenant, newest first (a global admin sees every tenant)."""
    tenant = None if principal.role is Role.ADMIN else principal.tenant_id
    return ctx.audit.search(tenant, action=action, since=since, limit=limit, offset=offset)


class TokenRequest(BaseModel):
    name: str = Field(min_length=1, max_length=128)
    role: Role
    tenant_id: str | None = Field(default=None, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")


class TokenResponse(BaseModel):
    name: str
    role: Role
    tenant_id: str
    token: str


@router.post("/tokens", status_code=201)
async def create_token(
    body: TokenRequest,
    request: Request,
    principal: Principal = Depends(require(Permission.MANAGE_TOKENS)),
    ctx: ServiceContext = Depends(get_context),
) -> TokenResponse:
    tenant = body.tenant_id or principal.tenant_id
    if principal.role is not Role.ADMIN and (tenant != principal.tenant_id or body.role is Role.ADMIN):
        raise PermissionDeniedError("a tenant admin may only create non-admin tokens for its own tenant")
    token = ctx.tokens.create(body.name, body.role, tenant)
    ctx.audit.record(
        AuditRecord(
            tenant_id=tenant, actor=principal.name, role=principal.role.value, action="token-create",
            resource=f"token/{body.name}", query=f"role={body.role.value}", client=client_address(request),
            outcome=0,
        )
    )
    return TokenResponse(name=body.name, role=body.role, tenant_id=tenant, token=token)

"""Request dependencies: the service context, the caller, and audited PHI access."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from fastapi import Depends, Request
from fastapi.concurrency import run_in_threadpool

from sensecare.api.context import ServiceContext
from sensecare.api.errors import status_for
from sensecare.archive.audit import AuditRecord
from sensecare.auth import Permission, Principal
from sensecare.errors import SenseCareError


def get_context(request: Request) -> ServiceContext:
    return request.app.state.ctx


def get_principal(request: Request, ctx: ServiceContext = Depends(get_context)) -> Principal:
    principal = ctx.tokens.authenticate(request.headers.get("authorization"))
    request.state.principal = principal
    return principal


def require(permission: Permission):  # type: ignore[no-untyped-def]
    """Dependency factory: the caller must hold ``permission``."""

    def dependency(principal: Principal = Depends(get_principal)) -> Principal:
        principal.require(permission)
        return principal

    return dependency


def client_address(request: Request) -> str | None:
    if request.client is None:
        return None
    return f"{request.client.host}:{request.client.port}"


@contextlib.asynccontextmanager
async def audited(
    ctx: ServiceContext, request: Request, principal: Principal, action: str, resource: str
) -> AsyncIterator[None]:
    """Record one PHI access, including failed attempts (their status is the outcome).

    The record is written from a worker thread: it is a synced database write, and the
    event loop must not wait on the disk.
    """
    outcome = 0
    try:
        yield
    except SenseCareError as exc:
        outcome = status_for(exc)
        raise
    except Exception:
        outcome = 500
        raise
    finally:
        if ctx.settings.audit_reads:
            await run_in_threadpool(
                ctx.audit.record,
                AuditRecord(
                    tenant_id=principal.tenant_id,
                    actor=principal.name,
                    role=principal.role.value,
                    action=action,
                    resource=resource,
                    query=str(request.url.query) or None,
                    client=client_address(request),
                    outcome=outcome,
                )
            )


def dicomweb_base(request: Request) -> str:
    return str(request.base_url).rstrip("/") + "/dicomweb"

"""Liveness for load balancers and the two-command start: no token needed, no PHI."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from sensecare import __version__
from sensecare.api.context import ServiceContext
from sensecare.api.dependencies import get_context

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz(ctx: ServiceContext = Depends(get_context)) -> JSONResponse:
    listeners = {name: bool(probe()) for name, probe in ctx.health_checks.items()}
    up = bool(listeners) and all(listeners.values())
    return JSONResponse(
        {"status": "ok" if up else "starting", "listeners": listeners, "version": __version__},
        status_code=200 if up else 503,
    )

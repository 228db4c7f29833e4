"""The FastAPI application: wires routers, error handlers and CORS; nothing else."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from sensecare import __version__
from sensecare.api import admin, health, qido, stow, wado
from sensecare.api.context import ServiceContext
from sensecare.api.errors import install_error_handlers


def create_app(ctx: ServiceContext) -> FastAPI:
    app = FastAPI(title="SenseCare", version=__version__, docs_url="/api/docs", openapi_url="/api/openapi.json")
    app.state.ctx = ctx
    install_error_handlers(app)
    if ctx.settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=ctx.settings.cors_origins,
            allow_methods=["GET", "POST", "OPTIONS"],
            allow_headers=["Authorization", "Content-Type", "Accept"],
            expose_headers=["Content-Type", "Content-Length", "Warning"],
        )
    for module in (health, stow, qido, wado, admin):
        app.include_router(module.router)
    return app

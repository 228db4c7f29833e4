"""One process serving the HTTP API and the DIMSE listener on the embedded defaults."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

import uvicorn

from sensecare.api.app import create_app
from sensecare.api.context import ServiceContext
from sensecare.archive.audit import AuditLog
from sensecare.archive.service import Archive
from sensecare.auth import Role, TokenStore
from sensecare.config import Settings

logger = logging.getLogger(__name__)


@dataclass
class Startup:
    context: ServiceContext
    generated_admin_token: str | None


def build_context(settings: Settings) -> Startup:
    """Open the archive (migrating the index) and make sure an admin can get in."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    archive = Archive.open(settings.database_url, settings.data_dir)
    archive.ensure_tenant(settings.default_tenant)
    tokens = TokenStore(archive.db)
    generated = None
    if settings.admin_token:
        tokens.ensure("admin", Role.ADMIN, settings.default_tenant, settings.admin_token)
    elif not tokens.has_admin():
        generated = tokens.create("admin", Role.ADMIN, settings.default_tenant)
    ctx = ServiceContext(settings=settings, archive=archive, tokens=tokens, audit=AuditLog(archive.db))
    return Startup(ctx, generated)


def serve(ctx: ServiceContext) -> None:
    """Run until SIGINT/SIGTERM; the DIMSE listener stops with the HTTP server."""
    from sensecare.dimse.scp import DimseServer

    settings = ctx.settings
    ctx.ready.update({"http": False, "dimse": False})
    dimse = DimseServer(
        ctx.archive, ctx.audit, ae_title=settings.ae_title, host=settings.host, port=settings.dicom_port
    )
    dimse.start()
    ctx.ready["dimse"] = True
    threading.Thread(target=_collect_orphans, args=(ctx.archive,), daemon=True, name="orphans").start()

    app = create_app(ctx)

    @app.on_event("startup")
    async def _http_up() -> None:
        ctx.ready["http"] = True

    config = uvicorn.Config(
        app, host=settings.host, port=settings.port, log_level="info", access_log=False,
        timeout_graceful_shutdown=10,
    )
    try:
        uvicorn.Server(config).run()
    finally:
        ctx.ready["http"] = False
        dimse.stop()
        ctx.archive.close()


def _collect_orphans(archive: Archive) -> None:
    try:
        removed = archive.collect_orphans()
        if removed:
            logger.warning("removed %d stored objects left unindexed by an earlier crash", removed)
    except Exception:
        logger.exception("orphan collection failed")

"""Serving SenseCare: the HTTP API and the DIMSE listener.

The parent process owns start-up duties that must happen once (schema migration,
clearing the spool, orphan collection, the admin token) and the DIMSE listener.
HTTP runs in the parent (``workers=1``) or in worker processes sharing one
listening socket, so that parsing uploads is not bound to one core by the GIL.
Workers die with the parent, so a ``kill -9`` of the server stops all of it.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass

import uvicorn
from fastapi import FastAPI

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


def serve(ctx: ServiceContext, workers: int = 1) -> None:
    """Run until SIGINT/SIGTERM; the DIMSE listener stops with the HTTP server."""
    from sensecare.dimse.scp import DimseServer

    settings = ctx.settings
    dimse = DimseServer(
        ctx.archive, ctx.audit, ae_title=settings.ae_title, host=settings.host, port=settings.dicom_port
    )
    dimse.start()
    started = time.time()
    threading.Thread(
        target=_collect_orphans, args=(ctx.archive, started), daemon=True, name="orphans"
    ).start()
    try:
        if workers <= 1:
            _serve_in_process(ctx, dimse)
        else:
            _serve_workers(settings, workers)
    finally:
        dimse.stop()
        ctx.archive.close()


def _serve_in_process(ctx: ServiceContext, dimse) -> None:  # type: ignore[no-untyped-def]
    http_up = threading.Event()
    ctx.health_checks.update({"http": http_up.is_set, "dimse": lambda: dimse.ready})
    app = create_app(ctx)
    app.router.on_startup.append(http_up.set)
    uvicorn.Server(_uvicorn_config(app, ctx.settings)).run()


def _serve_workers(settings: Settings, workers: int) -> None:
    from sensecare.http_workers import run_workers

    os.environ.update(worker_environment(settings))
    config = _uvicorn_config("sensecare.server:worker_app", settings, factory=True, workers=workers)
    run_workers(config, workers)


def _uvicorn_config(app, settings: Settings, **kwargs) -> uvicorn.Config:  # type: ignore[no-untyped-def]
    return uvicorn.Config(
        app, host=settings.host, port=settings.port, log_level="info", access_log=False,
        timeout_graceful_shutdown=10, **kwargs,
    )


def worker_environment(settings: Settings) -> dict[str, str]:
    """The settings a worker process rebuilds itself from (``SENSECARE_*`` variables)."""
    env = {
        "SENSECARE_DATA_DIR": str(settings.data_dir.resolve()),
        "SENSECARE_DB": settings.database_url,
        "SENSECARE_HOST": settings.host,
        "SENSECARE_PORT": str(settings.port),
        "SENSECARE_DICOM_PORT": str(settings.dicom_port),
        "SENSECARE_AE_TITLE": settings.ae_title,
        "SENSECARE_CORS_ORIGINS": json.dumps(settings.cors_origins),
        "SENSECARE_DEFAULT_TENANT": settings.default_tenant,
        "SENSECARE_AUDIT_READS": "true" if settings.audit_reads else "false",
        "SENSECARE_STOW_MAX_INSTANCE_BYTES": str(settings.stow_max_instance_bytes),
    }
    return env


def worker_app() -> FastAPI:
    """Application factory run in each HTTP worker process."""
    _die_with_parent()
    settings = Settings()
    archive = Archive.open(settings.database_url, settings.data_dir, primary=False)
    ctx = ServiceContext(settings=settings, archive=archive, tokens=TokenStore(archive.db), audit=AuditLog(archive.db))
    http_up = threading.Event()
    probe_host = "127.0.0.1" if settings.host in {"0.0.0.0", ""} else settings.host
    ctx.health_checks.update(
        {"http": http_up.is_set, "dimse": lambda: port_is_listening(probe_host, settings.dicom_port)}
    )
    app = create_app(ctx)
    app.router.on_startup.append(http_up.set)
    app.router.on_shutdown.append(archive.close)
    return app


def port_is_listening(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL this worker when its parent dies (as a ``kill -9`` of the server)."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    PR_SET_PDEATHSIG = 1
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:
        logger.warning("could not tie the worker's life to its parent")
    if os.getppid() == 1:  # the parent is already gone
        os._exit(1)


def _collect_orphans(archive: Archive, started: float) -> None:
    try:
        removed = archive.collect_orphans(modified_before=started)
        if removed:
            logger.warning("removed %d stored objects left unindexed by an earlier crash", removed)
    except Exception:
        logger.exception("orphan collection failed")

"""In-process API fixtures: the real app and archive, without a separate process (fast)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from sensecare.api.app import create_app
from sensecare.config import Settings
from sensecare.server import build_context

TOKEN = "in-process-admin-token"


def make_client(tmp_path: Path, **settings: object) -> TestClient:
    startup = build_context(Settings(data_dir=tmp_path / "data", admin_token=TOKEN, **settings))
    startup.context.health_checks.update({"http": lambda: True, "dimse": lambda: True})
    client = TestClient(create_app(startup.context), raise_server_exceptions=bool(os.environ.get("SENSECARE_TEST_RAISE")))
    client.headers["Authorization"] = f"Bearer {TOKEN}"
    client.ctx = startup.context  # type: ignore[attr-defined]
    return client


@pytest.fixture
def api(tmp_path: Path) -> Iterator[TestClient]:
    client = make_client(tmp_path)
    try:
        yield client
    finally:
        client.ctx.archive.close()  # type: ignore[attr-defined]

"""The CLI: commands work and every error is one line, never a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx

from tests.helpers.server import ServerProcess


def sensecare(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sensecare.cli", *args], capture_output=True, text=True, timeout=120, env=env)


def test_token_create_gives_a_working_token(tmp_path: Path) -> None:
    data = tmp_path / "data"
    created = sensecare("token", "create", "--role", "radiologist", "--name", "dr-who", "--data-dir", str(data))
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip()
    server = ServerProcess(data, f"sqlite:///{data / 'index.sqlite'}").start()
    try:
        reader = {"Authorization": f"Bearer {token}"}
        assert httpx.get(server.dicomweb + "/studies", headers=reader).status_code == 204
        stow = httpx.post(server.dicomweb + "/studies", headers={**reader, "Content-Type": "application/dicom"}, content=b"x")
        assert stow.status_code == 403  # a radiologist reads, an integrator stores
        audit = httpx.get(server.url + "/api/v1/audit", headers=reader)
        assert audit.status_code == 403
        made = httpx.post(server.url + "/api/v1/tokens", headers=server.headers, json={"name": "pacs", "role": "integrator"})
        assert made.status_code == 201
        integrator = {"Authorization": f"Bearer {made.json()['token']}"}
        assert httpx.get(server.dicomweb + "/studies", headers=integrator).status_code == 204
    finally:
        server.stop()


def test_errors_are_one_line(tmp_path: Path) -> None:
    bad_role = sensecare("token", "create", "--role", "king", "--data-dir", str(tmp_path))
    assert bad_role.returncode == 2
    assert "Traceback" not in bad_role.stderr and "unknown role" in bad_role.stderr
    missing = sensecare("import", str(tmp_path / "nothing-here"), "--data-dir", str(tmp_path / "d"))
    assert missing.returncode == 2 and "does not exist" in missing.stderr and "Traceback" not in missing.stderr
    bad_db = sensecare("import", str(tmp_path), "--data-dir", str(tmp_path / "d"), "--db", "postgresql+psycopg://nobody@127.0.0.1:1/none")
    assert bad_db.returncode != 0 and "Traceback" not in bad_db.stderr
    assert len(bad_db.stderr.strip().splitlines()) <= 3, bad_db.stderr


def test_import_loads_a_folder_and_skips_non_dicom(tmp_path: Path, chest_ct: Path) -> None:
    data = tmp_path / "data"
    folder = chest_ct / "Lung_Dx-A0002"
    first = sensecare("import", str(folder), "--data-dir", str(data))
    assert first.returncode == 0, first.stderr
    assert "stored 60" in first.stderr and "not DICOM" in first.stderr
    again = sensecare("import", str(folder), "--data-dir", str(data))
    assert "stored 0, already present 60" in again.stderr


def test_admin_token_is_generated_and_printed_once(tmp_path: Path) -> None:
    from sensecare.config import Settings
    from sensecare.server import build_context

    first = build_context(Settings(data_dir=tmp_path / "d"))
    assert first.generated_admin_token and first.generated_admin_token.startswith("sc_")
    principal = first.context.tokens.authenticate(f"Bearer {first.generated_admin_token}")
    assert principal.role.value == "admin"
    first.context.archive.close()
    second = build_context(Settings(data_dir=tmp_path / "d"))
    assert second.generated_admin_token is None
    second.context.archive.close()

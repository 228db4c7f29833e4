"""Shared fixtures: real server processes on loopback, PostgreSQL, and real chest CT."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.helpers.server import ServerProcess, free_port, shared_data_dir


@pytest.fixture(scope="session")
def chest_ct() -> Path:
    """``<shared data>/chest-ct``; tests that need it skip with the reason when it is absent."""
    root = shared_data_dir() / "chest-ct"
    if not (root / "LIDC-IDRI-0001" / "series").is_dir():
        pytest.skip(f"real chest CT not found at {root} (set SENSECARE_SHARED_DATA to the folder holding chest-ct/)")
    return root


# ---------------------------------------------------------------- PostgreSQL


@dataclass
class PostgresServer:
    """A throwaway cluster (or the one named by SENSECARE_TEST_POSTGRES_URL)."""

    admin_url: str
    process_dir: Path | None = None
    databases: list[str] = field(default_factory=list)

    def create_database(self) -> str:
        import psycopg

        name = "sc_" + uuid.uuid4().hex[:12]
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        self.databases.append(name)
        base, _, _ = self.admin_url.rpartition("/")
        return f"{base}/{name}".replace("postgresql://", "postgresql+psycopg://", 1)


def _pg_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for candidate in sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), reverse=True):
        return str(candidate)
    return None


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    url = os.environ.get("SENSECARE_TEST_POSTGRES_URL")
    if url:
        yield PostgresServer(url)
        return
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    if not initdb or not pg_ctl:
        pytest.skip("PostgreSQL server binaries not installed (apt-get install postgresql)")
    root = Path(tempfile.mkdtemp(prefix="sc-pg-"))
    run_as: list[str] = []
    if os.geteuid() == 0:  # postgres refuses to run as root
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and no 'postgres' user to run PostgreSQL as")
        shutil.chown(root, "postgres", "postgres")
        run_as = ["runuser", "-u", "postgres", "--"]
    data, port = root / "data", free_port()
    subprocess.run([*run_as, initdb, "-D", str(data), "-U", "postgres", "-A", "trust"], check=True, capture_output=True)
    subprocess.run(
        [*run_as, pg_ctl, "-D", str(data), "-l", str(root / "log"), "-w", "-o",
         f"-h 127.0.0.1 -p {port} -k {root} -c fsync=on", "start"],
        check=True, capture_output=True,
    )
    try:
        yield PostgresServer(f"postgresql://postgres@127.0.0.1:{port}/postgres", root)
    finally:
        subprocess.run([*run_as, pg_ctl, "-D", str(data), "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty index database of each supported kind."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'index.sqlite'}"
    server: PostgresServer = request.getfixturevalue("postgres")
    return server.create_database()


# ---------------------------------------------------------------- server process


@pytest.fixture
def server(tmp_path: Path, db_url: str) -> Iterator[ServerProcess]:
    proc = ServerProcess(tmp_path / "data", db_url)
    proc.data_dir.mkdir()
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture
def sqlite_server(tmp_path: Path) -> Iterator[ServerProcess]:
    data = tmp_path / "data"
    data.mkdir()
    proc = ServerProcess(data, f"sqlite:///{data / 'index.sqlite'}")
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


# ---------------------------------------------------------------- real CT studies


@pytest.fixture(scope="session")
def real_study(chest_ct: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """A 2-series, 128-instance real chest CT study (LIDC-IDRI-0001 slices, fresh UIDs).

    The first 64 slices form one series and the next 64 another; pixel data are the
    real ones. PatientName is set (the source has none) so wildcard matching can be tested.
    """
    from sensecare.dicom.restamp import restamp_files

    sources = sorted((chest_ct / "LIDC-IDRI-0001" / "series").glob("*.dcm"))[:128]
    return restamp_files(
        sources,
        tmp_path_factory.mktemp("real-study"),
        series_key=lambda index, _ds: index // 64,
        overrides={"PatientName": "Lidc^Idri Zero One", "PatientID": "LIDC-IDRI-0001-T", "AccessionNumber": "ACC0001"},
    )

"""A real ``sensecare serve`` process on free loopback ports, for end-to-end tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[2]
ADMIN_TOKEN = "test-admin-token-" + uuid.uuid4().hex


def shared_data_dir() -> Path:
    """``$SENSECARE_SHARED_DATA``, else ``<repo>/../shared/data``."""
    env = os.environ.get("SENSECARE_SHARED_DATA")
    return Path(env) if env else REPO.parent / "shared" / "data"


def wait_until_up(
    url: str, process: subprocess.Popen, log_text: Callable[[], str], timeout: float, name: str
) -> None:
    """Poll ``url`` until it answers 200; fail with the process log if it dies or stalls."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited early:\n{log_text()}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{name} did not come up:\n{log_text()}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class ServerProcess:
    """``sensecare serve`` as hospitals run it, on free loopback ports."""

    data_dir: Path
    db_url: str
    port: int = field(default_factory=free_port)
    dicom_port: int = field(default_factory=free_port)
    token: str = ADMIN_TOKEN
    extra_args: list[str] = field(default_factory=list)
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def dicomweb(self) -> str:
        return self.url + "/dicomweb"

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def start(self, timeout: float = 60) -> ServerProcess:
        env = dict(os.environ, SENSECARE_ADMIN_TOKEN=self.token, PYTHONUNBUFFERED="1")
        self.log = open(self.data_dir / f"server-{self.port}.log", "ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "sensecare.cli", "serve", "--data-dir", str(self.data_dir),
             "--db", self.db_url, "--host", "127.0.0.1", "--port", str(self.port),
             "--dicom-port", str(self.dicom_port), *self.extra_args],
            stdout=self.log, stderr=subprocess.STDOUT, env=env, cwd=REPO,
        )
        wait_until_up(self.url + "/healthz", self.process, self.log_text, timeout, "server")
        return self

    def log_text(self) -> str:
        return (self.data_dir / f"server-{self.port}.log").read_text(errors="replace")[-4000:]

    def kill9(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.kill9()
        if getattr(self, "log", None):
            self.log.close()

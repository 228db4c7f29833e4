"""Shared pieces of the peer benchmarks: the peer servers, DICOMweb requests, machine facts.

Every benchmark here starts the peer and SenseCare itself, on loopback ports, in a
temporary directory, and stops both when it ends (also on error or Ctrl-C).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.helpers.server import ServerProcess, free_port, wait_until_up

ORTHANC_BIN = Path("/usr/sbin/Orthanc")
ORTHANC_DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")

DICOM_JSON = "application/dicom+json"


# --------------------------------------------------------------------------- servers


@dataclass
class OrthancProcess:
    """Orthanc with its DICOMweb plugin, defaults except what a loopback benchmark needs.

    Orthanc 1.10 has no option to bind HTTP to one address: it listens on all
    interfaces, and ``RemoteAccessAllowed: false`` makes it refuse every client
    that is not on loopback.
    """

    root: Path
    binary: Path = ORTHANC_BIN
    plugin: Path = ORTHANC_DICOMWEB_PLUGIN
    http_port: int = field(default_factory=free_port)
    dicom_port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None
    config: dict = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb(self) -> str:
        return self.url + "/dicom-web"

    @property
    def headers(self) -> dict[str, str]:
        return {}

    def start(self, timeout: float = 60) -> OrthancProcess:
        if not self.binary.exists():
            raise RuntimeError(f"Orthanc is not installed at {self.binary} (apt-get install orthanc orthanc-dicomweb)")
        if not self.plugin.exists():
            raise RuntimeError(f"the Orthanc DICOMweb plugin is missing at {self.plugin}")
        self.root.mkdir(parents=True, exist_ok=True)
        self.config = {
            "Name": "bench-orthanc",
            "StorageDirectory": str(self.root / "storage"),
            "IndexDirectory": str(self.root / "index"),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "Plugins": [str(self.plugin)],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
            "StorageCompression": False,
            # The DIMSE listener binds all interfaces: refuse unknown peers there.
            # (Neither option touches the HTTP paths measured here.)
            "DicomAlwaysAllowEcho": False,
            "DicomAlwaysAllowStore": False,
            "DicomCheckCalledAet": True,
        }
        path = self.root / "orthanc.json"
        path.write_text(json.dumps(self.config, indent=2))
        self.log = open(self.root / "orthanc.log", "ab")  # noqa: SIM115 - lives as long as the process
        self.process = subprocess.Popen(
            [str(self.binary), str(path)], stdout=self.log, stderr=subprocess.STDOUT, cwd=self.root,
            start_new_session=True,
        )
        wait_until_up(self.url + "/system", self.process, self.log_text, timeout, "Orthanc")
        return self

    def system(self) -> dict:
        return httpx.get(self.url + "/system", timeout=10).json()

    def plugin_version(self) -> str | None:
        try:
            return httpx.get(self.url + "/plugins/dicom-web", timeout=10).json().get("Version")
        except (httpx.HTTPError, ValueError):
            return None

    def log_text(self) -> str:
        return (self.root / "orthanc.log").read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        if getattr(self, "log", None):
            self.log.close()


class SenseCareProcess(ServerProcess):
    """``sensecare serve`` (the test launcher) with the benchmark's naming."""

    @property
    def headers(self) -> dict[str, str]:  # type: ignore[override]
        return {"Authorization": f"Bearer {self.token}"}


def start_sensecare(data_dir: Path, db_url: str | None = None) -> SenseCareProcess:
    data_dir.mkdir(parents=True, exist_ok=True)
    url = db_url or f"sqlite:///{(data_dir / 'index.sqlite').resolve()}"
    server = SenseCareProcess(data_dir=data_dir, db_url=url, token="bench-" + uuid.uuid4().hex)
    return server.start()  # type: ignore[return-value]


# --------------------------------------------------------------------------- requests


def multipart_related(parts: Sequence[bytes], content_type: str = "application/dicom") -> tuple[bytes, str]:
    """A multipart/related body (RFC 2387) of ``parts`` and its Content-Type header."""
    boundary = "bench-" + uuid.uuid4().hex
    head = f"--{boundary}\r\nContent-Type: {content_type}\r\n\r\n".encode()
    chunks: list[bytes] = []
    for data in parts:
        chunks += [head, data, b"\r\n"]
    chunks.append(f"--{boundary}--\r\n".encode())
    return b"".join(chunks), f'multipart/related; type="{content_type}"; boundary={boundary}'


def stow_counts(response: httpx.Response) -> tuple[int, int]:
    """(referenced, failed) SOP counts of a STOW-RS response (PS3.18 Table 10.5.3-1)."""
    body = response.json() if response.content else {}
    if isinstance(body, list):  # some servers wrap the data set in a list
        body = body[0] if body else {}
    referenced = len(body.get("00081199", {}).get("Value", []) or [])
    failed = len(body.get("00081198", {}).get("Value", []) or [])
    return referenced, failed


def qido_rows(response: httpx.Response) -> list[dict]:
    if response.status_code == 204 or not response.content:
        return []
    response.raise_for_status()
    return response.json()


def first_value(row: dict, tag: str):  # type: ignore[no-untyped-def]
    values = (row.get(tag) or {}).get("Value") or []
    return values[0] if values else None


# --------------------------------------------------------------------------- statistics


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile, q in [0, 100] (numpy's default method)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = (len(ordered) - 1) * q / 100
    low = int(k)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (k - low)


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def ratio(a: float, b: float) -> float | None:
    return a / b if b else None


# --------------------------------------------------------------------------- profiling


class PySpy:
    """``py-spy record`` attached to a running process, stopped on demand (collapsed stacks)."""

    def __init__(self, binary: str, pid: int, out: Path, rate: int = 200) -> None:
        self.out = out
        out.parent.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [binary, "record", "--pid", str(pid), "--rate", str(rate), "--format", "raw",
             "--threads", "--subprocesses", "--output", str(out), "--nonblocking"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
        )
        time.sleep(0.5)  # let it attach

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


def process_cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process and its live descendants so far, from /proc.

    SenseCare serves HTTP from worker processes; counting only the parent would
    miss nearly all of its work.
    """
    total = 0.0
    found = False
    for member in _process_tree(pid):
        try:
            fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        found = True
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total if found else None


def _process_tree(pid: int) -> list[int]:
    members, pending = [], [pid]
    while pending:
        current = pending.pop()
        members.append(current)
        for task in Path(f"/proc/{current}/task").glob("*"):
            try:
                pending.extend(int(c) for c in (task / "children").read_text().split())
            except OSError:
                continue
    return members


# --------------------------------------------------------------------------- machine


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _mem_total_bytes() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def filesystem_of(path: Path) -> dict[str, str | None]:
    """Mount point, device and type of the filesystem holding ``path`` (from /proc/mounts)."""
    best: tuple[str, str, str] | None = None
    resolved = str(Path(path).resolve())
    try:
        for line in Path("/proc/mounts").read_text().splitlines():
            device, mount, fstype, *_ = line.split()
            mount = mount.replace("\\040", " ")
            inside = resolved == mount or resolved.startswith(mount.rstrip("/") + "/")
            if inside and (best is None or len(mount) > len(best[1])):
                best = (device, mount, fstype)
    except OSError:
        pass
    if best is None:
        return {"device": None, "mount": None, "type": None}
    return {"device": best[0], "mount": best[1], "type": best[2]}


def source_fingerprint() -> dict[str, str | None]:
    """What SenseCare code ran: a digest of sensecare/**/*.py and the checked-out commit, if readable."""
    import hashlib

    digest = hashlib.sha256()
    for path in sorted((REPO / "sensecare").rglob("*.py")):
        digest.update(path.relative_to(REPO).as_posix().encode() + b"\0" + path.read_bytes())
    commit = None
    try:  # read the files; no git command
        head = (REPO / ".git" / "HEAD").read_text().strip()
        if head.startswith("ref: "):
            ref = head[5:]
            ref_file = REPO / ".git" / ref
            if ref_file.exists():
                commit = ref_file.read_text().strip()
            else:
                for line in (REPO / ".git" / "packed-refs").read_text().splitlines():
                    if line.endswith(" " + ref):
                        commit = line.split()[0]
        else:
            commit = head
    except OSError:
        pass
    return {"sensecare_source_sha256": digest.hexdigest(), "git_head": commit}


def machine_info(workdir: Path) -> dict:
    from sensecare import __version__ as sensecare_version

    return {
        "timestamp_utc": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "ram_bytes": _mem_total_bytes(),
        "workdir": str(workdir),
        "workdir_filesystem": filesystem_of(workdir),
        "python": sys.version.split()[0],
        "sqlite": sqlite3.sqlite_version,
        "sensecare_version": sensecare_version,
        "httpx_version": httpx.__version__,
        **source_fingerprint(),
    }


def remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)

"""Acknowledged means durable: ``kill -9`` during a 128-instance upload loses nothing acknowledged."""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path

import httpx
import pydicom

from tests.helpers.server import ServerProcess


def _multipart(paths: list[Path]) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = b"".join(
        f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + p.read_bytes() + b"\r\n"
        for p in paths
    )
    return body + f"--{boundary}--\r\n".encode(), f'multipart/related; type="application/dicom"; boundary={boundary}'


def test_kill_9_during_upload_loses_no_acknowledged_instance(
    tmp_path: Path, db_url: str, real_study: list[Path]
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    server = ServerProcess(data, db_url).start()
    acknowledged: list[str] = []
    errors: list[str] = []
    stop = threading.Event()

    def upload() -> None:
        with httpx.Client(headers=server.headers, timeout=30) as client:
            for start in range(0, len(real_study), 4):
                if stop.is_set():
                    return
                batch = real_study[start : start + 4]
                body, content_type = _multipart(batch)
                try:
                    response = client.post(
                        server.dicomweb + "/studies", content=body, headers={"Content-Type": content_type}
                    )
                except httpx.HTTPError as exc:  # the server died under us: expected
                    errors.append(type(exc).__name__)
                    return
                if response.status_code == 200:
                    for item in response.json()["00081199"]["Value"]:
                        acknowledged.append(item["00081155"]["Value"][0])

    uploader = threading.Thread(target=upload)
    uploader.start()
    try:
        deadline = time.monotonic() + 60
        while len(acknowledged) < 40 and time.monotonic() < deadline and uploader.is_alive():
            time.sleep(0.01)
        server.kill9()  # mid-upload: requests are in flight
        stop.set()
        uploader.join(30)
        assert 40 <= len(acknowledged) < len(real_study), "the kill must land mid-upload"

        restarted = ServerProcess(data, db_url, port=server.port, dicom_port=server.dicom_port).start()
        try:
            _check_archive(restarted, acknowledged, real_study)
        finally:
            restarted.stop()
    finally:
        server.stop()
        stop.set()
    assert not list((data / "spool").glob("*.part")), "spool is cleared on start"


def _check_archive(server: ServerProcess, acknowledged: list[str], files: list[Path]) -> None:
    by_uid = {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID: p for p in files}
    study_uid = pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID
    listed = httpx.get(
        f"{server.dicomweb}/studies/{study_uid}/instances", headers=server.headers, params={"limit": 1000}
    ).json()
    present = {
        item["00080018"]["Value"][0]: item["00081190"]["Value"][0] for item in listed
    }
    missing = set(acknowledged) - set(present)
    assert not missing, f"{len(missing)} acknowledged instances lost"
    # Everything a query returns is whole: retrieve each and compare with the source bytes' pixels.
    for uid, url in present.items():
        response = httpx.get(url, headers=server.headers, timeout=30)
        assert response.status_code == 200, uid
        source = pydicom.dcmread(by_uid[uid])
        assert source.PixelData in response.content, f"{uid} is not whole"


def test_orphans_left_by_a_crash_are_collected(tmp_path: Path) -> None:
    """A file moved into storage whose index commit never happened is removed at start."""
    from sensecare.archive.service import Archive

    archive = Archive.open(f"sqlite:///{tmp_path / 'index.sqlite'}", tmp_path)
    key, = archive.storage.new_keys("default", 1)
    orphan = tmp_path / "orphan.part"
    orphan.write_bytes(b"half of something")
    archive.storage.put_files([(key, orphan)])
    assert archive.collect_orphans() == 1
    assert list(archive.storage.iter_keys()) == []
    archive.close()

"""DICOMweb against a real server process, driven by the real dicomweb-client.

Each scenario runs on SQLite and on PostgreSQL: the bars of issue #3 are checked
on the 2-series, 128-instance real chest CT study of ``conftest.real_study``.
"""

from __future__ import annotations

import io
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient
from PIL import Image

from tests.helpers.dcmtk import DCMTK_MISSING, dcmtk
from tests.helpers.server import ServerProcess

BATCH = 16


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def stored(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, real_study: list[Path]) -> Iterator[tuple[ServerProcess, DICOMwebClient, list[Path]]]:
    """A server holding the real study, stored with dicomweb-client in batches of 16."""
    data = tmp_path_factory.mktemp(f"server-{request.param}")
    if request.param == "sqlite":
        url = f"sqlite:///{data / 'index.sqlite'}"
    else:
        url = request.getfixturevalue("postgres").create_database()
    server = ServerProcess(data, url).start()
    try:
        client = DICOMwebClient(url=server.dicomweb, headers=server.headers)
        for start in range(0, len(real_study), BATCH):
            datasets = [pydicom.dcmread(p) for p in real_study[start : start + BATCH]]
            response = client.store_instances(datasets=datasets)
            assert len(response.ReferencedSOPSequence) == len(datasets)
            assert "FailedSOPSequence" not in response
        yield server, client, real_study
    finally:
        server.stop()


def _count(server: ServerProcess) -> int:
    response = httpx.get(server.dicomweb + "/instances", headers=server.headers, params={"limit": 10000})
    return 0 if response.status_code == 204 else len(response.json())


def test_qido_finds_the_study_by_patient_id_with_counts(stored) -> None:
    server, client, files = stored
    studies = client.search_for_studies(search_filters={"PatientID": "LIDC-IDRI-0001-T"})
    assert len(studies) == 1
    study = pydicom.Dataset.from_json(studies[0])
    assert study.StudyInstanceUID == pydicom.dcmread(files[0]).StudyInstanceUID
    assert study.NumberOfStudyRelatedSeries == 2
    assert study.NumberOfStudyRelatedInstances == 128
    assert study.ModalitiesInStudy == "CT"


@pytest.mark.parametrize("pattern", ["lidc*", "LIDC^IDRI*", "*zero one", "Lidc^Idri?Zero*"])
def test_qido_patient_name_wildcards_are_case_insensitive(stored, pattern: str) -> None:
    _server, client, _files = stored
    studies = client.search_for_studies(search_filters={"PatientName": pattern})
    assert len(studies) == 1, pattern


def test_qido_series_and_instances_levels(stored) -> None:
    server, client, files = stored
    study_uid = pydicom.dcmread(files[0]).StudyInstanceUID
    series = [pydicom.Dataset.from_json(s) for s in client.search_for_series(study_instance_uid=study_uid)]
    assert len(series) == 2
    assert all(s.NumberOfSeriesRelatedInstances == 64 and s.Modality == "CT" for s in series)
    instances = client.search_for_instances(
        study_instance_uid=study_uid, series_instance_uid=series[0].SeriesInstanceUID, limit=10, offset=5
    )
    assert len(instances) == 10
    nothing = httpx.get(server.dicomweb + "/studies", headers=server.headers, params={"PatientID": "nobody"})
    assert nothing.status_code == 204


def test_qido_matching_rules(stored) -> None:
    server, _client, files = stored
    first = pydicom.dcmread(files[0])

    def studies(**params: str) -> int:
        response = httpx.get(server.dicomweb + "/studies", headers=server.headers, params=params)
        assert response.status_code in (200, 204), response.text
        return 0 if response.status_code == 204 else len(response.json())

    date = first.StudyDate
    assert studies(StudyDate=f"{date}-{date}") == 1
    assert studies(StudyDate=f"-{date}") == 1
    assert studies(StudyDate="19000101-19001231") == 0
    assert studies(AccessionNumber="ACC0001") == 1
    assert studies(ModalitiesInStudy="CT") == 1
    assert studies(ModalitiesInStudy="MR") == 0
    assert studies(StudyInstanceUID=f"1.2.3,{first.StudyInstanceUID}") == 1
    assert studies(**{"00100020": "LIDC-IDRI-0001-T"}) == 1
    assert studies(fuzzymatching="false", PatientID="LIDC-IDRI-0001-T") == 1
    included = httpx.get(
        server.dicomweb + "/studies", headers=server.headers,
        params={"PatientID": "LIDC-IDRI-0001-T", "includefield": "PatientSex,StudyDescription"},
    ).json()[0]
    assert "00100040" in included and "00081030" in included
    bad = httpx.get(server.dicomweb + "/studies", headers=server.headers, params={"limit": "many"})
    assert bad.status_code == 400
    unknown = httpx.get(server.dicomweb + "/studies", headers=server.headers, params={"NoSuchKeyword": "x"})
    assert unknown.status_code == 400
    series = httpx.get(
        server.dicomweb + "/series", headers=server.headers,
        params={"Modality": "CT", "SeriesInstanceUID": first.SeriesInstanceUID},
    ).json()
    assert len(series) == 1 and series[0]["00100020"]["Value"] == ["LIDC-IDRI-0001-T"]


def test_wado_returns_identical_pixel_data(stored) -> None:
    _server, client, files = stored
    for path in (files[0], files[100]):
        source = pydicom.dcmread(path)
        retrieved = client.retrieve_instance(
            source.StudyInstanceUID, source.SeriesInstanceUID, source.SOPInstanceUID
        )
        assert retrieved.PixelData == source.PixelData
        assert retrieved.SOPInstanceUID == source.SOPInstanceUID


def test_wado_series_retrieve_and_metadata(stored) -> None:
    _server, client, files = stored
    source = pydicom.dcmread(files[70])
    instances = client.retrieve_series(source.StudyInstanceUID, source.SeriesInstanceUID)
    assert len(instances) == 64
    assert {i.SOPInstanceUID for i in instances} >= {source.SOPInstanceUID}
    metadata = client.retrieve_series_metadata(source.StudyInstanceUID, source.SeriesInstanceUID)
    assert len(metadata) == 64
    item = next(m for m in metadata if m["00080018"]["Value"] == [source.SOPInstanceUID])
    assert item["00280010"]["Value"] == [512]
    assert "BulkDataURI" in item["7FE00010"]
    assert item["00020010"]["Value"] == [str(source.file_meta.TransferSyntaxUID)]


def test_wado_frames_rendered_and_thumbnail(stored) -> None:
    server, client, files = stored
    source = pydicom.dcmread(files[10])
    frames = client.retrieve_instance_frames(
        source.StudyInstanceUID, source.SeriesInstanceUID, source.SOPInstanceUID, frame_numbers=[1]
    )
    assert frames[0] == source.PixelData
    png = client.retrieve_instance_rendered(
        source.StudyInstanceUID, source.SeriesInstanceUID, source.SOPInstanceUID,
        media_types=("image/png",),
    )
    image = Image.open(io.BytesIO(png))
    assert image.format == "PNG" and image.size == (512, 512)
    base = f"{server.dicomweb}/studies/{source.StudyInstanceUID}/series/{source.SeriesInstanceUID}"
    windowed = httpx.get(
        f"{base}/instances/{source.SOPInstanceUID}/rendered",
        headers={**server.headers, "Accept": "image/jpeg"}, params={"window": "-600,1500,linear"},
    )
    assert windowed.status_code == 200 and windowed.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(windowed.content)).format == "JPEG"
    thumb = httpx.get(f"{base}/thumbnail", headers=server.headers)
    assert thumb.status_code == 200
    assert max(Image.open(io.BytesIO(thumb.content)).size) <= 128
    missing = httpx.get(f"{base}/instances/{source.SOPInstanceUID}/frames/2", headers=server.headers)
    assert missing.status_code == 404


def test_every_dicomweb_endpoint_needs_a_token(stored) -> None:
    server, _client, files = stored
    source = pydicom.dcmread(files[0])
    base = f"{server.dicomweb}/studies/{source.StudyInstanceUID}"
    urls = [
        server.dicomweb + "/studies", server.dicomweb + "/series", server.dicomweb + "/instances",
        base, base + "/metadata", base + "/series",
        f"{base}/series/{source.SeriesInstanceUID}/instances/{source.SOPInstanceUID}/rendered",
        server.url + "/api/v1/audit",
    ]
    for url in urls:
        assert httpx.get(url).status_code == 401, url
        assert httpx.get(url, headers={"Authorization": "Bearer wrong"}).status_code == 401, url
    assert httpx.post(server.dicomweb + "/studies", content=b"x").status_code == 401
    assert httpx.get(server.url + "/healthz").status_code == 200


def test_phi_reads_are_audited(stored) -> None:
    server, client, _files = stored
    marker = "AUDIT-" + uuid.uuid4().hex[:8]
    client.search_for_studies(search_filters={"PatientID": marker})
    events = httpx.get(server.url + "/api/v1/audit", headers=server.headers, params={"action": "query"}).json()
    assert any(marker in (e["query"] or "") and e["actor"] == "admin" and e["client"] for e in events)


def test_non_dicom_part_is_refused_and_nothing_is_lost(stored) -> None:
    server, _client, files = stored
    before = _count(server)
    boundary = "b" + uuid.uuid4().hex
    body = (
        f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        + b"this is not a DICOM file at all" * 10
        + f"\r\n--{boundary}--\r\n".encode()
    )
    response = httpx.post(
        server.dicomweb + "/studies", content=body, headers={
            **server.headers, "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'
        },
    )
    assert response.status_code == 409
    failed = response.json()["00081198"]["Value"][0]
    assert failed["00081197"]["Value"] == [0xC000]
    assert _count(server) == before


def test_restoring_the_same_instances_is_idempotent(stored) -> None:
    server, client, files = stored
    before = _count(server)
    response = client.store_instances(datasets=[pydicom.dcmread(p) for p in files[:BATCH]])
    assert len(response.ReferencedSOPSequence) == BATCH
    assert _count(server) == before == 128


def test_storescu_resend_leaves_the_count_unchanged(stored) -> None:
    server, _client, files = stored
    storescu = dcmtk("storescu")
    if storescu is None:
        pytest.skip(DCMTK_MISSING)
    result = subprocess.run(
        [storescu, "-aec", "SENSECARE", "127.0.0.1", str(server.dicom_port), *map(str, files[:32])],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert _count(server) == 128

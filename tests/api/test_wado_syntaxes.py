"""WADO-RS over compressed and uncompressed transfer syntaxes, and OHIF-style requests."""

from __future__ import annotations

import io
import uuid
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.uid import (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    RLELossless,
)

from tests.api.conftest import make_client
from tests.helpers.synthetic_ct import make_ct_series

SYNTAXES = [ExplicitVRLittleEndian, ImplicitVRLittleEndian, RLELossless, JPEG2000Lossless]


def _instance(syntax: str) -> pydicom.Dataset:
    ds = make_ct_series(n_slices=1, rows=32, cols=32, shuffle=False)[0]
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    if syntax == ImplicitVRLittleEndian:
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    elif syntax != ExplicitVRLittleEndian:
        ds.compress(syntax)
    return ds


def _store(api, ds: pydicom.Dataset) -> str:  # type: ignore[no-untyped-def]
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True, implicit_vr=ds.file_meta.TransferSyntaxUID == ImplicitVRLittleEndian)
    boundary = uuid.uuid4().hex
    body = (
        f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + buffer.getvalue()
        + f"\r\n--{boundary}--\r\n".encode()
    )
    response = api.post(
        "/dicomweb/studies", content=body,
        headers={"Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'},
    )
    assert response.status_code == 200, response.text
    return f"/dicomweb/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"


def _parts(response) -> list[tuple[str, bytes]]:  # type: ignore[no-untyped-def]
    from email.parser import BytesParser

    raw = b"Content-Type: " + response.headers["content-type"].encode() + b"\r\n\r\n" + response.content
    message = BytesParser().parsebytes(raw)
    return [(p.get_content_type() + "".join(f"; {k}={v}" for k, v in p.get_params()[1:]), p.get_payload(decode=True)) for p in message.get_payload()]


@pytest.mark.parametrize("syntax", SYNTAXES, ids=lambda s: s.name)
def test_retrieve_frames_and_render_every_syntax(api, syntax: str) -> None:
    ds = _instance(syntax)
    expected = ds.pixel_array.astype("<i2").tobytes()
    url = _store(api, ds)

    as_stored = api.get(url, headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'})
    (content_type, body), = _parts(as_stored)
    assert f"transfer-syntax={syntax}" in content_type
    assert pydicom.dcmread(io.BytesIO(body)).file_meta.TransferSyntaxUID == syntax

    uncompressed = api.get(
        url, headers={"Accept": f'multipart/related; type="application/dicom"; transfer-syntax={ExplicitVRLittleEndian}'}
    )
    (_ct, body), = _parts(uncompressed)
    decoded = pydicom.dcmread(io.BytesIO(body))
    assert decoded.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert decoded.PixelData == expected

    raw = api.get(url + "/frames/1", headers={"Accept": "multipart/related; type=application/octet-stream"})
    (_ct, frame), = _parts(raw)
    assert frame == expected

    native = api.get(url + "/frames/1", headers={"Accept": "multipart/related; type=application/octet-stream; transfer-syntax=*"})
    (content_type, frame), = _parts(native)
    assert f"transfer-syntax={syntax}" in content_type

    rendered = api.get(url + "/rendered", headers={"Accept": "image/png"})
    assert Image.open(io.BytesIO(rendered.content)).size == (32, 32)


def test_unavailable_syntax_is_406(api) -> None:
    url = _store(api, _instance(ExplicitVRLittleEndian))
    response = api.get(url, headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.4.50'})
    assert response.status_code == 406
    assert api.get(url, headers={"Accept": "application/json"}).status_code == 406


def test_cors_is_off_by_default(api) -> None:
    response = api.options(
        "/dicomweb/studies", headers={"Origin": "http://viewer.example", "Access-Control-Request-Method": "GET"}
    )
    assert "access-control-allow-origin" not in response.headers


def test_ohif_data_source_requests(tmp_path: Path) -> None:
    """What OHIF v3's DICOMweb data source sends: preflight, QIDO with includefield, series metadata, frames."""
    api = make_client(tmp_path, cors_origins=["http://localhost:3000"])
    try:
        ds = _instance(ExplicitVRLittleEndian)
        _store(api, ds)
        origin = {"Origin": "http://localhost:3000"}
        preflight = api.options(
            "/dicomweb/studies",
            headers={**origin, "Access-Control-Request-Method": "GET", "Access-Control-Request-Headers": "authorization,accept"},
        )
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == "http://localhost:3000"
        studies = api.get(
            "/dicomweb/studies", headers={**origin, "Accept": "application/dicom+json"},
            params={"limit": 101, "offset": 0, "fuzzymatching": "false",
                    "includefield": "00081030,00080060"},
        )
        assert studies.status_code == 200
        assert studies.headers["access-control-allow-origin"] == "http://localhost:3000"
        series = api.get(f"/dicomweb/studies/{ds.StudyInstanceUID}/series", headers=origin).json()
        metadata = api.get(
            f"/dicomweb/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/metadata", headers=origin
        ).json()
        assert len(series) == 1 and len(metadata) == 1
        for keyword in ("00280010", "00280011", "00200032", "00200037", "00280030", "00281052", "00281053"):
            assert keyword in metadata[0], keyword
        frames = api.get(
            f"/dicomweb/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}/frames/1",
            headers={**origin, "Accept": "multipart/related; type=application/octet-stream; transfer-syntax=*"},
        )
        assert frames.status_code == 200
        assert _parts(frames)[0][1] == ds.PixelData
        bulk = api.get(metadata[0]["7FE00010"]["BulkDataURI"].split("testserver", 1)[1], headers=origin)
        assert _parts(bulk)[0][1] == ds.PixelData
        other = api.get("/dicomweb/studies", headers={"Origin": "http://evil.example"})
        assert "access-control-allow-origin" not in other.headers
    finally:
        api.ctx.archive.close()  # type: ignore[attr-defined]


def test_stow_response_lists_referenced_and_failed(api) -> None:
    good = _instance(ExplicitVRLittleEndian)
    buffer = io.BytesIO()
    good.save_as(buffer, enforce_file_format=True)
    boundary = "mixed"
    body = (
        f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + buffer.getvalue()
        + f"\r\n--{boundary}\r\nContent-Type: text/plain\r\n\r\nhello".encode()
        + f"\r\n--{boundary}--\r\n".encode()
    )
    response = api.post(
        "/dicomweb/studies", content=body,
        headers={"Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'},
    )
    assert response.status_code == 202
    payload = response.json()
    assert payload["00081199"]["Value"][0]["00081155"]["Value"] == [good.SOPInstanceUID]
    assert payload["00081198"]["Value"][0]["00081197"]["Value"] == [0xC000]
    assert payload["00081190"]["Value"][0].endswith(good.StudyInstanceUID)


def test_stow_to_a_study_refuses_other_studies(api) -> None:
    ds = _instance(ExplicitVRLittleEndian)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    boundary = "s"
    body = f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + buffer.getvalue() + f"\r\n--{boundary}--\r\n".encode()
    headers = {"Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'}
    wrong = api.post("/dicomweb/studies/1.2.3.4", content=body, headers=headers)
    assert wrong.status_code == 409
    assert wrong.json()["00081198"]["Value"][0]["00081197"]["Value"] == [0xA900]
    right = api.post(f"/dicomweb/studies/{ds.StudyInstanceUID}", content=body, headers=headers)
    assert right.status_code == 200


def test_single_part_application_dicom_body(api) -> None:
    ds = _instance(ExplicitVRLittleEndian)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    response = api.post("/dicomweb/studies", content=buffer.getvalue(), headers={"Content-Type": "application/dicom"})
    assert response.status_code == 200
    assert np.frombuffer(
        _parts(api.get(f"/dicomweb/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}/frames/1"))[0][1],
        dtype="<i2",
    ).size == 32 * 32

"""Fuzzing STOW-RS: broken files and broken multipart bodies never give a 5xx or corrupt the index."""

from __future__ import annotations

import io
import struct
import uuid

import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers.synthetic_ct import make_ct_series

FUZZ = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def _valid_instance() -> bytes:
    ds = make_ct_series(n_slices=1, rows=16, cols=16, shuffle=False)[0]
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _post(api, body: bytes, boundary: str | None = None, content_type: str | None = None):  # type: ignore[no-untyped-def]
    boundary = boundary or uuid.uuid4().hex
    return api.post(
        "/dicomweb/studies",
        content=body,
        headers={"Content-Type": content_type or f'multipart/related; type="application/dicom"; boundary={boundary}'},
    )


def _wrap(part: bytes, boundary: str) -> bytes:
    return (
        f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        + part + f"\r\n--{boundary}--\r\n".encode()
    )


def _assert_index_consistent(api) -> None:  # type: ignore[no-untyped-def]
    """Every indexed instance has a whole, parseable file behind it."""
    from sqlalchemy import select, text

    from sensecare.archive.models import Instance

    archive = api.ctx.archive
    with archive.db.read() as session:
        assert session.execute(text("PRAGMA integrity_check")).scalar_one() == "ok"
        keys = list(session.scalars(select(Instance.storage_key)))
    for key in keys:
        with archive.storage.open(key) as handle:
            ds = pydicom.dcmread(handle)
        assert ds.SOPInstanceUID


def _mutations() -> st.SearchStrategy:
    def truncate(data: bytes, n: int) -> bytes:
        return data[: n % len(data)]

    def flip(data: bytes, edits: list[tuple[int, int]]) -> bytes:
        out = bytearray(data)
        for position, value in edits:
            out[position % len(out)] = value
        return bytes(out)

    def huge_length(data: bytes, n: int) -> bytes:
        # Pixel Data (7FE0,0010) OW: its 32-bit length becomes absurd.
        index = data.rfind(b"\xe0\x7f\x10\x00")
        out = bytearray(data)
        struct.pack_into("<I", out, index + 8, 0xFFFFFFF0 - (n % 1000))
        return bytes(out)

    def wrong_vr(data: bytes, n: int, vr: str) -> bytes:
        # Patient Name (0010,0010): give it another VR.
        index = data.find(b"\x10\x00\x10\x00")
        out = bytearray(data)
        out[index + 4 : index + 6] = vr.encode()
        return bytes(out)

    valid = st.just(None).map(lambda _: _valid_instance())
    return st.one_of(
        st.builds(truncate, valid, st.integers(0, 10**6)),
        st.builds(flip, valid, st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=20)),
        st.builds(huge_length, valid, st.integers(0, 10**6)),
        st.builds(wrong_vr, valid, st.integers(0, 10**6), st.sampled_from(["SQ", "UN", "OB", "XX", "US", "FD", "AT", "\x00\x00"])),
        st.binary(max_size=2000),
    )


@FUZZ
@given(payload=_mutations())
def test_mutated_instances_never_give_5xx(api, payload: bytes) -> None:
    boundary = uuid.uuid4().hex
    response = _post(api, _wrap(payload, boundary), boundary)
    assert response.status_code in {200, 202, 400, 409}, response.text
    if response.status_code == 200:  # a mutation that kept a valid file is fine, but must be whole
        _assert_index_consistent(api)
        url = response.json()["00081199"]["Value"][0]["00081190"]["Value"][0]
        path = url.split("/dicomweb", 1)[1]
        for suffix in ("", "/metadata", "/rendered", "/frames/1"):
            assert api.get("/dicomweb" + path + suffix).status_code < 500, suffix


@FUZZ
@given(
    junk_before=st.binary(max_size=50),
    declared=st.text(alphabet="abcdefXYZ0123456789'()+_,-./:=? ", min_size=0, max_size=80),
    cut=st.integers(0, 10**6),
    headers=st.sampled_from(["Content-Type: application/dicom\r\n\r\n", "\r\n", "Content-Type application/dicom\r\n\r\n", "X: " + "y" * 9000 + "\r\n\r\n"]),
)
def test_malformed_multipart_bodies_never_give_5xx(api, junk_before: bytes, declared: str, cut: int, headers: str) -> None:
    actual = uuid.uuid4().hex
    body = (
        junk_before + f"--{actual}\r\n{headers}".encode() + _valid_instance() + f"\r\n--{actual}--\r\n".encode()
    )
    body = body[: max(1, cut % (len(body) + 1))]
    response = _post(api, body, content_type=f'multipart/related; type="application/dicom"; boundary={declared}')
    assert response.status_code < 500, response.text


def test_fuzzing_leaves_good_data_alone(api) -> None:
    """A valid instance stored first is still whole after a barrage of bad requests."""
    good = _valid_instance()
    boundary = "goodboundary"
    assert _post(api, _wrap(good, boundary), boundary).status_code == 200
    for payload in (good[:100], good[:-10], b"\x00" * 300, b"DICM" * 100):
        assert _post(api, _wrap(payload, boundary), boundary).status_code in {400, 409}
    for body, ctype in (
        (b"--x\r\n", 'multipart/related; type="application/dicom"; boundary=x'),
        (good, "application/json"),
        (good, 'multipart/related; type="application/dicom+json"; boundary=x'),
        (b"", 'multipart/related; type="application/dicom"'),
    ):
        response = _post(api, body, content_type=ctype)
        assert response.status_code in {400, 415}, (ctype, response.status_code, response.text)
    assert api.ctx.archive.count_instances() == 1
    _assert_index_consistent(api)


@pytest.mark.parametrize(
    "content_type, expected",
    [
        ("text/plain", 415),
        ('multipart/related; type="application/dicom"', 400),  # no boundary
        ('multipart/mixed; boundary=abc', 415),
    ],
)
def test_wrong_media_types(api, content_type: str, expected: int) -> None:
    assert _post(api, b"--abc--\r\n", content_type=content_type).status_code == expected

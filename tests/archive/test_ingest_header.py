"""The ingest header parse decodes values exactly as pydicom's full read does.

Ingest decodes the indexed elements itself (for speed); these tests hold it to
pydicom's answers across character sets, VR encodings and byte orders.
"""

from __future__ import annotations

import io
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from sensecare.archive.ingest import HEAD_BYTES, InstanceRejected, parse_upload, read_header
from tests.helpers.synthetic_ct import make_ct_series

CHARSETS = [
    (None, "Doe^John", "Smith^Ann"),
    ("ISO_IR 100", "Müller^Jürgen", "Dr. Ødegård"),
    ("ISO_IR 192", "张^三", "Ärztin^Zoë"),
    (["", "ISO 2022 IR 87"], "Yamada^Tarou=山田^太郎=やまだ^たろう", "Sato^Hanako"),
    ("ISO_IR 144", "Иванов^Иван", "Петров"),
]


def _encode(ds: pydicom.Dataset, syntax: pydicom.uid.UID) -> bytes:
    ds.file_meta.TransferSyntaxUID = syntax
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True, little_endian=syntax != ExplicitVRBigEndian, implicit_vr=syntax.is_implicit_VR)
    return buffer.getvalue()


@pytest.mark.parametrize("charset, patient_name, referring", CHARSETS)
@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian])
def test_header_values_match_pydicom(tmp_path: Path, charset, patient_name: str, referring: str, syntax) -> None:  # type: ignore[no-untyped-def]
    ds = make_ct_series(n_slices=1, rows=128, cols=96, shuffle=False)[0]
    if charset:
        ds.SpecificCharacterSet = charset
    ds.PatientName = patient_name
    ds.ReferringPhysicianName = referring
    ds.StudyDescription = "Thorax  " if charset is None else "Thorax ünd Lunge"
    ds.PatientID = " ID-7 "
    ds.NumberOfFrames = "1"
    data = _encode(ds, syntax)
    path = tmp_path / "one.dcm"
    path.write_bytes(data)

    header = parse_upload(data[:HEAD_BYTES], len(data))
    assert header == read_header(path)
    reference = pydicom.dcmread(path)
    assert header.transfer_syntax_uid == syntax
    assert header.patient_name == str(reference.PatientName)
    assert header.referring_physician_name == str(reference.ReferringPhysicianName)
    assert header.study_description == str(reference.StudyDescription).strip()
    assert header.patient_id == "ID-7"
    assert (header.rows, header.columns, header.number_of_frames) == (128, 96, 1)
    assert header.sop_instance_uid == reference.SOPInstanceUID
    assert header.study_date == reference.StudyDate
    assert header.modality == "CT"


def test_unknown_vr_and_missing_meta_are_refused() -> None:
    ds = make_ct_series(n_slices=1, rows=16, cols=16, shuffle=False)[0]
    data = bytearray(_encode(ds, ExplicitVRLittleEndian))
    index = data.find(b"\x10\x00\x10\x00")  # Patient Name
    data[index + 4 : index + 6] = b"XX"
    rejected = parse_upload(bytes(data), len(data))
    assert isinstance(rejected, InstanceRejected) and "unknown VR" in str(rejected)

    no_meta = b"\x00" * 128 + b"DICM" + _encode(ds, ExplicitVRLittleEndian)[132:][400:]
    assert isinstance(parse_upload(no_meta, len(no_meta)), InstanceRejected)
    assert isinstance(parse_upload(b"not dicom at all", 16), InstanceRejected)


def test_a_prefix_that_ends_before_pixel_data_defers_to_the_file() -> None:
    ds = make_ct_series(n_slices=1, rows=16, cols=16, shuffle=False)[0]
    data = _encode(ds, ExplicitVRLittleEndian)
    assert parse_upload(data[:300], len(data)) is None


def test_a_file_meta_element_with_a_broken_vr_is_refused(tmp_path: Path) -> None:
    """Found by the STOW fuzzer: accepted, then unreadable by pydicom (it re-reads the group as
    implicit VR). The file meta group is always explicit VR, so a broken VR there is a reject."""
    ds = make_ct_series(n_slices=1, rows=16, cols=16, shuffle=False)[0]
    data = bytearray(_encode(ds, ExplicitVRLittleEndian))
    index = data.find(b"\x02\x00\x00\x00UL")  # (0002,0000) File Meta Information Group Length
    data[index + 5] = ord("y")  # the fuzzer's case: VR "Uy"
    rejected = parse_upload(bytes(data), len(data))
    assert isinstance(rejected, InstanceRejected) and "unknown VR" in str(rejected)
    path = tmp_path / "broken.dcm"
    path.write_bytes(bytes(data))
    with pytest.raises(InstanceRejected):
        read_header(path)

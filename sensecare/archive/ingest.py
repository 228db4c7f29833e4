"""Reading an incoming Part 10 file into the attributes the index keeps.

Everything that can be wrong with an upload is found here, before a byte is
moved into storage: the caller gets a failure reason per PS3.4 Annex B / PS3.18
§10.5.3 for each bad instance and the others are stored.
"""

from __future__ import annotations

import enum
import io
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
from pydicom.charset import convert_encodings
from pydicom.datadict import tag_for_keyword
from pydicom.dataelem import RawDataElement, convert_raw_data_element
from pydicom.dataset import Dataset
from pydicom.uid import UID
from pydicom.valuerep import VR

from sensecare.archive.storage import SpooledFile
from sensecare.errors import InvalidDicomError

logger = logging.getLogger(__name__)


class FailureReason(enum.IntEnum):
    """Store failure reasons (PS3.4 B.2.3, PS3.18 Table 10.5.3-2)."""

    PROCESSING_FAILURE = 0x0110
    SOP_CLASS_NOT_SUPPORTED = 0x0122
    OUT_OF_RESOURCES = 0xA700
    DATA_SET_DOES_NOT_MATCH = 0xA900
    CANNOT_UNDERSTAND = 0xC000


class InstanceRejected(InvalidDicomError):
    """An instance that cannot be stored, with the reason code to report."""

    def __init__(
        self,
        message: str,
        reason: FailureReason = FailureReason.CANNOT_UNDERSTAND,
        sop_class_uid: str | None = None,
        sop_instance_uid: str | None = None,
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.sop_class_uid = sop_class_uid
        self.sop_instance_uid = sop_instance_uid


@dataclass(frozen=True)
class InstanceHeader:
    """The indexed attributes of one instance, as plain values."""

    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    transfer_syntax_uid: str
    # study level
    patient_id: str | None
    patient_name: str | None
    patient_birth_date: str | None
    patient_sex: str | None
    study_date: str | None
    study_time: str | None
    accession_number: str | None
    study_id: str | None
    study_description: str | None
    referring_physician_name: str | None
    # series level
    modality: str | None
    series_number: int | None
    series_description: str | None
    body_part_examined: str | None
    series_date: str | None
    # instance level
    instance_number: int | None
    number_of_frames: int | None
    rows: int | None
    columns: int | None


#: Values longer than this (pixel data, mostly) are not read: only their lengths are checked.
DEFER_BYTES = 4096


#: How much of an upload is kept in memory to parse its header without reading the file.
HEAD_BYTES = 64 * 1024


@dataclass(frozen=True)
class IncomingInstance:
    """A spooled upload, with its header when it was parsed while the bytes arrived."""

    file: SpooledFile
    parsed: InstanceHeader | InstanceRejected | None = None

    def header(self) -> InstanceHeader:
        """The validated header; raises :class:`InstanceRejected`."""
        if isinstance(self.parsed, InstanceRejected):
            raise self.parsed
        return self.parsed or read_header(self.file.path)


def read_header(path: Path) -> InstanceHeader:
    """Parse and validate a Part 10 file; raise :class:`InstanceRejected` when unusable."""
    try:
        ds = pydicom.dcmread(path, force=False, defer_size=DEFER_BYTES)
    except Exception as exc:  # pydicom raises many types for broken input
        raise InstanceRejected(f"not a readable DICOM Part 10 file: {_short(exc)}") from exc
    return _validated(ds, path.stat().st_size)


def parse_upload(head: bytes, size: int) -> InstanceHeader | InstanceRejected | None:
    """Parse an upload from its first bytes while the rest is still being written.

    Returns None when those bytes do not hold the whole header (the file is read
    later instead): the prefix is enough only when it holds every element up to a
    native Pixel Data element, or the whole file.
    """
    whole = len(head) >= size
    try:
        ds = pydicom.dcmread(io.BytesIO(head), force=False, defer_size=DEFER_BYTES)
    except Exception as exc:
        if whole:
            return InstanceRejected(f"not a readable DICOM Part 10 file: {_short(exc)}")
        return None
    if not whole:
        syntax = UID(str(getattr(ds.file_meta, "TransferSyntaxUID", "") or ""))
        pixels = dict(zip(ds.keys(), ds.values())).get(_TAGS["PixelData"])
        if (
            pixels is None
            or not syntax.is_transfer_syntax
            or syntax.is_encapsulated
            or pixels.value_tell is None
            or pixels.value_tell > len(head)
        ):
            return None
    try:
        return _validated(ds, size)
    except InstanceRejected as exc:
        return exc


def _validated(ds: Dataset, size: int) -> InstanceHeader:
    try:
        _check_structure(ds)
        return _header_from_dataset(_Elements(ds), size)
    except InstanceRejected:
        raise
    except Exception as exc:
        raise InstanceRejected(
            f"invalid attribute value: {_short(exc)}",
            sop_class_uid=_safe_uid(ds, "SOPClassUID"),
            sop_instance_uid=_safe_uid(ds, "SOPInstanceUID"),
        ) from exc


class _Elements:
    """Values of single elements, converted one at a time.

    ``Dataset.get`` costs far more than the conversion itself; ingest reads about 25
    elements per instance, so it converts the raw elements directly.
    """

    def __init__(self, ds: Dataset) -> None:
        self.ds = ds
        self.encoding = convert_encodings(ds.get("SpecificCharacterSet"))
        # Plain dict of the top level (raw elements stay raw): cheap lookups by tag.
        self.by_tag = dict(zip(ds.keys(), ds.values()))

    def get(self, keyword: str) -> Any:
        element = self.by_tag.get(_TAGS[keyword])
        if element is None:
            return None
        if isinstance(element, RawDataElement):
            element = convert_raw_data_element(element, encoding=self.encoding, ds=self.ds)
        return element.value

    def raw(self, keyword: str) -> Any:
        """The element itself, unconverted (a deferred value is not read)."""
        return self.by_tag.get(_TAGS[keyword])


def _header_from_dataset(ds: _Elements, file_size: int) -> InstanceHeader:
    meta = getattr(ds.ds, "file_meta", None)
    transfer_syntax = str(getattr(meta, "TransferSyntaxUID", "") or "")
    if not transfer_syntax:
        raise InstanceRejected("file meta information has no TransferSyntaxUID")
    if not UID(transfer_syntax).is_transfer_syntax:
        raise InstanceRejected(f"TransferSyntaxUID {transfer_syntax[:70]!r} is not a known transfer syntax")
    sop_class = _required_uid(ds, "SOPClassUID", meta)
    sop_instance = _required_uid(ds, "SOPInstanceUID", meta)
    ids = {"sop_class_uid": sop_class, "sop_instance_uid": sop_instance}
    study = _required_uid(ds, "StudyInstanceUID", None, **ids)
    series = _required_uid(ds, "SeriesInstanceUID", None, **ids)
    _check_pixel_data(ds, UID(transfer_syntax), file_size, **ids)
    return InstanceHeader(
        sop_class_uid=sop_class,
        sop_instance_uid=sop_instance,
        study_instance_uid=study,
        series_instance_uid=series,
        transfer_syntax_uid=transfer_syntax,
        patient_id=_text(ds, "PatientID", 64),
        patient_name=_text(ds, "PatientName", 324),
        patient_birth_date=_text(ds, "PatientBirthDate", 8),
        patient_sex=_text(ds, "PatientSex", 16),
        study_date=_text(ds, "StudyDate", 8),
        study_time=_text(ds, "StudyTime", 16),
        accession_number=_text(ds, "AccessionNumber", 16),
        study_id=_text(ds, "StudyID", 16),
        study_description=_text(ds, "StudyDescription", 64),
        referring_physician_name=_text(ds, "ReferringPhysicianName", 324),
        modality=_text(ds, "Modality", 16),
        series_number=_int(ds, "SeriesNumber"),
        series_description=_text(ds, "SeriesDescription", 64),
        body_part_examined=_text(ds, "BodyPartExamined", 16),
        series_date=_text(ds, "SeriesDate", 8),
        instance_number=_int(ds, "InstanceNumber"),
        number_of_frames=_int(ds, "NumberOfFrames"),
        rows=_int(ds, "Rows"),
        columns=_int(ds, "Columns"),
    )


KNOWN_VRS = frozenset(vr.value for vr in VR)
_TAGS = {
    keyword: tag_for_keyword(keyword)
    for keyword in (
        "SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "PatientID",
        "PatientName", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime", "AccessionNumber",
        "StudyID", "StudyDescription", "ReferringPhysicianName", "Modality", "SeriesNumber",
        "SeriesDescription", "BodyPartExamined", "SeriesDate", "InstanceNumber", "NumberOfFrames",
        "Rows", "Columns", "SamplesPerPixel", "BitsAllocated", "PixelData",
    )
}


def _check_structure(ds: Dataset) -> None:
    """Refuse elements whose VR is unknown, at every nesting level.

    pydicom decodes elements lazily, so a corrupt VR would otherwise surface only
    when a later reader touches it. Values are not converted here (that costs a
    millisecond per CT slice); readers tolerate values that break their VR.
    """
    for element in ds.values():
        vr = element.VR
        if vr is not None and vr not in KNOWN_VRS:
            raise InstanceRejected(f"element {element.tag} has an unknown VR {vr!r}")
        if vr == "SQ":
            for item in ds[element.tag].value:
                _check_structure(item)


def _required_uid(
    ds: _Elements, keyword: str, meta: Dataset | None, **ids: str | None
) -> str:
    value = ds.get(keyword)
    if not value and meta is not None:
        value = meta.get("MediaStorage" + keyword)
    text = str(value or "").strip()
    if not text:
        raise InstanceRejected(f"{keyword} is missing", **ids)
    if not UID(text).is_valid:
        raise InstanceRejected(
            f"{keyword} {text[:70]!r} is not a valid UID",
            FailureReason.DATA_SET_DOES_NOT_MATCH,
            **ids,
        )
    return text


def _check_pixel_data(
    ds: _Elements, transfer_syntax: UID, file_size: int, **ids: str | None
) -> None:
    """A truncated upload must not be stored as if it were complete."""
    element = ds.raw("PixelData")
    if element is None:
        return
    value = element.value
    if transfer_syntax.is_encapsulated:
        if value is not None and not bytes(value[:4]) == b"\xfe\xff\x00\xe0":
            raise InstanceRejected("encapsulated pixel data lacks its item tag", **ids)
        return
    if value is None:  # deferred: the bytes present are what the file still holds
        available = max(0, file_size - element.value_tell)
        present = min(element.length, available)
    else:
        present = len(value)
    expected = (
        int(ds.get("Rows") or 0)
        * int(ds.get("Columns") or 0)
        * int(ds.get("SamplesPerPixel") or 1)
        * int(ds.get("NumberOfFrames") or 1)
        * int(ds.get("BitsAllocated") or 0)
        + 7
    ) // 8
    if present < expected:
        raise InstanceRejected(f"pixel data is truncated ({present} of {expected} bytes)", **ids)


def _text(ds: _Elements, keyword: str, limit: int) -> str | None:
    value = ds.get(keyword)
    if value is None or value == "":
        return None
    if isinstance(value, pydicom.multival.MultiValue):
        value = "\\".join(str(v) for v in value)
    return str(value).strip()[:limit] or None


def _int(ds: _Elements, keyword: str) -> int | None:
    value = ds.get(keyword)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _safe_uid(ds: Dataset, keyword: str) -> str | None:
    try:
        value = ds.get(keyword)
        return str(value) if value else None
    except Exception:
        return None


def _short(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0][:200]

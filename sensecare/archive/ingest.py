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
from pydicom.charset import convert_encodings, decode_bytes
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import RawDataElement, convert_raw_data_element
from pydicom.dataset import Dataset
from pydicom.filereader import data_element_generator, read_preamble
from pydicom.uid import UID
from pydicom.valuerep import PN_DELIMS, TEXT_VR_DELIMS, VR

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
    try:
        _check_structure(ds)
        elements = _Elements(dict(zip(ds.keys(), ds.values())), dict(zip(ds.file_meta.keys(), ds.file_meta.values())))
    except InstanceRejected:
        raise
    except Exception as exc:
        raise _invalid(exc, ds) from exc
    return _validated(elements, path.stat().st_size)


def parse_upload(head: bytes, size: int) -> InstanceHeader | InstanceRejected | None:
    """Parse an upload from its first bytes while the rest is still being written.

    Returns None when those bytes do not hold the whole header (the file is read
    later instead): the prefix is enough only when it holds every element up to a
    native Pixel Data element, or the whole file. Only the indexed elements are
    kept (this runs for every instance received, so it skips building a Dataset);
    every top-level element's VR and every parsed sequence are still checked.
    """
    whole = len(head) >= size
    try:
        elements = _scan(head)
    except InstanceRejected as exc:
        return exc
    except _NeedsFullRead:
        return None
    except Exception as exc:  # pydicom raises many types for broken input
        if whole:
            return InstanceRejected(f"not a readable DICOM Part 10 file: {_short(exc)}")
        return None
    if not whole:
        pixels = elements.raw("PixelData")
        if (
            pixels is None
            or elements.transfer_syntax.is_encapsulated
            or pixels.value_tell is None
            or pixels.value_tell > len(head)
        ):
            return None
    try:
        return _validated(elements, size)
    except InstanceRejected as exc:
        return exc


class _NeedsFullRead(Exception):
    """The prefix cannot be scanned on its own (deflated data set): read the whole file."""


def _scan(head: bytes) -> _Elements:
    fp = io.BytesIO(head)
    read_preamble(fp, force=False)  # raises without the DICM prefix
    meta: dict[int, Any] = {}
    for element in data_element_generator(fp, False, True, stop_when=_past_group_2_or_refused):
        meta[int(element.tag)] = element
    syntax_element = meta.get(_TRANSFER_SYNTAX)
    syntax = UID(_decode_ascii(syntax_element.value) if syntax_element is not None and syntax_element.value else "")
    if not syntax:
        raise InstanceRejected("file meta information has no TransferSyntaxUID")
    if not syntax.is_transfer_syntax:
        raise InstanceRejected(f"TransferSyntaxUID {str(syntax)[:70]!r} is not a known transfer syntax")
    if syntax.is_deflated:
        raise _NeedsFullRead
    found: dict[int, Any] = {}
    for element in data_element_generator(
        fp, syntax.is_implicit_VR, syntax.is_little_endian,
        stop_when=_refuse_unknown_vr, defer_size=DEFER_BYTES, specific_tags=_SCANNED_TAGS,
    ):
        if element.VR == "SQ" and not isinstance(element, RawDataElement):
            for item in element.value:  # an undefined-length sequence, parsed by pydicom
                _check_structure(item)
        found[int(element.tag)] = element
    return _Elements(found, meta)


def _past_group_2_or_refused(tag: int, vr: str | None, length: int) -> bool:
    """Stop after the file meta group; inside it, refuse an unknown VR (PS3.10: the group is
    always explicit VR little endian; pydicom would re-read such a file as implicit and fail)."""
    if (tag >> 16) != 0x0002:
        return True
    return _refuse_unknown_vr(tag, vr, length)


def _refuse_unknown_vr(tag: int, vr: str | None, _length: int) -> bool:
    if vr is not None and vr not in KNOWN_VRS:
        raise InstanceRejected(f"element {pydicom.tag.Tag(tag)} has an unknown VR {vr!r}")
    return False


def _validated(elements: _Elements, size: int) -> InstanceHeader:
    try:
        return _header_from_dataset(elements, size)
    except InstanceRejected:
        raise
    except Exception as exc:
        raise _invalid(exc, elements) from exc


def _invalid(exc: Exception, source: Dataset | _Elements) -> InstanceRejected:
    return InstanceRejected(
        f"invalid attribute value: {_short(exc)}",
        sop_class_uid=_safe_uid(source, "SOPClassUID"),
        sop_instance_uid=_safe_uid(source, "SOPInstanceUID"),
    )


class _Elements:
    """The elements ingest reads, converted one at a time from their raw bytes.

    ``Dataset.get`` and pydicom's general conversion (with its validation) cost
    far more than decoding the ~25 short values the index keeps, so the common
    VRs are decoded here and the rest go through pydicom.
    """

    def __init__(self, by_tag: dict[int, Any], meta: dict[int, Any]) -> None:
        self.by_tag = by_tag
        self.meta = meta
        charset = self._value(by_tag.get(_CHARSET))
        self.encodings = convert_encodings(charset.split("\\") if isinstance(charset, str) else charset)
        syntax = self._value(meta.get(_TRANSFER_SYNTAX))
        self.transfer_syntax = UID(str(syntax or "").strip())

    def get(self, keyword: str) -> Any:
        return self._value(self.by_tag.get(_TAGS[keyword]))

    def get_meta(self, keyword: str) -> Any:
        return self._value(self.meta.get(tag_for_keyword(keyword)))

    def raw(self, keyword: str) -> Any:
        """The element itself, unconverted (a deferred value is not read)."""
        return self.by_tag.get(_TAGS[keyword])

    def _value(self, element: Any) -> Any:
        if element is None:
            return None
        if not isinstance(element, RawDataElement):
            return element.value
        raw = element.value
        vr = element.VR or _dictionary_vr(element.tag)
        if raw is None or vr not in _FAST_VRS:
            encodings = getattr(self, "encodings", None)
            return convert_raw_data_element(element, encoding=encodings).value
        if vr == "US":
            if len(raw) < 2:
                return None
            return int.from_bytes(raw[:2], "little" if element.is_little_endian else "big")
        if vr == "PN":
            text = decode_bytes(raw, self.encodings, PN_DELIMS)
        elif vr in _CHARSET_VRS:
            text = decode_bytes(raw, self.encodings, TEXT_VR_DELIMS)
        else:
            text = _decode_ascii(raw)
        return "\\".join(value.strip("\x00 ") for value in text.split("\\"))


def _decode_ascii(raw: bytes) -> str:
    return raw.decode("latin-1").strip("\x00 ")


def _dictionary_vr(tag: int) -> str | None:
    try:
        return dictionary_VR(tag)
    except KeyError:
        return None


def _header_from_dataset(ds: _Elements, file_size: int) -> InstanceHeader:
    transfer_syntax = str(ds.transfer_syntax)
    if not transfer_syntax:
        raise InstanceRejected("file meta information has no TransferSyntaxUID")
    if not ds.transfer_syntax.is_transfer_syntax:
        raise InstanceRejected(f"TransferSyntaxUID {transfer_syntax[:70]!r} is not a known transfer syntax")
    sop_class = _required_uid(ds, "SOPClassUID", in_meta=True)
    sop_instance = _required_uid(ds, "SOPInstanceUID", in_meta=True)
    ids = {"sop_class_uid": sop_class, "sop_instance_uid": sop_instance}
    study = _required_uid(ds, "StudyInstanceUID", **ids)
    series = _required_uid(ds, "SeriesInstanceUID", **ids)
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
_CHARSET = tag_for_keyword("SpecificCharacterSet")
_TRANSFER_SYNTAX = tag_for_keyword("TransferSyntaxUID")
_SCANNED_TAGS = [*_TAGS.values(), _CHARSET]
#: VRs decoded directly; everything else goes through pydicom's conversion.
_CHARSET_VRS = frozenset({"LO", "SH", "UC", "LT", "ST", "UT"})
_FAST_VRS = _CHARSET_VRS | {"PN", "US", "AE", "AS", "CS", "DA", "DS", "DT", "IS", "TM", "UI"}


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


def _required_uid(ds: _Elements, keyword: str, in_meta: bool = False, **ids: str | None) -> str:
    value = ds.get(keyword)
    if not value and in_meta:
        value = ds.get_meta("MediaStorage" + keyword)
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


def _safe_uid(ds: Dataset | _Elements, keyword: str) -> str | None:
    try:
        value = ds.get(keyword)
        return str(value) if value else None
    except Exception:
        return None


def _short(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0][:200]

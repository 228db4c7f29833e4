"""The DICOM Segmentation of one analysed chest CT series (PS3.3 A.51, C.8.20).

One BINARY Segmentation instance holds every mask SenseCare produces for a
series: the lungs (per side, or per lobe) and each lesion as its own segment,
so that viewers (OHIF, 3D Slicer) and the SR (:mod:`sensecare.dicom.sr`) can
address a lesion by its *Segment Number* (0062,0004).  It is built with
:class:`highdicom.seg.Segmentation`, which fills the Segmentation Image Module
(PS3.3 C.8.20.2), the Multi-frame Functional Groups (C.7.6.16) with a Derivation
Image Sequence per frame pointing at its CT slice, and the Common Instance
Reference Module (C.12.2) naming the source series.

Masks and slice order
---------------------
A mask is a boolean array ``(z, y, x)`` = (slices, rows, columns) whose plane
``mask[k]`` segments the CT slice ``source[k]``.  Any slice order works as long
as masks and `source` agree; the analysis pipeline passes the slices in volume
order (:func:`sensecare.dicom.volume.volume_from_datasets`, sorted along the
slice normal) and masks indexed like ``Volume.array``.  The Segmentation itself
is written in spatial order by highdicom, and frames are matched to their source
slices by *ImagePositionPatient*, so readers never depend on the order given.

Encoding
--------
BINARY segmentations are bit-packed (1 bit per pixel, PS3.5 8.1.1) in Explicit
VR Little Endian; frames in which a segment is empty are omitted
(``omit_empty_frames``), so a 10 mm nodule costs a handful of 32 KiB frames
whatever the series length.  Segments overlap (a lesion lies inside its lung),
which BINARY allows and which *SegmentsOverlap* (0062,0013) records as ``YES``.

Cost
----
highdicom wants one stacked ``(planes, rows, columns, segments)`` array.  It is
built only over the slices some mask touches (the other slices go in as
*further* source images, so every slice is still referenced), laid out so that
every frame is contiguous, and filled from each mask's bounding box: masks may
be given as crops with an offset (:class:`SegmentSpec`), so a lesion never
costs a series-sized array.  *SegmentsOverlap* is decided from the boxes
(:func:`_segments_overlap`) instead of highdicom's sum of the stacked array over
segments, which was most of the encoding time.  For 300 slices of 512 x 512
with two lungs and a few lesions, building and writing now take about 1.5-2 s
on two shared cores, mostly highdicom's per-frame functional groups and
pydicom's writing of them; the file is about 20 MB.  ``workers`` would only
help compressed transfer syntaxes, and BINARY allows none but JPEG 2000, which
is slower than bit-packing.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import combinations
from typing import ClassVar

import highdicom as hd
import numpy as np
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.tag import Tag
from pydicom.uid import (
    UID,
    EnhancedCTImageStorage,
    LegacyConvertedEnhancedCTImageStorage,
)

from sensecare.dicom import enum as coded
from sensecare.dicom.enum import AlgorithmFamily, LesionType, Lobe, SegmentKind, Side
from sensecare.errors import ResultEncodingError
from sensecare.masks import bounding_box

logger = logging.getLogger(__name__)

__all__ = [
    "MANUFACTURER",
    "AlgorithmInfo",
    "SegmentSpec",
    "SourceSeries",
    "build_segmentation",
    "check_series_attributes",
    "check_source",
    "check_uid",
    "parse_enum",
    "parse_site",
    "source_headers",
]

#: *Manufacturer* (0008,0070) of every object SenseCare writes.
MANUFACTURER = "SenseCare"
#: Largest allowed difference between the direction cosines of two source slices.
ORIENTATION_TOLERANCE = 1e-4
#: Largest allowed difference (mm) between the pixel spacings of two source slices.
PIXEL_SPACING_TOLERANCE = 1e-4
#: Two slices closer than this (mm) along the normal share a position.
DUPLICATE_POSITION_MM = 0.01
#: Longest value of an LO element (Segment Label, Algorithm Name/Version), PS3.5 6.2.
LO_MAX = 64

#: Attributes every source slice must carry (Image Plane Module and UIDs).
_REQUIRED = (
    "SOPClassUID",
    "SOPInstanceUID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "FrameOfReferenceUID",
    "Rows",
    "Columns",
    "ImagePositionPatient",
    "ImageOrientationPatient",
    "PixelSpacing",
)
#: Type 2 patient/study attributes highdicom copies from the first source; empty when absent.
_TYPE2 = (
    "PatientID",
    "PatientName",
    "PatientBirthDate",
    "PatientSex",
    "AccessionNumber",
    "StudyID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
)
_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_IOP = Tag("ImageOrientationPatient")
_MULTIFRAME_CT = {EnhancedCTImageStorage, LegacyConvertedEnhancedCTImageStorage}

#: Recommended display colours (RGB), PS3.3 C.8.20.2 "Recommended Display CIELab Value".
_LUNG_RGB = {Side.RIGHT: (128, 174, 128), Side.LEFT: (111, 184, 210), None: (128, 174, 128)}
_LESION_RGB = {
    LesionType.SOLID: (230, 60, 50),
    LesionType.PART_SOLID: (240, 140, 30),
    LesionType.GROUND_GLASS: (240, 210, 40),
    LesionType.CONSOLIDATION: (200, 70, 200),
    LesionType.MASS: (180, 20, 20),
}


@dataclass(frozen=True)
class AlgorithmInfo:
    """The algorithm that produced the results.

    Written as the Segmentation Algorithm Identification Sequence
    (0062,0007) of each segment (PS3.3 C.8.20.2) and as TID 4019 "Algorithm
    Identification" in the SR.

    Attributes
    ----------
    name : str
        *AlgorithmName* (LO, at most 64 characters).
    version : str
        *AlgorithmVersion* (LO, at most 64 characters).
    family : AlgorithmFamily or str
        CID 7162 family, by code meaning (``"Artificial Intelligence"``).
    """

    name: str
    version: str
    family: AlgorithmFamily | str = AlgorithmFamily.ARTIFICIAL_INTELLIGENCE

    def __post_init__(self) -> None:
        for attribute in ("name", "version"):
            value = getattr(self, attribute)
            if not isinstance(value, str) or not value.strip():
                raise ResultEncodingError(f"AlgorithmInfo.{attribute} must be a non-empty string, got {value!r}")
            if len(value) > LO_MAX or "\\" in value:
                raise ResultEncodingError(
                    f"AlgorithmInfo.{attribute} {value!r} is not a valid LO value "
                    f"(at most {LO_MAX} characters, no backslash)"
                )
        parse_enum(AlgorithmFamily, self.family, "AlgorithmInfo.family")

    @property
    def family_code(self) -> hd.sr.CodedConcept:
        """The CID 7162 coded family."""
        return hd.sr.CodedConcept.from_code(coded.algorithm_family_code(self.family))

    def identification_sequence(self) -> hd.AlgorithmIdentificationSequence:
        """Segmentation Algorithm Identification Sequence (PS3.3 C.8.20.2)."""
        return hd.AlgorithmIdentificationSequence(
            name=self.name, family=self.family_code, version=self.version, source=MANUFACTURER
        )

    def template(self) -> hd.sr.AlgorithmIdentification:
        """TID 4019 "Algorithm Identification" content items."""
        return hd.sr.AlgorithmIdentification(
            name=self.name, version=self.version, family=self.family_code, manufacturer=MANUFACTURER
        )


@dataclass(frozen=True, eq=False)
class SegmentSpec:
    """One segment of the Segmentation, in the order segments are numbered (from 1).

    Attributes
    ----------
    label : str
        *SegmentLabel* (0062,0005), shown by viewers ("Right lung", "Lesion 1").
    kind : SegmentKind or str
        ``"lung"`` (anatomy) or ``"lesion"`` (finding).
    mask : numpy.ndarray
        Boolean (or 0/1 integer) array ``(z, y, x)``; ``mask[k]`` segments
        ``source[k]``.  Lesion masks must not be empty.  With `offset` it
        may be a crop of the series' ``(slices, rows, columns)`` grid.
    lesion_type : LesionType or str, optional
        Required for lesions, forbidden for lungs.
    side : Side or str, optional
        ``"right"`` or ``"left"``; implied by `lobe`.
    lobe : Lobe or str, optional
        ``"RUL"``, ``"RML"``, ``"RLL"``, ``"LUL"`` or ``"LLL"``.  For a lung
        segment it makes the segment that lobe; for a lesion it is its site.
    tracking_id, tracking_uid : str, optional
        *TrackingID* (0062,0020) and *TrackingUID* (0062,0021): both or
        neither.  The SR repeats them in the lesion's measurement group.
    offset : tuple of int, optional
        ``(z, y, x)`` index of ``mask[0, 0, 0]`` in the series grid when
        `mask` is a crop (a lesion's bounding box); the crop must lie inside
        the grid.  None (default): `mask` covers the whole series.  A crop
        saves building a series-sized array per lesion.
    """

    label: str
    kind: SegmentKind | str
    mask: np.ndarray
    lesion_type: LesionType | str | None = None
    side: Side | str | None = None
    lobe: Lobe | str | None = None
    tracking_id: str | None = None
    tracking_uid: str | None = None
    offset: tuple[int, int, int] | None = None


@dataclass(frozen=True)
class SourceSeries:
    """What the results need to know about the source CT series (checked by :func:`check_source`)."""

    study_instance_uid: str
    series_instance_uid: str
    frame_of_reference_uid: str
    sop_instance_uids: tuple[str, ...]
    rows: int
    columns: int

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(slices, rows, columns)``: the shape every mask must have."""
        return (len(self.sop_instance_uids), self.rows, self.columns)


@dataclass(frozen=True, eq=False)
class _Segment:
    """A checked :class:`SegmentSpec`, enums parsed and side derived from the lobe."""

    number: int
    label: str
    kind: SegmentKind
    mask: np.ndarray
    lesion_type: LesionType | None
    side: Side | None
    lobe: Lobe | None
    tracking_id: str | None
    tracking_uid: str | None
    mask_box: tuple[slice, slice, slice] | None  # where `mask` (cropped to its voxels) lies; None: empty


# --- validation -------------------------------------------------------------------


def check_source(source: Sequence[Dataset]) -> SourceSeries:
    """Check that `source` is the single-frame slices of one series, and describe it.

    Parameters
    ----------
    source : sequence of pydicom.Dataset
        CT Image Storage (or other single-frame cross-sectional) instances;
        pixel data is not needed.

    Returns
    -------
    SourceSeries

    Raises
    ------
    TypeError
        When an item is not a :class:`pydicom.dataset.Dataset`.
    sensecare.errors.ResultEncodingError
        When `source` is empty; a slice lacks an Image Plane Module attribute
        or a UID; slices come from several studies, series or frames of
        reference; a slice is multi-frame; slices differ in matrix size,
        orientation or pixel spacing; or two slices share a SOP Instance UID
        or a position.
    """
    if isinstance(source, Dataset) or len(source) == 0:
        raise ResultEncodingError("source: give the CT slices of one series (a non-empty sequence of datasets)")
    for index, ds in enumerate(source):
        if not isinstance(ds, Dataset):
            raise TypeError(f"source[{index}] is a {type(ds).__name__}, not a pydicom Dataset")
        missing = [keyword for keyword in _REQUIRED if ds.get(keyword) in (None, "")]
        if missing:
            raise ResultEncodingError(f"source[{index}] ({_sop(ds)}) lacks {', '.join(missing)}")
        if ds.SOPClassUID in _MULTIFRAME_CT or int(ds.get("NumberOfFrames") or 1) > 1:
            raise ResultEncodingError(
                f"source[{index}] ({_sop(ds)}) is a multi-frame image; give the single-frame slices of one series"
            )

    for keyword, what in (
        ("StudyInstanceUID", "studies"),
        ("SeriesInstanceUID", "series"),
        ("FrameOfReferenceUID", "frames of reference"),
    ):
        values = sorted({str(ds.get(keyword)) for ds in source})
        if len(values) > 1:
            shown = ", ".join(values[:3]) + (", ..." if len(values) > 3 else "")
            raise ResultEncodingError(
                f"source: slices come from {len(values)} {what} ({keyword} {shown}); give the slices of one series"
            )

    uids = [str(ds.SOPInstanceUID) for ds in source]
    if len(set(uids)) != len(uids):
        duplicate = next(uid for uid in uids if uids.count(uid) > 1)
        raise ResultEncodingError(f"source: SOP Instance UID {duplicate} is given more than once")

    first = source[0]
    rows, columns = int(first.Rows), int(first.Columns)
    orientation = _floats(first, "ImageOrientationPatient", 6)
    spacing = _floats(first, "PixelSpacing", 2)
    for index, ds in enumerate(source[1:], start=1):
        if (int(ds.Rows), int(ds.Columns)) != (rows, columns):
            raise ResultEncodingError(
                f"source[{index}] ({_sop(ds)}) is {ds.Rows}x{ds.Columns}, source[0] is {rows}x{columns}"
            )
        if np.abs(_floats(ds, "ImageOrientationPatient", 6) - orientation).max() > ORIENTATION_TOLERANCE:
            raise ResultEncodingError(
                f"source[{index}] ({_sop(ds)}) has another ImageOrientationPatient than source[0]"
            )
        if np.abs(_floats(ds, "PixelSpacing", 2) - spacing).max() > PIXEL_SPACING_TOLERANCE:
            raise ResultEncodingError(f"source[{index}] ({_sop(ds)}) has another PixelSpacing than source[0]")

    normal = np.cross(orientation[:3], orientation[3:])
    along = np.array([_floats(ds, "ImagePositionPatient", 3) @ normal for ds in source])
    order = np.argsort(along, kind="stable")
    gaps = np.diff(along[order])
    if gaps.size and gaps.min() < DUPLICATE_POSITION_MM:
        at = int(np.argmin(gaps))
        a, b = int(order[at]), int(order[at + 1])
        raise ResultEncodingError(
            f"source[{a}] and source[{b}] lie at the same position ({along[a]:.3f} mm along the normal); "
            "a segmentation frame could not be told apart"
        )

    return SourceSeries(
        study_instance_uid=str(first.StudyInstanceUID),
        series_instance_uid=str(first.SeriesInstanceUID),
        frame_of_reference_uid=str(first.FrameOfReferenceUID),
        sop_instance_uids=tuple(uids),
        rows=rows,
        columns=columns,
    )


def source_headers(source: Sequence[Dataset]) -> list[Dataset]:
    """Shallow copies of the (checked) source slices without pixel data, for highdicom.

    highdicom reads patient and study attributes (PS3.3 C.7.1.1, C.7.2.1)
    from the first source by attribute access, so a slice that omits a Type 2
    attribute such as *StudyID* would fail deep inside it; the copy carries
    them empty, which is what Type 2 means.  highdicom also requires the
    *ImageOrientationPatient* strings of all slices to be identical, while
    :func:`check_source` tolerates rounding differences; the copies all carry
    the first slice's.  The callers' datasets are not touched and pixel data
    is neither copied nor decoded.
    """
    skip = {Tag(keyword) for keyword in _PIXEL_KEYWORDS}
    headers = []
    for ds in source:
        # A Dataset built on a mapping of the elements as stored: raw elements stay
        # undecoded, and no per-element checks run (a 300-slice series has 30,000).
        header = Dataset({tag: element for tag, element in ds.items() if tag not in skip})
        if hasattr(ds, "file_meta"):
            header.file_meta = ds.file_meta
        if headers:  # a new element: the copied one is shared with the caller's dataset
            header[_IOP] = DataElement(_IOP, "DS", headers[0].ImageOrientationPatient)
        headers.append(header)
    for keyword in _TYPE2:
        if keyword not in headers[0]:
            setattr(headers[0], keyword, "")
    return headers


def _check_segments(segments: Sequence[SegmentSpec], series: SourceSeries) -> list[_Segment]:
    if isinstance(segments, SegmentSpec) or len(segments) == 0:
        raise ResultEncodingError("segments: give at least one SegmentSpec")
    checked: list[_Segment] = []
    tracking_uids: dict[str, str] = {}
    for index, spec in enumerate(segments):
        if not isinstance(spec, SegmentSpec):
            raise TypeError(f"segments[{index}] is a {type(spec).__name__}, not a SegmentSpec")
        name = f"segments[{index}] ({spec.label!r})"
        if not isinstance(spec.label, str) or not spec.label.strip():
            raise ResultEncodingError(f"segments[{index}]: label must be a non-empty string")
        if len(spec.label) > LO_MAX or "\\" in spec.label:
            raise ResultEncodingError(f"{name}: label must have at most {LO_MAX} characters and no backslash")
        kind = parse_enum(SegmentKind, spec.kind, f"{name}: kind")
        lesion_type = (
            None if spec.lesion_type is None else parse_enum(LesionType, spec.lesion_type, f"{name}: lesion_type")
        )
        if kind is SegmentKind.LESION and lesion_type is None:
            raise ResultEncodingError(f"{name}: a lesion segment needs a lesion_type")
        if kind is SegmentKind.LUNG and lesion_type is not None:
            raise ResultEncodingError(f"{name}: a lung segment takes no lesion_type (got {lesion_type.value!r})")
        side, lobe = parse_site(spec.side, spec.lobe, name)
        tracking_id, tracking_uid = _check_tracking(spec.tracking_id, spec.tracking_uid, name)
        if tracking_uid is not None:
            if tracking_uid in tracking_uids:
                raise ResultEncodingError(
                    f"{name}: tracking_uid {tracking_uid} is already used by {tracking_uids[tracking_uid]}"
                )
            tracking_uids[tracking_uid] = name

        mask, box = _check_mask(spec.mask, spec.offset, series, name)
        if kind is SegmentKind.LESION and box is None:
            raise ResultEncodingError(f"{name}: the lesion mask is empty")
        if box is None:
            logger.warning("%s: empty mask; the segment is described but has no frames", name)
        checked.append(
            _Segment(
                number=index + 1, label=spec.label, kind=kind, mask=mask, lesion_type=lesion_type,
                side=side, lobe=lobe, tracking_id=tracking_id, tracking_uid=tracking_uid, mask_box=box,
            )
        )
    if all(segment.mask_box is None for segment in checked):
        raise ResultEncodingError("segments: every mask is empty; there is nothing to encode")
    return checked


def _check_mask(
    mask: object, offset: object, series: SourceSeries, name: str
) -> tuple[np.ndarray, tuple[slice, slice, slice] | None]:
    """The mask as bool, cropped to its bounding box, and where that box lies in the series grid.

    Everything downstream (overlap, stacking) works on these boxes: a lesion
    is a few thousand voxels of a series of tens of millions.
    """
    if not isinstance(mask, np.ndarray):
        raise TypeError(f"{name}: mask is a {type(mask).__name__}, not a numpy array")
    if offset is None:
        if mask.shape != series.shape:
            raise ResultEncodingError(
                f"{name}: mask shape {mask.shape} does not match the source (slices, rows, columns) = {series.shape}"
            )
        origin = (0, 0, 0)
    else:
        if (
            mask.ndim != 3
            or not isinstance(offset, tuple | list)
            or len(offset) != 3
            or not all(isinstance(v, int | np.integer) and not isinstance(v, bool) for v in offset)
        ):
            raise ResultEncodingError(f"{name}: offset must be three integers (z, y, x) for a 3-D mask, got {offset!r}")
        origin = tuple(int(v) for v in offset)
        if any(o < 0 or o + n > limit for o, n, limit in zip(origin, mask.shape, series.shape)):
            raise ResultEncodingError(
                f"{name}: a {mask.shape} mask at offset {origin} does not fit the source "
                f"(slices, rows, columns) = {series.shape}"
            )
    if mask.dtype != np.bool_:
        if not np.issubdtype(mask.dtype, np.integer):
            raise ResultEncodingError(f"{name}: mask dtype {mask.dtype} is neither bool nor integer")
        if mask.size and (mask.min() < 0 or mask.max() > 1):
            raise ResultEncodingError(f"{name}: an integer mask must hold only 0 and 1")
        mask = mask.astype(bool)
    box = bounding_box(mask)
    if box is None:
        return mask[:0, :0, :0], None
    placed = tuple(slice(o + b.start, o + b.stop) for o, b in zip(origin, box))
    return mask[box], placed  # type: ignore[return-value]


def parse_site(side: Side | str | None, lobe: Lobe | str | None, name: str) -> tuple[Side | None, Lobe | None]:
    """Parse a side and lobe; the lobe implies the side and must not contradict it.

    Raises
    ------
    sensecare.errors.ResultEncodingError
        When either is not a defined term, or the lobe lies in the other lung.
    """
    parsed_side = None if side is None else parse_enum(Side, side, f"{name}: side")
    parsed_lobe = None if lobe is None else parse_enum(Lobe, lobe, f"{name}: lobe")
    if parsed_lobe is not None:
        if parsed_side is not None and parsed_side is not parsed_lobe.side:
            raise ResultEncodingError(
                f"{name}: lobe {parsed_lobe.value} lies in the {parsed_lobe.side.value} lung, "
                f"not the {parsed_side.value}"
            )
        parsed_side = parsed_lobe.side
    return parsed_side, parsed_lobe


def _check_tracking(tracking_id: str | None, tracking_uid: str | None, name: str) -> tuple[str | None, str | None]:
    if tracking_id is None and tracking_uid is None:
        return None, None
    if tracking_id is None or tracking_uid is None:
        raise ResultEncodingError(f"{name}: give both tracking_id and tracking_uid, or neither")
    if not isinstance(tracking_id, str) or not tracking_id.strip() or len(tracking_id) > LO_MAX:
        raise ResultEncodingError(f"{name}: tracking_id must be a non-empty string of at most {LO_MAX} characters")
    check_uid(tracking_uid, f"{name}: tracking_uid")
    return tracking_id, str(tracking_uid)


def check_series_attributes(series_number: object, series_description: object) -> None:
    """Check *SeriesNumber* (IS) and *SeriesDescription* (LO) of a new series."""
    if isinstance(series_number, bool) or not isinstance(series_number, int) or not 0 <= series_number < 2**31:
        raise ResultEncodingError(f"series_number {series_number!r} is not a non-negative integer")
    if not isinstance(series_description, str) or len(series_description) > LO_MAX or "\\" in series_description:
        raise ResultEncodingError(
            f"series_description {series_description!r} is not a valid LO value "
            f"(a string of at most {LO_MAX} characters, no backslash)"
        )


def check_uid(value: object, name: str) -> None:
    """Raise :class:`ResultEncodingError` unless `value` is a valid UID (PS3.5 9.1)."""
    if not isinstance(value, str) or not UID(value).is_valid:
        raise ResultEncodingError(f"{name} {value!r} is not a valid UID (digits and dots, at most 64 characters)")


def parse_enum(enum_class, value, name: str):  # type: ignore[no-untyped-def]
    """``enum_class(value)``, or a :class:`ResultEncodingError` naming `name` and the allowed terms."""
    try:
        return enum_class(value)
    except ValueError:
        allowed = ", ".join(repr(member.value) for member in enum_class)
        raise ResultEncodingError(f"{name} {value!r} is not one of {allowed}") from None


def _floats(ds: Dataset, keyword: str, count: int) -> np.ndarray:
    try:
        values = np.array([float(v) for v in ds[keyword].value], dtype=float)
    except (TypeError, ValueError) as exc:
        raise ResultEncodingError(f"{_sop(ds)}: {keyword} is not numeric ({exc})") from None
    if values.shape != (count,) or not np.all(np.isfinite(values)):
        raise ResultEncodingError(f"{_sop(ds)}: {keyword} must hold {count} finite numbers")
    return values


def _sop(ds: Dataset) -> str:
    return f"SOP Instance {ds.get('SOPInstanceUID', '?')}"


# --- building ---------------------------------------------------------------------


def build_segmentation(
    source: Sequence[Dataset],
    segments: Sequence[SegmentSpec],
    *,
    algorithm: AlgorithmInfo,
    series_number: int = 901,
    series_description: str = "SenseCare lung findings",
    series_instance_uid: str | None = None,
    sop_instance_uid: str | None = None,
    content_label: str = "LUNG_FINDINGS",
) -> hd.seg.Segmentation:
    """Build the BINARY Segmentation of the lungs and lesions of one CT series.

    Segments are numbered from 1 in the order of `segments`.  A lung segment
    gets the category SCT 91723000 "Anatomical Structure" and the type
    "Right lung" / "Left lung" / "Lung" or its lobe; a lesion gets SCT
    49755003 "Morphologically Abnormal Structure", its finding type (see
    :mod:`sensecare.dicom.enum`) and, when known, its lobe or lung as
    *Anatomic Region Sequence* (PS3.3 C.8.20.2, CID 7150/7151).

    Parameters
    ----------
    source : sequence of pydicom.Dataset
        The single-frame CT slices the masks were computed on, ``source[k]``
        for mask plane ``k`` (see the module docstring); pixel data is not
        read.
    segments : sequence of SegmentSpec
        Masks and descriptions, lungs usually first.
    algorithm : AlgorithmInfo
        Written as each segment's algorithm identification (AUTOMATIC).
    series_number, series_description : int, str
        Of the new Segmentation series.
    series_instance_uid, sop_instance_uid : str, optional
        New UIDs when not given (give them to make re-runs reproducible).
    content_label : str
        *ContentLabel* (0070,0080), a CS value.

    Returns
    -------
    highdicom.seg.Segmentation
        Ready for ``save_as``; referencing every slice of the source series.

    Raises
    ------
    TypeError
        When an item of `source` or `segments` has the wrong type.
    sensecare.errors.ResultEncodingError
        When `source` is not one consistent series (see :func:`check_source`);
        a mask's shape is not ``(len(source), Rows, Columns)`` or it is not
        binary; a lesion mask is empty; a lesion lacks its type; side and
        lobe disagree; tracking identifiers are incomplete, invalid or
        repeated; or a given UID is invalid.
    """
    if not isinstance(algorithm, AlgorithmInfo):
        raise TypeError(f"algorithm is a {type(algorithm).__name__}, not an AlgorithmInfo")
    series = check_source(source)
    checked = _check_segments(segments, series)
    for value, name in ((series_instance_uid, "series_instance_uid"), (sop_instance_uid, "sop_instance_uid")):
        if value is not None:
            check_uid(value, name)
    check_series_attributes(series_number, series_description)
    if not isinstance(content_label, str) or not re.fullmatch(r"[A-Z0-9_ ]{1,16}", content_label):
        raise ResultEncodingError(
            f"content_label {content_label!r} is not a CS value (1-16 of A-Z, 0-9, space, underscore)"
        )

    headers = source_headers(source)
    identification = algorithm.identification_sequence()
    descriptions = [_describe(segment, identification) for segment in checked]

    # Only slices that some segment touches become planes; the others would be
    # omitted as empty frames anyway, and leaving them out of the stacked array
    # saves time and memory.  Their headers go in as further source images: the
    # Segmentation still references every slice of the series, and highdicom
    # matches frames to sources in one pass instead of one search per frame.
    planes = _touched_slices(checked, series)
    pixel_array = _stack(checked, planes, series)
    untouched = np.setdiff1d(np.arange(len(headers)), planes)
    plane_sources = [headers[k] for k in planes]
    _fill_type2(plane_sources[0], headers[0])
    overlap = _segments_overlap(checked)

    # Segmentation Image Module (C.8.20.2) + Multi-frame Functional Groups (C.7.6.16)
    segmentation = (_OverlappingSegmentation if overlap else _DisjointSegmentation)(
        source_images=plane_sources,
        further_source_images=[headers[k] for k in untouched] or None,
        pixel_array=pixel_array,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=series_instance_uid or hd.UID(),
        series_number=series_number,
        sop_instance_uid=sop_instance_uid or hd.UID(),
        instance_number=1,
        manufacturer=MANUFACTURER,
        manufacturer_model_name=algorithm.name,
        software_versions=algorithm.version,
        device_serial_number="0",  # Type 1 in Enhanced General Equipment; software has no serial
        omit_empty_frames=True,
        content_label=content_label,
        content_description=series_description,
        series_description=series_description,
    )
    logger.info(
        "segmentation %s: %d segments, %d frames from %d of %d slices",
        segmentation.SOPInstanceUID, len(checked), segmentation.NumberOfFrames, planes.size, len(source),
    )
    return segmentation


def _touched_slices(segments: Sequence[_Segment], series: SourceSeries) -> np.ndarray:
    """Sorted indices of the slices at least one mask has a voxel in."""
    touched = np.zeros(series.shape[0], dtype=bool)
    for segment in segments:
        if segment.mask_box is not None:
            touched[segment.mask_box[0]] |= segment.mask.any(axis=(1, 2))
    return np.flatnonzero(touched)


def _fill_type2(header: Dataset, first: Dataset) -> None:
    """Give the header highdicom reads patient and study attributes from the Type 2 ones of
    ``first`` (see :func:`source_headers`) when it lacks them."""
    for keyword in _TYPE2:
        if keyword not in header:
            setattr(header, keyword, first.get(keyword, ""))


def _stack(segments: Sequence[_Segment], planes: np.ndarray, series: SourceSeries) -> np.ndarray:
    """Stacked-segments array ``(planes, rows, columns, segments)`` for highdicom.

    The memory is laid out segment-major (a transposed view of ``(segments,
    planes, rows, columns)``) so that each frame highdicom extracts,
    ``array[plane, :, :, segment]``, is one contiguous block.  It starts as
    zeros, which the system hands out lazily, and only each mask's box is
    written: a lesion costs its own voxels, not a series-sized copy.
    """
    buffer = np.zeros((len(segments), planes.size, series.rows, series.columns), dtype=bool)
    position = np.full(series.shape[0], -1)
    position[planes] = np.arange(planes.size)
    for index, segment in enumerate(segments):
        if segment.mask_box is None:
            continue
        slices, rows, cols = segment.mask_box
        for k in range(slices.start, slices.stop):
            if position[k] >= 0:  # slices no mask touches are not planes; this mask is empty there too
                buffer[index, position[k], rows, cols] = segment.mask[k - slices.start]
    return buffer.transpose(1, 2, 3, 0)


def _segments_overlap(segments: Sequence[_Segment]) -> bool:
    """Whether two masks share a voxel, tested only where their boxes intersect.

    This is *SegmentsOverlap* (0062,0013); highdicom would find it by summing
    the whole stacked array over segments, which costs more than the rest of
    the encoding.
    """
    placed = [segment for segment in segments if segment.mask_box is not None]
    for a, b in combinations(placed, 2):
        common = [slice(max(p.start, q.start), min(p.stop, q.stop)) for p, q in zip(a.mask_box, b.mask_box)]  # type: ignore[arg-type]
        if any(c.start >= c.stop for c in common):
            continue
        local_a = tuple(slice(c.start - p.start, c.stop - p.start) for c, p in zip(common, a.mask_box))  # type: ignore[arg-type]
        local_b = tuple(slice(c.start - q.start, c.stop - q.start) for c, q in zip(common, b.mask_box))  # type: ignore[arg-type]
        if np.logical_and(a.mask[local_a], b.mask[local_b]).any():
            return True
    return False


class _KnownOverlapSegmentation(hd.seg.Segmentation):
    """highdicom's Segmentation, told whether the segments overlap instead of finding out.

    :meth:`highdicom.seg.Segmentation._check_and_cast_pixel_array` checks a
    stacked BINARY array by summing it over segments: for two lungs and a few
    lesions on 300 slices of 512 x 512 that is a 600 MB integer array and most
    of the encoding time.  :func:`build_segmentation` knows the answer from
    the masks' boxes (:func:`_segments_overlap`); for the boolean 4-D stack it
    builds, the other checks (binary values, one channel per described segment)
    hold by construction.  Anything else goes to highdicom's own check, as
    does everything if a highdicom release stops calling this hook.
    """

    segments_overlap: ClassVar[hd.seg.SegmentsOverlapValues]

    @classmethod
    def _check_and_cast_pixel_array(cls, pixel_array, segment_numbers, segmentation_type, *args, **kwargs):  # type: ignore[no-untyped-def, override]
        if (
            type(pixel_array) is np.ndarray
            and pixel_array.ndim == 4
            and pixel_array.dtype == np.bool_
            and pixel_array.shape[-1] == len(segment_numbers)
            and hd.seg.SegmentationTypeValues(segmentation_type) is hd.seg.SegmentationTypeValues.BINARY
        ):
            return pixel_array, cls.segments_overlap
        return super()._check_and_cast_pixel_array(pixel_array, segment_numbers, segmentation_type, *args, **kwargs)


class _OverlappingSegmentation(_KnownOverlapSegmentation):
    segments_overlap = hd.seg.SegmentsOverlapValues.YES


class _DisjointSegmentation(_KnownOverlapSegmentation):
    segments_overlap = hd.seg.SegmentsOverlapValues.NO


def _describe(segment: _Segment, identification: hd.AlgorithmIdentificationSequence) -> hd.seg.SegmentDescription:
    """Segment Description macro (PS3.3 Table 10-25) of one segment."""
    if segment.kind is SegmentKind.LUNG:
        category = coded.CATEGORY_ANATOMICAL_STRUCTURE
        prop = coded.lobe_code(segment.lobe) if segment.lobe is not None else coded.lung_code(segment.side)
        regions = None
        rgb = _LUNG_RGB[segment.side]
    else:
        assert segment.lesion_type is not None  # checked
        category = coded.CATEGORY_MORPHOLOGICALLY_ABNORMAL_STRUCTURE
        prop = coded.lesion_finding_code(segment.lesion_type)
        if segment.lobe is not None:
            regions = [coded.lobe_code(segment.lobe)]
        elif segment.side is not None:
            regions = [coded.lung_code(segment.side)]
        else:
            regions = [coded.LUNG]
        rgb = _LESION_RGB[segment.lesion_type]
    return hd.seg.SegmentDescription(
        segment_number=segment.number,
        segment_label=segment.label,
        segmented_property_category=category,
        segmented_property_type=prop,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=identification,
        tracking_id=segment.tracking_id,
        tracking_uid=segment.tracking_uid,
        anatomic_regions=regions,
        display_color=hd.color.CIELabColor.from_rgb(*rgb),
    )


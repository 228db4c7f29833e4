"""The measurement report of one analysed chest CT series (Comprehensive 3D SR, TID 1500).

Document structure (PS3.16 TID 1500 "Measurement Report", built with
:class:`highdicom.sr.MeasurementReport` into a
:class:`highdicom.sr.Comprehensive3DSR`, PS3.3 A.35.13)::

    Imaging Measurement Report (DCM 126000)
    ├── Language, Observer: Device (TID 1004; name, manufacturer, model = algorithm)
    ├── Procedure reported: SCT 169069000 "CT of chest"
    └── Imaging Measurements
        ├── one TID 1411 Volumetric ROI group per lesion
        │     Tracking Identifier + Tracking UID (TID 4108, same as the SEG segment)
        │     Finding category: SCT 49755003 Morphologically Abnormal Structure
        │     Finding: see sensecare.dicom.enum (Nodule / Ground glass opacity / ...)
        │     Finding site: lobe or lung, with Laterality (CID 244)
        │     Algorithm Identification (TID 4019)
        │     Referenced Segment (DCM 121191): SEG SOP instance + segment number,
        │         with the CT slices the segment was derived from
        │     Volume (SCT 118565006)                      mm3      [UCUM mm3]
        │     Long axis (SCT 103339001)                   mm
        │     Short axis (SCT 103340004)                  mm
        │     Attenuation Coefficient (DCM 112031),
        │         Derivation = Mean (SCT 373098007)       [hnsf'U]
        │     Certainty of Finding (DCM 111012)           %        (algorithm confidence)
        │     Ground glass opacity = Present / Absent     (nodules only: part-solid / solid)
        ├── TID 1501 group "Lung findings summary"
        │     Finding site Lung; Number of lesions (SCT 246206008)  {lesions}
        └── TID 1501 groups "Lung opacity" (optional, one per lung and one for both)
              Finding: Abnormal opacity (DCM 112033, CID 6101); finding site Lung
              Volume Ratio (DCM 113288, CID 7469)           %   (percent opacity, PO)
              Severity (SCT 246112005) = Mild / Moderate / Severe (CID 6130)

Choices and omissions
---------------------
* **Confidence** is encoded as DCM 111012 "Certainty of Finding" in percent:
  the concept CAD SR templates use for an algorithm's operating point
  (CID 6048 "CAD Operating Point Axis Label").  TID 1411 has no dedicated row,
  so it is a TID 300 measurement of the group.
* **Lesion centre** (``center_lps_mm``) is validated but not written: TID 1411
  allows exactly one ROI reference (here the segment) and highdicom rejects
  spatial coordinates on measurements of ROI groups; the segment locates the
  lesion.
* **Percent high opacity and the 0-20 CT severity score** have no coded
  concept in PS3.16 or SNOMED CT; encoding them would need a private coding
  scheme, so they stay in ``report.json``.  Percent opacity is encoded as the
  volume ratio of abnormal opacity to lung in its finding-site lung.
"""

from __future__ import annotations

import logging
import math
import numbers
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.uid import SegmentationStorage

from sensecare.dicom import enum as coded
from sensecare.dicom.enum import LesionType, Severity, Side
from sensecare.dicom.seg import (
    MANUFACTURER,
    AlgorithmInfo,
    SourceSeries,
    check_series_attributes,
    check_source,
    check_uid,
    parse_enum,
    parse_site,
    source_headers,
)
from sensecare.errors import ResultEncodingError

logger = logging.getLogger(__name__)

__all__ = [
    "LesionMeasurement",
    "OpacitySummary",
    "build_report",
    "device_uid",
]

#: Tracking identifier of the image-level summary group.
SUMMARY_TRACKING_ID = "Lung findings summary"
#: Tracking identifier of the percent-opacity groups (suffixed with the lung for per-side groups).
OPACITY_TRACKING_ID = "Lung opacity"
#: Slack (mm) when checking that the short axis does not exceed the long axis.
AXIS_TOLERANCE_MM = 1e-6


@dataclass(frozen=True)
class LesionMeasurement:
    """What the SR says about one lesion; its ROI is segment `segment_number` of the SEG.

    Attributes
    ----------
    tracking_id, tracking_uid : str
        TID 4108 Tracking Identifier and Tracking Unique Identifier; when the
        SEG segment carries *TrackingID*/*TrackingUID* they must be equal.
    segment_number : int
        The lesion's segment in the Segmentation passed to :func:`build_report`.
    lesion_type : LesionType or str
        Must match the segment's Segmented Property Type.
    volume_ml : float
        Volume in millilitres (>= 0: rounding may zero a one-voxel lesion);
        written in mm3.
    long_axis_mm, short_axis_mm : float
        Diameters in mm, ``0 <= short <= long``.
    mean_hu : float
        Mean attenuation in Hounsfield units.
    confidence : float
        Algorithm confidence in [0, 1]; written as Certainty of Finding in %.
    side, lobe : str, optional
        Finding site; the lobe implies the side.
    center_lps_mm : tuple of float, optional
        Centre in LPS mm; checked, not written (see the module docstring).
    """

    tracking_id: str
    tracking_uid: str
    segment_number: int
    lesion_type: LesionType | str
    volume_ml: float
    long_axis_mm: float
    short_axis_mm: float
    mean_hu: float
    confidence: float
    side: Side | str | None = None
    lobe: coded.Lobe | str | None = None
    center_lps_mm: tuple[float, float, float] | None = None


@dataclass(frozen=True)
class OpacitySummary:
    """Image-level lung opacity, written as TID 1501 groups.

    Attributes
    ----------
    percent_opacity : float
        PO: share (0-100 %) of both lungs' volume that is abnormally dense.
    percent_opacity_right, percent_opacity_left : float, optional
        The same per lung; each adds one group.
    severity : Severity or str, optional
        Qualitative severity (``"mild"``, ``"moderate"``, ``"severe"``) as
        the caller grades it.
    """

    percent_opacity: float
    percent_opacity_right: float | None = None
    percent_opacity_left: float | None = None
    severity: Severity | str | None = None


# --- validation -------------------------------------------------------------------


def _is_number(value: object) -> bool:
    try:
        return not isinstance(value, bool) and math.isfinite(float(value))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False


def _number(value: object, name: str, *, low: float | None = None, high: float | None = None) -> float:
    if not _is_number(value):
        raise ResultEncodingError(f"{name} must be a finite number, got {value!r}")
    number = float(value)  # type: ignore[arg-type]
    if (low is not None and number < low) or (high is not None and number > high):
        bounds = f"in [{low}, {high}]" if high is not None else f">= {low}"
        raise ResultEncodingError(f"{name} must be {bounds}, got {number}")
    return number


def _check_segmentation(segmentation: Dataset, series: SourceSeries) -> dict[int, Dataset]:
    """Segment Sequence items by number, after checking the SEG belongs to `series`."""
    if not isinstance(segmentation, Dataset):
        raise TypeError(f"segmentation is a {type(segmentation).__name__}, not a Segmentation dataset")
    if segmentation.get("SOPClassUID") != SegmentationStorage:
        raise ResultEncodingError(
            f"segmentation has SOP Class {segmentation.get('SOPClassUID')}, not Segmentation Storage "
            f"({SegmentationStorage})"
        )
    if segmentation.get("StudyInstanceUID") != series.study_instance_uid:
        raise ResultEncodingError(
            f"segmentation belongs to study {segmentation.get('StudyInstanceUID')}, "
            f"the source to study {series.study_instance_uid}"
        )
    referenced = {str(item.SeriesInstanceUID) for item in segmentation.get("ReferencedSeriesSequence", [])}
    if series.series_instance_uid not in referenced:
        raise ResultEncodingError(
            f"segmentation does not reference the source series {series.series_instance_uid} "
            f"(it references {', '.join(sorted(referenced)) or 'none'})"
        )
    return {int(item.SegmentNumber): item for item in segmentation.get("SegmentSequence", [])}


def _check_lesions(lesions: Sequence[LesionMeasurement], segments: dict[int, Dataset]) -> None:
    if isinstance(lesions, LesionMeasurement):
        raise TypeError("lesions must be a sequence of LesionMeasurement, not one LesionMeasurement")
    by_segment: dict[int, int] = {}
    by_uid: dict[str, int] = {}
    for index, lesion in enumerate(lesions):
        if not isinstance(lesion, LesionMeasurement):
            raise TypeError(f"lesions[{index}] is a {type(lesion).__name__}, not a LesionMeasurement")
        name = f"lesions[{index}] ({lesion.tracking_id!r})"
        if not isinstance(lesion.tracking_id, str) or not lesion.tracking_id.strip():
            raise ResultEncodingError(f"lesions[{index}]: tracking_id must be a non-empty string")
        check_uid(lesion.tracking_uid, f"{name}: tracking_uid")
        if lesion.tracking_uid in by_uid:
            raise ResultEncodingError(
                f"{name}: tracking_uid {lesion.tracking_uid} is also lesions[{by_uid[lesion.tracking_uid]}]'s"
            )
        by_uid[lesion.tracking_uid] = index

        number = lesion.segment_number
        if isinstance(number, bool) or not isinstance(number, numbers.Integral) or int(number) not in segments:
            raise ResultEncodingError(
                f"{name}: segment_number {number!r} is not a segment of the segmentation "
                f"(segments {sorted(segments)})"
            )
        number = int(number)
        if number in by_segment:
            raise ResultEncodingError(f"{name}: segment {number} is also lesions[{by_segment[number]}]'s")
        by_segment[number] = index
        segment = segments[number]
        label = segment.get("SegmentLabel", "")
        category = segment.SegmentedPropertyCategoryCodeSequence[0]
        if category.CodeValue != coded.CATEGORY_MORPHOLOGICALLY_ABNORMAL_STRUCTURE.value:
            raise ResultEncodingError(
                f"{name}: segment {number} ({label!r}) has category {category.CodeMeaning!r}, not "
                f"{coded.CATEGORY_MORPHOLOGICALLY_ABNORMAL_STRUCTURE.meaning!r}: it is not a lesion segment"
            )
        lesion_type = parse_enum(LesionType, lesion.lesion_type, f"{name}: lesion_type")
        expected = coded.lesion_finding_code(lesion_type)
        prop = segment.SegmentedPropertyTypeCodeSequence[0]
        if (prop.CodeValue, prop.CodingSchemeDesignator) != (expected.value, expected.scheme_designator):
            raise ResultEncodingError(
                f"{name}: lesion_type {lesion_type.value!r} ({expected.meaning}) contradicts segment {number} "
                f"({label!r}), a {prop.CodeMeaning}"
            )
        for keyword, value in (("TrackingUID", lesion.tracking_uid), ("TrackingID", lesion.tracking_id)):
            if keyword in segment and str(segment[keyword].value) != value:
                raise ResultEncodingError(
                    f"{name}: {keyword} {value!r} differs from segment {number}'s {segment[keyword].value!r}"
                )

        _number(lesion.volume_ml, f"{name}: volume_ml", low=0.0)
        long_axis = _number(lesion.long_axis_mm, f"{name}: long_axis_mm", low=0.0)
        short_axis = _number(lesion.short_axis_mm, f"{name}: short_axis_mm", low=0.0)
        if short_axis > long_axis + AXIS_TOLERANCE_MM:
            raise ResultEncodingError(f"{name}: short_axis_mm {short_axis} exceeds long_axis_mm {long_axis}")
        _number(lesion.mean_hu, f"{name}: mean_hu")
        _number(lesion.confidence, f"{name}: confidence", low=0.0, high=1.0)
        parse_site(lesion.side, lesion.lobe, name)
        if lesion.center_lps_mm is not None:
            center = tuple(lesion.center_lps_mm)
            if len(center) != 3 or not all(_is_number(v) for v in center):
                raise ResultEncodingError(
                    f"{name}: center_lps_mm must be three finite numbers, got {lesion.center_lps_mm!r}"
                )


def _check_opacity(opacity: OpacitySummary | None) -> None:
    if opacity is None:
        return
    if not isinstance(opacity, OpacitySummary):
        raise TypeError(f"opacity is a {type(opacity).__name__}, not an OpacitySummary")
    _number(opacity.percent_opacity, "opacity.percent_opacity", low=0.0, high=100.0)
    for attribute in ("percent_opacity_right", "percent_opacity_left"):
        value = getattr(opacity, attribute)
        if value is not None:
            _number(value, f"opacity.{attribute}", low=0.0, high=100.0)
    if opacity.severity is not None:
        parse_enum(Severity, opacity.severity, "opacity.severity")


# --- building ---------------------------------------------------------------------


def device_uid(algorithm: AlgorithmInfo) -> str:
    """Stable Device Observer UID (DCM 121012) of an algorithm name and version (PS3.5 B.2)."""
    key = f"sensecare/{algorithm.name}/{algorithm.version}"
    return f"2.25.{uuid.uuid5(uuid.NAMESPACE_OID, key).int}"


def _derived_uid(base: str, purpose: str) -> str:
    return f"2.25.{uuid.uuid5(uuid.NAMESPACE_OID, f'{base}/{purpose}').int}"


def build_report(
    source: Sequence[Dataset],
    segmentation: Dataset,
    lesions: Sequence[LesionMeasurement],
    *,
    algorithm: AlgorithmInfo,
    series_number: int = 902,
    opacity: OpacitySummary | None = None,
    series_description: str = "SenseCare lung findings report",
    series_instance_uid: str | None = None,
    sop_instance_uid: str | None = None,
) -> hd.sr.Comprehensive3DSR:
    """Build the TID 1500 measurement report of one CT series and its Segmentation.

    Parameters
    ----------
    source : sequence of pydicom.Dataset
        The CT slices the results come from (pixel data is not read); they
        and `segmentation` are the SR's evidence.
    segmentation : highdicom.seg.Segmentation or pydicom.Dataset
        The Segmentation from :func:`sensecare.dicom.seg.build_segmentation`
        (or read back from file) holding each lesion's segment.
    lesions : sequence of LesionMeasurement
        One TID 1411 group each, in this order; may be empty (a negative
        study still gets its summary group).
    algorithm : AlgorithmInfo
        Observer device and TID 4019 Algorithm Identification.
    series_number : int
        Of the new SR series.
    opacity : OpacitySummary, optional
        Adds the percent-opacity groups.
    series_description : str
        Of the new SR series.
    series_instance_uid, sop_instance_uid : str, optional
        New UIDs when not given.

    Returns
    -------
    highdicom.sr.Comprehensive3DSR
        Completion flag COMPLETE, verification flag UNVERIFIED (machine
        output that no person has signed).

    Raises
    ------
    TypeError
        When an argument has the wrong type.
    sensecare.errors.ResultEncodingError
        When `source` is not one consistent series; `segmentation` is not a
        Segmentation of that series; a lesion's segment does not exist, is
        not a lesion segment, is used twice or disagrees with the lesion's
        type or tracking identifiers; a measurement is not finite or out of
        range (volume and axes >= 0, short axis <= long axis, confidence in
        [0, 1], percentages in [0, 100]); side and lobe disagree; or a given
        UID, series number or description is invalid.
    """
    if not isinstance(algorithm, AlgorithmInfo):
        raise TypeError(f"algorithm is a {type(algorithm).__name__}, not an AlgorithmInfo")
    series = check_source(source)
    segments = _check_segmentation(segmentation, series)
    _check_lesions(lesions, segments)
    _check_opacity(opacity)
    for value, name in ((series_instance_uid, "series_instance_uid"), (sop_instance_uid, "sop_instance_uid")):
        if value is not None:
            check_uid(value, name)
    check_series_attributes(series_number, series_description)

    groups: list[
        hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations | hd.sr.MeasurementsAndQualitativeEvaluations
    ] = [_lesion_group(lesion, segmentation, algorithm) for lesion in lesions]
    groups.append(_summary_group(len(lesions), segmentation, algorithm))
    if opacity is not None:
        groups.extend(_opacity_groups(opacity, segmentation, algorithm))

    # TID 1500 Measurement Report with TID 1001 Observation Context (device observer)
    observer = hd.sr.ObserverContext(
        observer_type=coded.OBSERVER_DEVICE,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=device_uid(algorithm), name=algorithm.name, manufacturer_name=MANUFACTURER,
            model_name=algorithm.name,
        ),
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=coded.PROCEDURE_CT_CHEST,
        imaging_measurements=groups,
        title=coded.REPORT_TITLE,
    )

    # SR Document General Module (C.17.2): evidence = the CT slices and the SEG
    headers = source_headers(source)
    document = hd.sr.Comprehensive3DSR(
        evidence=[*headers, segmentation],
        content=report[0],
        series_instance_uid=series_instance_uid or hd.UID(),
        series_number=series_number,
        sop_instance_uid=sop_instance_uid or hd.UID(),
        instance_number=1,
        manufacturer=MANUFACTURER,
        is_complete=True,
        is_final=False,
        is_verified=False,
        series_description=series_description,
        manufacturer_model_name=algorithm.name,
        software_versions=algorithm.version,
    )
    logger.info("report %s: %d lesion groups, opacity %s", document.SOPInstanceUID, len(lesions), opacity is not None)
    return document


def _finding_site(side: Side | None, lobe: coded.Lobe | None) -> hd.sr.FindingSite:
    laterality = None if side is None else coded.LATERALITY[side]
    location = coded.lobe_code(lobe) if lobe is not None else coded.LUNG
    return hd.sr.FindingSite(anatomic_location=location, laterality=laterality)


def _lesion_group(
    lesion: LesionMeasurement, segmentation: Dataset, algorithm: AlgorithmInfo
) -> hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations:
    """TID 1411 group of one lesion."""
    lesion_type = LesionType(lesion.lesion_type)
    side, lobe = parse_site(lesion.side, lesion.lobe, "lesion")
    measurements = [
        hd.sr.Measurement(name=coded.VOLUME, value=float(lesion.volume_ml) * 1000.0, unit=coded.UNIT_MM3),
        hd.sr.Measurement(name=coded.LONG_AXIS, value=float(lesion.long_axis_mm), unit=coded.UNIT_MM),
        hd.sr.Measurement(name=coded.SHORT_AXIS, value=float(lesion.short_axis_mm), unit=coded.UNIT_MM),
        hd.sr.Measurement(
            name=coded.ATTENUATION_COEFFICIENT, value=float(lesion.mean_hu), unit=coded.UNIT_HU,
            derivation=coded.MEAN,
        ),
        hd.sr.Measurement(
            name=coded.CERTAINTY_OF_FINDING, value=float(lesion.confidence) * 100.0, unit=coded.UNIT_PERCENT
        ),
    ]
    evaluations = []
    if lesion_type in (LesionType.SOLID, LesionType.PART_SOLID):
        ground_glass = coded.PRESENT if lesion_type is LesionType.PART_SOLID else coded.ABSENT
        evaluations.append(hd.sr.QualitativeEvaluation(name=coded.GROUND_GLASS_OPACITY, value=ground_glass))
    return hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=lesion.tracking_uid, identifier=lesion.tracking_id),
        referenced_segment=hd.sr.ReferencedSegment.from_segmentation(segmentation, int(lesion.segment_number)),
        finding_category=coded.CATEGORY_MORPHOLOGICALLY_ABNORMAL_STRUCTURE,
        finding_type=coded.lesion_finding_code(lesion_type),
        finding_sites=[_finding_site(side, lobe)],
        algorithm_id=algorithm.template(),
        measurements=measurements,
        qualitative_evaluations=evaluations or None,
    )


def _summary_group(
    count: int, segmentation: Dataset, algorithm: AlgorithmInfo
) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    """TID 1501 group with the number of lesions (zero for a negative study)."""
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=_derived_uid(segmentation.SOPInstanceUID, "summary"), identifier=SUMMARY_TRACKING_ID
        ),
        finding_sites=[_finding_site(None, None)],
        algorithm_id=algorithm.template(),
        measurements=[hd.sr.Measurement(name=coded.NUMBER_OF_LESIONS, value=count, unit=coded.UNIT_LESIONS)],
    )


def _opacity_groups(
    opacity: OpacitySummary, segmentation: Dataset, algorithm: AlgorithmInfo
) -> list[hd.sr.MeasurementsAndQualitativeEvaluations]:
    """TID 1501 groups: percent opacity of both lungs (with severity), then per lung."""
    parts: list[tuple[Side | None, float]] = [(None, opacity.percent_opacity)]
    if opacity.percent_opacity_right is not None:
        parts.append((Side.RIGHT, opacity.percent_opacity_right))
    if opacity.percent_opacity_left is not None:
        parts.append((Side.LEFT, opacity.percent_opacity_left))
    groups = []
    for side, percent in parts:
        identifier = OPACITY_TRACKING_ID if side is None else f"{OPACITY_TRACKING_ID} ({side.value} lung)"
        evaluations = None
        if side is None and opacity.severity is not None:
            severity = coded.severity_code(opacity.severity)
            evaluations = [hd.sr.QualitativeEvaluation(name=coded.SEVERITY, value=severity)]
        groups.append(
            hd.sr.MeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(
                    uid=_derived_uid(segmentation.SOPInstanceUID, identifier), identifier=identifier
                ),
                finding_type=coded.ABNORMAL_OPACITY,
                finding_sites=[_finding_site(side, None)],
                algorithm_id=algorithm.template(),
                measurements=[
                    hd.sr.Measurement(name=coded.VOLUME_RATIO, value=float(percent), unit=coded.UNIT_PERCENT)
                ],
                qualitative_evaluations=evaluations,
            )
        )
    return groups

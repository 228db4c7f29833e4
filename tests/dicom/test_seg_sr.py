"""DICOM SEG and SR of the analysis results: round trips, references, bad inputs.

Each object is built from synthetic CT slices (``tests.helpers.synthetic_ct``),
written to bytes, read back with highdicom (``segread``/``srread``) and with
plain ``pydicom.dcmread``, and compared with what went in.  Masks follow the
order in which ``source`` is given (``mask[k]`` segments ``source[k]``); the
sources are parametrized as sorted along the normal and as shuffled.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import Comprehensive3DSRStorage, SegmentationStorage

from sensecare.dicom import enum as coded
from sensecare.dicom.seg import AlgorithmInfo, SegmentSpec, build_segmentation
from sensecare.dicom.sr import LesionMeasurement, OpacitySummary, build_report
from sensecare.errors import ResultEncodingError, SenseCareError
from tests.helpers.synthetic_ct import make_ct_series, new_uid, slice_index

ALGORITHM = AlgorithmInfo(name="SenseCare lung findings", version="0.1.0")

#: (slices, rows, columns, lungs cover every slice): 9 x 11 frames are not a
#: whole number of bytes, which exercises highdicom's bit-packing carry-over;
#: lungs on every slice take the path without plane cropping.
SHAPES = [(12, 24, 40, False), (7, 9, 11, True)]
ORDERS = ["sorted", "shuffled"]


@dataclass
class Case:
    source: list[Dataset]
    specs: list[SegmentSpec]
    lesions: list[LesionMeasurement]


def _lesion_box(shape: tuple[int, int, int], k: slice, fraction_y: float, fraction_x: float) -> np.ndarray:
    _, y, x = shape
    mask = np.zeros(shape, dtype=bool)
    cy, cx = int(fraction_y * (y - 1)), int(fraction_x * (x - 1))
    mask[k, max(cy - 1, 0) : cy + 2, max(cx - 1, 0) : cx + 1] = True
    return mask


def make_case(n: int, rows: int, cols: int, *, full_lungs: bool = False, order: str = "sorted") -> Case:
    """Two lungs and three lesions, masks built in volume order then reordered like the source."""
    source = make_ct_series(n_slices=n, rows=rows, cols=cols, shuffle=order == "shuffled", seed=n)
    shape = (n, rows, cols)
    first, last = (0, n) if full_lungs else (1, n - 1)
    right = np.zeros(shape, dtype=bool)
    left = np.zeros(shape, dtype=bool)
    right[first:last, 1 : rows - 1, 1 : cols // 2] = True
    left[first:last, 1 : rows - 1, cols // 2 + 1 : cols - 1] = True
    lesion_masks = [
        _lesion_box(shape, slice(2, 4), 0.3, 0.25),  # right lung, two slices
        _lesion_box(shape, slice(n - 2, n - 1), 0.6, 0.75),  # left lung, last lung slice
        _lesion_box(shape, slice(n // 2, n // 2 + 1), 0.5, 0.3),
    ]
    order_k = [slice_index(ds) for ds in source]  # mask[k] must segment source[k]

    specs = [
        SegmentSpec(label="Right lung", kind="lung", mask=right[order_k], side="right"),
        SegmentSpec(label="Left lung", kind=coded.SegmentKind.LUNG, mask=left[order_k], side=coded.Side.LEFT),
    ]
    sites = [("right", "RUL"), (None, "LLL"), ("right", None)]
    types = ["part_solid", coded.LesionType.CONSOLIDATION, "solid"]
    lesions = []
    for number, (mask, (side, lobe), kind) in enumerate(zip(lesion_masks, sites, types), start=1):
        tracking_uid = new_uid()
        specs.append(
            SegmentSpec(
                label=f"Lesion {number}", kind="lesion", mask=mask[order_k], lesion_type=kind,
                side=side, lobe=lobe, tracking_id=f"lesion-{number}", tracking_uid=tracking_uid,
            )
        )
        lesions.append(
            LesionMeasurement(
                tracking_id=f"lesion-{number}", tracking_uid=tracking_uid, segment_number=number + 2,
                lesion_type=kind, volume_ml=0.125 * number, long_axis_mm=8.5 + number, short_axis_mm=4.25,
                mean_hu=-412.5 + 100 * number, confidence=0.25 * number, side=side, lobe=lobe,
                center_lps_mm=(1.0, 2.0, 3.0),
            )
        )
    return Case(source=source, specs=specs, lesions=lesions)


def _save(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def small_case() -> Case:
    return make_case(10, 16, 16)


@pytest.fixture(scope="module")
def small_seg(small_case: Case) -> hd.seg.Segmentation:
    return build_segmentation(small_case.source, small_case.specs, algorithm=ALGORITHM)


# --- Segmentation -----------------------------------------------------------------


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize(("n", "rows", "cols", "full_lungs"), SHAPES)
def test_segmentation_round_trip(order: str, n: int, rows: int, cols: int, full_lungs: bool) -> None:
    case = make_case(n, rows, cols, full_lungs=full_lungs, order=order)
    built = build_segmentation(case.source, case.specs, algorithm=ALGORITHM, series_number=901)
    seg = hd.seg.segread(io.BytesIO(_save(built)))

    assert seg.SOPClassUID == SegmentationStorage
    assert seg.SegmentationType == "BINARY" and seg.BitsAllocated == 1
    assert seg.SegmentsOverlap == "YES"  # lesions lie inside their lungs
    assert seg.StudyInstanceUID == case.source[0].StudyInstanceUID
    assert seg.FrameOfReferenceUID == case.source[0].FrameOfReferenceUID
    assert seg.PatientID == case.source[0].PatientID
    assert seg.SeriesNumber == 901 and seg.SeriesDescription == "SenseCare lung findings"
    referenced = seg.ReferencedSeriesSequence
    assert [item.SeriesInstanceUID for item in referenced] == [case.source[0].SeriesInstanceUID]
    assert {item.ReferencedSOPInstanceUID for item in referenced[0].ReferencedInstanceSequence} == {
        ds.SOPInstanceUID for ds in case.source
    }

    assert seg.segment_numbers == [1, 2, 3, 4, 5]
    assert [seg.get_segment_description(i).segment_label for i in seg.segment_numbers] == [
        spec.label for spec in case.specs
    ]
    assert sorted(seg.get_tracking_ids()) == sorted(
        (spec.tracking_id, hd.UID(spec.tracking_uid)) for spec in case.specs if spec.tracking_id
    )

    # empty frames are omitted: one frame per (slice, segment) with any pixel set
    expected_frames = sum(int(spec.mask.any(axis=(1, 2)).sum()) for spec in case.specs)
    assert seg.NumberOfFrames == expected_frames

    uids = [ds.SOPInstanceUID for ds in case.source]
    pixels = seg.get_pixels_by_source_instance(uids, assert_missing_frames_are_empty=True)
    assert pixels.shape == (n, rows, cols, 5)
    np.testing.assert_array_equal(pixels.astype(bool), np.stack([spec.mask for spec in case.specs], axis=-1))


def test_segmentation_codes(small_seg: hd.seg.Segmentation) -> None:
    seg = hd.seg.segread(io.BytesIO(_save(small_seg)))
    descriptions = [seg.get_segment_description(i) for i in seg.segment_numbers]
    anatomy, finding = coded.CATEGORY_ANATOMICAL_STRUCTURE, coded.CATEGORY_MORPHOLOGICALLY_ABNORMAL_STRUCTURE
    assert [d.segmented_property_category for d in descriptions] == [anatomy, anatomy, finding, finding, finding]
    assert [d.segmented_property_type for d in descriptions] == [
        coded.RIGHT_LUNG, coded.LEFT_LUNG, codes.SCT.Nodule, coded.LUNG_CONSOLIDATION, codes.SCT.Nodule
    ]
    assert [d.anatomic_regions for d in descriptions[2:]] == [
        [coded.lobe_code("RUL")], [coded.lobe_code("LLL")], [coded.RIGHT_LUNG]
    ]
    for description in descriptions:
        assert description.algorithm_type == hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC
        identification = description.algorithm_identification[0]
        assert identification.AlgorithmName == ALGORITHM.name
        assert identification.AlgorithmVersion == ALGORITHM.version
        assert identification.AlgorithmFamilyCodeSequence[0].CodeValue == "123110"  # Artificial Intelligence
        assert "RecommendedDisplayCIELabValue" in description


def test_segmentation_get_volume(small_case: Case, small_seg: hd.seg.Segmentation) -> None:
    seg = hd.seg.segread(io.BytesIO(_save(small_seg)))
    volume = seg.get_volume()
    def key(position) -> tuple[float, ...]:  # type: ignore[no-untyped-def]
        return tuple(round(float(v), 3) for v in position)

    by_position = {key(ds.ImagePositionPatient): k for k, ds in enumerate(small_case.source)}
    expected = np.stack([spec.mask for spec in small_case.specs], axis=-1)
    for i in range(volume.spatial_shape[0]):
        origin = volume.map_indices_to_reference(np.array([[i, 0, 0]]))[0]
        k = by_position[key(origin)]
        np.testing.assert_array_equal(volume.array[i].astype(bool), expected[k])


def test_segmentation_read_with_pydicom(small_case: Case, small_seg: hd.seg.Segmentation, tmp_path) -> None:
    path = tmp_path / "seg.dcm"
    small_seg.save_as(path, enforce_file_format=True)
    ds = pydicom.dcmread(path)
    assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    assert ds.Modality == "SEG" and ds.SOPClassUID == SegmentationStorage
    assert [item.SegmentLabel for item in ds.SegmentSequence] == [spec.label for spec in small_case.specs]
    frames = int(ds.NumberOfFrames)
    assert len(ds.PerFrameFunctionalGroupsSequence) == frames
    packed = -(-frames * ds.Rows * ds.Columns // 8)
    assert len(ds.PixelData) in (packed, packed + 1)  # padded to even length
    shared = ds.SharedFunctionalGroupsSequence[0]
    assert [float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing] == [0.7, 0.7]
    by_uid = {item.SOPInstanceUID: item for item in small_case.source}
    for item in ds.PerFrameFunctionalGroupsSequence:
        source = item.DerivationImageSequence[0].SourceImageSequence[0]
        assert source.SpatialLocationsPreserved == "YES"
        slice_ds = by_uid[source.ReferencedSOPInstanceUID]
        assert [float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient] == pytest.approx(
            [float(v) for v in slice_ds.ImagePositionPatient]
        )


def test_inputs_are_left_alone(small_case: Case) -> None:
    source = make_ct_series(n_slices=10, rows=16, cols=16, shuffle=False, seed=10)
    del source[0].StudyID  # Type 2: filled in empty on a copy
    build_segmentation(source, small_case.specs, algorithm=ALGORITHM)
    assert all("PixelData" in ds for ds in source)
    assert "StudyID" not in source[0]


def test_orientation_rounding_is_tolerated(small_case: Case) -> None:
    source = make_ct_series(n_slices=10, rows=16, cols=16, shuffle=False, seed=10)
    source[4].ImageOrientationPatient = [1, 0.000001, 0, 0, 1, 0]
    seg = build_segmentation(source, small_case.specs, algorithm=ALGORITHM)
    assert seg.NumberOfFrames == hd.seg.segread(io.BytesIO(_save(seg))).NumberOfFrames
    assert source[4].ImageOrientationPatient[1] == 0.000001


def test_integer_masks_are_accepted(small_case: Case) -> None:
    specs = [
        SegmentSpec(label=s.label, kind=s.kind, mask=s.mask.astype(np.uint8), side=s.side) for s in small_case.specs[:2]
    ]
    seg = build_segmentation(small_case.source, specs, algorithm=ALGORITHM)
    assert seg.segment_numbers == [1, 2]


def _cropped(spec: SegmentSpec, margin: int = 1) -> SegmentSpec:
    """The same segment given as its bounding box (plus a margin of empty voxels) and an offset."""
    k, j, i = np.nonzero(spec.mask)
    lo = [max(0, int(a.min()) - margin) for a in (k, j, i)]
    hi = [min(n, int(a.max()) + 1 + margin) for a, n in zip((k, j, i), spec.mask.shape)]
    fields = {name: getattr(spec, name) for name in SegmentSpec.__dataclass_fields__}
    fields.update(mask=spec.mask[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]], offset=tuple(lo))
    return SegmentSpec(**fields)


@pytest.mark.parametrize("order", ORDERS)
def test_cropped_masks_encode_like_whole_masks(order: str) -> None:
    case = make_case(12, 24, 40, order=order)
    uids = {"series_instance_uid": new_uid(), "sop_instance_uid": new_uid()}
    whole = build_segmentation(case.source, case.specs, algorithm=ALGORITHM, **uids)
    cropped = build_segmentation(case.source, [_cropped(spec) for spec in case.specs], algorithm=ALGORITHM, **uids)
    assert cropped.PixelData == whole.PixelData
    assert cropped.NumberOfFrames == whole.NumberOfFrames
    assert cropped.PerFrameFunctionalGroupsSequence == whole.PerFrameFunctionalGroupsSequence
    uids_in_order = [ds.SOPInstanceUID for ds in case.source]
    pixels = hd.seg.segread(io.BytesIO(_save(cropped))).get_pixels_by_source_instance(
        uids_in_order, assert_missing_frames_are_empty=True
    )
    np.testing.assert_array_equal(pixels.astype(bool), np.stack([spec.mask for spec in case.specs], axis=-1))


@pytest.mark.parametrize("lesion_inside_lung", [True, False])
def test_segments_overlap_is_what_highdicom_finds(lesion_inside_lung: bool) -> None:
    """SegmentsOverlap comes from the masks' boxes, not highdicom's sum over the stacked array:
    both must agree."""
    case = make_case(10, 16, 16)
    right, lesion = case.specs[0].mask, case.specs[2].mask
    assert (right & lesion).any()
    if not lesion_inside_lung:
        right = right & ~lesion  # the lesion cut out of its lung
    specs = [_replace_spec(case, 0, mask=right)[0], case.specs[1], case.specs[2]]
    seg = build_segmentation(case.source, [_cropped(spec) for spec in specs], algorithm=ALGORITHM)
    stacked = np.stack([right, case.specs[1].mask, lesion], axis=-1)
    _, expected = hd.seg.Segmentation._check_and_cast_pixel_array(
        stacked, np.array([1, 2, 3]), hd.seg.SegmentationTypeValues.BINARY, dtype=np.uint8
    )
    assert seg.SegmentsOverlap == expected.value == ("YES" if lesion_inside_lung else "NO")


def test_segmentation_references_slices_no_mask_touches() -> None:
    """Slices outside every mask are no frames, yet the Segmentation still references them."""
    case = make_case(12, 24, 40)
    seg = build_segmentation(case.source, [_cropped(spec) for spec in case.specs], algorithm=ALGORITHM)
    touched = np.logical_or.reduce([spec.mask.any(axis=(1, 2)) for spec in case.specs])
    assert not touched.all()
    referenced = {item.ReferencedSOPInstanceUID for item in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    assert referenced == {ds.SOPInstanceUID for ds in case.source}
    derived = {
        item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        for item in seg.PerFrameFunctionalGroupsSequence
    }
    assert derived == {ds.SOPInstanceUID for ds, used in zip(case.source, touched) if used}


# --- Structured Report ------------------------------------------------------------


def _value(group, concept):  # type: ignore[no-untyped-def]
    (measurement,) = group.get_measurements(name=concept)
    return measurement


@pytest.mark.parametrize("order", ORDERS)
def test_report_round_trip(order: str) -> None:
    case = make_case(10, 16, 16, order=order)
    seg = build_segmentation(case.source, case.specs, algorithm=ALGORITHM)
    opacity = OpacitySummary(
        percent_opacity=12.5, percent_opacity_right=20.0, percent_opacity_left=5.0, severity="moderate"
    )
    built = build_report(case.source, seg, case.lesions, algorithm=ALGORITHM, opacity=opacity, series_number=902)
    sr = hd.sr.srread(io.BytesIO(_save(built)))

    assert sr.SOPClassUID == Comprehensive3DSRStorage
    assert sr.StudyInstanceUID == seg.StudyInstanceUID and sr.SeriesNumber == 902
    assert sr.CompletionFlag == "COMPLETE" and sr.VerificationFlag == "UNVERIFIED"
    evidence = {uid for _, _, uid, _ in sr.get_evidence()}
    assert evidence == {ds.SOPInstanceUID for ds in case.source} | {seg.SOPInstanceUID}

    report = sr.content
    assert report[0].ContentTemplateSequence[0].TemplateIdentifier == "1500"
    assert report[0].name == coded.REPORT_TITLE
    (device,) = report.get_observer_contexts(observer_type=codes.DCM.Device)
    assert device.observer_identifying_attributes.name == ALGORITHM.name
    assert len(report.get_volumetric_roi_measurement_groups()) == len(case.lesions)

    for lesion in case.lesions:
        (group,) = report.get_volumetric_roi_measurement_groups(tracking_uid=lesion.tracking_uid)
        assert group.tracking_identifier == lesion.tracking_id
        assert group.finding_type == coded.lesion_finding_code(lesion.lesion_type)
        assert group.finding_category == coded.CATEGORY_MORPHOLOGICALLY_ABNORMAL_STRUCTURE
        (site,) = group.finding_sites
        assert site.value == (coded.lobe_code(lesion.lobe) if lesion.lobe else coded.LUNG)
        assert site.laterality == coded.LATERALITY[coded.Side("right" if lesion.lobe in (None, "RUL") else "left")]

        reference = group.referenced_segment
        assert group.reference_type == codes.DCM.ReferencedSegment
        assert reference[0].referenced_sop_instance_uid == seg.SOPInstanceUID
        assert reference[0].referenced_sop_class_uid == SegmentationStorage
        assert reference[0].ReferencedSOPSequence[0].ReferencedSegmentNumber == lesion.segment_number
        mask = case.specs[lesion.segment_number - 1].mask
        touched = {case.source[k].SOPInstanceUID for k in np.flatnonzero(mask.any(axis=(1, 2)))}
        assert {item.referenced_sop_instance_uid for item in reference[1:]} == touched

        volume = _value(group, codes.SCT.Volume)
        assert (volume.value, volume.unit) == (pytest.approx(lesion.volume_ml * 1000), codes.UCUM.CubicMillimeter)
        axes = ((codes.SCT.LongAxis, lesion.long_axis_mm), (codes.SCT.ShortAxis, lesion.short_axis_mm))
        for concept, expected in axes:
            axis = _value(group, concept)
            assert (axis.value, axis.unit) == (pytest.approx(expected), codes.UCUM.Millimeter)
        attenuation = _value(group, codes.DCM.AttenuationCoefficient)
        assert attenuation.value == pytest.approx(lesion.mean_hu)
        assert attenuation.unit == codes.UCUM.HounsfieldUnit and attenuation.unit.value == "[hnsf'U]"
        assert attenuation.derivation == codes.SCT.Mean
        certainty = _value(group, codes.DCM.CertaintyOfFinding)
        assert (certainty.value, certainty.unit) == (pytest.approx(lesion.confidence * 100), codes.UCUM.Percent)

        ground_glass = group.get_qualitative_evaluations(name=codes.DCM.GroundGlassOpacity)
        expected_ggo = {"part_solid": [codes.SCT.Present], "solid": [codes.SCT.Absent]}.get(
            getattr(lesion.lesion_type, "value", lesion.lesion_type), []
        )
        assert [evaluation.value for evaluation in ground_glass] == expected_ggo

    groups = {group.tracking_identifier: group for group in report.get_image_measurement_groups()}
    percents = {"Lung opacity": 12.5, "Lung opacity (right lung)": 20.0, "Lung opacity (left lung)": 5.0}
    assert set(groups) == {"Lung findings summary", *percents}
    count = _value(groups["Lung findings summary"], coded.NUMBER_OF_LESIONS)
    assert (count.value, count.unit.value) == (3, "{lesions}")
    for identifier, percent in percents.items():
        group = groups[identifier]
        assert group.finding_type == codes.DCM.AbnormalOpacity
        ratio = _value(group, codes.DCM.VolumeRatio)
        assert (ratio.value, ratio.unit) == (pytest.approx(percent), codes.UCUM.Percent)
    (severity,) = groups["Lung opacity"].get_qualitative_evaluations(name=coded.SEVERITY)
    assert severity.value == codes.SCT.Moderate


def test_report_read_with_pydicom(small_case: Case, small_seg: hd.seg.Segmentation, tmp_path) -> None:
    path = tmp_path / "sr.dcm"
    build_report(small_case.source, small_seg, small_case.lesions, algorithm=ALGORITHM).save_as(path)
    ds = pydicom.dcmread(path)
    assert ds.Modality == "SR" and ds.SOPClassUID == Comprehensive3DSRStorage
    assert ds.ContentTemplateSequence[0].TemplateIdentifier == "1500"

    def named(items, code):  # type: ignore[no-untyped-def]
        return [item for item in items if item.ConceptNameCodeSequence[0].CodeValue == code]

    (measurements,) = named(ds.ContentSequence, "126010")  # Imaging Measurements
    groups = named(measurements.ContentSequence, "125007")  # Measurement Group
    volumetric = [g for g in groups if g.ContentTemplateSequence[0].TemplateIdentifier == "1411"]
    assert len(volumetric) == len(small_case.lesions)
    for group, lesion in zip(volumetric, small_case.lesions):
        (uid,) = named(group.ContentSequence, "112040")  # Tracking Unique Identifier
        assert uid.UID == lesion.tracking_uid
        (segment,) = named(group.ContentSequence, "121191")  # Referenced Segment
        reference = segment.ReferencedSOPSequence[0]
        assert reference.ReferencedSOPInstanceUID == small_seg.SOPInstanceUID
        assert reference.ReferencedSegmentNumber == lesion.segment_number
        (long_axis,) = named(group.ContentSequence, "103339001")
        value = long_axis.MeasuredValueSequence[0]
        assert float(value.NumericValue) == pytest.approx(lesion.long_axis_mm)
        assert value.MeasurementUnitsCodeSequence[0].CodeValue == "mm"


def test_report_of_a_negative_study(small_case: Case) -> None:
    specs = small_case.specs[:2]  # lungs only
    seg = build_segmentation(small_case.source, specs, algorithm=ALGORITHM)
    sr = hd.sr.srread(io.BytesIO(_save(build_report(small_case.source, seg, [], algorithm=ALGORITHM))))
    assert sr.content.get_volumetric_roi_measurement_groups() == []
    (summary,) = sr.content.get_image_measurement_groups()
    assert _value(summary, coded.NUMBER_OF_LESIONS).value == 0


def test_report_accepts_a_segmentation_read_from_file(small_case: Case, small_seg: hd.seg.Segmentation) -> None:
    plain = pydicom.dcmread(io.BytesIO(_save(small_seg)))
    built = build_report(small_case.source, plain, small_case.lesions[:1], algorithm=ALGORITHM)
    (group,) = hd.sr.srread(io.BytesIO(_save(built))).content.get_volumetric_roi_measurement_groups()
    assert group.tracking_uid == small_case.lesions[0].tracking_uid


# --- bad inputs -------------------------------------------------------------------


def _replace_spec(case: Case, index: int, **changes) -> list[SegmentSpec]:  # type: ignore[no-untyped-def]
    specs = list(case.specs)
    fields = {name: getattr(specs[index], name) for name in SegmentSpec.__dataclass_fields__}
    specs[index] = SegmentSpec(**{**fields, **changes})
    return specs


@pytest.mark.parametrize(
    ("index", "changes", "message"),
    [
        (0, {"mask": np.zeros((9, 16, 16), bool)}, r"mask shape \(9, 16, 16\) does not match .* \(10, 16, 16\)"),
        (2, {"mask": np.zeros((10, 16, 15), bool)}, r"'Lesion 1'.*mask shape"),
        (2, {"mask": np.zeros((10, 16, 16), bool)}, r"'Lesion 1'.*lesion mask is empty"),
        (2, {"mask": np.full((10, 16, 16), 2, np.uint8)}, r"only 0 and 1"),
        (2, {"mask": np.ones((10, 16, 16), np.float32)}, r"neither bool nor integer"),
        (2, {"lesion_type": None}, r"needs a lesion_type"),
        (2, {"lesion_type": "nodular"}, r"lesion_type 'nodular' is not one of 'solid'"),
        (0, {"lesion_type": "solid"}, r"lung segment takes no lesion_type"),
        (0, {"kind": "heart"}, r"kind 'heart' is not one of 'lung', 'lesion'"),
        (2, {"side": "left", "lobe": "RUL"}, r"lobe RUL lies in the right lung, not the left"),
        (2, {"lobe": "RLU"}, r"lobe 'RLU' is not one of"),
        (2, {"tracking_uid": None}, r"both tracking_id and tracking_uid"),
        (2, {"tracking_uid": "1.2.abc"}, r"tracking_uid '1.2.abc' is not a valid UID"),
        (0, {"label": ""}, r"label must be a non-empty string"),
        (2, {"mask": np.ones((2, 3, 3), bool), "offset": (9, 0, 0)}, r"'Lesion 1'.*at offset \(9, 0, 0\) does not fit"),
        (2, {"mask": np.ones((2, 3, 3), bool), "offset": (0, -1, 0)}, r"does not fit the source"),
        (2, {"mask": np.ones((2, 3, 3), bool), "offset": (0, 1)}, r"offset must be three integers"),
        (2, {"mask": np.ones((2, 3, 3), bool), "offset": (0, 1.0, 2)}, r"offset must be three integers"),
    ],
)
def test_bad_segments_are_refused(small_case: Case, index: int, changes: dict, message: str) -> None:
    specs = _replace_spec(small_case, index, **changes)
    with pytest.raises(ResultEncodingError, match=message):
        build_segmentation(small_case.source, specs, algorithm=ALGORITHM)


def test_repeated_tracking_uid_is_refused(small_case: Case) -> None:
    specs = _replace_spec(small_case, 3, tracking_uid=small_case.specs[2].tracking_uid)
    with pytest.raises(ResultEncodingError, match=r"'Lesion 2'.*already used by segments\[2\] \('Lesion 1'\)"):
        build_segmentation(small_case.source, specs, algorithm=ALGORITHM)


def test_mixed_series_are_refused(small_case: Case) -> None:
    study = small_case.source[0].StudyInstanceUID
    other = make_ct_series(n_slices=10, rows=16, cols=16, shuffle=False, study_uid=study)
    mixed = small_case.source[:5] + other[5:]
    with pytest.raises(ResultEncodingError, match=r"slices come from 2 series .*give the slices of one series"):
        build_segmentation(mixed, small_case.specs, algorithm=ALGORITHM)
    with pytest.raises(ResultEncodingError, match=r"slices come from 2 studies"):
        build_segmentation(small_case.source[:5] + make_ct_series(n_slices=10, rows=16, cols=16)[5:],
                           small_case.specs, algorithm=ALGORITHM)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda source: source.__setitem__(3, source[2]), r"SOP Instance UID .* more than once"),
        (lambda source: setattr(source[3], "ImagePositionPatient", source[2].ImagePositionPatient),
         r"source\[\d\] and source\[\d\] lie at the same position"),
        (lambda source: setattr(source[4], "ImageOrientationPatient", [0, 1, 0, 1, 0, 0]),
         r"source\[4\] .* another ImageOrientationPatient"),
        (lambda source: delattr(source[4], "PixelSpacing"), r"source\[4\] .* lacks PixelSpacing"),
        (lambda source: source.clear(), r"give the CT slices of one series"),
    ],
)
def test_bad_sources_are_refused(small_case: Case, mutate, message: str) -> None:  # type: ignore[no-untyped-def]
    source = make_ct_series(n_slices=10, rows=16, cols=16, shuffle=False, seed=10)
    mutate(source)
    with pytest.raises(ResultEncodingError, match=message):
        build_segmentation(source, small_case.specs, algorithm=ALGORITHM)


def test_bad_series_attributes_are_refused(small_case: Case, small_seg: hd.seg.Segmentation) -> None:
    with pytest.raises(ResultEncodingError, match=r"content_label 'lung findings' is not a CS value"):
        build_segmentation(small_case.source, small_case.specs, algorithm=ALGORITHM, content_label="lung findings")
    with pytest.raises(ResultEncodingError, match=r"series_description .* at most 64 characters"):
        build_segmentation(small_case.source, small_case.specs, algorithm=ALGORITHM, series_description="x" * 65)
    with pytest.raises(ResultEncodingError, match=r"sop_instance_uid '1.02.3' is not a valid UID"):
        build_report(small_case.source, small_seg, [], algorithm=ALGORITHM, sop_instance_uid="1.02.3")
    with pytest.raises(ResultEncodingError, match=r"series_number -1 is not a non-negative integer"):
        build_report(small_case.source, small_seg, [], algorithm=ALGORITHM, series_number=-1)


def test_bad_algorithm_is_refused() -> None:
    with pytest.raises(ResultEncodingError, match=r"AlgorithmInfo.name must be a non-empty string"):
        AlgorithmInfo(name=" ", version="1")
    with pytest.raises(ResultEncodingError, match=r"AlgorithmInfo.family 'Magic' is not one of"):
        AlgorithmInfo(name="x", version="1", family="Magic")


def _replace_lesion(lesion: LesionMeasurement, **changes) -> LesionMeasurement:  # type: ignore[no-untyped-def]
    fields = {name: getattr(lesion, name) for name in LesionMeasurement.__dataclass_fields__}
    return LesionMeasurement(**{**fields, **changes})


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"segment_number": 9}, r"segment_number 9 is not a segment of the segmentation \(segments \[1, 2, 3, 4, 5\]"),
        ({"segment_number": 1}, r"segment 1 \('Right lung'\) has category 'Anatomical Structure'.*not a lesion"),
        ({"segment_number": np.int64(4)}, r"'part_solid' \(Nodule\) contradicts segment 4 \('Lesion 2'\), a Lung cons"),
        ({"lesion_type": "mass"}, r"lesion_type 'mass' \(Mass\) contradicts segment 3 \('Lesion 1'\), a Nodule"),
        ({"tracking_uid": "1.2.3.4"}, r"TrackingUID '1.2.3.4' differs from segment 3's"),
        ({"tracking_id": "other"}, r"TrackingID 'other' differs"),
        ({"tracking_uid": ""}, r"tracking_uid '' is not a valid UID"),
        ({"confidence": 1.5}, r"confidence must be in \[0.0, 1.0\], got 1.5"),
        ({"volume_ml": float("nan")}, r"volume_ml must be a finite number"),
        ({"volume_ml": -0.5}, r"volume_ml must be >= 0.0, got -0.5"),
        ({"short_axis_mm": 30.0}, r"short_axis_mm 30.0 exceeds long_axis_mm 9.5"),
        ({"lobe": "LUL"}, r"lobe LUL lies in the left lung, not the right"),
        ({"center_lps_mm": (1.0, 2.0)}, r"center_lps_mm must be three finite numbers"),
    ],
)
def test_bad_lesions_are_refused(small_case: Case, small_seg: hd.seg.Segmentation, changes: dict, message: str) -> None:
    lesions = [_replace_lesion(small_case.lesions[0], **changes), *small_case.lesions[1:]]
    with pytest.raises(ResultEncodingError, match=message):
        build_report(small_case.source, small_seg, lesions, algorithm=ALGORITHM)


def test_report_refuses_inconsistent_inputs(small_case: Case, small_seg: hd.seg.Segmentation) -> None:
    twice = [small_case.lesions[0], _replace_lesion(small_case.lesions[0], tracking_uid=new_uid())]
    with pytest.raises(ResultEncodingError, match=r"segment 3 is also lesions\[0\]'s"):
        build_report(small_case.source, small_seg, twice, algorithm=ALGORITHM)
    other = make_ct_series(n_slices=10, rows=16, cols=16, study_uid=small_case.source[0].StudyInstanceUID)
    with pytest.raises(ResultEncodingError, match=r"does not reference the source series"):
        build_report(other, small_seg, small_case.lesions, algorithm=ALGORITHM)
    with pytest.raises(ResultEncodingError, match=r"opacity.percent_opacity must be in \[0.0, 100.0\]"):
        build_report(small_case.source, small_seg, [], algorithm=ALGORITHM, opacity=OpacitySummary(percent_opacity=120))
    with pytest.raises(ResultEncodingError, match=r"opacity.severity 'critical' is not one of"):
        build_report(small_case.source, small_seg, [], algorithm=ALGORITHM,
                     opacity=OpacitySummary(percent_opacity=1, severity="critical"))
    with pytest.raises(ResultEncodingError, match=r"not Segmentation Storage"):
        build_report(small_case.source, small_case.source[0], [], algorithm=ALGORITHM)


def test_result_errors_are_domain_errors() -> None:
    assert issubclass(ResultEncodingError, SenseCareError) and issubclass(ResultEncodingError, ValueError)

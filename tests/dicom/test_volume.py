"""Series -> volume: ordering, geometry, rescale and the refusals."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import numpy as np
import pytest
from pydicom.valuerep import format_number_as_ds

from sensecare.dicom.volume import (
    Volume,
    split_series,
    volume_from_datasets,
    volume_from_files,
)
from sensecare.errors import (
    InvalidDicomError,
    LocalizerError,
    MissingSlicesError,
    MixedGeometryError,
    NotCTError,
    TooFewSlicesError,
    VolumeError,
)
from tests.helpers.synthetic_ct import (
    make_ct_series,
    marker_hu,
    set_rescale,
    slice_index,
    write_series,
)


def _ipp(ds) -> np.ndarray:
    return np.array([float(v) for v in ds.ImagePositionPatient])


def _set_ipp(ds, xyz) -> None:
    ds.ImagePositionPatient = [format_number_as_ds(float(v)) for v in xyz]


def _by_index(datasets) -> list:
    return sorted(datasets, key=slice_index)


def _assert_one_line(exc: pytest.ExceptionInfo, series_uid: str) -> None:
    message = str(exc.value)
    assert "\n" not in message
    assert series_uid in message


# --- ordering ---------------------------------------------------------------------


def test_shuffled_slices_are_sorted_by_position():
    series = make_ct_series(n_slices=20, shuffle=True, seed=3)
    assert [slice_index(ds) for ds in series] != list(range(20))  # really shuffled

    vol = volume_from_datasets(series)

    assert isinstance(vol, Volume)
    assert vol.array.shape == (20, 32, 32)
    assert vol.array.dtype == np.int16
    assert list(vol.array[:, 0, 0]) == [marker_hu(k) for k in range(20)]
    assert vol.sop_instance_uids == tuple(ds.SOPInstanceUID for ds in _by_index(series))
    assert vol.series_instance_uid == series[0].SeriesInstanceUID
    assert vol.study_instance_uid == series[0].StudyInstanceUID
    assert vol.spacing == pytest.approx((0.7, 0.7, 2.5))
    assert vol.origin == pytest.approx((-100, -100, -50))
    np.testing.assert_allclose(vol.direction, np.eye(3), atol=1e-12)
    assert not vol.uneven_spacing
    assert vol.gantry_tilt_deg == 0.0
    assert vol.shape_xyz == (32, 32, 20)


def test_whole_slices_match_their_source(tmp_path: Path):
    series = make_ct_series(n_slices=12, rows=20, cols=30, seed=1)
    for ds in series:  # InstanceNumber reversed: it must not matter
        ds.InstanceNumber = 100 - slice_index(ds)
    paths = write_series(series, tmp_path)  # file names follow the shuffled order

    vol = volume_from_files(paths)

    for k, ds in enumerate(_by_index(series)):
        expected = ds.pixel_array.astype(np.int32) * int(ds.RescaleSlope) + int(ds.RescaleIntercept)
        np.testing.assert_array_equal(vol.array[k], expected)


def test_instance_numbers_scrambled_are_ignored():
    series = make_ct_series(n_slices=15, shuffle=False)
    rng = np.random.default_rng(7)
    for ds, number in zip(series, rng.permutation(15) + 1):
        ds.InstanceNumber = int(number)
    vol = volume_from_datasets(list(reversed(series)))
    assert list(vol.array[:, 0, 0]) == [marker_hu(k) for k in range(15)]


def test_positions_descending_in_z():
    # slice k lies 2.5 mm *below* slice k-1: array order is by increasing z
    series = make_ct_series(n_slices=10, slice_spacing=-2.5, origin=(0, 0, 100))
    vol = volume_from_datasets(series)
    assert list(vol.array[:, 0, 0]) == [marker_hu(k) for k in reversed(range(10))]
    assert vol.origin == pytest.approx((0, 0, 100 - 9 * 2.5))
    assert vol.spacing[2] == pytest.approx(2.5)
    np.testing.assert_allclose(vol.direction[:, 2], [0, 0, 1], atol=1e-12)


# --- geometry ---------------------------------------------------------------------

_C30, _S30 = math.cos(math.radians(30)), math.sin(math.radians(30))


@pytest.mark.parametrize(
    "orientation",
    [
        (1, 0, 0, 0, 1, 0),  # axial
        (_C30, _S30, 0, -_S30, _C30, 0),  # axial rotated 30 degrees about z
        (1, 0, 0, 0, 0, -1),  # coronal
        (0, 1, 0, 0, 0, -1),  # sagittal
        (_C30, 0, _S30, 0, 1, 0),  # oblique: tilted 30 degrees about y
    ],
    ids=["axial", "rot30z", "coronal", "sagittal", "oblique-y"],
)
def test_index_to_lps_matches_every_slice_origin(orientation):
    series = make_ct_series(n_slices=10, orientation=orientation, seed=2)
    vol = volume_from_datasets(series)

    row, col = np.array(orientation[:3], float), np.array(orientation[3:], float)
    normal = np.cross(row, col)
    np.testing.assert_allclose(vol.direction, np.column_stack([row, col, normal]), atol=1e-9)
    assert list(vol.array[:, 0, 0]) == [marker_hu(k) for k in range(10)]
    for k, ds in enumerate(_by_index(series)):
        np.testing.assert_allclose(vol.index_to_lps((0, 0, k)), _ipp(ds), atol=1e-6)
    # a voxel off the slice origin moves along the row / column cosines
    np.testing.assert_allclose(
        vol.index_to_lps((4, 6, 3)),
        _ipp(_by_index(series)[3]) + 4 * 0.7 * row + 6 * 0.7 * col,
        atol=1e-6,
    )


def test_rotated_30_degrees_about_z_specific_voxel():
    series = make_ct_series(n_slices=10, orientation=(_C30, _S30, 0, -_S30, _C30, 0), origin=(10, 20, 30))
    vol = volume_from_datasets(series)
    # i=2 along the row (cos30, sin30, 0), j=0, k=1: 1.4 mm along the row, 2.5 mm up
    np.testing.assert_allclose(
        vol.index_to_lps((2, 0, 1)), [10 + 1.4 * _C30, 20 + 1.4 * _S30, 32.5], atol=1e-6
    )


def test_spacing_order_and_array_axes_with_anisotropic_pixels():
    # PixelSpacing is (row spacing = along y/j, column spacing = along x/i)
    series = make_ct_series(n_slices=10, rows=20, cols=30, spacing=(0.5, 0.8))
    vol = volume_from_datasets(series)
    assert vol.array.shape == (10, 20, 30)
    assert vol.shape_xyz == (30, 20, 10)
    assert vol.spacing == pytest.approx((0.8, 0.5, 2.5))
    np.testing.assert_allclose(
        vol.index_to_lps((2, 3, 4)), [-100 + 2 * 0.8, -100 + 3 * 0.5, -50 + 4 * 2.5]
    )
    np.testing.assert_allclose(
        vol.index_to_lps([[0, 0, 0], [29, 19, 9]]),
        [[-100, -100, -50], [-100 + 29 * 0.8, -100 + 19 * 0.5, -50 + 9 * 2.5]],
    )
    # array[k, j, i] is pixel (row j, column i) of slice k
    ds4 = _by_index(series)[4]
    assert vol.array[4, 3, 2] == int(ds4.pixel_array[3, 2]) - 1024


def test_lps_index_round_trip():
    series = make_ct_series(n_slices=10, orientation=(_C30, 0, _S30, 0, 1, 0), spacing=(0.6, 0.9))
    vol = volume_from_datasets(series)
    rng = np.random.default_rng(0)
    ijk = rng.uniform(0, 10, size=(50, 3))
    np.testing.assert_allclose(vol.lps_to_index(vol.index_to_lps(ijk)), ijk, atol=1e-9)
    single = vol.lps_to_index(vol.index_to_lps([1.0, 2.0, 3.0]))
    assert single.shape == (3,)
    np.testing.assert_allclose(single, [1, 2, 3], atol=1e-9)
    np.testing.assert_allclose(vol.affine[:3, 3], vol.origin)
    with pytest.raises(ValueError):
        vol.index_to_lps([1, 2])


def test_gantry_tilt_is_measured_and_geometry_stays_exact():
    tilt = 15.0
    series = make_ct_series(n_slices=12, shuffle=True)
    for ds in series:  # each slice origin moves in y in proportion to its z
        k = slice_index(ds)
        p = _ipp(ds)
        _set_ipp(ds, p + [0.0, k * 2.5 * math.tan(math.radians(tilt)), 0.0])

    vol = volume_from_datasets(series)

    assert vol.gantry_tilt_deg == pytest.approx(tilt, abs=1e-3)
    assert list(vol.array[:, 0, 0]) == [marker_hu(k) for k in range(12)]
    assert vol.spacing[2] == pytest.approx(2.5 / math.cos(math.radians(tilt)))
    last = _by_index(series)[-1]
    np.testing.assert_allclose(vol.index_to_lps((0, 0, 11)), _ipp(last), atol=1e-6)
    for k, ds in enumerate(_by_index(series)):
        np.testing.assert_allclose(vol.index_to_lps((5, 7, k)), _ipp(ds) + [3.5, 4.9, 0], atol=1e-6)
    np.testing.assert_allclose(vol.lps_to_index(_ipp(last)), [0, 0, 11], atol=1e-9)


def test_uneven_spacing_is_flagged():
    series = make_ct_series(n_slices=12)
    for ds in series:  # 2.5 mm nominal, every other slice 0.3 mm off
        k = slice_index(ds)
        _set_ipp(ds, [-100, -100, -50 + 2.5 * k + (0.3 if k % 2 else 0.0)])
    vol = volume_from_datasets(series)
    assert vol.uneven_spacing
    assert list(vol.array[:, 0, 0]) == [marker_hu(k) for k in range(12)]


# --- rescale ---------------------------------------------------------------------


def test_rescale_slope_and_intercept_per_slice_float():
    series = make_ct_series(n_slices=10)
    expected = {ds.SOPInstanceUID: ds.pixel_array.astype(np.float64) - 1024 for ds in series}
    for ds in series:
        if slice_index(ds) % 3 == 0:
            set_rescale(ds, 0.5, -1000.0)
    assert {float(ds.RescaleSlope) for ds in series} == {0.5, 1.0}

    vol = volume_from_datasets(series)

    assert vol.array.dtype == np.float32
    for k, uid in enumerate(vol.sop_instance_uids):
        np.testing.assert_array_equal(vol.array[k], expected[uid])
    assert list(vol.array[:, 0, 0]) == [marker_hu(k) for k in range(10)]


def test_rescale_integral_per_slice_keeps_int16():
    series = make_ct_series(n_slices=10)
    for ds in series:
        if slice_index(ds) % 2:
            set_rescale(ds, 2.0, -2048.0)
    vol = volume_from_datasets(series)
    assert vol.array.dtype == np.int16
    assert list(vol.array[:, 0, 0]) == [marker_hu(k) for k in range(10)]


# --- refusals ---------------------------------------------------------------------


def test_missing_slice_raises_with_position():
    series = _by_index(make_ct_series(n_slices=15))
    del series[7]
    with pytest.raises(MissingSlicesError) as exc:
        volume_from_datasets(series)
    _assert_one_line(exc, series[0].SeriesInstanceUID)
    assert "5.00 mm" in str(exc.value) and "2.50 mm" in str(exc.value)
    assert "[-100, -100, -35] mm" in str(exc.value)  # the slice before the gap (k=6)


def test_duplicate_positions_raise():
    series = make_ct_series(n_slices=12)
    _set_ipp(series[3], _ipp(series[5]))
    with pytest.raises(MixedGeometryError, match="duplicate slice position") as exc:
        volume_from_datasets(series)
    _assert_one_line(exc, series[0].SeriesInstanceUID)


def test_mixed_matrix_size_raises():
    series = make_ct_series(n_slices=12)
    other = make_ct_series(n_slices=1, rows=16, cols=16, series_uid=series[0].SeriesInstanceUID)[0]
    _set_ipp(other, [-100, -100, -50 + 12 * 2.5])
    with pytest.raises(MixedGeometryError, match="matrix size") as exc:
        volume_from_datasets(series + [other])
    _assert_one_line(exc, series[0].SeriesInstanceUID)


@pytest.mark.parametrize(
    ("keyword", "value", "match"),
    [
        ("ImageOrientationPatient", ["1", "0", "0", "0", "0.99", "0.141067"], "ImageOrientationPatient"),
        ("PixelSpacing", ["0.8", "0.8"], "PixelSpacing"),
        ("SeriesInstanceUID", "1.2.3.4", "different series"),
    ],
)
def test_mixed_geometry_raises(keyword, value, match):
    series = make_ct_series(n_slices=12)
    setattr(series[4], keyword, value)
    with pytest.raises(MixedGeometryError, match=match):
        volume_from_datasets(series)


def test_non_ct_raises():
    series = make_ct_series(n_slices=12, modality="MR")
    with pytest.raises(NotCTError, match="modality MR is not CT") as exc:
        volume_from_datasets(series)
    _assert_one_line(exc, series[0].SeriesInstanceUID)


def _localizer(like, rows: int = 24, cols: int = 40):
    scout = make_ct_series(
        n_slices=1, rows=rows, cols=cols, orientation=(1, 0, 0, 0, 0, -1),
        series_uid=like.SeriesInstanceUID, study_uid=like.StudyInstanceUID,
    )[0]
    scout.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    return scout


def test_localizer_is_split_off_and_dropped():
    series = make_ct_series(n_slices=12)
    scout = _localizer(series[0])
    datasets = series[:5] + [scout] + series[5:]

    axial, localizers = split_series(datasets)
    assert localizers == [scout]
    assert axial == series

    vol = volume_from_datasets(datasets)
    assert vol.array.shape == (12, 32, 32)
    assert scout.SOPInstanceUID not in vol.sop_instance_uids


def test_only_localizers_raise():
    series = make_ct_series(n_slices=1)
    scouts = [_localizer(series[0]), _localizer(series[0])]
    with pytest.raises(LocalizerError):
        volume_from_datasets(scouts)


def test_too_few_slices():
    series = make_ct_series(n_slices=5)
    with pytest.raises(TooFewSlicesError, match="5 slice"):
        volume_from_datasets(series)
    assert volume_from_datasets(series, min_slices=5).array.shape[0] == 5
    with pytest.raises(TooFewSlicesError):
        volume_from_datasets(series[:1], min_slices=1)  # spacing needs two
    with pytest.raises(TooFewSlicesError):
        volume_from_datasets([])


@pytest.mark.parametrize("keyword", ["ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing"])
def test_missing_geometry_attribute_is_named(keyword):
    series = make_ct_series(n_slices=12)
    delattr(series[6], keyword)
    with pytest.raises(VolumeError, match=keyword) as exc:
        volume_from_datasets(series)
    _assert_one_line(exc, series[0].SeriesInstanceUID)


def test_multiframe_is_refused():
    series = make_ct_series(n_slices=12)
    series[0].NumberOfFrames = 4
    with pytest.raises(VolumeError, match="multi-frame"):
        volume_from_datasets(series)


def test_volume_from_files_rejects_non_dicom(tmp_path: Path):
    paths = write_series(make_ct_series(n_slices=12), tmp_path)
    bogus = tmp_path / "notes.txt"
    bogus.write_text("not DICOM")
    with pytest.raises(InvalidDicomError, match="notes.txt"):
        volume_from_files(paths + [bogus])


def test_input_datasets_are_not_modified():
    series = make_ct_series(n_slices=12)
    before = [copy.deepcopy(ds) for ds in series]
    volume_from_datasets(series)
    assert [ds.SOPInstanceUID for ds in series] == [ds.SOPInstanceUID for ds in before]
    assert all(a == b for a, b in zip(series, before))


# --- real data --------------------------------------------------------------------


def test_lidc_idri_0001(chest_ct: Path):
    case = chest_ct / "LIDC-IDRI-0001"
    truth = json.loads((case / "ground_truth.json").read_text())
    vol = volume_from_files(sorted((case / "series").glob("*.dcm")))

    assert vol.array.shape == (133, 512, 512)
    assert vol.spacing[2] == pytest.approx(2.5, abs=0.01)
    assert vol.spacing[:2] == pytest.approx(tuple(truth["pixel_spacing_mm"]))
    assert vol.series_instance_uid == truth["series_instance_uid"]
    assert vol.study_instance_uid == truth["study_instance_uid"]
    assert not vol.uneven_spacing and vol.gantry_tilt_deg == 0.0
    # air in front of the chest (top rows, centre columns) is about -1000 HU
    assert float(np.median(vol.array[:, 20:40, 236:276])) == pytest.approx(-1000, abs=50)

    centre = truth["nodules"][0]["center_lps_mm"]
    ijk = np.rint(vol.lps_to_index(centre)).astype(int)
    assert np.all(ijk >= 0) and np.all(ijk < np.array(vol.shape_xyz))
    i, j, k = ijk
    assert vol.array[k, j, i] > -400  # a solid nodule
    np.testing.assert_allclose(vol.index_to_lps(ijk), centre, atol=2.5)


def test_lung_dx_a0002_b40f(chest_ct: Path):
    vol = volume_from_files(sorted((chest_ct / "Lung_Dx-A0002" / "series-B40f").glob("*.dcm")))
    assert vol.array.shape[0] == 30
    assert vol.spacing[2] == pytest.approx(8.0, abs=0.01)

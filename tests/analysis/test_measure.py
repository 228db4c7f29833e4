"""Lesion measurements against exact geometry: voxelised shapes on anisotropic grids.

A shape is voxelised by its voxel centres, so its digital volume is within a few
per cent of the analytic one and each outline is exact to half a voxel at each
end: diameters are checked to one in-plane voxel diagonal.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from sensecare.analysis.measure import (
    LesionMeasurements,
    axial_diameters,
    measure_lesion,
)
from sensecare.dicom.volume import Volume

SPACING = (0.7, 0.9, 2.0)  # (x, y, z) mm: anisotropic in-plane and through-plane
SHAPE = (40, 120, 140)  # (z, y, x)
ORIGIN = (-50.0, 30.0, -100.0)
CENTRE = (20, 60, 70)  # (k, j, i): a voxel centre, so the equator is one slice
VOXEL = math.hypot(SPACING[0], SPACING[1])  # one in-plane voxel (diagonal)


def volume(direction: np.ndarray | None = None, hu: np.ndarray | None = None) -> Volume:
    array = np.zeros(SHAPE, np.int16) if hu is None else hu
    return Volume(
        array=array,
        spacing=SPACING,
        origin=ORIGIN,
        direction=np.eye(3) if direction is None else direction,
        series_instance_uid="1.2.3",
        study_instance_uid="1.2",
        sop_instance_uids=tuple(f"1.2.3.{k + 1}" for k in range(SHAPE[0])),
    )


def mm_grid() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(Z, Y, X) in mm relative to CENTRE, broadcastable over SHAPE."""
    z, y, x = np.ogrid[: SHAPE[0], : SHAPE[1], : SHAPE[2]]
    return (z - CENTRE[0]) * SPACING[2], (y - CENTRE[1]) * SPACING[1], (x - CENTRE[2]) * SPACING[0]


def test_sphere_volume_axes_centre_and_slice() -> None:
    Z, Y, X = mm_grid()
    mask = X**2 + Y**2 + Z**2 <= 10.0**2
    vol = volume()
    m = measure_lesion(vol, mask, (0, 0, 0))

    assert isinstance(m, LesionMeasurements)
    assert m.volume_ml == pytest.approx(4.0 / 3.0 * math.pi * 1000.0 / 1000.0, rel=0.05)
    assert m.long_axis_mm == pytest.approx(20.0, abs=VOXEL)
    assert m.short_axis_mm == pytest.approx(20.0, abs=VOXEL)
    assert m.slice_index == CENTRE[0]
    expected = vol.index_to_lps(CENTRE[::-1])
    assert np.allclose(m.center_lps_mm, expected, atol=0.05)
    assert np.allclose(expected, (ORIGIN[0] + 70 * 0.7, ORIGIN[1] + 60 * 0.9, ORIGIN[2] + 20 * 2.0))


def test_ellipsoid_axes_follow_the_physical_spacing() -> None:
    Z, Y, X = mm_grid()
    a, b, c = 12.0, 7.0, 5.0  # semi-axes x, y, z (mm)
    mask = (X / a) ** 2 + (Y / b) ** 2 + (Z / c) ** 2 <= 1.0
    m = measure_lesion(volume(), mask, (0, 0, 0))

    assert m.volume_ml == pytest.approx(4.0 / 3.0 * math.pi * a * b * c / 1000.0, rel=0.05)
    assert m.long_axis_mm == pytest.approx(2 * a, abs=VOXEL)
    assert m.short_axis_mm == pytest.approx(2 * b, abs=VOXEL)
    assert m.slice_index == CENTRE[0]


def test_rotated_box_long_axis_is_the_diagonal() -> None:
    """A 30 x 10 mm rectangle turned by 30 degrees: the longest chord is its diagonal and the
    caliper width perpendicular to that diagonal is 2 L W / diagonal."""
    Z, Y, X = mm_grid()
    theta = math.radians(30.0)
    u = X * math.cos(theta) + Y * math.sin(theta)
    v = -X * math.sin(theta) + Y * math.cos(theta)
    length, width = 30.0, 10.0
    mask = (np.abs(u) <= length / 2) & (np.abs(v) <= width / 2) & (np.abs(Z) <= 3.0)
    m = measure_lesion(volume(), mask, (0, 0, 0))

    diagonal = math.hypot(length, width)
    assert m.long_axis_mm == pytest.approx(diagonal, abs=VOXEL)
    assert m.short_axis_mm == pytest.approx(2 * length * width / diagonal, abs=VOXEL)
    # Three slices (z = -2, 0, 2 mm) of 2 mm each: 6 mm of digital height.
    assert m.volume_ml == pytest.approx(length * width * 6.0 / 1000.0, rel=0.05)


def test_slice_of_greatest_extent_is_where_the_long_axis_is() -> None:
    """A cone-like stack: each slice is a disc whose diameter grows with k; the largest wins."""
    Z, Y, X = mm_grid()
    radius = 3.0 + (Z + 10.0) * 0.5  # 3 mm at z = -10 mm, 13 mm at z = +10 mm
    mask = (X**2 + Y**2 <= radius**2) & (np.abs(Z) <= 10.0)
    m = measure_lesion(volume(), mask, (0, 0, 0))
    assert m.slice_index == CENTRE[0] + 5
    assert m.long_axis_mm == pytest.approx(26.0, abs=VOXEL)


def test_cropped_mask_with_offset_matches_the_full_mask() -> None:
    Z, Y, X = mm_grid()
    full = X**2 + Y**2 + Z**2 <= 8.0**2
    (zs, ys, xs) = (np.nonzero(full.any(axis=(1, 2)))[0], np.nonzero(full.any(axis=(0, 2)))[0], np.nonzero(full.any(axis=(0, 1)))[0])
    offset = (int(zs[0]), int(ys[0]), int(xs[0]))
    cropped = full[zs[0] : zs[-1] + 1, ys[0] : ys[-1] + 1, xs[0] : xs[-1] + 1]
    vol = volume()
    a = measure_lesion(vol, full, (0, 0, 0))
    b = measure_lesion(vol, cropped, offset)
    for field in ("center_lps_mm", "bbox_lps_mm_min", "bbox_lps_mm_max", "volume_ml", "long_axis_mm", "short_axis_mm", "mean_hu"):
        assert np.allclose(getattr(a, field), getattr(b, field)), field
    assert (a.slice_index, a.side) == (b.slice_index, b.side)


def test_bbox_and_centre_with_a_flipped_axis() -> None:
    """Rows running towards anterior (LPS -y): min/max are still per LPS axis."""
    direction = np.diag([1.0, -1.0, 1.0])
    mask = np.zeros(SHAPE, bool)
    mask[10:13, 20:31, 40:61] = True  # k 10..12, j 20..30, i 40..60
    vol = volume(direction)
    m = measure_lesion(vol, mask, (0, 0, 0))
    corners = vol.index_to_lps(np.array([[40, 20, 10], [60, 30, 12]], float))
    assert np.allclose(m.bbox_lps_mm_min, corners.min(axis=0))
    assert np.allclose(m.bbox_lps_mm_max, corners.max(axis=0))
    assert m.bbox_lps_mm_min[1] < m.bbox_lps_mm_max[1]
    assert np.allclose(m.center_lps_mm, vol.index_to_lps((50, 25, 11)))
    assert m.volume_ml == pytest.approx(3 * 11 * 21 * 0.7 * 0.9 * 2.0 / 1000.0)


def test_mean_hu_and_side() -> None:
    hu = np.full(SHAPE, -850, np.int16)
    mask = np.zeros(SHAPE, bool)
    mask[20, 50:60, 20:30] = True
    hu[20, 50:55, 20:30] = 0
    hu[20, 55:60, 20:30] = 100
    vol = volume(hu=hu)
    lungs = np.zeros(SHAPE, np.uint8)
    lungs[:, :, :70] = 2  # whatever LPS says, the labels decide
    m = measure_lesion(vol, mask, (0, 0, 0), lungs)
    assert m.mean_hu == pytest.approx(50.0)
    assert m.side == "left"
    # Without labels: LPS x of the centre (origin -50 mm + 24.5 * 0.7 mm < 0) is the right.
    assert measure_lesion(vol, mask, (0, 0, 0)).side == "right"


def test_single_voxel_and_errors() -> None:
    mask = np.zeros((1, 1, 1), bool)
    mask[0, 0, 0] = True
    m = measure_lesion(volume(), mask, (5, 5, 5))
    assert m.volume_ml == pytest.approx(0.7 * 0.9 * 2.0 / 1000.0)
    assert m.long_axis_mm == pytest.approx(0.9, abs=0.2)
    assert m.slice_index == 5
    with pytest.raises(ValueError):
        measure_lesion(volume(), np.zeros((2, 2, 2), bool), (0, 0, 0))
    with pytest.raises(ValueError):
        measure_lesion(volume(), np.ones((2, 2, 2), bool), (SHAPE[0] - 1, 0, 0))


def test_axial_diameters_of_a_disc_in_anisotropic_pixels() -> None:
    y, x = np.ogrid[:81, :81]
    disc = ((x - 40) * 0.5) ** 2 + ((y - 40) * 0.8) ** 2 <= 15.0**2
    long_axis, short_axis = axial_diameters(disc, (0.5, 0.8))
    assert long_axis == pytest.approx(30.0, abs=math.hypot(0.5, 0.8))
    assert short_axis == pytest.approx(30.0, abs=math.hypot(0.5, 0.8))

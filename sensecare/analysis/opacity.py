"""Percent opacity (PO), percent high opacity (PHO) and the 0-20 CT severity score.

Definitions follow Chaganti et al., Radiology: AI 2020 ("Automated quantification
of CT patterns associated with COVID-19"): PO is the share of the lung volume
(lesions included) that is abnormally dense, PHO the share that is also at or
above -200 HU; a lobe scores 0-4 by its involved share (0, 1-25, 26-50, 51-75,
76-100 %), five lobes give 0-20.

Abnormal density is found classically: smoothed HU at or above -700 inside the
lung region, minus thin bright structures (vessels, fissures, airway walls),
removed by an opening of about 3 mm radius on a ~1.5 mm grid, plus every
detected lesion. Large hilar vessels survive the opening and set a noise floor
of a few tenths of a percent; involvement below ``LOBE_NOISE_FLOOR_PERCENT``
scores 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from sensecare.analysis.grid import CoarseGrid
from sensecare.analysis.lobes import METHOD as LOBE_METHOD
from sensecare.analysis.lobes import Lobe, approximate_lobes
from sensecare.analysis.report import LungOpacity

OPACITY_HU = -700.0
HIGH_OPACITY_HU = -200.0
SMOOTHING_MM = 1.0
OPENING_RADIUS_MM = 3.0
GRID_MM = 1.5
LOBE_NOISE_FLOOR_PERCENT = 1.0


@dataclass(frozen=True)
class OpacityResult:
    """Masks (z, y, x) and the scores computed from them."""

    opacity: np.ndarray       # bool: abnormal density (includes high opacity)
    high_opacity: np.ndarray  # bool
    lobes: np.ndarray         # uint8 Lobe values, 0 outside the lungs
    summary: LungOpacity
    lobe_voxels: dict[str, int]  # voxels per lobe name (the lobe volumes, without another pass over ``lobes``)


def measure_opacity(
    hu: np.ndarray,
    spacing_xyz: tuple[float, float, float],
    lungs: np.ndarray,
    region: np.ndarray,
    *,
    lesion_masks: Sequence[tuple[np.ndarray, tuple[int, int, int]]] = (),
    superior_axis_sign: float = 1.0,
    posterior_axis_sign: float = 1.0,
) -> OpacityResult:
    """PO, PHO and severity for one CT volume.

    Parameters
    ----------
    hu : numpy.ndarray
        Hounsfield units, (z, y, x).
    spacing_xyz : tuple of float
        Voxel spacing (x, y, z) in mm.
    lungs : numpy.ndarray
        uint8, 1 = right lung, 2 = left lung (airways excluded).
    region : numpy.ndarray
        bool, the lungs with lesions and pleural concavities included; the denominator.
    lesion_masks : sequence of (mask, offset)
        Detected lesions (cropped bool masks and their (z, y, x) offsets), counted as opacity.
    superior_axis_sign, posterior_axis_sign : float
        Orientation of array axes 0 and 1 in LPS (see :func:`approximate_lobes`).
    """
    if hu.shape != lungs.shape or hu.shape != region.shape:
        raise ValueError(f"hu {hu.shape}, lungs {lungs.shape} and region {region.shape} must have one shape")
    region = region.astype(bool, copy=False)
    opacity, high = _dense_parenchyma(hu, spacing_xyz, region)
    for mask, (z0, y0, x0) in lesion_masks:
        dz, dy, dx = mask.shape
        window = (slice(z0, z0 + dz), slice(y0, y0 + dy), slice(x0, x0 + dx))
        lesion = mask & region[window]
        opacity[window] |= lesion
        high[window] |= lesion & (hu[window] >= HIGH_OPACITY_HU)

    # Sides, lobes and counts only where there is lung or region: outside that box
    # every mask is empty, and full-volume passes cost more than the scoring itself.
    lobes = np.zeros(hu.shape, dtype=np.uint8)
    box = _bounding_box(region | (lungs > 0)) or (slice(0, 0),) * 3
    # Every region voxel belongs to a side: region voxels outside `lungs` (a dense tumour at the
    # pleura) take the label of the nearest lung voxel.
    sides = _label_region(lungs[box], region[box], x_offset=box[2].start)
    lobes[box] = approximate_lobes(sides, superior_axis_sign, posterior_axis_sign)
    summary, lobe_voxels = _summarise(region[box], sides, lobes[box], opacity[box], high[box])
    return OpacityResult(opacity=opacity, high_opacity=high, lobes=lobes, summary=summary, lobe_voxels=lobe_voxels)


def _dense_parenchyma(
    hu: np.ndarray, spacing_xyz: tuple[float, float, float], region: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(abnormally dense, of those high-opacity) voxels inside ``region``, computed in its bounding box."""
    opacity = np.zeros(hu.shape, dtype=bool)
    high = np.zeros(hu.shape, dtype=bool)
    box = _bounding_box(region)
    if box is None:
        return opacity, high
    crop, inside = hu[box], region[box]
    grid = CoarseGrid.for_spacing(crop.shape, spacing_xyz, GRID_MM)
    coarse_spacing = grid.spacing_xyz(spacing_xyz)
    coarse_hu = grid.mean(np.where(inside, crop, -1000))
    sigma = [SMOOTHING_MM / s for s in (coarse_spacing[2], coarse_spacing[1], coarse_spacing[0])]
    smoothed = ndimage.gaussian_filter(coarse_hu, sigma=sigma)
    coarse_inside = grid.fraction(inside) >= 0.5
    dense = (smoothed >= OPACITY_HU) & coarse_inside
    dense = ndimage.binary_opening(dense, structure=_ball(OPENING_RADIUS_MM, coarse_spacing))
    opacity[box] = grid.upsample(dense) & inside
    high[box] = grid.upsample(dense & (smoothed >= HIGH_OPACITY_HU)) & inside
    return opacity, high


def _summarise(
    region: np.ndarray, sides: np.ndarray, lobes: np.ndarray, opacity: np.ndarray, high: np.ndarray
) -> tuple[LungOpacity, dict[str, int]]:
    """Scores and voxels per lobe, from label counts: one histogram of each label image over all
    voxels and over the (few) opacity voxels, rather than one full-volume mask per side and lobe."""
    lung_voxels = int(np.count_nonzero(region))
    side_all, side_opacity, side_high = _label_counts(sides, opacity, high, 3)
    lobe_all, lobe_opacity, _ = _label_counts(lobes, opacity, high, max(lobe.value for lobe in Lobe) + 1)

    def percent(part: int, total: int) -> float:
        return round(100.0 * int(part) / int(total), 2) if total else 0.0

    lobe_percent = {lobe.name: percent(lobe_opacity[lobe.value], lobe_all[lobe.value]) for lobe in Lobe}
    lobe_scores = {name: _lobe_score(value) for name, value in lobe_percent.items()}
    summary = LungOpacity(
        percent_opacity=percent(np.count_nonzero(opacity & region), lung_voxels),
        percent_high_opacity=percent(np.count_nonzero(high & region), lung_voxels),
        percent_opacity_right=percent(side_opacity[1], side_all[1]),
        percent_opacity_left=percent(side_opacity[2], side_all[2]),
        percent_high_opacity_right=percent(side_high[1], side_all[1]),
        percent_high_opacity_left=percent(side_high[2], side_all[2]),
        lobe_percent_opacity=lobe_percent,
        lobe_scores=lobe_scores,
        severity_score=sum(lobe_scores.values()),
        lobe_method=LOBE_METHOD,
    )
    return summary, {lobe.name: int(lobe_all[lobe.value]) for lobe in Lobe}


def _label_counts(
    labels: np.ndarray, opacity: np.ndarray, high: np.ndarray, n: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Voxels per label value (0..n-1): all of them, those in ``opacity``, those in ``high``.

    Counted slice by slice so the int64 copy ``bincount`` makes stays one slice big.
    """
    total = np.zeros(n, dtype=np.int64)
    for plane in labels:
        total += np.bincount(plane.ravel(), minlength=n)[:n]
    return total, np.bincount(labels[opacity], minlength=n)[:n], np.bincount(labels[high], minlength=n)[:n]


def _lobe_score(percent_involved: float) -> int:
    if percent_involved < LOBE_NOISE_FLOOR_PERCENT:
        return 0
    return min(4, 1 + int((percent_involved - 1e-9) // 25))


def _label_region(lungs: np.ndarray, region: np.ndarray, x_offset: int = 0) -> np.ndarray:
    """Side labels over the whole region; region voxels outside ``lungs`` (a dense tumour at the
    pleura, a filled concavity) take the side whose lung centre is nearer in x.

    ``x_offset`` is the column of ``lungs[..., 0]`` in the CT, so that a crop is labelled
    exactly like the whole volume (same centres, same ties).
    """
    sides = np.where(region, lungs, 0).astype(np.uint8)
    missing = region & (sides == 0)
    if not missing.any():
        return sides
    centres = {}
    for side in (1, 2):
        per_column = np.count_nonzero(lungs == side, axis=(0, 1))  # voxels per x: the centre without np.nonzero
        if per_column.any():
            columns = np.arange(x_offset, x_offset + per_column.size)
            centres[side] = float(per_column @ columns) / float(per_column.sum())
    if centres:
        x = np.nonzero(missing)[2] + x_offset
        if len(centres) == 1:
            sides[missing] = next(iter(centres))
        else:
            sides[missing] = np.where(np.abs(x - centres[1]) <= np.abs(x - centres[2]), 1, 2)
    return sides


def _bounding_box(mask: np.ndarray) -> tuple[slice, slice, slice] | None:
    """Bounding box of ``mask`` (None when empty), from its projections: ``any`` stops at the
    first set voxel of each slice, where ``ndimage.find_objects`` visits every voxel."""
    zs = np.flatnonzero(mask.any(axis=(1, 2)))
    if zs.size == 0:
        return None
    plane = mask[zs[0] : zs[-1] + 1].any(axis=0)
    rows, cols = np.flatnonzero(plane.any(axis=1)), np.flatnonzero(plane.any(axis=0))
    return (slice(zs[0], zs[-1] + 1), slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))


def _ball(radius_mm: float, spacing_xyz: tuple[float, float, float]) -> np.ndarray:
    sx, sy, sz = spacing_xyz
    rz, ry, rx = (max(0, int(radius_mm // s)) for s in (sz, sy, sx))
    z, y, x = np.ogrid[-rz : rz + 1, -ry : ry + 1, -rx : rx + 1]
    return (z * sz) ** 2 + (y * sy) ** 2 + (x * sx) ** 2 <= radius_mm**2

"""Percent opacity (PO), percent high opacity (PHO) and the 0-20 CT severity score.

Definitions follow Chaganti et al., Radiology: AI 2020 ("Automated quantification
of CT patterns associated with COVID-19"): PO is the share of the lung volume
(lesions included) that is abnormally dense, PHO the share that is also at or
above -200 HU; a lobe scores 0-4 by its involved share (0, 1-25, 26-50, 51-75,
76-100 %), five lobes give 0-20.

Abnormal density is found classically on a ~1.5 mm grid of lightly smoothed HU,
as two classes, each at the level where its own edge lies:

* **ground glass**: at or above -700 HU (the usual aerated / abnormal limit);
* **solid** (vessels, airway walls, consolidation, nodules): at or above -400 HU,
  halfway between aerated lung and soft tissue, which is where a blurred solid
  structure's true edge lies.  Thresholding solids at -700 instead would add a
  partial-volume shell around every vessel and nodule.

Solid structures thinner than about 6 mm (an opening of 3 mm radius) are vessels,
fissures and airway walls, and are dropped unless they are *embedded* in opacity
(less than ``EMBEDDED_AERATED_SHARE`` aerated lung around them: consolidation
inside ground glass, crazy-paving septa, vessels seen through ground glass).
Ground glass then goes through the same opening, with kept solids counting as
part of it; the thin partial-volume shells around dropped vessels go with it.
What remains of the ground glass is followed out over its blurred margin, down to
``EDGE_HU`` and at most ``EDGE_GROWTH_MM`` (its half-density edge lies below -700
HU: diffuse disease read 4 points low without this, 2.5 with it).
Every detected lesion is added.

The lung volume is the lungs proper plus the region voxels on their *pleural*
side (a pocket a consolidation or tumour makes against the chest wall: farther
from the slice's centre than any lung along the same ray).  Region voxels on the
mediastinal side (the hilum, the concavities the lung region closes around
hilar vessels and bronchi) are lesion search space, not parenchyma; counting
them put about 3-4 percentage points of hilar vessel into every scan's PO.
Involvement below ``LOBE_NOISE_FLOOR_PERCENT`` scores 0.
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
from sensecare.masks import bounding_box

#: Aerated lung below, abnormal (ground glass or denser) at or above.
OPACITY_HU = -700.0
#: Solid structures (vessels, consolidation, nodules) at or above: halfway between aerated lung
#: (about -850) and soft tissue (about +40), the half-maximum edge of a blurred solid structure.
SOLID_HU = -400.0
#: Ground glass found at OPACITY_HU is followed out to this level (its blurred half-density edge
#: on -600 HU disease over -860 HU lung), at most EDGE_GROWTH_MM (or one grid voxel in-plane).
EDGE_HU = -750.0
EDGE_GROWTH_MM = 1.5
#: High opacity (PHO) at or above.
HIGH_OPACITY_HU = -200.0
SMOOTHING_MM = 1.0
#: Structures thinner than twice this are vessels, fissures and airway walls (when not embedded).
OPENING_RADIUS_MM = 3.0
#: A solid voxel with less than this share of aerated lung around it (Gaussian, EMBEDDING_MM) lies
#: inside opacity: consolidation within ground glass, septa, vessels seen through ground glass.
EMBEDDED_AERATED_SHARE = 0.3
EMBEDDING_MM = 3.0
GRID_MM = 1.5
LOBE_NOISE_FLOOR_PERCENT = 1.0
#: Angular resolution of the pleural-side test (as in lungs.py).
_ANGLE_BINS = 720


@dataclass(frozen=True)
class OpacityResult:
    """Masks (z, y, x) and the scores computed from them."""

    opacity: np.ndarray       # bool: abnormal density (includes high opacity)
    high_opacity: np.ndarray  # bool
    lobes: np.ndarray         # uint8 Lobe values over the region (every lesion gets one), 0 outside
    summary: LungOpacity
    lobe_voxels: dict[str, int]  # voxels of lung per lobe name (the lobe volumes, without another pass over ``lobes``)
    lung: np.ndarray          # bool: the lung volume scored (lungs, pleural-side pockets, lesions)


@dataclass(frozen=True)
class Parenchyma:
    """The lung parenchyma scored and its abnormally dense part, before any lesion is added (z, y, x)."""

    opacity: np.ndarray  # bool: abnormal density
    high: np.ndarray     # bool: of those, high opacity
    lung: np.ndarray     # bool: lungs and pleural-side pockets

    @property
    def percent_opacity(self) -> float:
        """PO of the parenchyma alone: what the later findings do not change much, known before them."""
        return 100.0 * float(np.count_nonzero(self.opacity)) / max(1, int(np.count_nonzero(self.lung)))


def dense_parenchyma(hu: np.ndarray, spacing_xyz: tuple[float, float, float], lungs: np.ndarray,
                     region: np.ndarray) -> Parenchyma:
    """The parenchyma's opacity (see the module docstring), the bulk of the opacity stage's work."""
    if hu.shape != lungs.shape or hu.shape != region.shape:
        raise ValueError(f"hu {hu.shape}, lungs {lungs.shape} and region {region.shape} must have one shape")
    return Parenchyma(*_dense_parenchyma(hu, spacing_xyz, lungs, region.astype(bool, copy=False)))


def measure_opacity(
    hu: np.ndarray,
    spacing_xyz: tuple[float, float, float],
    lungs: np.ndarray,
    region: np.ndarray,
    *,
    lesion_masks: Sequence[tuple[np.ndarray, tuple[int, int, int]]] = (),
    superior_axis_sign: float = 1.0,
    posterior_axis_sign: float = 1.0,
    parenchyma: Parenchyma | None = None,
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
        bool, the lungs with lesions and pleural and mediastinal concavities included.  The
        lung volume (the denominator) is the lungs and the region's pleural-side pockets, plus
        the lesions; lobes are labelled over the whole region so that every lesion gets one.
    lesion_masks : sequence of (mask, offset)
        Detected lesions (cropped bool masks and their (z, y, x) offsets), counted as opacity.
    superior_axis_sign, posterior_axis_sign : float
        Orientation of array axes 0 and 1 in LPS (see :func:`approximate_lobes`).
    parenchyma : Parenchyma, optional
        :func:`dense_parenchyma` of the same inputs when the caller needed it first; its
        arrays become the result's (lesions are added to them in place).
    """
    if hu.shape != lungs.shape or hu.shape != region.shape:
        raise ValueError(f"hu {hu.shape}, lungs {lungs.shape} and region {region.shape} must have one shape")
    region = region.astype(bool, copy=False)
    if parenchyma is None:
        parenchyma = dense_parenchyma(hu, spacing_xyz, lungs, region)
    opacity, high, lung = parenchyma.opacity, parenchyma.high, parenchyma.lung
    for mask, (z0, y0, x0) in lesion_masks:
        dz, dy, dx = mask.shape
        window = (slice(z0, z0 + dz), slice(y0, y0 + dy), slice(x0, x0 + dx))
        lesion = mask & region[window]
        opacity[window] |= lesion
        high[window] |= lesion & (hu[window] >= HIGH_OPACITY_HU)
        lung[window] |= lesion

    # Sides, lobes and counts only where there is lung or region: outside that box
    # every mask is empty, and full-volume passes cost more than the scoring itself.
    lobes = np.zeros(hu.shape, dtype=np.uint8)
    box = bounding_box(region | (lungs > 0)) or (slice(0, 0),) * 3
    # Every region voxel belongs to a side: region voxels outside `lungs` (a dense tumour at the
    # pleura) take the label of the nearest lung voxel.
    sides = _label_region(lungs[box], region[box], x_offset=box[2].start)
    lobes[box] = approximate_lobes(sides, superior_axis_sign, posterior_axis_sign)
    inside = lung[box]
    summary, lobe_voxels = _summarise(
        inside, np.where(inside, sides, 0), np.where(inside, lobes[box], 0), opacity[box], high[box]
    )
    return OpacityResult(
        opacity=opacity, high_opacity=high, lobes=lobes, summary=summary, lobe_voxels=lobe_voxels, lung=lung
    )


def _dense_parenchyma(
    hu: np.ndarray, spacing_xyz: tuple[float, float, float], lungs: np.ndarray, region: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(abnormally dense, of those high-opacity, lung parenchyma) voxels, computed in the region's
    bounding box on a ~1.5 mm grid (see the module docstring)."""
    opacity = np.zeros(hu.shape, dtype=bool)
    high = np.zeros(hu.shape, dtype=bool)
    lung = np.zeros(hu.shape, dtype=bool)
    box = bounding_box(region)
    if box is None:
        return opacity, high, lung
    crop, inside = hu[box], region[box]
    grid = CoarseGrid.for_spacing(crop.shape, spacing_xyz, GRID_MM)
    coarse_spacing = grid.spacing_xyz(spacing_xyz)
    coarse_hu = grid.mean(np.where(inside, crop, -1000))
    smoothed = ndimage.gaussian_filter(coarse_hu, sigma=_sigma(SMOOTHING_MM, coarse_spacing))
    coarse_inside = grid.fraction(inside) >= 0.5
    dense = _abnormal(smoothed, coarse_inside, coarse_spacing)

    in_lungs = lungs[box] > 0
    pocket = grid.fraction(inside & ~in_lungs) > 0  # any non-lung region voxel: a block may be partly lung
    pleural = grid.upsample(_pleural_side(grid.fraction(in_lungs) >= 0.5, pocket, coarse_spacing))
    lung[box] = inside & (in_lungs | pleural)
    opacity[box] = grid.upsample(dense) & lung[box]
    high[box] = grid.upsample(dense & (smoothed >= HIGH_OPACITY_HU)) & lung[box]
    return opacity, high, lung


def _abnormal(smoothed: np.ndarray, inside: np.ndarray, spacing_xyz: tuple[float, float, float]) -> np.ndarray:
    """Ground glass and solid opacity on the coarse grid, thin solid structures in aerated lung removed."""
    ball = _ball(OPENING_RADIUS_MM, spacing_xyz)
    solid = inside & (smoothed >= SOLID_HU)
    ground_glass = inside & (smoothed >= OPACITY_HU) & ~solid
    aerated = inside & ~(solid | ground_glass)
    kept = ndimage.binary_opening(solid, structure=ball)  # consolidation, masses: at least ~6 mm across
    sigma = _sigma(EMBEDDING_MM, spacing_xyz)
    aerated_share = ndimage.gaussian_filter(aerated.astype(np.float32), sigma) / np.maximum(
        ndimage.gaussian_filter(inside.astype(np.float32), sigma), 1e-3
    )
    embedded = solid & (aerated_share < EMBEDDED_AERATED_SHARE)
    found = ndimage.binary_opening(ground_glass | embedded | kept, structure=ball) | kept
    # The blurred margin of ground glass falls below OPACITY_HU before its half-density edge:
    # follow it down to EDGE_HU, at most EDGE_GROWTH_MM out from what was found.
    margin = inside & (smoothed >= EDGE_HU)
    glass = found & ~solid  # not from solid structures: their partial-volume halo is no disease
    reach = max(EDGE_GROWTH_MM, spacing_xyz[0], spacing_xyz[1])  # at least one voxel in-plane
    return found | (ndimage.binary_dilation(glass, structure=_ball(reach, spacing_xyz)) & margin)


def _pleural_side(lungs: np.ndarray, candidates: np.ndarray, spacing_xyz: tuple[float, float, float]) -> np.ndarray:
    """Candidate voxels at least as far from their slice's centre as any lung voxel along the same ray.

    The centre is the centroid of lungs and candidates in the slice (the mediastinum,
    between the lungs): a pocket beyond the lung lies against the chest wall (a
    consolidation or tumour there is parenchyma), one before it faces the hilum and
    mediastinum.  A candidate may be partly lung (a coarse block on the lung's edge),
    hence "at least as far".  Done for all slices at once: one (slice, angle) table of
    the farthest lung voxel.
    """
    out = np.zeros(candidates.shape, dtype=bool)
    region = lungs | candidates
    slices = np.flatnonzero(lungs.any(axis=(1, 2)) & candidates.any(axis=(1, 2)))
    if slices.size == 0:
        return out
    sx, sy = spacing_xyz[0], spacing_xyz[1]
    part_region, part_lungs, part_candidates = region[slices], lungs[slices], candidates[slices]
    count = part_region.sum(axis=(1, 2)).astype(float)
    rows = np.arange(region.shape[1], dtype=float)
    cols = np.arange(region.shape[2], dtype=float)
    centre_row = part_region.sum(axis=2) @ rows / count
    centre_col = part_region.sum(axis=1) @ cols / count

    def polar(k: np.ndarray, j: np.ndarray, i: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(slice, angle bin) cell and distance (mm) from the slice's centre."""
        dy, dx = (j - centre_row[k]) * sy, (i - centre_col[k]) * sx
        angle = ((np.arctan2(dy, dx) + np.pi) / (2 * np.pi) * _ANGLE_BINS).astype(np.int64) % _ANGLE_BINS
        return k * _ANGLE_BINS + angle, np.hypot(dy, dx)

    # The farthest lung voxel along a ray is on the lung's in-plane edge: only those are placed.
    planar = np.zeros((3, 3, 3), dtype=bool)
    planar[1] = True
    edge = part_lungs & ~ndimage.binary_erosion(part_lungs, structure=planar, border_value=0)
    cell, radius = polar(*np.nonzero(edge))
    reach = np.zeros(slices.size * _ANGLE_BINS)
    np.maximum.at(reach, cell, radius)
    reach = ndimage.maximum_filter1d(reach.reshape(slices.size, _ANGLE_BINS), size=5, axis=1, mode="wrap").ravel()
    k, j, i = np.nonzero(part_candidates)
    cell, radius = polar(k, j, i)
    beyond = radius >= reach[cell]
    out[slices[k[beyond]], j[beyond], i[beyond]] = True
    return out


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


def _sigma(mm: float, spacing_xyz: tuple[float, float, float]) -> list[float]:
    """A Gaussian width in mm as (z, y, x) voxels."""
    return [mm / s for s in (spacing_xyz[2], spacing_xyz[1], spacing_xyz[0])]


def _ball(radius_mm: float, spacing_xyz: tuple[float, float, float]) -> np.ndarray:
    sx, sy, sz = spacing_xyz
    rz, ry, rx = (max(0, int(radius_mm // s)) for s in (sz, sy, sx))
    z, y, x = np.ogrid[-rz : rz + 1, -ry : ry + 1, -rx : rx + 1]
    return (z * sz) ** 2 + (y * sy) ** 2 + (x * sx) ** 2 <= radius_mm**2

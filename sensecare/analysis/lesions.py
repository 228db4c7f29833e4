"""Lung lesions on chest CT, classically: segment each candidate, type it, score it, keep the likely ones.

Pipeline (see docs/analysis-lesions.md for the reasoning and measured results)

1. :func:`sensecare.analysis.candidates.find_candidates` gives seed points with a
   size estimate (Hessian blob filter, ground-glass density blobs, thick solid cores).
2. Each seed is segmented on the full-resolution grid in a window around it:
   the solid part is the smoothed HU >= -400 (half-way between aerated lung
   and soft tissue, so the 50 % edge of a blurred lesion), detached from
   vessels by a morphological opening whose radius follows the lesion size
   (Kostis et al., IEEE TMI 22(10), 2003); the sub-solid part is the same
   with a threshold ``SUBSOLID_CONTRAST_HU`` above the local parenchyma on a
   smoother image.  Outside the region the image is replaced by parenchyma,
   so the chest wall never joins a juxtapleural lesion.
3. Type: ground glass / part solid when the sub-solid outline extends well
   beyond any solid core; otherwise solid, mass (long axis > 30 mm) or
   consolidation (irregular, with air bronchograms).
4. Confidence: a logistic function of shape evidence (documented at
   :func:`confidence_from`), then duplicates are merged and weak ones dropped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from enum import Enum
from functools import lru_cache

import numpy as np
from scipy import ndimage

from sensecare.analysis.candidates import (
    GGO_MAX_HU,
    SOLID_HU,
    Candidate,
    find_candidates,
    parenchyma_hu,
    shape_features,
)
from sensecare.analysis.grid import CoarseGrid
from sensecare.analysis.measure import axial_diameters
from sensecare.dicom.volume import Volume
from sensecare.masks import bounding_box

__all__ = ["Lesion", "LesionType", "confidence_from", "equivalent_radius_mm", "find_lesions", "merge_overlapping",
           "open_ball", "segment_seeds", "solid_type"]

#: Sub-solid (ground-glass) detection: this many HU above the parenchyma, on a ~1.2 mm smoothed
#: image; the outline is then drawn at half the lesion's own contrast, never below the minimum.
SUBSOLID_CONTRAST_HU = 150.0
SUBSOLID_MIN_CONTRAST_HU = 80.0
#: The half-contrast outline may grow the detected one at most this much (more is a leak).
GGO_MAX_GROWTH = 2.0
EDGE_SHIFT_MM = 2.0
SUBSOLID_SMOOTHING_MM = 1.2
SOLID_SMOOTHING_MM = 0.6
#: Partial-volume halo of a solid edge (mm in-plane; half a slice in z): sub-solid voxels within
#: it are the blurred edge of solid tissue, not ground glass.
HALO_MM = 1.5
#: A lesion is sub-solid when ground glass beyond the halo is at least this share of it.
GGO_MIN_SHARE = 0.3
#: Openings (mm) that separate vessels from ground glass and from a solid core.
SUBSOLID_OPENING_MM = 1.5
CORE_OPENING_MM = 1.5
#: Topology is decided on a grid of about this many voxels per window half-width.
WINDOW_VOXELS = 25.0
#: ... but never coarser than this (mm): a spiculated mass must not fall apart.
MAX_TOPOLOGY_GRID_MM = 2.0
#: Solid core smaller than this equivalent diameter (mm) inside ground glass is vessel or noise;
#: one whose deep part is longer than this many radii is a vessel crossing it.
CORE_MIN_DIAMETER_MM = 3.0
CORE_MAX_AXIS_RATIO = 5.0
#: A solid component near the seed whose surroundings are this much ground glass is the core of a
#: part-solid lesion (searched within two seed radii, at least CORE_SEARCH_MM).
ENCLOSED_SHARE = 0.85
CORE_SEARCH_MM = 6.0
#: Share of the filled outline that must be air (bronchi kept open) for consolidation.
AIR_BRONCHOGRAM_SHARE = 0.02
#: A solid lesion with a long axis above this (mm) is a mass ...
MASS_MM = 30.0
#: ... unless its mean density is this far below soft tissue (about +30 HU): airspace disease,
#: whose partly filled alveoli and open bronchi pull the mean down, is consolidation. (Open
#: bronchi that leave the outline are no holes, so the air-bronchogram share misses them.)
CONSOLIDATION_MAX_MEAN_HU = -25.0
#: Width (mm) of the ring around a lesion where aerated lung is counted.
RING_MM = 2.0
#: Lesions below this confidence are not reported.
MIN_CONFIDENCE = 0.2
#: Largest window half-size (mm) a single lesion may have.
MAX_HALF_WINDOW_MM = 80.0
#: Opening radius as a fraction of the seed radius, first try and retry (Kostis et al. 2003).
OPENING_FACTORS = (0.4, 0.6)
MAX_OPENING_MM = 6.0


class LesionType(str, Enum):
    SOLID = "solid"
    PART_SOLID = "part_solid"
    GROUND_GLASS = "ground_glass"
    CONSOLIDATION = "consolidation"
    MASS = "mass"


@dataclass(frozen=True)
class Lesion:
    """One finding.

    Attributes
    ----------
    mask : numpy.ndarray
        bool, cropped to the lesion's bounding box.
    offset : tuple of int
        (z, y, x) of ``mask[0, 0, 0]`` in the volume.
    type : LesionType
    confidence : float
        0..1, monotone in the evidence (see :func:`confidence_from`); 0.5 means
        "as likely a lesion as not" under the hand-set weights.
    features : dict of str to float
        Every number that decided type and confidence.
    """

    mask: np.ndarray
    offset: tuple[int, int, int]
    type: LesionType
    confidence: float
    features: dict[str, float]


def find_lesions(
    volume: Volume,
    region: np.ndarray,
    *,
    lungs: np.ndarray | None = None,
    min_diameter_mm: float = 3.0,
    min_confidence: float = MIN_CONFIDENCE,
) -> list[Lesion]:
    """Find, segment and type the lesions of ``volume`` inside ``region``.

    Parameters
    ----------
    volume : Volume
        The CT (HU, (z, y, x)).
    region : numpy.ndarray
        bool, same shape: lungs with holes and pleural/mediastinal concavities closed.
    lungs : numpy.ndarray, optional
        Lung labels (1 right, 2 left, 0 elsewhere); when given, the parenchyma HU every
        contrast is measured from is taken from the labelled lung rather than the region.
    min_diameter_mm : float
        Smallest equivalent-sphere diameter reported.
    min_confidence : float
        Lesions below this confidence are dropped.

    Returns
    -------
    list of Lesion
        Sorted by confidence, highest first.
    """
    prepared = _prepare(volume, region, lungs)
    if prepared is None:
        return []
    ctx, start, aerated = prepared
    seeds = find_candidates(ctx.hu, ctx.region, ctx.spacing, aerated=aerated)
    ctx = replace(ctx, background=seeds.parenchyma_hu)
    taken = np.zeros(ctx.hu.shape, dtype=bool)
    lesions: list[Lesion] = []
    for seed in seeds.candidates:
        if taken[seed.center]:
            continue
        seg = _segment(ctx, seed)
        if seg is None:
            continue
        window_taken = taken[seg.window][seg.outline.mask]
        if window_taken.size and window_taken.mean() > 0.5:
            continue
        taken[seg.window] |= seg.outline.mask
        if 2.0 * equivalent_radius_mm(seg.outline.mask, ctx.zyx) < min_diameter_mm:
            continue
        lesions.append(_describe(ctx, seed, seg, start))
    lesions = [les for les in merge_overlapping(lesions) if les.confidence >= min_confidence]
    lesions.sort(key=lambda les: -les.confidence)
    return lesions


def segment_seeds(
    volume: Volume, region: np.ndarray, seeds: list[Candidate], *, lungs: np.ndarray | None = None
) -> list[Lesion | None]:
    """Segment, describe and type the lesion at each seed (volume indices), one result per seed.

    The same segmentation as :func:`find_lesions`, for seeds found elsewhere (the
    voxel classifier of :mod:`sensecare.analysis.heatmap`); ``None`` where nothing
    lesion-like surrounds the seed. No merging and no confidence cut: the caller
    decides which segmentation to trust.
    """
    prepared = _prepare(volume, region, lungs)
    if prepared is None:
        return [None] * len(seeds)
    ctx, start, _ = prepared
    out: list[Lesion | None] = []
    for seed in seeds:
        local = replace(seed, center=tuple(c - o for c, o in zip(seed.center, start)))  # type: ignore[arg-type]
        if not all(0 <= c < n for c, n in zip(local.center, ctx.hu.shape)):
            out.append(None)
            continue
        seg = _segment(ctx, local)
        out.append(None if seg is None else _describe(ctx, local, seg, start))
    return out


def _prepare(volume: Volume, region: np.ndarray, lungs: np.ndarray | None):  # type: ignore[no-untyped-def]
    """The segmentation context on the region's bounding box, its offset, and the aerated lung there."""
    hu_full = volume.array
    region = np.asarray(region, dtype=bool)
    if region.shape != hu_full.shape:
        raise ValueError(f"region {region.shape} and volume {hu_full.shape} must have one shape")
    if lungs is not None and np.shape(lungs) != hu_full.shape:
        raise ValueError(f"lungs {np.shape(lungs)} and volume {hu_full.shape} must have one shape")
    box = bounding_box(region)
    if box is None:
        return None
    hu = hu_full[box].astype(np.float32)
    inside = region[box]
    start = tuple(s.start for s in box)
    spacing = tuple(float(s) for s in volume.spacing)
    aerated = None if lungs is None else np.asarray(lungs)[box] > 0
    background = parenchyma_hu(hu, inside if aerated is None or not aerated.any() else aerated & inside)
    return _Context(hu, inside, spacing, background), start, aerated


# --- segmentation ---------------------------------------------------------------------


@dataclass(frozen=True)
class _Context:
    hu: np.ndarray        # cropped to the region's box, float32
    region: np.ndarray    # bool, same crop
    spacing: tuple[float, float, float]  # (x, y, z)
    background: float     # parenchyma HU

    @property
    def zyx(self) -> tuple[float, float, float]:
        sx, sy, sz = self.spacing
        return (sz, sy, sx)


@dataclass(frozen=True)
class _Outline:
    """Masks of one lesion on one grid (the window, possibly coarsened)."""

    mask: np.ndarray         # final lesion mask
    solid: np.ndarray        # solid part (>= -400)
    core: np.ndarray         # compact solid core (vessels opened away)
    subsolid: bool           # the outline is sub-solid (ground glass beyond the solid part)
    opening_mm: float
    truncated: bool          # the mask reaches an inner face of its window
    sub_level: float         # HU level of the sub-solid outline


@dataclass(frozen=True)
class _Segmentation:
    window: tuple[slice, slice, slice]
    outline: _Outline        # at full resolution
    smooth: np.ndarray       # lightly smoothed HU in the window
    filled: np.ndarray       # HU with outside-region replaced by parenchyma
    inside: np.ndarray       # region in the window
    grid_mm: float           # in-plane spacing the topology was decided on


def _window(ctx: _Context, center: tuple[int, int, int], half_mm: float) -> tuple[slice, slice, slice]:
    out = []
    for c, s, n in zip(center, ctx.zyx, ctx.hu.shape):
        h = max(2, math.ceil(half_mm / s))
        out.append(slice(max(0, c - h), min(n, c + h + 1)))
    return tuple(out)  # type: ignore[return-value]


def _smooth(image: np.ndarray, sigma_mm: float, spacing_zyx: tuple[float, float, float]) -> np.ndarray:
    sig = [sigma_mm / s if sigma_mm / s >= 0.3 else 0.0 for s in spacing_zyx]
    return ndimage.gaussian_filter(image, sig, mode="nearest")


def open_ball(mask: np.ndarray, radius_mm: float, spacing_zyx: tuple[float, float, float]) -> np.ndarray:
    """Morphological opening by a ball of ``radius_mm`` (voxel centres within the radius)."""
    if radius_mm < 0.5 * min(spacing_zyx[1:]):
        return mask
    radii = (radius_mm,) * 3
    eroded = _erode(mask, radii, spacing_zyx)
    if not eroded.any():
        return eroded
    return mask & _dilate(eroded, radii, spacing_zyx)


def _near(mask: np.ndarray, margin_zyx: tuple[float, float, float], spacing_zyx: tuple[float, float, float]) -> np.ndarray:
    """Voxels within an ellipsoidal margin (mm per axis) of ``mask``."""
    if not mask.any():
        return mask
    return _dilate(mask, margin_zyx, spacing_zyx)


#: Structuring elements up to this many voxels are applied directly; larger ones through
#: distance transforms (scipy's costs ~150 ns per voxel whatever the radius).
_DIRECT_MAX_VOXELS = 200


@lru_cache(maxsize=128)
def _ellipsoid(radii_zyx: tuple[float, float, float], spacing_zyx: tuple[float, float, float]) -> np.ndarray:
    half = [int(r // s) for r, s in zip(radii_zyx, spacing_zyx)]
    z, y, x = np.ogrid[-half[0] : half[0] + 1, -half[1] : half[1] + 1, -half[2] : half[2] + 1]
    terms = [(c * s / r) ** 2 for c, s, r in zip((z, y, x), spacing_zyx, radii_zyx)]
    return terms[0] + terms[1] + terms[2] <= 1.0 + 1e-9


def _scaled(radii_zyx: tuple[float, float, float], spacing_zyx: tuple[float, float, float]) -> tuple[float, ...]:
    return tuple(s / max(r, 1e-3) for s, r in zip(spacing_zyx, radii_zyx))


def _key(radii: tuple[float, ...], spacing: tuple[float, ...]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    return tuple(round(float(r), 4) for r in radii), tuple(round(float(v), 6) for v in spacing)


def _erode(mask: np.ndarray, radii_zyx: tuple[float, float, float], spacing_zyx: tuple[float, float, float]) -> np.ndarray:
    """Voxels whose whole ellipsoid (voxel centres) lies in ``mask``; outside the array counts as inside."""
    return _morph(mask, radii_zyx, spacing_zyx, erode=True)


def _dilate(mask: np.ndarray, radii_zyx: tuple[float, float, float], spacing_zyx: tuple[float, float, float]) -> np.ndarray:
    """Voxels within the ellipsoid of some voxel of ``mask``."""
    return _morph(mask, radii_zyx, spacing_zyx, erode=False)


def _morph(
    mask: np.ndarray, radii_zyx: tuple[float, float, float], spacing_zyx: tuple[float, float, float], *, erode: bool
) -> np.ndarray:
    """Erosion or dilation by an ellipsoid, computed only over the mask's bounding box grown by the
    ellipsoid (exact: nothing farther can change)."""
    ball = _ellipsoid(*_key(radii_zyx, spacing_zyx))
    half = [n // 2 for n in ball.shape]
    spans = []
    for axis, h in enumerate(half):
        hit = np.nonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))[0]
        if hit.size == 0:
            return np.zeros_like(mask)
        spans.append(slice(max(0, int(hit[0]) - h), min(mask.shape[axis], int(hit[-1]) + h + 1)))
    box = tuple(spans)
    part = mask[box]
    if ball.sum() <= _DIRECT_MAX_VOXELS:
        done = ndimage.binary_erosion(part, ball, border_value=1) if erode else ndimage.binary_dilation(part, ball)
    else:
        scaled = _scaled(radii_zyx, spacing_zyx)
        if erode:
            done = ndimage.distance_transform_edt(part, sampling=scaled) > 1.0 + 1e-9
        else:
            done = ndimage.distance_transform_edt(~part, sampling=scaled) <= 1.0 + 1e-9
    out = np.zeros_like(mask)
    out[box] = done
    return out


def _component_at(mask: np.ndarray, point: tuple[int, ...], reach_vox: np.ndarray) -> np.ndarray | None:
    """The connected component of ``mask`` holding ``point``, or the nearest one within ``reach_vox``."""
    if not mask.any():
        return None
    labels, _ = ndimage.label(mask)
    lab = labels[point]
    if lab == 0:
        sl = tuple(slice(max(0, p - r), p + r + 1) for p, r in zip(point, reach_vox))
        sub = labels[sl]
        if not sub.any():
            return None
        pos = np.argwhere(sub > 0)
        rel = pos - (np.asarray(point) - np.array([s.start for s in sl]))
        d = (rel / np.maximum(reach_vox, 1)) ** 2
        lab = sub[tuple(pos[int(np.argmin(d.sum(axis=1)))])]
    return labels == lab


def _touches_open_border(mask: np.ndarray, window: tuple[slice, ...], shape: tuple[int, ...]) -> bool:
    """True when the mask reaches a window face that is not the crop's own border."""
    for axis, (sl, n) in enumerate(zip(window, shape)):
        if mask.shape[axis] < 3:
            continue
        if sl.start > 0 and np.take(mask, 0, axis=axis).any():
            return True
        if sl.stop < n and np.take(mask, -1, axis=axis).any():
            return True
    return False


def equivalent_radius_mm(mask: np.ndarray, zyx: tuple[float, float, float]) -> float:
    """Radius (mm) of the sphere of the mask's volume; ``zyx`` is the voxel size."""
    vol = float(np.count_nonzero(mask)) * zyx[0] * zyx[1] * zyx[2]
    return (3.0 * vol / (4.0 * math.pi)) ** (1.0 / 3.0)


def _local(ctx: _Context, seed: Candidate) -> tuple[int, int, int]:
    return tuple(int(np.clip(c, 0, n - 1)) for c, n in zip(seed.center, ctx.hu.shape))  # type: ignore[return-value]


def _segment(ctx: _Context, seed: Candidate) -> _Segmentation | None:
    """Segment the lesion around ``seed`` in a window sized by the seed's own extent.

    Topology (which voxels belong to the lesion, what is vessel) is decided on a
    grid of about 50 voxels across the window but never coarser than 2 mm, so a
    60 mm mass costs little more than a 5 mm nodule; the outline is then
    re-thresholded at full resolution.
    When the solid part runs out of the window it is either bigger than the seed
    said or still joined to vessels; one retry with a wider opening separates a
    nodule from thicker vessels.  Whatever still runs out is marked ``truncated``.
    """
    half = min(seed.extent_mm, MAX_HALF_WINDOW_MM)
    window = _window(ctx, _local(ctx, seed), half)
    inside = ctx.region[window]
    filled = np.where(inside, ctx.hu[window], np.float32(ctx.background))
    point = tuple(c - s.start for c, s in zip(_local(ctx, seed), window))
    grid = CoarseGrid.for_spacing(filled.shape, ctx.spacing, max(min(ctx.spacing[:2]), min(half / WINDOW_VOXELS, MAX_TOPOLOGY_GRID_MM)))
    cx, cy, cz = grid.spacing_xyz(ctx.spacing)
    coarse_zyx = (cz, cy, cx)
    coarse_filled = grid.mean(filled) if grid.factors != (1, 1, 1) else filled
    coarse_inside = grid.fraction(inside) >= 0.5 if grid.factors != (1, 1, 1) else inside
    coarse_point = tuple(min(p // f, n - 1) for p, f, n in zip(point, grid.factors, coarse_filled.shape))
    outline = None
    for factor in OPENING_FACTORS:
        outline = _outline(coarse_filled, coarse_inside, coarse_zyx, coarse_point, seed, factor, ctx.background)
        if outline is None:
            return None
        outline = replace(outline, truncated=_touches_open_border(outline.mask, window, ctx.hu.shape))
        if not outline.truncated:
            break
    assert outline is not None
    smooth = _smooth(filled, SOLID_SMOOTHING_MM, ctx.zyx)
    if grid.factors != (1, 1, 1):
        outline = _refine(outline, grid, filled, smooth, inside, ctx)
        if outline is None:
            return None
    return _Segmentation(window, outline, smooth, filled, inside, cx)


def _outline(
    filled: np.ndarray,
    inside: np.ndarray,
    zyx: tuple[float, float, float],
    point: tuple[int, ...],
    seed: Candidate,
    factor: float,
    background: float,
) -> _Outline | None:
    """Solid and sub-solid outline of the lesion at ``point`` on one grid."""
    reach = np.array([max(1, round(seed.radius_mm / s)) for s in zyx])
    near_reach = np.array([max(1, round(0.5 * seed.radius_mm / s)) for s in zyx])
    smooth = _smooth(filled, SOLID_SMOOTHING_MM, zyx)
    solid_all = (smooth >= SOLID_HU) & inside
    radius = seed.radius_mm
    opening = float(np.clip(factor * radius, 0.0, MAX_OPENING_MM))
    solid = None
    if solid_all.any():
        solid = _component_at(open_ball(solid_all, opening, zyx), point, near_reach)
        if solid is None:
            # Smaller than the opening: accept the plain component only if it stays near the seed's size.
            solid = _component_at(solid_all, point, near_reach)
            if solid is not None and equivalent_radius_mm(solid, zyx) > 2.0 * max(radius, 2.0):
                solid = None
        else:
            solid = _reconstruct(solid, solid_all, opening, zyx)
    solid = np.zeros(filled.shape, bool) if solid is None else solid

    # Sub-solid outline on a smoother image: ground glass is textured and faint.
    soft = _smooth(filled, SUBSOLID_SMOOTHING_MM, zyx)
    sub_open = max(opening, SUBSOLID_OPENING_MM)
    glass_level = (soft >= background + SUBSOLID_CONTRAST_HU) & inside

    def subsolid_part(solid: np.ndarray) -> np.ndarray | None:
        # Other solid structures (vessels) and their partial-volume halo are not ground glass.
        others = _near(solid_all & ~solid, _halo_mm(zyx), zyx)
        sub_all = (glass_level & ~others) | solid
        sub = _component_at(open_ball(sub_all, sub_open, zyx), point, reach)
        return None if sub is None else _reconstruct(sub, sub_all, sub_open, zyx) | solid

    sub = subsolid_part(solid)
    if sub is not None and not solid.any():
        # Seeded in the ground glass beside a solid core: the core is the solid tissue the
        # ground glass wraps, not a vessel to cut out.
        core = _wrapped_core(solid_all, glass_level, point, max(2.0 * radius, CORE_SEARCH_MM), zyx)
        if core.any():
            solid = core
            sub = subsolid_part(solid)
    others = _near(solid_all & ~solid, _halo_mm(zyx), zyx)
    subsolid = False
    level = background + SUBSOLID_CONTRAST_HU
    if sub is not None:
        # Ground glass is what lies beyond the partial-volume halo of the solid part.
        halo = _near(solid, _halo_mm(zyx), zyx)
        ggo = sub & ~halo
        n_sub = max(1, int(np.count_nonzero(sub)))
        ggo_share = float(np.count_nonzero(ggo)) / n_sub
        solid_share = float(np.count_nonzero(solid & sub)) / n_sub
        subsolid = ggo_share >= GGO_MIN_SHARE and solid_share < 0.5 and equivalent_radius_mm(ggo, zyx) * 2.0 >= 3.0
        if subsolid:
            sub, level = _half_contrast(sub, ggo, soft, inside & ~others, solid, background, sub_open, zyx, point, reach)
            # Solid tissue belongs to a ground-glass lesion only within its outline (a core, or a
            # vessel crossing it); vessel segments leaving the ground glass do not.
            glass = sub & ~_near(solid, _halo_mm(zyx), zyx)
            sub = (sub & ~solid) | (solid & _near(glass, _halo_mm(zyx), zyx))
            sub = sub | (_fill_slices(sub) & solid_all)
    base = sub if (subsolid and sub is not None) else solid
    if not base.any():
        return None
    core = _component_at(open_ball(solid & base, CORE_OPENING_MM, zyx), point, reach * 2)
    core = np.zeros(filled.shape, bool) if core is None else core
    return _Outline(base, solid, core, subsolid, opening, False, level)


def _wrapped_core(solid_all: np.ndarray, glass: np.ndarray, point: tuple[int, ...], search_mm: float,
                  zyx: tuple[float, float, float]) -> np.ndarray:
    """Solid components within ``search_mm`` of ``point`` wrapped in ground glass: their
    partial-volume halo is mostly (>= ENCLOSED_SHARE) at ground-glass level. A vessel runs on
    out of the window, or its halo fades into lung."""
    halo = _halo_mm(zyx)
    halo_reach = [int(np.ceil(h / s)) + 1 for h, s in zip(halo, zyx)]
    reach = [max(1, round(search_mm / s)) for s in zyx]
    box = tuple(slice(max(0, p - r), p + r + 1) for p, r in zip(point, reach))
    labels, _ = ndimage.label(solid_all)
    out = np.zeros(solid_all.shape, bool)
    boxes = ndimage.find_objects(labels)
    for number in np.unique(labels[box]):
        if number == 0:
            continue
        extent = boxes[number - 1]
        if any(e.start == 0 or e.stop == n for e, n in zip(extent, labels.shape)):
            continue  # runs on out of the window: a vessel
        component = labels[extent] == number
        local = tuple(slice(max(0, e.start - r), e.stop + r) for e, r in zip(extent, halo_reach))
        part = np.zeros(solid_all[local].shape, bool)
        part[tuple(slice(e.start - l.start, e.stop - l.start) for e, l in zip(extent, local))] = component
        halo_ring = _near(part, halo, zyx) & ~part
        if halo_ring.any() and float(glass[local][halo_ring].mean()) >= ENCLOSED_SHARE:
            out[local] |= part
    return out


def _half_contrast(
    sub: np.ndarray,
    ggo: np.ndarray,
    soft: np.ndarray,
    inside: np.ndarray,
    solid: np.ndarray,
    background: float,
    radius_mm: float,
    zyx: tuple[float, float, float],
    point: tuple[int, ...],
    reach: np.ndarray,
) -> tuple[np.ndarray, float]:
    """Re-outline ground glass at half its own contrast (the edge of a blurred step), when that is
    lower than the detection level.  The edge may move out by at most ``EDGE_SHIFT_MM``
    (a vessel's halo must not pull it along), and is kept only if it does not balloon."""
    level = background + SUBSOLID_CONTRAST_HU
    if not ggo.any():
        return sub, level
    half = background + max(SUBSOLID_MIN_CONTRAST_HU, 0.5 * (float(np.median(soft[ggo])) - background))
    if half >= level:
        return sub, level
    wider = (((soft >= half) & inside) & _near(sub, (EDGE_SHIFT_MM,) * 3, zyx)) | sub
    grown = _component_at(open_ball(wider, radius_mm, zyx), point, reach)
    if grown is None:
        return sub, level
    grown = _reconstruct(grown, wider, radius_mm, zyx) | solid
    if np.count_nonzero(grown) > GGO_MAX_GROWTH * np.count_nonzero(sub):
        return sub, level
    return grown, half


def _fill_slices(mask: np.ndarray) -> np.ndarray:
    """Holes filled slice by slice."""
    return ndimage.binary_fill_holes(mask, structure=_PLANE)


_PLANE = np.zeros((3, 3, 3), bool)
_PLANE[1] = ndimage.generate_binary_structure(2, 1)


def _halo_mm(zyx: tuple[float, float, float]) -> tuple[float, float, float]:
    """Partial-volume margin of a solid edge: the blur of a solid edge spreads over about 1.5 mm
    or 1.5 pixels in-plane, and three quarters of a slice (at least 1.5 mm) in z."""
    xy = max(HALO_MM, 1.5 * max(zyx[1], zyx[2]))
    return (max(HALO_MM, 0.75 * zyx[0]), xy, xy)


def _reconstruct(part: np.ndarray, whole: np.ndarray, radius_mm: float, zyx: tuple[float, float, float]) -> np.ndarray:
    """Give back what the opening shaved off the lesion's own outline (lobulation, spicules up to
    ``radius_mm``): the voxels of ``whole`` within ``radius_mm`` of ``part``."""
    if radius_mm < 0.5 * min(zyx[1:]):
        return part
    return (whole & _near(part, (radius_mm,) * 3, zyx)) | part


def _refine(
    outline: _Outline, grid: CoarseGrid, filled: np.ndarray, smooth: np.ndarray, inside: np.ndarray, ctx: _Context
) -> _Outline | None:
    """Full-resolution outline: re-threshold the fine image within one coarse voxel of the coarse masks."""
    def up(mask: np.ndarray, grow: bool = True) -> np.ndarray:
        return grid.upsample(ndimage.binary_dilation(mask) if grow else mask)

    solid = up(outline.solid) & (smooth >= SOLID_HU) & inside
    mask = solid
    if outline.subsolid:
        soft = _smooth(filled, SUBSOLID_SMOOTHING_MM, ctx.zyx)
        mask = (up(outline.mask) & (soft >= outline.sub_level) & inside) | solid
    seed_part = up(outline.mask, grow=False) & mask
    if not seed_part.any():
        return None
    labels, _ = ndimage.label(mask)
    keep = np.unique(labels[seed_part])
    mask = np.isin(labels, keep[keep > 0])
    core = up(outline.core, grow=False) & solid
    return replace(outline, mask=mask, solid=solid & mask, core=core)


# --- description: features, type, confidence --------------------------------------


def _describe(ctx: _Context, seed: Candidate, seg: _Segmentation, start: tuple[int, int, int]) -> Lesion:
    """Features, type and confidence of one segmented lesion (all on a crop around it)."""
    zyx = ctx.zyx
    out = seg.outline
    margin = [math.ceil(max(RING_MM, 0.5 * zyx[0]) / s) + 1 for s in zyx]
    box = ndimage.find_objects(out.mask.astype(np.uint8))[0]
    crop = tuple(slice(max(0, b.start - m), min(n, b.stop + m)) for b, m, n in zip(box, margin, out.mask.shape))
    mask, solid_all, inside, smooth = out.mask[crop], out.solid[crop], seg.inside[crop], seg.smooth[crop]
    n = max(1, int(np.count_nonzero(mask)))
    feats = shape_features(mask, ctx.spacing)
    mean_hu = float(seg.filled[crop][mask].mean())
    core = out.core[crop] & mask
    solid_part = solid_all & mask

    # Surroundings: a one-voxel shell outside the mask.
    shell = ndimage.binary_dilation(mask) & ~mask
    n_shell = max(1, int(np.count_nonzero(shell)))
    outside = float(np.count_nonzero(shell & ~inside)) / n_shell
    attached = float(np.count_nonzero(shell & inside & (smooth >= SOLID_HU))) / n_shell
    # Aerated lung around the lesion, in a ring ~2 mm wide: a lesion sits in lung (a hemisphere
    # on the wall still has 2/3 of its surface on lung); a piece of wall or mediastinum caught
    # in the region faces lung on one side only.
    ring = _near(mask, (max(RING_MM, 0.5 * zyx[0]), RING_MM, RING_MM), zyx) & ~mask
    aerated = ring & inside & (smooth < 0.5 * (ctx.background + SOLID_HU))
    lung_contact = float(np.count_nonzero(aerated)) / max(1, int(np.count_nonzero(ring)))

    feats.update(
        {
            "mean_hu": mean_hu,
            "contrast_hu": mean_hu - ctx.background,
            "long_axis_mm": _long_axis(mask, ctx.spacing),
            "solid_long_axis_mm": _long_axis(solid_part, ctx.spacing) if out.subsolid else 0.0,
            "depth_2d_mm": _in_plane_depth(mask, ctx.spacing),
            "solid_depth_2d_mm": _in_plane_depth(solid_part, ctx.spacing),
            "solid_fraction": float(np.count_nonzero(solid_part)) / n,
            "core_fraction": float(np.count_nonzero(core)) / n,
            "core_diameter_mm": 2.0 * equivalent_radius_mm(core, zyx),
            "core_axis_ratio": shape_features(core, ctx.spacing)["axis_ratio"] if out.subsolid and core.any() else 0.0,
            "pleural_contact": outside,
            "lung_contact": lung_contact,
            "vessel_attachment": attached,
            "air_fraction": _air_bronchogram_fraction(mask, smooth, ctx.background),
            "seed_dot_hu": seed.dot,
            "seed_line_hu": seed.line,
            "vesselness": seed.line / (seed.line + seed.dot) if seed.dot + seed.line > 0 else 0.0,
            "seed_radius_mm": seed.radius_mm,
            "opening_mm": out.opening_mm,
            "topology_grid_mm": seg.grid_mm,
            "truncated": 1.0 if out.truncated else 0.0,
            "subsolid": 1.0 if out.subsolid else 0.0,
            "parenchyma_hu": ctx.background,
            "slice_mm": zyx[0],
        }
    )
    kind = _type_of(feats)
    confidence = confidence_from(feats, kind)
    inner = ndimage.find_objects(mask.astype(np.uint8))[0]
    offset = tuple(int(st + w.start + c.start + i.start) for st, w, c, i in zip(start, seg.window, crop, inner))
    return Lesion(mask[inner].copy(), offset, kind, confidence, {k: float(v) for k, v in feats.items()})  # type: ignore[arg-type]


def _long_axis(mask: np.ndarray, spacing_xyz: tuple[float, float, float], slices: int = 3) -> float:
    """Largest axial long axis (mm) over the ``slices`` slices of largest area (the RECIST long
    axis lies on one of them in practice; :mod:`sensecare.analysis.measure` checks all)."""
    sx, sy, _ = spacing_xyz
    areas = mask.sum(axis=(1, 2))
    ks = [int(k) for k in np.argsort(-areas)[:slices] if areas[k] > 0]
    return max((axial_diameters(mask[k], (sx, sy))[0] for k in ks), default=0.0)


def _in_plane_depth(mask: np.ndarray, spacing_xyz: tuple[float, float, float]) -> float:
    """Largest in-plane inscribed radius (mm) over the axial slices.

    Vessels are at most ~8 mm in radius however they run (a disc or a band in
    the slice); masses are thicker.  Slice-wise, so slice thickness does not cap it.
    """
    if not mask.any():
        return 0.0
    sx, sy, _ = spacing_xyz
    padded = np.pad(mask, ((0, 0), (1, 1), (1, 1)))
    depth = ndimage.distance_transform_edt(padded, sampling=(1e6, sy, sx))
    return max(float(depth.max()) - 0.5 * min(sx, sy), 0.5 * min(sx, sy))


def _air_bronchogram_fraction(mask: np.ndarray, smooth: np.ndarray, background: float) -> float:
    """Share of the lesion's filled outline (slice by slice) that is air: bronchi kept open inside.

    Air bronchograms are the hallmark of consolidation (alveoli filled, airways not);
    holes are counted on axial slices so that thick slices do not matter.
    """
    filled = np.zeros_like(mask)
    for k in range(mask.shape[0]):
        if mask[k].any():
            filled[k] = ndimage.binary_fill_holes(mask[k])
    holes = filled & ~mask & (smooth < background + 100)
    return float(np.count_nonzero(holes)) / max(1, int(np.count_nonzero(filled)))


def _type_of(f: dict[str, float]) -> LesionType:
    """Fleischner-style type from density and shape (Hansell et al., Radiology 2008).

    Sub-solid lesions (mean HU at most -300, the top of the ground-glass range) are
    ground glass without a solid core and part solid with one
    (a compact core of at least 3 mm; a long one is a vessel crossing), unless the solid part alone exceeds 30 mm (a mass
    with a halo).  Solid lesions are consolidation when irregular (not round) and
    holding air bronchograms; else by :func:`solid_type`.
    """
    if f["subsolid"] and f["mean_hu"] <= GGO_MAX_HU:
        if f["solid_long_axis_mm"] > MASS_MM:
            return LesionType.MASS
        compact = f["core_axis_ratio"] <= CORE_MAX_AXIS_RATIO  # a vessel crossing is a long core
        if f["core_diameter_mm"] >= CORE_MIN_DIAMETER_MM and f["core_fraction"] > 0.02 and compact:
            return LesionType.PART_SOLID
        return LesionType.GROUND_GLASS
    if f["air_fraction"] >= AIR_BRONCHOGRAM_SHARE and f["fill_ratio"] < 0.3 and f["eq_diameter_mm"] >= 10.0:
        return LesionType.CONSOLIDATION
    return solid_type(f["long_axis_mm"], f["mean_hu"])


def solid_type(long_axis_mm: float, mean_hu: float) -> LesionType:
    """A solid lesion by size and density: solid nodule up to ``MASS_MM``, above it a mass, or
    consolidation when air keeps its mean density below ``CONSOLIDATION_MAX_MEAN_HU``."""
    if long_axis_mm <= MASS_MM:
        return LesionType.SOLID
    return LesionType.CONSOLIDATION if mean_hu < CONSOLIDATION_MAX_MEAN_HU else LesionType.MASS


def _ramp(x: float, lo: float, hi: float) -> float:
    """0 below ``lo``, 1 above ``hi``, linear between."""
    return min(1.0, max(0.0, (x - lo) / (hi - lo)))


def confidence_from(f: dict[str, float], kind: LesionType) -> float:
    """Confidence 0..1: the logistic of a sum of bounded evidence terms (logit units).

    ===============  ============================================================  ==============
    term             meaning                                                        range
    ===============  ============================================================  ==============
    prior            most candidates are not lesions                                -1.5
    compactness      ``fill_ratio`` 0.15 -> 0.5 (vessel segment -> ball)            0 .. +3
    tube             ``axis_ratio`` 2 -> 5 (the deep part is a long axis), only     0 .. -2
                     for structures thin enough to be vessels (radius < 8-16 mm)
    thickness        in-plane radius of the solid part 4 -> 16 mm (ground glass:    0 .. +2.5
                     of the whole lesion): thicker than intrapulmonary vessels
    size             log2(equivalent diameter / 8 mm)                               -2 .. +1.5
    contrast         mean HU above parenchyma, 100 -> 500 HU                        -0.5 .. +0.5
    vessel stubs     share of the outline touching other solid structure            0 .. -3
    tubular seed     line / (line + dot) Hessian response at the seed               0 .. -1
    pleural rim      thin (< 4 mm) and pressed on the region border                 0 .. -3
    wall pocket      40 -> 75 % of the outline on the region border: a piece of     0 .. -4
                     chest wall or mediastinum caught in the region
    no lung          less than 5 -> 20 % aerated lung in a 2 mm ring around it      0 .. -2
    truncated        still joined to something larger than its window               -2.5
    thin-slice GGO   sub-solid and smaller than 1 -> 1.5 slice spacings: may be     0 .. -1.5
                     the partial volume of a small solid structure
    border haze      sub-solid with 15 -> 45 % of its outline on the region         0 .. -2
                     border: partial volume of an oblique wall or mediastinum
    ===============  ============================================================  ==============

    Weights are set from physics and synthetic cases, not fitted to the test scans;
    the result is monotone in each term, so a higher confidence always means more
    of the evidence above.  It is "calibrated-ish": 0.5 is an even balance of the
    evidence, and in the cases examined (docs/analysis-lesions.md) findings above
    about 0.8 were real or hard mimics (hilar vessel bundles).
    """
    thickness = f["depth_2d_mm"] if kind is LesionType.GROUND_GLASS else f["solid_depth_2d_mm"]
    thin = 1.0 - _ramp(f["max_depth_mm"], 0.0, 4.0)
    vessel_calibre = 1.0 - _ramp(thickness, 8.0, 16.0)
    score = -1.5
    score += 3.0 * _ramp(f["fill_ratio"], 0.15, 0.5)
    score -= 2.0 * _ramp(f["axis_ratio"], 2.0, 5.0) * vessel_calibre
    score += 2.5 * _ramp(thickness, 4.0, 16.0)
    score += min(1.5, max(-2.0, math.log2(max(f["eq_diameter_mm"], 0.1) / 8.0)))
    score += _ramp(f["contrast_hu"], 100.0, 500.0) - 0.5
    score -= 3.0 * min(1.0, f["vessel_attachment"])
    score -= 1.0 * f["vesselness"]
    score -= 3.0 * f["pleural_contact"] * thin
    score -= 4.0 * _ramp(f["pleural_contact"], 0.4, 0.75)
    score -= 2.0 * (1.0 - _ramp(f["lung_contact"], 0.05, 0.2))
    score -= 2.5 * f["truncated"]
    if kind in (LesionType.GROUND_GLASS, LesionType.PART_SOLID):
        score -= 1.5 * (1.0 - _ramp(f["eq_diameter_mm"], f["slice_mm"], 1.5 * f["slice_mm"]))
        score -= 2.0 * _ramp(f["pleural_contact"], 0.15, 0.45)
    return float(1.0 / (1.0 + math.exp(-score)))


def merge_overlapping(lesions: list[Lesion]) -> list[Lesion]:
    """Drop a lesion whose voxels lie mostly inside a more confident one; most confident first."""
    ranked = sorted(lesions, key=lambda les: -les.confidence)
    kept: list[Lesion] = []
    for les in ranked:
        if any(_overlap(les, other) > 0.5 for other in kept):
            continue
        kept.append(les)
    return kept


def _overlap(a: Lesion, b: Lesion) -> float:
    """Share of ``a``'s voxels inside ``b``."""
    lo = [max(oa, ob) for oa, ob in zip(a.offset, b.offset)]
    hi = [min(oa + na, ob + nb) for oa, ob, na, nb in zip(a.offset, b.offset, a.mask.shape, b.mask.shape)]
    if any(h <= l for l, h in zip(lo, hi)):
        return 0.0
    sa = tuple(slice(l - o, h - o) for l, h, o in zip(lo, hi, a.offset))
    sb = tuple(slice(l - o, h - o) for l, h, o in zip(lo, hi, b.offset))
    inter = int(np.count_nonzero(a.mask[sa] & b.mask[sb]))
    return inter / max(1, int(np.count_nonzero(a.mask)))

"""Lung segmentation of chest CT: right and left lung, airways removed, lesion search region.

Classical and deterministic (no model weights), built for what real scans
throw at it: 8 mm slices or 0.6 mm ones, partial lung coverage, sharp
reconstruction kernels, patients off-centre, arms up or down, any field of
view.  All heavy work runs on a block-averaged ~1.5 x 1.5 x 3 mm grid and
the masks are repeated back onto the CT grid exactly
(:mod:`sensecare.analysis.morphology`).  Slices are assumed roughly axial
(rows run antero-posterior); sides come from the LPS geometry, never from
array order.

1. **Body**: tissue above -500 HU, opened per slice (3 mm) so the table and
   blankets come off, the largest blob of each slice, holes filled.  Where
   the opening cut a thin chest wall, the air the body still walls in (a
   tissue hole mostly between body parts) is lung and joins it.
2. **Lung air**: below -400 HU inside the body, 3-D components; one counts as
   lung when big enough and its median HU is clearly above the air outside
   the patient (aerated parenchyma holds tissue; bowel gas, sinuses and
   trapped air do not).  None: :class:`~sensecare.errors.NoLungsFoundError`.
3. **Airways**: the trachea is a round pure-air blob near the body midline in
   the most superior lung slices that is its slice's whole air blob (not a
   bulla); a 3-D region grow under a rising threshold stops before the tree
   leaks into parenchyma.  The lumen and a 3 mm rim leave the lungs; what a
   lung encloses in its slice comes back by hole filling, so ``airways`` ends
   as trachea plus main and lobar bronchi.
4. **Right / left**: 3-D components are sided by LPS x against the midline
   (trachea, else body centre).  One with a real share on both sides (lungs
   touching at a junction line) is split slice by slice: erode the blob until
   it falls apart on both sides, give each pixel to the nearest piece.
   Holes are filled per slice, except diaphragm domes (below).
5. **Region** (per lung, per slice), the union of:

   * the lung closed by a 12 mm disk (small concavities, hilar vessels,
     small juxtamediastinal nodules), holes filled;
   * *pleural pockets*: convex-hull pockets that lie beyond the lungs as
     seen from the body's centre (the ray from the centre through them meets
     no lung further out): a bite a tumour makes at the chest wall.  Pockets
     facing the centre (heart, mediastinum) are left out;
   * *gutters*: soft tissue on an image row between the lung and the
     vertebral body (and, on the right only, the trachea and right bronchi,
     which the right lung normally touches; the left one meets the aorta),
     at most 60 mm wide and with no lung behind it;
   * *followed lesions*: a compact solid blob the region already holds in one
     slice is followed into the neighbouring slices, as far as it is wide,
     where the same lesion abuts the mediastinum and shows as no hole or
     pocket (twice, so a hilar mass is tracked over several slices).

   **Diaphragm domes** are kept out of all of this: a large hole or pocket
   with no lung beneath it, less than 10 cm above the lung base, is liver or
   spleen seen through the lung, not a lesion.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage as ndi

from sensecare.analysis.morphology import (
    CROSS_2D,
    CROSS_3D,
    SQUARE_2D,
    block_mean,
    closing_disk_2d,
    convex_hull_2d,
    dilate_disk_2d,
    erode_disk_2d,
    fill_holes_2d,
    fill_holes_3d,
    hull_image,
    largest_component_2d,
    upsample_repeat,
)
from sensecare.dicom.volume import Volume
from sensecare.errors import NoLungsFoundError

logger = logging.getLogger(__name__)

__all__ = ["LEFT", "RIGHT", "LungSegmentation", "NoLungsFoundError", "segment_lungs"]

#: Label of the patient's right lung in :attr:`LungSegmentation.lungs`.
RIGHT = 1
#: Label of the patient's left lung.
LEFT = 2

# --- parameters (mm, HU, ml) -------------------------------------------------------

#: In-plane and through-plane size aimed at for the working grid.
WORK_XY_MM, WORK_Z_MM = 1.5, 3.0
#: HU clipping before block averaging (reconstruction-circle padding, metal).
CLIP_HU = (-1024.0, 3071.0)
#: Body: above this; opened by this radius to drop the table and blankets.
BODY_HU, BODY_OPEN_MM = -500.0, 3.0
#: A hole of the tissue mask left outside the opened body, at least this large and with at least
#: this share of it between body pixels on its image row or column, is lung behind a chest wall
#: too thin for the opening.
WALLED_MIN_MM2, WALLED_SHARE = 400.0, 0.3
#: Air inside the body.
AIR_HU = -400.0
#: A lung component has at least this volume and a median this far above outside air.
MIN_COMPONENT_ML, LUNG_CONTRAST_HU = 15.0, 50.0
#: Fewer lung millilitres than this in all means "no lungs in this scan".
MIN_LUNGS_ML = 50.0
#: Trachea: pure air (this far above outside air at most), this area, this near the midline.
TRACHEA_AIR_HU = 150.0
TRACHEA_AREA_MM2 = (40.0, 700.0)
TRACHEA_MIDLINE_MM = 30.0
#: Trachea search depth below the lungs' superior end.
TRACHEA_SEARCH_MM = 90.0
#: Airway grow thresholds above outside air, tried in order; leak limits.
AIRWAY_STEPS_HU = (40.0, 70.0, 100.0, 130.0, 160.0, 190.0, 220.0)
AIRWAY_MAX_ML, AIRWAY_JUMP, AIRWAY_WIDEST_MM2 = 250.0, 2.0, 2500.0
AIRWAY_BOX_MM = 110.0
AIRWAY_RIM_MM = 3.0
#: A component with at least this share on each side of the midline is two touching lungs.
STRADDLE_SHARE = 0.15
#: Region: closing radius, bone limit, largest pleural pocket added.
REGION_CLOSING_MM = 12.0
REGION_BONE_HU = 250.0
REGION_POCKET_MAX_MM2 = 4000.0
#: Widest soft-tissue bridge between a lung and the spine (or, on the right, the trachea).
REGION_BRIDGE_MM = 60.0
#: Followed lesions: solid (above this HU) lung holes of this area seed; footprint margin; z reach cap.
SEED_MIN_HU, SEED_MIN_MM2, SEED_MARGIN_MM, SEED_REACH_MM = -300.0, 200.0, 8.0, 30.0
#: A seed fills at least this share of its convex hull (a lesion, not a strip along the pleura);
#: what one pass adds seeds the next.
SEED_SOLIDITY, SEED_PASSES = 0.6, 2
_ANGLE_BINS = 720
#: A lung hole at least this large, more than this share of it without lung beneath and at
#: most this high above the lung base, is a diaphragm dome.
DOME_MIN_MM2, DOME_SHARE, DOME_HEIGHT_MM = 300.0, 0.5, 100.0
#: The scan's inferior end slice is "abdomen" when lung covers less than this share of the body there.
DOME_BASE_SHARE = 0.2
#: Vertebra: bone above this HU, within this band of the body's left-right centre,
#: at least this area; its body is this deep from the anterior edge.
SPINE_HU, SPINE_BAND_MM, SPINE_MIN_MM2, SPINE_BODY_DEPTH_MM = 180.0, 40.0, 250.0, 30.0
#: More working slices than this and slices are averaged in pairs (or more).
MAX_WORK_SLICES = 140

ArrayLike = np.ndarray | float | int


@dataclass(frozen=True, eq=False)
class LungSegmentation:
    """Lungs, airways, lesion search region and body of one CT volume, on its own grid.

    Attributes
    ----------
    lungs : numpy.ndarray
        uint8 (z, y, x): 0 outside, :data:`RIGHT` (1) the patient's right
        lung (smaller LPS x), :data:`LEFT` (2) the left one.  Vessels and
        nodules enclosed by lung in their slice are inside.
    airways : numpy.ndarray
        bool: trachea and main/lobar bronchi lumen taken out of the lungs.
        Repeated onto the CT grid when first read, like ``body``: the
        analysis never reads either, and each is a CT-sized array.
    region : numpy.ndarray
        bool: the lungs plus what a lesion may occupy (holes, juxtapleural
        and juxtamediastinal concavities); where lesions are searched and
        opacity is scored.
    body : numpy.ndarray
        bool: the patient (table and outside air removed).
    right_volume_ml, left_volume_ml : float
        Volumes of the two labels (what the scan covers).
    region_volume_ml, airway_volume_ml : float
        Volumes of ``region`` and ``airways``.
    trachea_lps : tuple of float or None
        LPS (mm) of the trachea seed, None when no trachea was found (scan
        starting below the carina).
    air_hu : float
        Median HU of the air outside the patient (the reference for "pure air").
    working_spacing : tuple of float
        (x, y, z) mm of the grid the morphology ran on.
    seconds : float
        Wall time of :func:`segment_lungs`.
    """

    lungs: np.ndarray
    region: np.ndarray
    right_volume_ml: float
    left_volume_ml: float
    region_volume_ml: float
    airway_volume_ml: float
    trachea_lps: tuple[float, float, float] | None
    air_hu: float
    working_spacing: tuple[float, float, float]
    seconds: float
    working_airways: np.ndarray = field(repr=False)  # on the working grid
    working_body: np.ndarray = field(repr=False)
    working_factors: tuple[int, int, int] = (1, 1, 1)  # (z, y, x) block factors of the working grid

    @functools.cached_property
    def airways(self) -> np.ndarray:
        return upsample_repeat(self.working_airways, self.working_factors, self.lungs.shape)

    @functools.cached_property
    def body(self) -> np.ndarray:
        return upsample_repeat(self.working_body, self.working_factors, self.lungs.shape)


@dataclass(frozen=True)
class _Grid:
    """The working grid: block factors, spacing and how its indices map to LPS."""

    factors: tuple[int, int, int]  # (z, y, x)
    spacing: tuple[float, float, float]  # (x, y, z) mm
    fine_shape: tuple[int, int, int]
    affine: np.ndarray  # 3x4: LPS = affine @ (k, j, i, 1), coarse voxel centres

    @classmethod
    def for_volume(cls, volume: Volume) -> _Grid:
        sx, sy, sz = volume.spacing
        nz = volume.array.shape[0]
        fx = max(1, round(WORK_XY_MM / sx))
        fy = max(1, round(WORK_XY_MM / sy))
        fz = max(1, int(WORK_Z_MM / sz), math.ceil(nz / MAX_WORK_SLICES))
        scale = np.asarray(volume.direction, dtype=float) * np.asarray(volume.spacing, dtype=float)
        f = np.array([fx, fy, fz], dtype=float)
        origin = np.asarray(volume.origin, dtype=float) + scale @ ((f - 1) / 2.0)
        cols = scale * f  # columns: coarse i, j, k steps
        affine = np.column_stack([cols[:, 2], cols[:, 1], cols[:, 0], origin])
        return cls((fz, fy, fx), (sx * fx, sy * fy, sz * fz), tuple(volume.array.shape), affine)  # type: ignore[arg-type]

    @property
    def pixel_mm(self) -> float:
        return (self.spacing[0] + self.spacing[1]) / 2.0

    @property
    def pixel_mm2(self) -> float:
        return self.spacing[0] * self.spacing[1]

    @property
    def voxel_ml(self) -> float:
        return abs(float(np.linalg.det(self.affine[:, :3]))) / 1000.0

    @property
    def superior(self) -> int:
        """+1 when a larger slice index is more superior (LPS z grows), else -1."""
        return 1 if self.affine[2, 0] >= 0 else -1

    def px(self, mm: float) -> int:
        """A length in mm as a whole number of in-plane pixels (at least 1)."""
        return max(1, round(mm / self.pixel_mm))

    def lps(self, axis: int, k: ArrayLike, j: ArrayLike, i: ArrayLike) -> np.ndarray:
        """LPS coordinate ``axis`` (0 x, 1 y, 2 z) of coarse voxel centres."""
        ck, cj, ci, c0 = self.affine[axis]
        return c0 + ck * np.asarray(k, dtype=float) + cj * np.asarray(j, dtype=float) + ci * np.asarray(i, dtype=float)

    def lps_x(self, k: ArrayLike, j: ArrayLike, i: ArrayLike) -> np.ndarray:
        return self.lps(0, k, j, i)

    def plane(self, axis: int, k: int, shape: tuple[int, int]) -> np.ndarray:
        """LPS coordinate ``axis`` of every pixel of slice ``k`` (float32, shape ``shape``)."""
        ck, cj, ci, c0 = self.affine[axis]
        rows = (c0 + ck * k + cj * np.arange(shape[0], dtype=np.float64)).astype(np.float32)
        cols = (ci * np.arange(shape[1], dtype=np.float64)).astype(np.float32)
        return rows[:, None] + cols[None, :]

    def centroid_lps(self, axis: int, k: int, mask2d: np.ndarray) -> float:
        """LPS coordinate ``axis`` of the centroid of a slice mask (affine, so the mean of indices will do)."""
        count = float(np.count_nonzero(mask2d))
        j = float(mask2d.sum(axis=1) @ np.arange(mask2d.shape[0])) / count
        i = float(mask2d.sum(axis=0) @ np.arange(mask2d.shape[1])) / count
        return float(self.lps(axis, k, j, i))

    def fine_ml(self, mask: np.ndarray) -> float:
        """Volume (ml) ``mask`` covers once repeated onto the CT grid (edge blocks are partial)."""
        weights = []
        for n, f in zip(self.fine_shape, self.factors):
            w = np.full(-(-n // f), f, dtype=np.float64)
            w[-1] = n - f * (w.size - 1)
            weights.append(w)
        per_slice = np.einsum("kji,j,i->k", mask.astype(np.uint8), weights[1], weights[2])
        fine_voxel = self.voxel_ml / float(np.prod(self.factors))
        return float(per_slice @ weights[0]) * fine_voxel


# --- public API --------------------------------------------------------------------


def segment_lungs(volume: Volume) -> LungSegmentation:
    """Segment the lungs of a chest CT into right and left, remove the airways, build the lesion region.

    Parameters
    ----------
    volume : Volume
        HU volume; any orientation whose slices are roughly axial.

    Returns
    -------
    LungSegmentation

    Raises
    ------
    NoLungsFoundError
        No lung-like air region (a head, neck or abdomen-only scan, or no air at all).
    """
    start = time.perf_counter()
    grid = _Grid.for_volume(volume)
    hu = block_mean(volume.array, grid.factors, clip=CLIP_HU)

    body = _body(hu, grid)
    air_hu = _outside_air_hu(hu, body)
    lung_air = _lung_air(hu, body, air_hu, grid, volume)
    smooth = ndi.gaussian_filter(hu, sigma=(0.0, 0.7, 0.7))

    midline_x = _body_midline_x(body, lung_air, grid)
    seed = _find_trachea(smooth, lung_air, body, air_hu, grid, midline_x)
    airways = np.zeros_like(lung_air)
    trachea_lps: tuple[float, float, float] | None = None
    if seed is not None:
        airways = _grow_airways(smooth, lung_air, seed, air_hu, grid)
        k, j, i = (float(np.mean(a)) for a in np.nonzero(seed))
        trachea_lps = (float(grid.lps(0, k, j, i)), float(grid.lps(1, k, j, i)), float(grid.lps(2, k, j, i)))
        midline_x = trachea_lps[0]
    rim = dilate_disk_2d(airways, grid.px(AIRWAY_RIM_MM), within=lung_air)

    aerated = lung_air & ~rim
    sides = _sides(aerated, grid, midline_x)
    ground = _dome_ground(sides > 0, body, grid)
    labels = _fill_labels(sides, ground, grid)
    airways = rim & (labels == 0)
    region = _region(labels, aerated, airways, ground, hu, body, grid, midline_x)

    shape = volume.array.shape
    volumes = [grid.fine_ml(m) for m in (labels == RIGHT, labels == LEFT, region, airways)]
    outputs = [upsample_repeat(m, grid.factors, shape) for m in (labels, region)]
    result = LungSegmentation(
        lungs=outputs[0],
        region=outputs[1],
        right_volume_ml=volumes[0],
        left_volume_ml=volumes[1],
        region_volume_ml=volumes[2],
        airway_volume_ml=volumes[3],
        trachea_lps=trachea_lps,
        air_hu=air_hu,
        working_spacing=grid.spacing,
        seconds=time.perf_counter() - start,
        working_airways=airways,
        working_body=body,
        working_factors=grid.factors,
    )
    logger.info(
        "lungs: right %.0f ml, left %.0f ml, region %.0f ml, airways %.0f ml, trachea %s, %.2f s",
        result.right_volume_ml, result.left_volume_ml, result.region_volume_ml,
        result.airway_volume_ml, "found" if trachea_lps else "not found", result.seconds,
    )
    return result


# --- body and air ------------------------------------------------------------------


def _body(hu: np.ndarray, grid: _Grid) -> np.ndarray:
    """Largest opened tissue blob per slice, edges restored, holes (lungs, bowel) filled.

    Found on a grid twice as coarse again (~3 mm; the body is big and its
    exact edge matters little), then its outer rim is re-cut at working
    resolution by the tissue threshold.  The opening erodes at least one
    coarse pixel, so it also cuts a chest wall thinner than about three of
    them (a thin patient, a coarse matrix) and the lung behind it is no hole
    of the body; in the slices where much air lies outside the body yet
    between its parts, such lungs come back (:func:`_walled_in`).
    """
    tissue = hu > BODY_HU
    half = block_mean(hu, (1, 2, 2)) > BODY_HU
    r = max(1, round(BODY_OPEN_MM / (2 * grid.pixel_mm)))
    core = largest_component_2d(dilate_disk_2d(erode_disk_2d(half, r), r))
    body = fill_holes_2d(dilate_disk_2d(core, r + 1, within=half))
    cut = ~half & ~body & (_between_ends(body, 1) | _between_ends(body, 2))
    slices = np.flatnonzero(np.count_nonzero(cut, axis=(1, 2)) * 4.0 * grid.pixel_mm2 >= WALLED_MIN_MM2)
    inner = upsample_repeat(erode_disk_2d(body, 1), (1, 2, 2), hu.shape)
    body = upsample_repeat(body, (1, 2, 2), hu.shape) & (inner | tissue)
    if slices.size:
        body[slices] = _walled_in(tissue[slices], body[slices], grid)
    return body


def _walled_in(tissue: np.ndarray, body: np.ndarray, grid: _Grid) -> np.ndarray:
    """``body`` plus the tissue holes it walls in: lungs behind a chest wall the opening cut.

    A hole of the tissue mask (air enclosed by tissue, however thin) of at
    least :data:`WALLED_MIN_MM2`, with at least :data:`WALLED_SHARE` of its
    pixels between body pixels on their image row or column, joins the body
    together with the tissue around it.  The table's foam core lies beside
    the body, never between its parts; small skin-fold pockets are too small.
    """
    holes = fill_holes_2d(tissue) & ~tissue & ~body
    labels, n = ndi.label(holes, structure=CROSS_2D)
    if n == 0:
        return body
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    between = holes & (_between_ends(body, 1) | _between_ends(body, 2))
    enclosed = np.bincount(labels[between], minlength=n + 1)
    keep = (sizes * grid.pixel_mm2 >= WALLED_MIN_MM2) & (enclosed >= WALLED_SHARE * sizes)
    keep[0] = False
    if not keep.any():
        return body
    walled = keep[labels]
    return fill_holes_2d(body | walled | (dilate_disk_2d(walled, 1) & tissue))


def _between_ends(mask: np.ndarray, axis: int) -> np.ndarray:
    """Pixels between the first and the last ``mask`` pixel of their line along ``axis`` (1: image column, 2: row)."""
    n = mask.shape[axis]
    flipped = np.flip(mask, axis=axis)
    present = mask.any(axis=axis, keepdims=True)
    first = np.where(present, mask.argmax(axis=axis).reshape(present.shape), n)
    last = np.where(present, n - 1 - flipped.argmax(axis=axis).reshape(present.shape), -1)
    index = np.arange(n).reshape([n if a == axis else 1 for a in range(mask.ndim)])
    return (index >= first) & (index <= last)


def _outside_air_hu(hu: np.ndarray, body: np.ndarray) -> float:
    """Median HU of air around the patient; -1000 when the field of view holds none."""
    outside = hu[~body][::7]
    outside = outside[outside < -800.0]
    if outside.size < 100:
        return -1000.0
    return float(np.clip(np.median(outside), -1024.0, -900.0))


def _lung_air(hu: np.ndarray, body: np.ndarray, air_hu: float, grid: _Grid, volume: Volume) -> np.ndarray:
    """Air components inside the body that look like aerated lung (see module docstring)."""
    air = body & (hu < AIR_HU)
    labels, n = ndi.label(air, structure=CROSS_3D)
    sizes = np.bincount(labels.ravel(), minlength=n + 1) * grid.voxel_ml
    boxes = ndi.find_objects(labels)
    keep = np.zeros(n + 1, dtype=bool)
    seen: list[str] = []
    for index in np.flatnonzero(sizes >= MIN_COMPONENT_ML):
        if index == 0:
            continue
        box = boxes[index - 1]
        median = float(np.median(hu[box][labels[box] == index]))
        lung_like = median >= air_hu + LUNG_CONTRAST_HU
        keep[index] = lung_like
        seen.append(f"{sizes[index]:.0f} ml at median {median:.0f} HU")
    total = float(sizes[keep].sum())
    if total < MIN_LUNGS_ML:
        detail = "; ".join(seen[:4]) if seen else f"no air region of at least {MIN_COMPONENT_ML:.0f} ml"
        raise NoLungsFoundError(
            f"series {volume.series_instance_uid}: no lung-like air region found "
            f"({total:.0f} ml of lung-like air, {MIN_LUNGS_ML:.0f} ml needed; outside air at "
            f"{air_hu:.0f} HU; candidates: {detail})"
        )
    return keep[labels]


def _body_midline_x(body: np.ndarray, lung_air: np.ndarray, grid: _Grid) -> float:
    """LPS x of the body centre over the slices that hold lung (fallback midline)."""
    slices = np.flatnonzero(lung_air.any(axis=(1, 2)))
    part = body[slices]
    count = float(np.count_nonzero(part))
    k = float(part.sum(axis=(1, 2)) @ slices) / count
    j = float(part.sum(axis=(0, 2)) @ np.arange(part.shape[1])) / count
    i = float(part.sum(axis=(0, 1)) @ np.arange(part.shape[2])) / count
    return float(grid.lps_x(k, j, i))


# --- airways -----------------------------------------------------------------------


def _find_trachea(
    smooth: np.ndarray, lung_air: np.ndarray, body: np.ndarray, air_hu: float, grid: _Grid, midline_x: float
) -> np.ndarray | None:
    """Seed mask (one blob in one slice) in the trachea, or None.

    Searched from the most superior lung slice down: a pure-air blob of
    tracheal size near the body midline that is (nearly) its slice's whole
    air component, i.e. not a bulla inside a lung.
    """
    slices = np.flatnonzero(lung_air.any(axis=(1, 2)))
    order = slices[::-1] if grid.superior > 0 else slices
    depth = max(3, math.ceil(TRACHEA_SEARCH_MM / grid.spacing[2]))
    lo, hi = (a / grid.pixel_mm2 for a in TRACHEA_AREA_MM2)
    for k in order[:depth]:
        pure = lung_air[k] & (smooth[k] < air_hu + TRACHEA_AIR_HU)
        blobs, n = ndi.label(pure, structure=SQUARE_2D[1])
        if n == 0:
            continue
        whole, _ = ndi.label(lung_air[k], structure=SQUARE_2D[1])
        whole_sizes = np.bincount(whole.ravel())
        sizes = np.bincount(blobs.ravel(), minlength=n + 1)
        body_cols = np.flatnonzero(body[k].any(axis=0))
        mid = grid.centroid_lps(0, k, body[k]) if body_cols.size else midline_x
        width = (body_cols[-1] - body_cols[0] + 1) * grid.spacing[0] if body_cols.size else 0.0
        best: tuple[float, int] | None = None
        for index, box in enumerate(ndi.find_objects(blobs), start=1):
            if box is None or not lo <= sizes[index] <= hi:
                continue
            h, w = box[0].stop - box[0].start, box[1].stop - box[1].start
            if max(h, w) > 2.2 * min(h, w) or sizes[index] < 0.45 * h * w:
                continue
            rows, cols = np.nonzero(blobs[box] == index)
            rows, cols = rows + box[0].start, cols + box[1].start
            owner = whole[rows[0], cols[0]]
            if whole_sizes[owner] > 2.5 * sizes[index]:
                continue
            offset = abs(float(np.mean(grid.lps_x(k, rows, cols))) - mid)
            if offset > max(TRACHEA_MIDLINE_MM, 0.12 * width):
                continue
            if best is None or offset < best[0]:
                best = (offset, index)
        if best is not None:
            seed = np.zeros_like(lung_air)
            seed[k] = blobs == best[1]
            return seed
    return None


def _grow_airways(smooth: np.ndarray, lung_air: np.ndarray, seed: np.ndarray, air_hu: float, grid: _Grid) -> np.ndarray:
    """Trachea and bronchi: region grow from ``seed`` under a rising threshold, stopped before a leak.

    A step leaks when the tree passes :data:`AIRWAY_MAX_ML`, more than
    doubles at once, or one slice of it is wider than any airway.  When even
    the first step leaks (emphysema), the trachea is tracked slice by slice.
    """
    _, j, i = np.nonzero(seed)
    dy, dx = (math.ceil(AIRWAY_BOX_MM / s) for s in (grid.spacing[1], grid.spacing[0]))
    box = (
        slice(None),
        slice(max(0, int(j.min()) - dy), int(j.max()) + dy + 1),
        slice(max(0, int(i.min()) - dx), int(i.max()) + dx + 1),
    )
    air, img, sd = lung_air[box], smooth[box], seed[box]
    best: np.ndarray | None = None
    previous_ml = 0.0
    for step in AIRWAY_STEPS_HU:
        labels, _ = ndi.label((air & (img < air_hu + step)) | sd, structure=CROSS_3D)
        ids = np.unique(labels[sd])
        grown = np.isin(labels, ids[ids > 0])
        volume_ml = float(np.count_nonzero(grown)) * grid.voxel_ml
        widest_mm2 = float(grown.sum(axis=(1, 2)).max()) * grid.pixel_mm2
        jump = best is not None and volume_ml > AIRWAY_JUMP * previous_ml + 10.0
        if volume_ml > AIRWAY_MAX_ML or jump or widest_mm2 > AIRWAY_WIDEST_MM2:
            logger.debug("airways: leak at +%.0f HU (%.0f ml, widest slice %.0f mm2)", step, volume_ml, widest_mm2)
            break
        best, previous_ml = grown, volume_ml
    if best is None:
        best = _track_trachea(air & (img < air_hu + AIRWAY_STEPS_HU[0]), sd, grid)
    out = np.zeros_like(lung_air)
    out[box] = best
    return out


def _track_trachea(air: np.ndarray, seed: np.ndarray, grid: _Grid) -> np.ndarray:
    """Follow the seed blob inferiorly, slice by slice, while it stays tube-sized."""
    out = seed.copy()
    k = int(np.flatnonzero(seed.any(axis=(1, 2)))[0])
    previous = seed[k]
    limit = 2.0 * float(np.count_nonzero(previous))
    step = -grid.superior
    k += step
    while 0 <= k < air.shape[0]:
        blobs, _ = ndi.label(air[k], structure=SQUARE_2D[1])
        ids = np.unique(blobs[previous])
        current = np.isin(blobs, ids[ids > 0])
        if not current.any() or np.count_nonzero(current) > limit:
            break
        out[k] = current
        previous = current
        k += step
    return out


# --- right / left ------------------------------------------------------------------


def _sides(lung: np.ndarray, grid: _Grid, midline_x: float) -> np.ndarray:
    """Label 3-D components RIGHT/LEFT by LPS x; split the ones straddling the midline."""
    labels, n = ndi.label(lung, structure=CROSS_3D)
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    out = np.zeros(lung.shape, dtype=np.uint8)
    min_voxels = max(1.0 / grid.voxel_ml, 0.002 * sizes[1:].sum())
    for index, box in enumerate(ndi.find_objects(labels), start=1):
        if box is None or sizes[index] < min_voxels:
            continue
        part = labels[box] == index
        k, j, i = np.nonzero(part)
        x = grid.lps_x(k + box[0].start, j + box[1].start, i + box[2].start)
        right_share = float(np.mean(x < midline_x))
        if min(right_share, 1.0 - right_share) < STRADDLE_SHARE:
            out[box][part] = RIGHT if right_share >= 0.5 else LEFT
            continue
        _split_straddling(part, out[box], grid, midline_x, box)
    return out


def _split_straddling(part: np.ndarray, out: np.ndarray, grid: _Grid, midline_x: float, box: tuple[slice, ...]) -> None:
    """Split touching lungs slice by slice at their thinnest junction (writes into ``out``)."""
    max_steps = grid.px(20.0)
    z0, y0, x0 = (b.start for b in box)
    for z in np.flatnonzero(part.any(axis=(1, 2))):
        blobs, _ = ndi.label(part[z], structure=SQUARE_2D[1])
        for index, sub in enumerate(ndi.find_objects(blobs), start=1):
            blob = blobs[sub] == index
            rows, cols = np.mgrid[sub[0], sub[1]]
            right = grid.lps_x(z + z0, rows + y0, cols + x0) < midline_x
            share = float(np.mean(right[blob]))
            target = out[z][sub]
            if min(share, 1.0 - share) < STRADDLE_SHARE or blob.sum() < 20:
                target[blob] = RIGHT if share >= 0.5 else LEFT
                continue
            markers = _erosion_markers(blob, right & blob, max_steps)
            if markers is None:
                target[blob] = np.where(right, RIGHT, LEFT).astype(np.uint8)[blob]
                continue
            _, (nr, nc) = ndi.distance_transform_edt(markers == 0, return_indices=True)
            target[blob] = markers[nr, nc][blob]


def _erosion_markers(blob: np.ndarray, right: np.ndarray, max_steps: int) -> np.ndarray | None:
    """Erode a 2-D blob until every sizeable piece lies on one side of the midline.

    ``right`` tells, per pixel, whether it is on the patient's right.  Returns
    the last eroded pieces labelled RIGHT/LEFT, or None when erosion never
    separates the sides.
    """
    eroded = blob
    for step in range(max_steps):
        eroded = ndi.binary_erosion(eroded, structure=SQUARE_2D[1] if step % 2 else CROSS_2D[1])
        pieces, n = ndi.label(eroded, structure=SQUARE_2D[1])
        if n == 0:
            return None
        if n < 2:
            continue
        sizes = np.bincount(pieces.ravel(), minlength=n + 1)[1:]
        on_right = np.bincount(pieces[right], minlength=n + 1)[1:]
        share = on_right / np.maximum(sizes, 1)
        sizeable = sizes >= 0.05 * sizes.sum()
        mixed = sizeable & (np.minimum(share, 1.0 - share) >= 0.1)
        side_right = share >= 0.5
        if mixed.any() or not (sizeable & side_right).any() or not (sizeable & ~side_right).any():
            continue
        lut = np.zeros(n + 1, dtype=np.uint8)
        lut[1:] = np.where(side_right, RIGHT, LEFT)
        return lut[pieces]
    return None


def _fill_labels(labels: np.ndarray, ground: np.ndarray, grid: _Grid) -> np.ndarray:
    """Fill each lung's holes per slice (vessels, enclosed nodules) but not diaphragm domes."""
    out = labels.copy()
    for side in (RIGHT, LEFT):
        mask = labels == side
        filled = _fill_holes_but_domes(mask, ground, grid)
        out[filled & (out == 0)] = side
    return out


def _dome_ground(lungs: np.ndarray, body: np.ndarray, grid: _Grid) -> np.ndarray:
    """Pixels a diaphragm dome may occupy.

    No lung beneath them in their (j, i) column, and at most
    :data:`DOME_HEIGHT_MM` above the lungs' lowest slice, provided the scan
    reaches the diaphragm: its lowest lung slice is above the scan's inferior
    end, or that end is mostly abdomen (a scan stopping mid-chest shows no dome).
    """
    order = lungs if grid.superior > 0 else lungs[::-1]  # inferior first
    seen = np.maximum.accumulate(order, axis=0)
    below = np.zeros_like(seen)
    below[1:] = seen[:-1]
    with_lung = np.flatnonzero(order.any(axis=(1, 2)))
    zone = np.zeros(order.shape[0], dtype=bool)
    if with_lung.size:
        bottom = 0 if grid.superior > 0 else lungs.shape[0] - 1
        body_area = max(1, int(np.count_nonzero(body[bottom])))
        reaches_abdomen = with_lung[0] > 0 or np.count_nonzero(lungs[bottom]) < DOME_BASE_SHARE * body_area
        if reaches_abdomen:
            top = with_lung[0] + int(DOME_HEIGHT_MM / grid.spacing[2])
            zone[with_lung[0] : top + 1] = True
    ground = ~below & zone[:, None, None]
    return ground if grid.superior > 0 else ground[::-1]


def _fill_holes_but_domes(mask: np.ndarray, dome_ground: np.ndarray, grid: _Grid) -> np.ndarray:
    """Per-slice hole filling that leaves out diaphragm domes (see :func:`_domes`)."""
    filled = _boxed(fill_holes_2d, mask, 1)
    return filled & ~_domes(filled & ~mask, dome_ground, grid)


def _domes(candidates: np.ndarray, dome_ground: np.ndarray, grid: _Grid) -> np.ndarray:
    """Large per-slice blobs of ``candidates`` mostly on ``dome_ground`` (see :func:`_dome_ground`).

    A diaphragm dome cut near its top shows as an island of liver or spleen
    inside the lung, or as a pocket of the lung's hull; unlike a nodule or a
    tumour, nothing below it is lung.
    """
    out = np.zeros_like(candidates)
    box = _bbox(candidates & dome_ground)
    if box is None:
        return out
    box = (box[0], slice(None), slice(None))  # whole slices: a blob may reach beyond the grounded part
    blobs, n = ndi.label(candidates[box], structure=SQUARE_2D)
    sizes = np.bincount(blobs.ravel(), minlength=n + 1)[1:]
    grounded = np.bincount(blobs[dome_ground[box]], minlength=n + 1)[1:]
    dome = (sizes * grid.pixel_mm2 >= DOME_MIN_MM2) & (grounded > DOME_SHARE * sizes)
    if dome.any():
        lut = np.zeros(n + 1, dtype=bool)
        lut[1:] = dome
        out[box] = lut[blobs]
    return out


# --- lesion region -----------------------------------------------------------------


def _region(
    labels: np.ndarray,
    aerated: np.ndarray,
    airways: np.ndarray,
    ground: np.ndarray,
    hu: np.ndarray,
    body: np.ndarray,
    grid: _Grid,
    midline_x: float,
) -> np.ndarray:
    """Lungs plus what a lesion may occupy (see the module docstring, step 5)."""
    radius = grid.px(REGION_CLOSING_MM)
    closed = {side: _boxed(closing_disk_2d, labels == side, radius + 1, radius) for side in (RIGHT, LEFT)}
    closed_any = (closed[RIGHT] | closed[LEFT]) & body
    soft = body & (hu < REGION_BONE_HU) & ~closed_any
    hulls = {side: _boxed(convex_hull_2d, closed[side], 0) for side in (RIGHT, LEFT)}
    # Only hull pixels can become pockets: the ray test runs on those alone.
    beyond = _beyond_lungs(closed_any, body, grid, where=(hulls[RIGHT] | hulls[LEFT]) & soft)
    spine = _vertebral_bodies(hu, body, closed_any, grid)
    soft_gutter = soft & ~_lung_behind(closed_any, grid) & ~dilate_disk_2d(spine, grid.px(2.0))
    pocket_max = REGION_POCKET_MAX_MM2 / grid.pixel_mm2
    bridge = grid.px(REGION_BRIDGE_MM)
    right_airways = _right_of(airways, midline_x, grid)
    region = closed_any.copy()
    for side in (RIGHT, LEFT):
        hull = hulls[side]
        pockets = _small_blobs(hull & soft & beyond, pocket_max)
        pockets &= ~_domes(pockets, ground, grid)
        # The right lung normally touches the trachea and the spine, the left one
        # the aorta: only on the right is soft tissue in between lesion space.
        column = spine | right_airways if side == RIGHT else spine
        gutter = _between_along_rows(closed[side], column, bridge) & soft_gutter
        taken = _fill_holes_but_domes(closed[side] | pockets | gutter, ground, grid)
        for _ in range(SEED_PASSES):
            taken |= _followed_lesions(taken, aerated, hu, hull & soft & ~ground, grid)
        region |= taken
    return fill_holes_3d(region)


def _followed_lesions(taken: np.ndarray, aerated: np.ndarray, hu: np.ndarray, allowed: np.ndarray, grid: _Grid) -> np.ndarray:
    """Solid lesions already in the region in one slice, followed into neighbours where they are not.

    A compact solid blob the region holds (a hole in the lung, a filled
    pleural pocket) is lesion space; in the slices above and below, where the
    same lesion abuts the mediastinum and shows as neither, its footprint
    (plus a margin) over ``allowed`` pixels is taken too, for as far as the
    blob is wide.  Compactness keeps thin strips closed along the pleura or
    the hilum from seeding.
    """
    out = np.zeros_like(taken)
    solid = taken & ~aerated & (hu > SEED_MIN_HU)
    crop = _bbox(solid)
    if crop is None:
        return out
    blobs, n = ndi.label(solid[crop], structure=SQUARE_2D)
    sizes = np.bincount(blobs.ravel(), minlength=n + 1)
    margin = grid.px(SEED_MARGIN_MM)
    nz, ny, nx = taken.shape
    boxes = ndi.find_objects(blobs)
    z_off, y_off, x_off = (c.start for c in crop)
    for index in np.flatnonzero(sizes * grid.pixel_mm2 >= SEED_MIN_MM2):
        if index == 0:
            continue
        k, box_rows, box_cols = boxes[index - 1]
        blob = blobs[k.start, box_rows, box_cols] == index
        k = slice(k.start + z_off, k.stop + z_off)
        box_rows = slice(box_rows.start + y_off, box_rows.stop + y_off)
        box_cols = slice(box_cols.start + x_off, box_cols.stop + x_off)
        if blob.sum() < SEED_SOLIDITY * hull_image(blob).sum():
            continue
        radius_mm = math.sqrt(sizes[index] * grid.pixel_mm2 / math.pi)
        reach = math.ceil(min(radius_mm, SEED_REACH_MM) / grid.spacing[2])
        rows = slice(max(0, box_rows.start - margin), min(ny, box_rows.stop + margin))
        cols = slice(max(0, box_cols.start - margin), min(nx, box_cols.stop + margin))
        footprint = np.zeros((1, rows.stop - rows.start, cols.stop - cols.start), dtype=bool)
        footprint[0, box_rows.start - rows.start : box_rows.stop - rows.start,
                  box_cols.start - cols.start : box_cols.stop - cols.start] = blob
        footprint = dilate_disk_2d(footprint, margin)[0]
        for step in range(1, reach + 1):
            for z in (k.start - step, k.start + step):
                if 0 <= z < nz:
                    out[z, rows, cols] |= footprint & allowed[z, rows, cols]
    return out


def _right_of(mask: np.ndarray, midline_x: float, grid: _Grid) -> np.ndarray:
    """The part of ``mask`` on the patient's right of ``midline_x`` (LPS x)."""
    k, j, i = np.nonzero(mask)
    out = np.zeros_like(mask)
    right = grid.lps_x(k, j, i) < midline_x
    out[k[right], j[right], i[right]] = True
    return out


def _small_blobs(mask: np.ndarray, max_pixels: float) -> np.ndarray:
    """Per-slice 8-connected blobs of at most ``max_pixels``."""
    return _boxed(_small_blobs_here, mask, 0, max_pixels)


def _small_blobs_here(mask: np.ndarray, max_pixels: float) -> np.ndarray:
    blobs, n = ndi.label(mask, structure=SQUARE_2D)
    if n == 0:
        return mask.copy()
    ok = np.bincount(blobs.ravel(), minlength=n + 1) <= max_pixels
    ok[0] = False
    return ok[blobs]


def _vertebral_bodies(hu: np.ndarray, body: np.ndarray, lungs: np.ndarray, grid: _Grid) -> np.ndarray:
    """Vertebral body mask in the slices holding lung.

    The vertebra is the largest bone blob within 40 mm of the body's
    left-right centre and behind its antero-posterior centre; its body is the
    convex hull of the part within 30 mm of its most anterior point.
    """
    spine = np.zeros_like(lungs)
    shape = hu.shape[1:]
    min_pixels = SPINE_MIN_MM2 / grid.pixel_mm2
    for k in np.flatnonzero(lungs.any(axis=(1, 2))):
        inside = body[k]
        if not inside.any():
            continue
        x, y = grid.plane(0, k, shape), grid.plane(1, k, shape)
        xc, yc = grid.centroid_lps(0, k, inside), grid.centroid_lps(1, k, inside)
        bone = inside & (hu[k] > SPINE_HU) & (np.abs(x - xc) < SPINE_BAND_MM) & (y > yc)
        blobs, n = ndi.label(bone, structure=SQUARE_2D[1])
        if n == 0:
            continue
        sizes = np.bincount(blobs.ravel())
        sizes[0] = 0
        if sizes.max() < min_pixels:
            continue
        index = int(np.argmax(sizes))
        rows, cols = ndi.find_objects(blobs)[index - 1]
        rows = slice(max(0, rows.start - 3), rows.stop + 3)
        cols = slice(max(0, cols.start - 3), cols.stop + 3)
        vertebra = ndi.binary_fill_holes(ndi.binary_closing(blobs[rows, cols] == index, iterations=2))
        xs, ys = x[rows, cols], y[rows, cols]
        xv = float(np.median(xs[vertebra]))
        near = vertebra & (np.abs(xs - xv) < 10.0)
        if not near.any():
            continue
        y_front = float(ys[near].min())
        front_part = vertebra & (ys <= y_front + SPINE_BODY_DEPTH_MM) & (np.abs(xs - xv) < SPINE_BAND_MM / 1.6)
        spine[k, rows, cols] = hull_image(front_part)
    return spine


def _between_along_rows(a: np.ndarray, b: np.ndarray, max_gap: int) -> np.ndarray:
    """Pixels between an ``a`` pixel and the nearest ``b`` pixel of the same image row, at most ``max_gap`` apart."""
    out = np.zeros_like(a)
    zz, yy = np.nonzero(b.any(axis=2) & a.any(axis=2))
    if zz.size == 0:
        return out
    ra, rb = a[zz, yy], b[zz, yy]  # (rows, x)
    nx = ra.shape[1]
    index = np.arange(nx, dtype=np.int32)
    last_a = np.maximum.accumulate(np.where(ra, index, -1), axis=1)
    last_b = np.maximum.accumulate(np.where(rb, index, -1), axis=1)
    next_a = np.minimum.accumulate(np.where(ra, index, nx)[:, ::-1], axis=1)[:, ::-1]
    next_b = np.minimum.accumulate(np.where(rb, index, nx)[:, ::-1], axis=1)[:, ::-1]
    forward = (last_a >= 0) & (next_b < nx) & (last_b < last_a) & (next_b - last_a <= max_gap)
    backward = (last_b >= 0) & (next_a < nx) & (next_b > next_a) & (next_a - last_b <= max_gap)
    out[zz, yy] = forward | backward
    return out


def _lung_behind(lungs: np.ndarray, grid: _Grid) -> np.ndarray:
    """Pixels with lung posterior to them in the same image column (in front of a base crescent)."""
    posterior_down = grid.affine[1, 1] >= 0  # LPS y grows with the row index
    flipped = lungs if not posterior_down else lungs[:, ::-1, :]
    seen = np.maximum.accumulate(flipped, axis=1)  # lung at or "before" in the posterior-first order
    behind = np.zeros_like(seen)
    behind[:, 1:, :] = seen[:, :-1, :]
    return behind if not posterior_down else behind[:, ::-1, :]


def _beyond_lungs(lungs: np.ndarray, body: np.ndarray, grid: _Grid, where: np.ndarray | None = None) -> np.ndarray:
    """Pixels farther from their slice's thorax centre than any lung along the same ray.

    The centre is the body's centroid in the slice; distances are in mm.  With
    ``where``, only those pixels are tested (the rest stay False): the angle of every
    pixel of every slice costs more than the rest of the region.
    """
    _, ny, nx = lungs.shape
    sx, sy = grid.spacing[0], grid.spacing[1]
    out = np.zeros_like(lungs)
    edge = lungs & ~ndi.binary_erosion(lungs, structure=SQUARE_2D)
    centres = _slice_centres(body, lungs)
    yy, xx = np.mgrid[0:ny, 0:nx]
    for k, (cy, cx) in centres.items():
        rows, cols = np.nonzero(edge[k])
        ang = np.arctan2((rows - cy) * sy, (cols - cx) * sx)
        rad = np.hypot((rows - cy) * sy, (cols - cx) * sx)
        bins = ((ang + np.pi) / (2 * np.pi) * _ANGLE_BINS).astype(int) % _ANGLE_BINS
        reach = np.zeros(_ANGLE_BINS)
        np.maximum.at(reach, bins, rad)
        reach = ndi.maximum_filter1d(reach, size=5, mode="wrap")
        if where is None:
            at_y, at_x = yy, xx
        else:
            at_y, at_x = np.nonzero(where[k])
        ang_all = np.arctan2((at_y - cy) * sy, (at_x - cx) * sx)
        rad_all = np.hypot((at_y - cy) * sy, (at_x - cx) * sx)
        bins_all = ((ang_all + np.pi) / (2 * np.pi) * _ANGLE_BINS).astype(int) % _ANGLE_BINS
        if where is None:
            out[k] = rad_all > reach[bins_all]
        else:
            out[k, at_y, at_x] = rad_all > reach[bins_all]
    return out


def _slice_centres(body: np.ndarray, lungs: np.ndarray) -> dict[int, tuple[float, float]]:
    """Thorax centre (row, col) per slice holding lung: the body's centroid in that slice.

    The body, not the lungs: at the bases the lungs are posterior crescents
    whose own centre would see the liver dome as "outside" them.
    """
    centres: dict[int, tuple[float, float]] = {}
    for k in np.flatnonzero(lungs.any(axis=(1, 2)) & body.any(axis=(1, 2))):
        count = float(np.count_nonzero(body[k]))
        row = float(body[k].sum(axis=1) @ np.arange(body.shape[1])) / count
        col = float(body[k].sum(axis=0) @ np.arange(body.shape[2])) / count
        centres[int(k)] = (row, col)
    return centres


def _bbox(mask: np.ndarray, margin: int = 0) -> tuple[slice, slice, slice] | None:
    """Bounding box of ``mask`` (in-plane ``margin`` added), None when empty."""
    zs = np.flatnonzero(mask.any(axis=(1, 2)))
    if zs.size == 0:
        return None
    rows = np.flatnonzero(mask.any(axis=(0, 2)))
    cols = np.flatnonzero(mask.any(axis=(0, 1)))
    return (
        slice(zs[0], zs[-1] + 1),
        slice(max(0, rows[0] - margin), rows[-1] + margin + 1),
        slice(max(0, cols[0] - margin), cols[-1] + margin + 1),
    )


def _boxed(func, mask: np.ndarray, margin: int, *args):  # type: ignore[no-untyped-def]
    """Apply a per-slice mask operation on the in-plane bounding box (plus ``margin``) only."""
    out = np.zeros_like(mask)
    box = _bbox(mask, margin)
    if box is not None:
        out[box] = func(mask[box], *args)
    return out

"""Lesion candidates on chest CT: where to look, and the shape numbers that decide.

Three detectors feed one list of seed points, each with a size estimate:

* **Blob filter.** The multi-scale Hessian "dot" enhancement of Li, Sone and
  Doi (Med. Phys. 30(8), 2003): at scale sigma the eigenvalues of the
  scale-normalised Hessian are all strongly negative at the centre of a
  bright blob of radius about ``sqrt(3) * sigma``, while a vessel (tube) has
  one near-zero eigenvalue and a fissure or the pleura (plate) two.  The dot
  response ``|l3|^2 / |l1|`` is therefore high on nodules, including small
  ones touching vessels, and near zero on vessels, fissures and airway walls.
  The filter sees HU, so ground-glass blobs answer too, at their lower
  contrast.
* **Ground-glass blobs.** Smoothed HU in the ground-glass window, away from
  solid structures and their blurred edges, opened and size-filtered: faint
  textured ground glass can answer the Hessian too weakly, its density does not.
* **Thick cores.** Masses and consolidation are not blobs at any reasonable
  scale; they are simply thick.  Voxels at least ``CORE_RADIUS_MM`` deep
  inside the solid (>= ``SOLID_HU``) mask are thicker than any intrapulmonary
  vessel except the hilar ones, so each connected core is a seed.

Everything runs on integer-factor coarse grids (about 1.25 mm for the fine
scales, about 2.5 mm for the coarse ones and the cores) inside the region's
bounding box, which keeps a 512x512x300 scan to a few seconds.  Voxels
outside the region are replaced by the typical parenchyma HU before
filtering, so the chest wall and mediastinum neither create blobs nor hide a
juxtapleural nodule (which becomes a blob once the wall is gone).

:func:`shape_features` computes the per-lesion numbers that
:mod:`sensecare.analysis.lesions` uses to reject vessels, fissures and
partial-volume rims and to type the lesion.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from sensecare.analysis.grid import CoarseGrid
from sensecare.analysis.morphology import block_mean

__all__ = [
    "GGO_MAX_HU",
    "SOLID_HU",
    "Candidate",
    "CandidateSet",
    "block_mean",
    "find_candidates",
    "parenchyma_hu",
    "shape_features",
]

#: Solid tissue threshold: half-way between aerated lung (about -850 HU) and soft tissue (about 40 HU).
SOLID_HU = -400.0
#: Grid for the fine blob scales (mm) and for the coarse scales and cores.
FINE_GRID_MM = 1.25
COARSE_GRID_MM = 2.5
#: Blob scales (mm).  A sphere of radius R answers best near sigma = R / sqrt(3).
FINE_SCALES_MM = (1.0, 1.6, 2.6)
COARSE_SCALES_MM = (4.2, 6.8, 11.0)
#: Minimal scale-normalised dot response (HU) of a seed: a sphere of this contrast
#: answers about 0.25 of its contrast at its best scale, so 40 HU ~ a 160 HU blob,
#: which lets faint ground glass through and leaves the rest to the shape features.
MIN_DOT_HU = 40.0
#: A core is what stays of the solid mask after removing this depth (mm): vessels thinner
#: than 2 * CORE_RADIUS_MM vanish.
CORE_RADIUS_MM = 4.0
#: Ground-glass seeds: density window and geometry (mm); GGO spans about -750..-300 HU
#: (Fleischner glossary), the lower edge is taken relative to the parenchyma.
GGO_CONTRAST_HU = 150.0
GGO_MAX_HU = -300.0
GGO_SMOOTHING_MM = 1.5
GGO_HALO_MM = 2.0
GGO_OPENING_MM = 1.5
GGO_MIN_DIAMETER_MM = 5.0
#: Do not follow more seeds than this (most blob-like first); each costs a local segmentation.
MAX_SEEDS = 300


@dataclass(frozen=True)
class Candidate:
    """One seed point.

    Attributes
    ----------
    center : tuple of int
        (z, y, x) voxel index in the array given to :func:`find_candidates`, plus its ``offset``.
    radius_mm : float
        Size estimate: ``sqrt(3) * sigma`` of the best blob scale, the equivalent radius of
        a ground-glass blob, or the depth of a core.
    source : str
        ``"blob"``, ``"subsolid"`` or ``"core"``.
    dot : float
        Scale-normalised dot (blob) response at the seed, HU (for a ground-glass blob, a
        quarter of its contrast: what a sphere of that contrast would answer).
    line : float
        Scale-normalised line (tube) response at the same scale, HU.
    extent_mm : float
        Half-size of the window that should hold the whole lesion: three radii for a
        blob, the core's own half-extent plus its depth for a core.
    contrast_hu : float
        Smoothed HU above the parenchyma at the seed (at its scale).
    """

    center: tuple[int, int, int]
    radius_mm: float
    source: str
    dot: float
    line: float
    extent_mm: float
    contrast_hu: float = 0.0

    @property
    def blobness(self) -> float:
        """Dot response per HU of contrast at the seed's scale: shape, not brightness.

        A sphere scores about 0.25 whatever its density, a vessel junction much
        less; ranking by it keeps faint ground glass ahead of bright vessels.
        """
        return self.dot / self.contrast_hu if self.contrast_hu > 0 else 0.0


@dataclass(frozen=True)
class CandidateSet:
    """Seeds plus the two numbers every later step needs."""

    candidates: tuple[Candidate, ...]
    parenchyma_hu: float  # typical aerated-lung HU in the region (scanner/kernel specific)
    seconds: float


def parenchyma_hu(hu: np.ndarray, region: np.ndarray) -> float:
    """Median HU of the aerated part of ``region``: the background every contrast is measured from.

    Falls back to -850 HU (typical inspiratory lung) when the region holds no air.
    """
    values = hu[region]
    values = values[values < SOLID_HU - 100]
    if values.size < 100:
        return -850.0
    step = max(1, values.size // 200_000)
    return float(np.median(values[::step]))


def find_candidates(
    hu: np.ndarray,
    region: np.ndarray,
    spacing_xyz: tuple[float, float, float],
    *,
    offset: tuple[int, int, int] = (0, 0, 0),
    aerated: np.ndarray | None = None,
) -> CandidateSet:
    """Seeds for lesions inside ``region``.

    Parameters
    ----------
    hu : numpy.ndarray
        HU, (z, y, x); usually already cropped to the region's bounding box.
    region : numpy.ndarray
        bool, same shape: where lesions may be (lungs with concavities closed).
    spacing_xyz : tuple of float
        Voxel spacing (x, y, z), mm.
    offset : tuple of int
        (z, y, x) of ``hu[0, 0, 0]`` in the full volume; added to every seed.
    aerated : numpy.ndarray, optional
        bool, same shape: the lungs proper (no closed concavities); the parenchyma HU is
        measured there when given.
    """
    import time

    start = time.perf_counter()
    region = region.astype(bool, copy=False)
    background = parenchyma_hu(hu, region if aerated is None or not aerated.any() else aerated & region)
    filled = np.where(region, hu, np.float32(background)).astype(np.float32, copy=False)

    seeds: list[Candidate] = []
    fine = CoarseGrid.for_spacing(filled.shape, spacing_xyz, FINE_GRID_MM)
    fine_hu = block_mean(filled, fine.factors)
    region_f = region.astype(np.float32)
    fine_region = block_mean(region_f, fine.factors) >= 0.5
    seeds += _blob_seeds(fine, fine_hu, fine_region, spacing_xyz, FINE_SCALES_MM, background)
    seeds += _subsolid_seeds(fine, fine_hu, fine_region, spacing_xyz, background)
    coarse = CoarseGrid.for_spacing(filled.shape, spacing_xyz, COARSE_GRID_MM)
    relative = tuple(c // f for c, f in zip(coarse.factors, fine.factors))
    if all(c % f == 0 for c, f in zip(coarse.factors, fine.factors)):
        coarse_hu = block_mean(fine_hu, relative)
    else:
        coarse_hu = block_mean(filled, coarse.factors)
    coarse_region = block_mean(region_f, coarse.factors) >= 0.5
    seeds += _blob_seeds(coarse, coarse_hu, coarse_region, spacing_xyz, COARSE_SCALES_MM, background)
    seeds += _core_seeds(coarse, coarse_hu, coarse_region, spacing_xyz)
    seeds = _suppress(seeds, spacing_xyz)[:MAX_SEEDS]
    oz, oy, ox = offset
    shifted = tuple(
        replace(c, center=(c.center[0] + oz, c.center[1] + oy, c.center[2] + ox)) for c in seeds
    )
    return CandidateSet(shifted, background, time.perf_counter() - start)


# --- blob filter -----------------------------------------------------------------


def hessian_responses(
    smooth: np.ndarray, spacing_zyx: tuple[float, float, float], sigma_mm: float, where: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Scale-normalised dot and line responses (HU) at the voxels of ``where``.

    ``smooth`` is the image already smoothed at this scale (see :func:`_sigma_vox`);
    second derivatives are central differences on it, taken only where asked, which
    costs a fraction of six Gaussian-derivative filters over the whole volume.
    Normalisation uses the scale actually applied on each axis.
    """
    sig_mm = [v * s for v, s in zip(_sigma_vox(sigma_mm, spacing_zyx), spacing_zyx)]
    interior = where.copy()
    interior[[0, -1], :, :] = False
    interior[:, [0, -1], :] = False
    interior[:, :, [0, -1]] = False
    s = smooth
    pos = np.nonzero(interior)
    c = s[pos]
    diag = []
    for a in range(3):
        up, dn = list(pos), list(pos)
        up[a] = pos[a] + 1
        dn[a] = pos[a] - 1
        diag.append((s[tuple(up)] - 2 * c + s[tuple(dn)]) * (sig_mm[a] ** 2 / spacing_zyx[a] ** 2))
    # dot >= MIN_DOT_HU needs three eigenvalues below -MIN_DOT_HU, hence a trace below
    # -3 * MIN_DOT_HU: a cheap, exact pre-selection before the eigen-decomposition.
    keep = diag[0] + diag[1] + diag[2] <= -3.0 * MIN_DOT_HU
    pos = tuple(p[keep] for p in pos)
    interior[:] = False
    interior[pos] = True
    n = pos[0].size
    if n == 0:
        return np.zeros(0, np.float32), np.zeros(0, np.float32), interior
    hess = np.empty((n, 3, 3), dtype=np.float32)
    for a in range(3):
        hess[:, a, a] = diag[a][keep]
        for b in range(a + 1, 3):
            pp, pm, mp, mm = list(pos), list(pos), list(pos), list(pos)
            pp[a], pp[b] = pos[a] + 1, pos[b] + 1
            pm[a], pm[b] = pos[a] + 1, pos[b] - 1
            mp[a], mp[b] = pos[a] - 1, pos[b] + 1
            mm[a], mm[b] = pos[a] - 1, pos[b] - 1
            d = (s[tuple(pp)] - s[tuple(pm)] - s[tuple(mp)] + s[tuple(mm)]) * 0.25
            d *= sig_mm[a] * sig_mm[b] / (spacing_zyx[a] * spacing_zyx[b])
            hess[:, a, b] = d
            hess[:, b, a] = d
    lam = np.linalg.eigvalsh(hess)  # ascending: most negative first
    order_mag = np.argsort(-np.abs(lam), axis=1)
    lam = np.take_along_axis(lam, order_mag, axis=1)  # |l1| >= |l2| >= |l3|
    l1, l2, l3 = np.abs(lam[:, 0]) + 1e-6, np.abs(lam[:, 1]), np.abs(lam[:, 2])
    neg = lam < 0
    dot = np.where(neg.all(axis=1), l3 * l3 / l1, 0.0)
    line = np.where(neg[:, 0] & neg[:, 1], l2 * (l2 - l3) / l1, 0.0)
    return dot.astype(np.float32), line.astype(np.float32), interior


def _sigma_vox(sigma_mm: float, spacing_zyx: tuple[float, float, float]) -> list[float]:
    """Gaussian width per axis in voxels: at least 0.6 voxel, so on thick slices the z scale is
    the slice spacing rather than the nominal sigma."""
    return [max(sigma_mm / s, 0.6) for s in spacing_zyx]


def _blob_seeds(
    grid: CoarseGrid,
    image: np.ndarray,
    inside: np.ndarray,
    spacing_xyz: tuple[float, float, float],
    scales_mm: tuple[float, ...],
    background: float,
) -> list[Candidate]:
    """Local maxima of the max-over-scales dot response on ``grid`` (``image`` is on that grid)."""
    gx, gy, gz = grid.spacing_xyz(spacing_xyz)
    spacing_zyx = (gz, gy, gx)
    best_dot = np.zeros(image.shape, np.float32)
    best_line = np.zeros(image.shape, np.float32)
    best_scale = np.zeros(image.shape, np.float32)
    best_contrast = np.zeros(image.shape, np.float32)
    for sigma in scales_mm:
        # Only voxels brighter than the parenchyma by a blob's worth can be centres.
        smooth = ndimage.gaussian_filter(image, _sigma_vox(sigma, spacing_zyx), mode="nearest")
        where = inside & (smooth > background + 2 * MIN_DOT_HU)
        dot, line, where = hessian_responses(smooth, spacing_zyx, sigma, where)
        dmap = np.zeros(image.shape, np.float32)
        dmap[where] = dot
        better = dmap > best_dot
        best_dot[better] = dmap[better]
        best_scale[better] = sigma
        lmap = np.zeros(image.shape, np.float32)
        lmap[where] = line
        best_line[better] = lmap[better]
        best_contrast[better] = smooth[better] - background
    # A seed is a local maximum of the blob response that is more blob than tube (Li et al.).
    peaks = (best_dot >= MIN_DOT_HU) & (best_dot == ndimage.maximum_filter(best_dot, size=3))
    peaks &= best_line < best_dot
    out = []
    factors = grid.factors
    for z, y, x in zip(*np.nonzero(peaks)):
        centre = tuple(
            min(int(c * f + f // 2), n - 1) for c, f, n in zip((z, y, x), factors, grid.fine_shape)
        )
        radius = math.sqrt(3.0) * float(best_scale[z, y, x])
        out.append(
            Candidate(centre, radius, "blob", float(best_dot[z, y, x]), float(best_line[z, y, x]),
                      max(3.0 * radius, 10.0), float(best_contrast[z, y, x]))
        )
    return out


# --- ground-glass blobs -----------------------------------------------------------------


def _subsolid_seeds(
    grid: CoarseGrid, image: np.ndarray, inside: np.ndarray, spacing_xyz: tuple[float, float, float], background: float
) -> list[Candidate]:
    """One seed per ground-glass blob: smoothed HU between parenchyma + ``GGO_CONTRAST_HU`` and
    ``GGO_MAX_HU``, away from solid structures and their blurred edges, opened by
    ``GGO_OPENING_MM`` and at least a ``GGO_MIN_DIAMETER_MM`` sphere in volume.

    Ground glass is faint and textured, so its Hessian response can fall below the blob
    threshold although it is plainly visible; its density range finds it instead.
    """
    gx, gy, gz = grid.spacing_xyz(spacing_xyz)
    zyx = (gz, gy, gx)
    smooth = ndimage.gaussian_filter(image, [max(GGO_SMOOTHING_MM / s, 0.3) for s in zyx], mode="nearest")
    sharp = ndimage.gaussian_filter(image, [max(0.7 / s, 0.3) for s in zyx], mode="nearest")
    solid = inside & (sharp >= SOLID_HU)
    # Blurred solid edges look like ground glass: about 1.5 pixels in-plane and three
    # quarters of a slice through-plane (a vessel smeared into the next thick slice).
    halo_xy = max(GGO_HALO_MM, 1.5 * max(gy, gx))
    halo = ndimage.binary_dilation(solid, _ellipsoid_vox((max(GGO_HALO_MM, 0.75 * gz), halo_xy, halo_xy), zyx))
    ggo = inside & (smooth >= background + GGO_CONTRAST_HU) & (smooth <= GGO_MAX_HU) & ~halo
    ggo = ndimage.binary_opening(ggo, _ball_vox(GGO_OPENING_MM, zyx))
    labels, n = ndimage.label(ggo)
    if n == 0:
        return []
    voxel = gx * gy * gz
    # On a slice thicker than the blob, partial volume turns any small dense structure into
    # ground-glass density: a ground-glass blob must be at least a slice across.
    min_diameter = max(GGO_MIN_DIAMETER_MM, spacing_xyz[2])
    min_count = (math.pi / 6.0 * min_diameter**3) / voxel
    counts = np.bincount(labels.ravel())
    out = []
    for index, box in enumerate(ndimage.find_objects(labels), start=1):
        if counts[index] < min_count:
            continue
        local = np.where(labels[box] == index, smooth[box], -np.inf)
        pos = tuple(int(p) + b.start for p, b in zip(np.unravel_index(int(np.argmax(local)), local.shape), box))
        radius = (3.0 * counts[index] * voxel / (4.0 * math.pi)) ** (1.0 / 3.0)
        half = max((b.stop - b.start) * s for b, s in zip(box, zyx)) / 2.0
        centre = tuple(min(int(c * f + f // 2), m - 1) for c, f, m in zip(pos, grid.factors, grid.fine_shape))
        contrast = float(smooth[pos]) - background
        # A sphere's dot response is about a quarter of its contrast: rank ground glass as such.
        out.append(Candidate(centre, radius, "subsolid", 0.25 * contrast, 0.0, max(3.0 * radius, half + 2 * radius, 10.0), contrast))
    return out


def _ellipsoid_vox(radii_zyx: tuple[float, float, float], zyx: tuple[float, float, float]) -> np.ndarray:
    """Ellipsoid with semi-axes ``radii_zyx`` (mm) as a structuring element (voxel centres)."""
    half = [int(r // s) for r, s in zip(radii_zyx, zyx)]
    z, y, x = np.ogrid[-half[0] : half[0] + 1, -half[1] : half[1] + 1, -half[2] : half[2] + 1]
    terms = [(c * s / r) ** 2 for c, s, r in zip((z, y, x), zyx, radii_zyx)]
    return terms[0] + terms[1] + terms[2] <= 1.0 + 1e-9


def _ball_vox(radius_mm: float, zyx: tuple[float, float, float]) -> np.ndarray:
    """Ball of ``radius_mm`` as a structuring element on a grid of spacing ``zyx`` (at least a cross)."""
    half = [int(radius_mm // s) for s in zyx]
    z, y, x = np.ogrid[-half[0] : half[0] + 1, -half[1] : half[1] + 1, -half[2] : half[2] + 1]
    ball = (z * zyx[0]) ** 2 + (y * zyx[1]) ** 2 + (x * zyx[2]) ** 2 <= radius_mm**2
    return ball if ball.sum() > 1 else ndimage.generate_binary_structure(3, 1)


# --- thick cores -------------------------------------------------------------------


def _core_seeds(
    grid: CoarseGrid, image: np.ndarray, inside: np.ndarray, spacing_xyz: tuple[float, float, float]
) -> list[Candidate]:
    """One seed per connected part of the solid mask deeper than ``CORE_RADIUS_MM``."""
    gx, gy, gz = grid.spacing_xyz(spacing_xyz)
    solid = inside & (image >= SOLID_HU)
    if not solid.any():
        return []
    depth = ndimage.distance_transform_edt(solid, sampling=(gz, gy, gx))
    labels, n = ndimage.label(depth >= CORE_RADIUS_MM)
    if n == 0:
        return []
    out = []
    for index, box in enumerate(ndimage.find_objects(labels), start=1):
        local = np.where(labels[box] == index, depth[box], -1.0)
        pos = tuple(int(p) + b.start for p, b in zip(np.unravel_index(int(np.argmax(local)), local.shape), box))
        radius = float(depth[pos])
        half = max(
            max(p - b.start, b.stop - 1 - p) * s for p, b, s in zip(pos, box, (gz, gy, gx))
        )
        centre = tuple(
            min(int(c * f + f // 2), m - 1) for c, f, m in zip(pos, grid.factors, grid.fine_shape)
        )
        out.append(Candidate(centre, radius, "core", 0.0, 0.0, half + 2.0 * radius + 2.0 * CORE_RADIUS_MM,
                             float(image[pos]) - SOLID_HU))
    return out


def _suppress(seeds: list[Candidate], spacing_xyz: tuple[float, float, float]) -> list[Candidate]:
    """Greedy non-maximum suppression: a seed within 0.7 radius of a stronger one is the same lesion.

    Cores rank first (they are few and large), then blobs by :attr:`Candidate.blobness`.
    """
    if not seeds:
        return []
    sx, sy, sz = spacing_xyz
    ranked = sorted(seeds, key=lambda c: (c.source != "core", -c.blobness))
    pos = np.array([c.center for c in ranked], float) * np.array([sz, sy, sx])
    radius = np.array([c.radius_mm for c in ranked])
    tree = cKDTree(pos)
    alive = np.ones(len(ranked), bool)
    kept: list[Candidate] = []
    for i, cand in enumerate(ranked):
        if not alive[i]:
            continue
        kept.append(cand)
        for j in tree.query_ball_point(pos[i], 0.7 * radius[i]):
            if j > i and np.linalg.norm(pos[j] - pos[i]) < 0.7 * min(radius[i], radius[j]):
                alive[j] = False
    return kept


# --- per-lesion features -------------------------------------------------------------


def shape_features(
    mask: np.ndarray, spacing_xyz: tuple[float, float, float]
) -> dict[str, float]:
    """Size and shape of one segmented lesion, in mm.

    Returns ``volume_mm3``, ``eq_diameter_mm`` (diameter of the sphere of equal volume),
    ``max_depth_mm`` (radius of the largest inscribed ball, from the distance transform),
    ``fill_ratio`` (volume of that ball / lesion volume: 1 for a sphere, small for
    tubes, plates and branching shapes; the ball's z semi-axis is at least half a slice), ``elongation`` (square root of the largest
    over the smallest principal variance; 1 for a sphere) and ``axis_ratio``: the
    length of the lesion's deep part (voxels deeper than 60 % of the maximum, i.e.
    around the medial axis) over the maximum depth.  The deep part of a ball is a
    small ball (ratio about 0.7); that of a vessel is a segment of its axis (ratio
    = length / radius), so this separates tubes from blobs even when side branches
    or partial volume make the whole outline irregular.
    """
    sx, sy, sz = spacing_xyz
    voxel = sx * sy * sz
    count = int(np.count_nonzero(mask))
    volume = count * voxel
    if count == 0:
        return {"volume_mm3": 0.0, "eq_diameter_mm": 0.0, "max_depth_mm": 0.0, "fill_ratio": 0.0,
                "elongation": 1.0, "axis_ratio": 0.0}
    padded = np.pad(mask, 1)
    depth = ndimage.distance_transform_edt(padded, sampling=(sz, sy, sx))
    # The transform measures to the nearest outside voxel centre; the surface lies half a voxel
    # nearer (in-plane voxels decide for all but the thinnest structures).
    max_depth = max(float(depth.max()) - 0.5 * min(sx, sy), 0.5 * min(sx, sy))
    eq_d = 2.0 * (3.0 * volume / (4.0 * math.pi)) ** (1.0 / 3.0)
    # On thick slices the inscribed "ball" cannot be thinner than half a slice: a nodule
    # spanning two 8 mm slices is a short cylinder there, not a tube.
    ball = 4.0 / 3.0 * math.pi * max_depth**2 * max(max_depth, 0.5 * sz)
    scale = np.array([sz, sy, sx])
    elongation = _principal_spread(np.argwhere(mask), scale)
    deep = np.argwhere(depth >= 0.6 * depth.max())
    deep_len = _axis_length(deep, scale)
    return {
        "volume_mm3": volume,
        "eq_diameter_mm": eq_d,
        "max_depth_mm": max_depth,
        "fill_ratio": min(1.0, ball / volume),
        "elongation": elongation,
        "axis_ratio": deep_len / max(max_depth, 1e-3),
    }


def _principal_spread(idx: np.ndarray, scale: np.ndarray) -> float:
    """sqrt(largest / smallest principal variance) of voxel centres in mm (voxel extent included)."""
    if len(idx) < 4:
        return 1.0
    cov = np.cov((idx * scale).T) + np.diag(scale**2) / 12.0
    ev = np.clip(np.linalg.eigvalsh(cov), 1e-6, None)
    return float(math.sqrt(ev[-1] / ev[0]))


def _axis_length(idx: np.ndarray, scale: np.ndarray) -> float:
    """Length (mm) of a point set along its main axis: 2*sqrt(3) standard deviations (exact for a segment)."""
    if len(idx) < 2:
        return 0.0
    cov = np.cov((idx * scale).T)
    return float(2.0 * math.sqrt(3.0) * math.sqrt(max(float(np.linalg.eigvalsh(cov)[-1]), 0.0)))

"""Lesion probability on a ~2 mm grid: multi-scale voxel features and a learned voxel classifier.

Why this stage exists: the classical seeds (Hessian blobs, ground-glass
windows, thick cores) are too many on real vessel trees and too few on
ground glass crossed by vessels and airways, so lesions were lost before
anything could score them. Voxel classification (the CAD approach of
van Ginneken et al., and of the COVID-19 opacity work) looks at every voxel
of the lungs instead: a handful of rotation-invariant image features at
several scales, and a small network trained on phantoms with known lesion
masks (``models/lesion_heatmap``) that says how likely the voxel is lesion.
Connected high-probability regions are the detections; their peak
probability is the detection score.

Features (per voxel of the working grid, HU relative to the parenchyma):

* Gaussian-smoothed HU at 1, 2, 4, 8 and 12 mm (density at each scale);
* local standard deviation at 2 and 4 mm (texture: ground glass is smooth,
  vessel crossings are not);
* the three invariants of the scale-normalised Hessian (trace, sum of the
  principal 2x2 minors, determinant; equivalent to the eigenvalues without an
  eigen-decomposition) at 1.5, 3, 6 and 10 mm: blobs, tubes and plates;
* the share of solid (>= -400 HU) and of ground-glass tissue around the voxel
  at 2 and 4 mm, and how deep the voxel lies in solid tissue (vessels are thin,
  masses are thick);
* how much of the surroundings (8 and 16 mm) is lesion region, and the distance
  to the region border: a nodule sits in lung, the hilum and the partial volume
  of the chest wall sit at its edge; and the grid's slice spacing (thick slices blur).

Everything is computed in the lesion region's bounding box on integer-factor
block means (:class:`~sensecare.analysis.grid.CoarseGrid`), so a 512x512x300
scan costs a few seconds on two cores, and the network is a pointwise
multi-layer perceptron (MONAI ``FullyConnectedNet``) over the feature vector.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from sensecare.analysis.bundle import MlpBundle
from sensecare.analysis.candidates import SOLID_HU, parenchyma_hu
from sensecare.analysis.grid import CoarseGrid
from sensecare.analysis.morphology import upsample_repeat
from sensecare.masks import bounding_box

__all__ = [
    "FEATURE_NAMES",
    "GRID_MM",
    "FeatureMaps",
    "HeatmapDetection",
    "LesionHeatmapModel",
    "detections_from",
    "voxel_features",
    "working_image",
]

GRID_MM = 2.0
#: Probability from which a connected region is a detection of its own (see detections_from).
STRONG_LEVEL = 0.5
#: A strong region is split where its distance map has maxima this much (mm) above the saddle
#: between them: two touching lesions are two findings, a nodule on a vessel stays one.
SPLIT_DEPTH_MM = 2.0
DENSITY_SCALES_MM = (1.0, 2.0, 4.0, 8.0, 12.0)
TEXTURE_SCALES_MM = (2.0, 4.0)
HESSIAN_SCALES_MM = (1.5, 3.0, 6.0, 10.0)
SHARE_SCALES_MM = (2.0, 4.0)
REGION_SCALES_MM = (8.0, 16.0)
GGO_CONTRAST_HU = 100.0
GGO_MAX_HU = -300.0
BORDER_CAP_MM = 30.0
DEPTH_CAP_MM = 20.0
#: Highest ground-glass burden a voxel row carries (see ggo_burden).
GGO_BURDEN_CAP = 0.25
#: Threads for the feature filters: the CPUs this process may use, at most four.
FILTER_THREADS = max(1, min(4, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))

FEATURE_NAMES: tuple[str, ...] = (
    *(f"density_{s:g}mm" for s in DENSITY_SCALES_MM),
    *(f"texture_{s:g}mm" for s in TEXTURE_SCALES_MM),
    *(f"hessian_{k}_{s:g}mm" for s in HESSIAN_SCALES_MM for k in ("trace", "minors", "det")),
    *(f"solid_share_{s:g}mm" for s in SHARE_SCALES_MM),
    *(f"ggo_share_{s:g}mm" for s in SHARE_SCALES_MM),
    *(f"region_share_{s:g}mm" for s in REGION_SCALES_MM),
    "solid_depth_mm",
    "border_distance_mm",
    "slice_mm",
    "ggo_burden",
)

DEFAULT_BUNDLE = Path(__file__).resolve().parents[2] / "models" / "lesion_heatmap"


@dataclass(frozen=True)
class FeatureMaps:
    """Feature vectors of the region's voxels on the working grid.

    Attributes
    ----------
    features : numpy.ndarray
        float32 (n, len(FEATURE_NAMES)), one row per voxel of ``inside``.
    inside : numpy.ndarray
        bool, working-grid shape: the voxels that have a row, in C order.
    grid : CoarseGrid
        Block factors from the box to the working grid.
    box : tuple of slice
        The region's bounding box in the volume (fine indices).
    background_hu : float
        Parenchyma HU every density is relative to.
    image : numpy.ndarray or None
        float32, working-grid shape: HU minus ``background_hu`` (outside the
        region filled with the background, so 0): what the dense network reads.
    """

    features: np.ndarray
    inside: np.ndarray
    grid: CoarseGrid
    box: tuple[slice, slice, slice]
    background_hu: float
    image: np.ndarray | None = None


def voxel_features(hu: np.ndarray, region: np.ndarray, spacing_xyz: tuple[float, float, float],
                   aerated: np.ndarray | None = None) -> FeatureMaps | None:
    """The feature rows of every region voxel on a ~``GRID_MM`` grid (``None`` for an empty region)."""
    working = working_image(hu, region, spacing_xyz, aerated)
    if working is None:
        return None
    image, inside, grid, box, background = working
    gx, gy, gz = grid.spacing_xyz(spacing_xyz)
    zyx = (gz, gy, gx)
    rows = np.nonzero(inside)

    def sigma(mm: float) -> list[float]:
        return [mm / s if mm / s >= 0.3 else 0.0 for s in zyx]

    def smoothed(array: np.ndarray, mm: float, mode: str = "nearest") -> Callable[[], np.ndarray]:
        return lambda: ndimage.gaussian_filter(array, sigma(mm), mode=mode)[rows]

    solid = (image >= SOLID_HU - background).astype(np.float32)
    ggo = ((image >= GGO_CONTRAST_HU) & (image < GGO_MAX_HU - background)).astype(np.float32)
    region_share = inside.astype(np.float32)
    square = image * image
    # Every filter below is independent of the others: they run on a thread pool (scipy.ndimage
    # releases the GIL), each keeping only the region's rows of its output.
    jobs: dict[str, Callable[[], np.ndarray]] = {}
    for s in DENSITY_SCALES_MM:
        jobs[f"density_{s}"] = smoothed(image, s)
    for s in TEXTURE_SCALES_MM:
        jobs[f"square_{s}"] = smoothed(square, s)
    for s in HESSIAN_SCALES_MM:
        for a, b in _HESSIAN_PAIRS:
            jobs[f"hessian_{s}_{a}{b}"] = _hessian_term(image, s, zyx, rows, a, b)
    for name, share in (("solid", solid), ("ggo", ggo)):
        for s in SHARE_SCALES_MM:
            jobs[f"{name}_{s}"] = smoothed(share, s)
    for s in REGION_SCALES_MM:
        jobs[f"region_{s}"] = smoothed(region_share, s, "constant")
    jobs["depth"] = lambda: ndimage.distance_transform_edt(solid > 0, sampling=zyx)[rows]
    jobs["border"] = lambda: ndimage.distance_transform_edt(np.pad(inside, 1), sampling=zyx)[1:-1, 1:-1, 1:-1][rows]
    done = dict(zip(jobs, run_in_threads(list(jobs.values()))))

    columns: list[np.ndarray] = [done[f"density_{s}"] / 100.0 for s in DENSITY_SCALES_MM]
    for s in TEXTURE_SCALES_MM:
        mean = done[f"density_{s}"]
        columns.append(np.sqrt(np.maximum(done[f"square_{s}"] - mean * mean, 0.0)) / 100.0)
    for s in HESSIAN_SCALES_MM:
        columns += _hessian_invariants({(a, b): done[f"hessian_{s}_{a}{b}"] for a, b in _HESSIAN_PAIRS})
    columns += [done[f"{name}_{s}"] for name in ("solid", "ggo") for s in SHARE_SCALES_MM]
    columns += [done[f"region_{s}"] for s in REGION_SCALES_MM]
    columns.append(np.minimum(done["depth"], DEPTH_CAP_MM) / 10.0)
    columns.append(np.minimum(done["border"], BORDER_CAP_MM) / 10.0)
    columns.append(np.full(rows[0].shape, gz / 5.0, dtype=np.float32))
    columns.append(np.full(rows[0].shape, ggo_burden(done[f"ggo_{SHARE_SCALES_MM[-1]}"]), dtype=np.float32))
    features = np.stack([np.asarray(c, dtype=np.float32) for c in columns], axis=1)
    return FeatureMaps(features=features, inside=inside, grid=grid, box=box, background_hu=background, image=image)


def ggo_burden(ggo_share: np.ndarray) -> float:
    """How much of the lung reads as ground glass: the share of region voxels mostly in its range.

    A scan-level column of every voxel's row, so that the classifier can tell a ground-glass
    nodule in clear lungs from one patch of diffuse disease: 0-0.9 % of voxels on clear phantoms,
    0.35 % on LIDC-IDRI-0001, 7-12 % on phantoms with 15 % diffuse opacity. Without it, the diffuse
    opacity it must learn to ignore taught it to ignore ground glass everywhere.
    Capped at GGO_BURDEN_CAP: beyond it a real scan is outside anything the phantoms show.
    """
    if ggo_share.size == 0:
        return 0.0
    return float(min(np.mean(ggo_share >= 0.5), GGO_BURDEN_CAP))


def working_image(hu: np.ndarray, region: np.ndarray, spacing_xyz: tuple[float, float, float],
                  aerated: np.ndarray | None = None
                  ) -> tuple[np.ndarray, np.ndarray, CoarseGrid, tuple[slice, slice, slice], float] | None:
    """The region's CT on the ~``GRID_MM`` working grid, relative to the parenchyma.

    Returns ``(image, inside, grid, box, background_hu)``: block-mean HU minus
    the parenchyma HU (voxels outside the region count as parenchyma, so the
    chest wall and mediastinum read 0), the working-grid voxels at least half
    inside the region, the block factors, the region's bounding box in the
    volume and the parenchyma HU; ``None`` for an empty region.
    """
    box = bounding_box(region)
    if box is None:
        return None
    crop = hu[box].astype(np.float32)
    inside_fine = region[box]
    lung = inside_fine if aerated is None else (aerated[box] > 0) & inside_fine
    background = parenchyma_hu(crop, lung if lung.any() else inside_fine)
    filled = np.where(inside_fine, crop, np.float32(background))
    grid = CoarseGrid.for_spacing(filled.shape, spacing_xyz, GRID_MM)
    image = grid.mean(filled) - np.float32(background)
    inside = grid.fraction(inside_fine) >= 0.5
    return image, inside, grid, box, background  # type: ignore[return-value]


_HESSIAN_PAIRS = ((0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (2, 2))


def _hessian_term(image: np.ndarray, scale_mm: float, zyx: tuple[float, float, float],
                  rows: tuple[np.ndarray, ...], a: int, b: int) -> Callable[[], np.ndarray]:
    """One second derivative (axes ``a``, ``b``) of the scale-normalised Hessian at the rows (HU/100)."""
    sig = [max(scale_mm / s, 0.5) for s in zyx]
    norm = [g * s for g, s in zip(sig, zyx)]  # the scale actually applied, mm
    order = [0, 0, 0]
    order[a] += 1
    order[b] += 1

    def term() -> np.ndarray:
        d = ndimage.gaussian_filter(image, sig, order=order, mode="nearest")[rows]
        return d * (norm[a] * norm[b] / (zyx[a] * zyx[b])) / 100.0

    return term


def _hessian_invariants(h: dict[tuple[int, int], np.ndarray]) -> list[np.ndarray]:
    """Trace, sum of principal minors and determinant of the Hessian terms ``h[a, b]`` (a <= b)."""
    trace = h[0, 0] + h[1, 1] + h[2, 2]
    minors = (h[0, 0] * h[1, 1] - h[0, 1] ** 2) + (h[0, 0] * h[2, 2] - h[0, 2] ** 2) + (h[1, 1] * h[2, 2] - h[1, 2] ** 2)
    det = (h[0, 0] * (h[1, 1] * h[2, 2] - h[1, 2] ** 2) - h[0, 1] * (h[0, 1] * h[2, 2] - h[1, 2] * h[0, 2])
           + h[0, 2] * (h[0, 1] * h[1, 2] - h[1, 1] * h[0, 2]))
    # Signed roots keep every invariant in HU-like units, so no single one dominates the network.
    return [trace, np.sign(minors) * np.sqrt(np.abs(minors)), np.cbrt(det)]


def run_in_threads(jobs: list[Callable[[], np.ndarray]]) -> list[np.ndarray]:
    """Each job's result, in order, computed on up to ``FILTER_THREADS`` threads."""
    workers = min(len(jobs), FILTER_THREADS)
    if workers <= 1:
        return [job() for job in jobs]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(job) for job in jobs]
        return [future.result() for future in futures]


# --- detections -----------------------------------------------------------------------------


@dataclass(frozen=True)
class HeatmapDetection:
    """One connected high-probability region.

    ``mask`` is on the fine (volume) grid, cropped to its box at ``offset``
    (z, y, x); ``peak`` is the fine index of the most probable voxel;
    ``score`` the highest probability in the region. ``coarse_mask`` is the
    same half-maximum mask on the working grid at ``coarse_box`` (of
    :attr:`FeatureMaps.inside`), and ``region_voxels`` the size of the whole
    region there: what the second-stage ranker describes.
    """

    mask: np.ndarray
    offset: tuple[int, int, int]
    peak: tuple[int, int, int]
    score: float
    radius_mm: float
    coarse_mask: np.ndarray
    coarse_box: tuple[slice, slice, slice]
    coarse_peak: tuple[int, int, int]
    region_voxels: int


def detections_from(probability: np.ndarray, maps: FeatureMaps, spacing_xyz: tuple[float, float, float],
                    *, threshold: float, min_volume_mm3: float,
                    max_detections: int | None = None) -> list[HeatmapDetection]:
    """Connected regions of ``probability`` (working grid), best first, at two levels.

    Strong detections are the connected regions at or above ``STRONG_LEVEL`` (at least
    ``min_volume_mm3``); faint ones the regions at or above ``threshold`` that hold no strong
    detection. (One low level alone
    chains a nodule to the vessels and hilum around it on real CT.) Strong regions made of
    two touching blobs are split (``split_touching``). Each region is scored by its peak;
    its mask is the part at or above half that peak (the half-maximum outline). Only the
    ``max_detections`` best are kept.
    """
    grid = maps.grid
    gx, gy, gz = grid.spacing_xyz(spacing_xyz)
    voxel_mm3 = gx * gy * gz
    connectivity = np.ones((3, 3, 3), bool)
    strong_level = max(threshold, STRONG_LEVEL)
    labels, n_strong = split_touching(probability >= strong_level, (gz, gy, gx))
    labels, n_strong = _without_small(labels, n_strong, min_volume_mm3 / voxel_mm3)
    weak, n_weak = ndimage.label(probability >= threshold, structure=connectivity)
    if n_weak:
        holds_strong = ndimage.maximum(labels > 0, weak, index=np.arange(1, n_weak + 1))
        faint = np.flatnonzero(~np.asarray(holds_strong, dtype=bool)) + 1
        relabel = np.zeros(n_weak + 1, dtype=labels.dtype)
        relabel[faint] = np.arange(n_strong + 1, n_strong + 1 + faint.size)
        labels = np.where(labels > 0, labels, relabel[weak])
        n = n_strong + faint.size
    else:
        n = 0
    if n == 0:
        return []
    peaks = ndimage.maximum_position(probability, labels, index=np.arange(1, n + 1))
    scores = ndimage.maximum(probability, labels, index=np.arange(1, n + 1))
    sizes = ndimage.sum_labels(np.ones_like(probability), labels, index=np.arange(1, n + 1))
    boxes = ndimage.find_objects(labels)
    out = []
    for number, (peak, score, region_size, box) in enumerate(zip(peaks, scores, sizes, boxes), start=1):
        if region_size * voxel_mm3 < min_volume_mm3:
            continue
        coarse = (labels[box] == number) & (probability[box] >= max(threshold, 0.5 * float(score)))
        size = int(np.count_nonzero(coarse))
        fine_box = tuple(
            slice(b.start * f, min(b.stop * f, n_fine)) for b, f, n_fine in zip(box, grid.factors, grid.fine_shape)
        )
        fine = upsample_repeat(coarse, grid.factors, tuple(s.stop - s.start for s in fine_box))  # type: ignore[arg-type]
        offset = tuple(int(s.start + b.start) for s, b in zip(fine_box, maps.box))
        peak_fine = tuple(
            int(min(p * f + f // 2, n_fine - 1) + b.start)
            for p, f, n_fine, b in zip(peak, grid.factors, grid.fine_shape, maps.box)
        )
        radius = float((3.0 * size * voxel_mm3 / (4.0 * np.pi)) ** (1.0 / 3.0))
        out.append(HeatmapDetection(fine, offset, peak_fine, float(score), radius,  # type: ignore[arg-type]
                                    coarse, box, tuple(int(p) for p in peak), int(region_size)))  # type: ignore[arg-type]
    out.sort(key=lambda d: -d.score)
    return out[:max_detections]


def _without_small(labels: np.ndarray, n: int, min_voxels: float) -> tuple[np.ndarray, int]:
    """``labels`` renumbered without the regions of fewer than ``min_voxels`` voxels.

    A strong core too small to be a detection must not claim its faint surroundings
    either: a ground-glass nodule whose probability peaks at 0.55 in one voxel is a
    faint detection of its own, not a dropped strong one.
    """
    if n == 0:
        return labels, 0
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    keep = sizes >= min_voxels
    keep[0] = False
    if keep[1:].all():
        return labels, n
    renumber = np.zeros(n + 1, dtype=labels.dtype)
    renumber[keep] = np.arange(1, int(keep.sum()) + 1)
    return renumber[labels], int(keep.sum())


def split_touching(mask: np.ndarray, zyx_mm: tuple[float, float, float]) -> tuple[np.ndarray, int]:
    """Connected regions of ``mask``, each split along the necks of its distance map.

    A marker-based watershed of the distance transform (markers: the maxima at
    least ``SPLIT_DEPTH_MM`` above their surroundings) separates two round blobs
    that touch, while a blob with a vessel running off it, or a tube, keeps one
    marker and stays whole.
    """
    from skimage.morphology import h_maxima
    from skimage.segmentation import watershed

    connectivity = np.ones((3, 3, 3), bool)
    labels, n = ndimage.label(mask, structure=connectivity)
    if n == 0:
        return labels, 0
    out = np.zeros(mask.shape, dtype=np.int32)
    count = 0
    for number, box in enumerate(ndimage.find_objects(labels), start=1):
        region = labels[box] == number
        pieces = None
        if min(s.stop - s.start for s in box) >= 3:
            distance = ndimage.distance_transform_edt(np.pad(region, 1), sampling=zyx_mm)[1:-1, 1:-1, 1:-1]
            markers, found = ndimage.label(h_maxima(distance, SPLIT_DEPTH_MM) & region, structure=connectivity)
            if found > 1:
                pieces = watershed(-distance, markers, mask=region)
        if pieces is None:
            out[box][region] = count + 1
            count += 1
        else:
            out[box][region] = pieces[region] + count
            count += int(pieces.max())
    return out, count


# --- the model ------------------------------------------------------------------------------


class LesionHeatmapModel:
    """The bundle's voxel classifier on a torch device: feature rows in, lesion probability out."""

    def __init__(self, device, bundle: Path = DEFAULT_BUNDLE) -> None:  # type: ignore[no-untyped-def]
        self.bundle = MlpBundle(bundle, FEATURE_NAMES, device, what="lesion heatmap")
        own = self.bundle.settings
        self.columns = self.bundle.columns
        self.name = self.bundle.name
        self.version = self.bundle.version
        self.threshold = float(own.get("detection_threshold", 0.5))
        self.min_volume_mm3 = float(own.get("min_volume_mm3", 16.0))
        self.max_detections = int(own.get("max_detections", 48))

    def predict(self, features: np.ndarray) -> np.ndarray:
        """Probability per row of the computed features (:data:`FEATURE_NAMES`)."""
        return self.bundle.predict(features)

    def probability_map(self, maps: FeatureMaps) -> np.ndarray:
        """The probabilities back on the working grid (0 outside the region)."""
        probability = np.zeros(maps.inside.shape, dtype=np.float32)
        probability[maps.inside] = self.predict(maps.features)
        return probability

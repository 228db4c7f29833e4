"""Measurements of one segmented lesion, in patient millimetres (LPS).

RECIST 1.1 (Eisenhauer et al., Eur J Cancer 2009) measures the longest
diameter in the axial plane; lung nodule guidance (Bankier et al., Radiology
2017, Fleischner) adds the short axis perpendicular to it on the same slice.
Both are taken here from the sub-pixel outline of the mask (marching squares
at the 0.5 level), so a digitised disc of diameter D measures D within a
fraction of a pixel rather than D minus one pixel (centres) or D plus a
diagonal (corners).  All distances use the physical pixel spacing, so
anisotropic pixels and thick slices are handled; the voxel volume is the
determinant of the voxel axes, which is also right for tilted gantries.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.spatial import ConvexHull, QhullError
from skimage.measure import find_contours

from sensecare.dicom.volume import Volume

__all__ = ["LesionMeasurements", "axial_diameters", "measure_lesion"]

Vec3 = tuple[float, float, float]


@dataclass(frozen=True)
class LesionMeasurements:
    """What a report states about one lesion.

    Attributes
    ----------
    center_lps_mm : tuple of float
        LPS position of the mask's centroid (mean of voxel centres).
    bbox_lps_mm_min, bbox_lps_mm_max : tuple of float
        Per-axis LPS extremes of the voxel centres of the mask's index box.
    volume_ml : float
        Voxel count times voxel volume.
    long_axis_mm, short_axis_mm : float
        RECIST long axis (largest in-plane Feret diameter over all slices) and the
        caliper width perpendicular to it, on the slice ``slice_index``.
    mean_hu : float
        Mean HU over the mask.
    slice_index : int
        k (array axis 0) of the axial slice of greatest extent.
    side : str or None
        ``"right"`` / ``"left"`` from the lung labels (1 = right, 2 = left) under the
        mask, else from the sign of the LPS x of the centre (x < 0 is the patient's right).
    """

    center_lps_mm: Vec3
    bbox_lps_mm_min: Vec3
    bbox_lps_mm_max: Vec3
    volume_ml: float
    long_axis_mm: float
    short_axis_mm: float
    mean_hu: float
    slice_index: int
    side: str | None


def measure_lesion(
    volume: Volume,
    mask: np.ndarray,
    offset: tuple[int, int, int],
    lungs: np.ndarray | None = None,
) -> LesionMeasurements:
    """Measure the lesion ``mask`` (bool, cropped) placed at ``offset`` (z, y, x) in ``volume``.

    Raises
    ------
    ValueError
        The mask is empty or does not fit inside the volume.
    """
    mask = np.asarray(mask, dtype=bool)
    z0, y0, x0 = (int(v) for v in offset)
    nz, ny, nx = volume.array.shape
    if mask.ndim != 3 or z0 < 0 or y0 < 0 or x0 < 0 or z0 + mask.shape[0] > nz or y0 + mask.shape[1] > ny or x0 + mask.shape[2] > nx:
        raise ValueError(f"mask {mask.shape} at {offset} does not fit in the volume {volume.array.shape}")
    idx = np.argwhere(mask)
    if idx.size == 0:
        raise ValueError("empty lesion mask")
    idx_full = idx + np.array([z0, y0, x0])

    voxel_ml = abs(float(np.linalg.det(volume.affine[:3, :3]))) / 1000.0
    centroid_kji = idx_full.mean(axis=0)
    center = volume.index_to_lps(centroid_kji[::-1])
    lo, hi = idx_full.min(axis=0), idx_full.max(axis=0)
    corners = np.array([[i, j, k] for k in (lo[0], hi[0]) for j in (lo[1], hi[1]) for i in (lo[2], hi[2])], float)
    corners_lps = volume.index_to_lps(corners)

    sx, sy, _ = volume.spacing
    long_axis, short_axis, k_best = 0.0, 0.0, int(idx[0, 0])
    best_key = (-1.0, -1)
    for k in np.unique(idx[:, 0]):
        plane = mask[k]
        la, sa = axial_diameters(plane, (sx, sy))
        key = (round(la, 6), int(np.count_nonzero(plane)))
        if key > best_key:
            best_key, long_axis, short_axis, k_best = key, la, sa, int(k)

    values = volume.array[z0 : z0 + mask.shape[0], y0 : y0 + mask.shape[1], x0 : x0 + mask.shape[2]][mask]
    return LesionMeasurements(
        center_lps_mm=_vec(center),
        bbox_lps_mm_min=_vec(corners_lps.min(axis=0)),
        bbox_lps_mm_max=_vec(corners_lps.max(axis=0)),
        volume_ml=float(idx.shape[0] * voxel_ml),
        long_axis_mm=float(long_axis),
        short_axis_mm=float(short_axis),
        mean_hu=float(values.astype(np.float64).mean()),
        slice_index=k_best + z0,
        side=_side(lungs, mask, (z0, y0, x0), float(center[0])),
    )


def axial_diameters(plane: np.ndarray, pixel_mm: tuple[float, float]) -> tuple[float, float]:
    """(long, short) axis in mm of a 2-D mask (rows, columns) with pixel size (column, row) mm.

    Long = largest distance between two points of the 0.5-level outline (max Feret
    diameter); short = extent of the outline perpendicular to that direction.
    """
    if not plane.any():
        return 0.0, 0.0
    sx, sy = pixel_mm
    contours = find_contours(np.pad(plane.astype(np.float32), 1), 0.5)
    points = np.concatenate(contours) if contours else np.argwhere(plane).astype(float) + 1.0
    pts = np.unique(points * np.array([sy, sx]), axis=0)  # (row mm, column mm)
    if len(pts) >= 3:
        try:
            pts = pts[ConvexHull(pts).vertices]
        except QhullError:  # collinear outline (a one-pixel line): keep all points
            pass
    diff = pts[:, None, :] - pts[None, :, :]
    dist2 = np.einsum("ijk,ijk->ij", diff, diff)
    a, b = np.unravel_index(int(np.argmax(dist2)), dist2.shape)
    long_axis = math.sqrt(float(dist2[a, b]))
    if long_axis == 0.0:
        return 0.0, 0.0
    direction = (pts[b] - pts[a]) / long_axis
    normal = np.array([-direction[1], direction[0]])
    proj = pts @ normal
    return long_axis, float(proj.max() - proj.min())


def _side(lungs: np.ndarray | None, mask: np.ndarray, offset: tuple[int, int, int], center_x: float) -> str | None:
    """Majority lung label under the mask, else the LPS x sign of the centre."""
    if lungs is not None:
        z0, y0, x0 = offset
        dz, dy, dx = mask.shape
        under = np.asarray(lungs)[z0 : z0 + dz, y0 : y0 + dy, x0 : x0 + dx][mask]
        right, left = int(np.count_nonzero(under == 1)), int(np.count_nonzero(under == 2))
        if right or left:
            return "right" if right >= left else "left"
    if not math.isfinite(center_x) or center_x == 0.0:
        return None
    return "right" if center_x < 0 else "left"


def _vec(values: np.ndarray) -> Vec3:
    return (float(values[0]), float(values[1]), float(values[2]))

"""When a redrawn mask still describes the same finding.

A finding's mask is drawn more than once: the detection's coarse region, the classical outline
seeded at its peak, the patch network's outline. A later outline replaces an earlier one only
when it is the same object, redrawn: about the same volume, and either centred where the earlier
mask was or holding the point the finding was detected at while lying mostly inside the earlier
mask. Otherwise a leak into a vessel or
the chest wall would move the finding (its reported centre is its mask's centroid) away from
the lesion it was found on.
"""

from __future__ import annotations

import numpy as np

__all__ = ["MIN_AGREEMENT_MM", "MIN_SHARE_INSIDE", "VOLUME_FACTOR", "centroid_mm", "holds", "same_finding", "share_inside"]

#: Centroids this close (mm) always agree, whatever the finding's size.
MIN_AGREEMENT_MM = 3.0
#: Volumes within this factor of each other agree (by default).
VOLUME_FACTOR = 3.0
#: An outline holding the detection's peak but centred elsewhere agrees when at least this share
#: of it lies inside the reference mask: a part of the detection, not a leak from it.
MIN_SHARE_INSIDE = 0.5


def centroid_mm(mask: np.ndarray, offset: tuple[int, int, int], spacing_xyz: tuple[float, ...]) -> np.ndarray:
    """(z, y, x) centroid in mm of a cropped mask placed at ``offset``."""
    zz, yy, xx = np.nonzero(mask)
    sx, sy, sz = spacing_xyz[:3]
    return np.array([(zz.mean() + offset[0]) * sz, (yy.mean() + offset[1]) * sy, (xx.mean() + offset[2]) * sx])


def holds(mask: np.ndarray, offset: tuple[int, int, int], point: tuple[int, int, int]) -> bool:
    """Whether the voxel ``point`` (volume indices) is in the cropped mask placed at ``offset``."""
    local = tuple(int(p) - int(o) for p, o in zip(point, offset))
    return all(0 <= i < n for i, n in zip(local, mask.shape)) and bool(mask[local])


def share_inside(mask: np.ndarray, offset: tuple[int, int, int],
                 reference: np.ndarray, reference_offset: tuple[int, int, int]) -> float:
    """Share of the voxels of one cropped mask that lie inside another (both on the volume's grid)."""
    n = int(np.count_nonzero(mask))
    if n == 0:
        return 0.0
    lo = [max(a, b) for a, b in zip(offset, reference_offset)]
    hi = [min(a + s, b + t) for a, s, b, t in zip(offset, mask.shape, reference_offset, reference.shape)]
    if any(h <= low for low, h in zip(lo, hi)):
        return 0.0
    mine = mask[tuple(slice(low - o, h - o) for low, h, o in zip(lo, hi, offset))]
    theirs = reference[tuple(slice(low - o, h - o) for low, h, o in zip(lo, hi, reference_offset))]
    return float(np.count_nonzero(mine & theirs)) / n


def same_finding(outline: np.ndarray, outline_offset: tuple[int, int, int],
                 reference: np.ndarray, reference_offset: tuple[int, int, int],
                 spacing_xyz: tuple[float, ...], *, radius_mm: float,
                 anchor: tuple[int, int, int] | None = None, volume_factor: float = VOLUME_FACTOR) -> bool:
    """Whether ``outline`` redraws ``reference`` (both cropped masks on the volume's grid).

    Same finding: volumes within ``volume_factor`` of each other, and either the outline's centroid
    lies within ``radius_mm`` (at least :data:`MIN_AGREEMENT_MM`) of the reference's, or it holds
    ``anchor`` (the detection's peak voxel, when known) and lies mostly (:data:`MIN_SHARE_INSIDE`)
    inside the reference. The second matters for a juxtavascular nodule: the detection's coarse
    region runs along the vessel, which pulls its centroid off the nodule that a good outline
    covers. An outline that holds the peak but leaked out of the detection (a mass running into
    the hilum) is not the same finding.
    """
    ratio = np.count_nonzero(outline) / max(1, np.count_nonzero(reference))
    if not 1.0 / volume_factor <= ratio <= volume_factor:
        return False
    distance = float(np.linalg.norm(centroid_mm(outline, outline_offset, spacing_xyz)
                                    - centroid_mm(reference, reference_offset, spacing_xyz)))
    if distance <= max(radius_mm, MIN_AGREEMENT_MM):
        return True
    return (anchor is not None and holds(outline, outline_offset, anchor)
            and share_inside(outline, outline_offset, reference, reference_offset) >= MIN_SHARE_INSIDE)

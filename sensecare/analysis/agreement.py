"""When a redrawn mask still describes the same finding.

A finding's mask is drawn more than once: the detection's coarse region, the classical outline
seeded at its peak, the patch network's outline. A later outline replaces an earlier one only
when it is the same object, redrawn: about the same volume, and either holding the point the
finding was detected at or centred where the earlier mask was. Otherwise a leak into a vessel or
the chest wall would move the finding (its reported centre is its mask's centroid) away from
the lesion it was found on.
"""

from __future__ import annotations

import numpy as np

__all__ = ["MIN_AGREEMENT_MM", "VOLUME_FACTOR", "centroid_mm", "holds", "same_finding"]

#: Centroids this close (mm) always agree, whatever the finding's size.
MIN_AGREEMENT_MM = 3.0
#: Volumes within this factor of each other agree (by default).
VOLUME_FACTOR = 3.0


def centroid_mm(mask: np.ndarray, offset: tuple[int, int, int], spacing_xyz: tuple[float, ...]) -> np.ndarray:
    """(z, y, x) centroid in mm of a cropped mask placed at ``offset``."""
    zz, yy, xx = np.nonzero(mask)
    sx, sy, sz = spacing_xyz[:3]
    return np.array([(zz.mean() + offset[0]) * sz, (yy.mean() + offset[1]) * sy, (xx.mean() + offset[2]) * sx])


def holds(mask: np.ndarray, offset: tuple[int, int, int], point: tuple[int, int, int]) -> bool:
    """Whether the voxel ``point`` (volume indices) is in the cropped mask placed at ``offset``."""
    local = tuple(int(p) - int(o) for p, o in zip(point, offset))
    return all(0 <= i < n for i, n in zip(local, mask.shape)) and bool(mask[local])


def same_finding(outline: np.ndarray, outline_offset: tuple[int, int, int],
                 reference: np.ndarray, reference_offset: tuple[int, int, int],
                 spacing_xyz: tuple[float, ...], *, radius_mm: float,
                 anchor: tuple[int, int, int] | None = None, volume_factor: float = VOLUME_FACTOR) -> bool:
    """Whether ``outline`` redraws ``reference`` (both cropped masks on the volume's grid).

    Same finding: volumes within ``volume_factor`` of each other, and the outline holds ``anchor`` (the
    detection's peak voxel, when known) or its centroid lies within ``radius_mm`` (at least
    :data:`MIN_AGREEMENT_MM`) of the reference's. The anchor matters for a juxtavascular nodule:
    the detection's coarse region runs along the vessel, which pulls its centroid off the nodule
    that a good outline covers.
    """
    ratio = np.count_nonzero(outline) / max(1, np.count_nonzero(reference))
    if not 1.0 / volume_factor <= ratio <= volume_factor:
        return False
    if anchor is not None and holds(outline, outline_offset, anchor):
        return True
    distance = float(np.linalg.norm(centroid_mm(outline, outline_offset, spacing_xyz)
                                    - centroid_mm(reference, reference_offset, spacing_xyz)))
    return distance <= max(radius_mm, MIN_AGREEMENT_MM)

"""Helpers on boolean voxel masks shared by the DICOM encoders and the analysis (neither imports the other)."""

from __future__ import annotations

import numpy as np

__all__ = ["bounding_box"]


def bounding_box(mask: np.ndarray) -> tuple[slice, slice, slice] | None:
    """Bounding box of the nonzero voxels of a 3-D ``mask`` (None when empty), from its projections.

    ``any`` stops at the first set voxel of each slice, where ``ndimage.find_objects`` (on a
    uint8 copy) visits every voxel of a series-sized mask.
    """
    zs = np.flatnonzero(mask.any(axis=(1, 2)))
    if zs.size == 0:
        return None
    plane = mask[zs[0] : zs[-1] + 1].any(axis=0)
    rows, cols = np.flatnonzero(plane.any(axis=1)), np.flatnonzero(plane.any(axis=0))
    return (slice(int(zs[0]), int(zs[-1]) + 1), slice(int(rows[0]), int(rows[-1]) + 1), slice(int(cols[0]), int(cols[-1]) + 1))

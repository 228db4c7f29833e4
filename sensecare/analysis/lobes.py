"""Approximate lung lobes from each lung's extent, for lobe-wise severity scores.

Fissures are not detected yet: the oblique fissure is modelled as a plane that
rises from the front of the lung base to the back of its upper third (its usual
course from the T4-T5 level posteriorly to the sixth costochondral junction), and
the right horizontal fissure as a level plane in the anterior part. Good enough
to split involvement into five regions for a 0-20 score; not a lobe segmentation.
"""

from __future__ import annotations

import enum

import numpy as np

METHOD = "geometric approximation: oblique and horizontal fissure planes from each lung's extent"

#: Height (0 = lung base, 1 = apex) of the oblique fissure at the front and at the back of the lung.
OBLIQUE_FRONT, OBLIQUE_BACK = 0.15, 0.70
#: Height of the right horizontal fissure, which only exists in front of the oblique one.
HORIZONTAL = 0.55


class Lobe(int, enum.Enum):
    RUL = 1
    RML = 2
    RLL = 3
    LUL = 4
    LLL = 5


def approximate_lobes(lungs: np.ndarray, superior_axis_sign: float, posterior_axis_sign: float) -> np.ndarray:
    """Lobe labels (:class:`Lobe` values, 0 outside) for a lung label mask (1 right, 2 left).

    Parameters
    ----------
    lungs : numpy.ndarray
        uint8 (z, y, x) with 1 = right lung, 2 = left lung.
    superior_axis_sign : float
        +1 when increasing z (array axis 0) points to the head (LPS +z), -1 otherwise.
    posterior_axis_sign : float
        +1 when increasing y (array axis 1) points to the back (LPS +y), -1 otherwise.

    Note
    ----
    The fissure planes depend only on a voxel's height (z) and depth (y), so
    each lung gets a small (z, y) table of labels that is spread over x inside
    the lung's bounding box: no per-voxel coordinate arrays, which on a
    512x512x300 CT cost more than the rest of the opacity stage.
    """
    out = np.zeros(lungs.shape, dtype=np.uint8)
    for side, upper, middle, lower in ((1, Lobe.RUL, Lobe.RML, Lobe.RLL), (2, Lobe.LUL, None, Lobe.LLL)):
        mask = lungs == side
        zs = np.flatnonzero(mask.any(axis=(1, 2)))
        if zs.size == 0:
            continue
        ys = np.flatnonzero(mask[zs[0] : zs[-1] + 1].any(axis=(0, 2)))
        box = (slice(zs[0], zs[-1] + 1), slice(ys[0], ys[-1] + 1))
        height = _normalised(np.arange(zs[0], zs[-1] + 1), superior_axis_sign)[:, None]
        depth = _normalised(np.arange(ys[0], ys[-1] + 1), posterior_axis_sign)[None, :]  # 0 = front, 1 = back
        fissure = OBLIQUE_FRONT + (OBLIQUE_BACK - OBLIQUE_FRONT) * depth
        table = np.where(height < fissure, lower.value, upper.value).astype(np.uint8)
        if middle is not None:
            table[(height >= fissure) & (height < HORIZONTAL)] = middle.value
        inside = mask[box]
        out[box][inside] = np.broadcast_to(table[:, :, None], inside.shape)[inside]
    return out


def _normalised(coordinate: np.ndarray, sign: float) -> np.ndarray:
    low, high = coordinate.min(), coordinate.max()
    span = max(float(high - low), 1.0)
    share = (coordinate - low) / span
    return share if sign > 0 else 1.0 - share

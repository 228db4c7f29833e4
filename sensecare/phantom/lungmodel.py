"""A coarse voxel model of the lungs for planning (trees, lesions, opacity).

Planning needs questions answered anywhere in the chest (which lobe is this
point in, how deep inside the lung, where is the pleura) long before the
fine volume exists, and independently of the output grid so that a seed
gives the same patient at any resolution.  A 3 mm grid answers them in a
fraction of a second.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from sensecare.phantom.anatomy import Anatomy, lobe_of
from sensecare.phantom.shapes import evaluate

__all__ = ["LungModel", "build_lung_model"]

STEP_MM = 3.0


@dataclass(frozen=True, eq=False)
class LungModel:
    """Lungs on a regular coarse grid (arrays are ``(z, y, x)``).

    Attributes
    ----------
    xs, ys, zs : numpy.ndarray
        Voxel centre coordinates (mm).
    side : numpy.ndarray
        0 outside, 1 right lung, 2 left lung.
    lobe : numpy.ndarray
        0 outside, 1 RUL, 2 RML, 3 RLL, 4 LUL, 5 LLL.
    depth : numpy.ndarray
        Distance (mm) from each lung voxel centre to the nearest non-lung voxel.
    """

    xs: np.ndarray
    ys: np.ndarray
    zs: np.ndarray
    side: np.ndarray
    lobe: np.ndarray
    depth: np.ndarray

    @property
    def step(self) -> float:
        return float(self.xs[1] - self.xs[0])

    @property
    def voxel_ml(self) -> float:
        return self.step**3 / 1000.0

    def centres(self, mask: np.ndarray) -> np.ndarray:
        """LPS centres (N, 3) of the voxels in ``mask``."""
        k, j, i = np.nonzero(mask)
        return np.column_stack([self.xs[i], self.ys[j], self.zs[k]])

    def index(self, pts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Nearest voxel ``(k, j, i)`` of points (N, 3), clamped to the grid."""
        pts = np.atleast_2d(pts)
        s = self.step
        i = np.clip(np.rint((pts[:, 0] - self.xs[0]) / s).astype(int), 0, self.xs.size - 1)
        j = np.clip(np.rint((pts[:, 1] - self.ys[0]) / s).astype(int), 0, self.ys.size - 1)
        k = np.clip(np.rint((pts[:, 2] - self.zs[0]) / s).astype(int), 0, self.zs.size - 1)
        return k, j, i

    def lobe_at(self, pts: np.ndarray) -> np.ndarray:
        return self.lobe[self.index(pts)]

    def side_at(self, pts: np.ndarray) -> np.ndarray:
        return self.side[self.index(pts)]

    def depth_at(self, pts: np.ndarray) -> np.ndarray:
        """Depth inside the lung (mm, trilinear); 0 or less outside."""
        return ndi.map_coordinates(self.depth, self._fractional(pts), order=1, mode="nearest")

    def _fractional(self, pts: np.ndarray) -> np.ndarray:
        pts = np.atleast_2d(pts)
        s = self.step
        return np.vstack([(pts[:, 2] - self.zs[0]) / s, (pts[:, 1] - self.ys[0]) / s, (pts[:, 0] - self.xs[0]) / s])


def build_lung_model(anat: Anatomy) -> LungModel:
    """Sample the anatomy's lungs and fissures on a 3 mm grid."""
    s = STEP_MM
    xs = np.arange(-185.0, 185.0 + s / 2, s)
    ys = np.arange(-130.0, 130.0 + s / 2, s)
    zs = np.arange(np.floor((anat.z_bottom - 20) / s) * s, anat.z_apex + 2 * s, s)
    side = np.zeros((zs.size, ys.size, xs.size), dtype=np.uint8)
    lobe = np.zeros_like(side)
    X, Y, Z = xs[None, None, :], ys[None, :, None], zs[:, None, None]
    for value, name in ((1, "R"), (2, "L")):
        inside = evaluate(anat.lungs[name], xs, ys, zs) < 0
        side[inside & (side == 0)] = value
        lobes = lobe_of(anat, name, X, Y, Z)
        lobe[inside] = np.broadcast_to(lobes, side.shape)[inside]
    depth = ndi.distance_transform_edt(side > 0, sampling=s).astype(np.float32)
    return LungModel(xs=xs, ys=ys, zs=zs, side=side, lobe=lobe, depth=depth)

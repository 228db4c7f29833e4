"""Where the voxels are: output slices, the finer z grid they are averaged from.

Coordinates are DICOM patient LPS millimetres (x to the patient's left, y
posterior, z superior).  Output arrays are ``(z, y, x)``; slice ``k`` lies at
``z[k]`` and ``z`` increases with ``k`` (feet first in the array, like
:mod:`sensecare.dicom.volume` sorts a series).

A CT slice is not a plane but an average over its slice sensitivity profile
(SSP).  Anatomy is therefore drawn on a *fine* z grid (at most
:data:`FINE_DZ_MM` apart, ``m`` fine slices per slice spacing) and each output
slice is the SSP-weighted sum of the fine slices around it.  Output slice
``k`` coincides with fine slice ``pad + k * m``, which is where the ground
truth masks are sampled.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.special import ndtr

__all__ = ["FINE_DZ_MM", "ScanGrid", "make_grid", "ssp_weights"]

#: Largest distance between fine slices (mm).
FINE_DZ_MM = 1.25
#: Gaussian edge of the slice profile as a fraction of the nominal thickness.
SSP_EDGE = 0.15


@dataclass(frozen=True, eq=False)
class ScanGrid:
    """Voxel centres of the output volume and of the fine drawing grid.

    Attributes
    ----------
    x, y : numpy.ndarray
        Column and row centre coordinates (mm), ascending.
    z : numpy.ndarray
        Output slice centres (mm), ascending.
    fine_z : numpy.ndarray
        Fine slice centres (mm), ascending, uniform ``fine_dz`` apart.
    m, pad : int
        Fine slices per output spacing; fine index of output slice 0.
    ssp : numpy.ndarray
        Weights (sum 1) of fine slices ``pad + k*m + j`` for ``j = -pad..pad``.
    thickness, spacing : float
        Nominal slice thickness and slice spacing (mm).
    """

    x: np.ndarray
    y: np.ndarray
    z: np.ndarray
    fine_z: np.ndarray
    m: int
    pad: int
    ssp: np.ndarray
    thickness: float
    spacing: float

    @property
    def pixel(self) -> float:
        return float(self.x[1] - self.x[0])

    @property
    def fine_dz(self) -> float:
        return float(self.fine_z[1] - self.fine_z[0]) if self.fine_z.size > 1 else self.spacing

    @property
    def shape(self) -> tuple[int, int, int]:
        """Output shape ``(z, y, x)``."""
        return (self.z.size, self.y.size, self.x.size)

    @property
    def fine_shape(self) -> tuple[int, int, int]:
        return (self.fine_z.size, self.y.size, self.x.size)

    @property
    def origin(self) -> tuple[float, float, float]:
        """LPS centre of output voxel ``(i, j, k) = (0, 0, 0)``."""
        return (float(self.x[0]), float(self.y[0]), float(self.z[0]))

    @property
    def spacing_xyz(self) -> tuple[float, float, float]:
        return (self.pixel, float(self.y[1] - self.y[0]), self.spacing)

    @property
    def center_fine_index(self) -> np.ndarray:
        """Fine slice index of each output slice."""
        return self.pad + self.m * np.arange(self.z.size)

    def index_to_lps(self, ijk: np.ndarray) -> np.ndarray:
        """Output voxel indices ``(i, j, k)`` (N, 3) to LPS mm."""
        ijk = np.asarray(ijk, dtype=float)
        return np.asarray(self.origin) + ijk * np.asarray(self.spacing_xyz)


def ssp_weights(thickness: float, dz: float) -> np.ndarray:
    """Integral of the slice profile over each fine slice, centred, summing to 1.

    The profile is a rectangle of the nominal thickness with Gaussian edges
    (sigma = 15 % of the thickness), close to measured multi-slice SSPs.
    """
    sigma = max(SSP_EDGE * thickness, 1e-3)
    half = thickness / 2.0
    reach = half + 3.0 * sigma
    pad = max(0, math.ceil(reach / dz - 0.5))
    centres = np.arange(-pad, pad + 1) * dz

    def g(u: np.ndarray) -> np.ndarray:  # antiderivative of Phi(u / sigma)
        return u * ndtr(u / sigma) + sigma * np.exp(-0.5 * (u / sigma) ** 2) / math.sqrt(2 * math.pi)

    def cdf(b: np.ndarray) -> np.ndarray:  # integral of the profile from -inf to b, times thickness
        return g(b + half) - g(b - half)

    w = cdf(centres + dz / 2) - cdf(centres - dz / 2)
    w = np.clip(w, 0.0, None)
    keep = w > 1e-4 * w.max()
    first, last = np.flatnonzero(keep)[[0, -1]]
    n = max(pad - first, last - pad)
    w = w[pad - n : pad + n + 1]
    return (w / w.sum()).astype(np.float64)


def make_grid(
    matrix: int,
    pixel: float,
    y_centre: float,
    z_first: float,
    n_slices: int,
    thickness: float,
    spacing: float,
) -> ScanGrid:
    """Build a :class:`ScanGrid` centred on ``x = 0`` and ``y = y_centre``."""
    half = (matrix - 1) / 2.0
    x = (np.arange(matrix) - half) * pixel
    y = y_centre + (np.arange(matrix) - half) * pixel
    z = z_first + np.arange(n_slices) * spacing
    m = max(1, math.ceil(spacing / FINE_DZ_MM - 1e-9))
    dz = spacing / m
    ssp = ssp_weights(thickness, dz)
    pad = (ssp.size - 1) // 2
    fine_z = z_first + (np.arange((n_slices - 1) * m + 1 + 2 * pad) - pad) * dz
    return ScanGrid(x=x, y=y, z=z, fine_z=fine_z, m=m, pad=pad, ssp=ssp, thickness=thickness, spacing=spacing)

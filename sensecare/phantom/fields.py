"""Smooth random fields: tissue texture, patchy opacity, incomplete fissures.

A field is Gaussian white noise on a coarse regular grid, low-pass filtered
to a chosen correlation length and scaled to unit standard deviation; it is
sampled anywhere by trilinear interpolation.  The coarse grid (a few
samples per correlation length) keeps 3-D textures cheap at any output
resolution, and the same field is seen whatever grid samples it, so a
lesion's texture does not change with slice thickness.
"""

from __future__ import annotations

import numpy as np
from scipy import fft as sfft

__all__ = ["SmoothField"]


class SmoothField:
    """Unit-variance Gaussian random field with correlation length ``corr_mm``.

    Parameters
    ----------
    lo, hi : (x, y, z) mm
        Region covered; samples outside are clamped to its border.
    corr_mm : float
        Standard deviation (mm) of the Gaussian smoothing kernel.
    rng : numpy.random.Generator
        Source of the white noise.
    step_mm : float, optional
        Coarse grid spacing; default ``corr_mm`` (aliasing is then below 1 %).
    """

    def __init__(self, lo, hi, corr_mm: float, rng: np.random.Generator, step_mm: float | None = None) -> None:  # type: ignore[no-untyped-def]
        step = float(step_mm or max(corr_mm, 0.25))
        self.lo = np.asarray(lo, dtype=np.float64)
        n = np.maximum(np.ceil((np.asarray(hi, dtype=np.float64) - self.lo) / step).astype(int) + 2, 2)
        self.step = step
        self.shape_xyz = tuple(int(v) for v in n)
        white = rng.standard_normal((n[2], n[1], n[0])).astype(np.float32)
        spec = sfft.rfftn(white)
        freqs = [sfft.fftfreq(n[2], step), sfft.fftfreq(n[1], step), sfft.rfftfreq(n[0], step)]
        fz, fy, fx = np.meshgrid(*freqs, indexing="ij", sparse=True)
        spec *= np.exp(-2.0 * (np.pi * corr_mm) ** 2 * (fx**2 + fy**2 + fz**2)).astype(np.float32)
        field = sfft.irfftn(spec, s=white.shape).astype(np.float32)
        field -= field.mean()
        field /= max(float(field.std()), 1e-6)
        self.data = field  # (z, y, x)

    def _axis(self, coords: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
        n = self.shape_xyz[axis]
        u = (np.asarray(coords, dtype=np.float64) - self.lo[axis]) / self.step
        u = np.clip(u, 0.0, n - 1.000001)
        i0 = np.floor(u).astype(np.intp)
        return i0, (u - i0).astype(np.float32)

    def sample_grid(self, xs: np.ndarray, ys: np.ndarray, zs: np.ndarray) -> np.ndarray:
        """Field on the grid ``(zs, ys, xs)`` (separable linear interpolation)."""
        a = self.data
        for axis_np, coords, axis_xyz in ((0, zs, 2), (1, ys, 1), (2, xs, 0)):
            i0, w = self._axis(coords, axis_xyz)
            shape = [1, 1, 1]
            shape[axis_np] = w.size
            w = w.reshape(shape)
            a = np.take(a, i0, axis=axis_np) * (1.0 - w) + np.take(a, i0 + 1, axis=axis_np) * w
        return a

    def sample_points(self, pts: np.ndarray) -> np.ndarray:
        """Field at points ``(N, 3)`` in LPS mm."""
        pts = np.atleast_2d(pts)
        idx, wts = zip(*(self._axis(pts[:, ax], ax) for ax in range(3)))
        out = np.zeros(len(pts), dtype=np.float32)
        for dz in (0, 1):
            for dy in (0, 1):
                for dx in (0, 1):
                    w = ((wts[2] if dz else 1 - wts[2]) * (wts[1] if dy else 1 - wts[1])
                         * (wts[0] if dx else 1 - wts[0]))
                    out += w * self.data[idx[2] + dz, idx[1] + dy, idx[0] + dx]
        return out

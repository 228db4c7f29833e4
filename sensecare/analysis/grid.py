"""Integer-factor coarse grids: heavy morphology runs on ~2 mm voxels, results go back exactly.

The block arithmetic itself is :mod:`sensecare.analysis.morphology`'s; this only
picks the factors for a target voxel size.

Block averaging by whole factors keeps the mapping between the fine and the
coarse grid trivial (no interpolation, no half-voxel shifts), which is what the
masks need to line up with the CT again.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sensecare.analysis.morphology import block_mean, upsample_repeat


@dataclass(frozen=True)
class CoarseGrid:
    """Factors (z, y, x) and the fine shape they came from."""

    factors: tuple[int, int, int]
    fine_shape: tuple[int, int, int]

    @classmethod
    def for_spacing(cls, shape: tuple[int, ...], spacing_xyz: tuple[float, float, float], target_mm: float) -> CoarseGrid:
        sx, sy, sz = spacing_xyz
        factors = tuple(max(1, int(round(target_mm / s))) for s in (sz, sy, sx))  # noqa: RUF046 (numpy floats round to floats)
        return cls(factors, tuple(int(n) for n in shape))  # type: ignore[arg-type]

    @property
    def coarse_shape(self) -> tuple[int, int, int]:
        return tuple(-(-n // f) for n, f in zip(self.fine_shape, self.factors))  # type: ignore[return-value]

    def spacing_xyz(self, fine_spacing_xyz: tuple[float, float, float]) -> tuple[float, float, float]:
        fz, fy, fx = self.factors
        sx, sy, sz = fine_spacing_xyz
        return (sx * fx, sy * fy, sz * fz)

    def mean(self, array: np.ndarray) -> np.ndarray:
        """Block means (edge blocks padded by edge values), float32."""
        return block_mean(array, self.factors)

    def fraction(self, mask: np.ndarray) -> np.ndarray:
        """Share of each block that is inside ``mask`` (0..1), float32.

        The mask goes to :func:`block_mean` as it is: it converts one slab at a
        time, where converting the whole mask first took a float32 copy four
        times its size (the same values either way).
        """
        return self.mean(mask)

    def upsample(self, coarse: np.ndarray) -> np.ndarray:
        """Each coarse voxel repeated over its block, cropped to the fine shape."""
        return upsample_repeat(coarse, self.factors, self.fine_shape)

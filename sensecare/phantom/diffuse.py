"""Diffuse viral-pneumonia-like opacity: patchy, bilateral, peripheral ground glass.

COVID-19 and other viral pneumonias typically show multifocal ground-glass
opacity that is bilateral, subpleural and posterior/basal, with crazy
paving and some consolidation in the denser patches.  We draw it as a
smooth random field biased towards the pleura, the dependent lung and the
bases, thresholded so that the requested fraction of lung volume is
involved; the densest fifth of the involved volume becomes consolidation.

The disease fades in over a margin (``RAMP`` of the field). What counts as
involved in the ground truth is where it has reached at least half its full
density: the visible edge, as for lesion masks. (Counting the whole margin made
the truth include lung whose HU had risen by a few units, which no reader or
method can see; PO on diffuse phantoms then read about 6 points low.)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from sensecare.phantom.fields import SmoothField
from sensecare.phantom.lungmodel import LungModel

__all__ = ["Diffuse", "plan_diffuse"]

#: Highest HU still counted as ground glass (Chaganti et al. 2020: high opacity is >= -200 HU).
HIGH_OPACITY_HU = -200.0
#: The disease reaches full density over this much of the involvement field past its threshold;
#: it counts as involved from half of it (the half-maximum edge).
RAMP = 0.25
VISIBLE_SHARE = 0.5


@dataclass(frozen=True, eq=False)
class Diffuse:
    """The involvement field on the lung model grid and its two thresholds."""

    model: LungModel
    weight: np.ndarray  # (z, y, x) on the model grid
    threshold: float  # involved where weight > threshold
    dense: float  # consolidation where weight > dense
    ggo_hu: float
    paving: float
    texture: SmoothField
    reticular: SmoothField

    def _sample(self, xs: np.ndarray, ys: np.ndarray, zs: np.ndarray) -> np.ndarray:
        m = self.model
        s = m.step
        a = self.weight
        for axis, coords, origin in ((0, zs, m.zs[0]), (1, ys, m.ys[0]), (2, xs, m.xs[0])):
            u = np.clip((np.asarray(coords, float) - origin) / s, 0, a.shape[axis] - 1.000001)
            i0 = np.floor(u).astype(np.intp)
            w = (u - i0).astype(np.float32)
            shape = [1, 1, 1]
            shape[axis] = w.size
            w = w.reshape(shape)
            a = np.take(a, i0, axis=axis) * (1 - w) + np.take(a, i0 + 1, axis=axis) * w
        return a

    def apply(self, xs: np.ndarray, ys: np.ndarray, zs: np.ndarray, base: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Parenchyma HU with opacity added, and the opacity class (0 none, 1 ground glass, 2 high)."""
        w = self._sample(xs, ys, zs)
        if not (w > self.threshold).any():
            return base, np.zeros(base.shape, np.uint8)
        t = np.clip((w - self.threshold) / RAMP, 0.0, 1.0)
        ramp = t * t * (3 - 2 * t)
        involved = ramp >= VISIBLE_SHARE
        ggo = self.ggo_hu + 45.0 * self.texture.sample_grid(xs, ys, zs)
        if self.paving > 0:
            lines = np.exp(-((self.reticular.sample_grid(xs, ys, zs) / 0.12) ** 2))
            ggo = ggo + self.paving * 140.0 * lines
        disease = ggo + (25.0 - ggo) * np.clip((w - self.dense) / 0.1, 0.0, 1.0)
        out = base + (disease - base) * ramp
        cls = np.where(involved, np.where(disease >= HIGH_OPACITY_HU, 2, 1), 0).astype(np.uint8)
        return out.astype(np.float32), cls


def plan_diffuse(fraction: float, model: LungModel, rng: np.random.Generator) -> Diffuse | None:
    """Involvement field for ``fraction`` of the lung volume, or None when no opacity is wanted."""
    if fraction <= 0:
        return None
    lo = (model.xs[0], model.ys[0], model.zs[0])
    hi = (model.xs[-1], model.ys[-1], model.zs[-1])
    patchy = SmoothField(lo, hi, 9.0, rng)
    fine = SmoothField(lo, hi, 3.5, rng)
    lung = model.side > 0
    base = patchy.sample_grid(model.xs, model.ys, model.zs) + 0.35 * fine.sample_grid(model.xs, model.ys, model.zs)
    periphery = np.exp(-model.depth / 18.0)
    Y = model.ys[None, :, None]
    Z = model.zs[:, None, None]
    posterior = np.clip((Y + 60.0) / 150.0, 0.0, 1.0)
    zl = model.zs[np.flatnonzero(lung.any(axis=(1, 2)))]
    basal = np.clip((zl.max() - Z) / max(zl.max() - zl.min(), 1.0), 0.0, 1.0)
    weight = (base + 1.6 * periphery + 0.6 * posterior + 0.5 * basal).astype(np.float32)
    weight = ndi.gaussian_filter(weight, 0.6)
    vals = weight[lung]
    visible = float(np.quantile(vals, 1.0 - fraction))  # where the disease is half dense
    threshold = visible - VISIBLE_SHARE * RAMP  # the smoothstep is 1/2 half way up its ramp
    involved = vals[vals > visible]
    dense = float(np.quantile(involved, 0.8)) if involved.size else visible + 1.0
    return Diffuse(
        model=model, weight=weight, threshold=threshold, dense=max(dense, visible + 0.15),
        ggo_hu=float(rng.uniform(-640, -560)), paving=float(rng.uniform(0.0, 1.0)),
        texture=SmoothField(lo, hi, 2.0, rng), reticular=SmoothField(lo, hi, 3.0, rng),
    )

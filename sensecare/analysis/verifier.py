"""Third look at each detection: a 3D CNN on multi-scale patches around its peak.

Why: the detection ranker (:mod:`sensecare.analysis.ranker`) sees a detection
through averaged hand-made features, and on held-out phantoms it put many
ground-glass and part-solid nodules the voxel classifier had found at 0.99
below a score of 0.05, behind vessel junctions. Whether a bright spot is a
nodule or where vessels cross is a question of shape in 3D, which is what
false-positive reduction networks answer on LUNA16 (Setio et al. 2016, Dou et
al. 2017): a small convolutional classifier on cubes around each candidate,
at two scales so that it sees both the lesion and what it touches.

Each patch is ``PATCH`` voxels a side, centred on the detection's peak, with
four channels on isotropic grids (thick slices are interpolated, so the
network sees the same voxel size whatever the acquisition):

0. HU relative to the parenchyma at ``FINE_MM`` (the lesion and its margin);
1. the same at ``COARSE_MM`` (the context: vessels running off, the pleura);
2. the lesion region mask at ``FINE_MM`` (where the lung ends);
3. the voxel classifier's probability at ``FINE_MM``.

Images are read from block means of the series on ~``FINE_MM`` and
~``COARSE_MM`` grids (computed once per series), so the noise a patch sees
does not depend much on the scanner's pixel size. The network is a MONAI
``Classifier`` (``models/lesion_verifier``), trained on phantom detections the
voxel classifier never saw.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sensecare.analysis.bundle import load_network
from sensecare.analysis.grid import CoarseGrid
from sensecare.analysis.heatmap import FeatureMaps, HeatmapDetection
from sensecare.analysis.morphology import block_mean

__all__ = ["CHANNELS", "COARSE_MM", "FINE_MM", "PATCH", "LesionVerifier", "PatchSampler", "weighted_mean"]

PATCH = 24
FINE_MM = 1.5
COARSE_MM = 3.0
#: HU above the parenchyma per unit of an image channel, and the channels' clip range.
INPUT_SCALE_HU = 500.0
INPUT_RANGE = (-1.0, 3.0)
CHANNELS = ("hu_fine", "hu_coarse", "region_fine", "probability_fine")

DEFAULT_BUNDLE = Path(__file__).resolve().parents[2] / "models" / "lesion_verifier"


@dataclass(frozen=True)
class _Grid:
    """A block-mean image of the series' region box and how fine indices map onto it."""

    image: np.ndarray
    factors: np.ndarray  # (z, y, x) block factors
    start: np.ndarray  # fine index of the box's first voxel

    def sample(self, centres: np.ndarray, step: np.ndarray, padding: str) -> np.ndarray:
        """One ``PATCH``-cube of this image (trilinear) per centre (n, 3), voxels ``step`` fine voxels apart.

        Output voxel ``o`` reads fine index ``centre + (o - (PATCH - 1) / 2) * step``, which is
        ``(fine - start + 0.5) / factors - 0.5`` on this grid. All cubes are sampled in one
        ``grid_sample`` call (``padding`` ``"border"`` repeats the edge, ``"zeros"`` reads 0).
        """
        import torch

        offsets = (np.arange(PATCH, dtype=np.float64) - (PATCH - 1) / 2.0)[:, None] * step  # (P, 3)
        index = (centres[:, None, :] + offsets[None] - self.start + 0.5) / self.factors - 0.5  # (n, P, 3)
        shape = np.array(self.image.shape, dtype=np.float64)
        normalised = (2.0 * index / np.maximum(shape - 1.0, 1.0) - 1.0).astype(np.float32)
        z, y, x = (torch.from_numpy(np.ascontiguousarray(normalised[:, :, a])) for a in range(3))
        n = len(centres)
        # grid_sample wants (x, y, z) order in the last axis, output (n, 1, P, P, P) indexed z, y, x
        grid = torch.stack(torch.broadcast_tensors(
            x[:, None, None, :], y[:, None, :, None], z[:, :, None, None]), dim=-1)
        source = torch.from_numpy(self.image.astype(np.float32, copy=False))[None, None].expand(n, -1, -1, -1, -1)
        with torch.inference_mode():
            out = torch.nn.functional.grid_sample(source, grid, mode="bilinear", padding_mode=padding,
                                                  align_corners=True)
        return out[:, 0].numpy()


class PatchSampler:
    """Cuts the verifier's input patches out of one series (built once, used per detection)."""

    def __init__(self, hu: np.ndarray, region: np.ndarray, spacing_xyz: tuple[float, float, float],
                 maps: FeatureMaps, probability: np.ndarray) -> None:
        box = maps.box
        start = np.array([s.start for s in box], dtype=np.float64)
        crop = hu[box]
        self.spacing_zyx = np.array(spacing_xyz[::-1], dtype=np.float64)
        self.background = float(maps.background_hu)
        fine_grid = CoarseGrid.for_spacing(crop.shape, spacing_xyz, FINE_MM)
        coarse_grid = CoarseGrid.for_spacing(crop.shape, spacing_xyz, COARSE_MM)
        fine = fine_grid.mean(crop)
        ratio = tuple(c // f for c, f in zip(coarse_grid.factors, fine_grid.factors))
        if all(c == r * f for c, r, f in zip(coarse_grid.factors, ratio, fine_grid.factors)):
            coarse = block_mean(fine, ratio)  # type: ignore[arg-type]  # means of means: an eighth of the reading
        else:
            coarse = coarse_grid.mean(crop)
        self._fine = _Grid(self._scaled(fine), np.array(fine_grid.factors, float), start)
        self._coarse = _Grid(self._scaled(coarse), np.array(coarse_grid.factors, float), start)
        self._region = _Grid(fine_grid.fraction(region[box]), np.array(fine_grid.factors, float), start)
        self._probability = _Grid(probability, np.array(maps.grid.factors, float), start)

    def _scaled(self, mean_hu: np.ndarray) -> np.ndarray:
        """Block-mean HU as the network reads it: relative to the parenchyma, scaled and clipped."""
        scaled = (mean_hu - np.float32(self.background)) / np.float32(INPUT_SCALE_HU)
        return np.clip(scaled, *INPUT_RANGE).astype(np.float32)

    def patches(self, centres: Sequence[tuple[int, int, int]]) -> np.ndarray:
        """float32 (n, len(CHANNELS), PATCH, PATCH, PATCH), one cube per fine-index centre."""
        if not len(centres):
            return np.zeros((0, len(CHANNELS), PATCH, PATCH, PATCH), dtype=np.float32)
        at = np.asarray(centres, dtype=np.float64).reshape(-1, 3)
        fine, coarse = FINE_MM / self.spacing_zyx, COARSE_MM / self.spacing_zyx
        return np.stack([
            self._fine.sample(at, fine, "border"),
            self._coarse.sample(at, coarse, "border"),
            self._region.sample(at, fine, "zeros"),
            self._probability.sample(at, fine, "zeros"),
        ], axis=1)

    def for_detections(self, detections: Sequence[HeatmapDetection]) -> np.ndarray:
        return self.patches([d.peak for d in detections])


class LesionVerifier:
    """The bundle's patch classifier on a torch device: patches in, lesion probability out."""

    def __init__(self, device, bundle: Path = DEFAULT_BUNDLE) -> None:  # type: ignore[no-untyped-def]
        self.model, metadata = load_network(bundle, device, what="lesion verifier")
        self.name = str(metadata.get("name", bundle.name))
        self.version = str(metadata.get("version", "0"))
        own = metadata.get("sensecare", {})
        #: Subtracted from the logit: the network was trained on classes rebalanced by this log ratio.
        self.prior_shift = float(own.get("prior_shift", 0.0))
        #: Only the ranker's best this many detections are verified (each costs a patch and a forward pass).
        self.max_candidates = int(own.get("max_candidates", 128))
        #: How much the verifier's probability weighs against the ranker's (see :meth:`combine`).
        self.weight = float(own.get("verifier_weight", 0.5))
        self.device = device

    def combine(self, ranker_probability: float, verifier_probability: float) -> float:
        """The detection's second-stage probability: a weighted geometric mean of ranker and verifier.

        The two see a detection differently (averaged features against the image itself), so
        each vetoes what it is sure is a vessel; the weight is chosen on the bundle's validation
        phantoms (``configs/train.json``).
        """
        return weighted_mean(ranker_probability, verifier_probability, self.weight)

    def score(self, patches: np.ndarray, batch: int = 128) -> np.ndarray:
        """Lesion probability per patch (the four views of :data:`CHANNELS`)."""
        import torch

        out = np.empty(len(patches), dtype=np.float32)
        with torch.inference_mode():
            for start in range(0, len(patches), batch):
                x = torch.from_numpy(np.ascontiguousarray(patches[start : start + batch])).to(self.device)
                logits = self.model(x)[:, 0].float() - self.prior_shift
                out[start : start + len(x)] = torch.sigmoid(logits).cpu().numpy()
        return out


def weighted_mean(ranker_probability: float, verifier_probability: float, weight: float) -> float:
    """``ranker ** (1 - weight) * verifier ** weight``, each floored at 1e-6 (a zero does not erase the other)."""
    r = max(ranker_probability, 1e-6)
    v = max(verifier_probability, 1e-6)
    return float(r ** (1.0 - weight) * v**weight)

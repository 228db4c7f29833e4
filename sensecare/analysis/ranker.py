"""Second stage: which heatmap detections are lesions (false-positive reduction).

The voxel classifier (:mod:`sensecare.analysis.heatmap`) sees one voxel's
neighbourhood; its connected regions include vessel junctions, bronchial walls
and partial volume at the hilum that look like lesion voxel by voxel but not as
a whole. The ranker looks at each detection as a whole: its probability
profile, size and shape on the working grid, and the voxel features at its
peak and averaged over its half-maximum mask, and gives the probability that
the detection is a lesion (``models/lesion_ranker``, trained on the detections
of phantoms the voxel classifier never saw). It picks which detections are
worth a full-resolution segmentation, and with the peak probability it makes
the finding's confidence (:func:`sensecare.analysis.detect.confidence_of`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from sensecare.analysis.bundle import MlpBundle
from sensecare.analysis.heatmap import FEATURE_NAMES, FeatureMaps, HeatmapDetection

__all__ = ["DESCRIPTOR_NAMES", "LesionRanker", "describe"]

SHAPE_NAMES: tuple[str, ...] = (
    "peak_probability",
    "mean_probability",
    "region_volume_log_mm3",
    "mask_volume_log_mm3",
    "elongation",
    "flatness",
    "extent_ratio",
)
DESCRIPTOR_NAMES: tuple[str, ...] = (
    *SHAPE_NAMES,
    *(f"peak_{name}" for name in FEATURE_NAMES),
    *(f"mean_{name}" for name in FEATURE_NAMES),
)

DEFAULT_BUNDLE = Path(__file__).resolve().parents[2] / "models" / "lesion_ranker"


def describe(detections: Sequence[HeatmapDetection], probability: np.ndarray, maps: FeatureMaps,
             spacing_xyz: tuple[float, float, float]) -> np.ndarray:
    """One row of ``DESCRIPTOR_NAMES`` per detection (float32, shape (n, len(DESCRIPTOR_NAMES)))."""
    out = np.zeros((len(detections), len(DESCRIPTOR_NAMES)), dtype=np.float32)
    if not detections:
        return out
    row_of = np.full(maps.inside.shape, -1, dtype=np.int64)
    row_of[maps.inside] = np.arange(int(np.count_nonzero(maps.inside)))
    gx, gy, gz = maps.grid.spacing_xyz(spacing_xyz)
    zyx = np.array([gz, gy, gx])
    voxel_mm3 = float(np.prod(zyx))
    n_shape = len(SHAPE_NAMES)
    n_features = len(FEATURE_NAMES)
    for i, detection in enumerate(detections):
        mask = detection.coarse_mask
        rows = row_of[detection.coarse_box][mask]
        rows = rows[rows >= 0]
        peak_row = row_of[detection.coarse_peak]
        coords = np.argwhere(mask) * zyx
        # A voxel's own extent keeps one- and two-voxel masks from having zero eigenvalues.
        covariance = np.cov(coords, rowvar=False) if len(coords) > 1 else np.zeros((3, 3))
        eigen = np.sort(np.linalg.eigvalsh(covariance + np.diag(zyx**2 / 12.0)))[::-1]
        extent = (np.ptp(coords, axis=0) + zyx).max() if len(coords) else float(zyx.max())
        volume = float(np.count_nonzero(mask)) * voxel_mm3
        out[i, :n_shape] = (
            detection.score,
            float(probability[detection.coarse_box][mask].mean()),
            np.log10(max(detection.region_voxels * voxel_mm3, 1.0)),
            np.log10(max(volume, 1.0)),
            np.sqrt(eigen[0] / eigen[1]),
            np.sqrt(eigen[1] / eigen[2]),
            extent / (2.0 * (3.0 * volume / (4.0 * np.pi)) ** (1.0 / 3.0)),
        )
        if peak_row >= 0:
            out[i, n_shape : n_shape + n_features] = maps.features[peak_row]
        if rows.size:
            out[i, n_shape + n_features :] = maps.features[rows].mean(axis=0)
    return out


class LesionRanker:
    """The bundle's detection classifier: descriptor rows in, lesion probability out."""

    def __init__(self, device, bundle: Path = DEFAULT_BUNDLE) -> None:  # type: ignore[no-untyped-def]
        self.bundle = MlpBundle(bundle, DESCRIPTOR_NAMES, device, what="lesion ranker")
        own = self.bundle.settings
        self.name = self.bundle.name
        self.version = self.bundle.version
        #: Detections scoring below this are dropped before segmentation.
        self.min_score = float(own.get("min_score", 0.002))
        #: At most this many detections are segmented (best first): each costs a segmentation.
        self.max_findings = int(own.get("max_findings", 48))

    def score(self, descriptors: np.ndarray) -> np.ndarray:
        """Lesion probability per descriptor row."""
        if len(descriptors) == 0:
            return np.zeros(0, dtype=np.float32)
        return self.bundle.predict(descriptors)

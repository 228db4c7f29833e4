"""The MONAI lesion network: a 3D SegResNet run on one patch per candidate.

Each candidate from the classical stage is cut out of the CT as a cube of
``PATCH`` voxels whose field of view is twice the candidate's extent (so a 4 mm
nodule and a 60 mm mass both fill the middle of the cube), resampled with
linear interpolation. The network answers, per voxel, whether it belongs to a
lesion; that map both confirms the candidate (false-positive reduction) and
gives its mask. Patches are scale-normalised the same way in training
(``models/lesion_segresnet/scripts/train.py``) and here.

Weights come from a MONAI bundle under ``models/`` (configs, weights, model
card); nothing is downloaded. torch is imported lazily so that the rest of the
analysis does not pay for it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from sensecare.analysis.bundle import load_network

PATCH = 32
MIN_FIELD_MM = 24.0
MAX_FIELD_MM = 160.0
#: HU window mapped to [0, 1] for the network.
HU_LOW, HU_HIGH = -1000.0, 400.0

DEFAULT_BUNDLE = Path(__file__).resolve().parents[2] / "models" / "lesion_segresnet"


@dataclass(frozen=True)
class PatchGeometry:
    """A cube of PATCH^3 samples centred on ``center_zyx`` (fine voxel indices), ``voxel_mm`` apart."""

    center_zyx: tuple[float, float, float]
    voxel_mm: float

    @classmethod
    def around(cls, center_zyx: tuple[float, float, float], extent_mm: float) -> PatchGeometry:
        field_mm = float(np.clip(2.0 * extent_mm, MIN_FIELD_MM, MAX_FIELD_MM))
        return cls(tuple(float(c) for c in center_zyx), field_mm / PATCH)  # type: ignore[arg-type]

    def sample_coordinates(self, spacing_xyz: tuple[float, float, float]) -> np.ndarray:
        """Fine-grid (z, y, x) index coordinates of every patch sample, shape (3, P, P, P)."""
        offsets = (np.arange(PATCH, dtype=np.float32) - (PATCH - 1) / 2.0) * self.voxel_mm
        sx, sy, sz = spacing_xyz
        axes = [c + offsets / s for c, s in zip(self.center_zyx, (sz, sy, sx))]
        return np.stack(np.meshgrid(*axes, indexing="ij"))

    def patch_coordinates(self, fine_zyx: np.ndarray, spacing_xyz: tuple[float, float, float]) -> np.ndarray:
        """Patch index coordinates of fine-grid points (3, ...), the inverse of sample_coordinates."""
        sx, sy, sz = spacing_xyz
        scale = np.array([sz, sy, sx], dtype=np.float32).reshape((3,) + (1,) * (fine_zyx.ndim - 1))
        centre = np.array(self.center_zyx, dtype=np.float32).reshape(scale.shape)
        return (fine_zyx - centre) * scale / self.voxel_mm + (PATCH - 1) / 2.0


def normalise(hu: np.ndarray) -> np.ndarray:
    return ((np.clip(hu, HU_LOW, HU_HIGH) - HU_LOW) / (HU_HIGH - HU_LOW)).astype(np.float32)


def extract_patch(hu: np.ndarray, spacing_xyz: tuple[float, float, float], geometry: PatchGeometry) -> np.ndarray:
    """The normalised CT patch (P, P, P), air outside the volume.

    Interpolates from the patch's own footprint (one voxel of margin for the
    linear interpolation), not the whole volume: converting a 512x512x300
    series to float for each of 48 patches took 5 s. The footprint's edges are
    the volume's wherever samples fall outside it, so the values are the same.
    """
    coords = geometry.sample_coordinates(spacing_xyz)
    flat = coords.reshape(3, -1)
    low = np.clip(np.floor(flat.min(axis=1)).astype(int) - 1, 0, np.array(hu.shape))
    high = np.clip(np.ceil(flat.max(axis=1)).astype(int) + 2, 0, np.array(hu.shape))
    if np.any(high <= low):  # the patch lies wholly outside the volume
        return normalise(np.full(coords.shape[1:], -1000.0, dtype=np.float32))
    window = hu[tuple(slice(a, b) for a, b in zip(low, high))].astype(np.float32)
    local = coords - low.reshape(3, 1, 1, 1).astype(np.float32)
    values = ndimage.map_coordinates(window, local, order=1, mode="constant", cval=-1000.0)
    return normalise(values)


def patch_to_volume(
    probability: np.ndarray, geometry: PatchGeometry, spacing_xyz: tuple[float, float, float], shape: tuple[int, int, int]
) -> tuple[np.ndarray, tuple[int, int, int]]:
    """The patch's probabilities on the fine grid, cropped to the patch's footprint: (crop, offset)."""
    corners = geometry.sample_coordinates(spacing_xyz)[:, [0, -1]][:, :, [0, -1]][:, :, :, [0, -1]]
    low = np.maximum(np.floor(corners.reshape(3, -1).min(axis=1)).astype(int), 0)
    high = np.minimum(np.ceil(corners.reshape(3, -1).max(axis=1)).astype(int) + 1, shape)
    if np.any(high <= low):
        return np.zeros((0, 0, 0), dtype=np.float32), (0, 0, 0)
    grid = np.stack(np.meshgrid(*[np.arange(a, b, dtype=np.float32) for a, b in zip(low, high)], indexing="ij"))
    values = ndimage.map_coordinates(probability, geometry.patch_coordinates(grid, spacing_xyz), order=1, mode="constant", cval=0.0)
    return values.astype(np.float32), tuple(int(v) for v in low)  # type: ignore[return-value]


class LesionNetwork:
    """The bundle's SegResNet on a torch device, answering batches of patches."""

    def __init__(self, device, bundle: Path = DEFAULT_BUNDLE) -> None:  # type: ignore[no-untyped-def]
        self.model, metadata = load_network(bundle, device, what="lesion model")
        self.name = metadata.get("name", bundle.name)
        self.version = metadata.get("version", "0")
        self.threshold = float(metadata.get("sensecare", {}).get("probability_threshold", 0.5))
        self.device = device

    def predict(self, patches: np.ndarray, batch_size: int = 16) -> np.ndarray:
        """Lesion probability per voxel for patches (N, P, P, P) -> (N, P, P, P)."""
        import torch

        out = np.empty(patches.shape, dtype=np.float32)
        with torch.inference_mode():
            for start in range(0, len(patches), batch_size):
                batch = torch.from_numpy(np.ascontiguousarray(patches[start : start + batch_size, None])).to(self.device)
                logits = self.model(batch)
                out[start : start + len(batch)] = torch.sigmoid(logits)[:, 0].float().cpu().numpy()
        return out

"""Lesion probability from a dense 3D network that reads the whole lung region at once.

Why: the voxel classifier (:mod:`sensecare.analysis.heatmap`) sees each voxel
through a few dozen hand-made features, and on held-out phantoms it missed
most ground-glass and part-solid nodules that a reader sees at a glance (a
25 mm ground-glass nodule 300 HU above the parenchyma, crossed by vessels).
A convolutional network learns its own features from the image and the
lesion masks, as in the LUNA16 and LIDC detection literature.

The network (MONAI ``SegResNet``, ``models/lesion_cnn``) reads the working
grid's image (HU relative to the parenchyma, outside the region filled with
parenchyma) resampled to an isotropic ``ISO_MM`` grid, plus the region mask,
and answers a lesion probability per voxel; that map goes back onto the
working grid, where it joins the voxel classifier's (see
:func:`fuse_probability`). Thick slices are interpolated up, so the network
sees the same voxel size whatever the acquisition; the training script
(``models/lesion_cnn/scripts/train.py``) prepares its data with the same
functions.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import ndimage

from sensecare.analysis.bundle import load_network

__all__ = ["ISO_MM", "LungLesionCnn", "from_isotropic", "fuse_probability", "network_input", "to_isotropic"]

ISO_MM = 2.0
#: HU above the parenchyma per unit of the network's image channel, and the channel's clip range.
INPUT_SCALE_HU = 500.0
INPUT_RANGE = (-0.5, 3.0)
#: The network halves the grid this many times: inputs are padded to a multiple of 2**DEPTH.
DEPTH = 3

DEFAULT_BUNDLE = Path(__file__).resolve().parents[2] / "models" / "lesion_cnn"


def to_isotropic(array: np.ndarray, spacing_zyx: tuple[float, float, float], *, order: int = 1) -> np.ndarray:
    """``array`` (z, y, x) resampled to ``ISO_MM`` voxels covering the same extent."""
    factors = [s / ISO_MM for s in spacing_zyx]
    source = array.astype(np.float32, copy=False)
    return ndimage.zoom(source, factors, order=order, mode="nearest", grid_mode=True)


def from_isotropic(array: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """An isotropic map back onto a grid of ``shape`` covering the same extent (linear)."""
    factors = [n / m for n, m in zip(shape, array.shape)]
    out = ndimage.zoom(array.astype(np.float32, copy=False), factors, order=1, mode="nearest", grid_mode=True)
    if out.shape != tuple(shape):  # zoom rounds each output size; pad or crop the odd voxel
        out = np.pad(out, [(0, max(0, n - m)) for n, m in zip(shape, out.shape)], mode="edge")
        out = out[tuple(slice(0, n) for n in shape)]
    return out


def network_input(image_iso: np.ndarray, inside_iso: np.ndarray) -> np.ndarray:
    """The two input channels (2, z, y, x) from the isotropic image (HU above parenchyma) and region."""
    scaled = np.clip(image_iso / INPUT_SCALE_HU, *INPUT_RANGE)
    return np.stack([scaled, inside_iso.astype(np.float32)]).astype(np.float32)


def pad_to_multiple(array: np.ndarray, multiple: int = 2**DEPTH) -> tuple[np.ndarray, tuple[int, int, int]]:
    """``array`` (C, z, y, x) zero-padded at the far end of each axis; returns it and the original shape."""
    shape = array.shape[1:]
    pads = [(0, 0)] + [(0, (-n) % multiple) for n in shape]
    return np.pad(array, pads), tuple(shape)  # type: ignore[return-value]


def fuse_probability(voxel_classifier: np.ndarray, network: np.ndarray) -> np.ndarray:
    """One lesion probability per working-grid voxel: the higher of the two models.

    A lesion either model is sure of stays a detection; the detection ranker
    downstream (trained on the fused map) weighs how the two agree.
    """
    return np.maximum(voxel_classifier, network)


class LungLesionCnn:
    """The bundle's dense network on a torch device: working-grid image in, probability out."""

    def __init__(self, device, bundle: Path = DEFAULT_BUNDLE) -> None:  # type: ignore[no-untyped-def]
        self.model, metadata = load_network(bundle, device, what="lesion network")
        self.name = str(metadata.get("name", bundle.name))
        self.version = str(metadata.get("version", "0"))
        self.device = device

    def predict_isotropic(self, channels: np.ndarray) -> np.ndarray:
        """Probability (z, y, x) for one input (2, z, y, x) on the isotropic grid."""
        import torch

        padded, shape = pad_to_multiple(channels)
        with torch.inference_mode():
            logits = self.model(torch.from_numpy(padded[None]).to(self.device))
            probability = torch.sigmoid(logits)[0, 0].float().cpu().numpy()
        return probability[: shape[0], : shape[1], : shape[2]]

    def probability_map(self, image: np.ndarray, inside: np.ndarray,
                        spacing_zyx: tuple[float, float, float]) -> np.ndarray:
        """Lesion probability on the working grid of ``image`` (0 outside ``inside``)."""
        channels = network_input(to_isotropic(image, spacing_zyx), to_isotropic(inside, spacing_zyx) >= 0.5)
        probability = from_isotropic(self.predict_isotropic(channels), inside.shape)  # type: ignore[arg-type]
        return np.where(inside, probability, np.float32(0.0)).astype(np.float32)

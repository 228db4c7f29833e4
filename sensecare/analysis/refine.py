"""The network stage: confirm or reject each classical candidate and redraw its mask.

The classical stage finds candidates with high sensitivity; the SegResNet looks
at each one in its own scale-normalised patch. A candidate whose own voxels the
network does not call lesion is dropped (false-positive reduction). A blend of
its probability into the confidence is available (``network_weight``) but off
by default: the first model, trained on phantoms only, ranked a 0.3 mL speck
above the tumour on the real sharp-kernel (B70f) scan when blended, while as a
filter it removed the high-scoring false positives on the real scans and kept
every annotated tumour.

The network's mask replaces the classical outline where the classical one is
weakest (``network_masks="subsolid"``, the default): ground-glass and
part-solid lesions, whose faint textured margins a threshold follows poorly
(on 24 sub-solid phantom lesions the network's volume was the closer one for
17), and detections the classical segmentation did not outline at all; but only where it is
the same finding redrawn (:func:`sensecare.analysis.agreement.same_finding`): a network outline
that leaked into the chest wall moved a juxtapleural nodule's centre 14 mm off it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from sensecare.analysis.agreement import same_finding
from sensecare.analysis.lesions import equivalent_radius_mm
from sensecare.analysis.network import (
    LesionNetwork,
    PatchGeometry,
    extract_patch,
    patch_to_volume,
)

#: Candidates the network gives less than this (mean over the candidate's own voxels) are dropped.
REJECT_BELOW = 0.15
#: Weight of the network in the reported confidence (0: the classical confidence stands).
NETWORK_WEIGHT = 0.0
#: The network's mask may be this many times larger (or smaller) than the outline it replaces: a
#: ground-glass outline drawn at half its true diameter is 8 times too small.
NETWORK_VOLUME_FACTOR = 10.0
#: Lesion types whose mask the network draws (see the module docstring).
NETWORK_MASK_TYPES = frozenset({"ground_glass", "part_solid"})


def refine_lesions(
    hu: np.ndarray,
    spacing_xyz: tuple[float, float, float],
    lesions: Sequence,
    network: LesionNetwork,
    *,
    network_weight: float = NETWORK_WEIGHT,
    network_masks: bool | str = "subsolid",
) -> list:
    """Lesions confirmed by the network, with its masks and blended confidences, best first.

    ``network_masks``: True (the network's mask for every lesion), False (never), or
    ``"subsolid"`` (for sub-solid lesions and those without a classical outline).
    """
    if not lesions:
        return []
    kept = []
    for lesion, (score, crop, offset, own) in zip(lesions, _network_evidence(hu, spacing_xyz, lesions, network)):
        if score < REJECT_BELOW:
            continue
        wanted = network_masks is True or (network_masks == "subsolid" and _subsolid_or_unoutlined(lesion))
        mask = _connected_to(crop >= network.threshold, own) if wanted else np.zeros(0, dtype=bool)
        if mask.any():
            mask, offset = _tight(mask, offset)
        redrawn = bool(mask.any()) and same_finding(mask, offset, lesion.mask, lesion.offset, spacing_xyz,
                                                    radius_mm=equivalent_radius_mm(lesion.mask, spacing_xyz[::-1]),
                                                    volume_factor=NETWORK_VOLUME_FACTOR)
        if not redrawn:
            mask, offset = lesion.mask, lesion.offset
        confidence = network_weight * score + (1.0 - network_weight) * float(lesion.confidence)
        features = {**lesion.features, "network_probability": round(score, 4), "network_outline": float(redrawn)}
        kept.append(dataclasses.replace(lesion, mask=mask, offset=offset, confidence=confidence, features=features))
    return sorted(kept, key=lambda lesion: lesion.confidence, reverse=True)


def _subsolid_or_unoutlined(lesion) -> bool:  # type: ignore[no-untyped-def]
    kind = str(getattr(lesion.type, "value", lesion.type))
    return kind in NETWORK_MASK_TYPES or lesion.features.get("classical_outline", 1.0) == 0.0


def network_scores(hu: np.ndarray, spacing_xyz: tuple[float, float, float], lesions: Sequence,
                   network: LesionNetwork) -> list[float]:
    """The network's mean probability over each lesion's own voxels (0 when its patch misses the volume)."""
    return [score for score, _, _, _ in _network_evidence(hu, spacing_xyz, lesions, network)]


def _network_evidence(hu, spacing_xyz, lesions, network):  # type: ignore[no-untyped-def]
    """(score, probability crop, crop offset, the lesion's voxels on the crop) per lesion."""
    if not lesions:
        return []
    geometries = [PatchGeometry.around(_centre(lesion), _extent_mm(lesion, spacing_xyz)) for lesion in lesions]
    patches = np.stack([extract_patch(hu, spacing_xyz, g) for g in geometries])
    probabilities = network.predict(patches)
    out = []
    for lesion, geometry, probability in zip(lesions, geometries, probabilities):
        crop, offset = patch_to_volume(probability, geometry, spacing_xyz, hu.shape)
        if crop.size == 0:
            out.append((0.0, crop, offset, np.zeros(crop.shape, dtype=bool)))
            continue
        own = _overlap(lesion, crop, offset)
        out.append((float(crop[own].mean()) if own.any() else 0.0, crop, offset, own))
    return out


def _centre(lesion) -> tuple[float, float, float]:  # type: ignore[no-untyped-def]
    zz, yy, xx = np.nonzero(lesion.mask)
    z0, y0, x0 = lesion.offset
    return (z0 + float(zz.mean()), y0 + float(yy.mean()), x0 + float(xx.mean()))


def _extent_mm(lesion, spacing_xyz: tuple[float, float, float]) -> float:  # type: ignore[no-untyped-def]
    sx, sy, sz = spacing_xyz
    zz, yy, xx = np.nonzero(lesion.mask)
    return float(max((np.ptp(zz) + 1) * sz, (np.ptp(yy) + 1) * sy, (np.ptp(xx) + 1) * sx))


def _overlap(lesion, crop: np.ndarray, offset: tuple[int, int, int]) -> np.ndarray:  # type: ignore[no-untyped-def]
    """The candidate's voxels, as a mask on the crop's grid."""
    out = np.zeros(crop.shape, dtype=bool)
    zz, yy, xx = np.nonzero(lesion.mask)
    zz = zz + lesion.offset[0] - offset[0]
    yy = yy + lesion.offset[1] - offset[1]
    xx = xx + lesion.offset[2] - offset[2]
    keep = (zz >= 0) & (yy >= 0) & (xx >= 0) & (zz < crop.shape[0]) & (yy < crop.shape[1]) & (xx < crop.shape[2])
    out[zz[keep], yy[keep], xx[keep]] = True
    return out


def _connected_to(mask: np.ndarray, seed: np.ndarray) -> np.ndarray:
    labels, _ = ndimage.label(mask)
    touching = np.unique(labels[seed & mask])
    touching = touching[touching > 0]
    return np.isin(labels, touching) if touching.size else np.zeros_like(mask)


def _tight(mask: np.ndarray, offset: tuple[int, int, int]) -> tuple[np.ndarray, tuple[int, int, int]]:
    box = ndimage.find_objects(mask.astype(np.uint8))[0]
    return mask[box], tuple(o + s.start for o, s in zip(offset, box))  # type: ignore[return-value]

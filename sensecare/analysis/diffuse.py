"""Sub-solid findings in a scan with diffuse disease: patches of it more often than nodules.

In viral pneumonia and other diffuse ground-glass disease a radiologist reports the extent of the
opacity (PO and the severity score), not every patch of it as a nodule. The detection stage sees
one patch at a time, and a round patch of diffuse ground glass looks like a ground-glass nodule:
on the 50 held-out phantoms of 2026-12-07 most false positives above 0.3 were such patches in the
twelve scans with 15 % diffuse opacity. So where the parenchyma alone is diffusely abnormal, the
confidence of ground-glass and part-solid findings is scaled down: they stay in the report, ranked
below the findings the disease does not explain (solid nodules, masses, consolidation), and mostly
under the flag threshold. A genuine ground-glass nodule in such a scan is the price: it is still
listed, at a lower confidence.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from sensecare.analysis.lesions import Lesion, LesionType

__all__ = ["DIFFUSE_PERCENT_OPACITY", "SUBSOLID_FACTOR", "discount_in_diffuse_disease"]

#: Parenchymal PO (lesions not counted) from which a scan has diffuse disease. Phantoms without
#: diffuse opacity measure up to about 6 % (vessels' partial volume, fissures, dependent density);
#: with 15 % diffuse ground glass, 12 % or more.
DIFFUSE_PERCENT_OPACITY = 8.0
#: What a sub-solid finding's confidence is multiplied by in such a scan.
SUBSOLID_FACTOR = 0.5
SUBSOLID_TYPES = frozenset({LesionType.GROUND_GLASS, LesionType.PART_SOLID})


def discount_in_diffuse_disease(lesions: Sequence[Lesion], parenchymal_percent_opacity: float,
                                min_confidence: float = 0.0) -> list[Lesion]:
    """``lesions`` with sub-solid confidences scaled in a diffusely abnormal scan, best first, at least ``min_confidence``."""
    if parenchymal_percent_opacity < DIFFUSE_PERCENT_OPACITY:
        return list(lesions)
    out = []
    for lesion in lesions:
        if lesion.type in SUBSOLID_TYPES:
            features = {**lesion.features, "diffuse_disease_factor": SUBSOLID_FACTOR}
            lesion = dataclasses.replace(lesion, confidence=lesion.confidence * SUBSOLID_FACTOR, features=features)
        if lesion.confidence >= min_confidence:
            out.append(lesion)
    return sorted(out, key=lambda lesion: -lesion.confidence)

"""Sub-solid findings in diffusely abnormal lungs rank below what the disease does not explain."""

from __future__ import annotations

import numpy as np

from sensecare.analysis.diffuse import (
    DIFFUSE_PERCENT_OPACITY,
    SUBSOLID_FACTOR,
    discount_in_diffuse_disease,
)
from sensecare.analysis.lesions import Lesion, LesionType


def _lesion(kind: LesionType, confidence: float) -> Lesion:
    return Lesion(np.ones((2, 2, 2), bool), (0, 0, 0), kind, confidence, {"mean_hu": 0.0})


def test_sub_solid_findings_are_discounted_only_in_diffuse_disease() -> None:
    found = [_lesion(LesionType.GROUND_GLASS, 0.9), _lesion(LesionType.PART_SOLID, 0.8),
             _lesion(LesionType.SOLID, 0.6), _lesion(LesionType.GROUND_GLASS, 0.3)]
    assert discount_in_diffuse_disease(found, DIFFUSE_PERCENT_OPACITY - 0.1) == found
    weighed = discount_in_diffuse_disease(found, DIFFUSE_PERCENT_OPACITY + 5.0, min_confidence=0.2)
    assert [(lesion.type, round(lesion.confidence, 3)) for lesion in weighed] == [
        (LesionType.SOLID, 0.6), (LesionType.GROUND_GLASS, round(0.9 * SUBSOLID_FACTOR, 3)),
        (LesionType.PART_SOLID, round(0.8 * SUBSOLID_FACTOR, 3))]  # 0.3 * factor fell under the floor
    assert weighed[1].features["diffuse_disease_factor"] == SUBSOLID_FACTOR
    assert found[0].confidence == 0.9  # the inputs are left alone

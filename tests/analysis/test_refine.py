"""The shipped lesion network as a false-positive filter on candidates with known answers."""

from __future__ import annotations

import numpy as np

from sensecare.analysis.device import resolve_device
from sensecare.analysis.lesions import Lesion, LesionType
from sensecare.analysis.network import LesionNetwork
from sensecare.analysis.refine import refine_lesions

SPACING = (0.8, 0.8, 1.25)


def _candidate(mask: np.ndarray, confidence: float) -> Lesion:
    box = tuple(slice(int(a.min()), int(a.max()) + 1) for a in np.nonzero(mask))
    return Lesion(mask=mask[box], offset=tuple(s.start for s in box), type=LesionType.SOLID,
                  confidence=confidence, features={})


def test_a_nodule_is_kept_and_empty_parenchyma_is_dropped() -> None:
    rng = np.random.default_rng(5)
    shape = (80, 128, 128)
    hu = rng.normal(-860, 30, shape).astype(np.float32)
    z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    nodule = ((z - 40) * SPACING[2]) ** 2 + ((y - 64) * SPACING[1]) ** 2 + ((x - 40) * SPACING[0]) ** 2 <= 6.0**2
    hu[nodule] = 30 + rng.normal(0, 30, int(nodule.sum()))
    nothing = ((z - 40) * SPACING[2]) ** 2 + ((y - 64) * SPACING[1]) ** 2 + ((x - 95) * SPACING[0]) ** 2 <= 6.0**2
    network = LesionNetwork(resolve_device("cpu"))
    kept = refine_lesions(hu, SPACING, [_candidate(nothing, 0.9), _candidate(nodule, 0.6)], network)
    assert len(kept) == 1
    assert kept[0].offset[2] < 64  # the nodule, not the empty spot
    assert kept[0].features["network_probability"] > 0.5
    assert kept[0].confidence == 0.6  # classical confidence stands by default


def test_the_network_draws_sub_solid_masks_and_leaves_solid_outlines_alone() -> None:
    """A ground-glass nodule given a too-small outline gets the network's mask; a solid one keeps its own."""
    import dataclasses

    rng = np.random.default_rng(6)
    shape = (80, 128, 128)
    hu = rng.normal(-860, 30, shape).astype(np.float32)
    z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]

    def ball(cx: float, radius: float) -> np.ndarray:
        return ((z - 40) * SPACING[2]) ** 2 + ((y - 64) * SPACING[1]) ** 2 + ((x - cx) * SPACING[0]) ** 2 <= radius**2

    glass, solid = ball(35, 8.0), ball(95, 6.0)
    hu[glass] = -600 + rng.normal(0, 30, int(glass.sum()))
    hu[solid] = 30 + rng.normal(0, 30, int(solid.sum()))
    small_glass = dataclasses.replace(_candidate(ball(35, 4.0), 0.9), type=LesionType.GROUND_GLASS)
    small_solid = _candidate(ball(95, 4.0), 0.8)
    network = LesionNetwork(resolve_device("cpu"))
    by_type = {l.type: l for l in refine_lesions(hu, SPACING, [small_glass, small_solid], network)}
    assert set(by_type) == {LesionType.GROUND_GLASS, LesionType.SOLID}
    assert np.count_nonzero(by_type[LesionType.GROUND_GLASS].mask) > 2 * np.count_nonzero(small_glass.mask)
    assert np.array_equal(by_type[LesionType.SOLID].mask, small_solid.mask)

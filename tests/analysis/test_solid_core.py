"""Part solid or ground glass, from the solid core inside a finding's final mask."""

from __future__ import annotations

import numpy as np

from sensecare.analysis.lesions import Lesion, LesionType
from sensecare.analysis.solid_core import (
    MIN_CORE_DIAMETER_MM,
    solid_core,
    type_solid_cores,
)

SPACING = (0.7, 0.7, 1.25)  # x, y, z mm
SHAPE = (48, 80, 80)


def _ball(centre_mm: tuple[float, float, float], radius_mm: float) -> np.ndarray:
    z, y, x = np.ogrid[: SHAPE[0], : SHAPE[1], : SHAPE[2]]
    cz, cy, cx = centre_mm
    return ((z * SPACING[2] - cz) ** 2 + (y * SPACING[1] - cy) ** 2 + (x * SPACING[0] - cx) ** 2) <= radius_mm**2


def _finding(mask: np.ndarray, kind: LesionType = LesionType.GROUND_GLASS) -> Lesion:
    box = tuple(slice(int(a.min()), int(a.max()) + 1) for a in np.nonzero(mask))
    return Lesion(mask=mask[box], offset=tuple(s.start for s in box), type=kind, confidence=0.9, features={})


def _ground_glass_nodule(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    hu = rng.normal(-860, 25, SHAPE).astype(np.float32)
    glass = _ball((30.0, 28.0, 28.0), 9.0)
    hu[glass] = rng.normal(-600, 30, int(glass.sum()))
    return hu, glass


def test_an_off_centre_core_makes_ground_glass_part_solid() -> None:
    rng = np.random.default_rng(1)
    hu, glass = _ground_glass_nodule(rng)
    core = _ball((30.0, 31.0, 25.0), 3.5)  # 7 mm, off centre
    hu[core] = rng.normal(30, 20, int(core.sum()))
    finding = _finding(glass)
    measured = solid_core(hu, finding.mask, finding.offset, SPACING)
    assert measured.makes_part_solid and 5.5 <= measured.diameter_mm <= 8.0
    (typed,) = type_solid_cores(hu, SPACING, [_finding(glass)])
    assert typed.type is LesionType.PART_SOLID
    assert typed.features["final_core_diameter_mm"] >= MIN_CORE_DIAMETER_MM


def test_pure_ground_glass_and_a_vessel_crossing_it_stay_ground_glass() -> None:
    rng = np.random.default_rng(2)
    hu, glass = _ground_glass_nodule(rng)
    z, y, _ = np.ogrid[: SHAPE[0], : SHAPE[1], : SHAPE[2]]
    across = ((z * SPACING[2] - 30.0) ** 2 + (y * SPACING[1] - 28.0) ** 2) <= 2.2**2  # 4.4 mm wide, along x
    vessel = np.broadcast_to(across, SHAPE)
    hu[vessel] = rng.normal(40, 20, int(vessel.sum()))
    (typed,) = type_solid_cores(hu, SPACING, [_finding(glass)])
    assert typed.type is LesionType.GROUND_GLASS
    assert typed.features["final_core_elongation"] > 2.5  # the vessel segment is long, not a core
    clean, _ = _ground_glass_nodule(np.random.default_rng(3))
    (still,) = type_solid_cores(clean, SPACING, [_finding(glass)])
    assert still.type is LesionType.GROUND_GLASS and still.features["final_core_diameter_mm"] == 0.0


def test_other_types_are_left_alone() -> None:
    rng = np.random.default_rng(4)
    hu, glass = _ground_glass_nodule(rng)
    hu[_ball((30.0, 28.0, 28.0), 4.0)] = 40.0
    solid = _finding(glass, LesionType.SOLID)
    (kept,) = type_solid_cores(hu, SPACING, [solid])
    assert kept is solid

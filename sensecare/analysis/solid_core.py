"""The solid component of a ground-glass finding: part solid or pure ground glass.

Fleischner management differs for the two, and the solid component's size is what it rests on.
The type is first decided while the lesion is outlined (:mod:`sensecare.analysis.lesions`), but
that decision is lost where the outline is not the classical one (the detection's own region or
the patch network's mask are typed by mean density alone, and a part-solid nodule's mean is
ground glass), and the classical core search, seeded at the detection's peak in the ground glass,
misses an off-centre core. On the phantoms of 2026-12-08 17 of 26 part-solid nodules found were
typed ground glass. So every ground-glass finding's final mask is looked at once more: a compact
solid component of at least :data:`MIN_CORE_DIAMETER_MM` makes it part solid. Vessels crossing
ground glass are thinner than the opening (:data:`OPENING_MM`) or, when thicker, long
(:data:`MAX_CORE_ELONGATION`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from sensecare.analysis.candidates import GGO_MAX_HU
from sensecare.analysis.lesions import (
    Lesion,
    LesionType,
    equivalent_radius_mm,
    open_ball,
)

__all__ = ["MAX_CORE_ELONGATION", "MIN_CORE_DIAMETER_MM", "OPENING_MM", "SolidCore", "solid_core", "type_solid_cores"]

#: A solid core at least this wide (sphere-equivalent, mm) makes a ground-glass finding part solid.
#: (Measured cores of the part-solid phantom nodules: 6-18 mm; of pure ground glass: none, or
#: vessel segments.)
MIN_CORE_DIAMETER_MM = 5.0
#: ... if it is compact: the square root of its largest over smallest principal variance at most
#: this (part-solid cores measured 1.1-2.3, thick vessels crossing ground glass 3.2-6.5).
MAX_CORE_ELONGATION = 2.5
#: Solid tissue is what a 0.6 mm smoothed image shows above the ground-glass range.
SMOOTHING_MM = 0.6
#: Opening radius (mm): vessels narrower than twice this are not a core.
OPENING_MM = 1.5


@dataclass(frozen=True)
class SolidCore:
    """The largest solid component inside a finding's mask that the opening leaves."""

    diameter_mm: float  # sphere-equivalent; 0 when there is none
    elongation: float  # sqrt of largest over smallest principal variance; 0 when there is none

    @property
    def makes_part_solid(self) -> bool:
        return self.diameter_mm >= MIN_CORE_DIAMETER_MM and self.elongation <= MAX_CORE_ELONGATION


def solid_core(hu: np.ndarray, mask: np.ndarray, offset: tuple[int, int, int],
               spacing_xyz: tuple[float, float, float]) -> SolidCore:
    """The solid core of the cropped ``mask`` placed at ``offset`` in the volume ``hu`` (z, y, x)."""
    sx, sy, sz = (float(s) for s in spacing_xyz)
    zyx = np.array([sz, sy, sx])
    pad = np.ceil(3.0 * SMOOTHING_MM / zyx).astype(int)
    lo = np.maximum(np.array(offset) - pad, 0)
    hi = np.minimum(np.array(offset) + np.array(mask.shape) + pad, hu.shape)
    image = ndimage.gaussian_filter(hu[tuple(slice(a, b) for a, b in zip(lo, hi))].astype(np.float32),
                                    sigma=tuple(SMOOTHING_MM / zyx))
    inner = tuple(slice(o - a, o - a + n) for o, a, n in zip(offset, lo, mask.shape))
    solid = (image[inner] > GGO_MAX_HU) & mask
    # Padded: open_ball counts outside the array as inside, and the crop's edge is the mask's.
    opened = open_ball(np.pad(solid, 1), OPENING_MM, (sz, sy, sx))[1:-1, 1:-1, 1:-1]
    labels, n = ndimage.label(opened)
    if n == 0:
        return SolidCore(0.0, 0.0)
    sizes = np.bincount(labels.ravel())[1:]
    component = labels == int(np.argmax(sizes)) + 1
    coords = np.argwhere(component) * zyx
    # A voxel's own extent keeps a thin component's smallest variance above zero.
    variances = np.linalg.eigvalsh(np.cov(coords, rowvar=False) + np.diag(zyx**2 / 12.0)) if len(coords) > 1 \
        else zyx**2 / 12.0
    return SolidCore(diameter_mm=2.0 * equivalent_radius_mm(component, (sz, sy, sx)),
                     elongation=float(np.sqrt(variances.max() / variances.min())))


def type_solid_cores(hu: np.ndarray, spacing_xyz: tuple[float, float, float], lesions: Sequence[Lesion]) -> list[Lesion]:
    """``lesions`` with each ground-glass finding that holds a solid core typed part solid (order kept)."""
    out = []
    for lesion in lesions:
        if lesion.type is LesionType.GROUND_GLASS:
            core = solid_core(hu, lesion.mask, lesion.offset, spacing_xyz)
            features = {**lesion.features, "final_core_diameter_mm": round(core.diameter_mm, 2),
                        "final_core_elongation": round(core.elongation, 2)}
            kind = LesionType.PART_SOLID if core.makes_part_solid else lesion.type
            lesion = dataclasses.replace(lesion, type=kind, features=features)
        out.append(lesion)
    return out

"""Hounsfield units of each tissue, without and with intravenous contrast.

Values are typical adult measurements at 120 kVp (sources in
``docs/phantoms.md``).  Tissue textures (standard deviations below) model
real heterogeneity, not scanner noise, which is added later.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["HU", "hu_table"]


@dataclass(frozen=True)
class HU:
    """Mean HU per tissue; one instance per contrast phase."""

    air: float = -1000.0
    lung_anterior: float = -905.0  # non-dependent parenchyma (supine)
    lung_gravity: float = 50.0  # rise from anterior to posterior parenchyma
    lung_texture: float = 14.0  # SD of parenchymal heterogeneity
    fat: float = -100.0
    fat_texture: float = 8.0
    skin: float = 30.0
    muscle: float = 45.0
    muscle_texture: float = 5.0
    blood_systemic: float = 40.0  # aorta, left heart, pulmonary veins
    blood_pulmonary: float = 40.0  # right heart, pulmonary arteries, SVC
    blood_venous: float = 40.0  # IVC, azygos
    myocardium: float = 45.0
    liver: float = 60.0
    spleen: float = 48.0
    kidney: float = 32.0
    gut_wall: float = 45.0
    gut_content: float = 15.0
    thyroid: float = 100.0
    cortical_bone: float = 900.0
    vertebral_marrow: float = 190.0
    rib_marrow: float = 260.0
    sternal_marrow: float = 230.0
    disc: float = 85.0
    cartilage: float = 120.0
    airway_wall: float = 45.0
    airway_lumen: float = -1000.0
    table_shell: float = 300.0
    table_foam: float = -920.0


_PLAIN = HU()
_CONTRAST = HU(
    blood_systemic=260.0,
    blood_pulmonary=320.0,
    blood_venous=130.0,
    myocardium=110.0,
    liver=95.0,
    spleen=130.0,
    kidney=160.0,
    gut_wall=80.0,
)


def hu_table(contrast: bool) -> HU:
    """The HU set for a non-contrast or a contrast (CT angiography-like) scan."""
    return _CONTRAST if contrast else _PLAIN

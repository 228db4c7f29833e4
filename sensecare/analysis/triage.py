"""Flags and urgency: the few facts a worklist sorts on.

Thresholds follow the Fleischner Society 2017 guidance for incidental nodules
(solid >= 8 mm and part-solid >= 6 mm warrant early work-up) and the usual
definition of a mass (> 30 mm). Opacity levels follow the CT severity score's
bands (a quarter of the lung involved is the first "moderate" band).
"""

from __future__ import annotations

from collections.abc import Sequence

from sensecare.analysis.report import LesionReport, LungOpacity, Urgency

MASS_MM = 30.0
SOLID_NODULE_FOLLOW_UP_MM = 8.0
PART_SOLID_FOLLOW_UP_MM = 6.0
DIFFUSE_OPACITY_PERCENT = 5.0
SEVERE_OPACITY_PERCENT = 25.0
#: Findings below this confidence are reported but do not raise flags.
FLAG_CONFIDENCE = 0.5


def flags_for(lesions: Sequence[LesionReport], opacity: LungOpacity) -> list[str]:
    """Named reasons for attention, in a stable order."""
    confident = [lesion for lesion in lesions if lesion.confidence >= FLAG_CONFIDENCE]
    flags: list[str] = []
    if any(lesion.type == "mass" or lesion.long_axis_mm > MASS_MM for lesion in confident):
        flags.append("mass")
    if any(
        lesion.type in {"solid", "mass"} and lesion.long_axis_mm >= SOLID_NODULE_FOLLOW_UP_MM for lesion in confident
    ):
        flags.append("nodule_ge_8mm")
    if any(lesion.type == "part_solid" and lesion.long_axis_mm >= PART_SOLID_FOLLOW_UP_MM for lesion in confident):
        flags.append("part_solid_ge_6mm")
    if any(lesion.type == "consolidation" for lesion in confident):
        flags.append("consolidation")
    if opacity.percent_opacity >= DIFFUSE_OPACITY_PERCENT:
        flags.append("diffuse_opacity")
    if opacity.percent_opacity >= SEVERE_OPACITY_PERCENT:
        flags.append("severe_opacity")
    return flags


def urgency_for(flags: Sequence[str]) -> Urgency:
    """Urgent: a mass or a quarter of the lungs involved; priority: anything that needs follow-up."""
    if {"mass", "severe_opacity"} & set(flags):
        return Urgency.URGENT
    if flags:
        return Urgency.PRIORITY
    return Urgency.ROUTINE

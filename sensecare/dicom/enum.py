"""Coded values for SenseCare's DICOM results (Segmentation and Structured Report).

Each enum's ``.value`` is the term SenseCare uses everywhere else (report
JSON, CLI, analysis code); public functions accept either the enum or that
string and convert with ``LesionType(value)``.  The mappings below turn those
terms into coded concepts (PS3.3 8.8, Code Sequence Macro).

Where a concept exists in pydicom's code dictionary (``pydicom.sr.codedict``,
generated from PS3.16) it is taken from there.  The few SNOMED CT concepts the
dictionary lacks (the lateralised lungs and lobes, lung consolidation, CT of
chest) are written out with their SCTID and checked against SNOMED CT; each is
marked ``not in pydicom's dictionary``.

Finding types (TID 1411 row "Finding", SEG Segmented Property Type)
-------------------------------------------------------------------
========================  ===================================================
``solid``                 SCT 27925004 "Nodule" (CID 6104, CID 7194), with the
                          qualitative evaluation "Ground glass opacity" =
                          SCT 272519000 "Absent" in the SR
``part_solid``            SCT 27925004 "Nodule" with "Ground glass opacity" =
                          SCT 52101004 "Present" (CID 240).  Neither PS3.16
                          nor the SNOMED CT International release has a
                          pre-coordinated "part-solid nodule"; a nodule with a
                          ground-glass component is what the term means.
``ground_glass``          DCM 112120 "Ground glass opacity" (CID 6104
                          "Abnormal Opacity Finding or Feature").  The DCM
                          concept is preferred over newer SNOMED CT concepts
                          because it is the one PS3.16 lists for chest CT.
``consolidation``         SCT 95436008 "Lung consolidation" (not in pydicom's
                          dictionary)
``mass``                  SCT 4147007 "Mass" (CID 6104, CID 7194)
========================  ===================================================
"""

from __future__ import annotations

from enum import Enum

from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

__all__ = [
    "AlgorithmFamily",
    "LesionType",
    "Lobe",
    "SegmentKind",
    "Severity",
    "Side",
    "algorithm_family_code",
    "lesion_finding_code",
    "lobe_code",
    "lung_code",
    "severity_code",
]


class SegmentKind(Enum):
    """What a segment of the SenseCare Segmentation shows."""

    LUNG = "lung"
    """Normal anatomy: a whole lung or one lobe (category Anatomical Structure)."""
    LESION = "lesion"
    """One focal finding (category Morphologically Abnormal Structure)."""


class LesionType(Enum):
    """Radiological type of a focal lung lesion (see the module docstring for codes)."""

    SOLID = "solid"
    PART_SOLID = "part_solid"
    GROUND_GLASS = "ground_glass"
    CONSOLIDATION = "consolidation"
    MASS = "mass"


class Side(Enum):
    """Laterality of a lung or finding (CID 244 "Laterality")."""

    RIGHT = "right"
    LEFT = "left"


class Lobe(Enum):
    """Lung lobe, by its usual abbreviation (CID 6170 "Lobe of Lung", lateralised)."""

    RUL = "RUL"
    RML = "RML"
    RLL = "RLL"
    LUL = "LUL"
    LLL = "LLL"

    @property
    def side(self) -> Side:
        """The lung this lobe belongs to."""
        return Side.RIGHT if self.value.startswith("R") else Side.LEFT


class Severity(Enum):
    """Qualitative severity of lung involvement (CID 6130 "Severity Descriptor")."""

    MILD = "mild"
    MODERATE = "moderate"
    SEVERE = "severe"


class AlgorithmFamily(Enum):
    """Algorithm family (CID 7162 "Surface Processing Algorithm Family"); value = code meaning."""

    ARTIFICIAL_INTELLIGENCE = "Artificial Intelligence"
    HISTOGRAM_ANALYSIS = "Histogram Analysis"
    MORPHOLOGICAL_OPERATIONS = "Morphological Operations"
    EDGE_DETECTION = "Edge Detection"
    CLUSTER_ANALYSIS = "Cluster Analysis"
    DEFORMABLE_MODELS = "Deformable Models"
    MANUAL_PROCESSING = "Manual Processing"


# --- coded concepts -------------------------------------------------------------

#: CID 7150 "Segmentation Property Categories".
CATEGORY_ANATOMICAL_STRUCTURE = codes.SCT.AnatomicalStructure  # 91723000
CATEGORY_MORPHOLOGICALLY_ABNORMAL_STRUCTURE = codes.SCT.MorphologicallyAbnormalStructure  # 49755003

#: Anatomy (CID 7192 / CID 4 / CID 6170).
LUNG = codes.SCT.Lung  # 39607008
RIGHT_LUNG = Code("3341006", "SCT", "Right lung")  # not in pydicom's dictionary
LEFT_LUNG = Code("44029006", "SCT", "Left lung")  # not in pydicom's dictionary
_LOBES: dict[Lobe, Code] = {
    Lobe.RUL: Code("42400003", "SCT", "Upper lobe of right lung"),  # not in pydicom's dictionary
    Lobe.RML: codes.SCT.MiddleLobeOfRightLung,  # 72481006
    Lobe.RLL: Code("266005", "SCT", "Lower lobe of right lung"),  # not in pydicom's dictionary
    Lobe.LUL: Code("44714003", "SCT", "Upper lobe of left lung"),  # dictionary: "Structure of upper lobe ..."
    Lobe.LLL: Code("41224006", "SCT", "Lower lobe of left lung"),  # not in pydicom's dictionary
}
#: CID 244 "Laterality".
LATERALITY: dict[Side, Code] = {Side.RIGHT: codes.SCT.Right, Side.LEFT: codes.SCT.Left}

#: Findings (CID 6104 "Abnormal Opacity Finding or Feature", CID 7194).
NODULE = codes.SCT.Nodule  # 27925004
MASS = codes.SCT.Mass  # 4147007
GROUND_GLASS_OPACITY = codes.DCM.GroundGlassOpacity  # 112120
LUNG_CONSOLIDATION = Code("95436008", "SCT", "Lung consolidation")  # not in pydicom's dictionary
ABNORMAL_OPACITY = codes.DCM.AbnormalOpacity  # 112033, CID 6101 "Chest Finding or Feature"
_FINDINGS: dict[LesionType, Code] = {
    LesionType.SOLID: NODULE,
    LesionType.PART_SOLID: NODULE,
    LesionType.GROUND_GLASS: GROUND_GLASS_OPACITY,
    LesionType.CONSOLIDATION: LUNG_CONSOLIDATION,
    LesionType.MASS: MASS,
}
#: CID 240 "Present-Absent": values of the "Ground glass opacity" evaluation of a nodule.
PRESENT = codes.SCT.Present  # 52101004
ABSENT = codes.SCT.Absent  # 272519000

#: Measurement concepts (CID 7470 "Linear", CID 7472 "Volume", CID 6141, CID 7464, CID 6048).
VOLUME = codes.SCT.Volume  # 118565006
LONG_AXIS = codes.SCT.LongAxis  # 103339001
SHORT_AXIS = codes.SCT.ShortAxis  # 103340004
ATTENUATION_COEFFICIENT = codes.DCM.AttenuationCoefficient  # 112031
MEAN = codes.SCT.Mean  # 373098007, used as TID 300 "Derivation"
CERTAINTY_OF_FINDING = codes.DCM.CertaintyOfFinding  # 111012, CID 6048 "CAD Operating Point Axis Label"
NUMBER_OF_LESIONS = Code("246206008", "SCT", "Number of lesions")
VOLUME_RATIO = codes.DCM.VolumeRatio  # 113288, CID 7469
SEVERITY = Code("246112005", "SCT", "Severity")
_SEVERITIES: dict[Severity, Code] = {
    Severity.MILD: codes.SCT.Mild,  # 255604002
    Severity.MODERATE: codes.SCT.Moderate,  # 6736007
    Severity.SEVERE: codes.SCT.Severe,  # 24484000
}

#: UCUM units (CID 7181 and friends).
UNIT_MM = codes.UCUM.Millimeter
UNIT_MM3 = codes.UCUM.CubicMillimeter
UNIT_HU = codes.UCUM.HounsfieldUnit  # [hnsf'U]
UNIT_PERCENT = codes.UCUM.Percent
UNIT_LESIONS = Code("{lesions}", "UCUM", "lesions")

#: Document-level concepts (TID 1500): CID 7021 title, CID 100 procedure, CID 270 observer type.
REPORT_TITLE = codes.DCM.ImagingMeasurementReport  # 126000
PROCEDURE_CT_CHEST = Code("169069000", "SCT", "CT of chest")  # not in pydicom's dictionary
OBSERVER_DEVICE = codes.DCM.Device  # 121007

_ALGORITHM_FAMILIES: dict[AlgorithmFamily, Code] = {
    AlgorithmFamily.ARTIFICIAL_INTELLIGENCE: codes.cid7162.ArtificialIntelligence,
    AlgorithmFamily.HISTOGRAM_ANALYSIS: codes.cid7162.HistogramAnalysis,
    AlgorithmFamily.MORPHOLOGICAL_OPERATIONS: codes.cid7162.MorphologicalOperations,
    AlgorithmFamily.EDGE_DETECTION: codes.cid7162.EdgeDetection,
    AlgorithmFamily.CLUSTER_ANALYSIS: codes.cid7162.ClusterAnalysis,
    AlgorithmFamily.DEFORMABLE_MODELS: codes.cid7162.DeformableModels,
    AlgorithmFamily.MANUAL_PROCESSING: codes.cid7162.ManualProcessing,
}


def lesion_finding_code(lesion_type: LesionType | str) -> Code:
    """The finding / segmented property type of a lesion type (see module docstring)."""
    return _FINDINGS[LesionType(lesion_type)]


def lobe_code(lobe: Lobe | str) -> Code:
    """SNOMED CT code of a (lateralised) lung lobe."""
    return _LOBES[Lobe(lobe)]


def lung_code(side: Side | str | None) -> Code:
    """SNOMED CT code of the right or left lung, or of "Lung" when the side is unknown."""
    if side is None:
        return LUNG
    return RIGHT_LUNG if Side(side) is Side.RIGHT else LEFT_LUNG


def severity_code(severity: Severity | str) -> Code:
    """CID 6130 code of a severity."""
    return _SEVERITIES[Severity(severity)]


def algorithm_family_code(family: AlgorithmFamily | str) -> Code:
    """CID 7162 code of an algorithm family."""
    return _ALGORITHM_FAMILIES[AlgorithmFamily(family)]

"""``report.json``: what an analysis found, in one typed, versioned document.

The report is the contract with everything downstream (worklist triage, the
viewer, the PACS integration, evaluation), so it is a pydantic model with a
schema version rather than a free-form dict. All positions are DICOM patient
coordinates (LPS, mm).
"""

from __future__ import annotations

import enum

from pydantic import BaseModel, ConfigDict, Field

REPORT_SCHEMA_VERSION = "1.0"

Vector3 = tuple[float, float, float]


class Urgency(str, enum.Enum):
    """Worklist triage level, from the findings alone (a radiologist decides)."""

    ROUTINE = "routine"
    PRIORITY = "priority"
    URGENT = "urgent"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SeriesInfo(_Model):
    study_instance_uid: str
    series_instance_uid: str
    patient_id: str | None = None
    modality: str = "CT"
    series_description: str | None = None
    manufacturer: str | None = None
    convolution_kernel: str | None = None
    slice_thickness_mm: float | None = None
    shape_xyz: tuple[int, int, int]
    spacing_mm: Vector3 = Field(description="column, row and slice spacing (x, y, z)")
    origin_lps_mm: Vector3
    direction: tuple[Vector3, Vector3, Vector3] = Field(description="rows: LPS unit vectors of the i, j, k axes")
    uneven_spacing: bool = False
    gantry_tilt_deg: float = 0.0


class LungVolumes(_Model):
    right_ml: float
    left_ml: float
    total_ml: float
    lobes_ml: dict[str, float] | None = Field(
        default=None, description="RUL, RML, RLL, LUL, LLL; approximate (see opacity.lobe_method)"
    )


class LesionReport(_Model):
    id: int
    type: str = Field(description="solid | part_solid | ground_glass | consolidation | mass")
    confidence: float = Field(ge=0.0, le=1.0)
    center_lps_mm: Vector3
    bbox_lps_mm_min: Vector3
    bbox_lps_mm_max: Vector3
    volume_ml: float
    long_axis_mm: float = Field(description="longest diameter on the axial slice of greatest extent (RECIST)")
    short_axis_mm: float = Field(description="longest diameter perpendicular to the long axis on that slice")
    mean_hu: float
    side: str | None = None
    lobe: str | None = None
    slice_index: int = Field(description="k index (0-based, along the slice normal) of that axial slice")
    sop_instance_uid: str | None = Field(default=None, description="the CT slice at slice_index")
    tracking_uid: str | None = None


class LungOpacity(_Model):
    percent_opacity: float
    percent_high_opacity: float
    percent_opacity_right: float
    percent_opacity_left: float
    percent_high_opacity_right: float
    percent_high_opacity_left: float
    lobe_percent_opacity: dict[str, float]
    lobe_scores: dict[str, int] = Field(description="0-4 per lobe: 0 %, 1-25 %, 26-50 %, 51-75 %, 76-100 % involved")
    severity_score: int = Field(ge=0, le=20)
    lobe_method: str = Field(description="how lobes were delineated")


class ModelInfo(_Model):
    name: str
    version: str
    kind: str = Field(description="what the component does, e.g. lung segmentation")


class AnalysisReport(_Model):
    schema_version: str = REPORT_SCHEMA_VERSION
    sensecare_version: str
    created_at: str
    series: SeriesInfo
    lungs: LungVolumes
    lesions: list[LesionReport]
    opacity: LungOpacity
    flags: list[str]
    urgency: Urgency
    timing_s: dict[str, float]
    models: list[ModelInfo]
    device: str
    outputs: dict[str, str] = Field(default_factory=dict, description="files written beside the report")

"""Detections against ground truth, the LUNA16 way.

A detection *hits* a truth lesion when its centre lies inside the lesion's
hit zone: a ball of the lesion's sphere-equivalent radius (never smaller than
2.5 mm, so a 3 mm nodule is not a needle's eye) around the truth centre or,
for lesions that are not roughly spherical (consolidation, masses, elongated
lesions), the truth bounding box as well.  Then, per scan:

* each truth lesion counts once: its score is the highest confidence among
  the detections that hit it, and that detection is its *best hit*;
* a detection that is the best hit of an included lesion is a true positive;
* any other detection hitting an included lesion is a *duplicate* (neither
  true nor false positive, as in LUNA16);
* a detection hitting only excluded lesions (smaller than the size cut,
  e.g. 5 mm) is *ignored*: a finder must not be punished for a real lesion
  the evaluation chose not to count;
* a detection hitting nothing is a false positive.

These outcomes do not depend on the confidence threshold, so the FROC curve
and any operating point can be read from one matching.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from sensecare.errors import EvaluationError

__all__ = [
    "MIN_HIT_RADIUS_MM",
    "NON_SPHERICAL_TYPES",
    "Detection",
    "DetectionOutcome",
    "LesionOutcome",
    "ScanMatch",
    "Truth",
    "match_scan",
]

Vec3 = tuple[float, float, float]
Status = Literal["tp", "fp", "duplicate", "ignored"]

#: Smallest hit-zone radius (mm): LUNA16 practice for the smallest nodules.
MIN_HIT_RADIUS_MM = 2.5
#: Lesion types whose extent is not a ball: their bounding box is a hit zone too.
NON_SPHERICAL_TYPES = frozenset({"consolidation", "mass"})
#: A lesion whose long axis exceeds its equivalent diameter this many times is elongated.
ELONGATION = 1.5


def _vec3(value: Any, what: str) -> Vec3:
    try:
        x, y, z = (float(v) for v in value)
    except (TypeError, ValueError):
        raise EvaluationError(f"{what} {value!r} is not an (x, y, z) position in mm") from None
    return (x, y, z)


@dataclass(frozen=True)
class Truth:
    """One ground-truth lesion (LPS mm)."""

    id: int
    type: str
    diameter_mm: float
    center_lps_mm: Vec3
    bbox_lps_mm_min: Vec3 | None = None
    bbox_lps_mm_max: Vec3 | None = None
    volume_ml: float | None = None
    long_axis_mm: float | None = None

    @classmethod
    def from_json(cls, item: Mapping[str, Any]) -> Truth:
        """A lesion of ``ground_truth.json`` (phantom format, see docs/phantoms.md)."""
        try:
            volume = item.get("volume_ml")
            diameter = item.get("diameter_mm")
            if diameter is None:
                if volume is None:
                    raise EvaluationError(f"truth lesion {item.get('id')} has neither diameter_mm nor volume_ml")
                diameter = 2.0 * (3.0 * float(volume) * 1000.0 / (4.0 * math.pi)) ** (1.0 / 3.0)
            lo, hi = item.get("bbox_lps_mm_min"), item.get("bbox_lps_mm_max")
            return cls(
                id=int(item["id"]), type=str(item["type"]), diameter_mm=float(diameter),
                center_lps_mm=_vec3(item["center_lps_mm"], "truth centre"),
                bbox_lps_mm_min=None if lo is None else _vec3(lo, "truth bounding box"),
                bbox_lps_mm_max=None if hi is None else _vec3(hi, "truth bounding box"),
                volume_ml=None if volume is None else float(volume),
                long_axis_mm=None if item.get("long_axis_mm") is None else float(item["long_axis_mm"]),
            )
        except KeyError as exc:
            raise EvaluationError(f"truth lesion {dict(item).get('id', '?')} lacks {exc.args[0]!r}") from None

    @property
    def hit_radius_mm(self) -> float:
        return max(self.diameter_mm / 2.0, MIN_HIT_RADIUS_MM)

    @property
    def spherical(self) -> bool:
        """Whether the ball alone describes the lesion (else its bounding box counts too)."""
        if self.type in NON_SPHERICAL_TYPES:
            return False
        return not (self.long_axis_mm is not None and self.long_axis_mm > ELONGATION * self.diameter_mm)

    def is_hit_by(self, point: Vec3) -> bool:
        """Whether a detection centred at ``point`` lies in this lesion's hit zone."""
        p = np.asarray(point, dtype=float)
        if float(np.sum((p - np.asarray(self.center_lps_mm)) ** 2)) <= self.hit_radius_mm**2:
            return True
        if self.spherical or self.bbox_lps_mm_min is None or self.bbox_lps_mm_max is None:
            return False
        lo = np.minimum(self.bbox_lps_mm_min, self.bbox_lps_mm_max)
        hi = np.maximum(self.bbox_lps_mm_min, self.bbox_lps_mm_max)
        return bool(np.all(p >= lo) and np.all(p <= hi))


@dataclass(frozen=True)
class Detection:
    """One finding of the system under test (LPS mm)."""

    id: int
    type: str
    confidence: float
    center_lps_mm: Vec3
    volume_ml: float | None = None
    long_axis_mm: float | None = None

    @classmethod
    def from_report(cls, lesion: Any) -> Detection:
        """From a :class:`sensecare.analysis.report.LesionReport` (or its JSON dict)."""
        get = lesion.get if isinstance(lesion, Mapping) else lambda key: getattr(lesion, key, None)
        return cls(
            id=int(get("id")), type=str(get("type")), confidence=float(get("confidence")),
            center_lps_mm=_vec3(get("center_lps_mm"), "detection centre"),
            volume_ml=None if get("volume_ml") is None else float(get("volume_ml")),
            long_axis_mm=None if get("long_axis_mm") is None else float(get("long_axis_mm")),
        )


@dataclass(frozen=True)
class LesionOutcome:
    """What happened to one truth lesion."""

    truth: Truth
    included: bool
    best: Detection | None
    hits: tuple[int, ...]  # ids of every detection inside its hit zone

    @property
    def score(self) -> float | None:
        """Confidence at which it is found (None: never)."""
        return None if self.best is None else self.best.confidence


@dataclass(frozen=True)
class DetectionOutcome:
    """What one detection counts as, at every threshold."""

    detection: Detection
    status: Status
    truth_ids: tuple[int, ...]  # lesions it hits


@dataclass(frozen=True)
class ScanMatch:
    """One scan's matching."""

    case_id: str
    lesions: tuple[LesionOutcome, ...]
    detections: tuple[DetectionOutcome, ...]
    min_diameter_mm: float

    @property
    def included(self) -> tuple[LesionOutcome, ...]:
        return tuple(o for o in self.lesions if o.included)

    def lesion_scores(self) -> np.ndarray:
        """Per included lesion, the confidence it is found at (-inf: never)."""
        return np.array([-np.inf if o.score is None else o.score for o in self.included], dtype=float)

    def fp_scores(self) -> np.ndarray:
        """Confidences of the false positives."""
        return np.array([o.detection.confidence for o in self.detections if o.status == "fp"], dtype=float)


def match_scan(case_id: str, truths: Sequence[Truth], detections: Sequence[Detection],
               *, min_diameter_mm: float = 5.0) -> ScanMatch:
    """Match one scan's detections to its truth lesions (rule in the module docstring).

    Parameters
    ----------
    min_diameter_mm : float
        Truth lesions with a smaller sphere-equivalent diameter are excluded: they count
        neither as found nor as missed, and detections that hit only them are ignored.
    """
    ids = [d.id for d in detections]
    if len(set(ids)) != len(ids):
        raise EvaluationError(f"{case_id}: detection ids are not unique")
    hits = {t.id: [d for d in detections if t.is_hit_by(d.center_lps_mm)] for t in truths}
    lesions = []
    best_of_included: set[int] = set()
    for t in truths:
        found = sorted(hits[t.id], key=lambda d: (-d.confidence, _distance(d, t), d.id))
        included = t.diameter_mm >= min_diameter_mm
        best = found[0] if found else None
        if included and best is not None:
            best_of_included.add(best.id)
        lesions.append(LesionOutcome(t, included, best, tuple(d.id for d in found)))
    included_ids = {t.id for t in truths if t.diameter_mm >= min_diameter_mm}
    outcomes = []
    for d in detections:
        hit = tuple(t.id for t in truths if any(h.id == d.id for h in hits[t.id]))
        status: Status
        if d.id in best_of_included:
            status = "tp"
        elif not hit:
            status = "fp"
        elif set(hit) & included_ids:
            status = "duplicate"
        else:
            status = "ignored"
        outcomes.append(DetectionOutcome(d, status, hit))
    return ScanMatch(case_id, tuple(lesions), tuple(outcomes), float(min_diameter_mm))


def _distance(d: Detection, t: Truth) -> float:
    return float(np.linalg.norm(np.subtract(d.center_lps_mm, t.center_lps_mm)))

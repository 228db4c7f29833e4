"""Per-type detection scores, measurement errors and per-group tables from matched scans.

Definitions (all on included truth lesions, i.e. at least the size cut):

* **Detection** at threshold t: a lesion is found when its best hit has
  confidence >= t; false positives are unmatched detections >= t.
* **Per type**: a found lesion is a true positive of its truth type only when
  the best hit also has that type; otherwise it is a false negative of the
  truth type *and* a false positive of the predicted type (a wrong label is
  both a miss and a false alarm, as in multi-class detection benchmarks).
* **Volume error**: (predicted - truth) / truth volume of each lesion and its
  best hit, at any confidence the report lists: it measures segmentation of
  what was found, separately from finding it. Summaries use |error|.
* **Long-axis error**: predicted - truth RECIST long axis, mm.
* **PO / PHO error**: predicted - truth percent (high) opacity of the lungs,
  in percentage points, per scan.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from sensecare.evaluation.froc import FrocResult, bootstrap_froc, froc
from sensecare.evaluation.matching import ScanMatch

__all__ = [
    "LESION_TYPES",
    "PRF",
    "SIZE_BINS",
    "Bar",
    "CaseOutcome",
    "Confusion",
    "ErrorSummary",
    "GroupRow",
    "OpacitySummary",
    "PairError",
    "Summary",
    "confusion_matrix",
    "detection_prf",
    "group_table",
    "issue_bars",
    "opacity_summary",
    "pair_errors",
    "size_bin",
    "summarize",
    "summarize_errors",
    "type_prf",
]

LESION_TYPES = ("solid", "part_solid", "ground_glass", "consolidation", "mass")
#: Lower edges (mm) and labels of the size bins (truth sphere-equivalent diameter).
SIZE_BINS: tuple[tuple[float, str], ...] = (
    (0.0, "<5 mm"), (5.0, "5-10 mm"), (10.0, "10-20 mm"), (20.0, "20-30 mm"), (30.0, ">=30 mm"),
)
NO_LESION, MISSED = "none", "missed"


def size_bin(diameter_mm: float) -> str:
    label = SIZE_BINS[0][1]
    for lower, name in SIZE_BINS:
        if diameter_mm >= lower:
            label = name
    return label


@dataclass(frozen=True)
class CaseOutcome:
    """What the metrics need from one evaluated scan."""

    match: ScanMatch
    po_truth: float | None = None
    po_pred: float | None = None
    pho_truth: float | None = None
    pho_pred: float | None = None
    groups: Mapping[str, str] = field(default_factory=dict)  # e.g. size, sex, kernel, thickness

    @property
    def po_error(self) -> float | None:
        return None if self.po_truth is None or self.po_pred is None else self.po_pred - self.po_truth

    @property
    def pho_error(self) -> float | None:
        return None if self.pho_truth is None or self.pho_pred is None else self.pho_pred - self.pho_truth


@dataclass(frozen=True)
class PRF:
    tp: int
    fp: int
    fn: int

    @property
    def precision(self) -> float | None:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else None

    @property
    def recall(self) -> float | None:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else None

    @property
    def f1(self) -> float | None:
        return 2 * self.tp / (2 * self.tp + self.fp + self.fn) if self.tp + self.fp + self.fn else None


def _found(outcome, threshold: float) -> bool:  # type: ignore[no-untyped-def]
    return outcome.best is not None and outcome.best.confidence >= threshold


def detection_prf(scans: Sequence[ScanMatch], threshold: float) -> PRF:
    """Type-agnostic lesion detection at one threshold."""
    tp = fn = fp = 0
    for scan in scans:
        for o in scan.included:
            if _found(o, threshold):
                tp += 1
            else:
                fn += 1
        fp += sum(1 for d in scan.detections if d.status == "fp" and d.detection.confidence >= threshold)
    return PRF(tp, fp, fn)


def type_prf(scans: Sequence[ScanMatch], threshold: float, types: Sequence[str] = LESION_TYPES) -> dict[str, PRF]:
    """Per lesion type: right place and right type (see the module docstring)."""
    tp: dict[str, int] = defaultdict(int)
    fp: dict[str, int] = defaultdict(int)
    fn: dict[str, int] = defaultdict(int)
    for scan in scans:
        for o in scan.included:
            if _found(o, threshold) and o.best.type == o.truth.type:  # type: ignore[union-attr]
                tp[o.truth.type] += 1
            else:
                fn[o.truth.type] += 1
                if _found(o, threshold):
                    fp[o.best.type] += 1  # type: ignore[union-attr]
        for d in scan.detections:
            if d.status == "fp" and d.detection.confidence >= threshold:
                fp[d.detection.type] += 1
    names = list(types) + sorted((set(tp) | set(fp) | set(fn)) - set(types))
    return {t: PRF(tp[t], fp[t], fn[t]) for t in names}


@dataclass(frozen=True)
class Confusion:
    """counts[truth type][predicted type]; truth ``none`` = false positives, predicted ``missed`` = misses."""

    truth_labels: tuple[str, ...]
    predicted_labels: tuple[str, ...]
    counts: Mapping[str, Mapping[str, int]]


def confusion_matrix(scans: Sequence[ScanMatch], threshold: float, types: Sequence[str] = LESION_TYPES) -> Confusion:
    counts: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for scan in scans:
        for o in scan.included:
            counts[o.truth.type][o.best.type if _found(o, threshold) else MISSED] += 1  # type: ignore[union-attr]
        for d in scan.detections:
            if d.status == "fp" and d.detection.confidence >= threshold:
                counts[NO_LESION][d.detection.type] += 1
    seen_truth = {t for t in counts if t != NO_LESION}
    seen_pred = {p for row in counts.values() for p in row if p != MISSED}
    truth_labels = tuple(list(types) + sorted(seen_truth - set(types)) + [NO_LESION])
    predicted = tuple(list(types) + sorted(seen_pred - set(types)) + [MISSED])
    table = {t: {p: int(counts.get(t, {}).get(p, 0)) for p in predicted} for t in truth_labels}
    return Confusion(truth_labels, predicted, table)


@dataclass(frozen=True)
class PairError:
    """One included truth lesion and its best hit."""

    case_id: str
    truth_id: int
    detection_id: int
    truth_type: str
    predicted_type: str
    diameter_mm: float
    size_bin: str
    confidence: float
    volume_truth_ml: float | None
    volume_pred_ml: float | None
    volume_error: float | None  # relative, (pred - truth) / truth
    long_axis_truth_mm: float | None
    long_axis_pred_mm: float | None
    long_axis_error_mm: float | None


def pair_errors(scans: Sequence[ScanMatch], min_confidence: float = 0.0) -> list[PairError]:
    """Measurement errors of each included lesion against its best hit, where that scores ``min_confidence`` or more."""
    out = []
    for scan in scans:
        for o in scan.included:
            if o.best is None or o.best.confidence < min_confidence:
                continue
            t, d = o.truth, o.best
            vol = None
            if t.volume_ml and d.volume_ml is not None:
                vol = (d.volume_ml - t.volume_ml) / t.volume_ml
            axis = None
            if t.long_axis_mm is not None and d.long_axis_mm is not None:
                axis = d.long_axis_mm - t.long_axis_mm
            out.append(PairError(
                case_id=scan.case_id, truth_id=t.id, detection_id=d.id, truth_type=t.type, predicted_type=d.type,
                diameter_mm=t.diameter_mm, size_bin=size_bin(t.diameter_mm), confidence=d.confidence,
                volume_truth_ml=t.volume_ml, volume_pred_ml=d.volume_ml, volume_error=vol,
                long_axis_truth_mm=t.long_axis_mm, long_axis_pred_mm=d.long_axis_mm, long_axis_error_mm=axis,
            ))
    return out


@dataclass(frozen=True)
class ErrorSummary:
    """Median and quartiles of |error|, plus the median signed error (bias)."""

    n: int
    median_abs: float | None
    q1_abs: float | None
    q3_abs: float | None
    median_signed: float | None


def summarize_errors(values: Sequence[float | None]) -> ErrorSummary:
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=float)
    if v.size == 0:
        return ErrorSummary(0, None, None, None, None)
    q1, med, q3 = np.percentile(np.abs(v), [25, 50, 75])
    return ErrorSummary(int(v.size), float(med), float(q1), float(q3), float(np.median(v)))


def _by(pairs: Sequence[PairError], key: Callable[[PairError], str], value: Callable[[PairError], float | None],
        order: Sequence[str]) -> dict[str, ErrorSummary]:
    groups: dict[str, list[float | None]] = defaultdict(list)
    for p in pairs:
        groups[key(p)].append(value(p))
    names = [n for n in order if n in groups] + sorted(set(groups) - set(order))
    return {n: summarize_errors(groups[n]) for n in names}


@dataclass(frozen=True)
class OpacitySummary:
    """Absolute PO / PHO errors in percentage points over scans, with the mean signed error (bias)."""

    n: int
    po: ErrorSummary
    po_mean_abs: float | None
    po_max_abs: float | None
    po_bias: float | None
    pho: ErrorSummary
    pho_mean_abs: float | None
    pho_max_abs: float | None
    pho_bias: float | None


def opacity_summary(cases: Sequence[CaseOutcome]) -> OpacitySummary:
    po = np.asarray([c.po_error for c in cases if c.po_error is not None], dtype=float)
    pho = np.asarray([c.pho_error for c in cases if c.pho_error is not None], dtype=float)

    def stats(v: np.ndarray) -> tuple[float | None, float | None, float | None]:
        if v.size == 0:
            return None, None, None
        return float(np.mean(np.abs(v))), float(np.max(np.abs(v))), float(np.mean(v))

    return OpacitySummary(int(po.size), summarize_errors(list(po)), *stats(po), summarize_errors(list(pho)), *stats(pho))


@dataclass(frozen=True)
class Summary:
    """Every headline number of one set of scans."""

    n_scans: int
    threshold: float
    froc: FrocResult
    detection: PRF
    per_type: Mapping[str, PRF]
    confusion: Confusion
    volume_error: ErrorSummary
    volume_error_by_type: Mapping[str, ErrorSummary]
    volume_error_by_size: Mapping[str, ErrorSummary]
    long_axis_error_mm: ErrorSummary
    long_axis_error_by_type: Mapping[str, ErrorSummary]
    opacity: OpacitySummary
    pairs: tuple[PairError, ...]


def summarize(cases: Sequence[CaseOutcome], threshold: float = 0.5, bootstrap: int = 0, seed: int = 0,
              measured_from: float = 0.0) -> Summary:
    """All metrics of a set of scans at one operating threshold (bootstrap: resamples for the CPM interval).

    Measurement errors count the lesions found at ``measured_from`` or above (what a report shows);
    the FROC uses every detection.
    """
    scans = [c.match for c in cases]
    result = bootstrap_froc(scans, bootstrap, seed) if bootstrap else froc(scans)
    pairs = pair_errors(scans, measured_from)
    sizes = [name for _, name in SIZE_BINS]
    return Summary(
        n_scans=len(scans), threshold=float(threshold), froc=result,
        detection=detection_prf(scans, threshold), per_type=type_prf(scans, threshold),
        confusion=confusion_matrix(scans, threshold),
        volume_error=summarize_errors([p.volume_error for p in pairs]),
        volume_error_by_type=_by(pairs, lambda p: p.truth_type, lambda p: p.volume_error, LESION_TYPES),
        volume_error_by_size=_by(pairs, lambda p: p.size_bin, lambda p: p.volume_error, sizes),
        long_axis_error_mm=summarize_errors([p.long_axis_error_mm for p in pairs]),
        long_axis_error_by_type=_by(pairs, lambda p: p.truth_type, lambda p: p.long_axis_error_mm, LESION_TYPES),
        opacity=opacity_summary(cases), pairs=tuple(pairs),
    )


@dataclass(frozen=True)
class GroupRow:
    """The headline numbers of one subgroup or one robustness setting."""

    group: str
    n_scans: int
    n_lesions: int
    cpm: float | None
    sensitivity_at_1fp: float | None
    recall: float | None
    precision: float | None
    volume_error_median_abs: float | None
    po_mean_abs_error: float | None


def group_table(cases: Sequence[CaseOutcome], key: str, threshold: float = 0.5,
                order: Sequence[str] = (), measured_from: float = 0.0) -> list[GroupRow]:
    """One row per value of ``case.groups[key]`` (cases without it are left out)."""
    groups: dict[str, list[CaseOutcome]] = defaultdict(list)
    for c in cases:
        if key in c.groups:
            groups[str(c.groups[key])].append(c)
    names = [n for n in order if n in groups] + sorted(set(groups) - set(order))
    rows = []
    for name in names:
        members = groups[name]
        scans = [c.match for c in members]
        f = froc(scans)
        det = detection_prf(scans, threshold)
        vol = summarize_errors([p.volume_error for p in pair_errors(scans, measured_from)])
        rows.append(GroupRow(
            group=name, n_scans=len(members), n_lesions=f.n_lesions, cpm=f.cpm, sensitivity_at_1fp=f.sensitivity_at(1.0),
            recall=det.recall, precision=det.precision, volume_error_median_abs=vol.median_abs,
            po_mean_abs_error=opacity_summary(members).po_mean_abs,
        ))
    return rows


@dataclass(frozen=True)
class Bar:
    """One acceptance bar of issue #4 and whether the measurement meets it."""

    name: str
    target: str
    value: float | None
    met: bool | None  # None: not measurable on these cases


def issue_bars(summary: Summary, min_diameter_mm: float) -> list[Bar]:
    """CPM >= 0.85 on lesions >= 5 mm, median |volume error| <= 10 %, mean |PO error| <= 2 points."""
    cpm = summary.froc.cpm
    vol = summary.volume_error.median_abs
    po = summary.opacity.po_mean_abs
    cpm_met = None if cpm is None or min_diameter_mm != 5.0 else cpm >= 0.85
    return [
        Bar("CPM, lesions >= 5 mm", ">= 0.85", cpm, cpm_met),
        Bar("median |volume error|", "<= 10 %", vol, None if vol is None else vol <= 0.10),
        Bar("mean |PO error|", "<= 2 percentage points", po, None if po is None else po <= 2.0),
    ]

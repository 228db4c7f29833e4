"""FROC and the competition performance metric (CPM) of LUNA16.

Sweeping the confidence threshold over every detection's confidence gives,
per threshold, the share of included truth lesions found (sensitivity) and
the false positives per scan. The sensitivity *at* a false-positive rate is
the highest one reachable with at most that many false positives per scan (a
step function, no interpolation between thresholds); the CPM is the mean of
the sensitivities at 1/8, 1/4, 1/2, 1, 2, 4 and 8 false positives per scan
(Setio et al., Med Image Anal 2017).  A bootstrap over scans gives 95 %
percentile intervals, since the lesions of one scan are not independent.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from sensecare.evaluation.matching import ScanMatch

__all__ = ["LUNA16_FP_RATES", "FrocCurve", "FrocResult", "Interval", "bootstrap_froc", "froc", "froc_from_scores"]

LUNA16_FP_RATES: tuple[float, ...] = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)


@dataclass(frozen=True)
class FrocCurve:
    """Operating points, highest threshold first (the first point is 'nothing reported')."""

    thresholds: tuple[float, ...]
    fp_per_scan: tuple[float, ...]
    sensitivity: tuple[float, ...]


@dataclass(frozen=True)
class Interval:
    low: float
    high: float


@dataclass(frozen=True)
class FrocResult:
    """FROC summary; sensitivities and CPM are None when there is no lesion to find."""

    n_scans: int
    n_lesions: int
    n_found: int  # lesions found at the lowest threshold
    n_false_positives: int  # at the lowest threshold
    curve: FrocCurve
    rates: tuple[float, ...]
    sensitivities: tuple[float | None, ...]
    cpm: float | None
    cpm_ci: Interval | None = None
    sensitivity_ci: tuple[Interval | None, ...] | None = None

    def sensitivity_at(self, rate: float) -> float | None:
        return self.sensitivities[self.rates.index(rate)]


def froc_from_scores(lesion_scores: np.ndarray, fp_scores: np.ndarray, n_scans: int,
                     rates: Sequence[float] = LUNA16_FP_RATES) -> FrocResult:
    """FROC from each included lesion's score (-inf: never found) and each false positive's confidence."""
    lesion_scores = np.asarray(lesion_scores, dtype=float)
    fp_scores = np.asarray(fp_scores, dtype=float)
    rates = tuple(float(r) for r in rates)
    n_lesions = int(lesion_scores.size)
    found = lesion_scores[np.isfinite(lesion_scores)]
    thresholds = np.unique(np.concatenate([found, fp_scores]))[::-1]
    tp = _count_at_least(found, thresholds)
    fp = _count_at_least(fp_scores, thresholds)
    scans = max(int(n_scans), 1)
    sens = np.concatenate([[0.0], tp / n_lesions]) if n_lesions else np.zeros(thresholds.size + 1)
    fppi = np.concatenate([[0.0], fp / scans])
    curve = FrocCurve(
        thresholds=(float("inf"), *(float(t) for t in thresholds)),
        fp_per_scan=tuple(float(v) for v in fppi),
        sensitivity=tuple(float(v) for v in sens),
    )
    if n_lesions == 0:
        at: tuple[float | None, ...] = tuple(None for _ in rates)
        cpm = None
    else:
        at = tuple(float(sens[fppi <= r + 1e-9].max()) for r in rates)
        cpm = float(np.mean(at))  # type: ignore[arg-type]
    return FrocResult(
        n_scans=int(n_scans), n_lesions=n_lesions, n_found=int(found.size), n_false_positives=int(fp_scores.size),
        curve=curve, rates=rates, sensitivities=at, cpm=cpm,
    )


def froc(scans: Sequence[ScanMatch], rates: Sequence[float] = LUNA16_FP_RATES) -> FrocResult:
    """FROC over matched scans (lesions below each scan's size cut are left out)."""
    lesion = [s.lesion_scores() for s in scans]
    fps = [s.fp_scores() for s in scans]
    return froc_from_scores(_cat(lesion), _cat(fps), len(scans), rates)


def bootstrap_froc(scans: Sequence[ScanMatch], n_resamples: int = 1000, seed: int = 0,
                   rates: Sequence[float] = LUNA16_FP_RATES) -> FrocResult:
    """:func:`froc` plus 95 % percentile intervals from resampling scans with replacement."""
    result = froc(scans, rates)
    if result.cpm is None or n_resamples <= 0 or len(scans) < 2:
        return result
    rng = np.random.default_rng(seed)
    lesion = [s.lesion_scores() for s in scans]
    fps = [s.fp_scores() for s in scans]
    cpms, sens = [], []
    for _ in range(int(n_resamples)):
        pick = rng.integers(0, len(scans), len(scans))
        r = froc_from_scores(_cat([lesion[i] for i in pick]), _cat([fps[i] for i in pick]), len(scans), rates)
        if r.cpm is not None:
            cpms.append(r.cpm)
            sens.append(r.sensitivities)
    if not cpms:
        return result
    s = np.asarray(sens, dtype=float)
    lo, hi = np.percentile(cpms, [2.5, 97.5])
    ci = tuple(Interval(float(a), float(b)) for a, b in np.percentile(s, [2.5, 97.5], axis=0).T)
    return replace(result, cpm_ci=Interval(float(lo), float(hi)), sensitivity_ci=ci)


def _count_at_least(values: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    ordered = np.sort(values)
    return (ordered.size - np.searchsorted(ordered, thresholds, side="left")).astype(float)


def _cat(arrays: Sequence[np.ndarray]) -> np.ndarray:
    return np.concatenate(arrays) if arrays else np.zeros(0)

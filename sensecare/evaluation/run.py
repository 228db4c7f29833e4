"""Drive an evaluation: make or find the cases, analyse each, match, summarise.

Cases come from two sources, freely combined:

* a folder of cases, each a folder holding one DICOM series and a
  ``ground_truth.json`` in the phantom format (docs/phantoms.md);
* phantoms generated on the fly from a seed range. Each seed draws its own
  kernel, slice thickness, dose, patient size, sex and diffuse opacity
  (:class:`PhantomRecipe`, the same population the lesion model was trained
  on, with other seeds), so subgroups come for free.

The optional robustness grid re-scans the same seeds while varying one
factor at a time around a reference (standard kernel, 2.5 mm, dose 1):
kernel soft / standard / sharp, thickness 1 / 2.5 / 5 mm, dose 0.5 / 1 / 2.
Anatomy and lesions depend on the seed only, so differences between settings
are due to the acquisition.

Each case is analysed exactly as ``sensecare analyze`` would (the phantom is
written as DICOM to a temporary folder and read back), and nothing in the
analysis is tuned here: this module only measures.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import tempfile
import time
import traceback
from collections.abc import Callable, Mapping
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from sensecare import __version__
from sensecare.errors import EvaluationError
from sensecare.evaluation.matching import Detection, Truth, match_scan
from sensecare.evaluation.metrics import (
    CaseOutcome,
    GroupRow,
    Summary,
    group_table,
    summarize,
)

__all__ = [
    "ROBUSTNESS_GRID",
    "ROBUSTNESS_REFERENCE",
    "CaseInput",
    "CaseResult",
    "Evaluation",
    "EvaluationConfig",
    "PhantomRecipe",
    "evaluate",
    "folder_cases",
    "plan_cases",
    "robustness_settings",
]

#: Called with (case id, cases done, cases in all).
Progress = Callable[[str, int, int], None]

ROBUSTNESS_REFERENCE: Mapping[str, Any] = {"kernel": "standard", "thickness": 2.5, "dose": 1.0}
ROBUSTNESS_GRID: Mapping[str, tuple[Any, ...]] = {
    "kernel": ("soft", "standard", "sharp"),
    "thickness": (1.0, 2.5, 5.0),
    "dose": (0.5, 1.0, 2.0),
}
MAIN = "main"


@dataclass(frozen=True)
class PhantomRecipe:
    """How each seed's phantom is drawn; a one-element tuple fixes that factor."""

    matrix: int = 256
    thicknesses: tuple[float, ...] = (1.0, 1.25, 2.5, 5.0)
    kernels: tuple[str, ...] = ("soft", "standard", "sharp")
    sizes: tuple[str, ...] = ("small", "medium", "large")
    sexes: tuple[str, ...] = ("F", "M")
    dose_range: tuple[float, float] = (0.5, 2.0)
    diffuse: tuple[float, ...] = (0.0, 0.0, 0.0, 0.15)
    lesions: str = "random"
    n_slices: int | None = None

    def spec_for(self, seed: int, *, kernel: str | None = None, thickness: float | None = None,
                 dose: float | None = None):  # type: ignore[no-untyped-def]
        """The seed's :class:`~sensecare.phantom.PhantomSpec`; keywords override the drawn acquisition."""
        from sensecare.phantom import PhantomSpec, parse_lesions

        rng = np.random.default_rng([int(seed), 4])  # one draw per seed, independent of the overrides
        drawn_thickness = float(rng.choice(self.thicknesses))
        drawn_kernel = str(rng.choice(self.kernels))
        size = str(rng.choice(self.sizes))
        sex = str(rng.choice(self.sexes))
        drawn_dose = round(float(rng.uniform(*self.dose_range)), 2)
        diffuse = float(rng.choice(self.diffuse))
        return PhantomSpec(
            seed=int(seed), matrix=self.matrix, n_slices=self.n_slices,
            slice_thickness_mm=drawn_thickness if thickness is None else float(thickness),
            kernel=drawn_kernel if kernel is None else kernel, size=size, sex=sex,
            dose=drawn_dose if dose is None else float(dose), diffuse=diffuse, lesions=parse_lesions(self.lesions),
        )


@dataclass(frozen=True)
class RobustnessSetting:
    name: str  # e.g. "thickness=5"
    factor: str
    value: Any
    overrides: Mapping[str, Any]


def robustness_settings() -> list[RobustnessSetting]:
    """One factor at a time around the reference; the reference itself once."""
    ref = dict(ROBUSTNESS_REFERENCE)
    out = [RobustnessSetting("reference", "reference", None, ref)]
    for factor, values in ROBUSTNESS_GRID.items():
        for value in values:
            if value == ref[factor]:
                continue
            out.append(RobustnessSetting(f"{factor}={value:g}" if isinstance(value, float) else f"{factor}={value}",
                                         factor, value, {**ref, factor: value}))
    return out


@dataclass(frozen=True)
class CaseInput:
    """One scan to evaluate: a phantom to generate or a folder on disk."""

    case_id: str
    setting: str
    spec: Any | None = None  # PhantomSpec
    folder: Path | None = None


@dataclass(frozen=True)
class EvaluationConfig:
    """Everything an evaluation run depends on (validated by :func:`plan_cases`)."""

    out: Path
    phantoms: int = 0
    seed_start: int = 5000
    recipe: PhantomRecipe = field(default_factory=PhantomRecipe)
    cases_dir: Path | None = None
    robustness: bool = False
    robustness_phantoms: int = 6
    threshold: float = 0.5
    #: Findings down to this confidence are asked of the analysis: the FROC is traced over them
    #: (LUNA16 scores every candidate); the product's own floor would cut the curve short.
    froc_floor: float = 0.05
    #: What a report shows (``sensecare.analysis.pipeline.MIN_CONFIDENCE``): volume and diameter
    #: errors are measured on the lesions found at or above it.
    reported_from: float = 0.2
    min_diameter_mm: float = 5.0
    bootstrap: int = 1000
    device: str = "cpu"
    jobs: int = 1  # cases analysed in parallel processes


def folder_cases(root: Path) -> list[CaseInput]:
    """Every folder under ``root`` (``root`` included) holding a ``ground_truth.json``."""
    if not root.is_dir():
        raise EvaluationError(f"cases folder {root} does not exist")
    found = sorted({p.parent for p in root.rglob("ground_truth.json")})
    if not found:
        raise EvaluationError(f"{root} holds no case (a folder with a DICOM series and ground_truth.json)")
    return [CaseInput(case_id=str(f.relative_to(root)) if f != root else root.name, setting=MAIN, folder=f)
            for f in found]


def plan_cases(config: EvaluationConfig) -> list[CaseInput]:
    """Check the configuration and list the cases, building every phantom spec up front (fail fast)."""
    if config.jobs < 1:
        raise EvaluationError(f"--jobs must be at least 1, got {config.jobs}")
    if config.phantoms < 0 or config.robustness_phantoms < 0:
        raise EvaluationError("the number of phantoms must not be negative")
    if config.seed_start < 0:
        raise EvaluationError(f"--seed-start must be a non-negative integer, got {config.seed_start}")
    if not 0.0 <= config.threshold <= 1.0:
        raise EvaluationError(f"threshold {config.threshold:g} is outside 0-1")
    if not 0.0 <= config.froc_floor <= config.reported_from <= 1.0:
        raise EvaluationError(f"the FROC floor {config.froc_floor:g} must lie in 0-1 and not above the reporting "
                              f"floor {config.reported_from:g}")
    if not 0.0 <= config.min_diameter_mm <= 100.0:
        raise EvaluationError(f"minimum diameter {config.min_diameter_mm:g} mm is outside 0-100 mm")
    if config.bootstrap < 0:
        raise EvaluationError("the number of bootstrap resamples must not be negative")
    if config.robustness and config.robustness_phantoms == 0:
        raise EvaluationError("--robustness needs at least one phantom (--robustness-phantoms)")
    cases: list[CaseInput] = []
    if config.cases_dir is not None:
        cases += folder_cases(config.cases_dir)
    seeds = range(config.seed_start, config.seed_start + config.phantoms)
    cases += [CaseInput(f"phantom-{s}", MAIN, spec=config.recipe.spec_for(s)) for s in seeds]
    if config.robustness:
        for setting in robustness_settings():
            o = setting.overrides
            for s in range(config.seed_start, config.seed_start + config.robustness_phantoms):
                spec = config.recipe.spec_for(s, kernel=o["kernel"], thickness=o["thickness"], dose=o["dose"])
                cases.append(CaseInput(f"phantom-{s}-{setting.name}", setting.name, spec=spec))
    if not cases:
        raise EvaluationError("nothing to evaluate: give --phantoms N, --cases DIR or --robustness")
    return cases


@dataclass(frozen=True)
class CaseResult:
    """One analysed case: its truth, the report's findings and bookkeeping."""

    case_id: str
    setting: str
    groups: Mapping[str, str]
    truths: tuple[Truth, ...]
    detections: tuple[Detection, ...]
    po_truth: float | None
    pho_truth: float | None
    po_pred: float | None
    pho_pred: float | None
    models: tuple[Mapping[str, str], ...]
    timing_s: Mapping[str, float]
    spec: Mapping[str, Any] = field(default_factory=dict)
    error: str | None = None

    def outcome(self, min_diameter_mm: float) -> CaseOutcome:
        match = match_scan(self.case_id, self.truths, self.detections, min_diameter_mm=min_diameter_mm)
        return CaseOutcome(match, self.po_truth, self.po_pred, self.pho_truth, self.pho_pred, self.groups)


def _groups(spec: Mapping[str, Any]) -> dict[str, str]:
    out = {}
    for key, name in (("size", "size"), ("sex", "sex"), ("kernel", "kernel"),
                      ("slice_thickness_mm", "thickness"), ("dose", "dose"), ("diffuse", "diffuse")):
        if spec.get(key) is not None:
            value = spec[key]
            out[name] = f"{float(value):g}" if isinstance(value, (int, float)) and not isinstance(value, bool) else str(value)
    return out


def _read_truth(folder: Path) -> dict[str, Any]:
    path = folder / "ground_truth.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise EvaluationError(f"{path}: not readable ground truth ({exc})") from exc


def run_case(case: CaseInput, out_dir: Path, device: str = "cpu",
             min_confidence: float = EvaluationConfig.reported_from) -> CaseResult:
    """Generate (if a phantom), analyse and collect one case; analysis failures become ``error``."""
    timing: dict[str, float] = {}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="sensecare-eval-") as tmp:
        if case.spec is not None:
            from sensecare.phantom import generate_phantom, write_phantom

            phantom = generate_phantom(case.spec)
            timing["generate"] = round(time.perf_counter() - started, 2)
            folder = write_phantom(phantom, Path(tmp) / "series")
            del phantom
            timing["write"] = round(time.perf_counter() - started - timing["generate"], 2)
        else:
            folder = case.folder  # type: ignore[assignment]
        gt = _read_truth(folder)
        truths = tuple(Truth.from_json(item) for item in gt.get("lesions", []))
        spec = gt.get("spec") or {}
        groups = _groups(spec)
        analysed = time.perf_counter()
        detections: tuple[Detection, ...] = ()
        po_pred = pho_pred = None
        models: tuple[Mapping[str, str], ...] = ()
        error = None
        try:
            from sensecare.analysis.pipeline import analyze_series
            from sensecare.archive.loader import find_dicom_files

            files = find_dicom_files(folder).dicom
            if not files:
                raise EvaluationError(f"{folder} holds no DICOM files")
            result = analyze_series(files, out_dir / "cases" / _safe(case.case_id), device=device, write_dicom=False,
                                    min_confidence=min_confidence)
            report = result.report
            detections = tuple(Detection.from_report(lesion) for lesion in report.lesions)
            po_pred, pho_pred = report.opacity.percent_opacity, report.opacity.percent_high_opacity
            models = tuple(m.model_dump() for m in report.models)
        except Exception as exc:  # noqa: BLE001 - one broken case must not lose a long run; it counts as all missed
            error = f"{type(exc).__name__}: {exc}"
            if not isinstance(exc, EvaluationError):
                error += " | " + traceback.format_exc(limit=3).strip().splitlines()[-1]
        timing["analyze"] = round(time.perf_counter() - analysed, 2)
    timing["total"] = round(time.perf_counter() - started, 2)
    return CaseResult(
        case_id=case.case_id, setting=case.setting, groups=groups, truths=truths, detections=detections,
        po_truth=_float(gt.get("percent_opacity")), pho_truth=_float(gt.get("percent_high_opacity")),
        po_pred=po_pred, pho_pred=pho_pred, models=models, timing_s=timing,
        spec={k: spec.get(k) for k in ("seed", "matrix", "slice_thickness_mm", "kernel", "dose", "size", "sex",
                                        "diffuse") if k in spec},
        error=error,
    )


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


def _safe(case_id: str) -> str:
    return "".join(c if c.isalnum() or c in "-_.=" else "_" for c in case_id)


@dataclass(frozen=True)
class Evaluation:
    """A finished run: settings, per-case results, summaries and tables."""

    config: EvaluationConfig
    created_at: str
    duration_s: float
    cases: tuple[CaseResult, ...]
    outcomes: tuple[CaseOutcome, ...]  # main cases, at the size cut
    summary: Summary | None  # main cases at the size cut
    summary_all_sizes: Summary | None  # main cases, every lesion
    subgroups: Mapping[str, list[GroupRow]]
    robustness: list[GroupRow]
    robustness_outcomes: tuple[CaseOutcome, ...]
    models: tuple[Mapping[str, str], ...]
    machine: Mapping[str, Any]
    sensecare_version: str = __version__

    @property
    def main_cases(self) -> tuple[CaseResult, ...]:
        return tuple(c for c in self.cases if c.setting == MAIN)


SUBGROUP_ORDER: Mapping[str, tuple[str, ...]] = {
    "size": ("small", "medium", "large"), "sex": ("F", "M"), "kernel": ("soft", "standard", "sharp"),
    "thickness": (), "diffuse": (),
}


def evaluate(config: EvaluationConfig, progress: Progress | None = None) -> Evaluation:
    """Run every case of ``config`` in turn and summarise (outputs: see :mod:`sensecare.evaluation.report`)."""
    cases = plan_cases(config)
    started = time.perf_counter()
    config.out.mkdir(parents=True, exist_ok=True)
    results: list[CaseResult] = []
    if config.jobs > 1:
        with ProcessPoolExecutor(max_workers=config.jobs) as pool:
            futures = [pool.submit(run_case, case, config.out, config.device, config.froc_floor) for case in cases]
            for done, (case, future) in enumerate(zip(cases, futures)):
                if progress:
                    progress(case.case_id, done, len(cases))
                results.append(future.result())
    else:
        for done, case in enumerate(cases):
            if progress:
                progress(case.case_id, done, len(cases))
            results.append(run_case(case, config.out, config.device, config.froc_floor))
    if progress:
        progress("summary", len(cases), len(cases))
    main = [r for r in results if r.setting == MAIN]
    outcomes = tuple(r.outcome(config.min_diameter_mm) for r in main)
    measured = config.reported_from
    summary = summarize(outcomes, config.threshold, config.bootstrap, measured_from=measured) if main else None
    everything = summarize([r.outcome(0.0) for r in main], config.threshold, measured_from=measured) if main else None
    subgroups = {key: group_table(outcomes, key, config.threshold, order, measured)
                 for key, order in SUBGROUP_ORDER.items()}
    subgroups = {k: v for k, v in subgroups.items() if len(v) > 1}
    robust = tuple(
        replace(r.outcome(config.min_diameter_mm), groups={**r.groups, "setting": r.setting})
        for r in results if r.setting != MAIN
    )
    order = [s.name for s in robustness_settings()]
    robustness = group_table(robust, "setting", config.threshold, order, measured) if robust else []
    models: dict[tuple[str, str], Mapping[str, str]] = {}
    for r in results:
        for m in r.models:
            models.setdefault((str(m.get("name")), str(m.get("version"))), m)
    return Evaluation(
        config=config, created_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        duration_s=round(time.perf_counter() - started, 1), cases=tuple(results), outcomes=outcomes,
        summary=summary, summary_all_sizes=everything, subgroups=subgroups, robustness=robustness,
        robustness_outcomes=robust, models=tuple(models.values()), machine=_machine(),
    )


def _machine() -> dict[str, Any]:
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "python": platform.python_version()}


"""Evaluation of the lesion and opacity analysis against ground truth (issue #4, item 5).

>>> from pathlib import Path
>>> from sensecare.evaluation import EvaluationConfig, evaluate, write_outputs
>>> ev = evaluate(EvaluationConfig(out=Path("out/eval"), phantoms=50, seed_start=5000))  # doctest: +SKIP
>>> write_outputs(ev, Path("out/eval"))  # doctest: +SKIP

Modules: :mod:`~sensecare.evaluation.matching` (detections to truth, LUNA16 rule),
:mod:`~sensecare.evaluation.froc` (FROC, CPM, bootstrap), :mod:`~sensecare.evaluation.metrics`
(per-type P/R/F1, volume/diameter/PO errors, group tables), :mod:`~sensecare.evaluation.run`
(cases: folders or phantoms, robustness grid) and :mod:`~sensecare.evaluation.report`
(JSON, PNG, Markdown). See docs/validation.md.
"""

from sensecare.evaluation.froc import (
    LUNA16_FP_RATES,
    FrocResult,
    bootstrap_froc,
    froc,
    froc_from_scores,
)
from sensecare.evaluation.matching import Detection, ScanMatch, Truth, match_scan
from sensecare.evaluation.metrics import CaseOutcome, Summary, summarize
from sensecare.evaluation.report import write_outputs
from sensecare.evaluation.run import (
    Evaluation,
    EvaluationConfig,
    PhantomRecipe,
    evaluate,
    plan_cases,
)

__all__ = [
    "LUNA16_FP_RATES",
    "CaseOutcome",
    "Detection",
    "Evaluation",
    "EvaluationConfig",
    "FrocResult",
    "PhantomRecipe",
    "ScanMatch",
    "Summary",
    "Truth",
    "bootstrap_froc",
    "evaluate",
    "froc",
    "froc_from_scores",
    "match_scan",
    "plan_cases",
    "summarize",
    "write_outputs",
]

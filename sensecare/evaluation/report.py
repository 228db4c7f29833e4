"""Write an evaluation: ``evaluation.json`` (every number), ``froc.png``, ``volume_error.png``, ``evaluation.md``.

The JSON is the record (settings, versions, machine, per-case details); the
Markdown holds the same headline tables for people; plots are drawn with
matplotlib's Agg backend so no display is needed.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sensecare.evaluation.froc import FrocResult, froc
from sensecare.evaluation.matching import (
    ELONGATION,
    MIN_HIT_RADIUS_MM,
    NON_SPHERICAL_TYPES,
)
from sensecare.evaluation.metrics import (
    LESION_TYPES,
    PRF,
    CaseOutcome,
    ErrorSummary,
    GroupRow,
    Summary,
    issue_bars,
)
from sensecare.evaluation.run import (
    ROBUSTNESS_GRID,
    ROBUSTNESS_REFERENCE,
    Evaluation,
    robustness_settings,
)

__all__ = ["evaluation_json", "write_outputs"]

MATCHING_RULE = (
    "a detection hits a truth lesion when its centre lies within max(sphere-equivalent radius, "
    f"{MIN_HIT_RADIUS_MM} mm) of the truth centre, or inside the truth bounding box for non-spherical lesions "
    f"({', '.join(sorted(NON_SPHERICAL_TYPES))}, or long axis > {ELONGATION}x the equivalent diameter); each lesion "
    "counts once at the confidence of its best hit; other hits on it are ignored; detections hitting only lesions "
    "below the size cut are ignored; detections hitting nothing are false positives"
)


def write_outputs(evaluation: Evaluation, out: Path) -> dict[str, Path]:
    """Write the four outputs into ``out``; returns their paths by name."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "json": out / "evaluation.json",
        "froc": out / "froc.png",
        "volume_error": out / "volume_error.png",
        "markdown": out / "evaluation.md",
    }
    paths["json"].write_text(json.dumps(evaluation_json(evaluation), indent=1, allow_nan=False) + "\n")
    plot_froc(evaluation, paths["froc"])
    plot_volume_error(evaluation, paths["volume_error"])
    paths["markdown"].write_text(markdown(evaluation))
    return paths


# --- JSON ------------------------------------------------------------------------------------


def _clean(value: Any) -> Any:
    """Plain JSON: no NaN or infinity (null instead), tuples as lists, numpy scalars as Python."""
    if isinstance(value, Mapping):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (np.floating, float)):
        v = float(value)
        return v if math.isfinite(v) else None
    if isinstance(value, np.integer):
        return int(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _clean(dataclasses.asdict(value))
    return value


def _prf(p: PRF) -> dict[str, Any]:
    return {"tp": p.tp, "fp": p.fp, "fn": p.fn, "precision": p.precision, "recall": p.recall, "f1": p.f1}


def _froc(f: FrocResult) -> dict[str, Any]:
    return {
        "n_scans": f.n_scans, "n_lesions": f.n_lesions, "n_found_at_lowest_threshold": f.n_found,
        "n_false_positives_at_lowest_threshold": f.n_false_positives,
        "fp_rates": list(f.rates),
        "sensitivities": {f"{r:g}": s for r, s in zip(f.rates, f.sensitivities)},
        "cpm": f.cpm,
        "cpm_ci95": None if f.cpm_ci is None else [f.cpm_ci.low, f.cpm_ci.high],
        "sensitivity_ci95": None if f.sensitivity_ci is None else {
            f"{r:g}": None if ci is None else [ci.low, ci.high] for r, ci in zip(f.rates, f.sensitivity_ci)
        },
        "curve": {"thresholds": list(f.curve.thresholds), "fp_per_scan": list(f.curve.fp_per_scan),
                  "sensitivity": list(f.curve.sensitivity)},
    }


def _summary(s: Summary | None, pairs: bool = True) -> dict[str, Any] | None:
    if s is None:
        return None
    out = {
        "n_scans": s.n_scans,
        "froc": _froc(s.froc),
        "detection": {"threshold": s.threshold, **_prf(s.detection)},
        "per_type": {t: _prf(p) for t, p in s.per_type.items()},
        "confusion": {"rows_truth": list(s.confusion.truth_labels), "columns_predicted": list(s.confusion.predicted_labels),
                      "counts": s.confusion.counts},
        "volume_error": {"definition": "(pred - truth) / truth; median/quartiles of |error|, median signed",
                         "overall": s.volume_error, "by_type": s.volume_error_by_type, "by_size": s.volume_error_by_size},
        "long_axis_error_mm": {"definition": "pred - truth RECIST long axis, mm",
                               "overall": s.long_axis_error_mm, "by_type": s.long_axis_error_by_type},
        "opacity_error_pp": s.opacity,
    }
    if pairs:
        out["pairs"] = list(s.pairs)
    return out


def _case(c: Any, outcome: CaseOutcome | None) -> dict[str, Any]:
    item: dict[str, Any] = {
        "id": c.case_id, "setting": c.setting, "groups": c.groups, "spec": c.spec, "error": c.error,
        "timing_s": c.timing_s, "po_truth": c.po_truth, "po_pred": c.po_pred,
        "pho_truth": c.pho_truth, "pho_pred": c.pho_pred,
    }
    if outcome is not None:
        m = outcome.match
        item["lesions"] = [
            {"id": o.truth.id, "type": o.truth.type, "diameter_mm": o.truth.diameter_mm, "included": o.included,
             "volume_ml": o.truth.volume_ml, "long_axis_mm": o.truth.long_axis_mm,
             "center_lps_mm": o.truth.center_lps_mm, "best_detection": None if o.best is None else o.best.id,
             "score": o.score, "hits": o.hits}
            for o in m.lesions
        ]
        item["detections"] = [
            {"id": d.detection.id, "type": d.detection.type, "confidence": d.detection.confidence,
             "status": d.status, "hits_truth": d.truth_ids, "center_lps_mm": d.detection.center_lps_mm,
             "volume_ml": d.detection.volume_ml, "long_axis_mm": d.detection.long_axis_mm}
            for d in m.detections
        ]
    return item


def evaluation_json(ev: Evaluation) -> dict[str, Any]:
    cfg = ev.config
    outcome_by_id = {o.match.case_id: o for o in (*ev.outcomes, *ev.robustness_outcomes)}
    bars = issue_bars(ev.summary, cfg.min_diameter_mm) if ev.summary else []
    return _clean({
        "sensecare_version": ev.sensecare_version,
        "created_at": ev.created_at,
        "duration_s": ev.duration_s,
        "machine": ev.machine,
        "models": list(ev.models),
        "settings": {
            "phantoms": cfg.phantoms, "seed_start": cfg.seed_start,
            "seeds": [cfg.seed_start, cfg.seed_start + cfg.phantoms - 1] if cfg.phantoms else None,
            "recipe": cfg.recipe, "cases_dir": cfg.cases_dir, "robustness": cfg.robustness,
            "robustness_phantoms": cfg.robustness_phantoms if cfg.robustness else 0,
            "robustness_reference": ROBUSTNESS_REFERENCE, "robustness_grid": ROBUSTNESS_GRID,
            "threshold": cfg.threshold, "froc_floor": cfg.froc_floor, "reported_from": cfg.reported_from,
            "min_diameter_mm": cfg.min_diameter_mm, "bootstrap": cfg.bootstrap,
            "device": cfg.device, "matching_rule": MATCHING_RULE,
        },
        "n_cases": len(ev.main_cases),
        "n_failed": sum(1 for c in ev.main_cases if c.error),
        "bars": bars,
        "summary": _summary(ev.summary),
        "summary_all_sizes": _summary(ev.summary_all_sizes, pairs=False),
        "subgroups": ev.subgroups,
        "robustness": ev.robustness,
        "cases": [_case(c, outcome_by_id.get(c.case_id)) for c in ev.cases],
    })


# --- plots -----------------------------------------------------------------------------------


def _pyplot():  # type: ignore[no-untyped-def]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _steps(f: FrocResult, rates: np.ndarray) -> np.ndarray:
    fp = np.asarray(f.curve.fp_per_scan)
    sens = np.asarray(f.curve.sensitivity)
    return np.array([sens[fp <= r + 1e-9].max() for r in rates])


def plot_froc(ev: Evaluation, path: Path) -> None:
    """FROC of the main cases (and of each robustness setting when run), LUNA16 rates marked."""
    plt = _pyplot()
    panels = (ev.summary is not None) + bool(ev.robustness_outcomes)
    fig, axes = plt.subplots(1, max(panels, 1), figsize=(6.2 * max(panels, 1), 4.6), squeeze=False)
    grid = np.geomspace(1 / 16, 16, 400)
    ax_iter = iter(axes[0])
    if ev.summary is not None:
        ax = next(ax_iter)
        f = ev.summary.froc
        if f.cpm is not None:
            ax.plot(grid, _steps(f, grid), color="C0", label=f"lesions >= {ev.config.min_diameter_mm:g} mm (CPM {f.cpm:.3f})")
            ax.plot(f.rates, f.sensitivities, "o", color="C0")
            if f.sensitivity_ci is not None:
                lo = [ci.low if ci else np.nan for ci in f.sensitivity_ci]
                hi = [ci.high if ci else np.nan for ci in f.sensitivity_ci]
                ax.fill_between(f.rates, lo, hi, color="C0", alpha=0.15, label="95 % bootstrap CI")
        every = ev.summary_all_sizes.froc if ev.summary_all_sizes else None
        if every is not None and every.cpm is not None:
            ax.plot(grid, _steps(every, grid), "--", color="C1", label=f"all lesions (CPM {every.cpm:.3f})")
        _froc_axes(ax, f"FROC, {ev.summary.n_scans} scans, {f.n_lesions} lesions")
    if ev.robustness_outcomes:
        ax = next(ax_iter)
        for k, setting in enumerate(robustness_settings()):
            members = [o.match for o in ev.robustness_outcomes if o.groups.get("setting") == setting.name]
            f = froc(members)
            if not members or f.cpm is None:
                continue
            ax.plot(grid, _steps(f, grid), color=f"C{k}", label=f"{setting.name} (CPM {f.cpm:.3f})")
        _froc_axes(ax, "Robustness (same seeds)", legend="upper left")
    if panels == 0:
        axes[0][0].text(0.5, 0.5, "no cases", ha="center", va="center")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _froc_axes(ax, title: str, legend: str = "lower right") -> None:  # type: ignore[no-untyped-def]
    ax.set_xscale("log", base=2)
    ax.set_xlim(1 / 16, 16)
    ax.set_ylim(0, 1.02)
    ax.set_xticks([0.125, 0.25, 0.5, 1, 2, 4, 8], ["1/8", "1/4", "1/2", "1", "2", "4", "8"])
    ax.set_xlabel("false positives per scan")
    ax.set_ylabel("sensitivity")
    ax.grid(True, alpha=0.3)
    ax.set_title(title)
    ax.legend(loc=legend, fontsize=8)


def plot_volume_error(ev: Evaluation, path: Path) -> None:
    """Predicted vs truth volume (log-log) and signed relative error by truth type."""
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8))
    pairs = [p for p in (ev.summary.pairs if ev.summary else ()) if p.volume_error is not None]
    if not pairs:
        for ax in (left, right):
            ax.text(0.5, 0.5, "no matched lesions", ha="center", va="center")
    else:
        types = [t for t in LESION_TYPES if any(p.truth_type == t for p in pairs)]
        for k, t in enumerate(types):
            sel = [p for p in pairs if p.truth_type == t]
            left.scatter([p.volume_truth_ml for p in sel], [p.volume_pred_ml for p in sel], s=18, color=f"C{k}", label=t)
        values = [v for p in pairs for v in (p.volume_truth_ml, p.volume_pred_ml) if v and v > 0]
        lo, hi = min(values) / 1.5, max(values) * 1.5
        left.plot([lo, hi], [lo, hi], "k-", lw=0.8)
        left.fill_between([lo, hi], [lo * 0.9, hi * 0.9], [lo * 1.1, hi * 1.1], color="k", alpha=0.08, label="+-10 %")
        left.set(xscale="log", yscale="log", xlim=(lo, hi), ylim=(lo, hi), xlabel="truth volume (mL)",
                 ylabel="predicted volume (mL)", title=f"Volume, {len(pairs)} matched lesions")
        left.legend(fontsize=8)
        data = [[100 * p.volume_error for p in pairs if p.truth_type == t] for t in types]  # type: ignore[operator]
        right.boxplot(data, tick_labels=[f"{t}\n(n={len(d)})" for t, d in zip(types, data)], showfliers=True)
        right.axhline(0, color="k", lw=0.8)
        right.axhspan(-10, 10, color="k", alpha=0.08)
        right.set(ylabel="relative volume error (%)", title="(pred - truth) / truth by truth type")
        right.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --- Markdown --------------------------------------------------------------------------------


def _f(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _pct(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{100 * value:.{digits}f} %"


def _table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _errors_rows(items: Mapping[str, ErrorSummary], fmt) -> list[list[str]]:  # type: ignore[no-untyped-def]
    return [[name, e.n, fmt(e.median_abs), f"{fmt(e.q1_abs)} - {fmt(e.q3_abs)}", fmt(e.median_signed)]
            for name, e in items.items()]


def _group_rows(rows: Sequence[GroupRow]) -> list[list[str]]:
    return [[r.group, r.n_scans, r.n_lesions, _f(r.cpm), _f(r.sensitivity_at_1fp), _f(r.recall), _f(r.precision),
             _pct(r.volume_error_median_abs), _f(r.po_mean_abs_error, 2)] for r in rows]


GROUP_HEADER = ["group", "scans", "lesions", "CPM", "sens. @ 1 FP/scan", "recall @ t", "precision @ t",
                "median abs vol. error", "mean abs PO error (pp)"]


def markdown(ev: Evaluation) -> str:
    cfg = ev.config
    main = ev.main_cases
    models = ", ".join(f"{m.get('name')} {m.get('version')}" for m in ev.models)
    out = [(f"# SenseCare evaluation\n\n"
           f"- created {ev.created_at}, sensecare {ev.sensecare_version}, {ev.duration_s:.0f} s on "
           f"{ev.machine.get('cpu_count')} CPU cores ({ev.machine.get('processor')}), device {cfg.device}\n"
           f"- models: {models or 'n/a'}\n")]
    if cfg.phantoms:
        r = cfg.recipe
        out.append(f"- {cfg.phantoms} phantoms, seeds {cfg.seed_start}-{cfg.seed_start + cfg.phantoms - 1}, matrix "
                   f"{r.matrix}, thickness {'/'.join(f'{t:g}' for t in r.thicknesses)} mm, kernels "
                   f"{'/'.join(r.kernels)}, lesions {r.lesions}\n")
    if cfg.cases_dir:
        out.append(f"- cases from {cfg.cases_dir}\n")
    failed = [c for c in ev.cases if c.error]
    out.append(f"- {len(main)} scans in the main set ({sum(1 for c in main if c.error)} failed), operating threshold "
               f"{cfg.threshold:g}, lesions >= {cfg.min_diameter_mm:g} mm counted\n")
    out.append(f"- FROC over every finding down to confidence {cfg.froc_floor:g}; volume and diameter errors on "
               f"the lesions found at {cfg.reported_from:g} or above (what a report shows)\n")
    out.append(f"- matching: {MATCHING_RULE}\n")
    s = ev.summary
    if s is not None:
        out.append("\n## Issue #4 bars\n\n")
        out.append(_table(["bar", "target", "measured", "met"], [
            [b.name, b.target, _pct(b.value) if "volume" in b.name else _f(b.value, 3 if "CPM" in b.name else 2),
             {True: "yes", False: "**no**", None: "n/a"}[b.met]] for b in issue_bars(s, cfg.min_diameter_mm)
        ]))
        f = s.froc
        out.append(f"\n## FROC (lesions >= {cfg.min_diameter_mm:g} mm)\n\n{f.n_lesions} lesions in {f.n_scans} scans; "
                   f"{f.n_found} found at the lowest confidence reported, with {f.n_false_positives} false positives "
                   f"({f.n_false_positives / max(f.n_scans, 1):.1f} per scan).\n\n")
        cis = f.sensitivity_ci or tuple(None for _ in f.rates)
        rows = [[f"{r:g}", _f(v), "" if ci is None else f"{ci.low:.3f} - {ci.high:.3f}"]
                for r, v, ci in zip(f.rates, f.sensitivities, cis)]
        rows.append(["**CPM**", f"**{_f(f.cpm)}**", "" if f.cpm_ci is None else f"{f.cpm_ci.low:.3f} - {f.cpm_ci.high:.3f}"])
        out.append(_table(["FP / scan", "sensitivity", "95 % CI (bootstrap over scans)"], rows))
        if ev.summary_all_sizes is not None:
            a = ev.summary_all_sizes.froc
            out.append(f"\nAll lesion sizes: {a.n_lesions} lesions, CPM {_f(a.cpm)}, sensitivity at 1 FP/scan "
                       f"{_f(a.sensitivity_at(1.0))}.\n")
        out.append(f"\n## Detection and type at confidence >= {cfg.threshold:g}\n\n")
        out.append(_table(["lesion type", "TP", "FP", "FN", "precision", "recall", "F1"],
                          [["**any (detection)**", s.detection.tp, s.detection.fp, s.detection.fn,
                            _f(s.detection.precision), _f(s.detection.recall), _f(s.detection.f1)]]
                          + [[t, p.tp, p.fp, p.fn, _f(p.precision), _f(p.recall), _f(p.f1)] for t, p in s.per_type.items()]))
        out.append("\nPer type, a found lesion of the wrong type is a false negative of its type and a false positive of "
                   "the predicted type.\n\nType confusion (rows: truth, `none` = false positives; columns: predicted, "
                   "`missed` = not found at the threshold):\n\n")
        c = s.confusion
        out.append(_table(["truth \\ predicted", *c.predicted_labels],
                          [[t, *(c.counts[t][p] for p in c.predicted_labels)] for t in c.truth_labels]))
        out.append(f"\n## Measurement error (included lesions and their best hit, at confidence >= {cfg.reported_from:g})\n\n")
        vol = {"all": s.volume_error, **{f"type {k}": v for k, v in s.volume_error_by_type.items()},
               **{f"size {k}": v for k, v in s.volume_error_by_size.items()}}
        out.append(_table(["volume error (pred - truth) / truth", "n", "median abs", "IQR of abs", "median signed"],
                          _errors_rows(vol, _pct)))
        axis = {"all": s.long_axis_error_mm, **{f"type {k}": v for k, v in s.long_axis_error_by_type.items()}}
        out.append("\n" + _table(["long-axis error (mm)", "n", "median abs", "IQR of abs", "median signed"],
                                 _errors_rows(axis, lambda v: _f(v, 1))))
        o = s.opacity
        out.append("\n## Percent opacity (PO) and percent high opacity (PHO), per scan\n\n")
        out.append(_table(["", "scans", "mean abs error (pp)", "median abs (pp)", "max abs (pp)", "mean signed (pp)"], [
            ["PO", o.n, _f(o.po_mean_abs, 2), _f(o.po.median_abs, 2), _f(o.po_max_abs, 2), _f(o.po_bias, 2)],
            ["PHO", o.pho.n, _f(o.pho_mean_abs, 2), _f(o.pho.median_abs, 2), _f(o.pho_max_abs, 2), _f(o.pho_bias, 2)],
        ]))
    if ev.subgroups:
        out.append("\n## Subgroups (main set)\n")
        for key, rows in ev.subgroups.items():
            out.append(f"\n### {key}\n\n" + _table(GROUP_HEADER, _group_rows(rows)))
            cpms = [r.cpm for r in rows if r.cpm is not None]
            if len(cpms) > 1:
                out.append(f"\nCPM spread across {key} groups: {max(cpms) - min(cpms):.3f}.\n")
    if ev.robustness:
        ref = ", ".join(f"{k} {v}" for k, v in ROBUSTNESS_REFERENCE.items())
        out.append(f"\n## Robustness ({cfg.robustness_phantoms} seeds from {cfg.seed_start}, one factor at a time "
                   f"around {ref})\n\n" + _table(["setting", *GROUP_HEADER[1:]], _group_rows(ev.robustness)))
    if failed:
        out.append("\n## Failed cases (counted as all lesions missed, no PO)\n\n")
        out.append(_table(["case", "error"], [[c.case_id, c.error.replace("|", "/")] for c in failed]))  # type: ignore[union-attr]
    if ev.outcomes:
        out.append(f"\n## Cases (main set, threshold {cfg.threshold:g})\n\n")
        rows = []
        for c, o in zip(main, ev.outcomes):
            g = c.groups
            inc = o.match.included
            found = sum(1 for x in inc if x.score is not None and x.score >= cfg.threshold)
            fps = sum(1 for d in o.match.detections if d.status == "fp" and d.detection.confidence >= cfg.threshold)
            rows.append([c.case_id, g.get("size", ""), g.get("sex", ""), g.get("kernel", ""), g.get("thickness", ""),
                         g.get("dose", ""), f"{found}/{len(inc)} (of {len(o.match.lesions)})", fps,
                         _f(c.po_truth, 2), _f(c.po_pred, 2), f"{c.timing_s.get('total', 0):.0f}"])
        out.append(_table(["case", "size", "sex", "kernel", "mm", "dose", "found/included (all)", "FP",
                           "PO truth", "PO pred", "s"], rows))
    return "".join(out)

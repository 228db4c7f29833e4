"""Metrics on hand-made pairs, the case plan, and one end-to-end ``sensecare evaluate`` run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from sensecare.errors import EvaluationError
from sensecare.evaluation.matching import Detection, Truth, match_scan
from sensecare.evaluation.metrics import (
    CaseOutcome,
    confusion_matrix,
    detection_prf,
    group_table,
    issue_bars,
    pair_errors,
    summarize,
    type_prf,
)
from sensecare.evaluation.run import (
    EvaluationConfig,
    PhantomRecipe,
    plan_cases,
    robustness_settings,
)


def _scans():  # type: ignore[no-untyped-def]
    """Solid L1 found at 0.9 as solid; solid L2 only at 0.3; ground-glass L3 found at 0.7 but typed part-solid;
    solid L4 never; false positives: mass 0.6, solid 0.8, part-solid 0.4."""
    a = match_scan("A", [Truth(1, "solid", 10, (0, 0, 0), volume_ml=0.5, long_axis_mm=10),
                         Truth(2, "solid", 8, (50, 0, 0), volume_ml=0.25, long_axis_mm=8)],
                   [Detection(1, "solid", 0.9, (1, 0, 0), volume_ml=0.55, long_axis_mm=11),
                    Detection(2, "mass", 0.6, (100, 0, 0)),
                    Detection(3, "solid", 0.3, (50, 2, 0), volume_ml=0.2, long_axis_mm=7)])
    b = match_scan("B", [Truth(3, "ground_glass", 12, (0, 0, 0), volume_ml=1.0, long_axis_mm=12)],
                   [Detection(1, "solid", 0.8, (30, 30, 30)),
                    Detection(2, "part_solid", 0.7, (0, 1, 1), volume_ml=1.3, long_axis_mm=15)])
    c = match_scan("C", [Truth(4, "solid", 6, (0, 0, 0), volume_ml=0.1)], [Detection(1, "part_solid", 0.4, (-80, 0, 0))])
    return [a, b, c]


def test_detection_and_per_type_scores_by_hand() -> None:
    scans = _scans()
    det = detection_prf(scans, 0.5)
    assert (det.tp, det.fp, det.fn) == (2, 2, 2)
    assert det.precision == det.recall == det.f1 == 0.5
    per = type_prf(scans, 0.5)
    assert (per["solid"].tp, per["solid"].fp, per["solid"].fn) == (1, 1, 2)
    assert per["solid"].precision == 0.5 and per["solid"].recall == pytest.approx(1 / 3)
    assert per["solid"].f1 == pytest.approx(0.4)
    assert (per["ground_glass"].tp, per["ground_glass"].fp, per["ground_glass"].fn) == (0, 0, 1)
    assert per["ground_glass"].precision is None and per["ground_glass"].f1 == 0.0
    assert (per["part_solid"].tp, per["part_solid"].fp, per["part_solid"].fn) == (0, 1, 0)
    assert (per["mass"].fp, per["consolidation"].f1) == (1, None)
    low = detection_prf(scans, 0.3)
    assert (low.tp, low.fp, low.fn) == (3, 3, 1)


def test_confusion_matrix_by_hand() -> None:
    c = confusion_matrix(_scans(), 0.5)
    assert c.truth_labels[-1] == "none" and c.predicted_labels[-1] == "missed"
    assert c.counts["solid"]["solid"] == 1 and c.counts["solid"]["missed"] == 2
    assert c.counts["ground_glass"]["part_solid"] == 1
    assert c.counts["none"]["mass"] == 1 and c.counts["none"]["solid"] == 1 and c.counts["none"]["part_solid"] == 0
    assert sum(sum(row.values()) for row in c.counts.values()) == 4 + 2


def test_volume_diameter_and_opacity_errors_by_hand() -> None:
    scans = _scans()
    pairs = pair_errors(scans)
    assert [round(p.volume_error, 6) for p in pairs] == [0.1, -0.2, 0.3]  # type: ignore[arg-type]
    assert [p.long_axis_error_mm for p in pairs] == [1, -1, 3]
    assert [p.size_bin for p in pairs] == ["10-20 mm", "5-10 mm", "10-20 mm"]
    cases = [CaseOutcome(scans[0], 1.0, 2.5, 0.0, 0.0, {"sex": "F"}), CaseOutcome(scans[1], 10.0, 9.0, 2.0, 3.0, {"sex": "M"}),
             CaseOutcome(scans[2], 0.0, 0.5, None, None, {"sex": "F"})]
    s = summarize(cases, threshold=0.5)
    assert s.volume_error.n == 3 and s.volume_error.median_abs == pytest.approx(0.2)
    assert (s.volume_error.q1_abs, s.volume_error.q3_abs) == pytest.approx((0.15, 0.25))
    assert s.volume_error.median_signed == pytest.approx(0.1)
    assert s.volume_error_by_type["solid"].n == 2 and s.volume_error_by_type["ground_glass"].median_abs == pytest.approx(0.3)
    assert s.long_axis_error_mm.median_abs == pytest.approx(1.0) and s.long_axis_error_mm.median_signed == pytest.approx(1.0)
    assert s.opacity.n == 3 and s.opacity.po_mean_abs == pytest.approx(1.0)
    assert s.opacity.po_max_abs == pytest.approx(1.5) and s.opacity.po_bias == pytest.approx(1 / 3)
    assert s.opacity.pho.n == 2 and s.opacity.pho_mean_abs == pytest.approx(0.5)
    assert s.froc.cpm is not None
    bars = {b.name: b for b in issue_bars(s, 5.0)}
    assert bars["median |volume error|"].met is False and bars["mean |PO error|"].met is True
    rows = {r.group: r for r in group_table(cases, "sex", 0.5)}
    assert rows["F"].n_scans == 2 and rows["F"].n_lesions == 3 and rows["M"].n_lesions == 1
    assert rows["M"].recall == 1.0 and rows["F"].po_mean_abs_error == pytest.approx(1.0)


def test_measurements_count_only_reported_lesions_while_the_froc_counts_all() -> None:
    """L2's best hit scores 0.3: a report floor of 0.5 leaves its volume error out, not its FROC point."""
    scans = _scans()
    assert [p.truth_id for p in pair_errors(scans, 0.5)] == [1, 3]
    cases = [CaseOutcome(scan, None, None, None, None, {"sex": "F"}) for scan in scans]
    everything, reported = summarize(cases, 0.5), summarize(cases, 0.5, measured_from=0.5)
    assert (everything.volume_error.n, reported.volume_error.n) == (3, 2)
    assert reported.volume_error.median_abs == pytest.approx(0.2)
    assert reported.froc == everything.froc
    assert group_table(cases, "sex", 0.5, measured_from=0.5)[0].volume_error_median_abs == pytest.approx(0.2)


def test_evaluation_reports_from_the_products_floor() -> None:
    """Measurement errors are those of what a report shows; the FROC floor lies below it."""
    from sensecare.analysis.pipeline import MIN_CONFIDENCE

    config = EvaluationConfig(out=Path("unused"))
    assert config.reported_from == MIN_CONFIDENCE
    assert 0.0 < config.froc_floor < config.reported_from


def test_plan_cases_and_robustness_grid(tmp_path: Path) -> None:
    recipe = PhantomRecipe(matrix=128)
    cases = plan_cases(EvaluationConfig(out=tmp_path, phantoms=3, seed_start=5000, recipe=recipe,
                                        robustness=True, robustness_phantoms=2))
    settings = robustness_settings()
    assert [s.name for s in settings] == ["reference", "kernel=soft", "kernel=sharp", "thickness=1", "thickness=5",
                                          "dose=0.5", "dose=2"]
    assert len(cases) == 3 + 7 * 2
    grid = [c for c in cases if c.setting != "main"]
    thick = next(c for c in grid if c.case_id == "phantom-5000-thickness=5")
    ref = next(c for c in grid if c.case_id == "phantom-5000-reference")
    assert thick.spec.slice_thickness_mm == 5.0 and ref.spec.slice_thickness_mm == 2.5 and ref.spec.kernel == "standard"
    assert (thick.spec.size, thick.spec.sex, thick.spec.diffuse) == (ref.spec.size, ref.spec.sex, ref.spec.diffuse)
    assert recipe.spec_for(5001) == recipe.spec_for(5001)
    for bad in ({"phantoms": 0}, {"phantoms": 2, "threshold": 1.5}, {"phantoms": -1},
                {"cases_dir": tmp_path / "nowhere"}, {"phantoms": 1, "robustness": True, "robustness_phantoms": 0},
                {"phantoms": 1, "froc_floor": 0.3}):
        with pytest.raises(EvaluationError):
            plan_cases(EvaluationConfig(out=tmp_path, **bad))  # type: ignore[arg-type]


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sensecare.cli", "evaluate", *args],
                          capture_output=True, text=True, timeout=240, check=False)


def test_evaluate_end_to_end(tmp_path: Path) -> None:
    """One phantom folder (``--cases``) plus one generated phantom, 128 matrix, 5 mm slices, two processes
    (results keep the cases' order)."""
    from sensecare.phantom import (
        LesionSpec,
        PhantomSpec,
        generate_phantom,
        write_phantom,
    )

    spec = PhantomSpec(seed=5100, matrix=128, slice_thickness_mm=5.0,
                       lesions=(LesionSpec("solid", 14, "random"), LesionSpec("mass", 40, "random")))
    write_phantom(generate_phantom(spec), tmp_path / "cases" / "p5100")
    out = tmp_path / "eval"
    result = _cli("--cases", str(tmp_path / "cases"), "--phantoms", "1", "--seed-start", "5200", "--matrix", "128",
                  "--thickness", "5", "--lesions", "solid:12,mass:35", "--bootstrap", "50", "--jobs", "2",
                  "--out", str(out))
    assert result.returncode == 0, result.stderr
    for name in ("evaluation.json", "froc.png", "volume_error.png", "evaluation.md"):
        assert (out / name).is_file(), name
    for name in ("froc.png", "volume_error.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = json.loads((out / "evaluation.json").read_text())
    assert data["sensecare_version"] and data["models"] and data["machine"]["cpu_count"]
    assert data["n_cases"] == 2 and [c["id"] for c in data["cases"]] == ["p5100", "phantom-5200"]
    assert data["settings"]["min_diameter_mm"] == 5.0 and data["settings"]["threshold"] == 0.5
    summary = data["summary"]
    froc = summary["froc"]
    assert froc["n_scans"] == 2 and froc["n_lesions"] == 4
    assert set(froc["sensitivities"]) == {"0.125", "0.25", "0.5", "1", "2", "4", "8"}
    assert 0.0 <= froc["cpm"] <= 1.0 and froc["cpm_ci95"] is not None
    assert set(summary["per_type"]) >= {"solid", "part_solid", "ground_glass", "consolidation", "mass"}
    assert {"tp", "fp", "fn", "precision", "recall", "f1"} <= set(summary["detection"])
    assert "overall" in summary["volume_error"] and "by_size" in summary["volume_error"]
    assert summary["opacity_error_pp"]["n"] == 2
    assert data["bars"][0]["name"].startswith("CPM")
    for case in data["cases"]:
        assert case["error"] is None and case["po_pred"] is not None
        assert len(case["lesions"]) == 2 and all(d["status"] in {"tp", "fp", "duplicate", "ignored"} for d in case["detections"])
    text = (out / "evaluation.md").read_text()
    assert "CPM" in text and "| solid |" in text and "phantom-5200" in text


@pytest.mark.parametrize("args, message", [
    (["--phantoms", "-1"], "negative"),
    (["--phantoms", "1", "--kernel", "blurry"], "kernel"),
    (["--cases", "/nowhere/at/all"], "does not exist"),
    (["--phantoms", "1", "--threshold", "2"], "threshold"),
    (["--phantoms", "1", "--jobs", "0"], "jobs"),
])
def test_bad_arguments_give_one_line_and_status_2(tmp_path: Path, args: list[str], message: str) -> None:
    result = _cli(*args, "--out", str(tmp_path / "o"))
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert message in lines[0]

"""``analyze`` on real chest CT (TCIA): the annotated tumour is the top finding.

The scans live in ../shared/data/chest-ct (never in the repo). Thresholds were not
tuned on them: they are the check that methods built on phantoms hold on real CT.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom
import pytest

from sensecare.analysis.pipeline import analyze_series
from sensecare.analysis.report import AnalysisReport
from tests.helpers.server import shared_data_dir

DATA = shared_data_dir() / "chest-ct"
LUNG_DX = DATA / "Lung_Dx-A0002"
LIDC = DATA / "LIDC-IDRI-0001"
MARGIN_MM = 10.0


def _require(folder: Path) -> None:
    if not folder.exists():
        pytest.skip(f"real CT {folder} is absent (../shared/data/chest-ct is not beside this checkout)")


def _inside(point, low, high, margin: float = MARGIN_MM) -> bool:  # type: ignore[no-untyped-def]
    return all(lo - margin <= p <= hi + margin for p, lo, hi in zip(point, low, high))


def _check_outputs(result, out: Path) -> AnalysisReport:  # type: ignore[no-untyped-def]
    import highdicom as hd

    report = AnalysisReport.model_validate(json.loads((out / "report.json").read_text()))
    assert report.lesions, "no lesion found"
    assert [l.confidence for l in report.lesions] == sorted((l.confidence for l in report.lesions), reverse=True)
    assert report.lungs.right_ml > 300 and report.lungs.left_ml > 300
    seg = hd.seg.segread(out / "seg.dcm")
    labels = [seg.get_segment_description(n).segment_label for n in seg.segment_numbers]
    assert labels[:2] == ["Right lung", "Left lung"]
    assert len(labels) == 2 + len(report.lesions)
    sr = pydicom.dcmread(out / "sr.dcm")
    assert sr.Modality == "SR"
    assert set(report.timing_s) >= {"lungs", "lesions", "opacity", "seg", "sr", "total"}
    return report


@pytest.mark.parametrize("kernel", ["B40f", "B70f"])
def test_lung_dx_adenocarcinoma_is_the_top_finding(tmp_path: Path, kernel: str) -> None:
    _require(LUNG_DX)
    truth = json.loads((LUNG_DX / "ground_truth.json").read_text())
    series = next(s for s in truth["series"] if s["folder"] == f"series-{kernel}")
    low = np.min([s["bbox_lps_mm_min"] for s in series["slices"]], axis=0)
    high = np.max([s["bbox_lps_mm_max"] for s in series["slices"]], axis=0)
    result = analyze_series(sorted((LUNG_DX / f"series-{kernel}").glob("*.dcm")), tmp_path, device="cpu")
    report = _check_outputs(result, tmp_path)
    top = report.lesions[0]
    assert _inside(top.center_lps_mm, low, high), (top, low, high)
    assert top.type in {"mass", "solid", "part_solid", "consolidation"}
    assert 10.0 <= top.volume_ml <= 350.0, top.volume_ml
    assert top.long_axis_mm >= 30.0
    assert "mass" in report.flags and report.urgency.value == "urgent"


def test_lidc_consensus_nodule_is_the_top_finding(tmp_path: Path) -> None:
    _require(LIDC)
    nodule = json.loads((LIDC / "ground_truth.json").read_text())["nodules"][0]
    result = analyze_series(sorted((LIDC / "series").glob("*.dcm")), tmp_path, device="cpu")
    report = _check_outputs(result, tmp_path)
    top = report.lesions[0]
    assert _inside(top.center_lps_mm, nodule["bbox_lps_mm_min"], nodule["bbox_lps_mm_max"]), top
    assert top.volume_ml == pytest.approx(nodule["volume_ml_mean"], rel=0.5)
    assert top.long_axis_mm == pytest.approx(nodule["long_axis_mm_max"], rel=0.35)

"""Matching and FROC on hand-made detections whose answers were worked out on paper."""

from __future__ import annotations

import pytest

from sensecare.errors import EvaluationError
from sensecare.evaluation.froc import (
    LUNA16_FP_RATES,
    bootstrap_froc,
    froc,
    froc_from_scores,
)
from sensecare.evaluation.matching import Detection, Truth, match_scan


def T(id: int, diameter: float, at: tuple[float, float, float], type: str = "solid", **kw) -> Truth:  # type: ignore[no-untyped-def]
    return Truth(id=id, type=type, diameter_mm=diameter, center_lps_mm=at, **kw)


def D(id: int, confidence: float, at: tuple[float, float, float], type: str = "solid", **kw) -> Detection:  # type: ignore[no-untyped-def]
    return Detection(id=id, type=type, confidence=confidence, center_lps_mm=at, **kw)


def three_scans(min_diameter: float = 5.0):  # type: ignore[no-untyped-def]
    """Included lesions found at 0.9, 0.3, 0.7 and never; false positives at 0.8, 0.6, 0.4.

    Scan C's 0.95 detection hits only a 4 mm lesion (ignored under the 5 mm cut) and scan B's
    0.5 detection is a second hit on a lesion already found at 0.7 (a duplicate).
    """
    a = match_scan("A", [T(1, 10, (0, 0, 0)), T(2, 8, (50, 0, 0))],
                   [D(1, 0.9, (1, 0, 0)), D(2, 0.6, (100, 0, 0)), D(3, 0.3, (50, 2, 0))], min_diameter_mm=min_diameter)
    b = match_scan("B", [T(3, 12, (0, 0, 0), "ground_glass")],
                   [D(1, 0.8, (30, 30, 30)), D(2, 0.7, (0, 1, 1)), D(3, 0.5, (0, -2, 0))], min_diameter_mm=min_diameter)
    c = match_scan("C", [T(4, 6, (0, 0, 0)), T(5, 4, (40, 0, 0))],
                   [D(1, 0.95, (40, 1, 0)), D(2, 0.4, (-80, 0, 0))], min_diameter_mm=min_diameter)
    return [a, b, c]


def test_statuses_of_the_hand_made_scans() -> None:
    a, b, c = three_scans()
    assert [d.status for d in a.detections] == ["tp", "fp", "tp"]
    assert [d.status for d in b.detections] == ["fp", "tp", "duplicate"]
    assert [d.status for d in c.detections] == ["ignored", "fp"]
    assert [o.score for o in b.lesions] == [0.7]
    assert b.lesions[0].hits == (2, 3)
    assert [o.included for o in c.lesions] == [True, False]
    assert list(c.lesion_scores()) == [float("-inf")]


def test_froc_sensitivities_and_cpm_by_hand() -> None:
    # Operating points (FP/scan, sensitivity) by descending threshold:
    # 0.9 (0, 1/4), 0.8 (1/3, 1/4), 0.7 (1/3, 2/4), 0.6 (2/3, 2/4), 0.4 (1, 2/4), 0.3 (1, 3/4).
    result = froc(three_scans())
    assert result.n_scans == 3 and result.n_lesions == 4 and result.n_found == 3 and result.n_false_positives == 3
    assert result.rates == LUNA16_FP_RATES
    assert result.sensitivities == pytest.approx((0.25, 0.25, 0.5, 0.75, 0.75, 0.75, 0.75))
    assert result.cpm == pytest.approx(4 / 7)
    assert result.curve.thresholds[0] == float("inf") and result.curve.sensitivity[0] == 0.0
    assert result.curve.thresholds[1:] == pytest.approx((0.9, 0.8, 0.7, 0.6, 0.4, 0.3))
    assert result.curve.fp_per_scan[1:] == pytest.approx((0, 1 / 3, 1 / 3, 2 / 3, 1, 1))


def test_size_cut_neither_counts_small_lesions_nor_punishes_hitting_them() -> None:
    # Without the cut the 4 mm lesion is found at 0.95: five lesions, found at 0.95, 0.9, 0.7, 0.3.
    result = froc(three_scans(min_diameter=0.0))
    assert result.n_lesions == 5 and result.n_false_positives == 3
    # 0.95 (0, 1/5), 0.9 (0, 2/5), 0.8 (1/3, 2/5), 0.7 (1/3, 3/5), 0.6, 0.4 (.., 3/5), 0.3 (1, 4/5)
    assert result.sensitivities == pytest.approx((0.4, 0.4, 0.6, 0.8, 0.8, 0.8, 0.8))
    assert result.cpm == pytest.approx((0.4 + 0.4 + 0.6 + 4 * 0.8) / 7)


def test_froc_from_scores_step_function() -> None:
    # Two lesions found at 0.9 and 0.2, one never; one FP at 0.5 over 8 scans (1/8 FP per scan).
    r = froc_from_scores([0.9, 0.2, float("-inf")], [0.5], n_scans=8)
    assert r.sensitivities == pytest.approx((2 / 3, 2 / 3, 2 / 3, 2 / 3, 2 / 3, 2 / 3, 2 / 3))
    r = froc_from_scores([0.9, 0.2, float("-inf")], [0.5, 0.4], n_scans=8)
    assert r.sensitivities == pytest.approx((1 / 3, 2 / 3, 2 / 3, 2 / 3, 2 / 3, 2 / 3, 2 / 3))
    none = froc_from_scores([], [0.5], n_scans=2)
    assert none.cpm is None and none.sensitivities == (None,) * 7


def test_minimum_hit_radius_is_2_5_mm() -> None:
    lesion = T(1, 3.0, (0, 0, 0))
    assert lesion.hit_radius_mm == 2.5
    assert lesion.is_hit_by((2.2, 0, 0))
    assert not lesion.is_hit_by((2.7, 0, 0))
    assert T(2, 10.0, (0, 0, 0)).is_hit_by((0, 0, 4.9))
    assert not T(2, 10.0, (0, 0, 0)).is_hit_by((0, 3, 4.5))  # 5.4 mm away


def test_bounding_box_counts_for_non_spherical_lesions_only() -> None:
    box = {"bbox_lps_mm_min": (-40.0, -10.0, -10.0), "bbox_lps_mm_max": (40.0, 10.0, 10.0)}
    inside_box_outside_ball = (30.0, 0.0, 0.0)
    assert T(1, 30, (0, 0, 0), "mass", **box).is_hit_by(inside_box_outside_ball)
    assert T(1, 30, (0, 0, 0), "consolidation", **box).is_hit_by(inside_box_outside_ball)
    assert not T(1, 30, (0, 0, 0), "solid", long_axis_mm=32.0, **box).is_hit_by(inside_box_outside_ball)
    assert T(1, 30, (0, 0, 0), "solid", long_axis_mm=80.0, **box).is_hit_by(inside_box_outside_ball)  # elongated
    assert not T(1, 30, (0, 0, 0), "mass", **box).is_hit_by((30.0, 12.0, 0.0))
    scan = match_scan("M", [T(1, 30, (0, 0, 0), "mass", **box)], [D(1, 0.7, inside_box_outside_ball, "mass")])
    assert scan.detections[0].status == "tp" and scan.lesions[0].score == 0.7


def test_one_detection_in_two_zones_finds_both_as_in_luna16() -> None:
    scan = match_scan("X", [T(1, 10, (0, 0, 0)), T(2, 10, (8, 0, 0))], [D(1, 0.6, (4, 0, 0))])
    assert [o.score for o in scan.lesions] == [0.6, 0.6]
    assert scan.detections[0].status == "tp" and scan.detections[0].truth_ids == (1, 2)


def test_best_hit_is_the_most_confident() -> None:
    scan = match_scan("Y", [T(1, 20, (0, 0, 0))], [D(1, 0.3, (0, 0, 0)), D(2, 0.8, (5, 0, 0)), D(3, 0.8, (1, 0, 0))])
    assert scan.lesions[0].best.id == 3  # type: ignore[union-attr]  # tie on confidence: the nearer one
    assert [d.status for d in scan.detections] == ["duplicate", "duplicate", "tp"]


def test_bootstrap_interval_brackets_the_cpm_and_is_reproducible() -> None:
    scans = three_scans()
    r1 = bootstrap_froc(scans, n_resamples=300, seed=3)
    r2 = bootstrap_froc(scans, n_resamples=300, seed=3)
    assert r1.cpm == pytest.approx(4 / 7)
    assert r1.cpm_ci is not None and r1.cpm_ci == r2.cpm_ci
    assert r1.cpm_ci.low <= r1.cpm <= r1.cpm_ci.high  # type: ignore[operator]
    assert r1.sensitivity_ci is not None and len(r1.sensitivity_ci) == 7
    assert bootstrap_froc(scans[:1], n_resamples=100).cpm_ci is None


def test_truth_from_ground_truth_json_and_bad_input() -> None:
    item = {"id": 3, "type": "mass", "diameter_mm": 40.0, "center_lps_mm": [1, 2, 3],
            "bbox_lps_mm_min": [-20, -20, -20], "bbox_lps_mm_max": [20, 20, 20], "volume_ml": 33.5, "long_axis_mm": 44}
    t = Truth.from_json(item)
    assert t.center_lps_mm == (1.0, 2.0, 3.0) and not t.spherical and t.hit_radius_mm == 20.0
    no_diameter = Truth.from_json({"id": 1, "type": "solid", "center_lps_mm": [0, 0, 0], "volume_ml": 4 / 3 * 3.141592653589793 / 1000 * 125})
    assert no_diameter.diameter_mm == pytest.approx(10.0)
    with pytest.raises(EvaluationError):
        Truth.from_json({"id": 1, "type": "solid", "diameter_mm": 5})
    with pytest.raises(EvaluationError):
        match_scan("dup", [], [D(1, 0.5, (0, 0, 0)), D(1, 0.6, (1, 1, 1))])

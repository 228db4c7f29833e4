"""The training helpers the detection bundles share: labels of detections and sensitivity at k FP/scan."""

from __future__ import annotations

import numpy as np
import pytest

from sensecare.analysis.bundle_training import (
    FP_RATES,
    auc,
    cache_file,
    is_enriched,
    label_detections,
    logit,
    sensitivities,
    training_spec,
)
from sensecare.analysis.heatmap import HeatmapDetection
from sensecare.phantom.lesions import ENRICHED_COUNT, random_lesion_specs


def _detection(offset: tuple[int, int, int], size: int, peak: tuple[int, int, int]) -> HeatmapDetection:
    mask = np.ones((size, size, size), bool)
    return HeatmapDetection(mask, offset, peak, 0.9, 2.0, mask, (slice(0, 1),) * 3, (0, 0, 0), size**3)  # type: ignore[arg-type]


def test_a_detection_is_a_lesion_by_its_peak_or_its_overlap_and_ignored_when_it_only_grazes_one() -> None:
    lesions = np.zeros((20, 20, 20), np.int16)
    lesions[2:6, 2:6, 2:6] = 3
    detections = [
        _detection((1, 1, 1), 4, (3, 3, 3)),  # peak in lesion 3
        _detection((4, 4, 4), 4, (7, 7, 7)),  # peak outside, 8 of 64 voxels in it: grazes
        _detection((12, 12, 12), 4, (13, 13, 13)),  # nowhere near
        _detection((4, 4, 4), 2, (5, 5, 5)),  # wholly inside
    ]
    labels, lesion = label_detections(detections, lesions, positive_overlap=0.3)
    assert labels.tolist() == [1, -1, 0, 1]
    assert lesion.tolist() == [3, 0, 0, 3]


def test_sensitivity_at_k_false_positives_per_scan_counts_each_lesion_once() -> None:
    # two scans; lesion (1, 1) found at 0.9 and 0.8, lesion (2, 1) at 0.3; negatives 0.7 and 0.1
    data = {
        "y": np.array([1, 1, 0, 1, 0]), "case": np.array([1, 1, 1, 2, 2]), "lesion": np.array([1, 1, 0, 1, 0]),
        "truth": np.array([[1, 1, 10.0], [2, 1, 12.0], [2, 2, 3.0]]),  # the 3 mm lesion is not counted
    }
    scores = np.array([0.9, 0.8, 0.7, 0.3, 0.1])
    by_rate = dict(zip(FP_RATES, sensitivities(scores, data)))
    assert by_rate[0.125] == 0.5  # no false positive allowed: only what beats 0.7
    assert by_rate[1.0] == 1.0  # two allowed in two scans: both negatives may pass, every detection counts
    assert auc(scores, data["y"]) == pytest.approx(5 / 6)


def test_enriched_training_phantoms_keep_the_population_acquisition_and_hold_more_sub_solid_lesions() -> None:
    plain, enriched = training_spec(4000), training_spec(4000, enriched=True)
    assert plain.lesions == "random"
    assert enriched == training_spec(4000, enriched=True)  # seeded
    drop = ("lesions",)
    assert {k: v for k, v in vars(plain).items() if k not in drop} == {k: v for k, v in vars(enriched).items() if k not in drop}
    counts, sub_solid = [], 0
    for seed in range(4000, 4040):
        lesions = training_spec(seed, enriched=True).lesions
        counts.append(len(lesions))
        sub_solid += sum(spec.type in ("part_solid", "ground_glass") for spec in lesions)
    assert ENRICHED_COUNT[0] <= min(counts) and max(counts) <= ENRICHED_COUNT[1]
    assert sub_solid / sum(counts) > 0.4  # a random phantom's share is 0.35 of 2.5 lesions
    # the population's draws are unchanged by the new keywords
    a, b = np.random.default_rng(7), np.random.default_rng(7)
    assert random_lesion_specs(a) == random_lesion_specs(b, count=(1, 4))


def test_enriched_seeds_are_cached_apart_from_the_population(tmp_path) -> None:
    recipe = {"train_seeds": {"first": 3000, "count": 4}, "enriched_train_seeds": {"first": 4200, "count": 2}}
    assert not is_enriched(3001, recipe) and is_enriched(4201, recipe) and not is_enriched(4202, recipe)
    assert cache_file(3001, tmp_path, recipe) == tmp_path / "seed-3001.npz"
    assert cache_file(4201, tmp_path, recipe) == tmp_path / "enriched-4201.npz"
    assert not is_enriched(4201, {"train_seeds": {"first": 4200, "count": 2}})  # a recipe without any


def test_logit_is_the_log_odds_so_prior_shifts_are_differences() -> None:
    assert logit(0.5) == pytest.approx(0.0)
    assert logit(0.25) - logit(0.01) == pytest.approx(np.log((0.25 / 0.75) / (0.01 / 0.99)))

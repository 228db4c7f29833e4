"""Splitting touching detections, describing them, and the shipped detection ranker."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from sensecare.analysis.device import resolve_device
from sensecare.analysis.grid import CoarseGrid
from sensecare.analysis.heatmap import (
    FEATURE_NAMES,
    FeatureMaps,
    detections_from,
    split_touching,
)
from sensecare.analysis.ranker import (
    DEFAULT_BUNDLE,
    DESCRIPTOR_NAMES,
    LesionRanker,
    describe,
)
from sensecare.errors import ConfigurationError

GRID = (2.0, 2.0, 2.0)


def _ball(shape: tuple[int, int, int], centre: tuple[float, float, float], radius: float) -> np.ndarray:
    z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    return (z - centre[0]) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2 <= radius**2


def _maps(shape: tuple[int, int, int], features: np.ndarray | None = None) -> FeatureMaps:
    inside = np.ones(shape, bool)
    rows = np.zeros((inside.sum(), len(FEATURE_NAMES)), np.float32) if features is None else features
    return FeatureMaps(rows, inside, CoarseGrid((1, 1, 1), shape), tuple(slice(0, n) for n in shape), -850.0)  # type: ignore[arg-type]


def test_two_touching_balls_are_split_and_a_ball_on_a_vessel_is_not() -> None:
    shape = (30, 30, 50)
    touching = _ball(shape, (15, 15, 14), 7) | _ball(shape, (15, 15, 26), 6)
    labels, n = split_touching(touching, GRID)
    assert n == 2
    assert labels[15, 15, 10] != labels[15, 15, 30] and labels[15, 15, 10] > 0 and labels[15, 15, 30] > 0
    assert np.array_equal(labels > 0, touching)  # nothing lost, nothing added

    on_vessel = _ball(shape, (15, 15, 14), 7)
    on_vessel[14:17, 14:17, 14:48] = True  # a 3-voxel tube running off the ball
    labels, n = split_touching(on_vessel, GRID)
    assert n == 1

    apart = _ball(shape, (8, 8, 8), 3) | _ball(shape, (22, 22, 40), 3)
    labels, n = split_touching(apart, GRID)
    assert n == 2 and len(np.unique(labels[apart])) == 2


def test_two_touching_lesions_are_two_detections() -> None:
    shape = (30, 30, 50)
    probability = np.where(_ball(shape, (15, 15, 14), 7) | _ball(shape, (15, 15, 26), 6), 0.95, 0.0).astype(np.float32)
    found = detections_from(probability, _maps(shape), GRID, threshold=0.25, min_volume_mm3=8.0)
    assert len(found) == 2
    centres = sorted(float(np.argwhere(d.coarse_mask)[:, 2].mean() + d.coarse_box[2].start) for d in found)
    assert centres[0] < 16 < centres[1]


def test_descriptors_tell_a_round_detection_from_a_tubular_one() -> None:
    shape = (30, 30, 50)
    probability = np.zeros(shape, np.float32)
    probability[_ball(shape, (15, 15, 10), 5)] = 0.9
    probability[20:22, 5:7, 20:46] = 0.7  # a tube along x
    features = np.zeros((int(np.prod(shape)), len(FEATURE_NAMES)), np.float32)
    features[:, FEATURE_NAMES.index("density_2mm")] = np.arange(len(features)) / len(features)
    maps = _maps(shape, features)
    found = detections_from(probability, maps, GRID, threshold=0.25, min_volume_mm3=8.0)
    assert len(found) == 2
    rows = describe(found, probability, maps, GRID)
    assert rows.shape == (2, len(DESCRIPTOR_NAMES)) and rows.dtype == np.float32 and np.isfinite(rows).all()
    named = [dict(zip(DESCRIPTOR_NAMES, row)) for row in rows]
    ball, tube = (named[0], named[1]) if named[0]["peak_probability"] > named[1]["peak_probability"] else (named[1], named[0])
    assert ball["peak_probability"] == pytest.approx(0.9)
    assert ball["elongation"] < 1.3
    assert tube["elongation"] > 4.0
    assert tube["extent_ratio"] > 2 * ball["extent_ratio"]
    assert ball["mask_volume_log_mm3"] == pytest.approx(np.log10(np.count_nonzero(probability == 0.9) * 8.0), rel=1e-5)
    detection = found[0] if found[0].score > found[1].score else found[1]
    peak_row = np.ravel_multi_index(detection.coarse_peak, shape)
    assert ball["peak_density_2mm"] == pytest.approx(features[peak_row, FEATURE_NAMES.index("density_2mm")])


def test_no_detections_no_rows() -> None:
    shape = (5, 5, 5)
    assert describe([], np.zeros(shape, np.float32), _maps(shape), GRID).shape == (0, len(DESCRIPTOR_NAMES))
    assert LesionRanker(resolve_device("cpu")).score(np.zeros((0, len(DESCRIPTOR_NAMES)), np.float32)).shape == (0,)


def test_the_shipped_ranker_prefers_a_dense_round_detection_to_a_faint_tube() -> None:
    ranker = LesionRanker(resolve_device("cpu"))
    assert 0.0 < ranker.min_score < 0.5 and ranker.max_findings >= 16
    shape = (30, 30, 60)
    ball = _ball(shape, (15, 15, 10), 5)
    tube = np.zeros(shape, bool)
    tube[20:22, 5:7, 20:56] = True
    probability = np.where(ball, 0.97, np.where(tube, 0.55, 0.0)).astype(np.float32)
    features = np.zeros((int(np.prod(shape)), len(FEATURE_NAMES)), np.float32)
    column = {name: i for i, name in enumerate(FEATURE_NAMES)}
    flat_ball, flat_tube = ball.ravel(), tube.ravel()
    for scale in ("1mm", "2mm", "4mm"):
        features[flat_ball, column[f"density_{scale}"]] = 8.5  # ~850 HU above the parenchyma
        features[flat_tube, column[f"density_{scale}"]] = 3.0
    features[flat_ball, column["solid_share_2mm"]] = 1.0
    features[flat_ball, column["solid_depth_mm"]] = 0.6
    features[flat_tube, column["solid_share_2mm"]] = 0.4
    features[:, column["border_distance_mm"]] = 2.0
    features[:, column["slice_mm"]] = 0.4
    maps = _maps(shape, features)
    found = detections_from(probability, maps, GRID, threshold=0.25, min_volume_mm3=8.0)
    scores = ranker.score(describe(found, probability, maps, GRID))
    by_peak = {round(d.score, 2): float(s) for d, s in zip(found, scores)}
    assert by_peak[0.97] > by_peak[0.55]


def test_a_ranker_bundle_for_other_descriptors_is_refused(tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    shutil.copytree(DEFAULT_BUNDLE, bundle)
    meta_path = bundle / "configs" / "metadata.json"
    meta = json.loads(meta_path.read_text())
    meta["sensecare"]["features"] = meta["sensecare"]["features"][:-1] + ["mood_of_the_reader"]
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ConfigurationError, match="mood_of_the_reader"):
        LesionRanker(resolve_device("cpu"), bundle)


def test_with_the_ranker_phantom_lesions_are_the_top_findings() -> None:
    """End to end on the project's phantom: voxel classifier, ranker, segmentation."""
    from sensecare.analysis.detect import confidence_of, detect_lesions
    from sensecare.analysis.heatmap import LesionHeatmapModel
    from sensecare.analysis.lungs import segment_lungs
    from sensecare.phantom.spec import LesionSpec, PhantomSpec
    from tests.helpers.phantoms import hit_ranks, phantom_volume

    spec = PhantomSpec(seed=11, matrix=256, slice_thickness_mm=2.5, kernel="standard",
                       lesions=(LesionSpec("solid", 12.0, "random"), LesionSpec("mass", 40.0, "random")))
    ph, vol = phantom_volume(spec)
    device = resolve_device("cpu")
    ranker = LesionRanker(device)
    lungs = segment_lungs(vol)
    found = detect_lesions(vol, lungs, LesionHeatmapModel(device), ranker)
    assert 0 < len(found) <= ranker.max_findings
    # Not segmenting what would not be reported changes nothing that is.
    cut = 0.2
    reported = [f for f in found if f.confidence >= cut]
    quick = detect_lesions(vol, lungs, LesionHeatmapModel(device), ranker, min_confidence=cut)
    assert 0 < len(quick) < len(found)
    assert [(f.confidence, f.offset, f.mask.tobytes()) for f in quick] == [
        (f.confidence, f.offset, f.mask.tobytes()) for f in reported]
    assert [f.confidence for f in found] == sorted((f.confidence for f in found), reverse=True)
    for f in found:
        assert f.features["second_score"] == f.features["ranker_score"]  # no verifier: the ranker alone
        assert f.confidence == pytest.approx(confidence_of(f.features["heatmap_score"], f.features["second_score"]), abs=1e-3)
    ranks_of = hit_ranks(ph, vol, found)
    for truth in ph.truth:
        ranks = ranks_of[truth.id]
        assert ranks and ranks[0] < 3, f"{truth.type} {truth.diameter_mm} mm is not among the top findings"

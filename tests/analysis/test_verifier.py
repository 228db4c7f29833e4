"""The patch verifier: what its patches show, how it weighs in, and its bundle."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from sensecare.analysis.device import resolve_device
from sensecare.analysis.grid import CoarseGrid
from sensecare.analysis.heatmap import FeatureMaps
from sensecare.analysis.verifier import (
    CHANNELS,
    COARSE_MM,
    DEFAULT_BUNDLE,
    FINE_MM,
    INPUT_SCALE_HU,
    PATCH,
    LesionVerifier,
    PatchSampler,
)
from sensecare.errors import ConfigurationError


def _scan(spacing_xyz: tuple[float, float, float], centre_mm: tuple[float, float, float],
          radius_mm: float = 6.0) -> tuple[np.ndarray, np.ndarray]:
    """Parenchyma (-850 HU) in a 120 mm cube with a solid (+30 HU) ball; the region is all but a 10 mm rim."""
    sx, sy, sz = spacing_xyz
    shape = tuple(round(120.0 / s) for s in (sz, sy, sx))
    zz, yy, xx = np.meshgrid(*[(np.arange(n) + 0.5) * s for n, s in zip(shape, (sz, sy, sx))], indexing="ij")
    cz, cy, cx = centre_mm
    ball = (zz - cz) ** 2 + (yy - cy) ** 2 + (xx - cx) ** 2 <= radius_mm**2
    hu = np.where(ball, 30.0, -850.0).astype(np.float32)
    region = np.zeros(shape, bool)
    rim = [round(10.0 / s) for s in (sz, sy, sx)]
    region[rim[0] : -rim[0], rim[1] : -rim[1], rim[2] : -rim[2]] = True
    return hu, region


def _sampler(hu: np.ndarray, region: np.ndarray, spacing_xyz: tuple[float, float, float]) -> PatchSampler:
    from sensecare.masks import bounding_box

    box = bounding_box(region)
    grid = CoarseGrid.for_spacing(hu[box].shape, spacing_xyz, 2.0)
    probability = (grid.mean(hu[box]) > -400).astype(np.float32) * 0.9
    maps = FeatureMaps(features=np.zeros((0, 1), np.float32), inside=grid.fraction(region[box]) >= 0.5,
                       grid=grid, box=box, background_hu=-850.0)
    return PatchSampler(hu, region, spacing_xyz, maps, probability)


def _index_of(mm: tuple[float, float, float], spacing_xyz: tuple[float, float, float]) -> tuple[int, int, int]:
    return tuple(int(m / s) for m, s in zip(mm, spacing_xyz[::-1]))  # type: ignore[return-value]


@pytest.mark.parametrize("spacing_xyz", [(0.7, 0.7, 1.0), (1.4, 1.4, 5.0)])
def test_a_ball_at_the_centre_fills_the_patch_centre_at_both_scales_whatever_the_voxels(spacing_xyz) -> None:  # type: ignore[no-untyped-def]
    centre = (60.0, 60.0, 60.0)
    hu, region = _scan(spacing_xyz, centre)
    patch = _sampler(hu, region, spacing_xyz).patches([_index_of(centre, spacing_xyz)])
    assert patch.shape == (1, len(CHANNELS), PATCH, PATCH, PATCH)
    fine, coarse, inside, probability = patch[0]
    mid = PATCH // 2
    solid = (30.0 + 850.0) / INPUT_SCALE_HU
    assert fine[mid - 1 : mid + 1, mid - 1 : mid + 1, mid - 1 : mid + 1].mean() == pytest.approx(solid, abs=0.15)
    assert coarse[mid - 1 : mid + 1, mid - 1 : mid + 1, mid - 1 : mid + 1].mean() > 0.5 * solid
    assert abs(fine[0, 0, 0]) < 0.05 and probability[mid, mid, mid] > 0.5 and probability[0, 0, 0] == 0.0
    assert inside[mid, mid, mid] == pytest.approx(1.0)
    # the ball is round in the patch even on 5 mm slices: the same width along z as along x
    width = [int(np.count_nonzero(line > 0.5 * solid)) for line in (fine[:, mid, mid], fine[mid, mid, :])]
    assert abs(width[0] - width[1]) <= 2
    assert width[1] * FINE_MM == pytest.approx(12.0, abs=3.5)
    # the coarse view is twice the field of view: the ball is about half as wide there
    coarse_width = int(np.count_nonzero(coarse[mid, mid, :] > 0.5 * coarse.max()))
    assert coarse_width * COARSE_MM == pytest.approx(12.0, abs=4.5)


def test_the_region_channel_shows_where_the_lung_ends() -> None:
    spacing = (1.0, 1.0, 1.0)
    centre = (60.0, 60.0, 16.0)  # 6 mm from the region's edge along x
    hu, region = _scan(spacing, centre, radius_mm=4.0)
    patch = _sampler(hu, region, spacing).patches([_index_of(centre, spacing)])[0]
    inside = patch[CHANNELS.index("region_fine")]
    mid = PATCH // 2
    assert inside[mid, mid, -1] == pytest.approx(1.0) and inside[mid, mid, 0] == pytest.approx(0.0)


def test_weights_move_the_second_opinion_between_ranker_and_verifier() -> None:
    verifier = LesionVerifier(resolve_device("cpu"))
    for weight, expected in ((0.0, 0.2), (1.0, 0.8), (0.5, 0.4)):
        verifier.weight = weight
        assert verifier.combine(0.2, 0.8) == pytest.approx(expected)
    assert verifier.combine(0.0, 0.0) >= 0.0


def test_a_bundle_without_weights_or_with_other_weights_is_refused(tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    shutil.copytree(DEFAULT_BUNDLE, bundle)
    config = bundle / "configs" / "inference.json"
    config.write_text(config.read_text().replace("[16, 32, 64, 64]", "[8, 16, 32, 32]"))
    with pytest.raises(ConfigurationError, match="retrain"):
        LesionVerifier(resolve_device("cpu"), bundle)
    (bundle / "models" / "model.pt").unlink()
    with pytest.raises(ConfigurationError, match="missing"):
        LesionVerifier(resolve_device("cpu"), bundle)


def test_the_shipped_verifier_prefers_a_nodule_to_a_vessel_crossing() -> None:
    """Shape, not brightness: an 8 mm solid ball against two 3 mm vessels crossing, both +880 HU."""
    spacing = (0.8, 0.8, 1.25)
    hu, region = _scan(spacing, (60.0, 60.0, 60.0), radius_mm=4.0)
    rng = np.random.default_rng(3)
    sx, sy, sz = spacing
    zz, yy, xx = np.meshgrid(*[(np.arange(n) + 0.5) * s for n, s in zip(hu.shape, (sz, sy, sx))], indexing="ij")
    crossing = (((yy - 60) ** 2 + (zz - 30) ** 2) <= 1.5**2) | (((xx - 30) ** 2 + (zz - 30) ** 2) <= 1.5**2)
    hu[crossing] = 30.0
    hu = ndimage.gaussian_filter(hu, 0.8) + rng.normal(0, 20, hu.shape).astype(np.float32)
    sampler = _sampler(hu, region, spacing)
    patches = sampler.patches([_index_of((60.0, 60.0, 60.0), spacing), _index_of((30.0, 60.0, 30.0), spacing)])
    nodule, vessels = LesionVerifier(resolve_device("cpu")).score(patches)
    assert nodule > vessels


def test_with_the_verifier_a_ground_glass_nodule_is_among_the_top_findings() -> None:
    """End to end on a phantom the bundles never saw: classifier, ranker, verifier, segmentation."""
    from sensecare.analysis.detect import confidence_of, detect_lesions
    from sensecare.analysis.heatmap import LesionHeatmapModel
    from sensecare.analysis.lungs import segment_lungs
    from sensecare.analysis.ranker import LesionRanker
    from sensecare.phantom.spec import LesionSpec, PhantomSpec
    from tests.helpers.phantoms import hit_ranks, phantom_volume

    spec = PhantomSpec(seed=12, matrix=256, slice_thickness_mm=1.25, kernel="standard",
                       lesions=(LesionSpec("ground_glass", 18.0, "random"), LesionSpec("solid", 10.0, "random")))
    ph, vol = phantom_volume(spec)
    device = resolve_device("cpu")
    verifier = LesionVerifier(device)
    lungs = segment_lungs(vol)
    found = detect_lesions(vol, lungs, LesionHeatmapModel(device), LesionRanker(device), verifier=verifier,
                           min_confidence=0.2)
    assert found and [f.confidence for f in found] == sorted((f.confidence for f in found), reverse=True)
    for f in found:  # the second score is the ranker's and the verifier's weighted mean
        second = verifier.combine(f.features["ranker_score"], f.features["verifier_score"])
        assert f.features["second_score"] == pytest.approx(second, abs=1e-3)
        assert f.confidence == pytest.approx(confidence_of(f.features["heatmap_score"], second), abs=1e-3)
    ranks_of = hit_ranks(ph, vol, found)
    for truth in ph.truth:
        ranks = ranks_of[truth.id]
        assert ranks and ranks[0] < 3, f"{truth.type} {truth.diameter_mm} mm is not among the top findings"

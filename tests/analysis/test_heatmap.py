"""Voxel features, heatmap detections and the shipped voxel classifier."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from sensecare.analysis.device import resolve_device
from sensecare.analysis.grid import CoarseGrid
from sensecare.analysis.heatmap import (
    DEFAULT_BUNDLE,
    FEATURE_NAMES,
    FeatureMaps,
    LesionHeatmapModel,
    detections_from,
    voxel_features,
)
from sensecare.errors import ConfigurationError

SPACING = (0.8, 0.8, 1.25)  # x, y, z mm


def _lung_box(seed: int = 3) -> tuple[np.ndarray, np.ndarray, tuple[np.ndarray, ...]]:
    """Noisy parenchyma in an ellipsoidal region, with a 12 mm nodule and a 3 mm vessel along x."""
    rng = np.random.default_rng(seed)
    shape = (64, 120, 120)
    hu = rng.normal(-860, 25, shape).astype(np.float32)
    z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    zz, yy, xx = z * SPACING[2], y * SPACING[1], x * SPACING[0]
    region = ((zz - 40) / 38) ** 2 + ((yy - 48) / 46) ** 2 + ((xx - 48) / 46) ** 2 <= 1.0
    nodule = (zz - 40) ** 2 + (yy - 40) ** 2 + (xx - 30) ** 2 <= 6.0**2
    vessel = ((zz - 40) ** 2 + (yy - 60) ** 2 <= 1.5**2) & (xx > 10) & (xx < 86)
    hu[nodule] = 20.0
    hu[vessel] = 40.0
    return hu, region, (nodule, vessel)


def test_features_cover_the_region_on_a_2mm_grid_and_describe_blobs() -> None:
    hu, region, (nodule, vessel) = _lung_box()
    maps = voxel_features(hu, region, SPACING)
    assert maps is not None
    assert maps.features.shape == (int(maps.inside.sum()), len(FEATURE_NAMES))
    assert maps.features.dtype == np.float32 and np.isfinite(maps.features).all()
    assert maps.grid.factors == (2, 2, 2)  # 2.5 x 1.6 x 1.6 mm, the nearest whole factors to 2 mm
    assert maps.background_hu == pytest.approx(-860, abs=10)

    def row_of(mask: np.ndarray, share: float) -> np.ndarray:
        coarse = maps.grid.fraction(mask[maps.box]) >= share
        index = np.flatnonzero(coarse[maps.inside])
        return maps.features[index]

    density = FEATURE_NAMES.index("density_2mm")
    trace3 = FEATURE_NAMES.index("hessian_trace_3mm")
    depth = FEATURE_NAMES.index("solid_depth_mm")
    centre = np.zeros_like(nodule)
    centre[32, 50, 37] = True  # 40 mm, 40 mm, 30 mm
    at_nodule, in_vessel = row_of(centre, 0.1)[0], row_of(vessel, 0.5).mean(axis=0)
    parenchyma = maps.features[:, density] < 0.5
    assert at_nodule[density] > 5.0  # ~900 HU above the parenchyma, in units of 100 HU
    assert at_nodule[trace3] < in_vessel[trace3] < 0  # a ball curves in three directions, a tube in two
    assert at_nodule[depth] > 2 * in_vessel[depth]  # 6 mm deep against 1.5 mm
    assert parenchyma.mean() > 0.8


def test_ggo_burden_tells_diffuse_ground_glass_from_clear_lungs() -> None:
    """One scan-level column: a nodule's ground glass barely moves it, diffuse disease does."""
    burden = FEATURE_NAMES.index("ggo_burden")
    hu, region, _ = _lung_box()
    clear = voxel_features(hu, region, SPACING)
    ggo_nodule = hu.copy()
    z, y, x = np.ogrid[: hu.shape[0], : hu.shape[1], : hu.shape[2]]
    ggo_nodule[(z * 1.25 - 40) ** 2 + (y * 0.8 - 60) ** 2 + (x * 0.8 - 60) ** 2 <= 7.0**2] = -620.0
    with_nodule = voxel_features(ggo_nodule, region, SPACING)
    diffuse = hu.copy()
    diffuse[:, :, : hu.shape[2] // 3] += 240.0  # a third of the box reads -620 HU
    with_diffuse = voxel_features(diffuse, region, SPACING)
    assert clear is not None and with_nodule is not None and with_diffuse is not None
    values = [float(maps.features[0, burden]) for maps in (clear, with_nodule, with_diffuse)]
    for maps, value in zip((clear, with_nodule, with_diffuse), values):
        assert np.all(maps.features[:, burden] == value)  # the same for every voxel of a scan
    assert values[0] < 0.01 and values[1] < 0.02
    assert values[2] >= 0.1


def test_an_empty_region_has_no_features() -> None:
    hu, region, _ = _lung_box()
    assert voxel_features(hu, np.zeros_like(region), SPACING) is None


def _maps(shape: tuple[int, int, int], factors: tuple[int, int, int], offset: tuple[int, int, int]) -> FeatureMaps:
    fine = tuple(n * f for n, f in zip(shape, factors))
    box = tuple(slice(o, o + n) for o, n in zip(offset, fine))
    inside = np.ones(shape, bool)
    return FeatureMaps(np.zeros((inside.sum(), len(FEATURE_NAMES)), np.float32), inside,
                       CoarseGrid(factors, fine), box, -850.0)  # type: ignore[arg-type]


def test_detections_are_connected_regions_scored_by_their_peak() -> None:
    probability = np.zeros((20, 30, 30), np.float32)
    probability[5:9, 5:9, 5:9] = 0.6
    probability[6, 6, 6] = 0.9  # a strong lesion
    probability[12:15, 20:23, 20:23] = 0.35  # a faint one
    probability[1, 28, 28] = 0.99  # one voxel: below the size floor
    maps = _maps(probability.shape, (1, 2, 2), (10, 20, 30))
    spacing = (1.0, 1.0, 2.0)
    found = detections_from(probability, maps, spacing, threshold=0.25, min_volume_mm3=16.0)
    assert [round(d.score, 2) for d in found] == [0.9, 0.35]
    strong, faint = found
    assert strong.peak == (10 + 6, 20 + 6 * 2 + 1, 30 + 6 * 2 + 1)
    assert strong.offset == (15, 30, 40)
    assert strong.mask.shape == (4, 8, 8) and strong.mask.all()  # every voxel >= half the peak
    assert strong.radius_mm == pytest.approx((3 * 64 * 8 / (4 * np.pi)) ** (1 / 3), rel=1e-6)
    assert faint.mask.sum() == 27 * 4


def test_the_half_maximum_mask_leaves_out_a_faint_rim() -> None:
    probability = np.zeros((10, 10, 10), np.float32)
    probability[2:8, 2:8, 2:8] = 0.3
    probability[4:6, 4:6, 4:6] = 0.95
    maps = _maps(probability.shape, (1, 1, 1), (0, 0, 0))
    (only,) = detections_from(probability, maps, (1.0, 1.0, 1.0), threshold=0.25, min_volume_mm3=1.0)
    assert only.mask.sum() == 8


def test_the_shipped_classifier_tells_a_nodule_from_parenchyma_and_a_vessel() -> None:
    hu, region, (nodule, vessel) = _lung_box()
    model = LesionHeatmapModel(resolve_device("cpu"))
    maps = voxel_features(hu, region, SPACING)
    probability = model.probability_map(maps)
    fine = maps.grid.upsample(probability)
    assert float(fine[nodule[maps.box]].max()) > 0.5
    far = ~region[maps.box] | nodule[maps.box] | vessel[maps.box]
    assert float(np.percentile(fine[~far], 99.5)) < 0.25
    found = detections_from(probability, maps, SPACING, threshold=model.threshold,
                            min_volume_mm3=model.min_volume_mm3)
    assert found, "the nodule was not detected"
    z, y, x = found[0].peak
    assert nodule[z, y, x] or np.linalg.norm(np.subtract((z * 1.25, y * 0.8, x * 0.8), (40, 40, 30))) < 6.0


def test_a_bundle_for_other_features_is_refused(tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    shutil.copytree(DEFAULT_BUNDLE, bundle)
    meta_path = bundle / "configs" / "metadata.json"
    meta = json.loads(meta_path.read_text())
    features = meta["sensecare"]["features"]
    meta["sensecare"]["features"] = features[:-1] + ["colour_of_the_sky"]
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ConfigurationError, match="colour_of_the_sky"):
        LesionHeatmapModel(resolve_device("cpu"), bundle)
    meta["sensecare"]["features"] = features[:-1]  # a known subset the weights were not trained on
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ConfigurationError, match="retrain"):
        LesionHeatmapModel(resolve_device("cpu"), bundle)
    (bundle / "models" / "model.pt").unlink()
    with pytest.raises(ConfigurationError, match="missing"):
        LesionHeatmapModel(resolve_device("cpu"), bundle)


def test_two_lesions_joined_by_a_faint_bridge_stay_two_detections() -> None:
    """One low level alone would chain a nodule to the vessels around it (seen on real CT)."""
    probability = np.zeros((10, 10, 30), np.float32)
    probability[3:7, 3:7, 2:8] = 0.95
    probability[4:6, 4:6, 8:22] = 0.3  # a vessel the classifier half believes
    probability[3:7, 3:7, 22:28] = 0.8
    maps = _maps(probability.shape, (1, 1, 1), (0, 0, 0))
    found = detections_from(probability, maps, (1.0, 1.0, 1.0), threshold=0.25, min_volume_mm3=1.0)
    assert [round(d.score, 2) for d in found] == [0.95, 0.8]
    assert found[0].offset[2] == 2 and found[1].offset[2] == 22
    capped = detections_from(probability, maps, (1.0, 1.0, 1.0), threshold=0.25, min_volume_mm3=1.0,
                             max_detections=1)
    assert [round(d.score, 2) for d in capped] == [0.95]


def test_phantom_lesions_are_detected_and_ranked_above_everything_else() -> None:
    """End to end on the project's phantom: voxel classifier, detections, segmentation."""
    from sensecare.analysis.detect import detect_lesions
    from sensecare.analysis.lungs import segment_lungs
    from sensecare.analysis.measure import measure_lesion
    from sensecare.phantom.spec import LesionSpec, PhantomSpec
    from tests.helpers.phantoms import hit_ranks, phantom_volume

    spec = PhantomSpec(seed=11, matrix=256, slice_thickness_mm=2.5, kernel="standard",
                       lesions=(LesionSpec("solid", 12.0, "random"), LesionSpec("mass", 40.0, "random")))
    ph, vol = phantom_volume(spec)
    lungs = segment_lungs(vol)
    found = detect_lesions(vol, lungs, LesionHeatmapModel(resolve_device("cpu")))
    assert found and [f.confidence for f in found] == sorted((f.confidence for f in found), reverse=True)
    ranks_of = hit_ranks(ph, vol, found)
    for truth in ph.truth:
        hits = [found[k] for k in ranks_of[truth.id]]
        assert hits and hits[0].confidence >= 0.5, f"{truth.type} {truth.diameter_mm} mm not found"
    centres = [measure_lesion(vol, f.mask, f.offset).center_lps_mm for f in found[:1]]
    mass = next(t for t in ph.truth if t.type == "mass")
    assert np.linalg.norm(np.subtract(centres[0], mass.center_lps_mm)) < mass.diameter_mm / 2
    assert all("heatmap_score" in f.features for f in found)


def test_features_are_the_same_on_one_thread_and_on_several(monkeypatch: pytest.MonkeyPatch) -> None:
    from sensecare.analysis import heatmap

    hu, region, _ = _lung_box()
    monkeypatch.setattr(heatmap, "FILTER_THREADS", 1)
    alone = voxel_features(hu, region, SPACING)
    monkeypatch.setattr(heatmap, "FILTER_THREADS", 4)
    pooled = voxel_features(hu, region, SPACING)
    np.testing.assert_array_equal(alone.features, pooled.features)


def test_a_faint_region_with_a_strong_core_below_the_size_floor_is_a_detection() -> None:
    """A ground-glass nodule whose probability just passes the strong level in one voxel."""
    probability = np.zeros((12, 12, 12), np.float32)
    probability[3:9, 3:9, 3:9] = 0.3
    probability[6, 6, 6] = 0.55
    maps = _maps(probability.shape, (1, 1, 1), (0, 0, 0))
    (only,) = detections_from(probability, maps, (1.0, 1.0, 1.0), threshold=0.1, min_volume_mm3=8.0)
    assert only.score == pytest.approx(0.55) and only.peak == (6, 6, 6)
    assert only.mask.sum() == 6**3 and only.region_voxels == 6**3

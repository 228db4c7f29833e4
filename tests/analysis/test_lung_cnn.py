"""The dense lesion network: its grid mapping, its bundle and what the shipped weights see."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from sensecare.analysis.device import resolve_device
from sensecare.analysis.heatmap import working_image
from sensecare.analysis.lung_cnn import (
    DEFAULT_BUNDLE,
    ISO_MM,
    LungLesionCnn,
    from_isotropic,
    fuse_probability,
    network_input,
    pad_to_multiple,
    to_isotropic,
)
from sensecare.errors import ConfigurationError

SPACING_XYZ = (0.8, 0.8, 2.5)


def test_thick_slices_are_interpolated_to_2mm_and_mapped_back_in_place() -> None:
    grid = np.zeros((30, 50, 40), np.float32)  # 5 mm slices, 1.4 mm pixels
    grid[10:14, 20:30, 5:15] = 1.0
    iso = to_isotropic(grid, (5.0, 1.4, 1.4))
    assert iso.shape == (75, 35, 28)
    centre = np.array(ndimage.center_of_mass(grid)) * (5.0, 1.4, 1.4)
    iso_centre = np.array(ndimage.center_of_mass(iso)) * ISO_MM
    # grid_mode: voxel i covers [i, i + 1) of its spacing on either grid, so centres agree to a voxel
    assert np.abs((centre + np.array([2.5, 0.7, 0.7])) - (iso_centre + ISO_MM / 2)).max() < ISO_MM
    back = from_isotropic(iso, grid.shape)
    assert back.shape == grid.shape
    assert np.abs(np.array(ndimage.center_of_mass(back)) - ndimage.center_of_mass(grid)).max() < 0.5


def test_from_isotropic_always_returns_the_exact_shape() -> None:
    for shape in [(7, 9, 11), (1, 5, 3), (33, 17, 20)]:
        assert from_isotropic(np.ones((5, 6, 7), np.float32), shape).shape == shape


def test_inputs_are_scaled_clipped_and_padded_for_three_halvings() -> None:
    image = np.array([[[-1000.0, 0.0, 250.0, 5000.0]]], np.float32)
    inside = np.array([[[0, 1, 1, 1]]], bool)
    channels = network_input(image, inside)
    assert channels.shape == (2, 1, 1, 4)
    assert channels[0].ravel().tolist() == [-0.5, 0.0, 0.5, 3.0]
    assert channels[1].ravel().tolist() == [0.0, 1.0, 1.0, 1.0]
    padded, shape = pad_to_multiple(np.ones((2, 9, 16, 1), np.float32))
    assert padded.shape == (2, 16, 16, 8) and shape == (9, 16, 1)
    assert padded[:, 9:].sum() == 0 and padded[..., 1:].sum() == 0


def test_fusion_keeps_whichever_model_is_surer() -> None:
    a = np.array([0.9, 0.1, 0.0], np.float32)
    b = np.array([0.2, 0.7, 0.0], np.float32)
    assert fuse_probability(a, b).tolist() == pytest.approx([0.9, 0.7, 0.0])


def test_a_bundle_without_weights_or_with_other_weights_is_refused(tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    shutil.copytree(DEFAULT_BUNDLE, bundle)
    config = (bundle / "configs" / "inference.json")
    config.write_text(config.read_text().replace("\"init_filters\": 8", "\"init_filters\": 16"))
    with pytest.raises(ConfigurationError, match="retrain"):
        LungLesionCnn(resolve_device("cpu"), bundle)
    (bundle / "models" / "model.pt").unlink()
    with pytest.raises(ConfigurationError, match="missing"):
        LungLesionCnn(resolve_device("cpu"), bundle)


def _lung_with(lesion_hu: float, *, seed: int = 5) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Noisy parenchyma in an ellipsoid with a 20 mm nodule of ``lesion_hu`` and a 3 mm vessel."""
    rng = np.random.default_rng(seed)
    shape = (56, 150, 150)
    hu = ndimage.gaussian_filter(rng.normal(-860, 40, shape), 0.7).astype(np.float32)
    z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    zz, yy, xx = z * SPACING_XYZ[2], y * SPACING_XYZ[1], x * SPACING_XYZ[0]
    region = ((zz - 70) / 66) ** 2 + ((yy - 60) / 56) ** 2 + ((xx - 60) / 56) ** 2 <= 1.0
    nodule = (zz - 70) ** 2 + (yy - 50) ** 2 + (xx - 40) ** 2 <= 10.0**2
    vessel = ((zz - 70) ** 2 + (yy - 80) ** 2 <= 1.5**2) & (xx > 20) & (xx < 100)
    hu[vessel] = 40.0
    hu[nodule] = lesion_hu + rng.normal(0, 30, int(nodule.sum()))
    hu[~region] = 40.0  # chest wall and mediastinum
    return hu, region, nodule, vessel


@pytest.mark.parametrize("lesion_hu", [-560.0, 20.0], ids=["ground_glass", "solid"])
def test_the_shipped_network_finds_a_nodule_and_leaves_parenchyma_and_a_vessel(lesion_hu: float) -> None:
    hu, region, nodule, vessel = _lung_with(lesion_hu)
    image, inside, grid, box, _ = working_image(hu, region, SPACING_XYZ)
    gx, gy, gz = grid.spacing_xyz(SPACING_XYZ)
    probability = LungLesionCnn(resolve_device("cpu")).probability_map(image, inside, (gz, gy, gx))
    assert probability.shape == inside.shape and probability[~inside].max() == 0.0
    fine = grid.upsample(probability)
    assert float(fine[nodule[box]].max()) > 0.5
    assert float(np.percentile(fine[vessel[box]], 90)) < 0.5
    far = region[box] & ~ndimage.binary_dilation(nodule | vessel, iterations=6)[box]
    assert float(np.percentile(fine[far], 99.5)) < 0.2


def test_the_fused_probability_keeps_the_voxel_classifier_and_adds_the_network() -> None:
    from sensecare.analysis.detect import lesion_probability
    from sensecare.analysis.heatmap import LesionHeatmapModel, voxel_features

    hu, region, nodule, _ = _lung_with(-560.0)
    maps = voxel_features(hu, region, SPACING_XYZ)
    device = resolve_device("cpu")
    classifier = LesionHeatmapModel(device)
    alone = lesion_probability(maps, SPACING_XYZ, classifier)
    np.testing.assert_array_equal(alone, classifier.probability_map(maps))
    fused = lesion_probability(maps, SPACING_XYZ, classifier, LungLesionCnn(device))
    assert (fused >= alone).all() and (fused > alone).any()
    assert float(maps.grid.upsample(fused)[nodule[maps.box]].max()) > 0.5

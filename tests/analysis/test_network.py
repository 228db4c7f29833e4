"""Patch geometry of the lesion network and the device choice."""

from __future__ import annotations

import numpy as np
import pytest

from sensecare.analysis.device import resolve_device
from sensecare.analysis.network import PATCH, PatchGeometry, extract_patch, normalise, patch_to_volume
from sensecare.errors import ConfigurationError


def _sphere(shape, centre_zyx, radius_mm, spacing_xyz) -> np.ndarray:  # type: ignore[no-untyped-def]
    sx, sy, sz = spacing_xyz
    z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    cz, cy, cx = centre_zyx
    return ((z - cz) * sz) ** 2 + ((y - cy) * sy) ** 2 + ((x - cx) * sx) ** 2 <= radius_mm**2


@pytest.mark.parametrize("spacing", [(0.7, 0.7, 1.25), (0.8, 0.8, 8.0), (1.0, 1.0, 1.0)])
def test_a_lesion_fills_the_middle_of_its_patch_at_any_spacing(spacing) -> None:  # type: ignore[no-untyped-def]
    shape = (int(120 / spacing[2]), 160, 160)
    centre = (shape[0] / 2, 80.0, 70.0)
    radius = 12.0
    hu = np.where(_sphere(shape, centre, radius, spacing), 30.0, -850.0)
    geometry = PatchGeometry.around(centre, extent_mm=2 * radius)
    assert geometry.voxel_mm == pytest.approx(48.0 / PATCH)
    patch = extract_patch(hu, spacing, geometry)
    assert patch.shape == (PATCH,) * 3
    middle = patch[PATCH // 2, PATCH // 2, PATCH // 2]
    assert middle == pytest.approx(normalise(np.array(30.0)), abs=1e-3)
    # the sphere (24 mm across) covers about half the 48 mm field along each axis
    inside = patch > 0.5
    across = inside[PATCH // 2, PATCH // 2].sum() * geometry.voxel_mm
    assert across == pytest.approx(2 * radius, abs=2 * geometry.voxel_mm + spacing[2] / 2)


def test_probabilities_map_back_onto_the_ct_grid() -> None:
    spacing = (0.8, 0.8, 2.5)
    shape = (60, 120, 120)
    centre = (30.0, 60.0, 55.0)
    truth = _sphere(shape, centre, 10.0, spacing)
    geometry = PatchGeometry.around(centre, extent_mm=20.0)
    patch_mask = extract_patch(np.where(truth, 400.0, -1000.0), spacing, geometry)
    back, (z0, y0, x0) = patch_to_volume(patch_mask, geometry, spacing, shape)
    full = np.zeros(shape, dtype=np.float32)
    full[z0 : z0 + back.shape[0], y0 : y0 + back.shape[1], x0 : x0 + back.shape[2]] = back
    recovered = full > 0.5
    dice = 2 * np.count_nonzero(recovered & truth) / (recovered.sum() + truth.sum())
    assert dice > 0.9


def test_patches_outside_the_volume_read_as_air() -> None:
    hu = np.zeros((10, 20, 20), dtype=np.float32)
    patch = extract_patch(hu, (1.0, 1.0, 1.0), PatchGeometry.around((0.0, 0.0, 0.0), 10.0))
    assert patch.min() == pytest.approx(0.0)  # air
    assert patch.max() == pytest.approx(normalise(np.array(0.0)))


@pytest.mark.parametrize(("centre", "extent_mm"), [
    ((30.0, 40.0, 35.0), 20.0), ((0.0, 0.0, 0.0), 40.0), ((59.0, 79.0, 69.0), 100.0),
    ((-30.0, -30.0, -30.0), 10.0), ((30.0, 40.0, 35.0), 300.0), ((10.3, 70.7, 3.2), 33.0),
])
def test_a_patch_cut_from_its_footprint_equals_one_sampled_from_the_whole_volume(centre, extent_mm) -> None:  # type: ignore[no-untyped-def]
    from scipy import ndimage

    hu = np.random.default_rng(0).integers(-1000, 400, (60, 80, 70)).astype(np.int16)
    spacing = (0.7, 0.7, 1.25)
    geometry = PatchGeometry.around(centre, extent_mm)
    whole = ndimage.map_coordinates(hu.astype(np.float32), geometry.sample_coordinates(spacing), order=1,
                                    mode="constant", cval=-1000.0)
    np.testing.assert_array_equal(extract_patch(hu, spacing, geometry), normalise(whole))


def test_device_choice() -> None:
    assert str(resolve_device("cpu")) == "cpu"
    import torch

    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert str(resolve_device("auto")) == expected
    with pytest.raises(ConfigurationError, match="unknown device"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigurationError, match="no CUDA GPU"):
            resolve_device("cuda")


def test_a_patch_bundle_without_fitting_weights_is_refused(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import shutil

    from sensecare.analysis.network import DEFAULT_BUNDLE, LesionNetwork

    bundle = tmp_path / "bundle"
    shutil.copytree(DEFAULT_BUNDLE, bundle)
    config = bundle / "configs" / "inference.json"
    config.write_text(config.read_text().replace('"init_filters": 8', '"init_filters": 16'))
    with pytest.raises(ConfigurationError, match="retrain"):
        LesionNetwork(resolve_device("cpu"), bundle)
    (bundle / "models" / "model.pt").unlink()
    with pytest.raises(ConfigurationError, match="missing"):
        LesionNetwork(resolve_device("cpu"), bundle)

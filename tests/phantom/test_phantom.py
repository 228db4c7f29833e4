"""The synthetic chest CT phantom: realistic numbers, consistent truth, readable DICOM.

Phantoms here are small (128x128 or less, 5 mm slices) so the module runs in
well under a minute; realism at full resolution is documented in
docs/phantoms.md.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage as ndi

from sensecare.dicom.volume import volume_from_files
from sensecare.errors import PhantomError, PhantomSpecError
from sensecare.phantom import (
    LesionSpec,
    Phantom,
    PhantomSpec,
    generate_phantom,
    parse_lesions,
    write_phantom,
)

LESIONS = (
    LesionSpec("solid", 20, "juxtapleural"),
    LesionSpec("part_solid", 22),
    LesionSpec("ground_glass", 20),
    LesionSpec("consolidation", 35),
    LesionSpec("mass", 45),
    LesionSpec("solid", 18, "juxtavascular"),
)
HU_RANGES = {
    "solid": (0, 60),
    "mass": (0, 60),
    "consolidation": (-50, 50),
    "ground_glass": (-750, -450),
}


@pytest.fixture(scope="module")
def phantom() -> Phantom:
    spec = PhantomSpec(seed=11, matrix=128, n_slices=60, slice_thickness_mm=5.0, lesions=LESIONS, diffuse=0.1)
    return generate_phantom(spec)


def _small(**kw: object) -> Phantom:
    args: dict[str, object] = {"seed": 5, "matrix": 96, "n_slices": 12, "slice_thickness_mm": 5.0, "lesions": ()}
    args.update(kw)
    return generate_phantom(PhantomSpec(**args))  # type: ignore[arg-type]


def _core(mask: np.ndarray) -> np.ndarray:
    """The mask without its partial-volume rim (in-plane erosion)."""
    return np.array([ndi.binary_erosion(s, iterations=1) for s in mask])


def _ball(ph: Phantom, centre: tuple[float, float, float], radius: float) -> np.ndarray:
    """In-plane disc of ``radius`` mm on the slice nearest ``centre``: the lesion core, free of partial volume."""
    i0, j0, k0 = np.rint(ph.lps_to_index(centre)).astype(int)
    j, i = np.indices(ph.hu.shape[1:])
    r = max(radius, 1.1 * ph.spacing[0])
    out = np.zeros(ph.hu.shape, bool)
    out[k0] = ((i - i0) * ph.spacing[0]) ** 2 + ((j - j0) * ph.spacing[1]) ** 2 <= r**2
    return out


# --- determinism -----------------------------------------------------------------------


def test_same_seed_same_phantom_other_seed_other_phantom() -> None:
    a = _small(seed=3, lesions=(LesionSpec("solid", 10),))
    b = _small(seed=3, lesions=(LesionSpec("solid", 10),))
    c = _small(seed=4, lesions=(LesionSpec("solid", 10),))
    for name in ("hu", "hu_clean", "lungs", "lobes", "lesions", "airways"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    assert a.truth == b.truth
    assert not np.array_equal(a.hu, c.hu)
    assert a.truth[0].center_lps_mm != c.truth[0].center_lps_mm


# --- anatomy -------------------------------------------------------------------------------


def test_tissue_hu_in_plausible_ranges(phantom: Phantom) -> None:
    hu, clean = phantom.hu, phantom.hu_clean
    lung = _core(phantom.lungs > 0) & (phantom.lesions == 0) & (phantom.opacity == 0)
    assert -900 <= np.median(hu[lung]) <= -750
    body_axis = hu.shape[2] // 2
    mid = hu.shape[0] // 2
    column = clean[mid, :, body_axis]
    assert column.max() > 300  # sternum and vertebra on the midline
    assert np.count_nonzero(clean > 300) / np.count_nonzero(clean > -500) > 0.01  # bones
    fat = (clean > -130) & (clean < -70)
    muscle = (clean > 20) & (clean < 70)
    assert fat.sum() > 1000 and muscle.sum() > 1000
    assert -130 < np.median(hu[fat]) < -60 and 15 < np.median(hu[muscle]) < 75
    trachea = _core(phantom.airways) & (phantom.lungs == 0)
    assert trachea.sum() > 20 and np.median(hu[trachea]) < -900
    outside = hu[:, 2, :]
    assert np.median(outside) < -950


def test_lungs_lobes_and_volumes(phantom: Phantom) -> None:
    lungs, lobes = phantom.lungs, phantom.lobes
    x = phantom.index_to_lps(np.column_stack([np.arange(lungs.shape[2]), np.zeros(lungs.shape[2]), np.zeros(lungs.shape[2])]))[:, 0]
    right_x = x[np.nonzero(lungs == 1)[2]]
    left_x = x[np.nonzero(lungs == 2)[2]]
    assert right_x.mean() < 0 < left_x.mean()  # patient right is smaller LPS x
    assert set(np.unique(lobes[lungs == 1])) == {1, 2, 3}
    assert set(np.unique(lobes[lungs == 2])) == {4, 5}
    assert np.all(lobes[lungs == 0] == 0)
    vol = phantom.lung_volume_ml
    assert 3500 < vol["total"] < 8000 and vol["right"] > 0.4 * vol["total"]
    for lobe in range(1, 6):
        assert np.count_nonzero(lobes == lobe) > 0.04 * np.count_nonzero(lungs)


# --- lesions --------------------------------------------------------------------------------


def test_every_lesion_is_drawn_with_its_density_inside_the_lung(phantom: Phantom) -> None:
    assert [t.type for t in phantom.truth] == [s.type for s in LESIONS]
    for t in phantom.truth:
        mask = phantom.lesions == t.id
        core = mask & _ball(phantom, t.center_lps_mm, 0.45 * t.diameter_mm / 2)
        if t.type == "ground_glass":  # the tissue, not the vessels seen through it
            core &= ~ndi.binary_dilation(phantom.vessels)
        values = phantom.hu_clean[core]
        assert values.size >= 1, t.type
        if t.type in HU_RANGES:
            lo, hi = HU_RANGES[t.type]
            assert lo <= values.mean() <= hi, (t.type, values.mean())
        else:  # part solid: a ground-glass halo around a solid core
            assert -750 <= np.median(phantom.hu_clean[mask]) <= -300
            assert phantom.hu_clean[mask].max() > -100
        if t.type != "mass":
            assert np.all(phantom.lungs[mask] > 0), t.type
            assert t.inside_lung_fraction == 1.0
        assert t.side == ("R" if t.center_lps_mm[0] < 0 else "L")
        assert 1 <= t.lobe <= 5


def test_lesion_volume_matches_the_requested_diameter(phantom: Phantom) -> None:
    for t in phantom.truth:
        expected = np.pi / 6 * t.diameter_mm**3 / 1000.0
        assert abs(t.volume_ml - expected) <= 0.25 * expected, (t.type, t.volume_ml, expected)
        assert t.long_axis_mm >= t.short_axis_mm > 0


def test_juxtapleural_touches_the_chest_wall_and_juxtavascular_a_vessel(phantom: Phantom) -> None:
    by_location = {t.location: t for t in phantom.truth if t.type == "solid"}
    pleural = by_location["juxtapleural"]
    mask = phantom.lesions == pleural.id
    ring = ndi.binary_dilation(mask, np.ones((3, 3, 3), bool), iterations=2) & ~mask
    wall = ring & (phantom.lungs == 0) & (phantom.hu_clean > -500)
    assert wall.any() and pleural.juxtapleural
    vascular = by_location["juxtavascular"]
    assert vascular.juxtavascular
    assert not by_location["juxtavascular"].juxtapleural


def test_explicit_centre_and_impossible_requests() -> None:
    ph = _small(seed=2, n_slices=30, lesions=(LesionSpec("solid", 12, (-80.0, 20.0, -60.0)),))
    (t,) = ph.truth
    assert t.location == "explicit" and np.allclose(t.center_lps_mm, (-80, 20, -60), atol=4)
    with pytest.raises(PhantomError, match="not inside a lung"):
        _small(lesions=(LesionSpec("solid", 10, (0.0, 0.0, 0.0)),))
    with pytest.raises(PhantomSpecError):
        LesionSpec("mass", 20)
    with pytest.raises(PhantomSpecError):
        PhantomSpec(slice_thickness_mm=20)
    assert parse_lesions("solid:8,ground_glass:15:juxtapleural:R") == (
        LesionSpec("solid", 8), LesionSpec("ground_glass", 15, "juxtapleural", "R"))


# --- opacity ---------------------------------------------------------------------------------


def test_percent_opacity_is_consistent_with_the_masks(phantom: Phantom) -> None:
    lung = phantom.lungs > 0
    involved = lung & ((phantom.opacity > 0) | (phantom.lesions > 0))
    assert phantom.percent_opacity == pytest.approx(100 * involved.sum() / lung.sum(), abs=1e-3)
    assert phantom.percent_high_opacity == pytest.approx(100 * (lung & phantom.high_opacity).sum() / lung.sum(), abs=1e-3)
    assert np.all(phantom.high_opacity[phantom.opacity == 2])
    diffuse = phantom.opacity > 0
    assert 0.06 < diffuse.sum() / lung.sum() < 0.14  # asked for 10 %
    ggo = (phantom.opacity == 1) & _core(phantom.opacity == 1) & ~phantom.vessels
    assert -800 < np.median(phantom.hu_clean[ggo]) < -300
    assert 0 < phantom.percent_high_opacity < phantom.percent_opacity


# --- scanner ---------------------------------------------------------------------------------


def test_sharp_kernel_and_thin_slices_are_noisier() -> None:
    def lung_noise(ph: Phantom) -> float:
        lung = _core(ph.lungs > 0)
        return float((ph.hu.astype(float) - ph.hu_clean)[lung].std())

    standard = _small()
    sharp = _small(kernel="sharp")
    thin = _small(slice_thickness_mm=1.25, slice_spacing_mm=5.0)
    assert lung_noise(sharp) > 2.0 * lung_noise(standard)
    assert lung_noise(thin) > 1.5 * lung_noise(standard)
    assert lung_noise(standard) == pytest.approx(standard.noise_sd_hu, rel=0.25)
    smooth_edges = np.abs(np.diff(standard.hu_clean.astype(float), axis=2)).mean()
    sharp_edges = np.abs(np.diff(sharp.hu_clean.astype(float), axis=2)).mean()
    assert sharp_edges > smooth_edges  # less blur


# --- DICOM and CLI ---------------------------------------------------------------------------


def test_written_series_round_trips_with_the_truth_geometry(phantom: Phantom, tmp_path: Path) -> None:
    out = write_phantom(phantom, tmp_path / "series")
    files = sorted(out.glob("*.dcm"))
    assert len(files) == phantom.hu.shape[0]
    vol = volume_from_files(files)
    assert np.array_equal(vol.array, phantom.hu)
    assert np.allclose(vol.spacing, phantom.spacing) and np.allclose(vol.origin, phantom.origin)
    truth = json.loads((out / "ground_truth.json").read_text())
    masks = np.load(out / "masks.npz")
    assert truth["geometry"]["origin_lps_mm"] == list(phantom.origin)
    assert truth["percent_opacity"] == phantom.percent_opacity
    for lesion in truth["lesions"]:
        i, j, k = np.rint(vol.lps_to_index(lesion["center_lps_mm"])).astype(int)
        assert masks["lesions"][k, j, i] == lesion["id"]
        lo = np.rint(vol.lps_to_index(lesion["bbox_lps_mm_min"]) + 0.5).astype(int)
        hi = np.rint(vol.lps_to_index(lesion["bbox_lps_mm_max"]) - 0.5).astype(int)
        k_, j_, i_ = np.nonzero(masks["lesions"] == lesion["id"])
        assert (i_.min(), j_.min(), k_.min()) == tuple(lo) and (i_.max(), j_.max(), k_.max()) == tuple(hi)
    with pytest.raises(PhantomError, match="not empty"):
        write_phantom(phantom, out)


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sensecare.cli", "phantom", *args], capture_output=True, text=True,
                          timeout=120, check=False)


def test_cli_writes_a_series_and_refuses_bad_arguments(tmp_path: Path) -> None:
    out = tmp_path / "cli"
    done = _cli("--out", str(out), "--seed", "9", "--matrix", "64", "--slices", "16", "--thickness", "5",
                "--kernel", "sharp", "--lesions", "solid:15", "--diffuse", "0.05")
    assert done.returncode == 0, done.stderr
    assert "wrote 16 slices" in done.stderr and "1 lesion" in done.stderr
    assert len(list(out.glob("*.dcm"))) == 16 and (out / "masks.npz").exists()
    truth = json.loads((out / "ground_truth.json").read_text())
    assert truth["spec"]["kernel"] == "sharp" and len(truth["lesions"]) == 1
    bad = _cli("--out", str(tmp_path / "bad"), "--thickness", "20")
    assert bad.returncode != 0
    assert "Traceback" not in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    assert "thickness" in bad.stderr

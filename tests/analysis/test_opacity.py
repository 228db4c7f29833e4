"""Percent opacity, high opacity and the severity score on volumes with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from sensecare.analysis.grid import CoarseGrid
from sensecare.analysis.lobes import Lobe, approximate_lobes
from sensecare.analysis.opacity import dense_parenchyma, measure_opacity
from sensecare.analysis.report import LesionReport, LungOpacity, Urgency
from sensecare.analysis.triage import flags_for, urgency_for

SPACING = (1.0, 1.0, 2.0)  # x, y, z mm


def _lungs(shape=(60, 120, 160)) -> tuple[np.ndarray, np.ndarray]:
    """HU with two ellipsoidal lungs at -860 +- 25 HU inside soft tissue, and their labels."""
    rng = np.random.default_rng(7)
    z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    hu = np.full(shape, 40.0, dtype=np.float32)
    lungs = np.zeros(shape, dtype=np.uint8)
    for label, cx in ((1, 45), (2, 115)):  # right lung at smaller x (LPS x increases to the left)
        inside = ((x - cx) / 32.0) ** 2 + ((y - 60) / 50.0) ** 2 + ((z - 30) / 27.0) ** 2 <= 1
        lungs[inside] = label
    hu[lungs > 0] = -860
    hu += rng.normal(0, 25, shape).astype(np.float32)
    return hu, lungs


def _add_vessels(hu: np.ndarray, lungs: np.ndarray) -> None:
    """Thin bright tubes (2-3 mm across) running through both lungs, like peripheral vessels."""
    z, y, x = np.ogrid[: hu.shape[0], : hu.shape[1], : hu.shape[2]]
    for cy, cx in ((40, 40), (70, 55), (50, 110), (80, 125)):
        tube = ((y - cy) ** 2 + (x - cx) ** 2 <= 1.5**2) & (lungs > 0)
        hu[tube] = 40


def test_clean_lungs_with_vessels_score_zero() -> None:
    hu, lungs = _lungs()
    _add_vessels(hu, lungs)
    result = measure_opacity(hu, SPACING, lungs, lungs > 0)
    assert result.summary.percent_opacity < 1.0
    assert result.summary.severity_score == 0


@pytest.mark.parametrize("ggo_hu, high", [(-600, False), (-50, True)])
def test_a_patch_of_known_size_is_measured(ggo_hu: float, high: bool) -> None:
    hu, lungs = _lungs()
    _add_vessels(hu, lungs)
    region = lungs > 0
    patch = np.zeros_like(region)
    patch[10:40, 30:90, 20:70] = True
    patch &= lungs == 1
    hu[patch] = ggo_hu + np.random.default_rng(3).normal(0, 25, int(patch.sum()))
    expected = 100.0 * patch.sum() / region.sum()
    expected_right = 100.0 * patch.sum() / (lungs == 1).sum()
    summary = measure_opacity(hu, SPACING, lungs, region).summary
    assert summary.percent_opacity == pytest.approx(expected, abs=2.0)
    assert summary.percent_opacity_right == pytest.approx(expected_right, abs=4.0)
    assert summary.percent_opacity_left < 1.0
    if high:
        assert summary.percent_high_opacity == pytest.approx(expected, abs=2.0)
    else:
        assert summary.percent_high_opacity < 0.5
    assert 1 <= summary.severity_score <= 8
    assert sum(summary.lobe_scores[name] for name in ("LUL", "LLL")) == 0


def test_detected_lesions_count_as_opacity_even_when_small() -> None:
    hu, lungs = _lungs()
    lesion = np.ones((3, 3, 3), dtype=bool)  # below the opening's size: only the lesion list adds it
    hu[30:33, 60:63, 40:43] = 30
    without = measure_opacity(hu, SPACING, lungs, lungs > 0).summary.percent_opacity
    with_lesion = measure_opacity(hu, SPACING, lungs, lungs > 0, lesion_masks=[(lesion, (30, 60, 40))]).summary
    assert with_lesion.percent_opacity > without
    assert with_lesion.percent_high_opacity > 0


def test_the_parenchyma_computed_first_gives_the_same_scores() -> None:
    """The pipeline measures the parenchyma before the findings (to weigh them) and hands it on."""
    hu, lungs = _lungs()
    hu[10:40, 30:70, 20:60] = np.where(lungs[10:40, 30:70, 20:60] > 0, -600.0, hu[10:40, 30:70, 20:60])
    lesion = np.ones((3, 3, 3), dtype=bool)
    parenchyma = dense_parenchyma(hu, SPACING, lungs, lungs > 0)
    assert 0.0 < parenchyma.percent_opacity < 100.0
    reused = measure_opacity(hu, SPACING, lungs, lungs > 0, lesion_masks=[(lesion, (30, 60, 100))], parenchyma=parenchyma)
    fresh = measure_opacity(hu, SPACING, lungs, lungs > 0, lesion_masks=[(lesion, (30, 60, 100))])
    assert reused.summary == fresh.summary
    assert reused.summary.percent_opacity >= parenchyma.percent_opacity


def _notch(lungs: np.ndarray, x: slice) -> tuple[slice, slice, slice]:
    """A 16 x 8 mm notch through 40 mm of the right lung at columns ``x``, cut out of the lung label."""
    notch = (slice(20, 40), slice(52, 68), x)
    lungs[notch] = 0
    return notch


def test_mediastinal_side_of_the_region_is_not_lung_but_pleural_pockets_are() -> None:
    """The region closes concavities on both sides of a lung.  Soft tissue in a concavity facing
    the mediastinum (the hilum: vessels and bronchi) is neither opacity nor lung volume; a dense
    pocket against the chest wall (a pleural-based consolidation) is both."""
    hu, lungs = _lungs()
    right = lungs == 1
    medial = _notch(lungs, slice(70, 78))  # right lung spans x 13-77; the left lung starts at 83
    lateral = _notch(lungs, slice(13, 21))
    region = (lungs > 0) | right
    for notch in (medial, lateral):
        hu[notch] = np.where(right[notch], 40.0, hu[notch])
    result = measure_opacity(hu, SPACING, lungs, region)
    pocket = np.zeros_like(region)
    pocket[lateral] = right[lateral]
    assert not result.lung[medial].any() and not result.opacity[medial].any()
    assert result.lung[pocket].mean() >= 0.9  # the pocket's corners next to lung rows are in its shadow
    expected = 100.0 * pocket.sum() / ((lungs > 0) | pocket).sum()
    assert result.summary.percent_opacity == pytest.approx(expected, abs=0.3)
    assert result.summary.percent_high_opacity == pytest.approx(expected, abs=0.3)


def test_solid_septa_inside_ground_glass_are_counted() -> None:
    """Crazy paving: thin solid lines inside ground glass are part of the opacity (they are
    embedded, not vessels in aerated lung), so the patch counts whole."""
    hu, lungs = _lungs()
    _add_vessels(hu, lungs)
    patch = np.zeros(lungs.shape, dtype=bool)
    patch[10:40, 30:90, 20:70] = True
    patch &= lungs == 1
    hu[patch] = -620.0
    septa = patch.copy()
    septa[:, :, ::5] &= True
    septa[:, :, [i for i in range(lungs.shape[2]) if i % 5]] = False
    hu[septa] = 40.0
    summary = measure_opacity(hu, SPACING, lungs, lungs > 0).summary
    assert summary.percent_opacity == pytest.approx(100.0 * patch.sum() / (lungs > 0).sum(), abs=2.0)


@pytest.fixture(scope="module")
def clear_phantom():  # type: ignore[no-untyped-def]
    """A phantom chest without diffuse disease or lesions, its lung segmentation, and its truth."""
    from sensecare.analysis.lungs import segment_lungs
    from sensecare.dicom.volume import Volume
    from sensecare.phantom import PhantomSpec, generate_phantom

    phantom = generate_phantom(PhantomSpec(seed=11, matrix=128, slice_thickness_mm=2.5, size="medium", lesions=()))
    volume = Volume(
        array=phantom.hu, spacing=phantom.spacing, origin=phantom.origin, direction=np.eye(3),
        series_instance_uid="1.2.3", study_instance_uid="1.2",
        sop_instance_uids=tuple(f"1.2.3.{k}" for k in range(phantom.hu.shape[0])),
    )
    return phantom, segment_lungs(volume)


def test_clear_lungs_of_a_phantom_score_near_zero(clear_phantom) -> None:  # type: ignore[no-untyped-def]
    """Vessels, the hilum and airway walls are not opacity: a phantom with no disease scores
    below 3 % (it scored 5-7 % when the closed region and -700 HU vessel halos were counted)."""
    phantom, lungs = clear_phantom
    assert phantom.percent_opacity == 0.0
    result = measure_opacity(phantom.hu, phantom.spacing, lungs.lungs, lungs.region)
    assert result.summary.percent_opacity < 3.0
    assert result.summary.percent_high_opacity < 1.0
    # the scored lung volume is the lungs, not the closed region around them
    truth_ml = float(np.count_nonzero(phantom.lungs)) * float(np.prod(phantom.spacing)) / 1000.0
    scored_ml = float(np.count_nonzero(result.lung)) * float(np.prod(phantom.spacing)) / 1000.0
    assert scored_ml == pytest.approx(truth_ml, rel=0.05)


def test_lobes_split_each_lung_and_follow_orientation() -> None:
    _, lungs = _lungs()
    lobes = approximate_lobes(lungs, superior_axis_sign=1.0, posterior_axis_sign=1.0)
    assert set(np.unique(lobes[lungs == 1])) == {Lobe.RUL, Lobe.RML, Lobe.RLL}
    assert set(np.unique(lobes[lungs == 2])) == {Lobe.LUL, Lobe.LLL}
    # top slice is upper lobe, bottom slice lower lobe; flipping the z axis swaps them
    top = lobes[55][lungs[55] == 1]
    assert np.all(top == Lobe.RUL)
    flipped = approximate_lobes(lungs, superior_axis_sign=-1.0, posterior_axis_sign=1.0)
    assert np.all(flipped[55][lungs[55] == 1] == Lobe.RLL)


def test_coarse_grid_round_trip() -> None:
    mask = np.zeros((7, 9, 11), dtype=bool)
    mask[2:5, 3:8, 4:10] = True
    grid = CoarseGrid.for_spacing(mask.shape, (0.7, 0.7, 1.25), 1.5)
    assert grid.factors == (1, 2, 2)
    fraction = grid.fraction(mask)
    assert fraction.shape == grid.coarse_shape
    assert grid.upsample(fraction >= 0.5).shape == mask.shape
    assert grid.mean(np.ones(mask.shape)).min() == 1.0


def _lesion(type_: str, long_axis: float, confidence: float = 0.9) -> LesionReport:
    return LesionReport(
        id=1, type=type_, confidence=confidence, center_lps_mm=(0, 0, 0), bbox_lps_mm_min=(0, 0, 0),
        bbox_lps_mm_max=(1, 1, 1), volume_ml=1.0, long_axis_mm=long_axis, short_axis_mm=long_axis / 2,
        mean_hu=20.0, slice_index=0,
    )


def _opacity(po: float) -> LungOpacity:
    return LungOpacity(
        percent_opacity=po, percent_high_opacity=0, percent_opacity_right=po, percent_opacity_left=po,
        percent_high_opacity_right=0, percent_high_opacity_left=0, lobe_percent_opacity={}, lobe_scores={},
        severity_score=0, lobe_method="test",
    )


@pytest.mark.parametrize(
    "lesions, po, flags, urgency",
    [
        ([], 0.5, [], Urgency.ROUTINE),
        ([_lesion("solid", 6.0)], 0.5, [], Urgency.ROUTINE),
        ([_lesion("solid", 9.0)], 0.5, ["nodule_ge_8mm"], Urgency.PRIORITY),
        ([_lesion("solid", 9.0, confidence=0.2)], 0.5, [], Urgency.ROUTINE),
        ([_lesion("part_solid", 7.0)], 0.5, ["part_solid_ge_6mm"], Urgency.PRIORITY),
        ([_lesion("mass", 45.0)], 0.5, ["mass", "nodule_ge_8mm"], Urgency.URGENT),
        ([], 12.0, ["diffuse_opacity"], Urgency.PRIORITY),
        ([], 30.0, ["diffuse_opacity", "severe_opacity"], Urgency.URGENT),
    ],
)
def test_flags_and_urgency(lesions, po, flags, urgency) -> None:  # type: ignore[no-untyped-def]
    got = flags_for(lesions, _opacity(po))
    assert got == flags
    assert urgency_for(got) is urgency


def test_a_blurred_ground_glass_patch_is_measured_to_its_half_density_edge(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Viral-pneumonia ground glass fades into the lung; its extent is where it is half dense."""
    from scipy import ndimage

    from sensecare.analysis import opacity

    hu, lungs = _lungs()
    region = lungs > 0
    z, y, x = np.ogrid[: hu.shape[0], : hu.shape[1], : hu.shape[2]]
    ball = (((x - 45) / 14.0) ** 2 + ((y - 60) / 14.0) ** 2 + ((z - 30) / 7.0) ** 2 <= 1) & region
    density = ndimage.gaussian_filter(ball.astype(np.float32), (1.5, 3.0, 3.0))  # a ~3 mm blurred margin
    hu = hu + (-620.0 + 860.0) * density
    truth = 100.0 * np.count_nonzero(density >= 0.5) / region.sum()
    followed = measure_opacity(hu, SPACING, lungs, region).summary.percent_opacity
    monkeypatch.setattr(opacity, "EDGE_HU", opacity.OPACITY_HU)  # no margin to follow
    cut_at_700 = measure_opacity(hu, SPACING, lungs, region).summary.percent_opacity
    assert cut_at_700 < followed
    assert abs(followed - truth) < abs(cut_at_700 - truth)
    assert followed == pytest.approx(truth, rel=0.15)

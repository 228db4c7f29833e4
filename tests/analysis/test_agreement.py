"""When a redrawn mask is the same finding: the rule that keeps a finding on its lesion."""

from __future__ import annotations

import numpy as np

from sensecare.analysis.agreement import centroid_mm, holds, same_finding, share_inside

SPACING = (0.7, 0.7, 1.25)  # x, y, z mm


def _ball(shape: tuple[int, int, int], centre: tuple[float, float, float], radius_mm: float) -> np.ndarray:
    z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    return (((z - centre[0]) * SPACING[2]) ** 2 + ((y - centre[1]) * SPACING[1]) ** 2
            + ((x - centre[2]) * SPACING[0]) ** 2) <= radius_mm**2


def test_a_good_outline_of_a_juxtavascular_nodule_agrees_through_the_detection_peak() -> None:
    """The detection runs along the vessel (its centroid 10 mm off the nodule); the outline is the nodule."""
    shape = (40, 60, 100)
    nodule = _ball(shape, (20, 30, 30), 6.0)
    z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    vessel = (((z - 20) * SPACING[2]) ** 2 + ((y - 30) * SPACING[1]) ** 2 <= 2.5**2) & (x >= 30) & (x < 90)
    detection = nodule | vessel
    peak = (20, 30, 30)
    origin = (0, 0, 0)
    apart = np.linalg.norm(centroid_mm(nodule, origin, SPACING) - centroid_mm(detection, origin, SPACING))
    assert apart > 6.0  # farther than the nodule's radius: the centroid rule alone rejects it
    assert not same_finding(nodule, origin, detection, origin, SPACING, radius_mm=6.0)
    assert same_finding(nodule, origin, detection, origin, SPACING, radius_mm=6.0, anchor=peak)


def test_a_leak_is_not_the_same_finding_even_through_the_peak() -> None:
    shape = (60, 80, 80)
    nodule = _ball(shape, (30, 40, 40), 5.0)
    leak = _ball(shape, (30, 40, 52), 14.0) | nodule  # into the chest wall: 20 times the volume
    assert holds(leak, (0, 0, 0), (30, 40, 40))
    assert not same_finding(leak, (0, 0, 0), nodule, (0, 0, 0), SPACING, radius_mm=5.0, anchor=(30, 40, 40))
    # A larger volume factor (the network's redrawing of a too-small outline) still sees the move.
    assert not same_finding(leak, (0, 0, 0), nodule, (0, 0, 0), SPACING, radius_mm=5.0, volume_factor=40.0)


def test_a_concentric_redrawing_agrees_within_the_volume_factor_and_offsets_count() -> None:
    shape = (50, 50, 50)
    small, large = _ball(shape, (25, 25, 25), 4.0), _ball(shape, (25, 25, 25), 8.0)
    assert not same_finding(large, (0, 0, 0), small, (0, 0, 0), SPACING, radius_mm=4.0)  # 8 times the volume
    assert same_finding(large, (0, 0, 0), small, (0, 0, 0), SPACING, radius_mm=4.0, volume_factor=10.0)
    box = tuple(slice(int(a.min()), int(a.max()) + 1) for a in np.nonzero(small))
    cropped, offset = small[box], tuple(s.start for s in box)
    assert np.allclose(centroid_mm(cropped, offset, SPACING), centroid_mm(small, (0, 0, 0), SPACING))
    assert holds(cropped, offset, (25, 25, 25)) and not holds(cropped, offset, (0, 0, 0))
    shifted = (offset[0], offset[1], offset[2] + 20)  # 14 mm along x
    assert not same_finding(cropped, shifted, small, (0, 0, 0), SPACING, radius_mm=4.0)


def test_an_outline_holding_the_peak_but_leaking_out_of_the_detection_is_not_the_same() -> None:
    """A mass's outline ran into the hilum: it holds the peak and its volume is within 3x, but most of it is outside."""
    shape = (60, 120, 120)
    detection = _ball(shape, (30, 60, 40), 10.0)
    leak = _ball(shape, (30, 60, 66), 12.0) | detection  # centred 11.6 mm off
    peak = (30, 60, 40)
    assert holds(leak, (0, 0, 0), peak)
    assert 1.0 < np.count_nonzero(leak) / np.count_nonzero(detection) < 3.0
    assert share_inside(leak, (0, 0, 0), detection, (0, 0, 0)) < 0.5
    assert not same_finding(leak, (0, 0, 0), detection, (0, 0, 0), SPACING, radius_mm=10.0, anchor=peak)


def test_share_inside_counts_overlap_of_masks_cropped_at_different_offsets() -> None:
    a = np.ones((4, 4, 4), bool)
    assert share_inside(a, (0, 0, 0), a, (0, 0, 0)) == 1.0
    assert share_inside(a, (0, 0, 0), a, (2, 0, 0)) == 0.5
    assert share_inside(a, (0, 0, 0), a, (0, 4, 0)) == 0.0
    assert share_inside(np.zeros((2, 2, 2), bool), (0, 0, 0), a, (0, 0, 0)) == 0.0

"""Mask helpers of sensecare.masks (shared by the DICOM encoders and the analysis)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from sensecare.masks import bounding_box


def test_bounding_box_agrees_with_find_objects_on_sparse_and_empty_masks() -> None:
    rng = np.random.default_rng(1)
    for _ in range(300):
        mask = np.zeros(tuple(int(n) for n in rng.integers(1, 12, 3)), bool)
        for _ in range(int(rng.integers(0, 4))):
            mask[tuple(int(rng.integers(0, n)) for n in mask.shape)] = True
        found = ndimage.find_objects(mask.astype(np.uint8))
        assert bounding_box(mask) == (found[0] if found else None)


def test_bounding_box_of_labels_takes_every_nonzero_label() -> None:
    labels = np.zeros((5, 6, 7), np.uint8)
    labels[1, 2, 3] = 1
    labels[3, 4, 6] = 2
    assert bounding_box(labels) == (slice(1, 4), slice(2, 5), slice(3, 7))

"""Phantoms as the lesion-stage tests use them: an in-memory volume and where its truth lesions were found."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def phantom_volume(spec):  # type: ignore[no-untyped-def]
    """``(phantom, volume)`` of ``spec`` without writing DICOM (identity orientation, made-up UIDs)."""
    from sensecare.dicom.volume import Volume
    from sensecare.phantom.generate import generate_phantom

    ph = generate_phantom(spec)
    volume = Volume(array=ph.hu, spacing=ph.spacing, origin=ph.origin, direction=np.eye(3), series_instance_uid="1.2.3",
                    study_instance_uid="1.2",
                    sop_instance_uids=tuple(f"1.2.3.{k + 1}" for k in range(ph.hu.shape[0])))
    return ph, volume


def hit_ranks(phantom, volume, found: Sequence) -> dict[int, list[int]]:  # type: ignore[no-untyped-def]
    """Per truth lesion id, the positions in ``found`` (best first) of the findings that hit it (LUNA16 rule)."""
    from sensecare.analysis.measure import measure_lesion
    from sensecare.evaluation.matching import Truth

    centres = [measure_lesion(volume, f.mask, f.offset).center_lps_mm for f in found]
    ranks = {}
    for truth in phantom.truth:
        t = Truth(id=truth.id, type=truth.type, diameter_mm=truth.diameter_mm, center_lps_mm=truth.center_lps_mm,
                  bbox_lps_mm_min=truth.bbox_lps_mm_min, bbox_lps_mm_max=truth.bbox_lps_mm_max,
                  long_axis_mm=truth.long_axis_mm)
        ranks[truth.id] = [k for k, c in enumerate(centres) if t.is_hit_by(c)]
    return ranks

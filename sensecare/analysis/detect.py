"""The lesion stage: where the voxel classifier says lesion, segment, type and score it.

1. :mod:`sensecare.analysis.heatmap` gives every region voxel of a ~2 mm grid
   a lesion probability, and where its bundle is installed the dense network
   of :mod:`sensecare.analysis.lung_cnn` gives another; the higher of the two
   counts (:func:`lesion_probability`). Each connected region above the
   voxel classifier's detection threshold is one detection.
2. :mod:`sensecare.analysis.ranker` looks at each detection as a whole and
   says how likely it is a lesion; where the patch verifier is given
   (:mod:`sensecare.analysis.verifier`), the ranker's best ``max_candidates``
   are also looked at as 3D patches, and the two probabilities make the
   detection's *second score* (:meth:`LesionVerifier.combine`; the ranker's
   alone without a verifier). The best (at most the ranker's
   ``max_findings``) go on, best first. Without a ranker, the peak
   probability ranks them.
3. Each detection is segmented at full resolution by the classical
   segmentation (:func:`sensecare.analysis.lesions.segment_seeds`), seeded at
   its peak. That outline is kept when it describes the same thing as the
   detection (volume within a factor of three, and centred within the
   detection's radius or holding its peak while lying mostly inside it:
   :mod:`sensecare.analysis.agreement`); when it leaked into a vessel or lost
   the lesion, the detection's own region is the mask (coarser, but in the
   right place).
4. Two detections whose masks are mostly one lesion are merged (the better
   score stays), and the list is sorted by score.

The confidence reported is the geometric mean of the peak voxel probability
and the second score (:func:`confidence_of`; the peak alone without a ranker),
all trained on phantoms with known lesions (``models/lesion_heatmap``,
``models/lesion_ranker``, ``models/lesion_verifier``). Each finding's
``features`` keep ``heatmap_score``, ``ranker_score``, ``verifier_score`` and
``second_score``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import numpy as np
from scipy import ndimage

from sensecare.analysis.agreement import same_finding
from sensecare.analysis.candidates import Candidate
from sensecare.analysis.heatmap import (
    FeatureMaps,
    HeatmapDetection,
    LesionHeatmapModel,
    detections_from,
    voxel_features,
)
from sensecare.analysis.lesions import (
    Lesion,
    LesionType,
    merge_overlapping,
    segment_seeds,
    solid_type,
)
from sensecare.analysis.lung_cnn import LungLesionCnn, fuse_probability
from sensecare.analysis.measure import axial_diameters
from sensecare.analysis.ranker import LesionRanker, describe
from sensecare.analysis.verifier import LesionVerifier, PatchSampler
from sensecare.dicom.volume import Volume

__all__ = ["detect_lesions", "lesion_probability", "second_scores"]

#: The classical outline is trusted when it is the detection redrawn
#: (:func:`sensecare.analysis.agreement.same_finding`): its centroid lies within this many
#: detection radii of the detection's, or it holds the peak and lies mostly inside the detection.
AGREEMENT_RADII = 1.0
#: Mean HU below which a fallback mask is ground glass (Fleischner: GGO does not hide vessels).
GGO_MEAN_HU = -300.0


def lesion_probability(maps: FeatureMaps, spacing_xyz: tuple[float, float, float], model: LesionHeatmapModel,
                       network: LungLesionCnn | None = None) -> np.ndarray:
    """The working grid's lesion probability: the voxel classifier's, fused with the dense network's."""
    probability = model.probability_map(maps)
    if network is None or maps.image is None:
        return probability
    gx, gy, gz = maps.grid.spacing_xyz(spacing_xyz)
    return fuse_probability(probability, network.probability_map(maps.image, maps.inside, (gz, gy, gx)))


def detect_lesions(volume: Volume, lungs, model: LesionHeatmapModel,  # type: ignore[no-untyped-def]
                   ranker: LesionRanker | None = None, network: LungLesionCnn | None = None,
                   *, verifier: LesionVerifier | None = None, min_confidence: float = 0.0) -> list[Lesion]:
    """Lesions of ``volume`` inside ``lungs.region``, best first (see the module docstring).

    Detections whose confidence is below ``min_confidence`` are not segmented at all (the
    pipeline would not report them): a finding's confidence is known before its outline,
    each seed is segmented on its own, and merging only ever drops the less confident of two
    findings, so the findings at or above it are the same either way.
    """
    spacing = tuple(float(s) for s in volume.spacing)
    maps = voxel_features(volume.array, lungs.region, spacing, lungs.lungs)  # type: ignore[arg-type]
    if maps is None:
        return []
    probability = lesion_probability(maps, spacing, model, network)  # type: ignore[arg-type]
    detections = detections_from(probability, maps, spacing,  # type: ignore[arg-type]
                                 threshold=model.threshold, min_volume_mm3=model.min_volume_mm3,
                                 max_detections=None if ranker else model.max_detections)
    if ranker is None:
        scores = [d.score for d in detections]
        opinions: list[dict[str, float]] = [{} for _ in detections]
    else:
        ranked = ranker.score(describe(detections, probability, maps, spacing))  # type: ignore[arg-type]

        def verify(chosen: list[int]) -> np.ndarray:
            sampler = PatchSampler(volume.array, lungs.region, spacing, maps, probability)  # type: ignore[arg-type]
            return verifier.score(sampler.for_detections([detections[i] for i in chosen]))  # type: ignore[union-attr]

        order, verified, second = second_scores(
            ranked, ranker.min_score, ranker.max_findings,
            verify=verify if verifier is not None else None,
            max_candidates=verifier.max_candidates if verifier is not None else 0,
            combine=verifier.combine if verifier is not None else None)
        detections = [detections[i] for i in order]
        opinions = [{"ranker_score": float(ranked[i]), **({"verifier_score": verified[i]} if i in verified else {}),
                     "second_score": second[i]} for i in order]
        scores = [confidence_of(d.score, opinion["second_score"]) for d, opinion in zip(detections, opinions)]
    wanted = [i for i, score in enumerate(scores) if score >= min_confidence]
    detections = [detections[i] for i in wanted]
    scores = [scores[i] for i in wanted]
    opinions = [opinions[i] for i in wanted]
    seeds = [
        Candidate(d.peak, max(d.radius_mm, 2.0), "heatmap", 0.0, 0.0, max(3.0 * d.radius_mm, 10.0), 0.0)
        for d in detections
    ]
    outlines = segment_seeds(volume, lungs.region, seeds, lungs=lungs.lungs)
    lesions = []
    for detection, score, opinion, outline in zip(detections, scores, opinions, outlines):
        lesion = outline if outline is not None and _agrees(outline, detection, spacing) else None
        if lesion is None:
            lesion = _from_detection(detection, volume, lungs.region, spacing)
            if lesion is None:
                continue
        features = {**lesion.features, "classical_confidence": round(float(lesion.confidence), 4),
                    "heatmap_score": round(detection.score, 4),
                    "heatmap_radius_mm": round(detection.radius_mm, 2),
                    **{name: round(value, 4) for name, value in opinion.items()},
                    "classical_outline": 1.0 if lesion is outline else 0.0}
        lesions.append(dataclasses.replace(lesion, confidence=score, features=features))
    return merge_overlapping(lesions)


def second_scores(ranked: np.ndarray, min_score: float, max_findings: int, *,
                  verify: Callable[[list[int]], np.ndarray] | None = None, max_candidates: int = 0,
                  combine: Callable[[float, float], float] | None = None
                  ) -> tuple[list[int], dict[int, float], dict[int, float]]:
    """Which detections go on, best first: ``(order, verifier probability, second score)`` by index.

    Detections with a ranker probability of at least ``min_score`` are ordered by it; with a
    verifier, its best ``max_candidates`` are verified (``verify`` gets their indices) and
    re-ordered by ``combine(ranker, verifier)``; at most ``max_findings`` are kept. One copy,
    shared with the verifier's training script, which picks the weight on this very order.
    """
    order = [int(i) for i in np.argsort(-ranked, kind="stable") if ranked[i] >= min_score]
    verified: dict[int, float] = {}
    if verify is not None and combine is not None:
        order = order[:max_candidates]
        verified = dict(zip(order, (float(v) for v in verify(order))))
        second = {i: combine(float(ranked[i]), verified[i]) for i in order}
    else:
        second = {i: float(ranked[i]) for i in order}
    return sorted(order, key=lambda i: -second[i])[:max_findings], verified, second


def confidence_of(peak_probability: float, ranker_probability: float) -> float:
    """The finding's confidence: the geometric mean of the voxel classifier's peak and the ranker.

    Neither alone ranked best when this was chosen (development phantoms 3950-3969, with a voxel
    classifier retrained that day: CPM 0.56 for the peak, 0.52 for the ranker, 0.57 for their
    geometric mean): the peak saturates near 1.0 on vessel junctions, and the ranker's
    probabilities are small for every finding (lesions are rare among detections), so alone many
    fall below the reporting threshold.
    """
    return float(np.sqrt(max(peak_probability, 0.0) * max(ranker_probability, 0.0)))


def _agrees(lesion: Lesion, detection: HeatmapDetection, spacing_xyz: tuple[float, ...]) -> bool:
    return same_finding(lesion.mask, lesion.offset, detection.mask, detection.offset, spacing_xyz,
                        radius_mm=AGREEMENT_RADII * detection.radius_mm, anchor=detection.peak)


def _from_detection(detection: HeatmapDetection, volume: Volume, region: np.ndarray,
                    spacing_xyz: tuple[float, ...]) -> Lesion | None:
    """A lesion whose mask is the detection's own region (inside the lesion region)."""
    z0, y0, x0 = detection.offset
    dz, dy, dx = detection.mask.shape
    window = (slice(z0, z0 + dz), slice(y0, y0 + dy), slice(x0, x0 + dx))
    mask = detection.mask & region[window]
    if not mask.any():
        return None
    box = ndimage.find_objects(mask.astype(np.uint8))[0]
    mask = mask[box]
    offset = (z0 + box[0].start, y0 + box[1].start, x0 + box[2].start)
    hu = volume.array[tuple(slice(o, o + n) for o, n in zip(offset, mask.shape))][mask]
    mean_hu = float(hu.mean())
    sx, sy, _ = spacing_xyz
    long_axis = max((axial_diameters(mask[k], (sx, sy))[0] for k in range(mask.shape[0]) if mask[k].any()), default=0.0)
    kind = LesionType.GROUND_GLASS if mean_hu < GGO_MEAN_HU else solid_type(long_axis, mean_hu)
    voxel_mm3 = float(np.prod(spacing_xyz))
    features = {"mean_hu": mean_hu, "long_axis_mm": long_axis,
                "eq_diameter_mm": 2.0 * (3.0 * np.count_nonzero(mask) * voxel_mm3 / (4.0 * math.pi)) ** (1.0 / 3.0)}
    return Lesion(mask.copy(), offset, kind, detection.score, features)  # type: ignore[arg-type]

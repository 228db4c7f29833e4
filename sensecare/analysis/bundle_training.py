"""Training helpers shared by the bundles' scripts (``models/lesion_heatmap``, ``models/lesion_ranker``,
``models/lesion_cnn``).

The MLP bundles train a MONAI ``FullyConnectedNet`` on standardised rows with
the same recipe (binary cross-entropy, AdamW, one-cycle schedule, seeded
batches) and report a rank AUC; every script reads its phantoms back the way
the analysis reads a series. One copy keeps the bundles trained alike.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["FP_RATES", "PhantomDetections", "auc", "fit_binary", "label_detections", "log", "make_cache",
           "phantom_detections", "read_back_phantom", "seeds_of", "sensitivities", "training_spec"]

#: False positives per scan at which the detection bundles report lesion sensitivity (the CPM points).
FP_RATES = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)


def seeds_of(recipe: dict, key: str) -> list[int]:
    """The seeds a recipe lists under ``key`` as ``{"first": F, "count": N}``."""
    return list(range(recipe[key]["first"], recipe[key]["first"] + recipe[key]["count"]))


def is_enriched(seed: int, recipe: dict) -> bool:
    """Whether the seed is one of the recipe's lesion-enriched training phantoms (:func:`training_spec`)."""
    return "enriched_train_seeds" in recipe and seed in seeds_of(recipe, "enriched_train_seeds")


def cache_file(seed: int, cache: Path, recipe: dict) -> Path:
    """Where a training script caches what it took from the seed's phantom."""
    return cache / f"{'enriched' if is_enriched(seed, recipe) else 'seed'}-{seed}.npz"


def logit(probability: float) -> float:
    """Log-odds: a prior shift between a training base rate and the population's is a difference of two."""
    return float(np.log(probability / (1.0 - probability)))


def make_cache(make: Callable[[int, Any, dict], str], seeds: list[int], cache, recipe: dict, jobs: int) -> float:  # type: ignore[no-untyped-def]
    """Run ``make(seed, cache, recipe)`` for every seed in ``jobs`` processes, logging each; seconds taken."""
    from concurrent.futures import ProcessPoolExecutor

    started = time.perf_counter()
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        for message in pool.map(make, seeds, [cache] * len(seeds), [recipe] * len(seeds)):
            log(message)
    return time.perf_counter() - started


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def read_back_phantom(spec, label: str):  # type: ignore[no-untyped-def]
    """``(phantom, volume, lungs)``: the phantom of ``spec`` written as DICOM, read back and its lungs
    segmented exactly as the analysis does, so training sees what inference will."""
    import tempfile

    from sensecare.analysis.lungs import segment_lungs
    from sensecare.analysis.pipeline import read_series
    from sensecare.archive.loader import find_dicom_files
    from sensecare.phantom import generate_phantom, write_phantom

    phantom = generate_phantom(spec)
    with tempfile.TemporaryDirectory(prefix="sensecare-train-") as tmp:
        folder = write_phantom(phantom, Path(tmp) / "series")
        volume, _ = read_series(find_dicom_files(folder).dicom)
    if volume.array.shape != phantom.lesions.shape:
        raise RuntimeError(f"{label}: the volume read back does not match the phantom's masks")
    return phantom, volume, segment_lungs(volume)


@dataclass(frozen=True)
class PhantomDetections:
    """One evaluation-population phantom as the detection stage sees it (see :func:`phantom_detections`)."""

    phantom: Any
    volume: Any
    lungs: Any
    spacing: tuple[float, float, float]
    maps: Any
    probability: np.ndarray
    detections: list


def training_spec(seed: int, *, enriched: bool = False):  # type: ignore[no-untyped-def]
    """The seed's phantom spec: the evaluation's population (``PhantomRecipe``), or with ``enriched``
    the same acquisitions and bodies holding 4-7 lesions, mostly sub-solid
    (:func:`sensecare.phantom.lesions.enriched_lesion_specs`): a random phantom holds about one
    sub-solid nodule, too few for a classifier to learn them from a few dozen phantoms."""
    import dataclasses

    from sensecare.evaluation.run import PhantomRecipe
    from sensecare.phantom.lesions import enriched_lesion_specs

    spec = PhantomRecipe().spec_for(seed)
    if not enriched:
        return spec
    return dataclasses.replace(spec, lesions=enriched_lesion_specs(np.random.default_rng([int(seed), 23])))


def phantom_detections(seed: int, *, enriched: bool = False) -> PhantomDetections:
    """The seed's phantom (:func:`training_spec`) read back, its voxel features and
    the current voxel classifier's detections, found exactly as in the analysis but without a cap:
    what the second-stage bundles (ranker, verifier) train on."""
    from sensecare.analysis.heatmap import (
        LesionHeatmapModel,
        detections_from,
        voxel_features,
    )

    phantom, volume, lungs = read_back_phantom(training_spec(seed, enriched=enriched), f"seed {seed}")
    spacing = tuple(float(s) for s in volume.spacing)
    maps = voxel_features(volume.array, lungs.region, spacing, lungs.lungs)  # type: ignore[arg-type]
    model = LesionHeatmapModel("cpu")
    probability = model.probability_map(maps)  # type: ignore[arg-type]
    detections = detections_from(probability, maps, spacing, threshold=model.threshold,  # type: ignore[arg-type]
                                 min_volume_mm3=model.min_volume_mm3, max_detections=None)
    return PhantomDetections(phantom, volume, lungs, spacing, maps, probability, detections)  # type: ignore[arg-type]


def label_detections(detections, lesions: np.ndarray, positive_overlap: float) -> tuple[np.ndarray, np.ndarray]:  # type: ignore[no-untyped-def]
    """Per heatmap detection: 1 = lesion, 0 = none, -1 = ignored; and the lesion id of each positive.

    A detection is a lesion when its peak lies in one of the phantom's ``lesions`` (label
    volume) or at least ``positive_overlap`` of its mask does; none when it touches none;
    ignored when it touches one a little (neither a lesion nor a clean negative).
    """
    labels = np.zeros(len(detections), np.int8)
    lesion_of = np.zeros(len(detections), np.int16)
    for i, detection in enumerate(detections):
        window = tuple(slice(o, o + n) for o, n in zip(detection.offset, detection.mask.shape))
        inside = lesions[window][detection.mask]
        at_peak = int(lesions[detection.peak])
        ids, counts = np.unique(inside[inside > 0], return_counts=True)
        share = counts.sum() / max(1, inside.size)
        if at_peak or share >= positive_overlap:
            labels[i] = 1
            lesion_of[i] = at_peak or int(ids[np.argmax(counts)])
        elif share > 0:
            labels[i] = -1
    return labels, lesion_of


def sensitivities(scores: np.ndarray, data: dict[str, np.ndarray], min_diameter_mm: float = 5.0) -> list[float]:
    """Share of lesions (>= min diameter) with a detection scoring above the level of k FPs per scan.

    ``data`` holds per detection ``y`` (labels), ``case`` (seed) and ``lesion`` (id), and
    ``truth`` rows of (seed, lesion id, diameter mm); one value per :data:`FP_RATES`.
    """
    scans = len(np.unique(data["truth"][:, 0]))
    included = {(int(s), int(i)) for s, i, d in data["truth"] if d >= min_diameter_mm}
    negative_scores = np.sort(scores[data["y"] == 0])[::-1]
    out = []
    for rate in FP_RATES:
        allowed = int(rate * scans)
        level = negative_scores[allowed] if allowed < len(negative_scores) else -1.0
        found = {(int(c), int(les)) for c, les, y, s in zip(data["case"], data["lesion"], data["y"], scores)
                 if y == 1 and s > level}
        out.append(len(found & included) / max(1, len(included)))
    return out


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve from ranks (labels 1 = positive, anything else negative)."""
    order = np.argsort(scores)
    ranks = np.empty(len(scores))
    ranks[order] = np.arange(1, len(scores) + 1)
    pos = labels == 1
    n_pos, n_neg = pos.sum(), (~pos).sum()
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / max(1, n_pos * n_neg))


def fit_binary(model, rows: np.ndarray, labels: np.ndarray, *, iterations: int, batch_rows: int,  # type: ignore[no-untyped-def]
               learning_rate: float, weight_decay: float, seed: int, positive_weight: float = 1.0,
               log: Callable[[str], None] = print) -> float:
    """Train ``model`` (one logit out) on standardised ``rows``; returns the seconds it took.

    Leaves the model in eval mode.
    """
    import torch

    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=learning_rate, total_steps=iterations)
    xt = torch.from_numpy(rows)
    yt = torch.from_numpy(labels.astype(np.float32))
    loss_fn = torch.nn.BCEWithLogitsLoss(pos_weight=torch.tensor(float(positive_weight)))
    generator = torch.Generator().manual_seed(seed)
    started = time.perf_counter()
    model.train()
    for step in range(1, iterations + 1):
        batch = torch.randint(0, len(yt), (batch_rows,), generator=generator)
        loss = loss_fn(model(xt[batch])[:, 0], yt[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % 500 == 0 or step == iterations:
            log(f"step {step}/{iterations}: loss {loss.item():.4f}")
    model.eval()
    return time.perf_counter() - started

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
from typing import Any

import numpy as np

__all__ = ["auc", "fit_binary", "log", "make_cache", "read_back_phantom", "seeds_of"]


def seeds_of(recipe: dict, key: str) -> list[int]:
    """The seeds a recipe lists under ``key`` as ``{"first": F, "count": N}``."""
    return list(range(recipe[key]["first"], recipe[key]["first"] + recipe[key]["count"]))


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
    from pathlib import Path

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

#!/usr/bin/env python
"""Train the patch verifier of this bundle on the detections of synthetic phantoms.

Data recipe (``configs/train.json``): phantoms drawn by the evaluation's own
population (``sensecare.evaluation.run.PhantomRecipe``) from the seeds of
``models/lesion_ranker``, which the voxel classifier (``models/lesion_heatmap``)
was not trained on, so its detections here are what it gives on new scans.
Each phantom is written as DICOM and read back, its lungs segmented and its
heatmap detections found exactly as in the analysis (without a cap), and the
patches of each detection cut by ``sensecare.analysis.verifier.PatchSampler``.
Labels come from the phantom's lesion masks, as for the ranker: a lesion when
the peak lies in one or at least ``positive_overlap`` of the mask does, no
lesion when it touches none, ignored in between. Each lesion detection also
gives ``jittered_copies`` patches centred up to ``jitter_mm`` away (training
only), so the network does not learn that lesions sit exactly mid-patch.
The ``enriched_train_seeds`` add phantoms of the same population holding 4-7
lesions, mostly sub-solid (``training_spec(seed, enriched=True)``), for
training only: calibration and validation use the population's phantoms.

Each phantom's patches are cached in ``--cache`` (``var/verifier-cache-v3`` by
default); a rerun only makes what is missing. Training: binary cross-entropy
on batches with ``positive_share`` lesions, random flips and in-plane
transposes, AdamW with a one-cycle schedule; the logit's shift from the
rebalanced classes back to the true prior (the population's share of lesions
among its original detections) is stored as ``prior_shift``.
Validation reports the detection AUC and the lesion sensitivity at 1/8 to 8
false positives per scan, for the verifier, the ranker, and their
combination. Results go into ``configs/metadata.json``.

Run from the repository root (about 70 minutes on a 2-core CPU)::

    .venv/bin/python models/lesion_verifier/scripts/train.py --jobs 2 [--device auto|cpu|cuda]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from pathlib import Path

import numpy as np

BUNDLE = Path(__file__).resolve().parents[1]
REPO = BUNDLE.parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from sensecare.analysis.bundle_training import cache_file, is_enriched


def patches_for_seed(seed: int, cache: Path, recipe: dict) -> str:
    """Make (or find) the cached patches of one phantom's detections."""
    out = cache_file(seed, cache, recipe)
    if out.exists():
        return f"seed {seed}: cached"
    import torch

    torch.set_num_threads(1)
    from sensecare.analysis.bundle_training import (
        label_detections,
        phantom_detections,
    )
    from sensecare.analysis.ranker import describe
    from sensecare.analysis.verifier import PatchSampler

    started = time.perf_counter()
    found = phantom_detections(seed, enriched=is_enriched(seed, recipe))
    phantom, volume, lungs, spacing = found.phantom, found.volume, found.lungs, found.spacing
    maps, probability, detections = found.maps, found.probability, found.detections
    descriptors = describe(detections, probability, maps, spacing)  # type: ignore[arg-type]
    labels, lesion_of = label_detections(detections, phantom.lesions, recipe["positive_overlap"])
    sampler = PatchSampler(volume.array, lungs.region, spacing, maps, probability)  # type: ignore[arg-type]
    patches = sampler.for_detections(detections)
    rng = np.random.default_rng([seed, 17])
    centres, copies_of = [], []
    for i in np.flatnonzero(labels == 1):
        for _ in range(recipe["jittered_copies"]):
            shift_mm = rng.uniform(-recipe["jitter_mm"], recipe["jitter_mm"], 3)
            centre = np.round(np.asarray(detections[i].peak) + shift_mm / np.array(spacing[::-1])).astype(int)
            centres.append(tuple(np.clip(centre, 0, np.array(volume.array.shape) - 1)))
            copies_of.append(i)
    jittered = sampler.patches(centres) if centres else np.zeros((0, *patches.shape[1:]), np.float32)
    truth = np.array([[t.id, t.diameter_mm] for t in phantom.truth], dtype=np.float32).reshape(-1, 2)
    np.savez_compressed(out.with_suffix(".tmp.npz"), patches=patches.astype(np.float16), labels=labels,
                        lesion=lesion_of, peak=np.array([d.score for d in detections], np.float32),
                        descriptors=descriptors, truth=truth,
                        jittered=jittered.astype(np.float16), jittered_of=np.array(copies_of, np.int32))
    out.with_suffix(".tmp.npz").rename(out)
    return (f"seed {seed}: {len(detections)} detections, {int((labels == 1).sum())} on lesions, "
            f"{time.perf_counter() - started:.0f} s")


def load(seeds: list[int], cache: Path, recipe: dict, ranker, *, jittered: bool) -> dict[str, np.ndarray]:  # type: ignore[no-untyped-def]
    """The cached patches of ``seeds``, each detection with the shipped ``ranker``'s score.

    The ranker scores the cached descriptors here rather than when the patches are made, so a
    retrained ranker needs no new patches.
    """
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("x", "y", "lesion", "case", "peak", "ranker", "original")}
    truths = []
    for seed in seeds:
        with np.load(cache_file(seed, cache, recipe)) as data:
            parts["x"].append(data["patches"])
            parts["y"].append(data["labels"])
            parts["lesion"].append(data["lesion"])
            parts["case"].append(np.full(len(data["labels"]), seed, np.int32))
            parts["peak"].append(data["peak"])
            ranked = ranker.score(data["descriptors"]).astype(np.float32)
            parts["ranker"].append(ranked)
            parts["original"].append(np.ones(len(data["labels"]), bool))
            if jittered and len(data["jittered"]):
                n = len(data["jittered"])
                parts["x"].append(data["jittered"])
                parts["y"].append(np.ones(n, np.int8))
                parts["lesion"].append(data["lesion"][data["jittered_of"]])
                parts["case"].append(np.full(n, seed, np.int32))
                parts["peak"].append(data["peak"][data["jittered_of"]])
                parts["ranker"].append(ranked[data["jittered_of"]])
                parts["original"].append(np.zeros(n, bool))
            truths += [(seed, int(i), float(d)) for i, d in data["truth"]]
    out = {key: np.concatenate(value) for key, value in parts.items()}
    out["truth"] = np.array(truths, dtype=np.float64).reshape(-1, 3)
    return out


def augment(batch, generator):  # type: ignore[no-untyped-def]
    """Random flips of each axis and a random in-plane transpose (the same for a whole batch)."""
    import torch

    dims = [d for d in (2, 3, 4) if torch.rand(1, generator=generator).item() < 0.5]
    if dims:
        batch = torch.flip(batch, dims)
    if torch.rand(1, generator=generator).item() < 0.5:
        batch = batch.transpose(3, 4)
    return batch


def train(model, x: np.ndarray, y: np.ndarray, recipe: dict, device, iterations: int, log) -> float:  # type: ignore[no-untyped-def]
    import torch

    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe["learning_rate"], weight_decay=recipe["weight_decay"])
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=recipe["learning_rate"], total_steps=iterations)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    generator = torch.Generator().manual_seed(recipe["torch_seed"])
    positives = torch.from_numpy(np.flatnonzero(y == 1))
    negatives = torch.from_numpy(np.flatnonzero(y == 0))
    n_pos = max(1, round(recipe["batch"] * recipe["positive_share"]))
    n_neg = recipe["batch"] - n_pos
    started = time.perf_counter()
    model.train()
    running = 0.0
    for step in range(1, iterations + 1):
        rows = torch.cat([positives[torch.randint(0, len(positives), (n_pos,), generator=generator)],
                          negatives[torch.randint(0, len(negatives), (n_neg,), generator=generator)]])
        batch = augment(torch.from_numpy(x[rows.numpy()].astype(np.float32)), generator).to(device)
        target = torch.from_numpy(y[rows.numpy()].astype(np.float32)).to(device)
        loss = loss_fn(model(batch)[:, 0], target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        running += loss.item()
        if step % 250 == 0 or step == iterations:
            log(f"step {step}/{iterations}: loss {running / (250 if step % 250 == 0 else step % 250):.4f}")
            running = 0.0
    model.eval()
    return time.perf_counter() - started


def predict(model, x: np.ndarray, device, shift: float, batch: int = 256) -> np.ndarray:  # type: ignore[no-untyped-def]
    import torch

    out = np.empty(len(x), np.float32)
    with torch.inference_mode():
        for start in range(0, len(x), batch):
            logits = model(torch.from_numpy(x[start : start + batch].astype(np.float32)).to(device))[:, 0] - shift
            out[start : start + batch] = torch.sigmoid(logits.float()).cpu().numpy()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", type=Path, default=REPO / "var" / "verifier-cache-v3")
    parser.add_argument("--jobs", type=int, default=1, help="phantoms made in parallel")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--iterations", type=int, help="override the recipe's iteration count")
    parser.add_argument("--train-phantoms", type=int, help="use only the first N training seeds")
    parser.add_argument("--enriched-phantoms", type=int, help="use only the first N lesion-enriched seeds")
    parser.add_argument("--validation-phantoms", type=int, help="use only the first N validation seeds (at least 1)")
    parser.add_argument("--data-only", action="store_true", help="make the cached patches and stop")
    args = parser.parse_args()

    import torch
    from monai.bundle import ConfigParser

    from sensecare.analysis.bundle_training import (
        FP_RATES,
        auc,
        log,
        logit,
        make_cache,
        seeds_of,
        sensitivities,
    )
    from sensecare.analysis.detect import confidence_of, second_scores
    from sensecare.analysis.device import resolve_device
    from sensecare.analysis.verifier import weighted_mean

    recipe = json.loads((BUNDLE / "configs" / "train.json").read_text())
    population_seeds = seeds_of(recipe, "train_seeds")[: args.train_phantoms or None]
    train_seeds = population_seeds + seeds_of(recipe, "enriched_train_seeds")[: args.enriched_phantoms]
    val_seeds = seeds_of(recipe, "validation_seeds")[: args.validation_phantoms or None]
    args.cache.mkdir(parents=True, exist_ok=True)
    data_s = make_cache(patches_for_seed, val_seeds + train_seeds, args.cache, recipe, args.jobs)
    if args.data_only:
        return

    device = resolve_device(args.device)
    from sensecare.analysis.ranker import LesionRanker

    ranker = LesionRanker("cpu")
    train_data = load(train_seeds, args.cache, recipe, ranker, jittered=True)
    val = load(val_seeds, args.cache, recipe, ranker, jittered=False)
    keep = train_data["y"] >= 0
    x_train, y_train = train_data["x"][keep], train_data["y"][keep]
    # The calibration's base rate is the population's (original detections of its phantoms only):
    # enriched phantoms and jittered copies raise the share of lesions, the analysed scans do not.
    population = np.isin(train_data["case"], population_seeds) & train_data["original"] & keep
    true_share = float((train_data["y"][population] == 1).mean())
    prior_shift = logit(recipe["positive_share"]) - logit(true_share)
    log(f"training patches: {len(y_train)} ({int(y_train.sum())} on lesions, jittered copies included), "
        f"validation: {len(val['y'])}; prior shift {prior_shift:.3f}")

    torch.manual_seed(recipe["torch_seed"])
    config = ConfigParser()
    config.read_config(BUNDLE / "configs" / "inference.json")
    model = config.get_parsed_content("network_def").to(device)
    iterations = args.iterations or recipe["iterations"]
    train_s = train(model, x_train, y_train, recipe, device, iterations, log)

    p_val = predict(model, val["x"], device, prior_shift)
    scored = val["y"] >= 0
    ranker_recipe = json.loads((REPO / "models" / "lesion_ranker" / "configs" / "metadata.json").read_text())["sensecare"]

    def summary(scores: np.ndarray) -> dict:
        sens = sensitivities(scores, val)
        return {"detection_auc": round(auc(scores[scored], val["y"][scored]), 4),
                "sensitivity_at_fp_per_scan": dict(zip(map(str, FP_RATES), (round(s, 3) for s in sens))),
                "cpm": round(float(np.mean(sens)), 3)}

    def as_detected(weight: float | None) -> np.ndarray:
        """Each detection's confidence as sensecare.analysis.detect gives it (0 when not kept)."""
        out = np.zeros(len(val["y"]), np.float64)
        for case in np.unique(val["case"]):
            rows = np.flatnonzero(val["case"] == case)
            ranked = val["ranker"][rows]
            order, _, second = second_scores(
                ranked, ranker_recipe["min_score"], ranker_recipe["max_findings"],
                verify=(lambda chosen, rows=rows: p_val[rows[chosen]]) if weight is not None else None,
                max_candidates=recipe["max_candidates"],
                combine=(lambda r, v, w=weight: weighted_mean(r, v, w)) if weight is not None else None)
            for i in order:
                out[rows[i]] = confidence_of(float(val["peak"][rows[i]]), second[i])
        return out

    by_weight = {str(w): summary(as_detected(w)) for w in recipe["weights_tried"]}
    best = max(recipe["weights_tried"], key=lambda w: (by_weight[str(w)]["cpm"], -abs(w - 0.5)))
    metrics = {
        "validation": {
            "phantoms": len(val_seeds), "detections": len(val["y"]), "on_lesions": int((val["y"] == 1).sum()),
            "verifier_alone": summary(p_val),
            "ranker_alone": summary(val["ranker"]),
            "as_detected_without_verifier": summary(as_detected(None)),
            "as_detected_by_verifier_weight": by_weight,
            "chosen_weight": best,
        },
        "training": {"phantoms": len(population_seeds), "enriched_phantoms": len(train_seeds) - len(population_seeds),
                     "patches": len(y_train), "on_lesions": int(y_train.sum())},
    }
    log(json.dumps(metrics, indent=1))
    np.savez_compressed(args.cache / "validation-scores.npz", verifier=p_val, ranker=val["ranker"], peak=val["peak"],
                        y=val["y"], case=val["case"], lesion=val["lesion"], truth=val["truth"])
    (BUNDLE / "models").mkdir(exist_ok=True)
    torch.save({k: v.cpu() for k, v in model.state_dict().items()}, BUNDLE / "models" / "model.pt")

    import monai

    metadata_path = BUNDLE / "configs" / "metadata.json"
    metadata = json.loads(metadata_path.read_text()) if metadata_path.exists() else {}
    metadata.update({
        "name": "lesion_verifier",
        "version": metadata.get("version", "0.1.0"),
        "monai_version": monai.__version__,
        "pytorch_version": torch.__version__.split("+")[0],
        "numpy_version": np.__version__,
        "task": "lung lesion detection false-positive reduction (is this heatmap detection a lesion?)",
        "description": "3D CNN (MONAI Classifier) on 4-channel 24^3 patches around each detection's peak",
        "authors": "SenseCare",
        "copyright": "SenseCare contributors",
        "data_source": "detections of models/lesion_heatmap on synthetic phantoms from the seeds in configs/train.json",
        "data_type": "patches from sensecare.analysis.verifier.PatchSampler",
        "trained_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "training_seconds": {"data": round(data_s, 1), "training": round(train_s, 1)},
        "training_device": str(device),
        "metrics": metrics,
    })
    metadata.setdefault("sensecare", {}).update({"prior_shift": round(prior_shift, 6), "verifier_weight": best,
                                                 "max_candidates": recipe["max_candidates"]})
    metadata_path.write_text(json.dumps(metadata, indent=2) + "\n")
    from sensecare.analysis.bundle import export_torchscript, network_overrides

    export_torchscript(BUNDLE, network_overrides(BUNDLE))  # what the analysis loads (no MONAI import)
    log(f"wrote {BUNDLE / 'models' / 'model.pt'} and {metadata_path}")


if __name__ == "__main__":
    main()

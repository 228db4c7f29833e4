#!/usr/bin/env python
"""Train the detection ranker of this bundle on the detections of synthetic phantoms.

Data recipe (``configs/train.json``): phantoms drawn by the evaluation's own
population (``sensecare.evaluation.run.PhantomRecipe``) from this bundle's
training and validation seeds, which the voxel classifier
(``models/lesion_heatmap``) was not trained on, so its scores here are what it
gives on new scans. Each phantom is written as DICOM and read back, its lungs
segmented and its heatmap detections found exactly as in the analysis
(without the cap on their number), and each detection described
(``sensecare.analysis.ranker.describe``). Labels come from the phantom's
lesion masks: a detection is a lesion when its peak lies in one or at least
``positive_overlap`` of its mask does, no lesion when it touches none, and
ignored in between. The ``enriched_train_seeds`` add phantoms holding 4-7
lesions, mostly sub-solid (``training_spec(seed, enriched=True)``), for
training only; the logit shift they cause is folded back into the output bias.

Each phantom's rows are cached in ``--cache`` (``var/ranker-cache-v3`` by
default); a rerun only makes what is missing. Training: binary cross-entropy
(unweighted, so the output stays a calibrated probability), AdamW, one-cycle
schedule. Validation reports the detection AUC and the lesion sensitivity at
1/8 to 8 false positives per scan. Results go into ``configs/metadata.json``.

Run from the repository root (about 20 minutes on a 2-core CPU, nearly all of
it making phantoms)::

    .venv/bin/python models/lesion_ranker/scripts/train.py --jobs 2
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


def rows_for_seed(seed: int, cache: Path, recipe: dict) -> str:
    """Make (or find) the cached detection rows of one phantom."""
    out = cache_file(seed, cache, recipe)
    if out.exists():
        return f"seed {seed}: cached"
    import torch

    torch.set_num_threads(1)
    from sensecare.analysis.bundle_training import label_detections, phantom_detections
    from sensecare.analysis.ranker import describe

    started = time.perf_counter()
    found = phantom_detections(seed, enriched=is_enriched(seed, recipe))
    phantom, spacing = found.phantom, found.spacing
    maps, probability, detections = found.maps, found.probability, found.detections
    descriptors = describe(detections, probability, maps, spacing)  # type: ignore[arg-type]
    labels, lesion_of = label_detections(detections, phantom.lesions, recipe["positive_overlap"])
    truth = np.array([[t.id, t.diameter_mm] for t in phantom.truth], dtype=np.float32).reshape(-1, 2)
    np.savez_compressed(out.with_suffix(".tmp.npz"), descriptors=descriptors, labels=labels,
                        lesion=lesion_of, truth=truth)
    out.with_suffix(".tmp.npz").rename(out)
    return (f"seed {seed}: {len(detections)} detections, {int((labels == 1).sum())} on lesions, "
            f"{time.perf_counter() - started:.0f} s")


def load(seeds: list[int], cache: Path, recipe: dict) -> dict[str, np.ndarray]:
    parts: dict[str, list[np.ndarray]] = {"x": [], "y": [], "lesion": [], "case": []}
    truths = []
    for seed in seeds:
        with np.load(cache_file(seed, cache, recipe)) as data:
            parts["x"].append(data["descriptors"])
            parts["y"].append(data["labels"])
            parts["lesion"].append(data["lesion"])
            parts["case"].append(np.full(len(data["labels"]), seed, np.int32))
            truths += [(seed, int(i), float(d)) for i, d in data["truth"]]
    out = {key: np.concatenate(value) for key, value in parts.items()}
    out["truth"] = np.array(truths, dtype=np.float64).reshape(-1, 3)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", type=Path, default=REPO / "var" / "ranker-cache-v3")
    parser.add_argument("--jobs", type=int, default=1, help="phantoms made in parallel")
    parser.add_argument("--iterations", type=int, help="override the recipe's iteration count")
    parser.add_argument("--train-phantoms", type=int, help="use only the first N training seeds")
    parser.add_argument("--enriched-phantoms", type=int, help="use only the first N lesion-enriched seeds")
    parser.add_argument("--validation-phantoms", type=int, help="use only the first N validation seeds (at least 1)")
    parser.add_argument("--data-only", action="store_true", help="make the cached rows and stop")
    args = parser.parse_args()

    import torch
    from monai.bundle import ConfigParser

    from sensecare.analysis.bundle_training import (
        FP_RATES,
        auc,
        fit_binary,
        log,
        logit,
        make_cache,
        seeds_of,
        sensitivities,
    )
    from sensecare.analysis.ranker import DESCRIPTOR_NAMES

    recipe = json.loads((BUNDLE / "configs" / "train.json").read_text())
    population_seeds = seeds_of(recipe, "train_seeds")[: args.train_phantoms or None]
    train_seeds = population_seeds + seeds_of(recipe, "enriched_train_seeds")[: args.enriched_phantoms]
    val_seeds = seeds_of(recipe, "validation_seeds")[: args.validation_phantoms or None]
    args.cache.mkdir(parents=True, exist_ok=True)
    data_s = make_cache(rows_for_seed, val_seeds + train_seeds, args.cache, recipe, args.jobs)
    if args.data_only:
        return

    used = [name for name in DESCRIPTOR_NAMES if name not in set(recipe.get("excluded_features", []))]
    columns = [DESCRIPTOR_NAMES.index(name) for name in used]
    train, val = load(train_seeds, args.cache, recipe), load(val_seeds, args.cache, recipe)
    keep = train["y"] >= 0
    x_train, y_train = train["x"][keep][:, columns], train["y"][keep].astype(np.float32)
    mean, std = x_train.mean(axis=0), x_train.std(axis=0) + 1e-3
    log(f"training detections: {len(y_train)} ({int(y_train.sum())} on lesions), validation: {len(val['y'])}")

    torch.manual_seed(recipe["torch_seed"])
    torch.set_num_threads(1)
    config = ConfigParser()
    config.read_config(BUNDLE / "configs" / "inference.json")
    config["network_def"]["in_channels"] = len(used)
    model = config.get_parsed_content("network_def")
    iterations = args.iterations or recipe["iterations"]
    train_s = fit_binary(model, (x_train - mean) / std, y_train, iterations=iterations,
                         batch_rows=recipe["batch_rows"], learning_rate=recipe["learning_rate"],
                         weight_decay=recipe["weight_decay"], seed=recipe["torch_seed"], log=log)
    # Enriched phantoms raise the share of lesions among the detections: shift the output back to
    # the population's base rate, so that the score stays a probability for the scans analysed.
    population = np.isin(train["case"], population_seeds) & keep
    prior_shift = logit(float(y_train.mean())) - logit(float((train["y"][population] == 1).mean()))
    output_layer = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
    with torch.no_grad():
        output_layer.bias -= prior_shift
    log(f"prior shift {prior_shift:.3f} folded into the output bias")

    def predict(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return torch.sigmoid(model(torch.from_numpy((x[:, columns] - mean) / std))[:, 0]).numpy()

    p_val, p_train = predict(val["x"]), predict(train["x"])
    peak = DESCRIPTOR_NAMES.index("peak_probability")
    scored = val["y"] >= 0
    metrics = {
        "validation": {
            "phantoms": len(val_seeds), "detections": len(val["y"]), "on_lesions": int((val["y"] == 1).sum()),
            "detection_auc": round(auc(p_val[scored], val["y"][scored]), 4),
            "detection_auc_of_heatmap_peak": round(auc(val["x"][scored, peak], val["y"][scored]), 4),
            "sensitivity_at_fp_per_scan": dict(zip(map(str, FP_RATES), (round(s, 3) for s in sensitivities(p_val, val)))),
            "same_with_heatmap_peak": dict(zip(map(str, FP_RATES),
                                               (round(s, 3) for s in sensitivities(val["x"][:, peak], val)))),
        },
        "training": {
            "phantoms": len(population_seeds), "enriched_phantoms": len(train_seeds) - len(population_seeds),
            "detections": int(keep.sum()), "on_lesions": int(y_train.sum()), "prior_shift": round(prior_shift, 4),
            "detection_auc": round(auc(p_train[keep], train["y"][keep]), 4),
        },
    }
    log(json.dumps(metrics))
    (BUNDLE / "models").mkdir(exist_ok=True)
    torch.save(model.state_dict(), BUNDLE / "models" / "model.pt")
    inference_path = BUNDLE / "configs" / "inference.json"
    inference = json.loads(inference_path.read_text())
    inference["network_def"]["in_channels"] = len(used)
    inference_path.write_text(json.dumps(inference, indent=2) + "\n")

    import monai

    metadata_path = BUNDLE / "configs" / "metadata.json"
    metadata = json.loads(metadata_path.read_text()) if metadata_path.exists() else {}
    metadata.update({
        "name": "lesion_ranker",
        "version": metadata.get("version", "0.1.0"),
        "monai_version": monai.__version__,
        "pytorch_version": torch.__version__.split("+")[0],
        "numpy_version": np.__version__,
        "task": "lung lesion detection false-positive reduction (is this heatmap detection a lesion?)",
        "description": "MLP (MONAI FullyConnectedNet) over a detection's probability profile, size, shape and voxel features",
        "authors": "SenseCare",
        "copyright": "SenseCare contributors",
        "data_source": "detections of models/lesion_heatmap on synthetic phantoms from the seeds in configs/train.json",
        "data_type": "descriptors from sensecare.analysis.ranker.describe",
        "trained_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "training_seconds": {"data": round(data_s, 1), "training": round(train_s, 1)},
        "metrics": metrics,
    })
    own = metadata.setdefault("sensecare", {})
    own.update({
        "features": used,
        "feature_mean": [round(float(v), 6) for v in mean],
        "feature_std": [round(float(v), 6) for v in std],
        "min_score": recipe["min_score"],
        "max_findings": recipe["max_findings"],
    })
    metadata_path.write_text(json.dumps(metadata, indent=2) + "\n")
    from sensecare.analysis.bundle import export_torchscript, network_overrides

    export_torchscript(BUNDLE, network_overrides(BUNDLE))  # what the analysis loads (no MONAI import)
    log(f"wrote {BUNDLE / 'models' / 'model.pt'} and {metadata_path}")


if __name__ == "__main__":
    main()

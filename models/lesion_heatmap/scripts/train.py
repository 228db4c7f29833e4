#!/usr/bin/env python
"""Train the voxel classifier of this bundle on synthetic chest CT phantoms.

Data recipe (``configs/train.json``): phantoms drawn by the evaluation's own
population (``sensecare.evaluation.run.PhantomRecipe``) from the training and
validation seeds, never from the evaluation seeds (5000-5049 and later held-out
sets); the ``enriched_train_seeds`` add phantoms of the same population holding
4-7 lesions, mostly sub-solid (``training_spec(seed, enriched=True)``), for
training only. Each phantom is
written as DICOM and read back, its lungs segmented as in the analysis, and
the voxel features of ``sensecare.analysis.heatmap`` computed on the ~2 mm
grid. Labels come from the phantom's lesion masks (share of each grid voxel
inside a lesion): positives at >= 0.5, ignored between 0.05 and 0.5, and as
negatives (sampled) the dense voxels that are no lesion (vessels, walls,
dependent density), the diffuse opacity (ground glass that is not a lesion)
and random parenchyma. Each lesion contributes at most
``positives_per_lesion`` voxels, so masses do not drown small nodules.

Each phantom's samples are cached in ``--cache`` (``var/heatmap-cache-v3`` by
default); a rerun only makes what is missing. Training: unweighted binary
cross-entropy, AdamW, one-cycle schedule; validation reports the
voxel-level AUC and the share of validation lesions whose peak probability
passes the detection threshold, per lesion type. Results go into ``configs/metadata.json``.

Run from the repository root (about 22 minutes on a 2-core CPU, most of it
making phantoms)::

    .venv/bin/python models/lesion_heatmap/scripts/train.py --jobs 2
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


def samples_for_seed(seed: int, cache: Path, recipe: dict) -> str:
    """Make (or find) the cached samples of one phantom."""
    out = cache_file(seed, cache, recipe)
    if out.exists():
        return f"seed {seed}: cached"
    import torch

    torch.set_num_threads(1)
    from sensecare.analysis.bundle_training import (
        read_back_phantom,
        training_spec,
    )
    from sensecare.analysis.heatmap import voxel_features

    started = time.perf_counter()
    spec = training_spec(seed, enriched=is_enriched(seed, recipe))
    phantom, volume, lungs = read_back_phantom(spec, f"seed {seed}")
    maps = voxel_features(volume.array, lungs.region, volume.spacing, lungs.lungs)
    rng = np.random.default_rng([seed, recipe["sampling_seed"]])
    lesions = phantom.lesions[maps.box]
    rows = maps.inside
    any_lesion = maps.grid.fraction(lesions > 0)[rows]
    picked: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    lesion_of: list[np.ndarray] = []

    def take(index: np.ndarray, count: int, label: int, lesion: int = 0) -> None:
        if index.size > count:
            index = rng.choice(index, size=count, replace=False)
        picked.append(index)
        labels.append(np.full(index.size, label, np.uint8))
        lesion_of.append(np.full(index.size, lesion, np.int16))

    for lesion_id in np.unique(lesions[lesions > 0]):
        share = maps.grid.fraction(lesions == lesion_id)[rows]
        take(np.flatnonzero(share >= 0.5), recipe["positives_per_lesion"], 1, int(lesion_id))
    clean = any_lesion <= recipe["ignore_fraction"][0]
    from sensecare.analysis.heatmap import FEATURE_NAMES

    density = maps.features[:, FEATURE_NAMES.index("density_2mm")]
    ggo = maps.features[:, FEATURE_NAMES.index("ggo_share_2mm")]
    depth = maps.features[:, FEATURE_NAMES.index("solid_depth_mm")]
    take(np.flatnonzero(clean & ((density > 1.0) | (ggo > 0.2))), recipe["hard_negatives"], 0)
    take(np.flatnonzero(clean & (depth >= 0.3)), recipe["thick_negatives"], 0)
    opacity = maps.grid.fraction(phantom.opacity[maps.box] > 0)[rows]
    take(np.flatnonzero(clean & (opacity >= 0.5)), recipe["opacity_negatives"], 0)
    take(np.flatnonzero(clean), recipe["random_negatives"], 0)
    index = np.concatenate(picked)
    np.savez_compressed(
        out.with_suffix(".tmp.npz"), features=maps.features[index], labels=np.concatenate(labels),
        lesion=np.concatenate(lesion_of),
        truth=np.array([[t.id, t.diameter_mm] for t in phantom.truth], dtype=np.float32).reshape(-1, 2),
        truth_type=np.array([t.type for t in phantom.truth], dtype=str),
    )
    out.with_suffix(".tmp.npz").rename(out)
    return f"seed {seed}: {index.size} samples, {len(phantom.truth)} lesions, {time.perf_counter() - started:.0f} s"


def load(seeds: list[int], cache: Path, recipe: dict
         ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[tuple[int, int], str]]:
    """Feature rows, labels, lesion id and seed of each row, and ``(seed, lesion id) -> type``."""
    feats, labels, lesion, case = [], [], [], []
    types: dict[tuple[int, int], str] = {}
    for seed in seeds:
        with np.load(cache_file(seed, cache, recipe)) as data:
            feats.append(data["features"])
            labels.append(data["labels"])
            lesion.append(data["lesion"])
            case.append(np.full(len(data["labels"]), seed, np.int32))
            for (lesion_id, _), kind in zip(data["truth"], data["truth_type"]):
                types[seed, int(lesion_id)] = str(kind)
    return np.concatenate(feats), np.concatenate(labels), np.concatenate(lesion), np.concatenate(case), types


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", type=Path, default=REPO / "var" / "heatmap-cache-v3")
    parser.add_argument("--jobs", type=int, default=1, help="phantoms made in parallel")
    parser.add_argument("--iterations", type=int, help="override the recipe's iteration count")
    parser.add_argument("--train-phantoms", type=int, help="use only the first N training seeds")
    parser.add_argument("--enriched-phantoms", type=int, help="use only the first N lesion-enriched seeds")
    parser.add_argument("--data-only", action="store_true", help="make the cached samples and stop")
    parser.add_argument("--validation-phantoms", type=int, help="use only the first N validation seeds (at least 1)")
    args = parser.parse_args()

    import torch
    from monai.bundle import ConfigParser

    from sensecare.analysis.bundle_training import (
        auc,
        fit_binary,
        log,
        make_cache,
        seeds_of,
    )
    from sensecare.analysis.heatmap import FEATURE_NAMES

    recipe = json.loads((BUNDLE / "configs" / "train.json").read_text())
    train_seeds = seeds_of(recipe, "train_seeds")
    val_seeds = seeds_of(recipe, "validation_seeds")
    train_seeds = train_seeds[: args.train_phantoms or None]
    if "enriched_train_seeds" in recipe:
        train_seeds += seeds_of(recipe, "enriched_train_seeds")[: args.enriched_phantoms]
    val_seeds = val_seeds[: args.validation_phantoms or None]
    args.cache.mkdir(parents=True, exist_ok=True)
    data_s = make_cache(samples_for_seed, val_seeds + train_seeds, args.cache, recipe, args.jobs)
    if args.data_only:
        return

    used = [name for name in FEATURE_NAMES if name not in set(recipe.get("excluded_features", []))]
    columns = [FEATURE_NAMES.index(name) for name in used]
    x_train, y_train, _, _, _ = load(train_seeds, args.cache, recipe)
    x_val, y_val, lesion_val, case_val, types = load(val_seeds, args.cache, recipe)
    x_train, x_val = x_train[:, columns], x_val[:, columns]
    mean, std = x_train.mean(axis=0), x_train.std(axis=0) + 1e-3
    log(f"training rows: {len(y_train)} ({int(y_train.sum())} lesion), validation rows: {len(y_val)}")

    torch.manual_seed(recipe["torch_seed"])
    torch.set_num_threads(1)  # a small MLP: more threads only contend with the phantom workers
    config = ConfigParser()
    config.read_config(BUNDLE / "configs" / "inference.json")
    config["network_def"]["in_channels"] = len(used)
    model = config.get_parsed_content("network_def")
    iterations = args.iterations or recipe["iterations"]
    rows = (x_train - mean) / std
    train_s = fit_binary(model, rows, y_train, iterations=iterations, batch_rows=recipe["batch_rows"],
                         learning_rate=recipe["learning_rate"], weight_decay=recipe["weight_decay"],
                         seed=recipe["torch_seed"], positive_weight=float(recipe.get("positive_weight", 1.0)), log=log)
    with torch.inference_mode():
        p_val = torch.sigmoid(model(torch.from_numpy((x_val - mean) / std))[:, 0]).numpy()
        p_train = torch.sigmoid(model(torch.from_numpy(rows[:200_000]))[:, 0]).numpy()

    metadata_path = BUNDLE / "configs" / "metadata.json"
    metadata = json.loads(metadata_path.read_text()) if metadata_path.exists() else {}
    threshold = 0.5
    # The analysis's own detection level (kept in the bundle's settings below).
    detection_threshold = float(metadata.get("sensecare", {}).get("detection_threshold", 0.1))
    found = []
    by_type: dict[str, list[int]] = {}
    for seed, lesion in sorted({(int(c), int(les)) for c, les in zip(case_val, lesion_val) if les > 0}):
        peak = float(p_val[(case_val == seed) & (lesion_val == lesion)].max())
        found.append(peak >= threshold)
        counts = by_type.setdefault(types[seed, lesion], [0, 0, 0])
        counts[0] += 1
        counts[1] += peak >= detection_threshold
        counts[2] += peak >= threshold
    metrics = {
        "validation": {
            "phantoms": len(val_seeds), "rows": len(y_val), "lesion_rows": int(y_val.sum()),
            "voxel_auc": round(auc(p_val, y_val), 4),
            "lesions": len(found), "lesions_with_peak_at_least_0.5": int(sum(found)),
            "negative_rows_at_least_0.5": round(float((p_val[y_val == 0] >= threshold).mean()), 4),
            f"negative_rows_at_least_{detection_threshold:g}":
                round(float((p_val[y_val == 0] >= detection_threshold).mean()), 4),
            f"lesions_by_type_total_peak_{detection_threshold:g}_peak_0.5": by_type,
        },
        "training": {
            "phantoms": len(train_seeds), "rows": len(y_train), "lesion_rows": int(y_train.sum()),
            "voxel_auc_first_200k_rows": round(auc(p_train, y_train[:200_000]), 4),
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

    metadata.update({
        "name": "lesion_heatmap",
        "version": metadata.get("version", "0.1.0"),
        "monai_version": monai.__version__,
        "pytorch_version": torch.__version__.split("+")[0],
        "numpy_version": np.__version__,
        "task": "lung lesion voxel classification on a ~2 mm grid (detection heatmap)",
        "description": "pointwise MLP (MONAI FullyConnectedNet) over multi-scale, rotation-invariant voxel features",
        "authors": "SenseCare",
        "copyright": "SenseCare contributors",
        "data_source": "synthetic phantoms generated by sensecare.phantom from the seeds in configs/train.json",
        "data_type": "CT (Hounsfield units), features from sensecare.analysis.heatmap.voxel_features",
        "trained_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "training_seconds": {"data": round(data_s, 1), "training": round(train_s, 1)},
        "metrics": metrics,
    })
    own = metadata.setdefault("sensecare", {})
    own.update({
        "features": used,
        "feature_mean": [round(float(v), 6) for v in mean],
        "feature_std": [round(float(v), 6) for v in std],
        "detection_threshold": detection_threshold,
        "min_volume_mm3": own.get("min_volume_mm3", 16.0),
        "max_detections": own.get("max_detections", 48),
    })
    metadata_path.write_text(json.dumps(metadata, indent=2) + "\n")
    from sensecare.analysis.bundle import export_torchscript, network_overrides

    export_torchscript(BUNDLE, network_overrides(BUNDLE))  # what the analysis loads (no MONAI import)
    log(f"wrote {BUNDLE / 'models' / 'model.pt'} and {metadata_path}")


if __name__ == "__main__":
    main()

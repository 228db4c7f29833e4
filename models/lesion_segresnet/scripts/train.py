#!/usr/bin/env python
"""Train the lesion SegResNet of this bundle on synthetic chest CT phantoms.

Data recipe (``configs/train.json``): phantoms from ``sensecare.phantom`` with the
listed seeds, kernels, slice thicknesses and patient sizes. From each phantom:

* positives: every lesion, cut as the analysis cuts a candidate (a cube twice
  the lesion's extent around its centre, ``sensecare.analysis.network``), with
  the centre jittered and the extent scaled as the classical stage would misjudge
  them; target = the phantom's lesion mask in that cube;
* negatives: what the classical stage confuses with lesions: points on vessels
  (bright voxels in the lungs away from lesions), on the lung border, and plain
  parenchyma; target = any lesion voxels that happen to be in the cube (mostly none).

Loss: Dice + focal (MONAI ``DiceFocalLoss``); flips, 90-degree in-plane turns and
intensity jitter as augmentation. Validation phantoms (other seeds) give the
patch-level Dice on positives and the detection rates at the network's
threshold; both go into ``configs/metadata.json`` and the model card.

Run from the repository root (about 15 minutes on a 2-core CPU)::

    .venv/bin/python models/lesion_segresnet/scripts/train.py
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

from sensecare.analysis.network import PATCH, PatchGeometry, extract_patch  # noqa: E402


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def phantom_for(seed: int, recipe: dict):  # type: ignore[no-untyped-def]
    from sensecare.phantom import PhantomSpec, generate_phantom

    rng = np.random.default_rng(seed)
    spec = PhantomSpec(
        seed=seed,
        matrix=int(recipe["matrix"]),
        slice_thickness_mm=float(rng.choice(recipe["slice_thickness_mm"])),
        kernel=str(rng.choice(recipe["kernels"])),
        size=str(rng.choice(recipe["patient_sizes"])),
        sex=str(rng.choice(["F", "M"])),
        dose=float(rng.uniform(0.5, 2.0)),
        lesions="random",
        diffuse=float(rng.choice(recipe["diffuse_opacity"])),
    )
    return generate_phantom(spec)


def samples_from(phantom, rng: np.random.Generator, recipe: dict) -> tuple[list[np.ndarray], list[np.ndarray], list[int]]:  # type: ignore[no-untyped-def]
    """(patches, targets, is_positive) from one phantom."""
    hu = phantom.hu.astype(np.float32)
    lesion_mask = (phantom.lesions > 0).astype(np.float32)
    spacing = tuple(float(s) for s in phantom.spacing)
    sx, sy, sz = spacing
    patches, targets, positive = [], [], []

    def add(centre, extent_mm: float, is_positive: int) -> None:  # type: ignore[no-untyped-def]
        geometry = PatchGeometry.around(centre, extent_mm)
        patches.append(extract_patch(hu, spacing, geometry).astype(np.float16))
        target = extract_lesion(lesion_mask, spacing, geometry)
        targets.append(target)
        positive.append(is_positive)

    for label in range(1, int(phantom.lesions.max()) + 1):
        zz, yy, xx = np.nonzero(phantom.lesions == label)
        if zz.size == 0:
            continue
        centre = np.array([zz.mean(), yy.mean(), xx.mean()])
        extent = max((np.ptp(zz) + 1) * sz, (np.ptp(yy) + 1) * sy, (np.ptp(xx) + 1) * sx)
        for _ in range(recipe["positives_per_lesion"]):
            jitter = rng.normal(0, 0.15 * extent, 3) / np.array([sz, sy, sx])
            add(centre + jitter, extent * float(rng.uniform(0.7, 1.4)), 1)

    lungs = phantom.lungs > 0
    near_lesion = _dilated(phantom.lesions > 0, 8.0, spacing)
    bright = phantom.vessels if getattr(phantom, "vessels", None) is not None else hu > -300
    vessels = np.argwhere(lungs & bright & ~near_lesion)
    parenchyma = np.argwhere(lungs & ~near_lesion)
    border = np.argwhere(lungs & ~_eroded(lungs, 3.0, spacing) & ~near_lesion)
    for pool, count in ((vessels, recipe["vessel_negatives"]), (border, recipe["border_negatives"]),
                        (parenchyma, recipe["parenchyma_negatives"])):
        if len(pool) == 0:
            continue
        for index in rng.choice(len(pool), size=min(count, len(pool)), replace=False):
            add(pool[index].astype(float), float(rng.uniform(4.0, 30.0)), 0)
    return patches, targets, positive


def extract_lesion(mask: np.ndarray, spacing, geometry: PatchGeometry) -> np.ndarray:  # type: ignore[no-untyped-def]
    from scipy import ndimage

    coords = geometry.sample_coordinates(spacing)
    return (ndimage.map_coordinates(mask, coords, order=1, mode="constant", cval=0.0) >= 0.5).astype(np.uint8)


def _dilated(mask: np.ndarray, mm: float, spacing) -> np.ndarray:  # type: ignore[no-untyped-def]
    from scipy import ndimage

    return ndimage.distance_transform_edt(~mask, sampling=(spacing[2], spacing[1], spacing[0])) <= mm


def _eroded(mask: np.ndarray, mm: float, spacing) -> np.ndarray:  # type: ignore[no-untyped-def]
    from scipy import ndimage

    return ndimage.distance_transform_edt(mask, sampling=(spacing[2], spacing[1], spacing[0])) > mm


def build_set(seeds: list[int], recipe: dict, rng: np.random.Generator, label: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    patches, targets, positive = [], [], []
    started = time.perf_counter()
    for count, seed in enumerate(seeds, start=1):
        phantom = phantom_for(seed, recipe)
        p, t, k = samples_from(phantom, rng, recipe)
        patches += p
        targets += t
        positive += k
        log(f"{label}: phantom {count}/{len(seeds)} (seed {seed}): {sum(k)} positive, {len(k) - sum(k)} negative patches "
            f"({time.perf_counter() - started:.0f} s)")
    return np.stack(patches), np.stack(targets), np.asarray(positive)


def augment(batch: np.ndarray, target: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Batches are (N, 1, z, y, x): flips along any axis, quarter turns in the axial plane, intensity jitter."""
    for axis in (2, 3, 4):
        if rng.random() < 0.5:
            batch, target = np.flip(batch, axis), np.flip(target, axis)
    turns = int(rng.integers(0, 4))
    batch, target = np.rot90(batch, turns, axes=(3, 4)), np.rot90(target, turns, axes=(3, 4))
    scale = rng.uniform(0.95, 1.05, size=(len(batch), 1, 1, 1, 1))
    shift = rng.uniform(-0.02, 0.02, size=(len(batch), 1, 1, 1, 1))
    noise = rng.normal(0, 0.01, size=batch.shape)
    return (batch * scale + shift + noise).astype(np.float32), np.ascontiguousarray(target)


def evaluate(model, patches: np.ndarray, targets: np.ndarray, positive: np.ndarray, threshold: float) -> dict:  # type: ignore[no-untyped-def]
    import torch

    model.eval()
    probs = []
    with torch.inference_mode():
        for start in range(0, len(patches), 32):
            batch = torch.from_numpy(patches[start : start + 32, None].astype(np.float32))
            probs.append(torch.sigmoid(model(batch))[:, 0].numpy())
    model.train()
    prob = np.concatenate(probs)
    centre = slice(PATCH // 2 - 2, PATCH // 2 + 2)
    centre_score = prob[:, centre, centre, centre].mean(axis=(1, 2, 3))
    predicted = prob >= threshold
    dice = [
        2 * np.logical_and(predicted[i], targets[i] > 0).sum() / max(1, predicted[i].sum() + (targets[i] > 0).sum())
        for i in np.flatnonzero(positive)
    ]
    detected = centre_score >= threshold
    return {
        "patches": int(len(patches)),
        "positive_patches": int(positive.sum()),
        "dice_positive_median": round(float(np.median(dice)), 4) if dice else None,
        "dice_positive_mean": round(float(np.mean(dice)), 4) if dice else None,
        "sensitivity_at_threshold": round(float(detected[positive == 1].mean()), 4) if positive.any() else None,
        "false_positive_rate_at_threshold": round(float(detected[positive == 0].mean()), 4) if (positive == 0).any() else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, help="override the recipe's iteration count")
    parser.add_argument("--train-phantoms", type=int, help="use only the first N training seeds")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args()

    import torch
    from monai.bundle import ConfigParser
    from monai.losses import DiceFocalLoss

    recipe = json.loads((BUNDLE / "configs" / "train.json").read_text())
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(recipe["torch_seed"])
    rng = np.random.default_rng(recipe["sampling_seed"])
    train_seeds = recipe["train_seeds"][: args.train_phantoms or None]
    iterations = args.iterations or recipe["iterations"]

    started = time.perf_counter()
    x_train, y_train, k_train = build_set(train_seeds, recipe, rng, "train")
    x_val, y_val, k_val = build_set(recipe["val_seeds"], recipe, rng, "validation")
    data_s = time.perf_counter() - started

    parser_cfg = ConfigParser()
    parser_cfg.read_config(BUNDLE / "configs" / "inference.json")
    model = parser_cfg.get_parsed_content("network_def")
    loss_fn = DiceFocalLoss(sigmoid=True, lambda_dice=1.0, lambda_focal=1.0, smooth_nr=1e-3, smooth_dr=1e-3)
    optimiser = torch.optim.AdamW(model.parameters(), lr=recipe["learning_rate"], weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=recipe["learning_rate"], total_steps=iterations)
    batch_size = recipe["batch_size"]
    positives, negatives = np.flatnonzero(k_train == 1), np.flatnonzero(k_train == 0)
    log(f"training on {len(x_train)} patches ({len(positives)} positive) for {iterations} iterations")
    train_started = time.perf_counter()
    for iteration in range(1, iterations + 1):
        chosen = np.concatenate([rng.choice(positives, batch_size // 2), rng.choice(negatives, batch_size - batch_size // 2)])
        batch, target = augment(x_train[chosen, None].astype(np.float32), y_train[chosen, None], rng)
        logits = model(torch.from_numpy(batch))
        loss = loss_fn(logits, torch.from_numpy(target.astype(np.float32)))
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        schedule.step()
        if iteration % 50 == 0 or iteration == iterations:
            log(f"iteration {iteration}/{iterations}: loss {loss.item():.4f} ({time.perf_counter() - train_started:.0f} s)")
    train_s = time.perf_counter() - train_started

    threshold = recipe["probability_threshold"]
    metrics = {"validation": evaluate(model, x_val, y_val, k_val, threshold),
               "training": evaluate(model, x_train[:400], y_train[:400], k_train[:400], threshold)}
    log(f"validation: {metrics['validation']}")
    (BUNDLE / "models").mkdir(exist_ok=True)
    torch.save(model.state_dict(), BUNDLE / "models" / "model.pt")
    metadata_path = BUNDLE / "configs" / "metadata.json"
    metadata = json.loads(metadata_path.read_text()) if metadata_path.exists() else {}
    metadata.update({
        "name": "lesion_segresnet",
        "version": recipe["version"],
        "changelog": {recipe["version"]: "trained on synthetic chest CT phantoms (see configs/train.json)"},
        "monai_version": __import__("monai").__version__,
        "pytorch_version": torch.__version__.split("+")[0],
        "numpy_version": np.__version__,
        "task": "lung lesion confirmation and segmentation in candidate-centred CT patches",
        "description": "3D SegResNet on 32^3 patches whose field of view is twice the candidate's extent",
        "authors": "SenseCare",
        "copyright": "SenseCare contributors",
        "data_source": "synthetic phantoms generated by sensecare.phantom from the seeds in configs/train.json",
        "data_type": "CT (Hounsfield units)",
        "network_data_format": {
            "inputs": {"image": {"type": "image", "format": "hounsfield", "num_channels": 1,
                                 "spatial_shape": [PATCH, PATCH, PATCH], "dtype": "float32",
                                 "value_range": [0, 1], "is_patch_data": True,
                                 "channel_def": {"0": "CT clipped to [-1000, 400] HU, scaled to [0, 1]"}}},
            "outputs": {"pred": {"type": "image", "format": "segmentation", "num_channels": 1,
                                 "spatial_shape": [PATCH, PATCH, PATCH], "dtype": "float32",
                                 "value_range": [0, 1], "is_patch_data": True,
                                 "channel_def": {"0": "lesion logit (sigmoid = probability)"}}},
        },
        "sensecare": {
            "probability_threshold": threshold,
            "trained_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "training_seconds": round(train_s, 1),
            "data_seconds": round(data_s, 1),
            "iterations": iterations,
            "train_phantoms": len(train_seeds),
            "metrics": metrics,
        },
    })
    metadata_path.write_text(json.dumps(metadata, indent=2) + "\n")
    from sensecare.analysis.bundle import export_torchscript, network_overrides

    export_torchscript(BUNDLE, network_overrides(BUNDLE))  # what the analysis loads (no MONAI import)
    log(f"wrote {BUNDLE / 'models' / 'model.pt'} and {metadata_path}")


if __name__ == "__main__":
    main()

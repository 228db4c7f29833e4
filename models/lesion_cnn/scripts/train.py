#!/usr/bin/env python
"""Train this bundle's dense lesion network on synthetic chest CT phantoms.

Data recipe (``configs/train.json``): each training and validation seed's
acquisition is drawn by the evaluation's own population
(``sensecare.evaluation.run.PhantomRecipe``), with 3-6 lesions per phantom from
this recipe's mix (more part-solid and ground-glass nodules than the
evaluation draws, the types the voxel classifier missed); never the
evaluation seeds 5000-5049. Each phantom is written as DICOM and read back,
its lungs segmented as in the analysis, and the lesion region's working-grid
image made by ``sensecare.analysis.heatmap.working_image`` and resampled by
``sensecare.analysis.lung_cnn.to_isotropic``: exactly what the analysis feeds
the network. Labels: the working-grid voxels at least half inside a lesion
mask of the phantom, resampled the same way. Diffuse opacity is not lesion.

Each phantom is cached in ``--cache`` (``var/lung-cnn-cache``); a rerun only
makes what is missing. Training: cubes of ``patch`` voxels, a ``lesion_patch_share``
of them centred in a lesion (each lesion of a phantom equally likely, so
masses do not crowd out small nodules), the rest anywhere in the region;
left-right flips and a random parenchyma HU offset; Dice + cross-entropy;
AdamW with a one-cycle schedule. Validation runs the whole region of each
validation phantom as the analysis does and reports, per lesion type, the
share of lesions whose peak probability reaches 0.5, and the false regions
per phantom. Results go into ``configs/metadata.json``.

Run from the repository root (about 20 minutes of phantoms with ``--jobs 2``
and 45 minutes of training on a 2-core CPU)::

    .venv/bin/python models/lesion_cnn/scripts/train.py --jobs 2
"""

from __future__ import annotations

import argparse
import dataclasses
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


from sensecare.analysis.bundle_training import log, make_cache, seeds_of


def spec_for(seed: int, recipe: dict):  # type: ignore[no-untyped-def]
    """The evaluation population's acquisition for ``seed`` with this recipe's lesion mix."""
    from sensecare.evaluation.run import PhantomRecipe
    from sensecare.phantom.spec import LesionSpec

    mix = recipe["lesion_mix"]
    rng = np.random.default_rng([seed, 17])
    lesions = []
    for _ in range(int(rng.integers(mix["count"][0], mix["count"][1] + 1))):
        kind = str(rng.choice(mix["types"], p=mix["probabilities"]))
        low, high = mix["diameter_mm"][kind]
        diameter = float(np.exp(rng.uniform(np.log(low), np.log(high))))
        location = str(rng.choice(mix["locations"], p=mix["location_probabilities"]))
        if kind == "consolidation" and location == "juxtavascular":
            location = "juxtapleural"
        lesions.append(LesionSpec(kind, round(diameter, 1), location))
    return dataclasses.replace(PhantomRecipe().spec_for(seed), lesions=tuple(lesions))


def sample_for_seed(seed: int, cache: Path, recipe: dict) -> str:
    """Make (or find) one phantom's isotropic image, region, labels and lesion ids."""
    out = cache / f"seed-{seed}.npz"
    if out.exists():
        return f"seed {seed}: cached"
    import torch

    torch.set_num_threads(1)
    from sensecare.analysis.bundle_training import read_back_phantom
    from sensecare.analysis.heatmap import working_image
    from sensecare.analysis.lung_cnn import to_isotropic

    started = time.perf_counter()
    phantom, volume, lungs = read_back_phantom(spec_for(seed, recipe), f"seed {seed}")
    image, inside, grid, box, _ = working_image(volume.array, lungs.region, volume.spacing, lungs.lungs)
    gx, gy, gz = grid.spacing_xyz(volume.spacing)
    zyx = (gz, gy, gx)
    lesions = phantom.lesions[box]
    ids = np.zeros(inside.shape, np.uint8)
    for lesion_id in np.unique(lesions[lesions > 0]):
        ids[grid.fraction(lesions == lesion_id) >= recipe["label_fraction"]] = lesion_id
    image_iso = to_isotropic(image, zyx)
    np.savez_compressed(
        out.with_suffix(".tmp.npz"),
        image=image_iso.astype(np.float16),
        inside=(to_isotropic(inside, zyx) >= 0.5).astype(np.uint8),
        label=(to_isotropic(grid.fraction(lesions > 0), zyx) >= recipe["label_fraction"]).astype(np.uint8),
        ids=to_isotropic(ids, zyx, order=0).astype(np.uint8),
        truth=json.dumps([{"id": t.id, "type": t.type, "diameter_mm": t.diameter_mm} for t in phantom.truth]),
    )
    out.with_suffix(".tmp.npz").rename(out)
    return f"seed {seed}: {image_iso.shape}, {len(phantom.truth)} lesions, {time.perf_counter() - started:.0f} s"


@dataclasses.dataclass
class Case:
    seed: int
    channels: np.ndarray  # (2, z, y, x) network input
    label: np.ndarray  # (z, y, x) uint8
    ids: np.ndarray
    truth: list[dict]
    lesion_voxels: list[np.ndarray]  # per lesion, its voxel indices (n, 3)
    lesion_types: list[str]
    inside_voxels: np.ndarray


def load_case(seed: int, cache: Path) -> Case:
    from sensecare.analysis.lung_cnn import network_input

    with np.load(cache / f"seed-{seed}.npz") as data:
        image = data["image"].astype(np.float32)
        inside = data["inside"] > 0
        label, ids, truth = data["label"], data["ids"], json.loads(str(data["truth"]))
    kept = [(np.argwhere(ids == t["id"]), t["type"]) for t in truth]
    kept = [(voxels, kind) for voxels, kind in kept if len(voxels)]
    return Case(seed, network_input(image, inside), label, ids, truth,
                [v for v, _ in kept], [k for _, k in kept], np.argwhere(inside)[::7])


def crop(array: np.ndarray, centre: np.ndarray, size: int) -> np.ndarray:
    """A cube of ``size`` around ``centre`` from the last three axes, zero outside."""
    spatial = array.shape[-3:]
    low = centre - size // 2
    out = np.zeros(array.shape[:-3] + (size,) * 3, dtype=array.dtype)
    src = tuple(slice(max(lo, 0), min(lo + size, n)) for lo, n in zip(low, spatial))
    dst = tuple(slice(s.start - lo, s.stop - lo) for s, lo in zip(src, low))
    out[(...,) + dst] = array[(...,) + src]
    return out


def batches(cases: list[Case], recipe: dict, stage: dict, rng: np.random.Generator):  # type: ignore[no-untyped-def]
    """Endless (x, y) batches; lesions drawn with the stage's per-type weights, each lesion alike."""
    size = recipe["patch"]
    lesions = [(case, voxels) for case in cases for voxels in case.lesion_voxels]
    weights = np.array([stage.get("type_weights", {}).get(kind, 1.0)
                        for case in cases for kind in case.lesion_types], dtype=np.float64)
    weights /= weights.sum()
    while True:
        xs, ys = [], []
        for _ in range(recipe["batch"]):
            if rng.random() < stage["lesion_patch_share"]:
                case, voxels = lesions[rng.choice(len(lesions), p=weights)]
                centre = voxels[rng.integers(len(voxels))] + rng.integers(-size // 4, size // 4 + 1, 3)
            else:
                case = cases[rng.integers(len(cases))]
                centre = case.inside_voxels[rng.integers(len(case.inside_voxels))]
            x = crop(case.channels, centre, size)
            y = crop(case.label[None], centre, size).astype(np.float32)
            if rng.random() < 0.5:  # left-right
                x, y = x[..., ::-1], y[..., ::-1]
            offset = rng.normal(0.0, recipe["hu_offset_sd"]) / 500.0
            x = x.copy()
            x[0] = np.where(x[1] > 0, x[0] + np.float32(offset), x[0])
            xs.append(x)
            ys.append(y.copy())
        yield np.stack(xs), np.stack(ys)


def validate(model, cases: list[Case], device) -> dict:  # type: ignore[no-untyped-def]
    """Per-type recall at a 0.5 peak, false regions per phantom and the share of lesion-free voxels at 0.5."""
    import torch
    from scipy import ndimage

    from sensecare.analysis.lung_cnn import pad_to_multiple

    found: dict[str, list[bool]] = {}
    false_regions = []
    false_voxels = []
    model.eval()
    with torch.inference_mode():
        for case in cases:
            padded, shape = pad_to_multiple(case.channels)
            logits = model(torch.from_numpy(padded[None]).to(device))
            p = torch.sigmoid(logits)[0, 0].float().cpu().numpy()[: shape[0], : shape[1], : shape[2]]
            for t in case.truth:
                hit = case.ids == t["id"]
                if hit.any():
                    found.setdefault(t["type"], []).append(bool(p[hit].max() >= 0.5))
            regions, n = ndimage.label(p >= 0.5)
            touched = set(np.unique(regions[case.label > 0]))
            clean = (case.channels[1] > 0) & (case.label == 0)
            false_voxels.append(float((p[clean] >= 0.5).mean()))
            false_regions.append(sum(1 for r in range(1, n + 1) if r not in touched))
    model.train()
    recall = {k: f"{sum(v)}/{len(v)}" for k, v in sorted(found.items())}
    all_found = [x for v in found.values() for x in v]
    return {"recall_at_0.5": recall, "recall_all": round(sum(all_found) / max(1, len(all_found)), 3),
            "false_regions_per_phantom": round(float(np.mean(false_regions)), 2),
            "share_of_lesion_free_region_at_least_0.5": round(float(np.mean(false_voxels)), 5)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", type=Path, default=REPO / "var" / "lung-cnn-cache")
    parser.add_argument("--jobs", type=int, default=1, help="phantoms made in parallel")
    parser.add_argument("--data-only", action="store_true", help="make the phantom cache and stop")
    parser.add_argument("--iterations", type=int, help="override every stage's iteration count (quick trials)")
    parser.add_argument("--train-phantoms", type=int, help="use only the first N training seeds")
    parser.add_argument("--threads", type=int, default=2, help="torch threads for training on the CPU")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda (auto: CUDA when torch sees a GPU)")
    parser.add_argument("--start-stage", type=int, default=1, help="resume at this stage of the recipe")
    parser.add_argument("--init", type=Path, help="weights the stages before --start-stage left")
    args = parser.parse_args()

    recipe = json.loads((BUNDLE / "configs" / "train.json").read_text())
    train_seeds = seeds_of(recipe, "train_seeds")[: args.train_phantoms or None]
    val_seeds = seeds_of(recipe, "validation_seeds")
    args.cache.mkdir(parents=True, exist_ok=True)
    data_s = make_cache(sample_for_seed, train_seeds + val_seeds, args.cache, recipe, args.jobs)
    if args.data_only:
        return

    import torch
    from monai.bundle import ConfigParser
    from monai.losses import DiceCELoss

    from sensecare.analysis.device import resolve_device

    device = resolve_device(args.device)
    torch.manual_seed(recipe["torch_seed"])
    torch.set_num_threads(args.threads)
    train = [load_case(s, args.cache) for s in train_seeds]
    val = [load_case(s, args.cache) for s in val_seeds]
    log(f"{len(train)} training phantoms ({sum(len(c.lesion_voxels) for c in train)} lesions), {len(val)} validation")
    config = ConfigParser()
    config.read_config(BUNDLE / "configs" / "inference.json")
    model = config.get_parsed_content("network_def").to(device)
    stages = recipe["stages"]
    if args.iterations:
        stages = [{**stage, "iterations": args.iterations} for stage in stages]
    if args.start_stage > 1:
        if args.init is None:
            raise SystemExit("--start-stage after the first needs --init (the weights the earlier stages left)")
        model.load_state_dict(torch.load(args.init, map_location=device, weights_only=True))
    loss_fn = DiceCELoss(sigmoid=True, batch=True)
    (BUNDLE / "models").mkdir(exist_ok=True)
    train_started = time.perf_counter()
    running: list[float] = []
    model.train()
    for number, stage in enumerate(stages, start=1):
        if number < args.start_stage:
            continue
        iterations = stage["iterations"]
        optimiser = torch.optim.AdamW(model.parameters(), lr=stage["learning_rate"], weight_decay=recipe["weight_decay"])
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=stage["learning_rate"], total_steps=iterations)
        stream = batches(train, recipe, stage, np.random.default_rng([recipe["torch_seed"], number]))
        for step in range(1, iterations + 1):
            x, y = next(stream)
            optimiser.zero_grad()
            loss = loss_fn(model(torch.from_numpy(x).to(device)), torch.from_numpy(y).to(device))
            loss.backward()
            optimiser.step()
            schedule.step()
            running.append(loss.item())
            if step % 50 == 0 or step == iterations:
                log(f"stage {number} step {step}/{iterations}: loss {np.mean(running[-50:]):.4f}")
            if step % 250 == 0 or step == iterations:
                torch.save({k: v.cpu() for k, v in model.state_dict().items()}, BUNDLE / "models" / f"checkpoint-stage{number}.pt")
        log(f"stage {number}: {json.dumps(validate(model, val, device))}")
    train_s = time.perf_counter() - train_started
    iterations = sum(stage["iterations"] for stage in stages)
    metrics = {"validation": {"phantoms": len(val), **validate(model, val, device)},
               "training": {"phantoms": len(train), "final_loss": round(float(np.mean(running[-100:])), 4)}}
    log(json.dumps(metrics))
    torch.save({k: v.cpu() for k, v in model.state_dict().items()}, BUNDLE / "models" / "model.pt")
    for number in range(1, len(stages) + 1):
        (BUNDLE / "models" / f"checkpoint-stage{number}.pt").unlink(missing_ok=True)

    import monai

    metadata_path = BUNDLE / "configs" / "metadata.json"
    metadata = json.loads(metadata_path.read_text()) if metadata_path.exists() else {}
    metadata.update({
        "name": "lesion_cnn",
        "version": metadata.get("version", "0.1.0"),
        "changelog": metadata.get("changelog", {"0.1.0": "trained on synthetic chest CT phantoms (configs/train.json)"}),
        "monai_version": monai.__version__,
        "pytorch_version": torch.__version__.split("+")[0],
        "numpy_version": np.__version__,
        "task": "dense lung lesion probability over the whole lesion region on a 2 mm isotropic grid",
        "description": "3D SegResNet over the lung region's CT relative to the parenchyma, plus the region mask",
        "authors": "SenseCare",
        "copyright": "SenseCare contributors",
        "data_source": "synthetic phantoms generated by sensecare.phantom from the seeds in configs/train.json",
        "data_type": "CT (Hounsfield units) on sensecare.analysis.heatmap.working_image's grid, resampled to 2 mm",
        "network_data_format": {
            "inputs": {"image": {"type": "image", "format": "hounsfield", "num_channels": 2,
                                 "spatial_shape": ["8*n", "8*n", "8*n"], "dtype": "float32",
                                 "is_patch_data": False,
                                 "channel_def": {"0": "(HU - parenchyma HU) / 500, clipped to [-0.5, 3]",
                                                 "1": "lesion region mask (0/1)"}}},
            "outputs": {"pred": {"type": "image", "format": "segmentation", "num_channels": 1,
                                 "spatial_shape": ["8*n", "8*n", "8*n"], "dtype": "float32",
                                 "channel_def": {"0": "lesion logit (sigmoid: probability)"}}},
        },
        "trained_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "training_seconds": {"data": round(data_s, 1), "training": round(train_s, 1)},
        "iterations": iterations,
        "metrics": metrics,
    })
    metadata_path.write_text(json.dumps(metadata, indent=2) + "\n")
    from sensecare.analysis.bundle import export_torchscript, network_overrides

    export_torchscript(BUNDLE, network_overrides(BUNDLE))  # what the analysis loads (no MONAI import)
    log(f"wrote {BUNDLE / 'models' / 'model.pt'} and {metadata_path}")


if __name__ == "__main__":
    main()

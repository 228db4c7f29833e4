#!/usr/bin/env python
"""Percent opacity (PO) and percent high opacity (PHO) error of the opacity stage on phantoms (issue #4).

Each seed's phantom is drawn as in ``sensecare evaluate`` (``PhantomRecipe().spec_for(seed)``:
thickness, kernel, size, sex, dose, 1 in 4 with 15 % diffuse opacity, 1-4 random lesions), its
lungs are segmented by ``segment_lungs`` and ``measure_opacity`` scores it, given the phantom's
*true* lesion masks (``--lesions truth``, the default) or none. The lesion detector is left out on
purpose: this measures the opacity stage and the lung volume it divides by, not detection.
Errors are predicted minus truth in percentage points; truth is ``Phantom.percent_opacity`` /
``percent_high_opacity`` (lung voxels with diffuse opacity or lesion over lung voxels).

The volume is built from the phantom's arrays (identity orientation, as the phantom is written),
not read back from DICOM: the HU are the same int16 values the files would hold.

Run from the repository root (use seeds outside 5000-5049, the held-out evaluation set)::

    .venv/bin/python benchmarks/opacity_error.py --seed-start 6000 --phantoms 30 --json out/opacity_error.json

``--cache DIR`` keeps the generated phantoms (about 30 s each at 256 x 256 on two cores) so that
re-runs after a change to the analysis only segment and score.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.common import machine_info  # noqa: E402

_ARRAYS = ("hu", "lungs", "lesions")


@dataclass(frozen=True)
class ScanError:
    """One phantom's truth and prediction (percent of lung volume)."""

    seed: int
    size: str
    kernel: str
    thickness_mm: float
    diffuse: float
    lesions: int
    truth_po: float
    truth_pho: float
    po: float
    pho: float
    lung_ml_truth: float
    lung_ml_scored: float
    seconds: float

    @property
    def po_error(self) -> float:
        return self.po - self.truth_po

    @property
    def pho_error(self) -> float:
        return self.pho - self.truth_pho


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def load_phantom(seed: int, matrix: int, cache: Path | None) -> dict:
    """The seed's phantom arrays and truth, generated (and cached) when needed."""
    from sensecare.evaluation.run import PhantomRecipe

    path = cache / f"phantom-{seed}-{matrix}.npz" if cache else None
    if path is not None and path.exists():
        with np.load(path) as stored:
            return {key: stored[key] for key in stored.files}
    from sensecare.phantom import generate_phantom

    spec = PhantomRecipe(matrix=matrix).spec_for(seed)
    phantom = generate_phantom(spec)
    data = {
        "hu": phantom.hu, "lungs": phantom.lungs, "lesions": phantom.lesions,
        "spacing": np.asarray(phantom.spacing), "origin": np.asarray(phantom.origin),
        "truth": np.array([phantom.percent_opacity, phantom.percent_high_opacity]),
        "spec": np.array(json.dumps({"size": spec.size, "kernel": spec.kernel,
                                     "thickness_mm": spec.slice_thickness_mm, "diffuse": spec.diffuse})),
    }
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(path, **data)
    return data


def true_lesion_masks(lesions: np.ndarray) -> list[tuple[np.ndarray, tuple[int, int, int]]]:
    """Each lesion id's cropped mask and (z, y, x) offset, as the pipeline passes detections."""
    from scipy import ndimage

    masks = []
    for index, box in enumerate(ndimage.find_objects(lesions), start=1):
        if box is not None:
            masks.append((lesions[box] == index, tuple(int(s.start) for s in box)))
    return masks  # type: ignore[return-value]


def score(seed: int, data: dict, lesions: str) -> ScanError:
    from sensecare.analysis.lungs import segment_lungs
    from sensecare.analysis.opacity import measure_opacity
    from sensecare.dicom.volume import Volume

    started = time.perf_counter()
    hu = data["hu"]
    spacing = tuple(float(v) for v in data["spacing"])
    volume = Volume(
        array=hu, spacing=spacing, origin=tuple(float(v) for v in data["origin"]), direction=np.eye(3),  # type: ignore[arg-type]
        series_instance_uid=f"2.25.{seed}", study_instance_uid=f"2.25.{seed}0",
        sop_instance_uids=tuple(f"2.25.{seed}.{k}" for k in range(hu.shape[0])),
    )
    lungs = segment_lungs(volume)
    masks = true_lesion_masks(data["lesions"]) if lesions == "truth" else []
    result = measure_opacity(hu, spacing, lungs.lungs, lungs.region, lesion_masks=masks)
    # The scored lung volume: newer opacity stages expose it, older ones scored the region.
    scored = getattr(result, "lung", lungs.region)
    voxel_ml = float(np.prod(spacing)) / 1000.0
    spec = json.loads(str(data["spec"]))
    return ScanError(
        seed=seed, size=spec["size"], kernel=spec["kernel"], thickness_mm=float(spec["thickness_mm"]),
        diffuse=float(spec["diffuse"]), lesions=len(true_lesion_masks(data["lesions"])),
        truth_po=round(float(data["truth"][0]), 3), truth_pho=round(float(data["truth"][1]), 3),
        po=float(result.summary.percent_opacity), pho=float(result.summary.percent_high_opacity),
        lung_ml_truth=round(float(np.count_nonzero(data["lungs"])) * voxel_ml, 1),
        lung_ml_scored=round(float(np.count_nonzero(scored)) * voxel_ml, 1),
        seconds=round(time.perf_counter() - started, 2),
    )


def summarise(scans: list[ScanError]) -> dict:
    """Mean / median / max absolute and mean signed errors, overall and per group."""

    def stats(rows: list[ScanError]) -> dict:
        if not rows:
            return {"scans": 0}
        po = np.array([r.po_error for r in rows])
        pho = np.array([r.pho_error for r in rows])
        return {
            "scans": len(rows),
            "po_mean_abs": round(float(np.abs(po).mean()), 2), "po_median_abs": round(float(np.median(np.abs(po))), 2),
            "po_max_abs": round(float(np.abs(po).max()), 2), "po_mean_signed": round(float(po.mean()), 2),
            "pho_mean_abs": round(float(np.abs(pho).mean()), 2), "pho_mean_signed": round(float(pho.mean()), 2),
        }

    groups = {
        "all": scans,
        "no diffuse opacity": [s for s in scans if s.diffuse == 0],
        "diffuse opacity": [s for s in scans if s.diffuse > 0],
    }
    for size in ("small", "medium", "large"):
        groups[f"size {size}"] = [s for s in scans if s.size == size]
    for thickness in sorted({s.thickness_mm for s in scans}):
        groups[f"thickness {thickness:g} mm"] = [s for s in scans if s.thickness_mm == thickness]
    return {name: stats(rows) for name, rows in groups.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed-start", type=int, default=6000, help="first seed (avoid 5000-5049: held out)")
    parser.add_argument("--phantoms", type=int, default=30, help="number of seeds")
    parser.add_argument("--matrix", type=int, default=256, help="phantom matrix (the evaluation uses 256)")
    parser.add_argument("--lesions", choices=("truth", "none"), default="truth",
                        help="lesion masks given to the opacity stage")
    parser.add_argument("--cache", type=Path, help="folder keeping generated phantoms between runs")
    parser.add_argument("--json", type=Path, help="write settings, per-scan rows and the summary here")
    args = parser.parse_args()
    if args.phantoms < 1 or args.matrix < 64:
        parser.error("--phantoms must be >= 1 and --matrix >= 64")

    scans = []
    for seed in range(args.seed_start, args.seed_start + args.phantoms):
        data = load_phantom(seed, args.matrix, args.cache)
        scan = score(seed, data, args.lesions)
        scans.append(scan)
        log(f"seed {seed}: PO {scan.truth_po:.2f} -> {scan.po:.2f} ({scan.po_error:+.2f}), "
            f"PHO {scan.truth_pho:.2f} -> {scan.pho:.2f} ({scan.pho_error:+.2f}), {scan.seconds:.1f} s")

    print(f"{'seed':>5} {'size':<6} {'kernel':<8} {'mm':>5} {'diffuse':>7} {'PO truth':>8} {'PO':>6} {'error':>6} "
          f"{'PHO truth':>9} {'PHO':>6} {'error':>6} {'lung ml truth':>13} {'scored':>7}")
    for s in scans:
        print(f"{s.seed:>5} {s.size:<6} {s.kernel:<8} {s.thickness_mm:>5g} {s.diffuse:>7.2f} {s.truth_po:>8.2f} "
              f"{s.po:>6.2f} {s.po_error:>+6.2f} {s.truth_pho:>9.2f} {s.pho:>6.2f} {s.pho_error:>+6.2f} "
              f"{s.lung_ml_truth:>13.0f} {s.lung_ml_scored:>7.0f}")
    summary = summarise(scans)
    print(f"\n{'group':<22} {'scans':>5} {'PO mean|e|':>10} {'median|e|':>9} {'max|e|':>7} {'signed':>7} "
          f"{'PHO mean|e|':>11} {'signed':>7}")
    for name, row in summary.items():
        if row["scans"]:
            print(f"{name:<22} {row['scans']:>5} {row['po_mean_abs']:>10.2f} {row['po_median_abs']:>9.2f} "
                  f"{row['po_max_abs']:>7.2f} {row['po_mean_signed']:>+7.2f} {row['pho_mean_abs']:>11.2f} "
                  f"{row['pho_mean_signed']:>+7.2f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "settings": {"seed_start": args.seed_start, "phantoms": args.phantoms, "matrix": args.matrix,
                         "lesions": args.lesions},
            "machine": machine_info(REPO), "python": platform.python_version(),
            "summary": summary,
            "scans": [{**asdict(s), "po_error": round(s.po_error, 3), "pho_error": round(s.pho_error, 3)} for s in scans],
        }
        args.json.write_text(json.dumps(payload, indent=2) + "\n")


if __name__ == "__main__":
    main()

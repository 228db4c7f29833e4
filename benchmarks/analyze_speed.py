#!/usr/bin/env python
"""Analysis speed and peak memory per stage (issue #4).

Cases: synthetic chest CT phantoms of 512x512x{100,300,600} (1.0, 1.0 and 0.5 mm
slices over the same chest) and the real series in ../shared/data/chest-ct. Every
case is analysed in a fresh child process (so its peak RSS is its own, caches are
cold) with ``sensecare.analysis.pipeline.analyze_series``, on each device asked for
(``cpu`` here; ``cuda`` where torch sees a GPU). Phantoms are written to disk
before the clock starts; reading the files is the "read" stage.

There is no peer to run here: the reference product is not available. The
numbers are compared with the issue's targets (512x512x300 in <= 20 s and <= 6 GB
on a 2-core CPU; <= 1 s on one GPU).

Run from the repository root::

    .venv/bin/python benchmarks/analyze_speed.py --json docs/results/analyze_speed.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.common import machine_info, median  # noqa: E402

REAL = REPO.parent / "shared" / "data" / "chest-ct"
PHANTOM_SLICES = (100, 300, 600)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def make_phantom(slices: int, out: Path, seed: int) -> Path:
    """A 512x512 phantom with `slices` slices covering about 300 mm of chest."""
    from sensecare.phantom import PhantomSpec, generate_phantom, write_phantom

    spacing = 300.0 / slices
    spec = PhantomSpec(seed=seed, matrix=512, n_slices=slices, slice_spacing_mm=spacing,
                       slice_thickness_mm=max(0.625, spacing), lesions="random")
    write_phantom(generate_phantom(spec), out)
    return out


def cases(args: argparse.Namespace, workdir: Path) -> list[tuple[str, Path]]:
    found: list[tuple[str, Path]] = []
    for slices in args.phantom_slices:
        folder = workdir / f"phantom-{slices}"
        log(f"making phantom 512x512x{slices}")
        found.append((f"phantom 512x512x{slices}", make_phantom(slices, folder, seed=args.seed)))
    if REAL.exists():
        for name, folder in (
            ("LIDC-IDRI-0001 (512x512x133, 2.5 mm)", REAL / "LIDC-IDRI-0001" / "series"),
            ("Lung_Dx-A0002 B40f (512x512x30, 8 mm)", REAL / "Lung_Dx-A0002" / "series-B40f"),
            ("Lung_Dx-A0002 B70f (512x512x30, 8 mm)", REAL / "Lung_Dx-A0002" / "series-B70f"),
        ):
            if folder.exists():
                found.append((name, folder))
    else:
        log(f"real CT folder {REAL} is absent: phantoms only")
    return found


def run_child(folder: Path, device: str) -> dict:
    """Analyse one series in a fresh interpreter; returns its timings and peak RSS."""
    with tempfile.TemporaryDirectory() as out:
        completed = subprocess.run(
            [sys.executable, __file__, "--child", str(folder), "--child-out", out, "--device", device],
            capture_output=True, text=True, cwd=REPO, timeout=1800,
        )
    if completed.returncode != 0:
        raise RuntimeError(f"analysis of {folder} failed:\n{completed.stderr[-3000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def child(folder: Path, out: Path, device: str) -> None:
    from sensecare.analysis.pipeline import analyze_series

    files = sorted(p for p in folder.rglob("*.dcm"))
    started = time.perf_counter()
    result = analyze_series(files, out, device=device)
    wall = time.perf_counter() - started
    peak_kb = peak_rss_kb()
    report = result.report
    print(json.dumps({
        "wall_s": round(wall, 3), "timing_s": report.timing_s, "peak_rss_gb": round(peak_kb / 1024**2, 3),
        "lesions": len(report.lesions), "device": report.device, "shape_xyz": report.series.shape_xyz,
    }))


def peak_rss_kb() -> int:
    """This process's peak resident memory since it started the analysis' interpreter, kB.

    ``VmHWM`` belongs to the address space, which ``exec`` replaces; ``ru_maxrss`` survives
    ``exec`` and so reports the benchmark parent's memory (a 600-slice phantom it just made)
    when that was larger. ``ru_maxrss`` is the fallback where ``/proc`` is absent.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def devices(asked: list[str]) -> list[str]:
    import torch

    return [d for d in asked if d != "cuda" or torch.cuda.is_available()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3, help="runs per case and device (median reported)")
    parser.add_argument("--devices", default="cpu,cuda", help="comma-separated; cuda is skipped without a GPU")
    parser.add_argument("--phantom-slices", default=",".join(map(str, PHANTOM_SLICES)))
    parser.add_argument("--seed", type=int, default=9001, help="phantom seed")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--child-out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--device", default="cpu", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.child_out, args.device)
        return
    args.phantom_slices = [int(v) for v in args.phantom_slices.split(",") if v]
    results = []
    with tempfile.TemporaryDirectory(prefix="sensecare-bench-analyze-") as tmp:
        for name, folder in cases(args, Path(tmp)):
            for device in devices(args.devices.split(",")):
                runs = []
                for round_index in range(args.rounds):
                    run = run_child(folder, device)
                    runs.append(run)
                    log(f"{name} on {device}, round {round_index + 1}: {run['wall_s']:.2f} s, "
                        f"peak {run['peak_rss_gb']:.2f} GB, {run['lesions']} lesions")
                stages = sorted({stage for run in runs for stage in run["timing_s"]})
                results.append({
                    "case": name, "device": device, "runs": runs,
                    "median_wall_s": median([r["wall_s"] for r in runs]),
                    "median_peak_rss_gb": median([r["peak_rss_gb"] for r in runs]),
                    "median_stage_s": {s: median([r["timing_s"].get(s, 0.0) for r in runs]) for s in stages},
                })
    print(f"{'case':<40} {'device':<6} {'wall s':>7} {'peak GB':>8}  stages (median s)")
    for row in results:
        stages = ", ".join(f"{k} {v:.2f}" for k, v in row["median_stage_s"].items() if k != "total")
        print(f"{row['case']:<40} {row['device']:<6} {row['median_wall_s']:>7.2f} {row['median_peak_rss_gb']:>8.2f}  {stages}")
    info = machine_info(REPO)
    print(info)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"machine": info, "python": platform.python_version(),
                                         "cpu_count": os.cpu_count(), "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()

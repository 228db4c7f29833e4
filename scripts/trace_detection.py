"""Where each phantom lesion is lost on its way through the lesion stage (a development tool).

An evaluation says which lesions were missed; this says at which step: no voxel above the
detection threshold (``heatmap``), a detection whose peak lies elsewhere (``merged``: the
lesion is a minor part of a larger detection, typically a vessel), the ranker's cut
(``ranker``), the verifier's candidate cap (``cap``), the final list (``final``: found, with its
confidence). JSON lines: one per lesion of at least 5 mm (``stage`` says where it was lost), one per
scan (``stage: scan``: its false positives' confidences, with and without the diffuse-disease
discount, so the FROC can be recomputed), and one per detection the ranker lets through
(``stage: detection``: peak, ranker and verifier scores, label), for comparing ranking rules
offline. A summary at the end.

    .venv/bin/python scripts/trace_detection.py --seeds 5000-5049 --jobs 2 --out out/trace.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def trace_seed(seed: int) -> list[dict]:
    from sensecare.analysis.bundle_training import label_detections, phantom_detections
    from sensecare.analysis.detect import second_scores
    from sensecare.analysis.diffuse import discount_in_diffuse_disease
    from sensecare.analysis.measure import measure_lesion
    from sensecare.analysis.opacity import dense_parenchyma
    from sensecare.analysis.pipeline import (
        _heatmap_model,
        _ranker_model,
        _verifier_model,
        lesion_findings,
    )
    from sensecare.analysis.ranker import describe
    from sensecare.analysis.verifier import PatchSampler
    from sensecare.evaluation.matching import Detection, Truth, match_scan

    pd = phantom_detections(seed)
    phantom, volume, lungs, maps, probability = pd.phantom, pd.volume, pd.lungs, pd.maps, pd.probability
    detections = pd.detections
    recipe = json.loads((REPO / "models" / "lesion_ranker" / "configs" / "train.json").read_text())
    labels, lesion_of = label_detections(detections, phantom.lesions, recipe["positive_overlap"])
    ranker, verifier = _ranker_model("cpu"), _verifier_model("cpu")
    ranked = ranker.score(describe(detections, probability, maps, pd.spacing))
    sampler = PatchSampler(volume.array, lungs.region, pd.spacing, maps, probability)

    def verify(chosen: list[int]) -> np.ndarray:
        return verifier.score(sampler.for_detections([detections[i] for i in chosen]))

    order, verified, second = second_scores(ranked, ranker.min_score, ranker.max_findings, verify=verify,
                                            max_candidates=verifier.max_candidates, combine=verifier.combine)
    ranker_order = [int(i) for i in np.argsort(-ranked, kind="stable")]
    # Every detection the ranker lets through, verified (the pipeline verifies only its best few):
    # what an offline comparison of ranking rules needs.
    considered = [i for i in ranker_order if ranked[i] >= ranker.min_score]
    verified_all = dict(zip(considered, (float(v) for v in verify(considered)))) if considered else {}
    detection_rows = [{"seed": seed, "stage": "detection", "label": int(labels[i]), "lesion": int(lesion_of[i]),
                       "peak": round(float(detections[i].score), 4), "ranker": round(float(ranked[i]), 5),
                       "verifier": round(verified_all[i], 5), "rank": n, "voxels": int(detections[i].region_voxels)}
                      for n, i in enumerate(considered)]

    # The pipeline's own result (as analyze_volume does it), matched the evaluation's way.
    heatmap = _heatmap_model("cpu")
    found = lesion_findings(volume, lungs, "cpu", 0.05)
    parenchyma = dense_parenchyma(volume.array, volume.spacing, lungs.lungs, lungs.region)
    reports, undiscounted = [], []
    for number, lesion in enumerate(found, start=1):
        m = measure_lesion(volume, lesion.mask, lesion.offset, lungs.lungs)
        centre = tuple(float(v) for v in m.center_lps_mm)
        undiscounted.append(Detection(id=number, type=str(lesion.type.value), confidence=float(lesion.confidence),
                                      center_lps_mm=centre))
        discounted = discount_in_diffuse_disease([lesion], parenchyma.percent_opacity, 0.0)[0]
        if discounted.confidence >= 0.05:
            reports.append(Detection(id=number, type=str(lesion.type.value), confidence=float(discounted.confidence),
                                     center_lps_mm=centre))
    truths = [Truth(id=t.id, type=t.type, diameter_mm=t.diameter_mm, center_lps_mm=t.center_lps_mm,
                    bbox_lps_mm_min=t.bbox_lps_mm_min, bbox_lps_mm_max=t.bbox_lps_mm_max,
                    volume_ml=t.volume_ml, long_axis_mm=t.long_axis_mm) for t in phantom.truth]
    match = match_scan(f"seed {seed}", truths, reports)
    outcome = {o.truth.id: o for o in match.lesions}
    raw_match = match_scan(f"seed {seed}", truths, undiscounted)
    raw_outcome = {o.truth.id: o for o in raw_match.lesions}

    grid, box = maps.grid, maps.box
    spec = phantom.spec
    rows = []
    for truth in phantom.truth:
        if truth.diameter_mm < 5.0:
            continue
        zz, yy, xx = np.nonzero(phantom.lesions == truth.id)
        coarse = ((zz - box[0].start) // grid.factors[0], (yy - box[1].start) // grid.factors[1],
                  (xx - box[2].start) // grid.factors[2])
        ok = [(c >= 0) & (c < n) for c, n in zip(coarse, probability.shape)]
        ok = ok[0] & ok[1] & ok[2]
        max_probability = float(probability[tuple(c[ok] for c in coarse)].max()) if ok.any() else 0.0
        mine = [i for i in range(len(detections)) if lesion_of[i] == truth.id and labels[i] == 1]
        touching = [i for i in range(len(detections))
                    if np.any(phantom.lesions[tuple(slice(o, o + n) for o, n in zip(detections[i].offset,
                                                                                      detections[i].mask.shape))]
                              [detections[i].mask] == truth.id)]
        best = max(mine, key=lambda i: ranked[i]) if mine else None
        lesion_outcome = outcome.get(truth.id)
        score = getattr(lesion_outcome, "score", None)
        if score is None or score <= 0:
            if max_probability < heatmap.threshold:
                stage = "heatmap"
            elif best is None:
                stage = "merged" if touching else "heatmap_small"
            elif ranked[best] < ranker.min_score or ranker_order.index(best) >= verifier.max_candidates:
                stage = "ranker"
            elif best not in order:
                stage = "cap"
            else:
                stage = "after_detection"  # verified and kept, lost in outline/refine/diffuse/confidence
        else:
            stage = "found"
        rows.append({
            "seed": seed, "id": truth.id, "type": truth.type, "diameter_mm": round(truth.diameter_mm, 1),
            "juxtapleural": truth.juxtapleural, "juxtavascular": truth.juxtavascular, "location": truth.location,
            "kernel": spec.kernel, "thickness": spec.slice_thickness_mm, "size": spec.size, "diffuse": spec.diffuse,
            "max_probability": round(max_probability, 3), "detections": len(mine), "touching": len(touching),
            "peak": None if best is None else round(detections[best].score, 3),
            "ranker": None if best is None else round(float(ranked[best]), 4),
            "ranker_rank": None if best is None else ranker_order.index(best),
            "verifier": None if best is None else verified.get(best),
            "second": None if best is None else second.get(best),
            "final": None if score is None else round(float(score), 3),
            "final_undiscounted": None if raw_outcome[truth.id].score is None else round(float(raw_outcome[truth.id].score), 3),
            "found_type": None if lesion_outcome.best is None else lesion_outcome.best.type,
            "stage": stage, "n_detections": len(detections),
        })
    rows.append({"seed": seed, "stage": "scan", "fp_scores": [round(float(v), 4) for v in match.fp_scores()],
                 "fp_scores_undiscounted": [round(float(v), 4) for v in raw_match.fp_scores()],
                 "parenchymal_po": round(float(parenchyma.percent_opacity), 2),
                 "diffuse": spec.diffuse, "kernel": spec.kernel, "thickness": spec.slice_thickness_mm})
    return rows + detection_rows


def seeds_from(text: str) -> list[int]:
    out: list[int] = []
    for part in text.split(","):
        first, _, last = part.partition("-")
        out.extend(range(int(first), int(last or first) + 1))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", required=True, help="e.g. 5000-5049 or 5001,5007")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    with ProcessPoolExecutor(args.jobs) as pool, args.out.open("w") as sink:
        for seed_rows in pool.map(trace_seed, seeds_from(args.seeds)):
            for row in seed_rows:
                sink.write(json.dumps(row) + "\n")
            sink.flush()
            seed_rows = [row for row in seed_rows if row["stage"] != "detection"]
            rows.extend(seed_rows)
            print(f"seed {seed_rows[0]['seed'] if seed_rows else '?'}: "
                  + ", ".join(f"{r['type']} {r['diameter_mm']} {r['stage']}" for r in seed_rows if r["stage"] != "scan"), file=sys.stderr)
    rows = [row for row in rows if row["stage"] != "scan"]
    print(Counter(row["stage"] for row in rows))
    for stage in ("heatmap", "heatmap_small", "merged", "ranker", "cap", "after_detection"):
        print(stage, Counter(row["type"] for row in rows if row["stage"] == stage))


if __name__ == "__main__":
    main()

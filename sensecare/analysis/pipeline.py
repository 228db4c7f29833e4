"""One chest CT series in, ``report.json`` + ``seg.dcm`` + ``sr.dcm`` out.

The stages are small modules of their own (lungs, lesions, measure, opacity,
triage, dicom.seg/sr); this module only orders them, times them and turns
their results into the report. It is what ``sensecare analyze`` and the
inference workers call.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import logging
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from sensecare import __version__
from sensecare.analysis.device import DeviceChoice, resolve_device
from sensecare.analysis.report import (
    AnalysisReport,
    LesionReport,
    LungVolumes,
    ModelInfo,
    SeriesInfo,
)
from sensecare.analysis.triage import FLAG_CONFIDENCE, flags_for, urgency_for
from sensecare.dicom.volume import Volume, split_series, volume_from_datasets
from sensecare.errors import InvalidDicomError, LocalizerError, VolumeError

logger = logging.getLogger(__name__)

#: Called with (stage name, stages done, stages in all) as the analysis advances.
Progress = Callable[[str, int, int], None]

#: Findings below this confidence are not reported.
MIN_CONFIDENCE = 0.2
STAGES = ("read", "lungs", "lesions", "opacity", "measure", "seg", "sr", "report")
ALGORITHM_NAME = "SenseCare lung findings"


class MultipleSeriesError(VolumeError):
    """The input holds more than one CT series and none was chosen."""


@dataclass
class _Clock:
    progress: Progress | None
    timing: dict[str, float] = field(default_factory=dict)
    _started: float = field(default_factory=time.perf_counter)

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.timing[stage] = round(now - self._started, 3)
        self._started = now
        if self.progress:
            self.progress(stage, list(STAGES).index(stage) + 1, len(STAGES))


@dataclass(frozen=True)
class AnalysisResult:
    report: AnalysisReport
    report_path: Path
    seg_path: Path | None
    sr_path: Path | None


def read_series(
    paths: Iterable[Path], series_instance_uid: str | None = None
) -> tuple[Volume, list[Dataset]]:
    """The CT volume of one series among files, and its slice datasets in volume (k) order."""
    datasets = []
    for path in paths:
        try:
            datasets.append(pydicom.dcmread(path))
        except Exception as exc:  # pydicom raises many types for broken input
            raise InvalidDicomError(f"{path}: not a readable DICOM file ({exc})") from exc
    return choose_series(datasets, series_instance_uid)


def read_archived_series(archive, tenant_id: str, study_instance_uid: str, series_instance_uid: str) -> tuple[Volume, list[Dataset]]:  # type: ignore[no-untyped-def]
    """The same for a series stored in the archive (any storage backend)."""
    datasets = []
    for stored in archive.locate_instances(tenant_id, study_instance_uid, series_instance_uid):
        with archive.storage.open(stored.storage_key) as handle:
            datasets.append(pydicom.dcmread(handle))
    return choose_series(datasets, series_instance_uid)


def choose_series(datasets: Iterable[Dataset], series_instance_uid: str | None = None) -> tuple[Volume, list[Dataset]]:
    """Group slices by series, pick the one asked for (or the only one), build its volume."""
    by_series: dict[str, list[Dataset]] = defaultdict(list)
    for ds in datasets:
        if "PixelData" in ds:  # DICOMDIR, SR, presentation states are not slices
            by_series[str(ds.get("SeriesInstanceUID", ""))].append(ds)
    if series_instance_uid is not None:
        if series_instance_uid not in by_series:
            raise VolumeError(f"series {series_instance_uid} is not in the input")
        chosen = by_series[series_instance_uid]
    else:
        axial = {uid: split_series(items)[0] for uid, items in by_series.items()}
        candidates = [uid for uid, items in axial.items() if items]
        if not candidates and by_series:
            raise LocalizerError("the input holds only localizer (scout) images, no cross-sectional series")
        if not candidates:
            raise VolumeError("the input holds no image slices")
        if len(candidates) > 1:
            listed = ", ".join(f"{uid} ({len(axial[uid])} slices)" for uid in candidates)
            raise MultipleSeriesError(f"the input holds {len(candidates)} series ({listed}); choose one with --series")
        chosen = by_series[candidates[0]]
    volume = volume_from_datasets(chosen)
    order = {uid: k for k, uid in enumerate(volume.sop_instance_uids)}
    slices = sorted((ds for ds in chosen if str(ds.SOPInstanceUID) in order), key=lambda ds: order[str(ds.SOPInstanceUID)])
    return volume, slices


def analyze_series(
    paths: Iterable[Path],
    out_dir: Path,
    *,
    device: DeviceChoice | str = DeviceChoice.AUTO,
    series_instance_uid: str | None = None,
    progress: Progress | None = None,
    write_dicom: bool = True,
    min_confidence: float = MIN_CONFIDENCE,
) -> AnalysisResult:
    """Analyse one CT series given as files; write the report (and SEG/SR) under ``out_dir``."""
    torch_device = resolve_device(device)  # fail on a bad --device before reading anything
    clock = _Clock(progress)
    volume, slices = read_series(paths, series_instance_uid)
    clock.lap("read")
    return analyze_volume(volume, slices, out_dir, clock=clock, device=str(torch_device), write_dicom=write_dicom,
                          min_confidence=min_confidence)


def analyze_volume(
    volume: Volume,
    slices: Sequence[Dataset],
    out_dir: Path,
    *,
    clock: _Clock | None = None,
    device: str = "cpu",
    write_dicom: bool = True,
    min_confidence: float = MIN_CONFIDENCE,
) -> AnalysisResult:
    """Analyse a volume whose slice datasets (volume order) are given; write results under ``out_dir``.

    Findings below ``min_confidence`` are not reported; only an evaluation tracing a whole FROC
    curve asks for less than the product's :data:`MIN_CONFIDENCE`.
    """
    from sensecare.analysis.diffuse import discount_in_diffuse_disease
    from sensecare.analysis.lungs import segment_lungs
    from sensecare.analysis.measure import measure_lesion
    from sensecare.analysis.opacity import dense_parenchyma, measure_opacity

    clock = clock or _Clock(None)
    out_dir.mkdir(parents=True, exist_ok=True)

    lungs = segment_lungs(volume)
    clock.lap("lungs")
    found = lesion_findings(volume, lungs, device, min_confidence)
    clock.lap("lesions")

    # The parenchyma first: in a diffusely abnormal scan, sub-solid findings are rather patches
    # of the disease (sensecare.analysis.diffuse), which changes their order and who is reported.
    parenchyma = dense_parenchyma(volume.array, volume.spacing, lungs.lungs, lungs.region)
    found = discount_in_diffuse_disease(found, parenchyma.percent_opacity, min_confidence)
    superior, posterior = _axis_signs(volume)
    opacity = measure_opacity(
        volume.array, volume.spacing, lungs.lungs, lungs.region,
        # Only reported findings (the flag threshold) are opacity: a low-confidence candidate is
        # usually a vessel crossing, which the opacity stage has its own rule for.
        lesion_masks=[(lesion.mask, lesion.offset) for lesion in found if lesion.confidence >= FLAG_CONFIDENCE],
        superior_axis_sign=superior, posterior_axis_sign=posterior, parenchyma=parenchyma,
    )
    clock.lap("opacity")

    lesions: list[LesionReport] = []
    for number, lesion in enumerate(found, start=1):
        m = measure_lesion(volume, lesion.mask, lesion.offset, lungs.lungs)
        lesions.append(
            LesionReport(
                id=number,
                type=str(getattr(lesion.type, "value", lesion.type)),
                confidence=round(float(lesion.confidence), 3),
                center_lps_mm=_rounded(m.center_lps_mm),
                bbox_lps_mm_min=_rounded(m.bbox_lps_mm_min),
                bbox_lps_mm_max=_rounded(m.bbox_lps_mm_max),
                volume_ml=round(float(m.volume_ml), 3),
                long_axis_mm=round(float(m.long_axis_mm), 1),
                short_axis_mm=round(float(m.short_axis_mm), 1),
                mean_hu=round(float(m.mean_hu), 1),
                side=m.side,
                slice_index=int(m.slice_index),
                sop_instance_uid=volume.sop_instance_uids[int(m.slice_index)],
                tracking_uid=_tracking_uid(volume.series_instance_uid, number),
            )
        )
    lesions = [_with_lobe(report, opacity.lobes, lesion) for report, lesion in zip(lesions, found)]
    clock.lap("measure")

    outputs: dict[str, str] = {}
    seg_path = sr_path = None
    if write_dicom:
        seg_path, sr_path = _write_dicom(volume, slices, lungs, found, lesions, opacity.summary, out_dir, clock)
        outputs = {"seg": seg_path.name, "sr": sr_path.name}
    else:
        clock.lap("seg")
        clock.lap("sr")

    voxel_ml = float(np.prod(volume.spacing)) / 1000.0
    lobe_volumes = {name: round(float(count) * voxel_ml, 1) for name, count in opacity.lobe_voxels.items()}
    flags = flags_for(lesions, opacity.summary)
    report = AnalysisReport(
        sensecare_version=__version__,
        created_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        series=_series_info(volume, slices),
        lungs=LungVolumes(
            right_ml=round(lungs.right_volume_ml, 1),
            left_ml=round(lungs.left_volume_ml, 1),
            total_ml=round(lungs.right_volume_ml + lungs.left_volume_ml, 1),
            lobes_ml=lobe_volumes,
        ),
        lesions=lesions,
        opacity=opacity.summary,
        flags=flags,
        urgency=urgency_for(flags),
        timing_s={},
        models=_models(_heatmap_model(device), _ranker_model(device), _verifier_model(device), _lesion_network(device)),
        device=device,
        outputs=outputs,
    )
    clock.lap("report")
    report = report.model_copy(update={"timing_s": {**clock.timing, "total": round(sum(clock.timing.values()), 3)}})
    report_path = out_dir / "report.json"
    report_path.write_text(json.dumps(report.model_dump(mode="json"), indent=2) + "\n")
    return AnalysisResult(report=report, report_path=report_path, seg_path=seg_path, sr_path=sr_path)


def lesion_findings(volume: Volume, lungs, device: str = "cpu", min_confidence: float = MIN_CONFIDENCE) -> list:  # type: ignore[no-untyped-def]
    """The lesion stage with the shipped models: detections, outlined, confirmed by the patch network,
    ground glass with a solid core typed part solid; best first."""
    from sensecare.analysis.detect import detect_lesions
    from sensecare.analysis.refine import refine_lesions
    from sensecare.analysis.solid_core import type_solid_cores

    found = detect_lesions(volume, lungs, _heatmap_model(device), _ranker_model(device),
                           verifier=_verifier_model(device), min_confidence=min_confidence)
    found = refine_lesions(volume.array, volume.spacing, found, _lesion_network(device))
    found = [lesion for lesion in found if lesion.confidence >= min_confidence]
    return type_solid_cores(volume.array, volume.spacing, found)


def _write_dicom(volume, slices, lungs, found, lesions, opacity_summary, out_dir, clock):  # type: ignore[no-untyped-def]
    from sensecare.dicom.seg import AlgorithmInfo, SegmentSpec, build_segmentation
    from sensecare.dicom.sr import LesionMeasurement, OpacitySummary, build_report

    algorithm = AlgorithmInfo(name=ALGORITHM_NAME, version=__version__)
    # Masks go in as crops (the lungs' box, each lesion's own box): series-sized copies
    # of every mask cost more than encoding them.
    box = _lung_box(lungs.lungs)
    offset = tuple(s.start for s in box)
    segments = [
        SegmentSpec(label="Right lung", kind="lung", mask=lungs.lungs[box] == 1, side="right", offset=offset),
        SegmentSpec(label="Left lung", kind="lung", mask=lungs.lungs[box] == 2, side="left", offset=offset),
    ]
    for report, lesion in zip(lesions, found):
        segments.append(
            SegmentSpec(
                label=f"Lesion {report.id}", kind="lesion", mask=lesion.mask, offset=tuple(int(v) for v in lesion.offset),
                lesion_type=report.type, side=report.side, lobe=report.lobe,
                tracking_id=f"lesion-{report.id}", tracking_uid=report.tracking_uid,
            )
        )
    segmentation = build_segmentation(slices, segments, algorithm=algorithm)
    seg_path = out_dir / "seg.dcm"
    segmentation.save_as(seg_path)
    clock.lap("seg")
    measurements = [
        LesionMeasurement(
            tracking_id=f"lesion-{report.id}", tracking_uid=report.tracking_uid or "", segment_number=index + 3,
            lesion_type=report.type, volume_ml=report.volume_ml, long_axis_mm=report.long_axis_mm,
            short_axis_mm=report.short_axis_mm, mean_hu=report.mean_hu, confidence=report.confidence,
            side=report.side, lobe=report.lobe, center_lps_mm=report.center_lps_mm,
        )
        for index, report in enumerate(lesions)
    ]
    opacity = OpacitySummary(
        percent_opacity=opacity_summary.percent_opacity,
        percent_opacity_right=opacity_summary.percent_opacity_right,
        percent_opacity_left=opacity_summary.percent_opacity_left,
    )
    sr = build_report(slices, segmentation, measurements, algorithm=algorithm, opacity=opacity)
    sr_path = out_dir / "sr.dcm"
    sr.save_as(sr_path)
    clock.lap("sr")
    return seg_path, sr_path


def _lung_box(labels: np.ndarray) -> tuple[slice, slice, slice]:
    """Bounding box of the lung labels (the whole volume when there are none)."""
    from sensecare.masks import bounding_box

    box = bounding_box(labels)
    return box if box is not None else (slice(0, labels.shape[0]), slice(0, labels.shape[1]), slice(0, labels.shape[2]))


def _with_lobe(report: LesionReport, lobes: np.ndarray, lesion) -> LesionReport:  # type: ignore[no-untyped-def]
    """The lobe holding most of the lesion (approximate lobes, see analysis.lobes)."""
    from sensecare.analysis.lobes import Lobe

    z0, y0, x0 = lesion.offset
    dz, dy, dx = lesion.mask.shape
    labels = lobes[z0 : z0 + dz, y0 : y0 + dy, x0 : x0 + dx][lesion.mask]
    labels = labels[labels > 0]
    if labels.size == 0:
        return report
    lobe = Lobe(int(np.bincount(labels).argmax())).name
    side = report.side or ("right" if lobe.startswith("R") else "left")
    return report.model_copy(update={"lobe": lobe, "side": side})


def _axis_signs(volume: Volume) -> tuple[float, float]:
    """Whether array axes 0 (k) and 1 (j) point to the head (+z LPS) and the back (+y LPS)."""
    direction = np.asarray(volume.direction, dtype=float)
    superior = 1.0 if direction[2, 2] >= 0 else -1.0
    posterior = 1.0 if direction[1, 1] >= 0 else -1.0
    return superior, posterior


def _series_info(volume: Volume, slices: Sequence[Dataset]) -> SeriesInfo:
    first = slices[0] if slices else Dataset()

    def text(keyword: str) -> str | None:
        value = first.get(keyword)
        if value is None or value == "":
            return None
        if isinstance(value, pydicom.multival.MultiValue):
            return "\\".join(str(v) for v in value)
        return str(value)

    thickness = first.get("SliceThickness")
    direction = np.asarray(volume.direction, dtype=float).T
    return SeriesInfo(
        study_instance_uid=volume.study_instance_uid,
        series_instance_uid=volume.series_instance_uid,
        patient_id=text("PatientID"),
        modality=text("Modality") or "CT",
        series_description=text("SeriesDescription"),
        manufacturer=text("Manufacturer"),
        convolution_kernel=text("ConvolutionKernel"),
        slice_thickness_mm=float(thickness) if thickness not in (None, "") else None,
        shape_xyz=volume.shape_xyz,
        spacing_mm=_rounded(volume.spacing, 4),
        origin_lps_mm=_rounded(volume.origin, 3),
        direction=tuple(_rounded(row, 6) for row in direction),  # type: ignore[arg-type]
        uneven_spacing=volume.uneven_spacing,
        gantry_tilt_deg=round(volume.gantry_tilt_deg, 2),
    )


def _models(heatmap, ranker, verifier, network) -> list[ModelInfo]:  # type: ignore[no-untyped-def]
    return [
        ModelInfo(name=heatmap.name, version=heatmap.version, kind="MONAI FullyConnectedNet: lesion voxel classifier (detection)"),
        ModelInfo(name=ranker.name, version=ranker.version, kind="MONAI FullyConnectedNet: detection false-positive reduction"),
        ModelInfo(name=verifier.name, version=verifier.version, kind="MONAI Classifier: 3D patch false-positive reduction"),
        ModelInfo(name=network.name, version=network.version, kind="MONAI SegResNet: candidate false-positive reduction"),
        ModelInfo(name="sensecare-lungs", version=__version__, kind="lung segmentation (classical)"),
        ModelInfo(name="sensecare-lesions", version=__version__, kind="lesion segmentation and type (classical)"),
        ModelInfo(name="sensecare-opacity", version=__version__, kind="percent opacity and severity (classical)"),
    ]


@functools.lru_cache(maxsize=4)
def _heatmap_model(device: str):  # type: ignore[no-untyped-def]
    """The voxel classifier, loaded once per device and process."""
    import torch

    from sensecare.analysis.heatmap import LesionHeatmapModel

    return LesionHeatmapModel(torch.device(device))


@functools.lru_cache(maxsize=4)
def _ranker_model(device: str):  # type: ignore[no-untyped-def]
    """The detection ranker, loaded once per device and process."""
    import torch

    from sensecare.analysis.ranker import LesionRanker

    return LesionRanker(torch.device(device))


@functools.lru_cache(maxsize=4)
def _verifier_model(device: str):  # type: ignore[no-untyped-def]
    """The patch verifier, loaded once per device and process."""
    import torch

    from sensecare.analysis.verifier import LesionVerifier

    return LesionVerifier(torch.device(device))


@functools.lru_cache(maxsize=4)
def _lesion_network(device: str):  # type: ignore[no-untyped-def]
    """Loaded once per device and process: a worker analysing study after study reuses it."""
    import torch

    from sensecare.analysis.network import LesionNetwork

    return LesionNetwork(torch.device(device))


def _tracking_uid(series_instance_uid: str, number: int) -> str:
    """Stable per series and lesion number, so re-analysing gives the same UIDs."""
    return f"2.25.{uuid.uuid5(uuid.NAMESPACE_OID, f'{series_instance_uid}/lesion/{number}').int}"


def _rounded(values, digits: int = 2) -> tuple[float, float, float]:  # type: ignore[no-untyped-def]
    a, b, c = (round(float(v), digits) for v in values)
    return (a, b, c)

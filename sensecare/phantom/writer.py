"""Write a phantom as a CT DICOM series with its ground truth beside it.

Output folder::

    CT0001.dcm ... CTnnnn.dcm   one CT Image Storage Part 10 file per slice
    ground_truth.json           spec, geometry, UIDs, lung volumes, PO/PHO, lesions (LPS mm)
    masks.npz                   lungs, lobes, airways, vessels, lesions, opacity, high_opacity

UIDs are derived from the seed and the spec (PS3.5 B.2 UUID-derived via
``pydicom.uid.generate_uid``), so writing the same spec twice gives the same
instances, and series that differ only in reconstruction (kernel,
thickness) share one study and frame of reference, as on a scanner.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    generate_uid,
)
from pydicom.valuerep import format_number_as_ds

from sensecare import __version__
from sensecare.errors import PhantomError
from sensecare.phantom.truth import Phantom

__all__ = ["phantom_uids", "write_phantom"]

MANUFACTURER = "SenseCare phantom"
_OWN_FILES = ("ground_truth.json", "masks.npz")
LUNG_WINDOW = (-600.0, 1500.0)
MEDIASTINAL_WINDOW = (40.0, 400.0)


def phantom_uids(ph: Phantom) -> dict[str, str]:
    """Study, series and frame-of-reference UIDs, deterministic in the spec."""
    s = ph.spec
    patient = ["sensecare-phantom", str(s.seed), s.size, s.sex, str(s.age)]
    recon = patient + [repr(dataclasses.astuple(s))]
    return {
        "study_instance_uid": generate_uid(entropy_srcs=patient + ["study"]),
        "frame_of_reference_uid": generate_uid(entropy_srcs=patient + ["frame-of-reference"]),
        "series_instance_uid": generate_uid(entropy_srcs=recon + ["series"]),
    }


def _ds(values: Any) -> list[str]:
    return [format_number_as_ds(float(v)) for v in values]


def _header(ph: Phantom, uids: dict[str, str]) -> Dataset:
    """Attributes shared by every slice."""
    s = ph.spec
    ds = Dataset()
    ds.SOPClassUID = CTImageStorage
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = ds.AcquisitionDate = "20240101"
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = ds.AcquisitionTime = "120000"
    ds.AccessionNumber = ""
    ds.Modality = "CT"
    ds.Manufacturer = MANUFACTURER
    ds.ManufacturerModelName = "sensecare.phantom"
    ds.SoftwareVersions = __version__
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = "Synthetic chest CT phantom"
    ds.SeriesDescription = f"Phantom {s.slice_thickness_mm:g} mm {ph.kernel_name}"
    ds.PatientName = f"Phantom^{s.seed}"
    ds.PatientID = f"PHANTOM-{s.seed}"
    ds.PatientBirthDate = ""
    ds.PatientSex = s.sex
    ds.PatientAge = f"{int(s.age):03d}Y"
    ds.BodyPartExamined = "CHEST"
    ds.PatientPosition = "HFS"
    ds.SliceThickness = format_number_as_ds(float(s.slice_thickness_mm))
    ds.SpacingBetweenSlices = format_number_as_ds(float(ph.spacing[2]))
    ds.KVP = "120"
    ds.XRayTubeCurrent = round(200 * float(s.dose))
    ds.ConvolutionKernel = ph.kernel_name
    ds.ReconstructionDiameter = format_number_as_ds(float(ph.spacing[0] * ph.hu.shape[2]))
    ds.GantryDetectorTilt = "0"
    ds.RotationDirection = "CW"
    if s.contrast:
        ds.ContrastBolusAgent = "IV contrast (simulated)"
    ds.StudyInstanceUID = uids["study_instance_uid"]
    ds.SeriesInstanceUID = uids["series_instance_uid"]
    ds.FrameOfReferenceUID = uids["frame_of_reference_uid"]
    ds.PositionReferenceIndicator = ""
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    ds.ImageOrientationPatient = _ds([1, 0, 0, 0, 1, 0])
    ds.PixelSpacing = _ds([ph.spacing[1], ph.spacing[0]])  # row spacing (y), column spacing (x)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = int(ph.hu.shape[1]), int(ph.hu.shape[2])
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.RescaleIntercept = "-1024"
    ds.RescaleSlope = "1"
    ds.RescaleType = "HU"
    ds.WindowCenter = _ds([LUNG_WINDOW[0], MEDIASTINAL_WINDOW[0]])
    ds.WindowWidth = _ds([LUNG_WINDOW[1], MEDIASTINAL_WINDOW[1]])
    ds.WindowCenterWidthExplanation = ["LUNG", "MEDIASTINUM"]
    return ds


def write_phantom(ph: Phantom, out_dir: str | Path, *, overwrite: bool = False,
                  progress: Callable[[int, int], None] | None = None) -> Path:
    """Write the DICOM series, ``ground_truth.json`` and ``masks.npz`` into ``out_dir``.

    Parameters
    ----------
    overwrite : bool
        Replace a phantom already written there (only its own files are removed);
        otherwise a non-empty folder is refused.
    progress : callable, optional
        ``progress(done, total)`` after each slice.

    Returns
    -------
    Path
        The folder.

    Raises
    ------
    PhantomError
        The folder is not empty (and ``overwrite`` is false) or cannot be written.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise PhantomError(f"{out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise PhantomError(f"{out} is not empty; choose an empty folder or overwrite")
        for old in [*out.glob("CT*.dcm"), *(out / name for name in _OWN_FILES)]:
            old.unlink(missing_ok=True)
    try:
        out.mkdir(parents=True, exist_ok=True)
        uids = phantom_uids(ph)
        _write_slices(ph, out, uids, progress)
        np.savez_compressed(
            out / "masks.npz", lungs=ph.lungs, lobes=ph.lobes, airways=ph.airways, vessels=ph.vessels,
            lesions=ph.lesions, opacity=ph.opacity, high_opacity=ph.high_opacity,
        )
        (out / "ground_truth.json").write_text(json.dumps(_truth_json(ph, uids), indent=1))
    except OSError as exc:
        raise PhantomError(f"cannot write the phantom to {out}: {exc.strerror or exc}") from exc
    return out


def _write_slices(ph: Phantom, out: Path, uids: dict[str, str], progress: Callable[[int, int], None] | None) -> None:
    base = _header(ph, uids)
    n = ph.hu.shape[0]
    for k in range(n):
        ds = Dataset()
        ds.update(base)
        sop = generate_uid(entropy_srcs=[uids["series_instance_uid"], str(k)])
        ds.SOPInstanceUID = sop
        ds.InstanceNumber = k + 1
        pos = ph.index_to_lps((0, 0, k))
        ds.ImagePositionPatient = _ds(pos)
        ds.SliceLocation = format_number_as_ds(float(pos[2]))
        stored = (ph.hu[k].astype(np.int32) + 1024).astype(np.uint16)
        ds.LargestImagePixelValue = int(stored.max())
        ds.SmallestImagePixelValue = int(stored.min())
        ds.PixelData = stored.tobytes()
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = sop
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        ds.file_meta = meta
        ds.save_as(out / f"CT{k + 1:04d}.dcm", enforce_file_format=True)
        if progress is not None:
            progress(k + 1, n)


def _truth_json(ph: Phantom, uids: dict[str, str]) -> dict[str, Any]:
    return {
        "generator": f"sensecare.phantom {__version__}",
        "coordinates": "DICOM patient LPS, mm",
        "spec": dataclasses.asdict(ph.spec),
        "lesion_specs": ph.extra.get("lesion_specs", []),
        "geometry": {
            "shape_zyx": list(ph.hu.shape),
            "spacing_xyz_mm": list(ph.spacing),
            "origin_lps_mm": list(ph.origin),
            "image_orientation_patient": [1, 0, 0, 0, 1, 0],
            "slice_order": "k = 0 is the most inferior slice; z increases with k",
            "slice_thickness_mm": ph.spec.slice_thickness_mm,
        },
        "uids": uids,
        "kernel": ph.kernel_name,
        "noise_sd_hu": ph.noise_sd_hu,
        "lung_volume_ml": ph.lung_volume_ml,
        "percent_opacity": ph.percent_opacity,
        "percent_high_opacity": ph.percent_high_opacity,
        "lesions": [dataclasses.asdict(t) for t in ph.truth],
        "masks": {
            "file": "masks.npz",
            "lungs": {"0": "outside", "1": "right lung", "2": "left lung"},
            "lobes": {"1": "RUL", "2": "RML", "3": "RLL", "4": "LUL", "5": "LLL"},
            "airways": "trachea and bronchial lumen",
            "vessels": "pulmonary vessel voxels at least half filled",
            "lesions": "lesion id per voxel (0 background)",
            "opacity": {"1": "diffuse ground glass", "2": "diffuse high opacity (>= -200 HU)"},
            "high_opacity": "diffuse opacity or lesion tissue >= -200 HU",
        },
    }

"""Synthetic CT series for tests: small, deterministic, geometrically exact.

Each slice is a CT Image Storage instance (PS3.3 A.3) with a proper File Meta
Information group (Explicit VR Little Endian), so it can be written as a
Part 10 file or stored in the archive.

What tests can rely on
----------------------
* Slice ``k`` (0-based, counted along the slice normal) has its origin at
  ``origin + k * slice_spacing * normal``, where ``normal`` is the cross
  product of the row and column cosines of `orientation`.
* Its SOP Instance UID ends in ``.{k + 1}`` (see :func:`slice_index`).
* Its pixel at row 0, column 0 has the HU value :func:`marker_hu` ``(k)``;
  the other pixels are seeded noise between -1000 and 400 HU.
* Stored values are int16 with RescaleSlope 1 and RescaleIntercept -1024
  unless told otherwise; :func:`set_rescale` re-encodes a slice with another
  slope/intercept while keeping its HU.
* InstanceNumber is ``k + 1``; tests that want it misleading scramble it.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
)
from pydicom.valuerep import format_number_as_ds

__all__ = [
    "MARKER_BASE_HU",
    "MARKER_STEP_HU",
    "make_ct_series",
    "marker_hu",
    "new_uid",
    "set_rescale",
    "slice_index",
    "write_series",
]

MARKER_BASE_HU = -500
MARKER_STEP_HU = 10


def new_uid() -> str:
    """A fresh UUID-derived UID (PS3.5 B.2), short enough to append ``.N``."""
    return f"2.25.{uuid.uuid4().int}"


def marker_hu(k: int) -> int:
    """HU at (row 0, column 0) of slice `k` (its index along the normal)."""
    return MARKER_BASE_HU + MARKER_STEP_HU * k


def slice_index(ds: Dataset) -> int:
    """Spatial index ``k`` of a slice made by :func:`make_ct_series`."""
    return int(str(ds.SOPInstanceUID).rsplit(".", 1)[1]) - 1


def _ds(values: Iterable[float]) -> list[str]:
    return [format_number_as_ds(float(v)) for v in values]


def make_ct_series(
    n_slices: int = 20,
    rows: int = 32,
    cols: int = 32,
    spacing: tuple[float, float] = (0.7, 0.7),
    slice_spacing: float = 2.5,
    orientation: Sequence[float] = (1, 0, 0, 0, 1, 0),
    origin: Sequence[float] = (-100, -100, -50),
    study_uid: str | None = None,
    series_uid: str | None = None,
    patient_id: str = "PHANTOM-1",
    patient_name: str = "Phantom^One",
    shuffle: bool = True,
    seed: int = 0,
    *,
    rescale_slope: float = 1.0,
    rescale_intercept: float = -1024.0,
    modality: str = "CT",
) -> list[Dataset]:
    """Make the instances of one synthetic CT series.

    Parameters
    ----------
    n_slices, rows, cols
        Number of slices and matrix size.
    spacing
        *PixelSpacing*: (row spacing, column spacing) in mm.
    slice_spacing
        Distance between slice origins along the normal, in mm (negative
        values stack the slices against the normal).
    orientation
        *ImageOrientationPatient* (row cosines, column cosines).
    origin
        *ImagePositionPatient* of slice 0.
    study_uid, series_uid
        Fresh UIDs when None.
    shuffle
        Return the slices in a seeded random order (as an archive might).
    seed
        Seeds the pixel noise and the shuffle.

    Returns
    -------
    list of Dataset
    """
    rng = np.random.default_rng(seed)
    study_uid = study_uid or new_uid()
    series_uid = series_uid or new_uid()
    frame_uid = new_uid()
    sop_root = new_uid()
    iop = np.asarray(orientation, dtype=float)
    normal = np.cross(iop[:3], iop[3:])
    normal /= np.linalg.norm(normal)
    origin_v = np.asarray(origin, dtype=float)

    out: list[Dataset] = []
    for k in range(n_slices):
        hu = rng.integers(-1000, 401, size=(rows, cols), dtype=np.int64)
        hu[0, 0] = marker_hu(k)
        position = origin_v + k * slice_spacing * normal

        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = f"{sop_root}.{k + 1}"
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID

        ds = Dataset()
        ds.file_meta = meta
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.StudyDate = "20240101"
        ds.StudyTime = "120000"
        ds.AccessionNumber = "ACC-1"
        ds.Modality = modality
        ds.Manufacturer = "SenseCare synthetic"
        ds.PatientName = patient_name
        ds.PatientID = patient_id
        ds.PatientBirthDate = "19600101"
        ds.PatientSex = "O"
        ds.SliceThickness = format_number_as_ds(abs(float(slice_spacing)))
        ds.KVP = "120"
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.StudyID = "1"
        ds.SeriesNumber = 1
        ds.SeriesDescription = "Synthetic chest"
        ds.InstanceNumber = k + 1
        ds.FrameOfReferenceUID = frame_uid
        ds.PositionReferenceIndicator = ""
        ds.ImagePositionPatient = _ds(position)
        ds.ImageOrientationPatient = _ds(iop)
        ds.SliceLocation = format_number_as_ds(float(position @ normal))
        ds.PixelSpacing = _ds(spacing)
        ds.WindowCenter = ["40", "-600"]
        ds.WindowWidth = ["400", "1500"]
        ds.RescaleType = "HU"
        _encode(ds, hu, rescale_slope, rescale_intercept)
        out.append(ds)

    if shuffle:
        order = rng.permutation(n_slices)
        out = [out[i] for i in order]
    return out


def _encode(ds: Dataset, hu: np.ndarray, slope: float, intercept: float) -> None:
    stored = np.rint((hu.astype(np.float64) - intercept) / slope)
    if stored.min() < -32768 or stored.max() > 32767:
        raise ValueError(f"slope {slope} / intercept {intercept} overflow int16 stored values")
    ds.set_pixel_data(stored.astype(np.int16), "MONOCHROME2", 16, generate_instance_uid=False)
    ds.RescaleSlope = format_number_as_ds(float(slope))
    ds.RescaleIntercept = format_number_as_ds(float(intercept))


def set_rescale(ds: Dataset, slope: float, intercept: float) -> Dataset:
    """Re-encode `ds` with another RescaleSlope/Intercept, keeping its HU."""
    hu = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    _encode(ds, hu, slope, intercept)
    return ds


def write_series(datasets: Sequence[Dataset], directory: str | Path) -> list[Path]:
    """Write `datasets` as Part 10 files ``IMG0000.dcm``... in list order."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, ds in enumerate(datasets):
        path = directory / f"IMG{i:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths

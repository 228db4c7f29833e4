"""Turn a stored CT series into a 3-D volume for analysis.

A CT series is a bag of single-frame images; nothing in a file name, in
*InstanceNumber* (0020,0013) or in the order the archive returns them says
where a slice lies.  The only authority is the Image Plane Module
(PS3.3 C.7.6.2): *ImagePositionPatient* (0020,0032) is the LPS position (mm)
of the centre of the first transmitted pixel, *ImageOrientationPatient*
(0020,0037) the direction cosines of the first row and first column, and
*PixelSpacing* (0028,0030) the distance between row centres, then between
column centres.  Slices are therefore ordered by the projection of their
position on the slice normal, and the volume geometry is derived from those
positions only.

Stored values become Hounsfield units through *RescaleSlope* (0028,1053) and
*RescaleIntercept* (0028,1052) (PS3.3 C.11.1.1.2, CT Image Module
PS3.3 C.8.2.1), applied slice by slice because scanners may vary them.

Index convention
----------------
``Volume.array`` is indexed ``array[k, j, i]`` (slice, row, column), i.e.
NumPy shape ``(z, y, x)``.  Every *geometric* API (``spacing``,
``index_to_lps``, ``lps_to_index``, ``shape_xyz``, the columns of
``direction``) uses the opposite order ``(i, j, k)`` = ``(x/column,
y/row, z/slice)``, the ITK / DICOM convention.  A voxel found as
``array[k, j, i]`` has the LPS centre ``index_to_lps((i, j, k))``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError as PydicomInvalidDicomError

from sensecare.errors import (
    InvalidDicomError,
    LocalizerError,
    MissingSlicesError,
    MixedGeometryError,
    NotCTError,
    TooFewSlicesError,
    VolumeError,
)

logger = logging.getLogger(__name__)

__all__ = [
    "Volume",
    "split_series",
    "volume_from_datasets",
    "volume_from_files",
]

#: Largest allowed difference between direction cosines of two slices.
ORIENTATION_TOLERANCE = 1e-4
#: Largest allowed difference (mm) between the pixel spacings of two slices.
PIXEL_SPACING_TOLERANCE = 1e-4
#: Slice spacings differing from the median by more than this fraction are "uneven".
UNEVEN_SPACING_FRACTION = 0.01
#: A gap larger than this multiple of the median spacing means slices are missing.
MISSING_SLICE_FACTOR = 1.5
#: Two slices closer than this (mm) along the normal share a position.
DUPLICATE_POSITION_MM = 0.01
#: Below this angle (degrees) a stack/normal mismatch is rounding noise, not tilt.
TILT_NOISE_DEG = 0.01

_INT16_MIN, _INT16_MAX = -32768, 32767


@dataclass(frozen=True, eq=False)
class Volume:
    """A CT series resampled onto nothing: the stored voxels in slice order.

    Attributes
    ----------
    array : numpy.ndarray
        Hounsfield units, shape ``(z, y, x)`` = (slices, rows, columns),
        ``array[k]`` being the k-th slice along the slice normal (increasing
        projection of *ImagePositionPatient* on ``row x column`` cosines).
        The dtype is ``int16`` when every slice's *RescaleSlope* and
        *RescaleIntercept* are integers and all HU fit into int16 (the usual
        CT case: exact and half the memory of float32); otherwise
        ``float32``.
    spacing : tuple of float
        Voxel spacing in mm, in ``(x, y, z)`` order: column spacing
        (*PixelSpacing*[1]), row spacing (*PixelSpacing*[0]) and the distance
        between successive slice origins along the stack direction (median,
        from the sorted positions; with gantry tilt this is the slice
        distance along the normal divided by ``cos(tilt)``).
    origin : tuple of float
        LPS position (mm) of the centre of voxel ``(i, j, k) = (0, 0, 0)``,
        i.e. *ImagePositionPatient* of the first sorted slice.
    direction : numpy.ndarray
        3x3 matrix whose columns are the unit vectors, in LPS, of the i
        (column, x), j (row, y) and k (slice) axes.  The k column is the
        actual stack direction (first to last slice origin), which differs
        from the slice normal when the gantry was tilted, so the matrix is
        not always orthogonal.
    series_instance_uid, study_instance_uid : str
        UIDs of the source series and study.
    sop_instance_uids : tuple of str
        SOP Instance UID of each slice, in array (k) order.
    uneven_spacing : bool
        True when a slice distance differs from the median by more than 1 %.
    gantry_tilt_deg : float
        Angle between the slice normal and the stack direction (0 when the
        stack is perpendicular to the slices).
    """

    array: np.ndarray
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: np.ndarray
    series_instance_uid: str
    study_instance_uid: str
    sop_instance_uids: tuple[str, ...]
    uneven_spacing: bool = False
    gantry_tilt_deg: float = 0.0

    @property
    def shape_xyz(self) -> tuple[int, int, int]:
        """Size along ``(i, j, k)`` = (columns, rows, slices), the reverse of ``array.shape``."""
        z, y, x = self.array.shape
        return (int(x), int(y), int(z))

    @property
    def affine(self) -> np.ndarray:
        """4x4 matrix mapping homogeneous ``(i, j, k, 1)`` to LPS mm."""
        out = np.eye(4)
        out[:3, :3] = self.direction * np.asarray(self.spacing, dtype=float)
        out[:3, 3] = self.origin
        return out

    def index_to_lps(self, ijk: Any) -> np.ndarray:
        """Map voxel indices to LPS positions (mm).

        Parameters
        ----------
        ijk : array_like, shape (3,) or (N, 3)
            Indices in ``(i, j, k)`` = (x/column, y/row, z/slice) order;
            fractional values are allowed.  Note this is the *reverse* of the
            order used to subscript ``array``.

        Returns
        -------
        numpy.ndarray
            LPS positions of the same shape as `ijk` (float64).
        """
        idx = _as_points(ijk, "ijk")
        scaled = self.direction * np.asarray(self.spacing, dtype=float)
        return idx @ scaled.T + np.asarray(self.origin, dtype=float)

    def lps_to_index(self, xyz: Any) -> np.ndarray:
        """Map LPS positions (mm) to continuous voxel indices ``(i, j, k)``.

        Parameters
        ----------
        xyz : array_like, shape (3,) or (N, 3)
            LPS positions in mm.

        Returns
        -------
        numpy.ndarray
            Fractional indices in ``(i, j, k)`` = (x/column, y/row, z/slice)
            order; round them and reverse to subscript ``array``.
        """
        pts = _as_points(xyz, "xyz")
        scaled = self.direction * np.asarray(self.spacing, dtype=float)
        return (pts - np.asarray(self.origin, dtype=float)) @ np.linalg.inv(scaled).T


def _as_points(value: Any, name: str) -> np.ndarray:
    arr = np.asarray(value, dtype=float)
    if arr.shape[-1:] != (3,) or arr.ndim not in (1, 2):
        raise ValueError(f"{name} must have shape (3,) or (N, 3), got {arr.shape}")
    return arr


# --- public API ----------------------------------------------------------------


def split_series(datasets: Iterable[Dataset]) -> tuple[list[Dataset], list[Dataset]]:
    """Separate localizer (scout) images from cross-sectional slices.

    Some scanners store the scout in the same series as the axial images.
    A localizer is recognised by ``LOCALIZER`` in *ImageType* (0008,0008),
    whose third value for CT is ``AXIAL`` or ``LOCALIZER`` (PS3.3
    C.8.2.1.1.1).

    Returns
    -------
    tuple of list
        ``(axial_candidates, localizers)``, each in input order.
    """
    axial: list[Dataset] = []
    localizers: list[Dataset] = []
    for ds in datasets:
        (localizers if _is_localizer(ds) else axial).append(ds)
    return axial, localizers


def volume_from_files(paths: Iterable[str | Path], **kw: Any) -> Volume:
    """Read DICOM Part 10 files and build a :class:`Volume`.

    Parameters
    ----------
    paths : iterable of str or Path
        One file per slice, in any order.
    **kw
        Passed to :func:`volume_from_datasets` (e.g. ``min_slices``).

    Raises
    ------
    sensecare.errors.InvalidDicomError
        A file is not a DICOM Part 10 file.
    sensecare.errors.VolumeError
        See :func:`volume_from_datasets`.
    """
    datasets = []
    for path in paths:
        try:
            datasets.append(pydicom.dcmread(path))
        except PydicomInvalidDicomError as exc:
            raise InvalidDicomError(f"{path}: not a DICOM file ({exc})") from exc
    return volume_from_datasets(datasets, **kw)


def volume_from_datasets(datasets: Sequence[Dataset], *, min_slices: int = 10) -> Volume:
    """Build a :class:`Volume` from the instances of one CT series.

    Parameters
    ----------
    datasets : sequence of pydicom.Dataset
        The instances of one series, in any order (localizers allowed; they
        are dropped, see :func:`split_series`).
    min_slices : int
        Fewest cross-sectional slices accepted (at least 2 are always needed
        to know the slice spacing).

    Returns
    -------
    Volume

    Raises
    ------
    NotCTError
        An instance's *Modality* is not ``CT``.
    VolumeError
        Enhanced (multi-frame) CT, a missing or malformed Image Plane
        attribute, missing or undecodable pixel data.
    LocalizerError
        Only localizer images were given.
    TooFewSlicesError
        Fewer than `min_slices` cross-sectional slices.
    MixedGeometryError
        Several series, differing orientation / matrix / pixel spacing, or
        two slices at the same position.
    MissingSlicesError
        A gap between slices larger than 1.5x the median spacing.
    """
    datasets = list(datasets)
    label = _series_label(datasets)
    if not datasets:
        raise TooFewSlicesError("series: no instances given")

    for ds in datasets:
        if _int(ds.get("NumberOfFrames"), 1) > 1:
            raise VolumeError(f"{label}: enhanced multi-frame CT not supported yet")

    modalities = sorted({str(ds.get("Modality", "") or "") for ds in datasets})
    if modalities != ["CT"]:
        shown = ", ".join(m or "<missing>" for m in modalities)
        raise NotCTError(f"{label}: modality {shown} is not CT")

    series_uids = sorted({str(ds.get("SeriesInstanceUID", "")) for ds in datasets})
    if len(series_uids) > 1:
        raise MixedGeometryError(
            f"{label}: instances of {len(series_uids)} different series given as one "
            f"({', '.join(u or '<missing>' for u in series_uids)})"
        )

    slices, localizers = split_series(datasets)
    if localizers:
        logger.info("%s: ignoring %d localizer image(s)", label, len(localizers))
    if not slices:
        raise LocalizerError(f"{label}: only localizer (scout) images, no cross-sectional slices")
    needed = max(min_slices, 2)
    if len(slices) < needed:
        raise TooFewSlicesError(f"{label}: {len(slices)} slice(s), at least {needed} needed")

    row_cos, col_cos, rows, cols, pixel_spacing = _common_geometry(slices, label)
    normal = np.cross(row_cos, col_cos)
    normal /= np.linalg.norm(normal)

    positions = np.array([_floats(ds, "ImagePositionPatient", 3, label) for ds in slices])
    along = positions @ normal
    order = np.argsort(along, kind="stable")
    slices = [slices[i] for i in order]
    positions = positions[order]
    along = along[order]

    diffs = np.diff(along)
    _check_duplicates(diffs, slices, positions, label)
    median = float(np.median(diffs))
    _check_gaps(diffs, median, positions, label)
    uneven = bool(np.any(np.abs(diffs - median) > UNEVEN_SPACING_FRACTION * median))
    if uneven:
        logger.info(
            "%s: uneven slice spacing (%.3f to %.3f mm, median %.3f mm)",
            label, float(diffs.min()), float(diffs.max()), median,
        )

    stack = positions[-1] - positions[0]
    stack_dir = stack / np.linalg.norm(stack)
    cos_tilt = float(np.clip(stack_dir @ normal, -1.0, 1.0))
    tilt_deg = math.degrees(math.acos(cos_tilt))
    if tilt_deg < TILT_NOISE_DEG:
        tilt_deg, k_axis, spacing_z = 0.0, normal, median
    else:
        logger.info("%s: gantry tilt of %.2f degrees", label, tilt_deg)
        k_axis, spacing_z = stack_dir, median / cos_tilt

    direction = np.column_stack([row_cos, col_cos, k_axis])
    array = _hounsfield(slices, rows, cols, label)

    volume = Volume(
        array=array,
        spacing=(float(pixel_spacing[1]), float(pixel_spacing[0]), float(spacing_z)),
        origin=tuple(float(v) for v in positions[0]),  # type: ignore[arg-type]
        direction=direction,
        series_instance_uid=str(slices[0].get("SeriesInstanceUID", "")),
        study_instance_uid=str(slices[0].get("StudyInstanceUID", "")),
        sop_instance_uids=tuple(str(ds.get("SOPInstanceUID", "")) for ds in slices),
        uneven_spacing=uneven,
        gantry_tilt_deg=float(tilt_deg),
    )
    logger.debug(
        "%s: volume %s (x,y,z) spacing %s dtype %s",
        label, volume.shape_xyz, volume.spacing, array.dtype,
    )
    return volume


# --- helpers -------------------------------------------------------------------


def _series_label(datasets: Sequence[Dataset]) -> str:
    """``series <uid> (<description>)`` for one-line error messages."""
    if not datasets:
        return "series"
    first = datasets[0]
    uid = str(first.get("SeriesInstanceUID", "") or "<no SeriesInstanceUID>")
    desc = " ".join(str(first.get("SeriesDescription", "") or "").split())
    return f"series {uid}" + (f" ({desc})" if desc else "")


def _instance(ds: Dataset) -> str:
    return str(ds.get("SOPInstanceUID", "") or "<no SOPInstanceUID>")


def _is_localizer(ds: Dataset) -> bool:
    value = ds.get("ImageType")
    if value is None:
        return False
    parts = value.split("\\") if isinstance(value, str) else list(value)
    return any(str(p).strip().upper() == "LOCALIZER" for p in parts)


def _int(value: Any, default: int) -> int:
    try:
        return int(value) if value not in (None, "") else default
    except (TypeError, ValueError):
        return default


_TAGS = {
    "ImagePositionPatient": "(0020,0032)",
    "ImageOrientationPatient": "(0020,0037)",
    "PixelSpacing": "(0028,0030)",
    "Rows": "(0028,0010)",
    "Columns": "(0028,0011)",
}


def _floats(ds: Dataset, keyword: str, count: int, label: str) -> np.ndarray:
    """Return a multi-valued numeric attribute, or raise naming it."""
    value = ds.get(keyword)
    name = f"{keyword} {_TAGS.get(keyword, '')}".strip()
    if value is None or value == "":
        raise VolumeError(f"{label}: instance {_instance(ds)} has no {name}")
    try:
        out = np.array([float(v) for v in (value if not isinstance(value, (int, float)) else [value])])
    except (TypeError, ValueError) as exc:
        raise VolumeError(f"{label}: instance {_instance(ds)} has a malformed {name}") from exc
    if out.shape != (count,) or not np.all(np.isfinite(out)):
        raise VolumeError(
            f"{label}: instance {_instance(ds)} has a malformed {name} "
            f"({len(out)} value(s), {count} expected)"
        )
    return out


def _common_geometry(
    slices: Sequence[Dataset], label: str
) -> tuple[np.ndarray, np.ndarray, int, int, np.ndarray]:
    """Check that all slices share orientation, matrix and pixel spacing."""
    ref = slices[0]
    ref_iop = _floats(ref, "ImageOrientationPatient", 6, label)
    ref_ps = _floats(ref, "PixelSpacing", 2, label)
    ref_matrix = _matrix(ref, label)
    for ds in slices:
        _floats(ds, "ImagePositionPatient", 3, label)
        iop = _floats(ds, "ImageOrientationPatient", 6, label)
        if np.max(np.abs(iop - ref_iop)) > ORIENTATION_TOLERANCE:
            raise MixedGeometryError(
                f"{label}: ImageOrientationPatient differs between slices "
                f"({_fmt(ref_iop)} vs {_fmt(iop)} in instance {_instance(ds)})"
            )
        matrix = _matrix(ds, label)
        if matrix != ref_matrix:
            raise MixedGeometryError(
                f"{label}: matrix size differs between slices ({ref_matrix[0]}x{ref_matrix[1]} "
                f"vs {matrix[0]}x{matrix[1]} rows x columns in instance {_instance(ds)})"
            )
        ps = _floats(ds, "PixelSpacing", 2, label)
        if np.max(np.abs(ps - ref_ps)) > PIXEL_SPACING_TOLERANCE:
            raise MixedGeometryError(
                f"{label}: PixelSpacing differs between slices "
                f"({_fmt(ref_ps)} vs {_fmt(ps)} mm in instance {_instance(ds)})"
            )
    if np.any(ref_ps <= 0):
        raise VolumeError(f"{label}: PixelSpacing {_fmt(ref_ps)} is not positive")
    row_cos, col_cos = ref_iop[:3], ref_iop[3:]
    norms = np.linalg.norm(row_cos), np.linalg.norm(col_cos)
    if min(norms) < 1e-6:
        raise VolumeError(f"{label}: ImageOrientationPatient {_fmt(ref_iop)} is degenerate")
    row_cos, col_cos = row_cos / norms[0], col_cos / norms[1]
    if abs(float(row_cos @ col_cos)) > 1e-3:
        raise VolumeError(
            f"{label}: ImageOrientationPatient {_fmt(ref_iop)} row and column are not orthogonal"
        )
    return row_cos, col_cos, ref_matrix[0], ref_matrix[1], ref_ps


def _matrix(ds: Dataset, label: str) -> tuple[int, int]:
    for keyword in ("Rows", "Columns"):
        if ds.get(keyword) in (None, ""):
            raise VolumeError(f"{label}: instance {_instance(ds)} has no {keyword} {_TAGS[keyword]}")
    return int(ds.Rows), int(ds.Columns)


def _fmt(values: Iterable[float]) -> str:
    return "[" + ", ".join(f"{v:g}" for v in values) + "]"


def _check_duplicates(
    diffs: np.ndarray, slices: Sequence[Dataset], positions: np.ndarray, label: str
) -> None:
    dup = np.flatnonzero(diffs < DUPLICATE_POSITION_MM)
    if dup.size:
        i = int(dup[0])
        more = f" ({dup.size} duplicate positions in all)" if dup.size > 1 else ""
        raise MixedGeometryError(
            f"{label}: duplicate slice position: instances {_instance(slices[i])} and "
            f"{_instance(slices[i + 1])} are both at {_fmt(positions[i])} mm{more}"
        )


def _check_gaps(diffs: np.ndarray, median: float, positions: np.ndarray, label: str) -> None:
    gaps = np.flatnonzero(diffs > MISSING_SLICE_FACTOR * median)
    if gaps.size:
        i = int(gaps[0])
        missing = max(1, round(float(diffs[i]) / median) - 1)
        more = f" ({gaps.size} gaps in all)" if gaps.size > 1 else ""
        raise MissingSlicesError(
            f"{label}: missing slices: gap of {diffs[i]:.2f} mm after the slice at "
            f"{_fmt(positions[i])} mm where {median:.2f} mm is expected "
            f"(about {missing} slice(s) missing){more}"
        )


def _hounsfield(slices: Sequence[Dataset], rows: int, cols: int, label: str) -> np.ndarray:
    """Decode and rescale each slice (PS3.3 C.11.1.1.2: HU = slope * SV + intercept)."""
    rescales = [_rescale(ds) for ds in slices]
    integral = all(float(s).is_integer() and float(b).is_integer() for s, b in rescales)
    out = np.empty((len(slices), rows, cols), dtype=np.int16 if integral else np.float32)
    for k, (ds, (slope, intercept)) in enumerate(zip(slices, rescales)):
        if "PixelData" not in ds:
            raise VolumeError(f"{label}: instance {_instance(ds)} has no pixel data")
        try:
            stored = ds.pixel_array
        except Exception as exc:  # pydicom raises many types for undecodable data
            raise VolumeError(
                f"{label}: cannot decode pixel data of instance {_instance(ds)}: {exc}"
            ) from exc
        if stored.shape != (rows, cols):
            raise VolumeError(
                f"{label}: instance {_instance(ds)} pixel data has shape {stored.shape}, "
                f"expected ({rows}, {cols}) grayscale"
            )
        if out.dtype == np.int16:
            hu = stored.astype(np.int64) * int(slope) + int(intercept)
            if hu.size and (hu.min() < _INT16_MIN or hu.max() > _INT16_MAX):
                logger.debug("%s: HU outside int16, switching to float32", label)
                out = out.astype(np.float32)
        else:
            hu = stored.astype(np.float64) * slope + intercept
        out[k] = hu
    return out


def _rescale(ds: Dataset) -> tuple[float, float]:
    """(slope, intercept); CT requires both (PS3.3 C.8.2.1), default to identity if absent."""
    slope = ds.get("RescaleSlope")
    intercept = ds.get("RescaleIntercept")
    if slope in (None, "") or intercept in (None, ""):
        logger.warning("instance %s lacks RescaleSlope/Intercept; assuming 1/0", _instance(ds))
    return (
        float(slope) if slope not in (None, "") else 1.0,
        float(intercept) if intercept not in (None, "") else 0.0,
    )

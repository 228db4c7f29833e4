"""The generated phantom and its ground truth, measured from the masks.

Truth is measured the way a reader or an algorithm would measure the
image, not copied from the plan: volumes count mask voxels, diameters are
RECIST-style axial long and short axes, mean HU is read from the noise-free
(but blurred) volume.  That keeps truth exactly consistent with the masks
shipped beside the images.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from sensecare.phantom.spec import PhantomSpec

__all__ = ["LesionTruth", "Phantom", "axial_axes", "measure_lesions", "opacity_percentages"]


@dataclass(frozen=True)
class LesionTruth:
    """One lesion as found in the masks (all coordinates LPS mm)."""

    id: int
    type: str
    diameter_mm: float  # requested (sphere-equivalent)
    center_lps_mm: tuple[float, float, float]
    bbox_lps_mm_min: tuple[float, float, float]
    bbox_lps_mm_max: tuple[float, float, float]
    volume_ml: float
    long_axis_mm: float
    short_axis_mm: float
    mean_hu: float
    side: str
    lobe: int
    location: str
    juxtapleural: bool
    juxtavascular: bool
    inside_lung_fraction: float


@dataclass(eq=False)
class Phantom:
    """A synthetic chest CT with its masks and truth.

    Arrays are ``(z, y, x)``; slice ``k`` is at ``origin[2] + k * spacing[2]``
    (z increases with ``k``), rows run along +y (posterior) and columns along
    +x (patient left): ImageOrientationPatient ``[1, 0, 0, 0, 1, 0]``.

    Attributes
    ----------
    hu, hu_clean : numpy.ndarray
        int16 HU with and without noise (both blurred by the kernel).
    spacing, origin : tuple of float
        ``(x, y, z)`` voxel size and LPS centre of voxel (0, 0, 0), mm.
    lungs : uint8, 0 outside, 1 right, 2 left.
    lobes : uint8, 1 RUL, 2 RML, 3 RLL, 4 LUL, 5 LLL.
    airways : bool, trachea and bronchial lumen.
    vessels : bool, pulmonary vessels at least 1.5 mm across.
    lesions : int16, lesion id per voxel.
    opacity : uint8, diffuse opacity: 1 ground glass, 2 high opacity (>= -200 HU).
    high_opacity : bool, voxels of diffuse opacity or lesions whose tissue is >= -200 HU.
    """

    spec: PhantomSpec
    hu: np.ndarray
    hu_clean: np.ndarray
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    lungs: np.ndarray
    lobes: np.ndarray
    airways: np.ndarray
    vessels: np.ndarray
    lesions: np.ndarray
    opacity: np.ndarray
    high_opacity: np.ndarray
    truth: list[LesionTruth]
    lung_volume_ml: dict[str, float]
    percent_opacity: float
    percent_high_opacity: float
    kernel_name: str
    noise_sd_hu: float
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.hu.shape)  # type: ignore[return-value]

    def index_to_lps(self, ijk: Any) -> np.ndarray:
        """Voxel indices ``(i, j, k)`` (column, row, slice) to LPS mm."""
        return np.asarray(ijk, dtype=float) * np.asarray(self.spacing) + np.asarray(self.origin)

    def lps_to_index(self, xyz: Any) -> np.ndarray:
        """LPS mm to fractional indices ``(i, j, k)``."""
        return (np.asarray(xyz, dtype=float) - np.asarray(self.origin)) / np.asarray(self.spacing)


def axial_axes(mask2d: np.ndarray, spacing_xy: tuple[float, float]) -> tuple[float, float]:
    """Longest in-plane diameter and the longest diameter perpendicular to it (mm).

    Distances are between voxel centres plus one voxel, the usual caliper convention.
    """
    if not mask2d.any():
        return 0.0, 0.0
    edge = mask2d & ~ndi.binary_erosion(mask2d)
    je, ie = np.nonzero(edge)
    pts = np.column_stack([ie * spacing_xy[0], je * spacing_xy[1]])
    if len(pts) > 1500:
        pts = pts[np.linspace(0, len(pts) - 1, 1500).astype(int)]
    if len(pts) == 1:
        return float(min(spacing_xy)), float(min(spacing_xy))
    d = pts[:, None, :] - pts[None, :, :]
    dist2 = (d**2).sum(-1)
    a, b = np.unravel_index(np.argmax(dist2), dist2.shape)
    axis = d[a, b] / (np.sqrt(dist2[a, b]) + 1e-9)
    perp = np.array([-axis[1], axis[0]])
    proj = pts @ perp
    pix = float(np.mean(spacing_xy))
    return float(np.sqrt(dist2[a, b])) + pix, float(proj.max() - proj.min()) + pix


def measure_lesions(ph: Phantom, plans: list, juxtavascular: dict[int, bool]) -> list[LesionTruth]:  # type: ignore[type-arg]
    """Truth for every planned lesion, from the masks of ``ph``.

    ``juxtavascular`` (lesion id -> flag) comes from the geometry: vessels thinner than a
    voxel do not reach the vessel mask, yet touch the lesion all the same.
    """
    out = []
    vox_ml = float(np.prod(ph.spacing)) / 1000.0
    sp = np.asarray(ph.spacing)
    for plan in plans:
        found = ndi.find_objects((ph.lesions == plan.id).astype(np.uint8))
        if not found or found[0] is None:
            continue
        box = tuple(slice(max(s.start - 2, 0), s.stop + 2) for s in found[0])
        lab = ph.lesions[box]
        m = lab == plan.id
        k, j, i = np.nonzero(m)
        off = np.array([box[2].start, box[1].start, box[0].start])
        ijk = np.column_stack([i, j, k]) + off
        centre = ijk.mean(axis=0)
        d2 = ((ijk - centre) ** 2 * sp**2).sum(axis=1)
        if not m[tuple(np.rint(centre - off).astype(int)[::-1])]:
            centre = ijk[np.argmin(d2)].astype(float)  # a concave lesion: snap to its nearest voxel
        lungs = ph.lungs[box]
        inside = m & (lungs > 0)
        side_vals = lungs[inside]
        side = "R" if side_vals.size == 0 or np.count_nonzero(side_vals == 1) >= np.count_nonzero(side_vals == 2) else "L"
        lobes = ph.lobes[box][inside]
        lobe = int(np.bincount(lobes, minlength=6)[1:].argmax() + 1) if lobes.size else 0
        shell = ndi.binary_dilation(m, structure=np.ones((3, 3, 3), bool)) & ~m
        juxtapleural = bool(np.any(shell & (lungs == 0) & (lab == 0) & ~ph.airways[box]))
        long_ax, short_ax = 0.0, 0.0
        for kk in np.unique(k):
            la, sa = axial_axes(m[kk], (sp[0], sp[1]))
            if la > long_ax:
                long_ax, short_ax = la, sa
        lo = ijk.min(axis=0) - 0.5
        hi = ijk.max(axis=0) + 0.5
        out.append(LesionTruth(
            id=plan.id, type=plan.type, diameter_mm=plan.diameter_mm,
            center_lps_mm=_t(ph.index_to_lps(centre)), bbox_lps_mm_min=_t(ph.index_to_lps(lo)),
            bbox_lps_mm_max=_t(ph.index_to_lps(hi)), volume_ml=round(float(m.sum()) * vox_ml, 4),
            long_axis_mm=round(long_ax, 2), short_axis_mm=round(short_ax, 2),
            mean_hu=round(float(ph.hu_clean[box][m].mean()), 1), side=side, lobe=lobe, location=plan.location,
            juxtapleural=juxtapleural, juxtavascular=bool(juxtavascular.get(plan.id, False)),
            inside_lung_fraction=round(float(inside.sum()) / max(int(m.sum()), 1), 4),
        ))
    return out


def opacity_percentages(lungs: np.ndarray, opacity: np.ndarray, lesions: np.ndarray,
                        high: np.ndarray) -> tuple[float, float]:
    """Percent opacity and percent high opacity of the lung volume (Chaganti et al. 2020)."""
    lung = lungs > 0
    n = int(lung.sum())
    if n == 0:
        return 0.0, 0.0
    po = np.count_nonzero(lung & ((opacity > 0) | (lesions > 0))) / n * 100.0
    pho = np.count_nonzero(lung & high) / n * 100.0
    return round(po, 4), round(pho, 4)


def _t(v: np.ndarray) -> tuple[float, float, float]:
    return tuple(round(float(x), 3) for x in v)  # type: ignore[return-value]

"""What a phantom should look like: the user-facing specification.

Everything here is plain data, validated once, so the generator can trust it.
Invalid values raise :class:`~sensecare.errors.PhantomSpecError` whose
message is one line a CLI can print as is.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from sensecare.errors import PhantomSpecError

__all__ = [
    "KERNELS",
    "LESION_LOCATIONS",
    "LESION_TYPES",
    "SIZES",
    "LesionSpec",
    "PhantomSpec",
    "parse_lesions",
]

LESION_TYPES = ("solid", "part_solid", "ground_glass", "consolidation", "mass")
LESION_LOCATIONS = ("random", "juxtapleural", "juxtavascular", "central")
SOLID_SHAPES = ("smooth", "lobulated", "spiculated")
KERNELS = ("soft", "standard", "sharp")
SIZES = ("small", "medium", "large")

#: Smallest and largest lesion diameter (mm) and the smallest mass.
MIN_DIAMETER_MM, MAX_DIAMETER_MM, MIN_MASS_MM = 3.0, 80.0, 30.0
MIN_THICKNESS_MM, MAX_THICKNESS_MM = 0.625, 8.0

Location = str | tuple[float, float, float]


@dataclass(frozen=True)
class LesionSpec:
    """One lesion to insert.

    Parameters
    ----------
    type : str
        ``solid`` | ``part_solid`` | ``ground_glass`` | ``consolidation`` | ``mass``.
    diameter_mm : float
        Diameter of the sphere of equal volume, 3 to 80 mm (masses > 30 mm).
    location : str or (x, y, z)
        ``random`` | ``juxtapleural`` (touches the chest wall) | ``juxtavascular``
        (touches a vessel) | ``central`` (perihilar), or an explicit LPS centre in mm.
    side : {"R", "L"} or None
        Lung to use; None lets the seed choose.
    shape : {"smooth", "lobulated", "spiculated"} or None
        Margin of solid nodules; None lets the seed choose.
    """

    type: str
    diameter_mm: float
    location: Location = "random"
    side: str | None = None
    shape: str | None = None

    def __post_init__(self) -> None:
        if self.type not in LESION_TYPES:
            raise PhantomSpecError(f"unknown lesion type {self.type!r}; choose one of {', '.join(LESION_TYPES)}")
        d = float(self.diameter_mm)
        if not MIN_DIAMETER_MM <= d <= MAX_DIAMETER_MM:
            raise PhantomSpecError(
                f"lesion diameter {d:g} mm is outside {MIN_DIAMETER_MM:g}-{MAX_DIAMETER_MM:g} mm"
            )
        if self.type == "mass" and d < MIN_MASS_MM:
            raise PhantomSpecError(f"a mass is larger than {MIN_MASS_MM:g} mm by definition, got {d:g} mm")
        object.__setattr__(self, "diameter_mm", d)
        if isinstance(self.location, str):
            if self.location not in LESION_LOCATIONS:
                raise PhantomSpecError(
                    f"unknown lesion location {self.location!r}; choose one of "
                    f"{', '.join(LESION_LOCATIONS)} or an (x, y, z) LPS centre"
                )
        else:
            try:
                xyz = tuple(float(v) for v in self.location)
            except (TypeError, ValueError):
                raise PhantomSpecError(f"lesion location {self.location!r} is not an (x, y, z) centre") from None
            if len(xyz) != 3:
                raise PhantomSpecError(f"lesion location needs 3 LPS coordinates, got {len(xyz)}")
            object.__setattr__(self, "location", xyz)
        if self.side is not None and self.side not in ("R", "L"):
            raise PhantomSpecError(f"lesion side must be R or L, got {self.side!r}")
        if self.shape is not None and self.shape not in SOLID_SHAPES:
            raise PhantomSpecError(f"unknown lesion shape {self.shape!r}; choose one of {', '.join(SOLID_SHAPES)}")


@dataclass(frozen=True)
class PhantomSpec:
    """Everything that determines a phantom; equal specs give identical phantoms.

    Parameters
    ----------
    seed : int
        Seeds anatomy variation, vessel trees, lesions and noise (each its own stream).
    matrix : int
        Rows = columns of each slice.
    n_slices, z_extent_mm : int or None
        Scan length; by default the whole chest (apex to costophrenic recesses).
        ``n_slices`` wins over ``z_extent_mm``; the range is centred on the chest.
    pixel_spacing_mm : float or None
        Default: field of view fitted to the patient size (about 350 mm for medium).
    slice_thickness_mm : float
        Nominal reconstructed thickness (FWHM of the slice profile), 0.625 to 8 mm.
    slice_spacing_mm : float or None
        Distance between slice centres; default equals the thickness.
    kernel : {"soft", "standard", "sharp"}
        Reconstruction kernel: blur and noise texture (sharp is a B70f-like lung kernel).
    dose : float
        Relative dose; noise standard deviation scales with ``1 / sqrt(dose)``.
    size : {"small", "medium", "large"}
        Body habitus: fat thickness, chest size and noise level.
    sex : {"F", "M"}
        Body shape and lung size; breasts for F.
    age : int
        Only written to the DICOM header.
    lesions : tuple of LesionSpec or "random"
        ``"random"`` draws a seeded mix of 1 to 4 lesions.
    diffuse : float
        Target fraction (0 to 0.8) of lung volume with viral-pneumonia-like opacity.
    contrast : bool
        Intravenous contrast in the heart and vessels.
    table : bool
        Draw the patient table below the body.
    """

    seed: int = 0
    matrix: int = 512
    n_slices: int | None = None
    z_extent_mm: float | None = None
    pixel_spacing_mm: float | None = None
    slice_thickness_mm: float = 1.0
    slice_spacing_mm: float | None = None
    kernel: str = "standard"
    dose: float = 1.0
    size: str = "medium"
    sex: str = "M"
    age: int = 60
    lesions: tuple[LesionSpec, ...] | Literal["random"] = field(default=())
    diffuse: float = 0.0
    contrast: bool = False
    table: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or self.seed < 0:
            raise PhantomSpecError(f"seed must be a non-negative integer, got {self.seed!r}")
        if not 32 <= int(self.matrix) <= 1024:
            raise PhantomSpecError(f"matrix {self.matrix} is outside 32-1024")
        t = float(self.slice_thickness_mm)
        if not MIN_THICKNESS_MM <= t <= MAX_THICKNESS_MM:
            raise PhantomSpecError(
                f"slice thickness {t:g} mm is outside {MIN_THICKNESS_MM:g}-{MAX_THICKNESS_MM:g} mm"
            )
        object.__setattr__(self, "slice_thickness_mm", t)
        s = t if self.slice_spacing_mm is None else float(self.slice_spacing_mm)
        if not 0.3 <= s <= 20.0:
            raise PhantomSpecError(f"slice spacing {s:g} mm is outside 0.3-20 mm")
        object.__setattr__(self, "slice_spacing_mm", s)
        if self.pixel_spacing_mm is not None and not 0.2 <= float(self.pixel_spacing_mm) <= 5.0:
            raise PhantomSpecError(f"pixel spacing {self.pixel_spacing_mm:g} mm is outside 0.2-5 mm")
        if self.n_slices is not None and not 2 <= int(self.n_slices) <= 2000:
            raise PhantomSpecError(f"n_slices {self.n_slices} is outside 2-2000")
        if self.z_extent_mm is not None and not 5.0 <= float(self.z_extent_mm) <= 700.0:
            raise PhantomSpecError(f"z extent {self.z_extent_mm:g} mm is outside 5-700 mm")
        if self.kernel not in KERNELS:
            raise PhantomSpecError(f"unknown kernel {self.kernel!r}; choose one of {', '.join(KERNELS)}")
        if self.size not in SIZES:
            raise PhantomSpecError(f"unknown patient size {self.size!r}; choose one of {', '.join(SIZES)}")
        if self.sex not in ("F", "M"):
            raise PhantomSpecError(f"sex must be F or M, got {self.sex!r}")
        if not 0.05 <= float(self.dose) <= 20.0:
            raise PhantomSpecError(f"dose factor {self.dose:g} is outside 0.05-20")
        if not 0.0 <= float(self.diffuse) <= 0.8:
            raise PhantomSpecError(f"diffuse opacity fraction {self.diffuse:g} is outside 0-0.8")
        if not 0 <= int(self.age) <= 120:
            raise PhantomSpecError(f"age {self.age} is outside 0-120")
        if isinstance(self.lesions, str):
            if self.lesions != "random":
                object.__setattr__(self, "lesions", parse_lesions(self.lesions))
        else:
            items = tuple(self.lesions)
            if not all(isinstance(item, LesionSpec) for item in items):
                raise PhantomSpecError("lesions must be LesionSpec objects or 'random'")
            object.__setattr__(self, "lesions", items)

    @property
    def extent_mm(self) -> float | None:
        """Requested scan length along z, or None for the default chest coverage."""
        if self.n_slices is not None:
            return (int(self.n_slices) - 1) * float(self.slice_spacing_mm)  # type: ignore[arg-type]
        return None if self.z_extent_mm is None else float(self.z_extent_mm)


def parse_lesions(text: str) -> tuple[LesionSpec, ...] | Literal["random"]:
    """Parse ``"solid:8,ground_glass:15:juxtapleural:R,mass:45"``, ``"random"`` or ``"none"``.

    Each item is ``type:diameter[:location[:side]]``; ``"none"`` or ``""`` means no lesions.
    """
    text = text.strip()
    if text == "random":
        return "random"
    if text in ("", "none"):
        return ()
    out: list[LesionSpec] = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        parts = item.split(":")
        if len(parts) < 2 or len(parts) > 4:
            raise PhantomSpecError(f"lesion {item!r} is not type:diameter[:location[:side]]")
        try:
            diameter = float(parts[1])
        except ValueError:
            raise PhantomSpecError(f"lesion {item!r}: diameter {parts[1]!r} is not a number") from None
        location = parts[2] if len(parts) > 2 and parts[2] else "random"
        side = parts[3].upper() if len(parts) > 3 and parts[3] else None
        out.append(LesionSpec(parts[0], diameter, location, side))
    return tuple(out)

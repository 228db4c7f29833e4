"""Rendered images for WADO-RS ``/rendered`` and ``/thumbnail``.

PS3.18 §8.3.5 ("Rendered Media Types", query parameters) and §9.5
("Rendered Resources") ask the origin server to turn a frame into a
consumer image: the grayscale pipeline of PS3.4 N.2 applied, then encoded
as JPEG (the default) or PNG, optionally windowed by the ``window``
parameter, resized and compressed with ``quality``.

The grayscale pipeline implemented here is

1. decode the stored values (pydicom handles the transfer syntaxes it has
   decoders for: native, RLE, JPEG / JPEG-LS / JPEG 2000 via pylibjpeg),
2. Modality LUT or rescale (PS3.3 C.11.1), per frame for Enhanced images,
3. VOI: the requested window, else the first window of the header, else the
   VOI LUT Sequence, else the frame's min..max (PS3.3 C.11.2),
4. MONOCHROME1 inverted so that the output is always "bright = high".

Colour images (RGB, YBR converted to RGB by pydicom, PALETTE COLOR through
its LUT) are passed through without windowing.
"""

from __future__ import annotations

import io
import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi
from pydicom.pixels import pixel_array as decode_pixels

from sensecare.errors import (
    InvalidDicomError,
    InvalidRequestError,
    NotAcceptableError,
    NotFoundError,
)

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_RENDERED_MEDIA_TYPE",
    "RENDERED_MEDIA_TYPES",
    "Window",
    "choose_rendered_media_type",
    "default_window",
    "render_frame",
]

#: Media types we can render single frames to, in order of preference on ties.
RENDERED_MEDIA_TYPES: tuple[str, ...] = ("image/jpeg", "image/png")
#: PS3.18 §8.7.4: the default rendered media type for single-frame images.
DEFAULT_RENDERED_MEDIA_TYPE = "image/jpeg"

_FUNCTIONS = ("linear", "linear_exact", "sigmoid")
_FUNCTION_ALIASES = {"linear-exact": "linear_exact"}
_PIL_FORMATS = {"image/png": "PNG", "image/jpeg": "JPEG"}


@dataclass(frozen=True)
class Window:
    """A VOI window (PS3.3 C.11.2.1.2): centre, width and VOI LUT function.

    Values are in the units of the Modality LUT output (HU for CT).
    ``function`` is ``linear`` (the DICOM default, width >= 1),
    ``linear_exact`` or ``sigmoid`` (width > 0).
    """

    center: float
    width: float
    function: str = "linear"

    def __post_init__(self) -> None:
        function = _FUNCTION_ALIASES.get(self.function.lower(), self.function.lower())
        if function not in _FUNCTIONS:
            raise InvalidRequestError(
                f"window function {self.function!r} is not one of {', '.join(_FUNCTIONS)}"
            )
        object.__setattr__(self, "function", function)
        if not (math.isfinite(self.center) and math.isfinite(self.width)):
            raise InvalidRequestError("window center and width must be finite numbers")
        minimum = 1.0 if function == "linear" else 0.0
        if self.width < minimum or self.width <= 0:
            raise InvalidRequestError(
                f"window width {self.width:g} is too small for {function} "
                f"(must be {'>= 1' if function == 'linear' else '> 0'})"
            )

    @classmethod
    def parse(cls, text: str) -> Window:
        """Parse the WADO-RS ``window`` query parameter, ``center,width[,function]``.

        PS3.18 §8.3.5.1.4 spells the functions ``linear``, ``linear-exact``
        and ``sigmoid``; ``linear_exact`` (the DICOM defined term with the
        underscore) is accepted too.  The function defaults to ``linear``.

        Raises
        ------
        InvalidRequestError
            The text is not two numbers and an optional known function.
        """
        parts = [p.strip() for p in (text or "").split(",")]
        if len(parts) not in (2, 3) or not all(parts[:2]):
            raise InvalidRequestError(
                f"window={text!r}: expected 'center,width' or 'center,width,function'"
            )
        try:
            center, width = float(parts[0]), float(parts[1])
        except ValueError as exc:
            raise InvalidRequestError(f"window={text!r}: center and width must be numbers") from exc
        function = parts[2] if len(parts) == 3 and parts[2] else "linear"
        try:
            return cls(center, width, function)
        except InvalidRequestError as exc:
            raise InvalidRequestError(f"window={text!r}: {exc}") from exc

    def apply(self, values: np.ndarray, out_max: float = 255.0) -> np.ndarray:
        """Map modality values to ``0..out_max`` (float64) with this window.

        Formulas of PS3.3 C.11.2.1.2.1 (LINEAR), C.11.2.1.3.2 (LINEAR_EXACT)
        and C.11.2.1.3.1 (SIGMOID), with ``ymin = 0`` and ``ymax = out_max``.
        """
        x = np.asarray(values, dtype=np.float64)
        c, w = float(self.center), float(self.width)
        if self.function == "sigmoid":
            return out_max / (1.0 + np.exp(-4.0 * (x - c) / w))
        if self.function == "linear_exact":
            y = ((x - c) / w + 0.5) * out_max
            lower, upper = c - w / 2.0, c + w / 2.0
        elif w <= 1.0:  # degenerate LINEAR window: a threshold at c - 0.5
            y = np.zeros_like(x)
            lower = upper = c - 0.5
        else:
            y = ((x - (c - 0.5)) / (w - 1.0) + 0.5) * out_max
            lower, upper = c - 0.5 - (w - 1.0) / 2.0, c - 0.5 + (w - 1.0) / 2.0
        y = np.where(x <= lower, 0.0, y)
        return np.where(x > upper, out_max, y)


def default_window(ds: Dataset, frame_index: int = 0) -> Window | None:
    """The first window of the header, or None when there is none (or it is unusable).

    *WindowCenter* (0028,1050) and *WindowWidth* (0028,1051) may hold several
    alternative windows (PS3.3 C.11.2.1.2); the first pair is the default.
    *VOILUTFunction* (0028,1056) selects the function.  For Enhanced images
    the window lives in the Frame VOI LUT Sequence of the per-frame or shared
    functional groups (PS3.3 C.7.6.16.2.10).
    """
    source: Dataset | None = ds if "WindowCenter" in ds else None
    if source is None:
        source = _functional_group_item(ds, frame_index, "FrameVOILUTSequence")
    if source is None or "WindowCenter" not in source or "WindowWidth" not in source:
        return None
    center, width = _first(source.WindowCenter), _first(source.WindowWidth)
    if center is None or width is None:
        return None
    function = str(source.get("VOILUTFunction", "") or "LINEAR").lower()
    try:
        return Window(float(center), float(width), function)
    except (InvalidRequestError, TypeError, ValueError):
        logger.warning(
            "ignoring unusable header window %s/%s (%s) of instance %s",
            center, width, function, ds.get("SOPInstanceUID", "?"),
        )
        return None


def render_frame(
    ds: Dataset,
    frame_index: int = 0,
    *,
    window: Window | None = None,
    media_type: str = "image/png",
    quality: int = 90,
    size: tuple[int, int] | None = None,
) -> bytes:
    """Render one frame as an 8-bit PNG or JPEG.

    Parameters
    ----------
    ds : pydicom.Dataset
        The instance, with its pixel data (and file meta for the transfer syntax).
    frame_index : int
        0-based frame index (DICOMweb frame numbers are 1-based).
    window : Window, optional
        VOI window overriding the header (grayscale only).
    media_type : str
        ``image/png`` or ``image/jpeg`` (parameters after ``;`` are ignored).
    quality : int
        JPEG quality 1..100 (the PS3.18 ``quality`` parameter); ignored for PNG.
    size : (width, height), optional
        Downscale, keeping the aspect ratio, to fit in this box (thumbnails,
        the ``viewport`` parameter); images are never enlarged.

    Returns
    -------
    bytes
        The encoded image.

    Raises
    ------
    NotAcceptableError
        `media_type` is not one we render.
    NotFoundError
        No pixel data, or no such frame.
    InvalidRequestError
        Bad `quality` or `size`.
    InvalidDicomError
        The pixel data cannot be decoded.
    """
    pil_format = _PIL_FORMATS.get(media_type.split(";", 1)[0].strip().lower())
    if pil_format is None:
        raise NotAcceptableError(
            f"cannot render {media_type!r}; available: {', '.join(RENDERED_MEDIA_TYPES)}"
        )
    if not 1 <= int(quality) <= 100:
        raise InvalidRequestError(f"quality {quality} is not between 1 and 100")
    if size is not None and (len(size) != 2 or min(int(v) for v in size) < 1):
        raise InvalidRequestError(f"size {size!r} must be two positive integers (width, height)")
    if "PixelData" not in ds:
        raise NotFoundError("instance has no pixel data")
    n_frames = _number_of_frames(ds)
    if not 0 <= frame_index < n_frames:
        raise NotFoundError(f"frame {frame_index + 1} not found: instance has {n_frames} frame(s)")

    pixels = _decode(ds, frame_index)
    image = Image.fromarray(_to_8bit(ds, pixels, frame_index, window))
    if size is not None:
        image.thumbnail((int(size[0]), int(size[1])), Image.Resampling.LANCZOS)

    buffer = io.BytesIO()
    if pil_format == "JPEG":
        image.save(buffer, format="JPEG", quality=int(quality))
    else:
        image.save(buffer, format="PNG")
    return buffer.getvalue()


def choose_rendered_media_type(accept_header: str | None) -> str:
    """Pick ``image/jpeg`` or ``image/png`` for an HTTP Accept header.

    Each candidate gets the q-value of the most specific media range that
    matches it (RFC 9110 §12.5.1): ``image/png`` beats ``image/*`` beats
    ``*/*``.  The highest q wins; ties go to the more specific range, then to
    the range listed first, then to ``image/jpeg``.  A missing or empty header
    means ``*/*``, hence ``image/jpeg``, the PS3.18 default rendered type.

    Raises
    ------
    NotAcceptableError
        No candidate has q > 0.
    """
    if accept_header is None or not accept_header.strip():
        return DEFAULT_RENDERED_MEDIA_TYPE
    ranges = _parse_accept(accept_header)
    best: tuple[float, int, int, int] | None = None
    choice: str | None = None
    for preference, candidate in enumerate(RENDERED_MEDIA_TYPES):
        match = _best_range(candidate, ranges)
        if match is None or match[0] <= 0:
            continue
        q, specificity, position = match
        key = (q, specificity, -position, -preference)
        if best is None or key > best:
            best, choice = key, candidate
    if choice is None:
        raise NotAcceptableError(
            f"Accept {accept_header!r} allows none of {', '.join(RENDERED_MEDIA_TYPES)}"
        )
    return choice


# --- helpers ---------------------------------------------------------------------


def _parse_accept(header: str) -> list[tuple[str, str, float, int]]:
    """``(type, subtype, q, position)`` for each well-formed media range."""
    out = []
    for position, item in enumerate(header.split(",")):
        fields = [f.strip() for f in item.split(";")]
        if "/" not in fields[0]:
            continue
        mtype, _, subtype = fields[0].lower().partition("/")
        q = 1.0
        for param in fields[1:]:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value.strip())
                except ValueError:
                    q = -1.0
        if not (0.0 <= q <= 1.0) or not mtype or not subtype:
            logger.debug("ignoring malformed Accept range %r", item)
            continue
        out.append((mtype.strip(), subtype.strip(), q, position))
    return out


def _best_range(
    candidate: str, ranges: list[tuple[str, str, float, int]]
) -> tuple[float, int, int] | None:
    """(q, specificity, position) of the most specific range matching `candidate`."""
    ctype, csub = candidate.split("/")
    best: tuple[float, int, int] | None = None
    for mtype, subtype, q, position in ranges:
        if mtype == ctype and subtype == csub:
            specificity = 2
        elif mtype == ctype and subtype == "*":
            specificity = 1
        elif mtype == "*" and subtype == "*":
            specificity = 0
        else:
            continue
        if best is None or specificity > best[1]:
            best = (q, specificity, position)
    return best


def _first(value: Any) -> Any:
    """First value of a possibly multi-valued element."""
    if value is None or value == "":
        return None
    if isinstance(value, (str, bytes, int, float)):
        return value
    try:
        return value[0] if len(value) else None
    except TypeError:
        return value


def _number_of_frames(ds: Dataset) -> int:
    try:
        return max(1, int(ds.get("NumberOfFrames", 1) or 1))
    except (TypeError, ValueError):
        return 1


def _functional_group_item(ds: Dataset, frame_index: int, keyword: str) -> Dataset | None:
    """First item of `keyword` in the per-frame, else shared, functional groups."""
    for groups, index in (
        ("PerFrameFunctionalGroupsSequence", frame_index),
        ("SharedFunctionalGroupsSequence", 0),
    ):
        seq = ds.get(groups)
        if seq and len(seq) > index:
            inner = seq[index].get(keyword)
            if inner:
                return inner[0]
    return None


def _decode(ds: Dataset, frame_index: int) -> np.ndarray:
    try:
        return decode_pixels(ds, index=frame_index)
    except Exception as exc:  # pydicom raises many types for undecodable data
        raise InvalidDicomError(f"cannot decode pixel data: {' '.join(str(exc).split())}") from exc


def _to_8bit(
    ds: Dataset, pixels: np.ndarray, frame_index: int, window: Window | None
) -> np.ndarray:
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if photometric == "PALETTE COLOR":
        rgb = apply_color_lut(pixels, ds)
        return _scale_to_uint8(rgb, 16 if rgb.dtype != np.uint8 else 8)
    if pixels.ndim == 3:  # RGB (YBR is converted to RGB by pydicom)
        return _scale_to_uint8(pixels, int(ds.get("BitsStored", 8) or 8))

    values = _modality_values(ds, pixels, frame_index)
    chosen = window or default_window(ds, frame_index)
    if chosen is not None:
        grey = chosen.apply(values)
    elif "VOILUTSequence" in ds:
        # a LUT is indexed by integers: the modality output is integral here
        lut_out = apply_voi(np.rint(values).astype(np.int64), ds, index=0).astype(np.float64)
        bits = int(ds.VOILUTSequence[0].LUTDescriptor[2])
        grey = lut_out * (255.0 / float(2**bits - 1))
    else:
        grey = _min_max_window(values).apply(values)
    out = np.clip(np.rint(grey), 0, 255).astype(np.uint8)
    if photometric == "MONOCHROME1":
        out = 255 - out
    return out


def _modality_values(ds: Dataset, pixels: np.ndarray, frame_index: int) -> np.ndarray:
    """Modality LUT / rescale (PS3.3 C.11.1), per frame for Enhanced images (C.7.6.16.2.9)."""
    if "ModalityLUTSequence" in ds or "RescaleSlope" in ds:
        return np.asarray(apply_modality_lut(pixels, ds), dtype=np.float64)
    item = _functional_group_item(ds, frame_index, "PixelValueTransformationSequence")
    if item is not None and "RescaleSlope" in item and "RescaleIntercept" in item:
        return np.asarray(apply_modality_lut(pixels, item), dtype=np.float64)
    return pixels.astype(np.float64)


def _min_max_window(values: np.ndarray) -> Window:
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return Window(0.0, 1.0, "linear_exact")
    lo, hi = float(finite.min()), float(finite.max())
    return Window((lo + hi) / 2.0, max(hi - lo, 1e-6), "linear_exact")


def _scale_to_uint8(rgb: np.ndarray, bits: int) -> np.ndarray:
    if rgb.dtype == np.uint8:
        return rgb
    scale = 255.0 / float(2 ** max(1, bits) - 1)
    return np.clip(np.rint(rgb.astype(np.float64) * scale), 0, 255).astype(np.uint8)

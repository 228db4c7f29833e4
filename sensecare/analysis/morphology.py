"""Fast binary morphology on (z, y, x) masks for the lung segmentation.

Everything here works on a whole volume at once but treats each axial slice
as its own 2-D image where the operation is meant per slice (hole filling,
closing, convex hull): with 8 mm slices a 3-D structuring element would reach
a whole slice away, and per-slice geometry is what radiologists judge.
Large disks are octagons made of iterated 8- and 4-neighbour steps (close
enough to a disk): scipy's cost grows with the structuring element, while
its iterated 3x3 steps only revisit the moving border.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage as ndi
from scipy.spatial import ConvexHull, QhullError
from skimage.draw import polygon

__all__ = [
    "CROSS_2D",
    "CROSS_3D",
    "SQUARE_2D",
    "block_mean",
    "closing_disk_2d",
    "convex_hull_2d",
    "dilate_disk_2d",
    "erode_disk_2d",
    "fill_holes_2d",
    "fill_holes_3d",
    "hull_image",
    "largest_component_2d",
    "upsample_repeat",
]


def _planar(connectivity: int) -> np.ndarray:
    out = np.zeros((3, 3, 3), dtype=bool)
    out[1] = ndi.generate_binary_structure(2, connectivity)
    return out


#: 4-neighbourhood within a slice (no link between slices).
CROSS_2D = _planar(1)
#: 8-neighbourhood within a slice.
SQUARE_2D = _planar(2)
#: 6-neighbourhood in 3-D.
CROSS_3D = ndi.generate_binary_structure(3, 1)


# --- grids -----------------------------------------------------------------------


def block_mean(
    array: np.ndarray,
    factors: tuple[int, int, int],
    clip: tuple[float, float] | None = None,
) -> np.ndarray:
    """Mean over ``factors`` (z, y, x) blocks, float32 (partial edge blocks are padded with edge values).

    Done slab by slab: a whole-volume ``astype`` + reshape-mean costs several
    times more on a 512x512x300 CT than this cache-sized loop.
    """
    fz, fy, fx = factors
    nz, ny, nx = array.shape
    cz, cy, cx = -(-nz // fz), -(-ny // fy), -(-nx // fx)
    out = np.empty((cz, cy, cx), dtype=np.float32)
    for k in range(cz):
        slab = array[k * fz : (k + 1) * fz].astype(np.float32)
        if clip is not None:
            np.clip(slab, clip[0], clip[1], out=slab)
        slab = slab.mean(axis=0)
        out[k] = _reduce_2d(slab, fy, fx, cy, cx)
    return out


def _reduce_2d(img: np.ndarray, fy: int, fx: int, cy: int, cx: int) -> np.ndarray:
    ny, nx = img.shape
    if ny != cy * fy or nx != cx * fx:
        img = np.pad(img, ((0, cy * fy - ny), (0, cx * fx - nx)), mode="edge")
    if fy > 1:
        img = img.reshape(cy, fy, -1).mean(axis=1)
    if fx > 1:
        img = img.reshape(cy, cx, fx).mean(axis=2)
    return img


def upsample_repeat(coarse: np.ndarray, factors: tuple[int, int, int], shape: tuple[int, int, int]) -> np.ndarray:
    """Repeat each coarse voxel over its block and crop to ``shape`` (the exact inverse grid of :func:`block_mean`)."""
    fz, fy, fx = factors
    nz, ny, nx = shape
    out = np.empty(shape, dtype=coarse.dtype)
    for k in range(coarse.shape[0]):
        plane = coarse[k]
        if fy > 1:
            plane = np.repeat(plane, fy, axis=0)
        if fx > 1:
            plane = np.repeat(plane, fx, axis=1)
        out[k * fz : min((k + 1) * fz, nz)] = plane[:ny, :nx]
    return out


# --- holes and components ------------------------------------------------------------


def fill_holes_2d(mask: np.ndarray) -> np.ndarray:
    """Fill, in each axial slice, background not 4-connected to the slice border."""
    background, n = ndi.label(~mask, structure=CROSS_2D)
    if n == 0:
        return mask.copy()
    touches = np.zeros(n + 1, dtype=bool)
    for edge in (background[:, 0, :], background[:, -1, :], background[:, :, 0], background[:, :, -1]):
        touches[edge] = True
    touches[0] = False
    return ~touches[background]


def fill_holes_3d(mask: np.ndarray) -> np.ndarray:
    """Fill background not 6-connected to any face of the volume."""
    background, n = ndi.label(~mask, structure=CROSS_3D)
    if n == 0:
        return mask.copy()
    touches = np.zeros(n + 1, dtype=bool)
    for axis in range(3):
        for index in (0, -1):
            touches[np.take(background, index, axis=axis)] = True
    touches[0] = False
    return ~touches[background]


def largest_component_2d(mask: np.ndarray) -> np.ndarray:
    """Keep, in each slice, the largest 8-connected component.

    ``ndimage.label`` numbers components in raster order, and with no link
    between slices every component of slice k is met in slice k: the labels
    of one slice form one contiguous range, so a per-slice arg-max over
    ``bincount`` needs no per-label loop.
    """
    labels, n = ndi.label(mask, structure=SQUARE_2D)
    if n == 0:
        return np.zeros_like(mask)
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    last = labels.reshape(labels.shape[0], -1).max(axis=1)
    keep = np.zeros(n + 1, dtype=bool)
    first = 1
    for top in last:
        if top >= first:
            keep[first + int(np.argmax(sizes[first : top + 1]))] = True
            first = top + 1
    return keep[labels]


# --- disks ---------------------------------------------------------------------------


def _octagon(radius: int) -> tuple[int, int]:
    """(square steps, cross steps) whose sequence is the octagon closest to a disk of ``radius``."""
    square = round(radius * (math.sqrt(2.0) - 1.0))
    return square, radius - square


def dilate_disk_2d(mask: np.ndarray, radius: int, within: np.ndarray | None = None) -> np.ndarray:
    """In-plane dilation by an octagon of ``radius`` pixels (optionally kept inside ``within``).

    Two iterated calls (8- then 4-neighbour steps): scipy only revisits the
    changed border when iterating, so this costs about two single passes.
    """
    square, cross = _octagon(radius)
    out = mask
    if square:
        out = ndi.binary_dilation(out, structure=SQUARE_2D, iterations=square, mask=within)
    if cross:
        out = ndi.binary_dilation(out, structure=CROSS_2D, iterations=cross, mask=within)
    return out.copy() if out is mask else out


def erode_disk_2d(mask: np.ndarray, radius: int) -> np.ndarray:
    """In-plane erosion by an octagon of ``radius`` pixels (outside the array counts as background)."""
    square, cross = _octagon(radius)
    out = mask
    if square:
        out = ndi.binary_erosion(out, structure=SQUARE_2D, iterations=square)
    if cross:
        out = ndi.binary_erosion(out, structure=CROSS_2D, iterations=cross)
    return out.copy() if out is mask else out


def closing_disk_2d(mask: np.ndarray, radius: int) -> np.ndarray:
    """In-plane closing by an octagon of ``radius`` pixels, padded so the array edge does not erode it."""
    if radius <= 0:
        return mask.copy()
    pad = radius + 1
    padded = np.pad(mask, ((0, 0), (pad, pad), (pad, pad)))
    closed = erode_disk_2d(dilate_disk_2d(padded, radius), radius)
    return closed[:, pad:-pad, pad:-pad]


def convex_hull_2d(mask: np.ndarray) -> np.ndarray:
    """Convex hull of each slice's pixels (computed on the slice's bounding box only)."""
    out = np.zeros_like(mask)
    for k in np.flatnonzero(mask.any(axis=(1, 2))):
        rows = np.flatnonzero(mask[k].any(axis=1))
        cols = np.flatnonzero(mask[k].any(axis=0))
        box = (k, slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
        out[box] = hull_image(mask[box])
    return out


def hull_image(image: np.ndarray) -> np.ndarray:
    """Convex hull of a 2-D mask: pixels whose centre lies in the hull of all pixel corners.

    Same result as ``skimage.morphology.convex_hull_image`` but rasterised by
    scan lines (:func:`_convex_polygon_rows`) instead of a point-in-polygon test
    of every pixel.
    """
    if np.count_nonzero(image) < 3:
        return image.copy()
    edge = image & ~ndi.binary_erosion(image)
    rows, cols = np.nonzero(edge)
    corners = np.concatenate(
        [np.column_stack([rows + dr, cols + dc]) for dr, dc in ((-0.5, -0.5), (-0.5, 0.5), (0.5, -0.5), (0.5, 0.5))]
    )
    try:
        vertices = corners[ConvexHull(corners).vertices]
    except QhullError:  # all on one line: the pixels are their own hull
        return image.copy()
    out = image.copy()
    inside = _convex_polygon_rows(vertices[:, 0], vertices[:, 1], image.shape)
    if inside is None:  # not one span per row (cannot happen for a pixel hull): let skimage decide
        rr, cc = polygon(vertices[:, 0], vertices[:, 1], image.shape)
        out[rr, cc] = True
        return out
    rows, cols, span = inside
    out[rows, cols] |= span
    return out


def _convex_polygon_rows(
    r: np.ndarray, c: np.ndarray, shape: tuple[int, ...]
) -> tuple[slice, slice, np.ndarray] | None:
    """Pixels of a convex polygon with pixel-corner (half-integer) vertices, as one span per row.

    Same pixels as ``skimage.draw.polygon``, which tests every pixel of the bounding
    box against every edge and keeps those inside or on the boundary.  With vertices
    on half-integers no pixel centre is a vertex and no row holds a horizontal edge,
    so each row inside the polygon meets its boundary at exactly two points
    ``x_a <= x_b`` and the pixels are ``x_a <= c <= x_b``.  Those crossings are exact
    in floating point where they fall on a pixel centre (a correctly rounded quotient
    of small half-integers), so the boundary pixels come out the same.  Returns
    (rows, cols, mask over that window), or None when the vertices are not
    half-integers or a row meets the boundary other than twice.
    """
    r = np.asarray(r, dtype=np.float64)
    c = np.asarray(c, dtype=np.float64)
    if np.any(r % 1.0 != 0.5) or np.any(c % 1.0 != 0.5):
        return None
    min_r, max_r = int(max(0, r.min())), min(shape[0] - 1, math.ceil(r.max()))
    min_c, max_c = int(max(0, c.min())), min(shape[1] - 1, math.ceil(c.max()))
    if max_r < min_r or max_c < min_c:
        return (slice(0, 0), slice(0, 0), np.zeros((0, 0), dtype=bool))
    y = np.arange(min_r, max_r + 1, dtype=np.float64)[:, None]
    r_i, c_i = r[None, :], c[None, :]
    r_j, c_j = np.roll(r, 1)[None, :], np.roll(c, 1)[None, :]  # edge (i - 1, i)
    crosses = ((r_i < y) & (y < r_j)) | ((r_j < y) & (y < r_i))
    count = crosses.sum(axis=1)
    if not np.all((count == 0) | (count == 2)):
        return None
    with np.errstate(divide="ignore", invalid="ignore"):
        x = c_i + (c_j - c_i) * (y - r_i) / (r_j - r_i)
    low = np.where(crosses, x, np.inf).min(axis=1)
    high = np.where(crosses, x, -np.inf).max(axis=1)
    columns = np.arange(min_c, max_c + 1, dtype=np.float64)[None, :]
    span = (columns >= low[:, None]) & (columns <= high[:, None])
    return slice(min_r, max_r + 1), slice(min_c, max_c + 1), span

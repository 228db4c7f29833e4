"""Solid shapes as signed distance functions (SDF), combined and evaluated on grids.

Anatomy is drawn from analytic shapes so that boundaries can be rendered
with correct partial volume at any resolution: the fraction of a voxel
inside a shape is ``clip(0.5 - sdf / h, 0, 1)``, with ``h`` the voxel size.
Distances only matter near surfaces, so every SDF is clipped to
``[-CLIP, CLIP]`` and evaluated only inside its bounding box grown by
``CLIP``; outside that window it is ``+CLIP``.  This is what keeps a
512x512x300 volume cheap: each organ costs the voxels near it, not the whole
volume.

Grids are given as three 1-D coordinate vectors ``(xs, ys, zs)``; blocks are
``(len(zs), len(ys), len(xs))`` float32 arrays.  Primitive SDFs receive
broadcastable ``X (1, 1, nx)``, ``Y (1, ny, 1)``, ``Z (nz, 1, 1)`` arrays.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "CLIP",
    "Box",
    "Capsule",
    "Difference",
    "Ellipsoid",
    "FuncShape",
    "Intersection",
    "Shape",
    "Union",
    "ZEllipse",
    "ZSuperEllipse",
    "evaluate",
    "fraction",
    "tube",
]

#: Distance (mm) beyond which SDFs are clipped.
CLIP = 8.0
_EPS = 1e-6


@dataclass(frozen=True)
class Box:
    """Axis-aligned box ``lo <= p <= hi`` in LPS mm (x, y, z)."""

    lo: tuple[float, float, float]
    hi: tuple[float, float, float]

    def grow(self, d: float) -> Box:
        return Box(tuple(v - d for v in self.lo), tuple(v + d for v in self.hi))  # type: ignore[arg-type]

    def union(self, other: Box) -> Box:
        return Box(
            tuple(min(a, b) for a, b in zip(self.lo, other.lo)),  # type: ignore[arg-type]
            tuple(max(a, b) for a, b in zip(self.hi, other.hi)),  # type: ignore[arg-type]
        )

    def intersect(self, other: Box) -> Box:
        return Box(
            tuple(max(a, b) for a, b in zip(self.lo, other.lo)),  # type: ignore[arg-type]
            tuple(min(a, b) for a, b in zip(self.hi, other.hi)),  # type: ignore[arg-type]
        )

    @property
    def empty(self) -> bool:
        return any(h < l for l, h in zip(self.lo, self.hi))


def _window(coords: np.ndarray, lo: float, hi: float) -> slice | None:
    """Index slice of the ascending ``coords`` within ``[lo, hi]``."""
    a = int(np.searchsorted(coords, lo, side="left"))
    b = int(np.searchsorted(coords, hi, side="right"))
    return slice(a, b) if b > a else None


class Shape:
    """A solid: ``sdf < 0`` inside.  Subclasses implement :meth:`block`."""

    box: Box

    def block(self, xs: np.ndarray, ys: np.ndarray, zs: np.ndarray) -> np.ndarray:
        """SDF on the grid ``(zs, ys, xs)``, any values allowed (clipped by the caller)."""
        raise NotImplementedError

    def __or__(self, other: Shape) -> Shape:
        return Union([self, other])

    def __and__(self, other: Shape) -> Shape:
        return Intersection([self, other])

    def __sub__(self, other: Shape) -> Shape:
        return Difference(self, [other])

    def grown(self, d: float) -> Shape:
        """The shape dilated (``d > 0``) or eroded (``d < 0``) by ``d`` mm."""
        return Offset(self, d)


def windows(box: Box, xs: np.ndarray, ys: np.ndarray, zs: np.ndarray) -> tuple[slice, slice, slice] | None:
    """Block index window ``(z, y, x)`` where a shape with this box can be within CLIP."""
    grown = box.grow(CLIP)
    wx = _window(xs, grown.lo[0], grown.hi[0])
    wy = _window(ys, grown.lo[1], grown.hi[1])
    wz = _window(zs, grown.lo[2], grown.hi[2])
    if wx is None or wy is None or wz is None:
        return None
    return (wz, wy, wx)


def evaluate(shape: Shape, xs: np.ndarray, ys: np.ndarray, zs: np.ndarray) -> np.ndarray:
    """Clipped SDF of `shape` on the grid, ``+CLIP`` outside its window."""
    out = np.full((zs.size, ys.size, xs.size), CLIP, dtype=np.float32)
    win = windows(shape.box, xs, ys, zs)
    if win is not None:
        wz, wy, wx = win
        val = shape.block(xs[wx], ys[wy], zs[wz])
        np.clip(val, -CLIP, CLIP, out=out[wz, wy, wx])
    return out


def _apply(acc: np.ndarray, shape: Shape, xs: np.ndarray, ys: np.ndarray, zs: np.ndarray, op: Callable) -> None:
    """``acc[win] = op(acc[win], sdf)`` over the shape's window only."""
    win = windows(shape.box, xs, ys, zs)
    if win is None:
        return
    wz, wy, wx = win
    val = np.clip(shape.block(xs[wx], ys[wy], zs[wz]), -CLIP, CLIP).astype(np.float32, copy=False)
    view = acc[wz, wy, wx]
    view[...] = op(view, np.broadcast_to(val, view.shape))


def fraction(sdf: np.ndarray, h: float) -> np.ndarray:
    """Partial-volume fraction inside a surface from its SDF and the voxel size ``h``."""
    out = np.multiply(sdf, -1.0 / h, dtype=np.float32)
    out += 0.5
    return np.clip(out, 0.0, 1.0, out=out)


def _grid(xs: np.ndarray, ys: np.ndarray, zs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return (
        xs.astype(np.float32)[None, None, :],
        ys.astype(np.float32)[None, :, None],
        zs.astype(np.float32)[:, None, None],
    )


# --- combinations --------------------------------------------------------------


def smooth_min(k: float) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """Polynomial smooth minimum; ``k`` (mm) must stay well below CLIP (it shifts clipped values by k/4)."""
    def op(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        h = np.clip(0.5 + 0.5 * (b - a) / k, 0.0, 1.0)
        return b + (a - b) * h - k * h * (1.0 - h)

    return op


def smooth_max(k: float) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    lo = smooth_min(k)

    def op(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return -lo(-a, -b)

    return op


class Union(Shape):
    """Points inside any child; ``smooth`` (mm) rounds the creases."""

    def __init__(self, children: Sequence[Shape], smooth: float = 0.0) -> None:
        self.children = [c for c in children if not c.box.empty]
        self.smooth = smooth
        box = self.children[0].box
        for c in self.children[1:]:
            box = box.union(c.box)
        self.box = box

    def block(self, xs: np.ndarray, ys: np.ndarray, zs: np.ndarray) -> np.ndarray:
        acc = np.full((zs.size, ys.size, xs.size), CLIP, dtype=np.float32)
        op = smooth_min(self.smooth) if self.smooth > 0 else np.minimum
        for c in self.children:
            _apply(acc, c, xs, ys, zs, op)
        return acc


class Intersection(Shape):
    """Points inside every child."""

    def __init__(self, children: Sequence[Shape], smooth: float = 0.0) -> None:
        self.children = list(children)
        self.smooth = smooth
        box = self.children[0].box
        for c in self.children[1:]:
            box = box.intersect(c.box)
        self.box = box

    def block(self, xs: np.ndarray, ys: np.ndarray, zs: np.ndarray) -> np.ndarray:
        acc = evaluate(self.children[0], xs, ys, zs)
        op = smooth_max(self.smooth) if self.smooth > 0 else np.maximum
        for c in self.children[1:]:
            np.copyto(acc, op(acc, evaluate(c, xs, ys, zs)))
        return acc


class Difference(Shape):
    """``base`` minus every shape in ``holes``."""

    def __init__(self, base: Shape, holes: Sequence[Shape], smooth: float = 0.0) -> None:
        self.base = base
        self.holes = [h for h in holes if not h.box.empty]
        self.smooth = smooth
        self.box = base.box

    def block(self, xs: np.ndarray, ys: np.ndarray, zs: np.ndarray) -> np.ndarray:
        acc = evaluate(self.base, xs, ys, zs)
        big = smooth_max(self.smooth) if self.smooth > 0 else np.maximum

        def op(a: np.ndarray, b: np.ndarray) -> np.ndarray:
            return big(a, -b)

        for h in self.holes:
            _apply(acc, h, xs, ys, zs, op)
        return acc


class Offset(Shape):
    """A shape grown by ``d`` mm (exact for true SDFs, close for ours)."""

    def __init__(self, inner: Shape, d: float) -> None:
        self.inner, self.d = inner, d
        self.box = inner.box.grow(max(d, 0.0))

    def block(self, xs: np.ndarray, ys: np.ndarray, zs: np.ndarray) -> np.ndarray:
        return self.inner.block(xs, ys, zs) - np.float32(self.d)


# --- primitives ----------------------------------------------------------------


class FuncShape(Shape):
    """Any SDF ``fn(X, Y, Z)`` with a known bounding box."""

    def __init__(self, box: Box, fn: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]) -> None:
        self.box, self.fn = box, fn

    def block(self, xs: np.ndarray, ys: np.ndarray, zs: np.ndarray) -> np.ndarray:
        return self.fn(*_grid(xs, ys, zs))


class Ellipsoid(Shape):
    """Ellipsoid with semi-axes ``axes`` along the columns of ``rotation``."""

    def __init__(self, centre: Sequence[float], axes: Sequence[float], rotation: np.ndarray | None = None) -> None:
        self.c = np.asarray(centre, dtype=np.float64)
        self.ax = np.asarray(axes, dtype=np.float64)
        self.rot = np.eye(3) if rotation is None else np.asarray(rotation, dtype=np.float64)
        ext = np.sqrt(((self.rot * self.ax[None, :]) ** 2).sum(axis=1))
        self.box = Box(tuple(self.c - ext), tuple(self.c + ext))  # type: ignore[arg-type]

    def block(self, xs: np.ndarray, ys: np.ndarray, zs: np.ndarray) -> np.ndarray:
        X, Y, Z = _grid(xs - self.c[0], ys - self.c[1], zs - self.c[2])
        g2 = 0.0
        n2 = 0.0
        for i in range(3):
            r = self.rot[:, i]
            q = (X * np.float32(r[0]) + Y * np.float32(r[1])) + Z * np.float32(r[2])
            q = q / np.float32(self.ax[i])
            g2 = g2 + q * q
            n2 = n2 + (q / np.float32(self.ax[i])) ** 2
        g = np.sqrt(g2)
        return (g - 1.0) * g / (np.sqrt(n2) + _EPS)


class ZEllipse(Shape):
    """Stack of axial ellipses whose centre and semi-axes vary with z.

    Parameters are linearly interpolated from ``table``: rows
    ``(z, cx, cy, a, b)``; the solid spans ``z0 <= z <= z1``.
    """

    def __init__(self, table: np.ndarray, z0: float | None = None, z1: float | None = None) -> None:
        t = np.asarray(table, dtype=np.float64)
        self.t = t[np.argsort(t[:, 0])]
        self.z0 = float(self.t[0, 0] if z0 is None else z0)
        self.z1 = float(self.t[-1, 0] if z1 is None else z1)
        zz = np.linspace(self.z0, self.z1, 64)
        cx, cy, a, b = self.params(zz)
        self.box = Box(
            (float((cx - a).min()), float((cy - b).min()), self.z0),
            (float((cx + a).max()), float((cy + b).max()), self.z1),
        )

    def params(self, z: np.ndarray) -> tuple[np.ndarray, ...]:
        return tuple(np.interp(z, self.t[:, 0], self.t[:, i]) for i in range(1, 5))

    def block(self, xs: np.ndarray, ys: np.ndarray, zs: np.ndarray) -> np.ndarray:
        cx, cy, a, b = (p.astype(np.float32)[:, None, None] for p in self.params(zs))
        X, Y, Z = _grid(xs, ys, zs)
        qx = (X - cx) / a
        qy = (Y - cy) / b
        g = np.sqrt(qx * qx + qy * qy)
        d = (g - 1.0) * g / (np.sqrt((qx / a) ** 2 + (qy / b) ** 2) + _EPS)
        dz = np.maximum(np.float32(self.z0) - Z, Z - np.float32(self.z1))
        return np.maximum(d, dz)


class ZSuperEllipse(ZEllipse):
    """Like :class:`ZEllipse`, but squarer behind: exponent ``n_back`` where ``y > cy``.

    Models a supine torso, whose back is flattened against the table.
    """

    def __init__(self, table: np.ndarray, n_back: float, z0: float | None = None, z1: float | None = None) -> None:
        super().__init__(table, z0, z1)
        self.n_back = float(n_back)

    def block(self, xs: np.ndarray, ys: np.ndarray, zs: np.ndarray) -> np.ndarray:
        cx, cy, a, b = (p.astype(np.float32)[:, None, None] for p in self.params(zs))
        X, Y, Z = _grid(xs, ys, zs)
        qx = np.abs(X - cx) / a
        qy = (Y - cy) / b
        n = np.where(qy > 0, np.float32(self.n_back), np.float32(2.0))
        qy = np.abs(qy)
        px = np.power(qx + _EPS, n)
        py = np.power(qy + _EPS, n)
        g = np.power(px + py, 1.0 / n)
        # |grad g| = g^(1-n) * sqrt((qx^(n-1)/a)^2 + (qy^(n-1)/b)^2)
        grad = np.power(g + _EPS, 1.0 - n) * np.sqrt((px / (qx + _EPS) / a) ** 2 + (py / (qy + _EPS) / b) ** 2)
        d = (g - 1.0) / (grad + _EPS)
        dz = np.maximum(np.float32(self.z0) - Z, Z - np.float32(self.z1))
        return np.maximum(d, dz)


class Capsule(Shape):
    """Tapered tube between ``a`` and ``b`` with end radii ``ra`` and ``rb`` (round caps)."""

    def __init__(self, a: Sequence[float], b: Sequence[float], ra: float, rb: float | None = None) -> None:
        self.a = np.asarray(a, dtype=np.float64)
        self.b = np.asarray(b, dtype=np.float64)
        self.ra = float(ra)
        self.rb = float(ra if rb is None else rb)
        r = max(self.ra, self.rb)
        self.box = Box(tuple(np.minimum(self.a, self.b) - r), tuple(np.maximum(self.a, self.b) + r))  # type: ignore[arg-type]

    def block(self, xs: np.ndarray, ys: np.ndarray, zs: np.ndarray) -> np.ndarray:
        X, Y, Z = _grid(xs - self.a[0], ys - self.a[1], zs - self.a[2])
        u = self.b - self.a
        L2 = float(u @ u) + _EPS
        t = (X * np.float32(u[0]) + Y * np.float32(u[1]) + Z * np.float32(u[2])) / np.float32(L2)
        t = np.clip(t, 0.0, 1.0)
        dx = X - t * np.float32(u[0])
        dy = Y - t * np.float32(u[1])
        dz = Z - t * np.float32(u[2])
        return np.sqrt(dx * dx + dy * dy + dz * dz) - (np.float32(self.ra) + t * np.float32(self.rb - self.ra))


def tube(points: Sequence[Sequence[float]], radii: Sequence[float] | float, smooth: float = 0.0) -> Shape:
    """A polyline tube: union of capsules through ``points`` with per-point radii."""
    pts = np.asarray(points, dtype=np.float64)
    rad = np.broadcast_to(np.asarray(radii, dtype=np.float64), (len(pts),))
    caps = [Capsule(pts[i], pts[i + 1], rad[i], rad[i + 1]) for i in range(len(pts) - 1)]
    return caps[0] if len(caps) == 1 else Union(caps, smooth=smooth)

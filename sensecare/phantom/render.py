"""Paint the anatomy (without trees and lesions) into a block of slices.

Painting is back-to-front alpha blending: each tissue replaces what is
below it in proportion to its partial-volume fraction, so boundaries carry
realistic mixed HU.  The order encodes containment (muscle inside the body,
mediastinum inside the chest, lungs last because they fill what is left).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from sensecare.phantom.anatomy import Anatomy
from sensecare.phantom.fields import SmoothField
from sensecare.phantom.shapes import (
    CLIP,
    Box,
    FuncShape,
    Intersection,
    Shape,
    fraction,
    windows,
)
from sensecare.phantom.tissues import HU

__all__ = ["Textures", "paint", "render_block"]

Value = float | Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


@dataclass
class Textures:
    """Random fields shared by every block of one phantom."""

    fine: SmoothField  # ~2.5 mm: parenchyma, fat, muscle heterogeneity
    coarse: SmoothField  # ~12 mm: breast tissue, fissure completeness
    opacity: Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]] | None = None


def paint(hu: np.ndarray, shape: Shape, value: Value, xs: np.ndarray, ys: np.ndarray, zs: np.ndarray, h: float,
          keep: np.ndarray | None = None) -> None:
    """Blend ``value`` into ``hu`` by the shape's fraction; optionally store the fraction in ``keep``."""
    win = windows(shape.box, xs, ys, zs)
    if win is None:
        return
    wz, wy, wx = win
    sdf = np.clip(shape.block(xs[wx], ys[wy], zs[wz]), -CLIP, CLIP)
    f = fraction(np.broadcast_to(sdf, (zs[wz].size, ys[wy].size, xs[wx].size)), h)
    if not f.any():
        return
    view = hu[wz, wy, wx]
    v = value(xs[wx], ys[wy], zs[wz]) if callable(value) else np.float32(value)
    view += (v - view) * f
    if keep is not None:
        np.maximum(keep[wz, wy, wx], f, out=keep[wz, wy, wx])


def _bone(hu: np.ndarray, shape: Shape, cortex: float, marrow: float, thickness: float, g: tuple, h: float,
          tissue: HU) -> None:
    paint(hu, shape, tissue.cortical_bone * cortex, *g, h)
    paint(hu, shape.grown(-thickness), marrow, *g, h)


def render_block(anat: Anatomy, tissue: HU, tex: Textures, xs: np.ndarray, ys: np.ndarray, zs: np.ndarray,
                 h: float, table: bool) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """HU of the base anatomy on ``(zs, ys, xs)`` and the lung fractions per side."""
    g = (xs, ys, zs)
    hu = np.full((zs.size, ys.size, xs.size), tissue.air, dtype=np.float32)

    def textured(mean: float, sd: float, field: SmoothField = tex.fine) -> Callable:
        return lambda x, y, z: mean + sd * field.sample_grid(x, y, z)

    if table:
        _table(hu, anat, tissue, xs, ys, zs, h)
    paint(hu, anat.body, tissue.skin, *g, h)
    paint(hu, anat.body.grown(-2.0), textured(tissue.fat, tissue.fat_texture), *g, h)
    if anat.breasts is not None:
        paint(hu, anat.breasts.grown(-4.0), _breast_value(anat, tissue, tex), *g, h)
    paint(hu, anat.fat_inner, textured(tissue.muscle, tissue.muscle_texture), *g, h)
    paint(hu, anat.fat_planes, tissue.fat, *g, h)
    for scap in anat.scapulae:
        _bone(hu, scap, 0.75, 300.0, 1.0, g, h, tissue)
    for clav in anat.clavicles:
        _bone(hu, clav, 1.0, tissue.rib_marrow, 1.6, g, h, tissue)

    # spine and sternum
    for disc in anat.discs:
        paint(hu, disc, tissue.disc, *g, h)
    for vert, _ in anat.vertebrae:
        _bone(hu, vert, 0.85, tissue.vertebral_marrow, 1.3, g, h, tissue)
    for post in anat.posterior_elements:
        _bone(hu, post, 0.9, tissue.vertebral_marrow + 60, 1.1, g, h, tissue)
    _bone(hu, anat.sternum, 0.85, tissue.sternal_marrow, 1.2, g, h, tissue)

    # mediastinum
    paint(hu, anat.mediastinum, textured(tissue.fat + 5, tissue.fat_texture), *g, h)
    paint(hu, anat.organs["thyroid"], tissue.thyroid, *g, h)
    paint(hu, anat.heart.grown(4.0), tissue.fat, *g, h)
    paint(hu, anat.heart, tissue.myocardium, *g, h)
    for name, part in anat.heart_parts.items():
        blood = tissue.blood_pulmonary if name in ("RA", "RV") else tissue.blood_systemic
        paint(hu, part, blood, *g, h)
    v = anat.vessels
    paint(hu, v["esophagus"], tissue.gut_wall, *g, h)
    paint(hu, v["esophagus"].grown(-5.5), -600.0, *g, h)
    for name in ("aorta", "branches"):
        paint(hu, v[name], tissue.blood_systemic, *g, h)
    for name in ("svc", "bcv", "pa", "rpa", "lpa"):
        paint(hu, v[name], tissue.blood_pulmonary, *g, h)
    paint(hu, v["azygos"], tissue.blood_venous, *g, h)

    # upper abdomen
    o = anat.organs
    paint(hu, anat.abdomen, textured(tissue.fat, tissue.fat_texture), *g, h)
    paint(hu, o["liver"], textured(tissue.liver, 6.0), *g, h)
    paint(hu, v["ivc"], tissue.blood_venous, *g, h)
    paint(hu, o["spleen"], tissue.spleen, *g, h)
    paint(hu, o["kidneys"], tissue.kidney, *g, h)
    for organ in ("stomach", "colon"):
        paint(hu, o[organ], tissue.gut_wall, *g, h)
        inner = o[organ].grown(-3.0)
        paint(hu, inner, tissue.gut_content if organ == "stomach" else tissue.air, *g, h)
    paint(hu, Intersection([o["stomach"].grown(-3.0), _below_y(anat.stomach_air_y)]), tissue.air, *g, h)

    # lungs
    lung_frac = {s: np.zeros_like(hu) for s in ("R", "L")}
    parenchyma = _parenchyma_value(tissue, tex)
    for s in ("R", "L"):
        paint(hu, anat.lungs[s], parenchyma, *g, h, keep=lung_frac[s])
    _fissures(hu, anat, lung_frac, tex, xs, ys, zs, h)
    return hu, lung_frac


def _parenchyma_value(tissue: HU, tex: Textures) -> Callable:
    def value(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        t = np.clip((y.astype(np.float32) + 90.0) / 180.0, 0.0, 1.0)[None, :, None]
        base = tissue.lung_anterior + tissue.lung_gravity * t - 0.04 * np.clip(z, -200, 150)[:, None, None].astype(np.float32)
        out = base + tissue.lung_texture * tex.fine.sample_grid(x, y, z)
        if tex.opacity is not None:
            out = tex.opacity(x, y, z, out)[0]
        return out

    return value


def _fissures(hu: np.ndarray, anat: Anatomy, lung_frac: dict[str, np.ndarray], tex: Textures, xs: np.ndarray,
              ys: np.ndarray, zs: np.ndarray, h: float) -> None:
    """Thin denser sheets between lobes; partly incomplete, as in most people."""
    sigma = max(0.3, 0.45 * h)
    amp = 110.0 / (sigma * 2.5066)  # line integral ~110 HU mm: a 0.12 mm sheet of soft tissue
    X = xs.astype(np.float32)[None, None, :]
    Y = ys.astype(np.float32)[None, :, None]
    Z = zs.astype(np.float32)[:, None, None]
    for side, names in (("R", ("R_oblique", "R_horizontal")), ("L", ("L_oblique",))):
        frac = lung_frac[side]
        if not frac.any():
            continue
        nz = np.flatnonzero(frac.reshape(frac.shape[0], -1).any(axis=1))
        ny = np.flatnonzero(frac.any(axis=(0, 2)))
        nx = np.flatnonzero(frac.any(axis=(0, 1)))
        wz, wy, wx = slice(nz[0], nz[-1] + 1), slice(ny[0], ny[-1] + 1), slice(nx[0], nx[-1] + 1)
        Xw, Yw, Zw = X[:, :, wx], Y[:, wy, :], Z[wz]
        complete = np.clip(0.9 + 0.6 * tex.coarse.sample_grid(xs[wx], ys[wy], zs[wz]), 0.0, 1.0)
        oblique = anat.fissures[names[0]].signed(Xw, Yw, Zw)
        ridge = np.exp(-0.5 * (oblique / sigma) ** 2)
        if len(names) > 1:
            horiz = anat.fissures[names[1]].signed(Xw, Yw, Zw)
            ridge = np.maximum(ridge, np.exp(-0.5 * (horiz / sigma) ** 2) * np.clip(oblique / 2.0 + 0.5, 0.0, 1.0))
        f = frac[wz, wy, wx]
        hu[wz, wy, wx] += (amp * ridge * complete * f).astype(np.float32)


def _breast_value(anat: Anatomy, tissue: HU, tex: Textures) -> Callable:
    def value(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        gland = np.clip(0.35 + 0.45 * tex.coarse.sample_grid(x, y, z) + 0.2 * tex.fine.sample_grid(x, y, z), 0, 1)
        return tissue.fat + (tissue.muscle - 10 - tissue.fat) * gland

    return value


def _table(hu: np.ndarray, anat: Anatomy, tissue: HU, xs: np.ndarray, ys: np.ndarray, zs: np.ndarray,
           h: float) -> None:
    """Curved carbon-fibre table top: thin dense shells around a foam core."""
    top = anat.table_top
    X = xs.astype(np.float32)[None, :]
    Y = ys.astype(np.float32)[:, None]
    surf = top + 0.0012 * X * X  # concave upwards
    outer = np.maximum(np.maximum(surf - Y, Y - (surf + 42.0)), np.abs(X) - 225.0)
    inner = outer + 2.0
    f_out = fraction(outer, h)
    f_in = fraction(inner, h)
    slab = tissue.air + (tissue.table_shell - tissue.air) * f_out
    slab += (tissue.table_foam - slab) * f_in
    sel = f_out > 0
    if sel.any():
        hu[:, sel] = slab[sel][None, :]


def _below_y(y0: float) -> Shape:
    """Half-space ``y < y0`` (anterior of a coronal plane: where gas rises in a supine patient)."""
    yy = np.float32(y0)
    return FuncShape(Box((-1e3, -1e3, -1e3), (1e3, y0, 1e3)),
                     lambda X, Y, Z: np.broadcast_to(Y - yy, np.broadcast_shapes(X.shape, Y.shape, Z.shape)))

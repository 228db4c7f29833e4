"""The patient: where organs are, as analytic shapes in LPS millimetres.

One adult chest is described for a medium-sized man with z = 0 at the
carina, then scaled for size and sex and jittered by the seed (a few percent
in each axis, organ positions by a few millimetres), so every seed is a
different but plausible patient.  Numbers are typical adult dimensions from
anatomy and CT atlases (see ``docs/phantoms.md``).

Only geometry lives here; HU values and drawing order are in
:mod:`sensecare.phantom.render`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial

import numpy as np

from sensecare.phantom.shapes import (
    Box,
    Capsule,
    Ellipsoid,
    FuncShape,
    Intersection,
    Shape,
    Union,
    ZEllipse,
    ZSuperEllipse,
    evaluate,
    smooth_max,
    tube,
)

__all__ = ["Anatomy", "Rib", "Surface", "build_anatomy"]

SIZE_BODY = {"small": (0.90, 0.88), "medium": (1.0, 1.0), "large": (1.15, 1.22)}
SIZE_THORAX = {"small": 0.91, "medium": 0.96, "large": 1.0}
SIZE_FAT = {"small": 7.0, "medium": 14.0, "large": 32.0}
#: Exponent of the torso's cross-section behind its centre (flattened against the table).
BODY_N_BACK = 3.2
#: Skin to thoracic cavity at least (mm): skin, fat, muscle and ribs of the thinnest chest wall.
MIN_CHEST_WALL_MM = 10.0


class Surface:
    """Height map ``z = z0 - d * rho^2 - d_post * max(0, (y - yc)/ay)^2`` (a dome or cap).

    ``rho^2 = ((x - xc)/ax)^2 + ((y - yc)/ay)^2``; ``sign=+1`` keeps points
    above (a diaphragm: lung above), ``sign=-1`` points below (an apex cap).
    """

    def __init__(self, xc: float, yc: float, z0: float, ax: float, ay: float, d: float, d_post: float = 0.0,
                 sign: int = 1, wobble: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)) -> None:
        self.xc, self.yc, self.z0, self.ax, self.ay, self.d, self.dp = xc, yc, z0, ax, ay, d, d_post
        self.sign = sign
        self.wobble = wobble  # amplitude, wavelength, phase x, phase y

    def height(self, X: np.ndarray, Y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Height and its x, y derivatives."""
        u = (X - self.xc) / self.ax
        v = (Y - self.yc) / self.ay
        vp = np.maximum(v, 0.0)
        h = self.z0 - self.d * (u * u + v * v) - self.dp * vp * vp
        hx = -2.0 * self.d * u / self.ax
        hy = -2.0 * self.d * v / self.ay - 2.0 * self.dp * vp / self.ay
        amp, lam, px, py = self.wobble
        if amp:
            k = 2 * np.pi / lam
            h = h + amp * np.sin(k * X + px) * np.sin(k * Y + py)
            hx = hx + amp * k * np.cos(k * X + px) * np.sin(k * Y + py)
            hy = hy + amp * k * np.sin(k * X + px) * np.cos(k * Y + py)
        return h, hx, hy

    def sdf(self, X: np.ndarray, Y: np.ndarray, Z: np.ndarray) -> np.ndarray:
        h, hx, hy = self.height(X, Y)
        return self.sign * (h - Z) / np.sqrt(1.0 + hx * hx + hy * hy)

    def shape(self, box: Box) -> Shape:
        return FuncShape(box, self.sdf)


@dataclass(frozen=True)
class Fissure:
    """Plane-like fissure ``z = z0 + slope * (y - y0) + curve * ((x - xc)/60)^2 + wobble``."""

    z0: float
    y0: float
    slope: float
    xc: float
    curve: float
    wobble: tuple[float, float, float, float]

    def height(self, X: np.ndarray, Y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        amp, lam, px, py = self.wobble
        k = 2 * np.pi / lam
        u = (X - self.xc) / 60.0
        h = self.z0 + self.slope * (Y - self.y0) + self.curve * u * u + amp * np.sin(k * X + px) * np.sin(k * Y + py)
        hx = 2 * self.curve * u / 60.0 + amp * k * np.cos(k * X + px) * np.sin(k * Y + py)
        hy = self.slope + amp * k * np.sin(k * X + px) * np.cos(k * Y + py)
        return h, hx, hy

    def signed(self, X: np.ndarray, Y: np.ndarray, Z: np.ndarray) -> np.ndarray:
        """Distance above the fissure (mm), positive on the cranial/anterior side."""
        h, hx, hy = self.height(X, Y)
        return (Z - h) / np.sqrt(1.0 + hx * hx + hy * hy)


@dataclass
class Rib:
    """A rib centre line (N, 3), its radius and whether it continues as cartilage."""

    path: np.ndarray
    radius: float
    cartilage: np.ndarray | None


@dataclass
class Anatomy:
    """Every organ of one patient as shapes, plus landmarks for trees and lesions."""

    sex: str
    size: str
    z_apex: float
    z_bottom: float
    y_centre: float
    body_half_width: float
    body: Shape
    fat_inner: Shape
    fat_planes: Shape
    breasts: Shape | None
    cavity: dict[str, Shape]
    lungs: dict[str, Shape]
    mediastinum: Shape
    abdomen: Shape
    diaphragm: dict[str, Surface]
    fissures: dict[str, Fissure]
    heart: Shape
    heart_parts: dict[str, Shape]
    vessels: dict[str, Shape]
    airway_central: list[tuple[np.ndarray, np.ndarray, float, float]]
    lobar_roots: dict[int, tuple[np.ndarray, np.ndarray, float]]
    hila: dict[str, np.ndarray]
    vein_ostia: dict[int, np.ndarray]
    organs: dict[str, Shape]
    stomach_air_y: float
    vertebrae: list[tuple[Shape, float]]
    discs: list[Shape]
    posterior_elements: list[Shape]
    sternum: Shape
    clavicles: list[Shape]
    scapulae: list[Shape]
    ribs: list[Rib] = field(default_factory=list)
    table_top: float = 0.0


def _rot(u: np.ndarray) -> np.ndarray:
    """Orthonormal frame whose first column is ``u``."""
    up = np.array([0.0, 0.0, 1.0])
    u = u / np.linalg.norm(u)
    v = np.cross(up, u)
    if np.linalg.norm(v) < 1e-6:
        v = np.cross(np.array([0.0, 1.0, 0.0]), u)
    v /= np.linalg.norm(v)
    w = np.cross(u, v)
    return np.column_stack([u, v, w])


def build_anatomy(size: str, sex: str, rng: np.random.Generator) -> Anatomy:
    """Draw one patient: scale the reference adult and jitter it with `rng`."""
    def j(sd: float = 1.0) -> float:
        return float(rng.normal(0.0, sd))

    thorax = SIZE_THORAX[size] * (1.0 if sex == "M" else 0.93)
    sx = thorax * (1 + 0.035 * np.clip(j(), -2, 2))
    sy = thorax * (1 + 0.035 * np.clip(j(), -2, 2))
    sz = thorax * (1 + 0.04 * np.clip(j(), -2, 2))
    bw, bd = SIZE_BODY[size]
    if sex == "F":
        bw, bd = bw * 0.94, bd * 0.95
    fat = SIZE_FAT[size] * (1 + 0.15 * np.clip(j(), -2, 2)) * (1.15 if sex == "F" else 1.0)

    def P(x: float, y: float, z: float) -> np.ndarray:
        return np.array([x * sx, y * sy, z * sz])

    def S(rows: list[tuple[float, ...]]) -> np.ndarray:
        t = np.array(rows, dtype=float)
        t[:, 0] *= sz
        t[:, 1] *= sx
        t[:, 2] *= sy
        t[:, 3] *= sx
        t[:, 4] *= sy
        return t

    # --- body wall -----------------------------------------------------------
    body_rows = [
        (260, 0, 5, 100, 70),
        (180, 0, 5, 118, 80),
        (120, 0, 4, 160, 108),
        (60, 0, 3, 168, 117),
        (-40, 0, 2, 172, 122),
        (-120, 0, 1, 170, 124),
        (-200, 0, 0, 163, 121),
        (-320, 0, 0, 158, 119),
    ]
    bt = S(body_rows)
    # the body grows with the square root of the thorax scale, plus habitus and extra fat
    bt[:, 3] = bt[:, 3] / thorax * thorax**0.5 * bw + (fat - SIZE_FAT["medium"])
    bt[:, 4] = bt[:, 4] / thorax * thorax**0.5 * bd + (fat - SIZE_FAT["medium"])
    # the hemithoraces (table rows as the body's; the left one is the mirror image)
    cav_rows = [
        (135, -40, 18, 20, 24),
        (110, -48, 16, 34, 44),
        (75, -59, 12, 54, 68),
        (30, -67, 8, 64, 84),
        (-20, -72, 5, 68, 91),
        (-80, -74, 4, 69, 93),
        (-140, -74, 4, 68, 93),
        (-210, -72, 4, 66, 90),
    ]
    cav_r = S(cav_rows)
    # a thin habitus shrinks the body faster than the thorax: keep a chest wall round the cavities
    bt = _with_chest_wall(bt, cav_r, BODY_N_BACK, MIN_CHEST_WALL_MM)
    back = float(np.max(bt[:, 2] + bt[:, 4]))
    z_lo, z_hi = float(bt[:, 0].min()), float(bt[:, 0].max())
    body = ZSuperEllipse(bt, BODY_N_BACK, z_lo, z_hi)
    inner_t = bt.copy()
    inner_t[:, 3] -= fat
    inner_t[:, 4] -= fat
    fat_inner = ZSuperEllipse(inner_t, BODY_N_BACK, z_lo, z_hi)
    plane_t = inner_t.copy()
    plane_t[:, 3:5] -= 7.0 + 0.15 * fat
    plane = ZSuperEllipse(plane_t, BODY_N_BACK, z_lo, z_hi)
    fat_planes = FuncShape(plane.box, lambda X, Y, Z: _plane_sdf(plane, X, Y, Z))
    body_half_width = float(bt[:, 3].max())

    # --- hemithoraces, domes, apices, fissures ---------------------------------
    cav_l = cav_r.copy()
    cav_l[:, 1] *= -1
    cavity = {"R": ZEllipse(cav_r), "L": ZEllipse(cav_l)}

    dz_r = -105 + 6 * np.clip(j(), -2, 2)
    dz_l = dz_r - 14 + 4 * np.clip(j(), -2, 2)
    diaphragm = {
        "R": Surface(-68 * sx, -12 * sy, dz_r * sz, 62 * sx, 95 * sy, 40 * sz, 30 * sz, sign=1,
                     wobble=(2.0, 90.0, rng.uniform(0, 6.3), rng.uniform(0, 6.3))),
        "L": Surface(68 * sx, -12 * sy, dz_l * sz, 62 * sx, 95 * sy, 40 * sz, 30 * sz, sign=1,
                     wobble=(2.0, 90.0, rng.uniform(0, 6.3), rng.uniform(0, 6.3))),
    }
    z_apex = {"R": (108 + 4 * np.clip(j(), -2, 2)) * sz, "L": (110 + 4 * np.clip(j(), -2, 2)) * sz}
    apex = {
        s: Surface(sg * 45 * sx, 18 * sy, z_apex[s], 38 * 1.414 * sx, 38 * 1.414 * 1.18 * sy, 38 * sz, sign=-1)
        for s, sg in (("R", -1), ("L", 1))
    }
    ob = j(6)
    fissures = {
        "R_oblique": Fissure((-112 + ob) * sz, -65 * sy, 0.82 * sz / sy, -75 * sx, 6.0,
                             (3.0, 70.0, rng.uniform(0, 6.3), rng.uniform(0, 6.3))),
        "R_horizontal": Fissure((-34 + j(5)) * sz, -60 * sy, -0.12 * sz / sy, -80 * sx, 4.0,
                                (2.0, 80.0, rng.uniform(0, 6.3), rng.uniform(0, 6.3))),
        "L_oblique": Fissure((-122 + j(6)) * sz, -60 * sy, 0.9 * sz / sy, 75 * sx, 6.0,
                             (3.0, 70.0, rng.uniform(0, 6.3), rng.uniform(0, 6.3))),
    }

    # --- spine -----------------------------------------------------------------
    def y_spine(z: np.ndarray | float) -> np.ndarray:
        return np.interp(z, np.array([-330, -230, -120, 0, 120, 260]) * sz, np.array([30, 36, 42, 45, 38, 30]) * sy)

    levels = []  # (name, z centre, height)
    z = 102.0 * sz
    heights = [22, 23, 23, 24, 25, 25, 26, 26, 27, 27, 28, 29, 31, 32, 33]
    names = ["C7"] + [f"T{i}" for i in range(1, 13)] + ["L1", "L2"]
    for name, h in zip(names, heights):
        levels.append((name, z, h * sz))
        z -= h * sz
    vertebrae, discs, post = [], [], []
    vert_z = {}
    for i, (name, zc, h) in enumerate(levels):
        a = (14 + 0.75 * i) * sx
        b = (12 + 0.55 * i) * sy
        yv = float(y_spine(zc))
        body_t = np.array([[zc - h / 2, 0, yv, a, b], [zc + h / 2, 0, yv, a, b]])
        vertebrae.append((ZEllipse(body_t, zc - h / 2 + 2.5, zc + h / 2 - 2.5), yv))
        discs.append(ZEllipse(body_t, zc + h / 2 - 3.0, zc + h / 2 + 3.0))
        vert_z[name] = (zc, yv, a, b, h)
        yc = yv + b + 9 * sy  # spinal canal centre
        ring = [(np.cos(ang) * 11 * sx, yc + np.sin(ang) * 10 * sy, zc)
                for ang in np.linspace(-0.15 * np.pi, 1.15 * np.pi, 9)]
        arch = tube(ring, 3.2)
        spinous = Capsule((0, yc + 9 * sy, zc), (0, yc + 34 * sy, zc - 14 * sz), 4.0, 3.0)
        trans = [
            Capsule((sg * 9 * sx, yc + 2, zc + 3), (sg * 36 * sx, yc + 10 * sy, zc + 5), 4.5, 4.0)
            for sg in (-1, 1)
        ]
        post.append(Union([arch, spinous, *trans]))

    spine_block = FuncShape(
        Box((-40 * sx, 0, -400), (40 * sx, 140 * sy, 300)),
        lambda X, Y, Z: _spine_block_sdf(X, Y, Z, y_spine, sx, sy),
    )

    # --- mediastinum --------------------------------------------------------------
    trachea_r = (9.0 if sex == "M" else 8.0) * thorax
    carina = P(0, 4, 0)
    trachea_top = P(0, -22, 230)
    rmb_end = P(-25, 8, -17)
    lmb_end = P(38, 13, -32)
    rul_end = P(-50, 6, -10)
    bi_end = P(-32, 12, -40)
    rml_end = P(-48, -12, -58)
    rll_end = P(-40, 22, -62)
    lul_end = P(55, 4, -24)
    lll_end = P(50, 26, -55)
    airway_central = [
        (trachea_top, P(0, -12, 80), trachea_r, trachea_r),
        (P(0, -12, 80), carina, trachea_r, trachea_r * 0.95),
        (carina, rmb_end, 7.0 * thorax, 6.6 * thorax),
        (carina, lmb_end, 6.2 * thorax, 5.8 * thorax),
        (rmb_end, rul_end, 4.6 * thorax, 4.3 * thorax),
        (rmb_end, bi_end, 5.6 * thorax, 5.2 * thorax),
        (bi_end, rml_end, 3.6 * thorax, 3.4 * thorax),
        (bi_end, rll_end, 4.8 * thorax, 4.5 * thorax),
        (lmb_end, lul_end, 4.8 * thorax, 4.5 * thorax),
        (lmb_end, lll_end, 4.8 * thorax, 4.5 * thorax),
    ]
    lobar_roots = {
        1: (rul_end, rul_end - rmb_end, 4.3 * thorax),
        2: (rml_end, rml_end - bi_end, 3.4 * thorax),
        3: (rll_end, rll_end - bi_end, 4.5 * thorax),
        4: (lul_end, lul_end - lmb_end, 4.5 * thorax),
        5: (lll_end, lll_end - lmb_end, 4.5 * thorax),
    }
    trachea_outer = Union([Capsule(a, b, ra + 2.3, rb + 2.0) for a, b, ra, rb in airway_central[:4]])

    hx = j(4)
    heart_c = P(27 + hx, -24 + j(4), -86 + j(5))
    heart_rot = _rot(np.array([0.66, -0.6, -0.45]))
    heart_ax = np.array([64, 46, 41]) * thorax
    heart = Ellipsoid(heart_c, heart_ax, heart_rot)
    heart_parts = {
        "RA": Ellipsoid(heart_c + P(-38, 18, 18), np.array([24, 22, 28]) * thorax),
        "RV": Ellipsoid(heart_c + P(-6, -22, -2), np.array([38, 15, 30]) * thorax, _rot(np.array([0.8, -0.4, -0.3]))),
        "LA": Ellipsoid(heart_c + P(-20, 36, 32), np.array([30, 15, 18]) * thorax),
        "LV": Ellipsoid(heart_c + P(20, 8, -6), np.array([34, 21, 21]) * thorax, heart_rot),
    }
    la_c = heart_c + P(-20, 36, 32)
    vein_ostia = {
        1: la_c + P(-30, -6, 10), 2: la_c + P(-30, -8, -4), 3: la_c + P(-28, 4, -12),
        4: la_c + P(32, -6, 12), 5: la_c + P(30, 4, -10),
    }
    aorta_pts = [P(4, -12, -55), P(0, -24, -20), P(2, -27, 18), P(10, -22, 34), P(20, -4, 42),
                 P(26, 16, 37), P(27, 26, 22), P(27, 26, 0), P(22, 20, -80), P(19, 15, -130),
                 P(12, 8, -200), P(8, 4, -330)]
    aorta_r = np.array([15, 15.5, 15, 13.5, 13, 12.5, 12, 12, 11.5, 11, 10.5, 10]) * thorax
    aorta = tube(aorta_pts, aorta_r)
    svc = tube([P(-30, -14, 95), P(-27, -12, 30), P(-24, -8, -40)], np.array([9, 10, 10]) * thorax)
    bcv = tube([P(42, -32, 85), P(10, -30, 72), P(-27, -14, 62)], 7.0 * thorax)
    branches = Union([
        tube([P(2, -24, 36), P(-10, -20, 80), P(-22, -12, 150)], 6.5 * thorax),
        tube([P(12, -17, 42), P(11, -12, 90), P(14, -10, 150)], 4.5 * thorax),
        tube([P(22, -2, 43), P(30, 4, 95), P(60, 10, 120)], 5.5 * thorax),
    ])
    pa_bif = P(6, -12, -14)
    pa_main = tube([P(18, -42, -58), P(16, -32, -32), pa_bif], 14.0 * thorax)
    hila = {"R": P(-50, 0, -28), "L": P(50, 16, -24)}
    rpa = tube([pa_bif, P(-15, -12, -22), P(-38, -4, -25), hila["R"]], np.array([11, 11, 10.5, 10]) * thorax)
    lpa = tube([pa_bif, P(26, -6, -8), P(42, 8, -14), hila["L"]], np.array([10.5, 10.5, 10, 9.5]) * thorax)
    esophagus = tube([P(4, 10, 230), P(6, 18, 40), P(10, 22, -60), P(18, 16, -130), P(34, 2, -158)],
                     8.0 * thorax)
    ivc = tube([P(-20, 10, -330), P(-20, 6, -150), P(-16, -4, -112)], 12.0 * thorax)
    azygos = tube([P(-6, 36, -200), P(-8, 34, -20), P(-12, 24, 12), P(-22, 4, 18)], 4.0 * thorax)
    vessels = {"aorta": aorta, "svc": svc, "bcv": bcv, "branches": branches, "pa": pa_main, "rpa": rpa,
               "lpa": lpa, "esophagus": esophagus, "ivc": ivc, "azygos": azygos}

    def band_sdf(X: np.ndarray, Y: np.ndarray, Z: np.ndarray) -> np.ndarray:
        zz = Z / sz
        front = -92.0 * sy
        back = y_spine(Z) - 10 * sy
        hw_a = (3.5 + 8.5 * _smoothstep(zz, -10, -45) + 8.0 * _smoothstep(zz, 60, 130)) * sx
        hw_p = (15.0 + 4.0 * _smoothstep(zz, -60, 0)) * sx
        t = np.clip((Y - front) / (back - front), 0.0, 1.0) ** 0.6
        hw = hw_a + (hw_p - hw_a) * t
        xm = np.interp(zz, [-150, 0, 140], [2, 3, 0]) * sx
        d = np.abs(X - xm) - hw
        return np.maximum(d, np.maximum(front - Y, Y - back))

    band = FuncShape(Box((-40 * sx, -95 * sy, -170 * sz), (40 * sx, 60 * sy, 300)), band_sdf)
    peri = heart.grown(5.0)
    mediastinum = Union(
        [band, trachea_outer.grown(3.0), esophagus.grown(3.0), aorta.grown(3.0), svc.grown(3.0),
         bcv.grown(3.0), branches.grown(2.0), pa_main.grown(3.0), rpa.grown(3.0), lpa.grown(3.0),
         Ellipsoid(la_c, np.array([36, 20, 24]) * thorax), peri, azygos.grown(2.0),
         Capsule(rmb_end, rul_end, 7.0, 6.0), Capsule(lmb_end, lul_end - 0.3 * (lul_end - lmb_end), 7.0, 6.5),
         Capsule(lmb_end, lll_end - 0.4 * (lll_end - lmb_end), 7.0, 6.5),
         Capsule(rmb_end, bi_end, 8.0, 7.0), Capsule(bi_end, bi_end + 0.3 * (rll_end - bi_end), 7.0, 6.5),
         Ellipsoid(heart_c + P(8, -6, -48), np.array([40, 34, 14]) * thorax)],
        smooth=6.0,
    )

    exclusion = Union([mediastinum, spine_block], smooth=6.0)
    lungs = {}
    for s in ("R", "L"):
        ztop = z_apex[s] + 1
        box = Box((-160 * sx, -100 * sy, -200 * sz), (160 * sx, 110 * sy, ztop))
        hemi = Intersection(
            [cavity[s], apex[s].shape(box), diaphragm[s].shape(box)], smooth=4.0,
        )
        lungs[s] = _Subtract(hemi, exclusion, smooth=3.0)

    # --- abdomen below the domes -------------------------------------------------------------
    abd_t = S([(-330, 0, 2, 140, 96), (-150, 0, 2, 142, 92), (-60, 0, 2, 140, 90)])
    tendon = Surface(0.0, -20 * sy, (dz_r - 24) * sz, 50 * sx, 90 * sy, 20 * sz)
    dome = FuncShape(Box((-200, -150, -400), (200, 150, 0)),
                     lambda X, Y, Z: -np.maximum(np.maximum(diaphragm["R"].sdf(X, Y, Z), diaphragm["L"].sdf(X, Y, Z)),
                                                 tendon.sdf(X, Y, Z)))
    below = dome.grown(-4.5)
    abdomen = Intersection([ZEllipse(abd_t), below])
    liver = Intersection([
        Union([Ellipsoid(P(-62, 10, -178), np.array([82, 86, 85]) * thorax),
               Ellipsoid(P(12, -40, -150), np.array([55, 36, 30]) * thorax, _rot(np.array([1.0, 0.2, 0.15])))],
              smooth=10.0),
        below.grown(0.5), ZEllipse(abd_t).grown(-4.0)])
    stomach = Intersection([Ellipsoid(P(58, -18, -172), np.array([48, 40, 55]) * thorax,
                                      _rot(np.array([0.5, -0.5, -0.7]))), below.grown(0.5)])
    spleen = Intersection([Ellipsoid(P(88, 42, -178), np.array([34, 58, 56]) * thorax,
                                     _rot(np.array([0.3, 1.0, 0.2]))), below.grown(0.5)])
    kidneys = Union([Ellipsoid(P(-62, 52, -262), np.array([30, 30, 52]) * thorax),
                     Ellipsoid(P(62, 52, -246), np.array([30, 30, 52]) * thorax)])
    colon = Intersection([tube([P(80, -50, -185), P(98, -20, -205), P(100, 20, -235)], 16.0 * thorax),
                          below.grown(-2.0)])
    organs = {"liver": liver, "stomach": stomach, "spleen": spleen, "kidneys": kidneys, "colon": colon,
              "thyroid": Union([Ellipsoid(P(sg * 20, -20, 150), np.array([12, 14, 22]) * thorax) for sg in (-1, 1)])}

    # --- sternum, clavicles, scapulae -------------------------------------------------------------
    def ys(z: float) -> float:  # sternum: just in front of the hemithoraces, a little lower down
        return -(91 + 0.02 * max(0, -z)) * sy

    st_t = np.array([[78, 0, ys(78), 26, 8], [42, 0, ys(42), 22, 7.5], [36, 0, ys(36), 15, 6.5],
                     [-100, 0, ys(-100), 14, 6.5], [-118, 0, ys(-118), 8, 4.5], [-135, 0, ys(-135), 5, 3.5]])
    st_t[:, 0] *= sz
    st_t[:, 3] *= sx
    sternum = ZEllipse(st_t)
    clavicles = [tube([P(sg * 20, -98, 80), P(sg * 60, -96, 92), P(sg * 110, -74, 104), P(sg * 150, -42, 110)],
                      6.0 * thorax) for sg in (-1, 1)]
    scapulae = [
        FuncShape(Box((-160 * sx if sg < 0 else 40 * sx, 10, -40 * sz), (-40 * sx if sg < 0 else 160 * sx, 130, 150 * sz)),
                  partial(_scapula_sdf, sg=sg, inner_t=inner_t, sx=sx, sz=sz))
        for sg in (-1, 1)
    ]

    breasts = None
    if sex == "F":
        bsize = {"small": 0.8, "medium": 1.0, "large": 1.35}[size] * (1 + 0.15 * np.clip(j(), -2, 2))
        front = float(np.interp(-70 * sz, bt[:, 0], bt[:, 2] - bt[:, 4]))
        breasts = Union([Ellipsoid((sg * 84 * sx, front + 12, -72 * sz), np.array([40, 64, 58]) * bsize,
                                   _rot(np.array([sg * 0.3, -1.0, -0.1]))) for sg in (-1, 1)], smooth=8.0)

    anat = Anatomy(
        sex=sex, size=size, z_apex=float(max(z_apex.values())),
        z_bottom=float(min(diaphragm[s].z0 - diaphragm[s].d * 1.6 - diaphragm[s].dp for s in ("R", "L"))),
        y_centre=float(min((bt[:, 2] - bt[:, 4]).min(), breasts.box.lo[1] if breasts else 0.0) + back) / 2.0 + 6.0,
        body_half_width=body_half_width,
        body=body if breasts is None else Union([body, breasts], smooth=10.0),
        fat_inner=fat_inner, fat_planes=fat_planes, breasts=breasts, cavity=cavity, lungs=lungs, mediastinum=mediastinum,
        abdomen=abdomen, diaphragm=diaphragm, fissures=fissures, heart=heart, heart_parts=heart_parts,
        vessels=vessels, airway_central=airway_central, lobar_roots=lobar_roots, hila=hila,
        vein_ostia=vein_ostia, organs=organs, stomach_air_y=float(P(0, -30, 0)[1]),
        vertebrae=vertebrae, discs=discs, posterior_elements=post, sternum=sternum,
        clavicles=clavicles, scapulae=scapulae, table_top=back + 3.0,
    )
    anat.ribs = _ribs(levels, vert_z, cav_r, sternum_y=ys, sx=sx, sy=sy, sz=sz, rng=rng, thorax=thorax)
    return anat


class _Subtract(Shape):
    """``base - hole`` where ``hole`` is one (possibly large) union, evaluated once."""

    def __init__(self, base: Shape, hole: Shape, smooth: float) -> None:
        self.base, self.hole, self.smooth = base, hole, smooth
        self.box = base.box

    def block(self, xs: np.ndarray, ys: np.ndarray, zs: np.ndarray) -> np.ndarray:
        a = evaluate(self.base, xs, ys, zs)
        b = -evaluate(self.hole, xs, ys, zs)
        return smooth_max(self.smooth)(a, b)


def _with_chest_wall(bt: np.ndarray, cav_r: np.ndarray, n_back: float, wall: float) -> np.ndarray:
    """The body table ``bt``, widened where the hemithoraces come within ``wall`` mm of the skin.

    Body rows scale the reference torso by the habitus, the cavities by the
    thorax scale alone, so a small patient's lungs would break through the
    skin anterolaterally.  Over the cavities' z range (every 5 mm and at each
    table row) the torso cross-section is scaled about its centre just
    enough to hold both cavity outlines moved out by ``wall``.  A body that
    already holds them comes back unchanged (the same array).
    """
    up = bt[np.argsort(bt[:, 0])]
    cav = cav_r[np.argsort(cav_r[:, 0])]
    z0, z1 = cav[0, 0], cav[-1, 0]
    zs = np.union1d(np.append(np.arange(z0, z1, 5.0), z1), up[(up[:, 0] >= z0) & (up[:, 0] <= z1), 0])
    rows = np.column_stack([zs] + [np.interp(zs, up[:, 0], up[:, i]) for i in range(1, 5)])
    cx, cy, a, b = (np.interp(zs, cav[:, 0], cav[:, i])[:, None] for i in range(1, 5))
    theta = np.linspace(0.0, 2.0 * np.pi, 181)[None, :]
    cos, sin = np.cos(theta), np.sin(theta)
    scale = np.ones(zs.size)
    for side in (1.0, -1.0):
        nx, ny = cos / a, sin / b
        norm = np.hypot(nx, ny)
        px = side * (cx + a * cos + wall * nx / norm)
        py = cy + b * sin + wall * ny / norm
        qx = np.abs(px - rows[:, 1:2]) / rows[:, 3:4]
        qy = (py - rows[:, 2:3]) / rows[:, 4:5]
        n = np.where(qy > 0, n_back, 2.0)
        g = (qx**n + np.abs(qy) ** n) ** (1.0 / n)  # scaling the cross-section by s divides g by s
        scale = np.maximum(scale, g.max(axis=1))
    if np.all(scale <= 1.0):
        return bt
    rows[:, 3:5] *= scale[:, None]
    table = np.vstack([bt[(bt[:, 0] < zs[0]) | (bt[:, 0] > zs[-1])], rows])
    return table[np.argsort(-table[:, 0], kind="stable")]  # superior first, as ``bt``


def _plane_sdf(plane: ZSuperEllipse, X: np.ndarray, Y: np.ndarray, Z: np.ndarray) -> np.ndarray:
    """A 1.5 mm fat sheet between the outer and inner chest-wall muscles (not behind the spine)."""
    sheet = np.abs(plane.block(X.ravel(), Y.ravel(), Z.ravel())) - np.float32(0.75)
    behind_spine = (np.abs(X) < 55.0) & (Y > 20.0)
    return np.where(behind_spine, np.maximum(sheet, np.float32(5.0)), sheet)


def _smoothstep(x: np.ndarray, a: float, b: float) -> np.ndarray:
    """0 at ``a``, 1 at ``b``, smooth in between (``a > b`` allowed)."""
    t = np.clip((x - a) / (b - a), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _spine_block_sdf(X: np.ndarray, Y: np.ndarray, Z: np.ndarray, y_spine, sx: float, sy: float) -> np.ndarray:
    """Vertebral column plus costovertebral region the lungs wrap around."""
    yc = y_spine(Z).astype(np.float32) + np.float32(20 * sy)
    a, b = np.float32(29 * sx), np.float32(46 * sy)
    qx, qy = X / a, (Y - yc) / b
    g = np.sqrt(qx * qx + qy * qy)
    return (g - 1.0) * g / (np.sqrt((qx / a) ** 2 + (qy / b) ** 2) + 1e-6)


def _scapula_sdf(X: np.ndarray, Y: np.ndarray, Z: np.ndarray, sg: int, inner_t: np.ndarray, sx: float,
                 sz: float) -> np.ndarray:
    """A thin curved plate under the posterior chest-wall muscles (triangular in outline)."""
    zz = Z / sz
    a = np.interp(Z, inner_t[:, 0], inner_t[:, 3]).astype(np.float32) - 14
    b = np.interp(Z, inner_t[:, 0], inner_t[:, 4]).astype(np.float32) - 14
    cy = np.interp(Z, inner_t[:, 0], inner_t[:, 2]).astype(np.float32)
    qx, qy = X / a, (Y - cy) / b
    g = np.sqrt(qx * qx + qy * qy)
    shell = np.abs((g - 1.0) * g / (np.sqrt((qx / a) ** 2 + (qy / b) ** 2) + 1e-6)) - 2.2
    ax = sg * X / sx
    medial = 55 + 0.08 * np.maximum(0, 60 - zz)
    lateral = 110 + 0.35 * np.clip(zz + 20, 0, 140)
    side = np.maximum(medial - ax, ax - lateral)
    post = 10 - Y
    zr = np.maximum(-30 - zz, zz - 135)
    return np.maximum(np.maximum(shell, side), np.maximum(post, zr * sz))


def _ribs(levels, vert_z, cav_r, sternum_y, sx, sy, sz, rng, thorax) -> list[Rib]:  # type: ignore[no-untyped-def]
    """Twelve pairs of ribs following the outer surface of the hemithoraces."""
    ribs: list[Rib] = []
    t = cav_r
    for i in range(1, 13):
        zc, yv, a_v, _, _ = vert_z[f"T{i}"]
        drop = [20, 35, 48, 58, 66, 72, 76, 76, 72, 64, 40, 25][i - 1] * sz
        end_frac = [0.98, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.93, 0.86, 0.8, 0.62, 0.48][i - 1]
        radius = (3.2 if i < 3 else 3.7) * thorax
        for sg in (-1, 1):
            angs = np.linspace(0.0, 1.0, 40)
            pts = []
            for u in angs:
                z = zc + 4 * sz - drop * (u ** 1.4)
                cx = np.interp(z, t[:, 0], t[:, 1]) * -sg  # the table describes the right side
                cy = np.interp(z, t[:, 0], t[:, 2])
                a = np.interp(z, t[:, 0], t[:, 3])
                b = np.interp(z, t[:, 0], t[:, 4])
                # angle from posterior-medial (near the spine) round the side to anterior
                phi0, phi1 = 0.62 * np.pi, -0.52 * np.pi
                phi = phi0 + (phi1 - phi0) * u * end_frac
                off = radius + 2.5
                x = cx + sg * (a + off) * np.cos(phi)
                y = cy + (b + off) * np.sin(phi)
                pts.append((x, y, z))
            pts = np.array(pts)
            # posterior head: from the vertebral body to the start of the arc
            head = np.array([sg * (a_v + 3), yv + 4, zc + 2])
            neck = np.array([sg * (a_v + 16 * sx), yv + 22 * sy, zc + 4])
            path = np.vstack([head, neck, pts])
            keep = np.r_[True, np.linalg.norm(np.diff(path, axis=0), axis=1) > 1.0]
            path = path[keep]
            cart = None
            if i <= 7:
                z_att = [70, 45, 20, -5, -30, -60, -95][i - 1] * sz
                st = np.array([sg * 15 * sx, sternum_y(z_att / sz) + 3, z_att])
                mid = 0.5 * (path[-1] + st) + np.array([0, -3, 0])
                cart = np.vstack([path[-1], mid, st])
            ribs.append(Rib(path=path, radius=radius, cartilage=cart))
    return ribs


def lobe_of(anat: Anatomy, side: str, X: np.ndarray, Y: np.ndarray, Z: np.ndarray) -> np.ndarray:
    """Lobe number (1 RUL, 2 RML, 3 RLL, 4 LUL, 5 LLL) of points of one lung, from the fissures."""
    f = anat.fissures
    if side == "R":
        upper = f["R_oblique"].signed(X, Y, Z) > 0
        above_minor = f["R_horizontal"].signed(X, Y, Z) > 0
        return np.where(upper, np.where(above_minor, 1, 2), 3).astype(np.uint8)
    upper = f["L_oblique"].signed(X, Y, Z) > 0
    return np.where(upper, 4, 5).astype(np.uint8)

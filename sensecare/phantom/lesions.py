"""Lung lesions: where they go, what shape and density they have, and drawing them.

A lesion is planned in millimetres before any voxel exists (so the same
seed gives the same lesion at any resolution), then drawn on the fine grid.

Shapes are unions of "blobs": ellipsoids whose radius is modulated by a few
random spherical waves (smooth, lobulated), plus thin tapering tubes for
spiculation.  Each lesion is scaled so that its volume, after cutting at
the pleura where it must stay inside the lung, equals that of a sphere of
the requested diameter.

Densities follow the Fleischner glossary: solid nodules and masses 0-60 HU,
pure ground glass -750 to -450 HU (vessels stay visible through it),
part-solid nodules a ground-glass halo around a solid core, consolidation
soft tissue with air bronchograms.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from sensecare.errors import PhantomError
from sensecare.phantom.anatomy import Anatomy
from sensecare.phantom.fields import SmoothField
from sensecare.phantom.lungmodel import LungModel
from sensecare.phantom.raster import rasterize
from sensecare.phantom.shapes import evaluate, fraction
from sensecare.phantom.spec import LesionSpec
from sensecare.phantom.trees import Trees, Tubes

__all__ = [
    "Blob",
    "LesionPlan",
    "enriched_lesion_specs",
    "lesion_fraction",
    "lesion_sdf_points",
    "lesion_value",
    "plan_lesions",
    "random_lesion_specs",
    "touches_vessel",
]

#: Drawing phase of each lesion type (see ``generate``): 0 under vessels, 1 over vessels and under
#: airways (air bronchograms show), 2 over everything.
PHASE = {"ground_glass": 0, "part_solid": 0, "consolidation": 1, "solid": 2, "mass": 2}


@dataclass(frozen=True, eq=False)
class Blob:
    """Ellipsoid with a wavy radius, in units of the lesion radius."""

    offset: np.ndarray  # centre offset / radius
    axes: np.ndarray  # semi-axes / radius (product 1)
    rot: np.ndarray  # columns: axis directions
    waves: np.ndarray  # (K, 3) directions
    freq: np.ndarray
    phase: np.ndarray
    amp: np.ndarray

    def sdf(self, X: np.ndarray, Y: np.ndarray, Z: np.ndarray, centre: np.ndarray, radius: float) -> np.ndarray:
        c = centre + self.offset * radius
        dx, dy, dz = X - np.float32(c[0]), Y - np.float32(c[1]), Z - np.float32(c[2])
        q = [(dx * np.float32(self.rot[0, i]) + dy * np.float32(self.rot[1, i]) + dz * np.float32(self.rot[2, i]))
             / np.float32(self.axes[i] * radius) for i in range(3)]
        rho = np.sqrt(q[0] * q[0] + q[1] * q[1] + q[2] * q[2]) + np.float32(1e-6)
        wob = np.float32(1.0)
        for k in range(self.freq.size):
            w = self.waves[k]
            proj = (q[0] * np.float32(w[0]) + q[1] * np.float32(w[1]) + q[2] * np.float32(w[2])) / rho
            wob = wob + np.float32(self.amp[k]) * np.cos(np.float32(self.freq[k]) * proj + np.float32(self.phase[k]))
        return (rho - wob) * np.float32(radius * self.axes.min())


@dataclass(eq=False)
class LesionPlan:
    """A lesion fully decided in millimetres; ``scale`` is set by volume calibration."""

    id: int
    type: str
    diameter_mm: float
    centre: np.ndarray
    side: str
    location: str
    blobs: list[Blob]
    spicules: list[tuple[np.ndarray, np.ndarray, float, float]]  # start, end (relative / radius), r0, r1 mm
    core: Blob | None
    clip_to_lung: bool
    mean_hu: float
    core_hu: float
    texture_sd: float
    texture_seed: int
    fuzz_mm: float
    necrosis: float
    rough: float  # margin irregularity, fraction of the radius
    bronchograms: Tubes = field(default_factory=Tubes.empty)
    scale: float = 1.0
    _texture: SmoothField | None = None
    _margin: SmoothField | None = None

    def texture(self) -> SmoothField:
        """Fine (1.2 mm) heterogeneity over the lesion's box, from its own seed."""
        if self._texture is None:
            e = self.extent + 4.0
            self._texture = SmoothField(self.centre - e, self.centre + e, 1.2, np.random.default_rng(self.texture_seed))
        return self._texture

    def margin_field(self) -> SmoothField:
        """Irregularity of the margin, correlated over a fifth of the radius (fixed at planning)."""
        if self._margin is None:
            e = self.radius * 2.5 + 8.0
            corr = max(0.2 * self.radius, 1.0)
            self._margin = SmoothField(self.centre - e, self.centre + e, corr,
                                       np.random.default_rng(self.texture_seed + 1))
        return self._margin

    @property
    def radius(self) -> float:
        return self.diameter_mm / 2.0

    @property
    def extent(self) -> float:
        """Half-size (mm) of a box certainly holding the lesion."""
        blob = max(float(np.linalg.norm(b.offset) + b.axes.max() * (1 + np.abs(b.amp).sum())) for b in self.blobs)
        spic = max([float(np.linalg.norm(e)) for _, e, _, _ in self.spicules], default=0.0)
        return self.radius * self.scale * (max(blob, spic) + 3.0 * self.rough) + 2.0


def _blob(rng: np.random.Generator, wobble: float, offset: np.ndarray | None = None, elong: float = 0.12,
          size: float = 1.0, waves: int = 7) -> Blob:
    ax = np.exp(rng.normal(0.0, elong, 3))
    ax = ax / np.prod(ax) ** (1 / 3) * size
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    w = rng.normal(size=(waves, 3))
    w /= np.linalg.norm(w, axis=1, keepdims=True)
    amp = rng.normal(0.0, 1.0, waves)
    amp *= wobble / max(np.sqrt((amp**2).sum() / 2), 1e-6)
    return Blob(np.zeros(3) if offset is None else offset, ax, q, w, rng.uniform(2.0, 5.0, waves),
                rng.uniform(0, 2 * np.pi, waves), amp)


def _design(spec: LesionSpec, lid: int, rng: np.random.Generator) -> LesionPlan:
    kind = spec.type
    spicules: list = []
    core = None
    fuzz = 0.0
    necrosis = 0.0
    rough = 0.0
    core_hu = 30.0
    shape = spec.shape or str(rng.choice(["smooth", "lobulated", "spiculated"], p=[0.4, 0.35, 0.25]))
    if kind == "solid":
        blobs = [_blob(rng, {"smooth": 0.03, "lobulated": 0.11, "spiculated": 0.07}[shape])]
        mean, sd = rng.uniform(15, 45), 8.0
        if shape == "spiculated":
            spicules = _spicules(rng, int(rng.integers(8, 20)), spec.diameter_mm)
    elif kind == "mass":
        blobs = [_blob(rng, 0.12, elong=0.15)]
        for _ in range(int(rng.integers(1, 3))):
            blobs.append(_blob(rng, 0.1, offset=rng.normal(0, 0.35, 3), size=rng.uniform(0.5, 0.8)))
        mean, sd = rng.uniform(25, 45), 10.0
        if shape == "spiculated" or rng.random() < 0.3:
            spicules = _spicules(rng, int(rng.integers(10, 26)), spec.diameter_mm)
        if spec.diameter_mm > 45 and rng.random() < 0.5:
            necrosis = float(rng.uniform(15, 30))
        rough = 0.06
    elif kind == "ground_glass":
        blobs = [_blob(rng, 0.1, elong=0.2)]
        if spec.diameter_mm > 12 and rng.random() < 0.5:
            blobs.append(_blob(rng, 0.1, offset=rng.normal(0, 0.3, 3), size=rng.uniform(0.5, 0.8)))
        mean, sd, fuzz, rough = rng.uniform(-690, -570), 40.0, 0.8, 0.08
    elif kind == "part_solid":
        blobs = [_blob(rng, 0.1, elong=0.18)]
        mean, sd, fuzz = rng.uniform(-640, -540), 45.0, 0.6
        ratio = rng.uniform(0.35, 0.6)
        core = _blob(rng, 0.1, offset=rng.normal(0, 0.12, 3), size=ratio)
        core_hu = float(rng.uniform(15, 40))
    else:  # consolidation
        blobs = [_blob(rng, 0.12, elong=0.25)]
        for _ in range(int(rng.integers(2, 5))):
            blobs.append(_blob(rng, 0.12, offset=rng.normal(0, 0.45, 3), size=rng.uniform(0.45, 0.8)))
        mean, sd, fuzz, rough = rng.uniform(15, 40), 10.0, 1.2, 0.14
    return LesionPlan(
        id=lid, type=kind, diameter_mm=spec.diameter_mm, centre=np.zeros(3), side="R", location="random",
        blobs=blobs, spicules=spicules, core=core, clip_to_lung=kind != "mass", mean_hu=float(mean),
        core_hu=core_hu, texture_sd=sd, texture_seed=int(rng.integers(2**31)), fuzz_mm=fuzz, necrosis=necrosis,
        rough=rough,
    )


def _spicules(rng: np.random.Generator, n: int, diameter: float) -> list:
    out = []
    r_base = float(np.clip(0.05 * diameter, 0.35, 1.1))
    for _ in range(n):
        d = rng.normal(size=3)
        d /= np.linalg.norm(d)
        length = rng.uniform(0.35, 1.0) * min(1.0, 12.0 / diameter * 2.0)
        start = d * 0.8
        end = d * (1.0 + length) + rng.normal(0, 0.08, 3)
        out.append((start, end, r_base * rng.uniform(0.6, 1.0), 0.12))
    return out


def lesion_fraction(plan: LesionPlan, xs: np.ndarray, ys: np.ndarray, zs: np.ndarray, h: float,
                    core: bool = False) -> np.ndarray:
    """Fraction of each voxel of the grid ``(zs, ys, xs)`` inside the lesion (or its solid core)."""
    X = xs.astype(np.float32)[None, None, :]
    Y = ys.astype(np.float32)[None, :, None]
    Z = zs.astype(np.float32)[:, None, None]
    radius = plan.radius * plan.scale
    if core:
        if plan.core is None:
            return np.zeros((zs.size, ys.size, xs.size), np.float32)
        return fraction(np.broadcast_to(plan.core.sdf(X, Y, Z, plan.centre, radius), (zs.size, ys.size, xs.size)), h)
    sdf = None
    for blob in plan.blobs:
        d = blob.sdf(X, Y, Z, plan.centre, radius)
        sdf = d if sdf is None else _smin(sdf, d, 0.15 * radius)
    if plan.rough:
        sdf = sdf + np.float32(plan.rough * radius) * plan.margin_field().sample_grid(xs, ys, zs)
    f = fraction(np.broadcast_to(sdf, (zs.size, ys.size, xs.size)), h + plan.fuzz_mm)
    if plan.spicules:
        tubes = Tubes.of([(plan.centre + s * radius, plan.centre + e * radius, r0, r1) for s, e, r0, r1 in plan.spicules])
        idx, fs = rasterize(tubes, xs, ys, zs)
        flat = f.reshape(-1)
        np.maximum.at(flat, idx, fs.astype(np.float32))
    return f


def _smin(a: np.ndarray, b: np.ndarray, k: float) -> np.ndarray:
    h = np.clip(0.5 + 0.5 * (b - a) / k, 0.0, 1.0)
    return b + (a - b) * h - k * h * (1.0 - h)


def _calibrate(plan: LesionPlan, anat: Anatomy) -> None:
    """Scale the lesion so its volume (inside the lung where clipped) matches the requested diameter."""
    target = np.pi / 6.0 * plan.diameter_mm**3
    d = float(np.clip(plan.diameter_mm / 24.0, 0.25, 2.0))
    for _ in range(4):
        e = plan.extent
        axes = [np.arange(plan.centre[i] - e, plan.centre[i] + e + d / 2, d) for i in range(3)]
        f = lesion_fraction(plan, *axes, h=d)
        if plan.clip_to_lung:
            f = np.minimum(f, fraction(evaluate(anat.lungs[plan.side], *axes), d))
        else:
            f = np.minimum(f, fraction(evaluate(anat.fat_inner, *axes), d))
            f = np.minimum(f, fraction(evaluate(anat.cavity[plan.side].grown(2.0), *axes), d))
        vol = float(f.sum()) * d**3
        if vol <= 0:
            raise PhantomError(f"lesion {plan.id} ({plan.type}) has no volume inside the lung at {plan.centre.round(1)}")
        ratio = target / vol
        plan.scale *= float(np.clip(ratio, 0.3, 3.0)) ** (1.0 / 3.0)
        if abs(ratio - 1.0) < 0.01:
            break


# --- placement -------------------------------------------------------------------------


#: Lesion types, their share of a random phantom's lesions and their diameter range (mm).
LESION_TYPES = ("solid", "part_solid", "ground_glass", "consolidation", "mass")
TYPE_SHARES = (0.42, 0.15, 0.2, 0.1, 0.13)
DIAMETER_RANGES_MM = {"solid": (4, 28), "part_solid": (8, 30), "ground_glass": (5, 30),
                      "consolidation": (20, 55), "mass": (32, 70)}
#: The enriched mix for training second-stage classifiers: sub-solid nodules, the ones a
#: random phantom holds fewest of (about one per phantom) and detectors find hardest.
ENRICHED_COUNT = (4, 7)
ENRICHED_SHARES = (0.3, 0.25, 0.3, 0.05, 0.1)


def random_lesion_specs(rng: np.random.Generator, *, count: tuple[int, int] = (1, 4),
                        shares: tuple[float, ...] = TYPE_SHARES) -> tuple[LesionSpec, ...]:
    """A seeded mix of ``count`` (inclusive range) lesions of varied types, sizes and locations."""
    n = int(rng.integers(count[0], count[1] + 1))
    out = []
    for _ in range(n):
        kind = str(rng.choice(LESION_TYPES, p=list(shares)))
        lo, hi = DIAMETER_RANGES_MM[kind]
        diameter = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
        loc = str(rng.choice(["random", "juxtapleural", "juxtavascular", "central"], p=[0.4, 0.25, 0.25, 0.1]))
        if kind == "consolidation" and loc == "juxtavascular":
            loc = "juxtapleural"
        out.append(LesionSpec(kind, round(diameter, 1), loc))
    return tuple(out)


def enriched_lesion_specs(rng: np.random.Generator) -> tuple[LesionSpec, ...]:
    """More lesions per phantom, weighted towards sub-solid ones (training data, not evaluation)."""
    return random_lesion_specs(rng, count=ENRICHED_COUNT, shares=ENRICHED_SHARES)


def plan_lesions(specs: tuple[LesionSpec, ...], anat: Anatomy, model: LungModel, trees: Trees,
                 rng: np.random.Generator, z_range: tuple[float, float]) -> list[LesionPlan]:
    """Place, shape and scale every requested lesion inside the scanned ``z_range``; no overlaps."""
    plans: list[LesionPlan] = []
    for lid, spec in enumerate(specs, start=1):
        plan = _design(spec, lid, rng)
        centre, side, location = _place(spec, plan, anat, model, trees, plans, rng, z_range)
        plan.centre, plan.side, plan.location = centre, side, location
        if plan.type == "consolidation":
            plan.bronchograms = _bronchograms(plan, anat, rng)
        _calibrate(plan, anat)
        plans.append(plan)
    return plans


def _place(spec: LesionSpec, plan: LesionPlan, anat: Anatomy, model: LungModel, trees: Trees,
           placed: list[LesionPlan], rng: np.random.Generator,
           z_range: tuple[float, float]) -> tuple[np.ndarray, str, str]:
    r = spec.diameter_mm / 2.0
    if not isinstance(spec.location, str):
        c = np.asarray(spec.location, dtype=float)
        side = int(model.side_at(c)[0])
        if side == 0 or model.depth_at(c)[0] <= 0:
            raise PhantomError(f"lesion {plan.id}: explicit centre {tuple(c.round(1))} mm is not inside a lung")
        if not z_range[0] <= c[2] <= z_range[1]:
            raise PhantomError(f"lesion {plan.id}: explicit centre z={c[2]:g} mm is outside the scanned range "
                               f"{z_range[0]:g} to {z_range[1]:g} mm")
        return c, "R" if side == 1 else "L", "explicit"
    margin = min(r, 0.45 * (z_range[1] - z_range[0]))
    location = spec.location
    if spec.type == "mass" and location == "random":
        location = str(rng.choice(["juxtapleural", "central", "random"], p=[0.5, 0.3, 0.2]))
    sides = [spec.side] if spec.side else list(rng.permutation(["R", "L"]))
    for attempt in range(1000):
        side = sides[attempt % len(sides)]
        c = _candidate(location, side, r, spec.type, anat, model, trees, rng,
                       (z_range[0] + margin, z_range[1] - margin))
        if c is None:
            continue
        if not z_range[0] + margin <= c[2] <= z_range[1] - margin:
            continue
        if any(np.linalg.norm(c - p.centre) < r + p.radius + 6.0 for p in placed):
            continue
        if model.side_at(c)[0] != (1 if side == "R" else 2):
            continue
        return c, side, location
    raise PhantomError(
        f"lesion {plan.id}: no room for a {spec.diameter_mm:g} mm {spec.type} at location {location!r}"
        + (f" in the {spec.side} lung" if spec.side else "")
    )


def _candidate(location: str, side: str, r: float, kind: str, anat: Anatomy, model: LungModel, trees: Trees,
               rng: np.random.Generator, zr: tuple[float, float]) -> np.ndarray | None:
    label = 1 if side == "R" else 2
    in_z = ((model.zs >= zr[0] - 1.5) & (model.zs <= zr[1] + 1.5))[:, None, None]
    if location == "random":
        need = r + 3.0 if kind != "consolidation" else 0.6 * r
        pool = (model.side == label) & (model.depth >= need) & in_z
        if not pool.any():
            pool = (model.side == label) & (model.depth >= 0.7 * r) & in_z
        pts = model.centres(pool)
        return None if not len(pts) else pts[rng.integers(len(pts))] + rng.uniform(-1.5, 1.5, 3)
    if location == "central":
        hilum = anat.hila[side]
        pool = (model.side == label) & (model.depth >= 0.5 * r) & in_z
        pts = model.centres(pool)
        dist = np.linalg.norm(pts - hilum, axis=1)
        near = pts[dist < 35.0 + 1.2 * r]
        return None if not len(near) else near[rng.integers(len(near))]
    if location == "juxtapleural":
        return _juxtapleural(side, r, kind, anat, model, rng, in_z)
    if location == "juxtavascular":
        return _juxtavascular(side, r, anat, model, trees, rng, zr)
    raise PhantomError(f"unknown lesion location {location!r}")


def _juxtapleural(side: str, r: float, kind: str, anat: Anatomy, model: LungModel,
                  rng: np.random.Generator, in_z: np.ndarray) -> np.ndarray | None:
    """A centre whose lesion is cut flat by the costal pleura (touches the chest wall)."""
    label = 1 if side == "R" else 2
    rim = (model.side == label) & (model.depth <= model.step * 1.01) & in_z
    pts = model.centres(rim)
    if not len(pts):
        return None
    for _ in range(30):
        p = pts[rng.integers(len(pts))]
        cav = float(evaluate(anat.cavity[side], *(np.array([v]) for v in p))[0, 0, 0])
        dome = float(anat.diaphragm[side].sdf(*p))
        if cav < -5.0 or dome > -12.0:  # near the mediastinum or the diaphragm, not the chest wall
            continue
        n = _normal(anat, side, p)
        ts = np.arange(-8.0, 8.01, 0.25)
        line = p[None, :] + ts[:, None] * n[None, :]
        vals = np.array([_point_sdf(anat.lungs[side], q) for q in line])
        cross = np.flatnonzero((vals[:-1] < 0) & (vals[1:] >= 0))
        if not cross.size:
            continue
        surface = line[cross[0]]
        depth_in = (0.45 if kind == "mass" else 0.65) * r
        c = surface - n * max(depth_in, 0.9)
        if model.depth_at(c)[0] > 0:
            return c
    return None


def _juxtavascular(side: str, r: float, anat: Anatomy, model: LungModel, trees: Trees,
                   rng: np.random.Generator, zr: tuple[float, float]) -> np.ndarray | None:
    """A centre whose lesion overlaps the wall of a pulmonary vessel by a fifth of its radius."""
    vessels = Tubes.concat([trees.arteries, trees.veins])
    lobes = (1, 2, 3) if side == "R" else (4, 5)
    rv = 0.5 * (vessels.r0 + vessels.r1)
    zmid = 0.5 * (vessels.p0[:, 2] + vessels.p1[:, 2])
    ok = (np.isin(vessels.lobe, lobes) & (rv >= max(0.8, 0.08 * r)) & (rv <= max(2.5, 0.35 * r))
          & (zmid >= zr[0]) & (zmid <= zr[1]))
    idx = np.flatnonzero(ok)
    if not idx.size:
        return None
    for _ in range(30):
        i = idx[rng.integers(idx.size)]
        t = rng.uniform(0.2, 0.8)
        a = vessels.p0[i] + t * (vessels.p1[i] - vessels.p0[i])
        d = vessels.p1[i] - vessels.p0[i]
        d /= np.linalg.norm(d) + 1e-9
        e = np.cross(d, rng.normal(size=3))
        e /= np.linalg.norm(e) + 1e-9
        c = a + e * (rv[i] + 0.8 * r)
        if model.depth_at(c)[0] >= r + 2.0:
            return c
    return None


def _point_sdf(shape, p: np.ndarray) -> float:  # type: ignore[no-untyped-def]
    return float(evaluate(shape, np.array([p[0]]), np.array([p[1]]), np.array([p[2]]))[0, 0, 0])


def _normal(anat: Anatomy, side: str, p: np.ndarray) -> np.ndarray:
    """Outward normal of the lung surface near ``p`` (finite differences of the SDF)."""
    h = 1.0
    g = np.array([
        _point_sdf(anat.lungs[side], p + h * e) - _point_sdf(anat.lungs[side], p - h * e)
        for e in np.eye(3)
    ])
    return g / (np.linalg.norm(g) + 1e-9)


def _bronchograms(plan: LesionPlan, anat: Anatomy, rng: np.random.Generator) -> Tubes:
    """Air-filled bronchi branching through a consolidation, running away from the hilum."""
    r = plan.radius
    hilum = anat.hila[plan.side]
    d = plan.centre - hilum
    d /= np.linalg.norm(d) + 1e-9
    rows = []
    stack = [(plan.centre - d * 0.75 * r + rng.normal(0, 0.15 * r, 3), d, float(np.clip(0.06 * r, 0.9, 2.0)), 0)
             for _ in range(int(rng.integers(1, 3)))]
    while stack:
        p, direction, radius, depth = stack.pop()
        direction = direction + rng.normal(0, 0.2, 3)
        direction /= np.linalg.norm(direction)
        q = p + direction * rng.uniform(0.3, 0.5) * r
        rows.append((p, q, radius, radius * 0.9))
        if depth < 3 and radius > 0.7:
            for _ in range(2):
                stack.append((q, direction + rng.normal(0, 0.5, 3), radius * 0.8, depth + 1))
    return Tubes.of(rows, clip=True)


def lesion_value(plan: LesionPlan, xs: np.ndarray, ys: np.ndarray, zs: np.ndarray, core: bool = False) -> np.ndarray:
    """Noise-free HU of the lesion tissue on the grid (texture, GGO fading, necrosis)."""
    tex = plan.texture().sample_grid(xs, ys, zs)
    if core:
        return plan.core_hu + 8.0 * tex
    value = plan.mean_hu + plan.texture_sd * tex
    if plan.type in ("ground_glass", "part_solid") or plan.necrosis:
        X = xs.astype(np.float32)[None, None, :] - np.float32(plan.centre[0])
        Y = ys.astype(np.float32)[None, :, None] - np.float32(plan.centre[1])
        Z = zs.astype(np.float32)[:, None, None] - np.float32(plan.centre[2])
        rr = np.sqrt(X * X + Y * Y + Z * Z) / np.float32(plan.radius * plan.scale)
        if plan.necrosis:
            value = value - plan.necrosis * np.clip(1.6 - 2.5 * rr, 0.0, 1.0)
        else:  # ground glass is densest centrally and fades towards its margin
            value = value + 40.0 * (0.5 - np.clip(rr, 0.0, 1.0) ** 2)
    return value.astype(np.float32)


def lesion_sdf_points(plan: LesionPlan, pts: np.ndarray) -> np.ndarray:
    """Signed distance (mm, approximate) from points (N, 3) to the lesion surface, spicules ignored."""
    pts = np.atleast_2d(pts).astype(np.float32)
    X, Y, Z = pts[:, 0], pts[:, 1], pts[:, 2]
    radius = plan.radius * plan.scale
    sdf = None
    for blob in plan.blobs:
        d = blob.sdf(X, Y, Z, plan.centre, radius)
        sdf = d if sdf is None else _smin(sdf, d, 0.15 * radius)
    if plan.rough:
        sdf = sdf + np.float32(plan.rough * radius) * plan.margin_field().sample_points(pts.astype(float))
    return sdf


def touches_vessel(plan: LesionPlan, vessels: Tubes, min_radius: float = 0.75) -> bool:
    """True when a vessel at least ``2 * min_radius`` mm across touches or enters the lesion.

    Decided from the geometry, not from voxels, so the flag does not depend on the resolution.
    """
    e = plan.extent
    lo, hi = plan.centre - e, plan.centre + e
    rmax = np.maximum(vessels.r0, vessels.r1)
    near = ((np.minimum(vessels.p0, vessels.p1) - rmax[:, None] <= hi).all(axis=1)
            & (np.maximum(vessels.p0, vessels.p1) + rmax[:, None] >= lo).all(axis=1)
            & (rmax >= min_radius) & (vessels.lobe > 0))
    for i in np.flatnonzero(near):
        length = float(np.linalg.norm(vessels.p1[i] - vessels.p0[i]))
        t = np.linspace(0.0, 1.0, max(2, int(length / 0.5) + 1))[:, None]
        pts = vessels.p0[i] + t * (vessels.p1[i] - vessels.p0[i])
        r = vessels.r0[i] + t[:, 0] * (vessels.r1[i] - vessels.r0[i])
        ok = r >= min_radius
        if ok.any() and np.any(lesion_sdf_points(plan, pts[ok]) <= r[ok] + 0.25):
            return True
    return False

"""Bronchial, pulmonary arterial and pulmonary venous trees.

Each lobe is filled by a space-filling tree grown by recursive partition of
random points sampled in the lobe (a fast cousin of constrained constructive
optimisation): a branch heads for the centroid of the territory it serves,
then the territory is cut in two across its longest axis and each half gets
a daughter branch.  Radii follow Murray's law, ``r^3`` proportional to the
territory served, so vessels taper from about 9 mm lobar arteries to 1 mm
twigs that stop roughly a centimetre from the pleura, as on real CT.

Pulmonary arteries run beside the bronchi (bronchovascular bundles), so the
bronchial and arterial trees share one topology, the artery offset
sideways by the two radii; veins grow in their own tree from the left atrium
and lie between bundles.  These trees are what makes juxtavascular lesions
and vessel-like false positives realistic.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from sensecare.phantom.anatomy import Anatomy
from sensecare.phantom.lungmodel import LungModel

__all__ = ["Trees", "Tubes", "grow_trees"]

#: Attractor points per cm^3 of lobe (sets the number of terminal branches).
POINT_DENSITY = 6.0
#: Thinnest vessel radius grown (mm).
R_MIN_MM = 0.45
#: Thinnest bronchial lumen radius drawn (mm).
R_MIN_BRONCHUS_MM = 0.7


@dataclass(frozen=True, eq=False)
class Tubes:
    """Tapered tubes: ``p0 -> p1`` with radii ``r0 -> r1`` (mm).

    ``lobe`` is the lobe grown in (0 for mediastinal and hilar pieces) and
    ``clip`` says whether the tube is cut at the pleura.
    """

    p0: np.ndarray
    p1: np.ndarray
    r0: np.ndarray
    r1: np.ndarray
    lobe: np.ndarray
    clip: np.ndarray

    def __len__(self) -> int:
        return int(self.r0.size)

    @staticmethod
    def empty() -> Tubes:
        z = np.zeros((0, 3))
        return Tubes(z, z, np.zeros(0), np.zeros(0), np.zeros(0, np.uint8), np.zeros(0, bool))

    @staticmethod
    def concat(parts: list[Tubes]) -> Tubes:
        parts = [p for p in parts if len(p)] or [Tubes.empty()]
        return Tubes(*(np.concatenate([getattr(p, f) for p in parts]) for f in ("p0", "p1", "r0", "r1", "lobe", "clip")))

    @staticmethod
    def of(rows: list[tuple[np.ndarray, np.ndarray, float, float]], lobe: int = 0, clip: bool = False) -> Tubes:
        if not rows:
            return Tubes.empty()
        p0, p1, r0, r1 = zip(*rows)
        n = len(rows)
        return Tubes(np.array(p0, float), np.array(p1, float), np.array(r0, float), np.array(r1, float),
                     np.full(n, lobe, np.uint8), np.full(n, clip, bool))


@dataclass(frozen=True, eq=False)
class Trees:
    """All tubular structures of the lungs."""

    arteries: Tubes
    veins: Tubes
    airway_wall: Tubes  # outer surface of the bronchial wall
    airway_lumen: Tubes


class _Growth:
    """One partition tree: nodes, and segments between them."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng
        self.pos: list[np.ndarray] = []
        self.seg: list[tuple[int, int, float, float, int]] = []  # node a, node b, r0/rroot, r1/rroot, depth

    def node(self, p: np.ndarray) -> int:
        self.pos.append(np.asarray(p, dtype=float))
        return len(self.pos) - 1

    def grow(self, root: np.ndarray, points: np.ndarray) -> None:
        """Grow from ``root`` until territories are smaller than the leaf size."""
        n_total = len(points)
        leaf = max(2, int(np.ceil(n_total * (R_MIN_MM / 4.5) ** 3)))
        stack = [(self.node(root), np.arange(n_total), 0)]
        rng = self.rng
        while stack:
            a, idx, depth = stack.pop()
            p = self.pos[a]
            pts = points[idx]
            c = pts.mean(axis=0)
            rel = (idx.size / n_total) ** (1.0 / 3.0)
            if idx.size <= leaf or depth > 24:
                self._segment(a, c, rel, 0.75 * rel, depth, bend=0.08)
                continue
            dist = float(np.linalg.norm(c - p))
            lam = rng.uniform(0.3, 0.5) if depth else rng.uniform(0.35, 0.55)
            b = self._segment(a, p + lam * (c - p), rel, 0.95 * rel, depth, bend=0.05) if dist > 1.0 else a
            centred = pts - c
            cov = centred.T @ centred
            axis = np.linalg.eigh(cov)[1][:, -1]
            proj = centred @ axis
            k = int(np.clip(round(idx.size * rng.uniform(0.35, 0.65)), 1, idx.size - 1))
            order = np.argpartition(proj, k)
            stack.append((b, idx[order[:k]], depth + 1))
            stack.append((b, idx[order[k:]], depth + 1))

    def _segment(self, a: int, q: np.ndarray, r0: float, r1: float, depth: int, bend: float) -> int:
        p = self.pos[a]
        v = q - p
        length = math.sqrt(v[0] * v[0] + v[1] * v[1] + v[2] * v[2])
        if length < 0.5:
            return a
        if length > 6.0:  # a gentle curve: split at a displaced midpoint
            w = self.rng.normal(size=3)
            w -= v * ((w @ v) / (length * length))
            w *= bend * length * self.rng.uniform(-1, 1) / (math.sqrt(w @ w) + 1e-9)
            mid = self.node(0.5 * (p + q) + w)
            self.seg.append((a, mid, r0, 0.5 * (r0 + r1), depth))
            a, r0 = mid, 0.5 * (r0 + r1)
        b = self.node(q)
        self.seg.append((a, b, r0, r1, depth))
        return b


def _lobe_points(model: LungModel, lobe: int, rng: np.random.Generator) -> np.ndarray:
    inside = (model.lobe == lobe) & (model.depth >= 2.0)
    pts = model.centres(inside)
    n = round(float(POINT_DENSITY * inside.sum() * model.voxel_ml))
    pick = rng.choice(len(pts), size=min(n, len(pts)), replace=False)
    return pts[pick] + rng.uniform(-0.5, 0.5, size=(pick.size, 3)) * model.step


def _offsets(pos: np.ndarray, seg: np.ndarray, root_offset: np.ndarray, radius_of: np.ndarray,
             rng: np.random.Generator) -> np.ndarray:
    """Per-node artery offset from the bronchus: a lobe-wide direction, made perpendicular
    to the branch arriving at the node (one value per node keeps the artery continuous)."""
    u = root_offset / (np.linalg.norm(root_offset) + 1e-9)
    d = pos[seg[:, 1]] - pos[seg[:, 0]]
    d /= np.linalg.norm(d, axis=1, keepdims=True) + 1e-9
    ref = u[None, :] + rng.normal(0.0, 0.35, (len(seg), 3))
    o = ref - (ref * d).sum(axis=1, keepdims=True) * d
    bad = np.linalg.norm(o, axis=1) < 1e-3
    o[bad] = np.cross(d[bad], np.array([0.0, 0.0, 1.0]))
    o /= np.linalg.norm(o, axis=1, keepdims=True) + 1e-9
    off = np.zeros((len(pos), 3))
    off[0] = root_offset
    off[seg[:, 1]] = o * radius_of[seg[:, 1], None]
    return off


def grow_trees(anat: Anatomy, model: LungModel, rng: np.random.Generator) -> Trees:
    """Grow bronchi, arteries and veins for every lobe and connect them to the mediastinum."""
    arteries, veins, walls, lumens = [], [], [], []
    central = anat.airway_central
    for i, (a, b, ra, rb) in enumerate(central):
        wall = 2.3 if i < 2 else (1.8 if i < 4 else 1.4)
        lumens.append(Tubes.of([(a, b, ra, rb)]))
        walls.append(Tubes.of([(a, b, ra + wall, rb + wall)]))
    for lobe in range(1, 6):
        side = "R" if lobe <= 3 else "L"
        root, direction, rb_root = anat.lobar_roots[lobe]
        pts = _lobe_points(model, lobe, rng)
        if len(pts) < 8:
            continue
        volume_scale = (len(pts) / (POINT_DENSITY * 1300.0)) ** (1.0 / 3.0)
        ra_root = float(np.clip(4.6 * volume_scale, 2.8, 5.2))

        # bronchovascular tree
        g = _Growth(rng)
        g.grow(root, pts)
        pos = np.array(g.pos)
        seg = np.array([(s[0], s[1]) for s in g.seg], dtype=int)
        rel = np.array([(s[2], s[3]) for s in g.seg])
        node_rel = np.zeros(len(pos))
        node_rel[seg[:, 1]] = rel[:, 1]
        node_rel[0] = 1.0
        rb = rb_root * node_rel
        ra = ra_root * node_rel
        gap = rb * 1.3 + 0.25 + ra + 0.4
        d0 = direction / np.linalg.norm(direction)
        hint = np.cross(d0, np.array([0.0, 0.0, 1.0])) + rng.normal(0.0, 0.3, 3)
        root_off = hint - (hint @ d0) * d0
        root_off *= gap[0] / (np.linalg.norm(root_off) + 1e-9)
        off = _offsets(pos, seg, root_off, gap, rng)
        a_idx, b_idx = seg[:, 0], seg[:, 1]
        r0b, r1b = rb_root * rel[:, 0], rb_root * rel[:, 1]
        keep = r1b >= R_MIN_BRONCHUS_MM
        lumen = Tubes(pos[a_idx][keep], pos[b_idx][keep], r0b[keep], r1b[keep],
                      np.full(keep.sum(), lobe, np.uint8), np.ones(keep.sum(), bool))
        wall_t = lambda r: r + 0.3 * r + 0.25
        walls.append(Tubes(lumen.p0, lumen.p1, wall_t(lumen.r0), wall_t(lumen.r1), lumen.lobe, lumen.clip))
        lumens.append(lumen)
        arteries.append(Tubes(pos[a_idx] + off[a_idx], pos[b_idx] + off[b_idx], ra_root * rel[:, 0],
                              ra_root * rel[:, 1], np.full(len(seg), lobe, np.uint8), np.ones(len(seg), bool)))
        hilum = anat.hila[side]
        arteries.append(Tubes.of([(hilum, root + off[0], 8.0, ra_root)]))

        # venous tree from the left atrium
        vpts = _lobe_points(model, lobe, rng)
        ostium = anat.vein_ostia[lobe]
        near = vpts[np.argmin(np.linalg.norm(vpts - ostium, axis=1))]
        vroot = near + 0.25 * (vpts.mean(axis=0) - near)
        gv = _Growth(rng)
        gv.grow(vroot, vpts)
        vpos = np.array(gv.pos)
        vseg = np.array([(s[0], s[1]) for s in gv.seg], dtype=int)
        vrel = np.array([(s[2], s[3]) for s in gv.seg])
        rv_root = ra_root * 1.05
        veins.append(Tubes(vpos[vseg[:, 0]], vpos[vseg[:, 1]], rv_root * vrel[:, 0], rv_root * vrel[:, 1],
                           np.full(len(vseg), lobe, np.uint8), np.ones(len(vseg), bool)))
        veins.append(Tubes.of([(ostium, vroot, 6.0, rv_root)]))
    return Trees(Tubes.concat(arteries), Tubes.concat(veins), Tubes.concat(walls), Tubes.concat(lumens))

"""Build a phantom from a spec: plan in millimetres, draw on a fine grid, scan, measure.

Steps and their random streams (each seeded from ``(seed, stream)``, so a
new lesion does not move a vessel and the noise does not depend on the
anatomy):

1. anatomy (size, sex, jitter) and a coarse lung model;
2. airway and vessel trees;
3. lesion and diffuse-opacity plans;
4. the base anatomy painted slab by slab on the fine z grid, then ribs,
   trees and lesions composited in an order that keeps vessels visible
   through ground glass and air in bronchi through consolidation;
5. slice-profile averaging to the output slices, kernel blur and noise;
6. masks sampled at slice centres and truth measured from them.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import numpy as np

from sensecare.phantom.anatomy import Anatomy, build_anatomy, lobe_of
from sensecare.phantom.diffuse import Diffuse, plan_diffuse
from sensecare.phantom.fields import SmoothField
from sensecare.phantom.grid import ScanGrid, make_grid
from sensecare.phantom.lesions import (
    PHASE,
    LesionPlan,
    lesion_fraction,
    lesion_value,
    plan_lesions,
    random_lesion_specs,
    touches_vessel,
)
from sensecare.phantom.lungmodel import LungModel, build_lung_model
from sensecare.phantom.raster import accumulate, rasterize
from sensecare.phantom.render import Textures, render_block
from sensecare.phantom.scanner import KERNEL_PARAMS, apply_scanner, noise_sd
from sensecare.phantom.shapes import evaluate, fraction
from sensecare.phantom.spec import PhantomSpec
from sensecare.phantom.tissues import HU, hu_table
from sensecare.phantom.trees import Trees, Tubes, grow_trees
from sensecare.phantom.truth import Phantom, measure_lesions, opacity_percentages

__all__ = ["Progress", "generate_phantom"]

#: ``progress(stage, fraction_done)`` with ``fraction_done`` in [0, 1].
Progress = Callable[[str, float], None]

FOV_MARGIN_MM = 12.0
_STREAMS = ("anatomy", "trees", "lesions", "diffuse", "textures")


class _Reporter:
    def __init__(self, progress: Progress | None) -> None:
        self.progress = progress

    def __call__(self, stage: str, done: float) -> None:
        if self.progress is not None:
            self.progress(stage, float(min(max(done, 0.0), 1.0)))


def generate_phantom(spec: PhantomSpec, progress: Progress | None = None) -> Phantom:
    """Generate the phantom described by ``spec`` (deterministic in ``spec``).

    Parameters
    ----------
    spec : PhantomSpec
    progress : callable, optional
        Called as ``progress(stage, fraction_done)``.

    Raises
    ------
    sensecare.errors.PhantomError
        A lesion cannot be placed as asked (no room, explicit centre outside the lungs).
    """
    report = _Reporter(progress)
    report("planning", 0.0)
    rng = {name: np.random.default_rng([spec.seed, i]) for i, name in enumerate(_STREAMS)}
    anat = build_anatomy(spec.size, spec.sex, rng["anatomy"])
    model = build_lung_model(anat)
    grid = _scan_grid(spec, anat, model)
    tissue = hu_table(spec.contrast)
    lo = (-anat.body_half_width - 40, -200.0, float(grid.fine_z[0]) - 10)
    hi = (anat.body_half_width + 40, 200.0, float(grid.fine_z[-1]) + 10)
    tex = Textures(fine=SmoothField(lo, hi, 2.5, rng["textures"]), coarse=SmoothField(lo, hi, 12.0, rng["textures"]))
    trees = grow_trees(anat, model, rng["trees"])
    report("planning", 0.5)
    specs = random_lesion_specs(rng["lesions"]) if spec.lesions == "random" else spec.lesions
    z_range = (float(grid.z[0]), float(grid.z[-1]))
    plans = plan_lesions(specs, anat, model, trees, rng["lesions"], z_range)  # type: ignore[arg-type]
    diffuse = plan_diffuse(float(spec.diffuse), model, rng["diffuse"])
    if diffuse is not None:
        tex.opacity = diffuse.apply
    report("planning", 1.0)

    canvas = _Canvas(grid)
    _paint_anatomy(canvas, anat, tissue, tex, spec.table, lambda f: report("anatomy", f))
    report("structures", 0.0)
    _paint_structures(canvas, anat, tissue, trees, plans)
    report("structures", 1.0)
    report("scanner", 0.0)
    clean = canvas.average()
    masks = canvas.masks
    del canvas
    sigma = noise_sd(spec.kernel, spec.size, grid.thickness, float(spec.dose))
    done = [0]

    def scanned(n: int) -> None:
        done[0] += n
        report("scanner", done[0] / grid.z.size)

    hu, hu_clean = apply_scanner(clean, grid.pixel, spec.kernel, sigma, grid.thickness, grid.spacing,
                                 spec.seed, progress=scanned)
    del clean
    report("truth", 0.0)
    lungs = masks["lungs"]
    opacity, high = _opacity_masks(masks, diffuse, grid, plans)
    po, pho = opacity_percentages(lungs, opacity, masks["lesions"], high)
    vox_ml = grid.pixel * float(grid.y[1] - grid.y[0]) * grid.spacing / 1000.0
    ph = Phantom(
        spec=spec, hu=hu, hu_clean=hu_clean, spacing=grid.spacing_xyz, origin=grid.origin, lungs=lungs,
        lobes=masks["lobes"], airways=masks["airways"], vessels=masks["vessels"], lesions=masks["lesions"],
        opacity=opacity, high_opacity=high, truth=[],
        lung_volume_ml={
            "right": round(float(np.count_nonzero(lungs == 1)) * vox_ml, 2),
            "left": round(float(np.count_nonzero(lungs == 2)) * vox_ml, 2),
            "total": round(float(np.count_nonzero(lungs)) * vox_ml, 2),
        },
        percent_opacity=po, percent_high_opacity=pho, kernel_name=KERNEL_PARAMS[spec.kernel].name,
        noise_sd_hu=round(sigma, 2),
        extra={"contrast": spec.contrast, "lesion_specs": [dataclasses.asdict(s) for s in specs]},
    )
    vessels = Tubes.concat([trees.arteries, trees.veins])
    ph.truth = measure_lesions(ph, plans, {p.id: touches_vessel(p, vessels) for p in plans})
    report("truth", 1.0)
    return ph


# --- geometry ------------------------------------------------------------------------------


def _scan_grid(spec: PhantomSpec, anat: Anatomy, model: LungModel) -> ScanGrid:
    """Field of view fitted to the body; z range covering the lungs (or centred on them)."""
    if spec.pixel_spacing_mm is not None:
        pixel = float(spec.pixel_spacing_mm)
    else:
        fov = max(300.0, math.ceil((2.0 * anat.body_half_width + 2 * FOV_MARGIN_MM) / 10.0) * 10.0)
        pixel = fov / spec.matrix
    zl = model.zs[np.flatnonzero(model.side.any(axis=(1, 2)))]
    z_lo, z_hi = float(zl.min()) - 8.0, float(zl.max()) + 14.0
    s = float(spec.slice_spacing_mm)  # type: ignore[arg-type]
    extent = spec.extent_mm
    if extent is None:
        n = math.ceil((z_hi - z_lo) / s) + 1
    else:
        n = int(spec.n_slices) if spec.n_slices is not None else round(extent / s) + 1
    centre = 0.5 * (z_lo + z_hi)
    z_first = round(centre - 0.5 * (n - 1) * s, 3)
    return make_grid(spec.matrix, pixel, anat.y_centre, z_first, n, float(spec.slice_thickness_mm), s)


# --- drawing ------------------------------------------------------------------------------


class _Canvas:
    """The fine-grid volume being painted, plus what the masks need from it."""

    def __init__(self, grid: ScanGrid) -> None:
        self.grid = grid
        nf, ny, nx = grid.fine_shape
        self.hu = np.empty((nf, ny, nx), np.float32)
        self.lung = np.zeros((nf, ny, nx), np.uint8)  # fraction x 255, both lungs
        self.scratch = np.zeros((nf, ny, nx), np.uint8)
        self.h = max(grid.pixel, 0.5 * (grid.pixel + grid.fine_dz))
        shape = grid.shape
        self.centres = grid.center_fine_index
        self.masks: dict[str, np.ndarray] = {
            "lungs": np.zeros(shape, np.uint8), "lobes": np.zeros(shape, np.uint8),
            "airways": np.zeros(shape, bool), "vessels": np.zeros(shape, bool),
            "lesions": np.zeros(shape, np.int16), "lesion_core": np.zeros(shape, bool),
        }

    def flush(self, value: float | np.ndarray, keep: str | None = None, clear: bool = True) -> None:
        """Composite the scratch fractions into HU with ``value``; optionally record a mask."""
        flat = self.scratch.reshape(-1)
        idx = np.flatnonzero(flat)
        if not idx.size:
            return
        f = flat[idx].astype(np.float32) * np.float32(1 / 255)
        hv = self.hu.reshape(-1)
        hv[idx] += (np.float32(value) - hv[idx]) * f
        if keep is not None:
            self.masks[keep] |= self.scratch[self.centres] >= 128
        if clear:
            flat[idx] = 0

    def tubes(self, tubes: Tubes, where: str = "all") -> None:
        """Accumulate tube fractions into the scratch, cut by the lungs where the tubes say so."""
        g = self.grid
        for clip in (False, True):
            sel = tubes.clip == clip
            if not sel.any():
                continue
            part = Tubes(*(getattr(tubes, f)[sel] for f in ("p0", "p1", "r0", "r1", "lobe", "clip")))
            idx, f = rasterize(part, g.x, g.y, g.fine_z)
            if clip:
                f = f * (self.lung.reshape(-1)[idx].astype(np.float32) * np.float32(1 / 255))
            elif where == "outside_lung":
                f = f * (1.0 - self.lung.reshape(-1)[idx].astype(np.float32) * np.float32(1 / 255))
            accumulate(self.scratch, idx, f)

    def average(self) -> np.ndarray:
        """Slice-profile weighted average of fine slices onto the output slices (float32)."""
        g = self.grid
        n = g.z.size
        out = np.zeros(g.shape, np.float32)
        for j, w in enumerate(g.ssp):
            out += np.float32(w) * self.hu[j : j + (n - 1) * g.m + 1 : g.m]
        return out


def _paint_anatomy(canvas: _Canvas, anat: Anatomy, tissue: HU, tex: Textures, table: bool,
                   report: Callable[[float], None]) -> None:
    g = canvas.grid
    nf, ny, nx = g.fine_shape
    step = max(1, int(3_000_000 // (ny * nx)))
    centre_of = {int(f): k for k, f in enumerate(canvas.centres)}
    for a in range(0, nf, step):
        b = min(nf, a + step)
        zs = g.fine_z[a:b]
        hu, lung = render_block(anat, tissue, tex, g.x, g.y, zs, canvas.h, table)
        canvas.hu[a:b] = hu
        np.rint(np.maximum(lung["R"], lung["L"]) * 255.0, out=hu)
        canvas.lung[a:b] = hu
        for i in range(a, b):
            k = centre_of.get(i)
            if k is None:
                continue
            right, left = lung["R"][i - a] >= 0.5, lung["L"][i - a] >= 0.5
            lungs = canvas.masks["lungs"][k]
            lungs[right] = 1
            lungs[left & ~right] = 2
            z = float(g.fine_z[i])
            for value, side in ((1, "R"), (2, "L")):
                sel = lungs == value
                if sel.any():
                    jj, ii = np.nonzero(sel)
                    canvas.masks["lobes"][k][sel] = lobe_of(anat, side, g.x[ii], g.y[jj], np.full(ii.size, z))
        report(b / nf)


def _paint_structures(canvas: _Canvas, anat: Anatomy, tissue: HU, trees: Trees, plans: list[LesionPlan]) -> None:
    """Ribs, vessels, airways and lesions, in the order that gives the right overlaps."""
    _ribs(canvas, anat, tissue)
    for plan in plans:
        if PHASE[plan.type] == 0:
            _lesion(canvas, anat, plan, core=False)
    canvas.tubes(trees.arteries)
    canvas.flush(tissue.blood_pulmonary, keep="vessels")
    canvas.tubes(trees.veins)
    canvas.flush(tissue.blood_systemic, keep="vessels")
    for plan in plans:
        if PHASE[plan.type] == 1:
            _lesion(canvas, anat, plan, core=False)
    canvas.tubes(trees.airway_wall)
    canvas.flush(tissue.airway_wall)
    canvas.tubes(trees.airway_lumen)
    for plan in plans:
        if len(plan.bronchograms):
            canvas.tubes(plan.bronchograms)
    canvas.flush(tissue.airway_lumen, keep="airways")
    for plan in plans:
        if PHASE[plan.type] == 2:
            _lesion(canvas, anat, plan, core=False)
        if plan.core is not None:
            _lesion(canvas, anat, plan, core=True)


def _ribs(canvas: _Canvas, anat: Anatomy, tissue: HU) -> None:
    cortex, marrow, cartilage = [], [], []
    for rib in anat.ribs:
        p = rib.path
        for dz in (-0.35, 0.35):  # two stacked tubes: a rib is taller than it is thick
            shift = np.array([0.0, 0.0, dz * rib.radius * 1.6])
            cortex.append(Tubes.of([(p[i] + shift, p[i + 1] + shift, rib.radius, rib.radius) for i in range(len(p) - 1)]))
            marrow.append(Tubes.of([(p[i] + shift, p[i + 1] + shift, rib.radius - 1.1, rib.radius - 1.1)
                                    for i in range(len(p) - 1)]))
        if rib.cartilage is not None:
            c = rib.cartilage
            cartilage.append(Tubes.of([(c[i], c[i + 1], rib.radius * 0.95, rib.radius * 0.9) for i in range(len(c) - 1)]))
    canvas.tubes(Tubes.concat(cartilage), where="outside_lung")
    canvas.flush(tissue.cartilage)
    canvas.tubes(Tubes.concat(cortex), where="outside_lung")
    canvas.flush(tissue.cortical_bone * 0.8)
    canvas.tubes(Tubes.concat(marrow), where="outside_lung")
    canvas.flush(tissue.rib_marrow)


def _lesion(canvas: _Canvas, anat: Anatomy, plan: LesionPlan, core: bool) -> None:
    g = canvas.grid
    e = plan.extent + 2 * canvas.h
    win = []
    for coords, c in ((g.fine_z, plan.centre[2]), (g.y, plan.centre[1]), (g.x, plan.centre[0])):
        a = int(np.searchsorted(coords, c - e))
        b = int(np.searchsorted(coords, c + e, side="right"))
        if b <= a:
            return
        win.append(slice(a, b))
    wz, wy, wx = win
    xs, ys, zs = g.x[wx], g.y[wy], g.fine_z[wz]
    f = lesion_fraction(plan, xs, ys, zs, canvas.h, core=core)
    if plan.clip_to_lung:
        f = np.minimum(f, canvas.lung[wz, wy, wx].astype(np.float32) * np.float32(1 / 255))
    else:  # a mass may invade the pleura and mediastinal fat, not the ribs or beyond the muscles
        f = np.minimum(f, fraction(evaluate(anat.fat_inner, xs, ys, zs), canvas.h))
        f = np.minimum(f, fraction(evaluate(anat.cavity[plan.side].grown(2.0), xs, ys, zs), canvas.h))
    if core:
        outer = lesion_fraction(plan, xs, ys, zs, canvas.h)
        f = np.minimum(f, outer)
    view = canvas.hu[wz, wy, wx]
    view += (lesion_value(plan, xs, ys, zs, core=core) - view) * f
    # mask at the output slice centres inside this window
    centres = canvas.centres
    ks = np.flatnonzero((centres >= wz.start) & (centres < wz.stop))
    if not ks.size:
        return
    fc = f[centres[ks] - wz.start]
    if core:
        canvas.masks["lesion_core"][ks, wy, wx] |= fc >= 0.5
        return
    labels = canvas.masks["lesions"][ks, wy, wx]
    hit = (fc >= 0.5) & (labels == 0)
    if not hit.any() and fc.max() > 0:
        hit = (fc == fc.max()) & (labels == 0)  # a lesion smaller than a voxel keeps its best voxel
    labels[hit] = plan.id
    canvas.masks["lesions"][ks, wy, wx] = labels
    if PHASE[plan.type] == 2:  # solid tissue hides the bronchi it engulfs
        canvas.masks["airways"][ks, wy, wx] &= ~hit


def _opacity_masks(masks: dict[str, np.ndarray], diffuse: Diffuse | None, grid: ScanGrid,
                   plans: list[LesionPlan]) -> tuple[np.ndarray, np.ndarray]:
    """Diffuse opacity classes at slice centres and the high-opacity (>= -200 HU) mask."""
    lungs = masks["lungs"]
    opacity = np.zeros(lungs.shape, np.uint8)
    if diffuse is not None:
        for k in range(lungs.shape[0]):
            sel = lungs[k] > 0
            if not sel.any():
                continue
            jj = np.flatnonzero(sel.any(axis=1))
            ii = np.flatnonzero(sel.any(axis=0))
            sy, sx = slice(jj[0], jj[-1] + 1), slice(ii[0], ii[-1] + 1)
            base = np.zeros((1, sy.stop - sy.start, sx.stop - sx.start), np.float32)
            _, cls = diffuse.apply(grid.x[sx], grid.y[sy], grid.z[k : k + 1], base)
            opacity[k, sy, sx] = np.where(sel[sy, sx], cls[0], 0)
    lesions = masks["lesions"]
    dense_ids = [p.id for p in plans if PHASE[p.type] >= 1]
    high = (opacity == 2) | np.isin(lesions, dense_ids) | (masks["lesion_core"] & (lesions > 0))
    high &= lungs > 0
    return opacity, high

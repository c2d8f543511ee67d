"""Regional distribution of density and lesions: zones, lungs, ventral/dorsal halves, subpleural band vs core.

SSc-ILD classically predominates in the lung bases, dorsally and in the subpleural lung. This module splits the lung
mask into regions and measures density (via :func:`sscild.density.metrics_of`) and, when a lesion map is given,
ground glass / reticulation / involvement in each, so that pattern becomes numbers and one figure.

Regions (every one is a subset of the lung mask, both lungs unless named):

==============  ====================================================================================================
region          definition
==============  ====================================================================================================
``whole``       all lung voxels
``right``       lung label 1;  ``left``: lung label 2
``upper`` ...   ``upper`` / ``middle`` / ``lower``: thirds of the lung height (:func:`sscild.domain.zone_bounds`)
``ventral``     per lung and per axial slice, the anterior half of that lung's anteroposterior (y) extent in that
                slice; ``dorsal`` the posterior half (the middle row of an odd extent counts as dorsal). The split
                follows each lung's own outline slice by slice, so the posterior costophrenic recesses of the base
                stay dorsal.
``subpleural``  lung voxels whose 3D Euclidean distance (anisotropic voxel spacing, in mm) to the nearest non-lung
                voxel is <= 10 mm (:data:`SUBPLEURAL_MM`); ``core`` the rest. The pleura here is the lung mask's
                boundary (costal, diaphragmatic and mediastinal pleura); where the lung touches the first or last
                slice of the scan the boundary is unknown and not counted as pleura.
==============  ====================================================================================================

Cells ``<zone>_<ventral|dorsal>_<subpleural|core>`` (12) cross the three splits.

Per region the keys of :func:`sscild.density.metrics_of` (``volume_ml``, ``MLA_HU``, ``HAA_pct``, ...) and, with
lesions, ``GG_pct``, ``RET_pct``, ``involvement_pct`` (% of the region's lung volume), ``lesion_ml`` and
``lesion_share_pct`` (% of all lesion volume that lies in the region).

Examples
--------
>>> from sscild.phantom import make_phantom
>>> from sscild.anatomy import Lungs
>>> scan, truth = make_phantom(1, extent=20)
>>> m = regional_metrics(scan, Lungs(truth.lungs, truth.airways), truth.lesions)
>>> sorted(m.regions)[:4]
['core', 'dorsal', 'left', 'lower']
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from .anatomy import Lungs
from .density import hu_histograms, metrics_of_histogram
from .domain import ZONES, LesionClass, LungLabel, zone_bounds
from .scan import CTScan
from .figures import save_png

#: Width of the subpleural band (mm, 3D distance from the lung boundary).
SUBPLEURAL_MM = 10.0
#: Regions reported, in order.
REGIONS: tuple[str, ...] = ("whole", "right", "left", *ZONES, "ventral", "dorsal", "subpleural", "core")
#: The three contrasts of the classic SSc pattern: (name, predominant region, other region).
CONTRASTS: tuple[tuple[str, str, str], ...] = (("basal", "lower", "upper"), ("dorsal", "dorsal", "ventral"),
                                              ("subpleural", "subpleural", "core"))
#: A contrast counts as predominant when the region's measure exceeds the other's by more than this (% points).
PREDOMINANCE_PP = 1.0


@dataclass(frozen=True)
class RegionMap:
    """The region partition of one scan, cropped to the lung's bounding box ``box`` (slices into the scan grid).

    ``zone`` int8: 0 outside lung, 1 upper, 2 middle, 3 lower; ``dorsal`` and ``subpleural`` bool (False outside).
    """

    box: tuple[slice, slice, slice]
    lung: np.ndarray
    side: np.ndarray
    zone: np.ndarray
    dorsal: np.ndarray
    subpleural: np.ndarray

    def masks(self) -> dict[str, np.ndarray]:
        """Boolean mask (cropped) of every region in :data:`REGIONS`."""
        m = {"whole": self.lung, "right": self.side == LungLabel.RIGHT, "left": self.side == LungLabel.LEFT}
        m.update({z: self.zone == i for i, z in enumerate(ZONES, start=1)})
        m.update({"ventral": self.lung & ~self.dorsal, "dorsal": self.dorsal,
                  "subpleural": self.subpleural, "core": self.lung & ~self.subpleural})
        return m

    def cells(self) -> dict[str, np.ndarray]:
        """Boolean masks of the 12 cells zone x ventral/dorsal x subpleural/core."""
        out = {}
        for i, z in enumerate(ZONES, start=1):
            for vd, d in (("ventral", False), ("dorsal", True)):
                for sp, s in (("subpleural", True), ("core", False)):
                    out[f"{z}_{vd}_{sp}"] = (self.zone == i) & (self.dorsal == d) & (self.subpleural == s)
        return out


@dataclass(frozen=True)
class RegionalMetrics:
    """Metrics per region and per cell, the pattern contrasts, and the definitions used."""

    regions: dict[str, dict[str, float | None]]
    cells: dict[str, dict[str, float | None]]
    contrasts: dict[str, dict[str, Any]]
    measure: str
    pattern: list[str]

    def row(self) -> dict[str, Any]:
        """Flat cohort-table columns: ``regions_<region>_<key>`` for the zones and the two splits (involvement,
        GG, RET, HAA, MLA where measured), ``regions_<contrast>_pp`` and ``regions_pattern``."""
        keys = ("involvement_pct", "GG_pct", "RET_pct", "HAA_pct", "MLA_HU")
        out: dict[str, Any] = {f"regions_{r}_{k}": self.regions[r][k] for r in REGIONS[3:] for k in keys
                               if k in self.regions[r]}
        out.update({f"regions_{c}_pp": v["difference_pp"] for c, v in self.contrasts.items()})
        out["regions_pattern"] = "+".join(self.pattern) or "none"
        return out

    def table_rows(self) -> list[list[Any]]:
        """Report table rows: region, volume mL, MLA, HAA %, GG %, RET %, involvement %, share of all lesion %."""
        keys = ("volume_ml", "MLA_HU", "HAA_pct", "GG_pct", "RET_pct", "involvement_pct", "lesion_share_pct")
        return [[r] + [self.regions[r].get(k) for k in keys] for r in REGIONS]

    def to_dict(self) -> dict[str, Any]:
        return {"subpleural_mm": SUBPLEURAL_MM,
                "definitions": {"zones": "thirds of the lung height",
                                "ventral_dorsal": "each lung split per axial slice at the midpoint of its own "
                                                  "anteroposterior extent",
                                "subpleural": f"3D distance to the lung boundary <= {SUBPLEURAL_MM:g} mm "
                                              "(anisotropic spacing); core: the rest",
                                "predominance": f"{self.measure} of the region exceeds the other's by more than "
                                                f"{PREDOMINANCE_PP:g} percentage point(s)"},
                "regions": self.regions, "cells": self.cells, "contrasts": self.contrasts,
                "measure": self.measure, "pattern": self.pattern}


def _bbox(mask: np.ndarray) -> tuple[slice, slice, slice]:
    idx = [np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != ax))) for ax in range(3)]
    return tuple(slice(int(i[0]), int(i[-1]) + 1) for i in idx)  # type: ignore[return-value]


def _dorsal_half(side: np.ndarray) -> np.ndarray:
    """Per lung and slice: voxels in the posterior half of that lung's y extent (LPS: y grows posteriorly)."""
    dorsal = np.zeros(side.shape, bool)
    y = np.arange(side.shape[1])[None, :, None]
    for lab in (LungLabel.RIGHT, LungLabel.LEFT):
        m = side == lab
        rows = m.any(axis=2)                                  # (z, y)
        has = rows.any(axis=1)
        first = np.where(has, rows.argmax(axis=1), 0)
        last = np.where(has, rows.shape[1] - 1 - rows[:, ::-1].argmax(axis=1), 0)
        dorsal |= m & (2 * y >= (first + last)[:, None, None])
    return dorsal


def region_map(scan: CTScan, lungs: Lungs, subpleural_mm: float = SUBPLEURAL_MM) -> RegionMap:
    """Split the lungs into zones, ventral/dorsal halves and the subpleural band (see the module docstring), the
    band ``subpleural_mm`` wide.

    Raises ``NoLungsError`` when the lung mask is empty.
    """
    from .errors import NoLungsError

    full = lungs.labels
    if not np.any(full):
        raise NoLungsError("no lungs in the lung mask: regional metrics need segmented lungs "
                           "(is this a chest CT?)")
    box = _bbox(full > 0)
    side = np.asarray(full[box])
    lung = side > 0
    zone = np.zeros(side.shape, np.int8)
    for i, (a, b) in enumerate((zone_bounds(full > 0)[z] for z in ZONES), start=1):
        zone[max(a - box[0].start, 0):max(b - box[0].start, 0)] = i
    zone[~lung] = 0
    # a background border in y/x (the pleura where the lung meets it); in z the scan's first/last slice is not
    # pleura (what lies beyond is unknown), so the border there repeats the lung when the lung reaches it
    pad = np.pad(lung, 1, mode="constant", constant_values=False)
    if box[0].start == 0:
        pad[0] = pad[1]
    if box[0].stop == full.shape[0]:
        pad[-1] = pad[-2]
    near = _near_boundary(_fill_holes(pad), tuple(float(s) for s in scan.spacing), subpleural_mm)
    return RegionMap(box, lung, side, zone, _dorsal_half(side), lung & near[1:-1, 1:-1, 1:-1])


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    """``scipy.ndimage.binary_fill_holes`` (same connectivity, same result) by labelling the background once: a
    hole is a background component that does not touch the array's border."""
    lab, n = ndimage.label(~mask)
    faces = [lab[i] for i in (0, -1)] + [lab[:, i] for i in (0, -1)] + [lab[:, :, i] for i in (0, -1)]
    outside = np.zeros(n + 1, bool)
    outside[np.concatenate([f.ravel() for f in faces])] = True
    outside[0] = False
    return ~outside[lab]


def _near_boundary(mask: np.ndarray, spacing: tuple[float, float, float], mm: float, slab: int = 48) -> np.ndarray:
    """``mask`` voxels whose Euclidean distance (mm, anisotropic) to the nearest outside voxel is <= ``mm``.

    Exact, and separable because only distances up to ``mm`` matter: along x the distance in pixels to the
    nearest outside voxel of the row (:func:`_row_distance`); then, slab by slab of ``slab`` slices, the smallest
    squared in-plane distance over the rows within ``mm`` in y (:func:`_inplane_reach`), turned into how many
    slices away an outside voxel still lies within ``mm`` (the *reach*, -1 for none); then a voxel is near when a
    slice ``dz`` away has a reach >= ``|dz|``. Voxels beyond the array's ends are not outside voxels (as in
    ``scipy.ndimage.distance_transform_edt``, which gives the same band); ``mask`` has a background border in y/x.
    """
    sz = float(spacing[0])
    kz = int(np.floor(mm / sz))
    reach = np.empty(mask.shape, np.int8)
    for a in range(0, mask.shape[0], slab):
        reach[a:a + slab] = _inplane_reach(mask[a:a + slab], (float(spacing[1]), float(spacing[2])), mm, sz)
    near = reach >= 0
    for dz in range(1, kz + 1):
        ok = reach >= dz
        near[dz:] |= ok[:-dz]
        near[:-dz] |= ok[dz:]
    return mask & near


def _row_distance(mask: np.ndarray, cap: int) -> np.ndarray:
    """Distance in pixels along the last axis to the nearest False of the row, capped at ``cap`` (int32)."""
    idx = np.arange(mask.shape[-1], dtype=np.int32)
    last = np.where(mask, np.int32(-2 ** 30), idx)
    np.maximum.accumulate(last, axis=-1, out=last)
    nxt = np.where(mask, np.int32(2 ** 30), idx)[..., ::-1]
    nxt = np.minimum.accumulate(nxt, axis=-1)[..., ::-1]
    return np.minimum(np.minimum(idx - last, nxt - idx), np.int32(cap))


def _inplane_reach(mask: np.ndarray, pixel_mm: tuple[float, float], mm: float, sz: float) -> np.ndarray:
    """int8 per voxel: the largest ``dz`` such that an outside voxel of the same slice lies within
    ``sqrt(mm^2 - (dz * sz)^2)`` in-plane; -1 when none lies within ``mm``. Square pixels work in integer squared
    pixel distances, other pixels in float64 mm^2; both compare ``d2 + (dz * sz)^2 <= mm^2``."""
    sy, sx = pixel_mm
    kx, ky = int(np.floor(mm / sx)), int(np.floor(mm / sy))
    dx = _row_distance(mask, kx + 1)
    square = sy == sx
    small = 2 * (kx + 1) ** 2 + ky ** 2 < np.iinfo(np.int16).max   # int16 holds every sum: half the memory
    q = (dx * dx).astype(np.int16 if small else np.int32) if square else (dx * sx) ** 2   # px^2, or mm^2
    far = q.dtype.type(2 * (kx + 1) ** 2) if square else np.inf
    q[dx > kx] = far
    d2 = q.copy()
    for dy in range(1, ky + 1):
        c = q.dtype.type(dy * dy if square else (dy * sy) ** 2)
        np.minimum(d2[:, dy:], q[:, :-dy] + c, out=d2[:, dy:])
        np.minimum(d2[:, :-dy], q[:, dy:] + c, out=d2[:, :-dy])
    dzs = np.arange(int(np.floor(mm / sz)) + 1)
    if square:                                                    # a lookup table over the squared distances
        ok = np.arange(int(far) + 1)[:, None] * sx * sx + (dzs[None] * sz) ** 2 <= mm * mm
        return np.where(ok.any(axis=1), ok.sum(axis=1) - 1, -1).astype(np.int8)[d2]
    reach = np.full(mask.shape, -1, np.int8)
    for dz in dzs:
        reach[d2 + (dz * sz) ** 2 <= mm * mm] = dz
    return reach


#: Atoms of the region partition: side (other, right, left) x zone (0..3) x dorsal x subpleural.
_ATOM_SHAPE = (3, 4, 2, 2)


def _region_atoms(rm: RegionMap) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Every lung voxel's *atom* (index into :data:`_ATOM_SHAPE`) and, per region and per cell, which atoms it
    holds: found by :meth:`RegionMap.masks` and :meth:`RegionMap.cells` themselves on a map of one voxel per atom,
    so the definitions stay in one place."""
    lung = rm.lung
    side = rm.side[lung]
    code = np.select([side == LungLabel.RIGHT, side == LungLabel.LEFT], [1, 2], 0)
    atom = np.ravel_multi_index((code, rm.zone[lung], rm.dorsal[lung], rm.subpleural[lung]), _ATOM_SHAPE)
    s, z, d, p = (a.reshape(1, 1, -1) for a in np.indices(_ATOM_SHAPE).reshape(4, -1))
    probe = RegionMap(rm.box, np.ones(s.shape, bool), np.array([0, LungLabel.RIGHT, LungLabel.LEFT])[s],
                      z.astype(np.int8), d.astype(bool), p.astype(bool))
    return (atom, {k: v.ravel() for k, v in probe.masks().items()},
            {k: v.ravel() for k, v in probe.cells().items()})


def _percent(k: int, n: int) -> float | None:
    """``k`` of ``n`` voxels in %, None when ``n`` is 0 (as :func:`sscild.domain.area_percent` counts masks)."""
    return None if int(n) == 0 else 100.0 * int(k) / int(n)


def _measure(hist: np.ndarray, les: np.ndarray | None, members: np.ndarray, voxel_ml: float,
             n_lesion: int) -> dict[str, float | None]:
    """Metrics of the region made of the atoms ``members`` from the atoms' HU histograms and lesion counts
    (columns: not lesion, GG, RET, other lesion class)."""
    out = metrics_of_histogram(hist[members].sum(axis=0), voxel_ml)
    if les is not None:
        c = les[members].sum(axis=0)
        n = int(c[1:].sum())
        out.update({"GG_pct": _percent(c[1], c.sum()), "RET_pct": _percent(c[2], c.sum()),
                    "involvement_pct": _percent(n, c.sum()), "lesion_ml": n * voxel_ml,
                    "lesion_share_pct": 100.0 * n / n_lesion if n_lesion else None})
    return out


def regional_metrics(scan: CTScan, lungs: Lungs, lesion_labels: np.ndarray | None = None,
                     regions: RegionMap | None = None) -> RegionalMetrics:
    """Density (and lesion) metrics per region, per cell, and the basal / dorsal / subpleural contrasts.

    Parameters
    ----------
    scan, lungs : the scan and its lung labels
    lesion_labels : (z, y, x) lesion classes (0 outside, 1 normal, 2 GG, 3 RET) or None (density only)
    regions : a precomputed :func:`region_map` (computed when None)

    Returns
    -------
    RegionalMetrics
        The contrasts compare ``involvement_pct`` when lesions are given, else ``HAA_pct``.
    """
    rm = regions if regions is not None else region_map(scan, lungs)
    atom, reg_atoms, cell_atoms = _region_atoms(rm)
    n_atoms = int(np.prod(_ATOM_SHAPE))
    hist = hu_histograms(scan.hu[rm.box][rm.lung], atom, n_atoms)
    les = None
    if lesion_labels is not None:
        lv = np.asarray(lesion_labels)[rm.box][rm.lung]
        cls = np.select([lv == LesionClass.GG, lv == LesionClass.RET, lv >= LesionClass.GG], [1, 2, 3], 0)
        les = np.bincount(atom * 4 + cls, minlength=n_atoms * 4).reshape(n_atoms, 4)
    n_les = 0 if les is None else int(les[:, 1:].sum())
    vox = scan.voxel_volume_ml
    reg = {k: _measure(hist, les, m, vox, n_les) for k, m in reg_atoms.items()}
    cells = {k: _measure(hist, les, m, vox, n_les) for k, m in cell_atoms.items()}
    key = "involvement_pct" if les is not None else "HAA_pct"
    contrasts, pattern = {}, []
    for name, a, b in CONTRASTS:
        va, vb = reg[a].get(key), reg[b].get(key)
        diff = None if va is None or vb is None else va - vb
        pred = diff is not None and diff > PREDOMINANCE_PP
        contrasts[name] = {"region": a, "versus": b, "difference_pp": diff, "predominant": pred}
        if pred:
            pattern.append(name)
    return RegionalMetrics(reg, cells, contrasts, key, pattern)


# --------------------------------------------------------------------------------------------
# the figure
# --------------------------------------------------------------------------------------------
_TINTS = {(False, False): (0.55, 0.75, 1.0), (False, True): (0.1, 0.35, 0.95),     # ventral core / subpleural
          (True, False): (1.0, 0.8, 0.5), (True, True): (0.95, 0.45, 0.0)}       # dorsal core / subpleural


def _tint(lung: np.ndarray, dorsal: np.ndarray, sub: np.ndarray) -> np.ndarray:
    rgba = np.zeros(lung.shape + (4,), np.float32)
    for (d, s), col in _TINTS.items():
        sel = lung & (dorsal == d) & (sub == s)
        rgba[sel] = (*col, 0.55 if s else 0.2)
    return rgba


def _views(rm: RegionMap, les: np.ndarray | None) -> tuple[int, int]:
    """Axial slice of the lower zone to show (where most lesion is, else most lung) and the sagittal column (the
    right lung's centre)."""
    lower = rm.zone == 3
    sick = lower & (les >= LesionClass.GG) if les is not None else np.zeros_like(lower)
    k = int(np.argmax((sick if sick.any() else lower).sum(axis=(1, 2))))
    xs = (rm.side == LungLabel.RIGHT).sum(axis=(0, 1))
    return k, int(round(np.average(np.arange(len(xs)), weights=xs))) if xs.any() else len(xs) // 2


def _map_axes(ax_a, ax_s, scan: CTScan, rm: RegionMap, les: np.ndarray | None) -> None:
    k, x = _views(rm, les)
    sz, sy, sx = (float(s) for s in scan.spacing)
    hu = scan.hu[rm.box]
    nz, ny, nx = hu.shape
    ax_a.imshow(hu[k], cmap="gray", vmin=-1350, vmax=150, extent=(0, nx * sx, ny * sy, 0))
    ax_a.imshow(_tint(rm.lung[k], rm.dorsal[k], rm.subpleural[k]), extent=(0, nx * sx, ny * sy, 0))
    ax_s.imshow(hu[:, :, x], cmap="gray", vmin=-1350, vmax=150, origin="lower", extent=(0, ny * sy, 0, nz * sz))
    ax_s.imshow(_tint(rm.lung[:, :, x], rm.dorsal[:, :, x], rm.subpleural[:, :, x]), origin="lower",
                extent=(0, ny * sy, 0, nz * sz))
    if les is not None:
        from .util import draw_contour

        for cls, col in ((LesionClass.GG, "#f2c500"), (LesionClass.RET, "#d7191c")):
            draw_contour(ax_a, les[k] == cls, (sy, sx), colors=col, linewidths=0.8)
            draw_contour(ax_s, les[:, :, x] == cls, (sz, sy), colors=col, linewidths=0.8)
    for z in ("middle", "lower"):
        top = np.flatnonzero((rm.zone == ZONES.index(z) + 1).any(axis=(1, 2)))
        if top.size:
            ax_s.axhline((top.max() + 1) * sz, color="w", lw=0.8, ls="--")
    ax_a.set_title(f"axial, lower zone (slice {scan.input_slice_index(k + rm.box[0].start)}, "
                   f"z = {scan.z_mm(k + rm.box[0].start):.0f} mm)", fontsize=9)
    ax_s.set_title("sagittal, right lung: zones (dashed), A left / P right", fontsize=9)
    for ax in (ax_a, ax_s):
        ax.set_xticks([])
        ax.set_yticks([])


def _bars(ax, m: RegionalMetrics) -> None:
    groups = [("upper", "middle", "lower"), ("ventral", "dorsal"), ("subpleural", "core"), ("right", "left")]
    names = [r for g in groups for r in g]
    pos = np.concatenate([np.arange(len(g)) + 0.6 * i + sum(len(h) for h in groups[:i]) for i, g in
                          enumerate(groups)])
    if m.measure == "involvement_pct":
        gg = [m.regions[r].get("GG_pct") or 0.0 for r in names]
        ret = [m.regions[r].get("RET_pct") or 0.0 for r in names]
        ax.bar(pos, ret, color="#d7191c", label="reticulation")
        ax.bar(pos, gg, bottom=ret, color="#f2c500", label="ground glass")
        ax.set_ylabel("% of the region's lung volume")
    else:
        ax.bar(pos, [m.regions[r].get("HAA_pct") or 0.0 for r in names], color="#777", label="HAA")
        ax.set_ylabel("HAA, % of the region's lung volume")
    ax.set_xticks(pos, names, rotation=40, fontsize=8)
    ax.legend(fontsize=8, frameon=False)
    seen = ", ".join(m.pattern) if m.pattern else "none"
    ax.set_title(f"distribution (predominance: {seen})", fontsize=9)


def regional_figure(scan: CTScan, lungs: Lungs, metrics: RegionalMetrics, path: str | Path,
                    lesion_labels: np.ndarray | None = None, regions: RegionMap | None = None) -> Path:
    """One PNG: bar chart of the regional measure, an axial slice of the lower zone and a sagittal cut of the right
    lung tinted by region (blue ventral, orange dorsal; darker = subpleural band) with lesion outlines
    (yellow GG, red RET)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rm = regions if regions is not None else region_map(scan, lungs)
    les = None if lesion_labels is None else np.where(rm.lung, np.asarray(lesion_labels)[rm.box], 0)
    fig = Figure(figsize=(13, 4.2), dpi=90)
    FigureCanvasAgg(fig)
    axs = fig.subplots(1, 3, gridspec_kw={"width_ratios": [1.3, 1, 1]})
    _bars(axs[0], metrics)
    _map_axes(axs[1], axs[2], scan, rm, les)
    fig.suptitle("regions: blue ventral, orange dorsal, darker = subpleural band "
                 f"({SUBPLEURAL_MM:g} mm); outlines: yellow ground glass, red reticulation", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    path = Path(path)
    save_png(fig, path)
    return path

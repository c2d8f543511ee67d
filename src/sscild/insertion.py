"""Interstitial lung disease inserted in 3D into real lungs, with exact per-voxel truth (training data).

Patterns are drawn in world millimetres inside a real lung volume (before any acquisition is simulated; see
:mod:`sscild.acquisition`):

- **ground glass (GG)**: a haze of +120 to +350 HU added to the parenchyma only, so vessels and bronchial walls
  stay visible through it, modulated by a smooth texture;
- **reticulation (RET)**: irregular intralobular lines (~1 mm, -250..-50 HU) on a lighter haze, the lines being
  the near-zero set of a band-passed 3D random field (cells of ~3-8 mm);
- **honeycombing** (counted as RET/fibrosis): clustered subpleural cysts of 2.5-10 mm with air lumens and
  1-2 mm walls, stacked in rows from the pleura inward;

in an **NSIP-like** (basal, posterior, peripheral, symmetric, GG-predominant, optional subpleural sparing) or
**UIP-like** (basal, posterior, subpleural, patchy, RET-predominant with honeycombing) distribution. The
diseased region is the top ``extent`` share of a weight map (height x depth x distance to the pleura x a smooth
random field), so the truth is exact: label 2 where GG was added, 3 where reticulation or honeycombing was drawn.

Examples
--------
>>> import numpy as np
>>> from sscild.insertion import insert_ild
>>> rng = np.random.default_rng(0)
>>> hu = np.full((30, 48, 48), -860.0, np.float32); lung = np.zeros(hu.shape, bool); lung[2:28, 6:42, 6:42] = True
>>> out = insert_ild(hu, lung, (2.0, 1.0, 1.0), rng, extent=0.3, distribution="UIP")
>>> round(float((out.labels >= 2).sum() / lung.sum()), 1)
0.3
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from .domain import LesionClass


@dataclass(frozen=True)
class Inserted:
    """The volume with patterns (float32 HU), its labels (0 outside lung, 1 normal, 2 GG, 3 RET) and what was
    drawn."""

    hu: np.ndarray
    labels: np.ndarray
    description: dict


def _smooth_field(rng: np.random.Generator, shape, spacing, sigma_mm: float) -> np.ndarray:
    """Unit-SD Gaussian random field of correlation ``sigma_mm``, drawn on a coarse grid (a few voxels per sigma)
    and interpolated up: the same statistics as filtering full-resolution noise at a fraction of the cost."""
    step = [max(1.0, sigma_mm / s / 2.0) for s in spacing]
    small = tuple(max(2, int(np.ceil(n / f))) for n, f in zip(shape, step))
    n = rng.standard_normal(small, dtype=np.float32)
    f = ndi.gaussian_filter(n, [sigma_mm / s / st for s, st in zip(spacing, step)], mode="wrap")
    f = ndi.zoom(f, [a / b for a, b in zip(shape, small)], order=1, grid_mode=True, mode="grid-constant")
    f = f[:shape[0], :shape[1], :shape[2]]
    return (f - f.mean()) / (f.std() + 1e-6)


def _band_field(rng: np.random.Generator, shape, spacing, fine_mm: float, coarse_mm: float) -> np.ndarray:
    n = rng.standard_normal(shape, dtype=np.float32)
    f = ndi.gaussian_filter(n, [fine_mm / s for s in spacing]) - ndi.gaussian_filter(n, [coarse_mm / s for s in spacing])
    return f / (f.std() + 1e-6)


def distribution_weight(lung: np.ndarray, spacing, rng: np.random.Generator, distribution: str,
                        depth_mm: np.ndarray) -> np.ndarray:
    """Where disease goes first: high weight basal, posterior and (UIP) subpleural, times a smooth random field.

    ``depth_mm`` is the 3D distance of each lung voxel from the pleura.
    """
    z = np.nonzero(lung.any(axis=(1, 2)))[0]
    y = np.nonzero(lung.any(axis=(0, 2)))[0]
    zr = (np.arange(lung.shape[0]) - z.min()) / max(1, z.max() - z.min())          # 0 = lowest lung slice
    yr = (np.arange(lung.shape[1]) - y.min()) / max(1, y.max() - y.min())          # 1 = most posterior
    if distribution == "UIP":
        wz, wy, wd, patch = np.exp(-zr / 0.3), np.exp(-(1 - yr) / 0.35), np.exp(-depth_mm / 8.0), 1.0
    elif distribution == "NSIP":
        spare = 1.0 - np.exp(-depth_mm / 3.0) if rng.random() < 0.5 else 1.0
        wz, wy, wd, patch = np.exp(-zr / 0.4), np.exp(-(1 - yr) / 0.45), np.exp(-depth_mm / 20.0) * spare, 0.5
    else:                                                                            # patchy, anywhere
        wz, wy, wd, patch = np.ones_like(zr), np.ones_like(yr), np.exp(-depth_mm / 40.0), 1.5
    field = np.exp(patch * _smooth_field(rng, lung.shape, spacing, 12.0))
    w = wz[:, None, None] * wy[None, :, None] * wd * field
    return np.where(lung, w, 0.0).astype(np.float32)


def _top_share(weight: np.ndarray, lung: np.ndarray, share: float) -> np.ndarray:
    if share <= 0:
        return np.zeros(lung.shape, bool)
    thr = np.quantile(weight[lung], 1.0 - min(share, 1.0))
    return lung & (weight >= thr) & (weight > 0)


def add_ground_glass(hu: np.ndarray, region: np.ndarray, spacing, rng: np.random.Generator) -> np.ndarray:
    """GG haze on the parenchyma (< -500 HU) of ``region``; vessels keep their density."""
    delta = float(rng.uniform(120.0, 350.0)) * (1.0 + 0.25 * _smooth_field(rng, hu.shape, spacing, 4.0))
    soft = ndi.gaussian_filter(region.astype(np.float32), [1.0 / s for s in spacing])
    return np.where(hu < -500, hu + np.clip(delta, 40, None) * soft, hu).astype(np.float32)


def add_reticulation(hu: np.ndarray, region: np.ndarray, spacing, rng: np.random.Generator) -> np.ndarray:
    """Intralobular lines (-250..-50 HU, ~1 mm) on a lighter haze inside ``region``."""
    if not region.any():
        return hu
    box = _box(region, spacing, 3.0)
    h, reg = hu[box], region[box]
    cell = float(rng.uniform(3.0, 8.0))
    f = _band_field(rng, h.shape, spacing, cell / 4.0, cell)
    line = np.exp(-(f / 0.22) ** 2)                                   # near-zero set of the field: thin sheets
    line_hu = float(rng.uniform(-250.0, -50.0))
    haze = h + float(rng.uniform(60.0, 200.0))
    soft = ndi.gaussian_filter(reg.astype(np.float32), [0.7 / s for s in spacing])
    drawn = np.where(h < -500, haze + (line_hu - haze) * np.clip(line, 0, 1) * 0.9, h)
    out = hu.copy()
    out[box] = h + (drawn - h) * soft
    return out.astype(np.float32)


def add_honeycombing(hu: np.ndarray, region: np.ndarray, depth_mm: np.ndarray, spacing,
                     rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Clustered subpleural cysts (air lumen, 1-2 mm wall) inside ``region`` within 12 mm of the pleura.
    Returns the image and the mask of what was drawn (lumens and walls)."""
    zone = region & (depth_mm < 12.0)
    drawn = np.zeros(hu.shape, bool)
    cand = np.argwhere(zone)
    if len(cand) == 0:
        return hu, drawn
    out = hu.copy()
    sp = np.asarray(spacing, np.float32)
    n = int(min(400, max(3, zone.sum() * np.prod(sp) / 150.0)))
    for c in cand[rng.choice(len(cand), size=min(n, len(cand)), replace=False)]:
        r, wall = float(rng.uniform(1.25, 5.0)), float(rng.uniform(1.0, 2.0))
        ext = np.ceil((r + wall) / sp).astype(int)
        lo, hi = np.maximum(c - ext, 0), np.minimum(c + ext + 1, hu.shape)
        sl = tuple(slice(a, b) for a, b in zip(lo, hi))
        g = np.ogrid[sl]
        d = np.sqrt(sum(((gi - ci) * s) ** 2 for gi, ci, s in zip(g, c, sp)))
        lumen, shell = d <= r, (d > r) & (d <= r + wall)
        ok = region[sl]
        out[sl] = np.where(ok & shell & ~drawn[sl], float(rng.uniform(-120.0, 20.0)), out[sl])
        out[sl] = np.where(ok & lumen, float(rng.uniform(-1000.0, -920.0)), out[sl])
        drawn[sl] |= ok & (lumen | shell)
    return out.astype(np.float32), drawn


def insert_ild(hu: np.ndarray, lung: np.ndarray, spacing, rng: np.random.Generator, *, extent: float = 0.2,
               distribution: str = "NSIP", gg_share: float | None = None, honeycomb: bool | None = None
               ) -> Inserted:
    """Insert ILD covering ``extent`` (0-1) of the lung volume in an NSIP-like, UIP-like or patchy distribution.

    Parameters
    ----------
    hu : (z, y, x) HU of a real (or phantom) chest; lung : its lung mask; spacing : (dz, dy, dx) mm
    extent : share of the lung volume that becomes diseased (exact in the returned labels)
    distribution : "NSIP", "UIP" or "patchy"
    gg_share : share of the diseased volume that is ground glass (the rest, nearest the pleura and the base, is
        reticulation); default by distribution (NSIP 0.6-0.9, UIP 0.1-0.4, patchy 0-1)
    honeycomb : draw honeycombing in the reticular region (default: UIP 80 %, NSIP 10 %, patchy 30 % chance)

    Returns
    -------
    Inserted
    """
    lung = np.asarray(lung, bool)
    full = np.asarray(hu, np.float32)
    box = _box(lung, spacing)
    res = _insert_in_box(full[box], lung[box], spacing, rng, extent, distribution, gg_share, honeycomb)
    out, labels = full.copy(), np.zeros(lung.shape, np.uint8)
    out[box], labels[box] = res.hu, res.labels
    return Inserted(out, labels, res.description)


def _box(mask: np.ndarray, spacing, margin_mm: float = 6.0) -> tuple[slice, ...]:
    idx = np.argwhere(mask)
    if len(idx) == 0:
        return tuple(slice(0, n) for n in mask.shape)
    m = [int(np.ceil(margin_mm / s)) for s in spacing]
    lo, hi = np.maximum(idx.min(0) - m, 0), np.minimum(idx.max(0) + 1 + np.array(m), mask.shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))


def _insert_in_box(hu, lung, spacing, rng, extent, distribution, gg_share, honeycomb) -> Inserted:
    depth = ndi.distance_transform_edt(lung, sampling=spacing).astype(np.float32)
    w = distribution_weight(lung, spacing, rng, distribution, depth)
    region = _top_share(w, lung, extent)
    lo, hi = {"UIP": (0.1, 0.4), "NSIP": (0.6, 0.9)}.get(distribution, (0.0, 1.0))
    gg_share = float(rng.uniform(lo, hi)) if gg_share is None else gg_share
    ret_region = region & _top_share(w, lung, extent * (1.0 - gg_share))
    gg_region = region & ~ret_region
    if honeycomb is None:
        honeycomb = bool(rng.random() < {"UIP": 0.8, "NSIP": 0.1}.get(distribution, 0.3))
    out = add_ground_glass(hu, gg_region, spacing, rng)
    out = add_reticulation(out, ret_region, spacing, rng)
    n_cyst_vox = 0
    if honeycomb and ret_region.any():
        out, drawn = add_honeycombing(out, ret_region, depth, spacing, rng)
        n_cyst_vox = int(drawn.sum())
    labels = np.where(lung, int(LesionClass.NORMAL), 0).astype(np.uint8)
    labels[gg_region] = int(LesionClass.GG)
    labels[ret_region] = int(LesionClass.RET)
    desc = {"distribution": distribution, "extent": float(region.sum() / max(1, lung.sum())),
            "gg_share": gg_share, "honeycomb_voxels": n_cyst_vox}
    return Inserted(out, labels, desc)

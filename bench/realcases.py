"""Test cases for the real-anatomy benchmark: ILD inserted into real scans by code that shares nothing with the
training generator (sscild.insertion / sscild.acquisition), so the benchmark does not flatter the models.

Differences from the training generator, on purpose:
- regions are unions of random ellipsoids placed by rejection sampling (basal/dorsal bias), not the top share of a
  weight map;
- ground glass blends toward a target density (-650..-450 HU) instead of adding HU;
- reticulation is the walls of a Voronoi tessellation of random seeds (4-9 mm cells), not the zero set of a
  band-passed field;
- honeycombing grows cyst clusters inward from pleural seed points;
- the acquisition is the scan's own, plus (for sparse-HRCT cases) a separate slab-average-and-pick resampler.
Truth: label 2 in the GG region, 3 in the reticular/honeycomb region (as a reader outlines the pattern's area).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi
from scipy.spatial import cKDTree


@dataclass(frozen=True)
class Case:
    name: str
    hu: np.ndarray            # (z, y, x) int16-range float32
    labels: np.ndarray        # 0 outside lung, 1 normal, 2 GG, 3 RET
    spacing: tuple
    kind: str


def _ellipsoid_union(lung, spacing, rng, target, basal, dorsal, near_pleura_mm=None):
    depth = ndi.distance_transform_edt(lung, sampling=spacing) if near_pleura_mm else None
    allowed = lung if depth is None else lung & (depth <= near_pleura_mm)
    idx = np.argwhere(allowed)
    z0, z1 = idx[:, 0].min(), idx[:, 0].max()
    y0, y1 = idx[:, 1].min(), idx[:, 1].max()
    pz = ((z1 - idx[:, 0]) / max(1, z1 - z0)) ** basal
    py = ((idx[:, 1] - y0) / max(1, y1 - y0)) ** dorsal
    p = pz * py + 1e-6
    p /= p.sum()
    region = np.zeros(lung.shape, bool)
    n_lung = allowed.sum()
    sp = np.asarray(spacing)
    for _ in range(400):
        if region.sum() >= target * lung.sum() or region.sum() >= n_lung:
            break
        c = idx[rng.choice(len(idx), p=p)]
        r = rng.uniform(12, 45, size=3)
        ext = np.ceil(r / sp).astype(int)
        lo, hi = np.maximum(c - ext, 0), np.minimum(c + ext + 1, lung.shape)
        g = np.ogrid[tuple(slice(a, b) for a, b in zip(lo, hi))]
        inside = sum(((gi - ci) * s / ri) ** 2 for gi, ci, s, ri in zip(g, c, sp, r)) <= 1.0
        sl = tuple(slice(a, b) for a, b in zip(lo, hi))
        region[sl] |= inside & allowed[sl]
    return region


def _voronoi_walls(region, spacing, rng):
    idx = np.argwhere(region)
    if len(idx) == 0:
        return np.zeros(region.shape, bool)
    cell = rng.uniform(4.0, 9.0)
    vol = len(idx) * float(np.prod(spacing))
    n = int(max(4, vol / cell ** 3))
    seeds = idx[rng.choice(len(idx), size=min(n, len(idx)), replace=False)] * np.asarray(spacing)
    lab = np.full(region.shape, -1, np.int32)
    lab[tuple(idx.T)] = cKDTree(seeds).query(idx * np.asarray(spacing))[1]
    walls = np.zeros(region.shape, bool)
    for ax in (1, 2):                       # in-plane neighbours differ -> wall (about one voxel thick)
        d = np.diff(lab, axis=ax) != 0
        sl = [slice(None)] * 3
        sl[ax] = slice(0, -1)
        walls[tuple(sl)] |= d
    return walls & region


def _cysts(region, lung, spacing, rng):
    depth = ndi.distance_transform_edt(lung, sampling=spacing)
    seeds = np.argwhere(region & (depth < 3.0))
    drawn_lumen = np.zeros(region.shape, bool)
    drawn_wall = np.zeros(region.shape, bool)
    if len(seeds) == 0:
        return drawn_lumen, drawn_wall
    sp = np.asarray(spacing)
    for s in seeds[rng.choice(len(seeds), size=min(25, len(seeds)), replace=False)]:
        c = s.astype(float)
        for _ in range(int(rng.integers(3, 10))):
            r = rng.uniform(2.0, 4.0)
            ext = np.ceil((r + 1.5) / sp).astype(int)
            ci = np.round(c).astype(int)
            lo, hi = np.maximum(ci - ext, 0), np.minimum(ci + ext + 1, region.shape)
            sl = tuple(slice(a, b) for a, b in zip(lo, hi))
            g = np.ogrid[sl]
            d = np.sqrt(sum(((gi - cc) * s_) ** 2 for gi, cc, s_ in zip(g, c, sp)))
            drawn_lumen[sl] |= (d <= r) & region[sl]
            drawn_wall[sl] |= (d > r) & (d <= r + 1.2) & region[sl]
            c = c + rng.normal(0, 1, 3) * (2 * r) / sp        # next cyst beside this one
            if np.any(c < 0) or np.any(c >= np.asarray(region.shape) - 1):
                break
    return drawn_lumen, drawn_wall & ~drawn_lumen


def make_case(hu, lung, spacing, rng, *, kind: str, extent: float) -> tuple[np.ndarray, np.ndarray]:
    """Insert one pattern mix; ``kind``: ``gg`` (NSIP-like haze), ``fibrotic`` (UIP-like reticulation with
    honeycombing, little GG) or ``mixed``. Work happens in the lungs' bounding box."""
    lung = np.asarray(lung, bool)
    idx = np.argwhere(lung)
    box = tuple(slice(int(a), int(b) + 1) for a, b in zip(idx.min(0), idx.max(0)))
    out = np.asarray(hu, np.float32).copy()
    labels = np.where(lung, 1, 0).astype(np.uint8)
    out[box], labels[box] = _make_case_box(out[box], lung[box], spacing, rng, kind, extent)
    return out, labels


def _make_case_box(hu, lung, spacing, rng, kind, extent):
    out = np.asarray(hu, np.float32).copy()
    labels = np.where(lung, 1, 0).astype(np.uint8)
    if kind == "gg":
        gg, ret = _ellipsoid_union(lung, spacing, rng, extent, 1.5, 1.0), np.zeros(lung.shape, bool)
    elif kind == "fibrotic":
        ret = _ellipsoid_union(lung, spacing, rng, extent, 2.0, 1.5, near_pleura_mm=25.0)
        gg = np.zeros(lung.shape, bool)
    else:
        ret = _ellipsoid_union(lung, spacing, rng, extent * 0.4, 2.0, 1.5, near_pleura_mm=20.0)
        gg = _ellipsoid_union(lung & ~ret, spacing, rng, extent * 0.6, 1.0, 1.0) & ~ret
    paren = out < -600
    if gg.any():
        t, a = rng.uniform(-650, -450), rng.uniform(0.45, 0.75)
        mod = ndi.uniform_filter(rng.random(out.shape).astype(np.float32), 5)      # patchy density, not flat
        a = np.clip(a * (0.6 + 0.8 * (mod - mod.min()) / (np.ptp(mod) + 1e-6)), 0.1, 0.95)
        out = np.where(gg & paren, out * (1 - a) + t * a, out)
    if ret.any():
        walls = _voronoi_walls(ret, spacing, rng)
        out = np.where(ret & paren, out + rng.uniform(50, 130), out)
        out = np.where(walls, rng.uniform(-300, 0), out)
        if kind == "fibrotic":
            lumen, wall = _cysts(ret, lung, spacing, rng)
            out = np.where(wall, rng.uniform(-150, 0), out)
            out = np.where(lumen, rng.uniform(-1000, -930), out)
    # partial volume of the inserted structures at the scan's own resolution
    diff = ndi.gaussian_filter(out - hu, (0.0, 0.5, 0.5))
    out = np.asarray(hu, np.float32) + diff
    labels[gg] = 2
    labels[ret] = 3
    return out.astype(np.float32), labels


def sparse_hrct(hu, labels, lung, spacing, *, thick_mm=1.0, every_mm=10.0, sharpen=1.0):
    """Sparse HRCT from a thin-slice volume: average ``thick_mm`` slabs every ``every_mm`` and sharpen in-plane
    (edge enhancement by subtracting a 1 mm blur); labels by majority over the slab."""
    dz = float(spacing[0])
    n_avg = max(1, int(round(thick_mm / dz)))
    step = max(1, int(round(every_mm / dz)))
    ks = list(range(n_avg, hu.shape[0] - n_avg, step))
    img = np.stack([hu[k:k + n_avg].mean(0) for k in ks]).astype(np.float32)
    blur = ndi.gaussian_filter(img, (0, 1.0 / spacing[1], 1.0 / spacing[2]))
    img = img + sharpen * (img - blur)
    lab = np.stack([labels[k + n_avg // 2] for k in ks])
    lu = np.stack([lung[k + n_avg // 2] for k in ks])
    return img, lab, lu, (every_mm, spacing[1], spacing[2])

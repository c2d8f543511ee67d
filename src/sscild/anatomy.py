"""Lungs and airways without a model.

``segment_lungs`` works on any chest CT, in about a second on a 2-core CPU for a 512x512x64 series (bench/RESULTS.md):

1. Air (< -300 HU, so that ground glass stays lung) that is connected to the in-plane border of the image is
   outside the body (this also takes the padding outside the field of view and the air around the table and
   clothing). What remains are the air spaces inside the body: lungs with airways, and bowel/stomach gas.
2. The lungs are the internal air components that look like lung (large, mean density of lung rather than of
   gas, in the chest part of the scan).
3. The airways (trachea and main bronchi) are followed slice by slice from the trachea, a round air tube near
   the midline at the top, down through the carina into the two main bronchi; a branch whose cross-section
   explodes (a leak into the lung) or that has gone past the main bronchi is stopped. They are cut out of the
   lungs.
4. The lung envelope is closed so that dense disease at the pleura (fibrosis, consolidation) stays lung: holes
   are filled per slice, and a 3D closing at coarse resolution adds dense regions enclosed by the lung's
   outline, never bone, and only where there is lung below (the top of a diaphragm dome looks like a hole in an
   axial slice, but has abdomen below it).
5. Right and left lungs are separated (erosion, then the parts grown back, when they touch at the anterior junction); right is
   the patient's right, at smaller x in LPS.

Work is done on an in-plane grid of about 1.4 mm for large images, then mapped back and refined at full
resolution.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property

import cc3d
import numpy as np
from scipy import ndimage as ndi

from . import morph
from .errors import NoLungsError
from .scan import CTScan

LUNG_THRESHOLD = -300.0   # HU: below this is air or aerated/hazy lung
AIR_THRESHOLD = -930.0    # HU: airway lumen is darker than lung parenchyma
APEX_CARINA_MIN_MM = 45.0  # mm: a carina nearer the lung apex is not one (also levels.PLAUSIBLE_MM's lower bound)
AIRWAY_LUMEN_HU = -500.0  # HU: halfway between lumen air and the airway wall, for the full-resolution lumen border
_INPLANE_CROSS = np.array([[[0, 1, 0], [1, 1, 1], [0, 1, 0]]], bool)      # 4-neighbours within a slice
_SLICE_CROSS = np.concatenate([np.zeros((1, 3, 3), bool), _INPLANE_CROSS, np.zeros((1, 3, 3), bool)])


@dataclass(frozen=True)
class Lungs:
    """Lung and airway masks of one scan, on its grid (z, y, x).

    Attributes
    ----------
    labels : uint8 array, 0 outside, 1 right lung, 2 left lung (airways excluded)
    airways : bool array, trachea and main bronchi lumen
    notes : dict of str, what the segmentation noticed (cut-off apex/base, touching lungs split, ...)
    cut_off : dict {"apex": bool, "base": bool}, whether the lungs touch the first/last slice
    carina_index : float or None, array z index (continuous) where the tracked trachea splits, if seen
    body : bool array or None, the body outline on the working grid (in-plane blocks of
        ``_inplane_factor(scan)``) as the segmentation found it, kept so later checks need not find it again
    """

    labels: np.ndarray
    airways: np.ndarray
    notes: dict[str, str] = field(default_factory=dict)
    cut_off: dict[str, bool] = field(default_factory=dict)
    carina_index: float | None = None
    body: np.ndarray | None = field(default=None, repr=False, compare=False)

    @cached_property
    def mask(self) -> np.ndarray:
        """``labels > 0``, worked out once (the levels, quality and vessel stages each ask for it several times);
        read-only, since it is shared."""
        m = self.labels > 0
        m.setflags(write=False)
        return m

    def volume_ml(self, scan: CTScan) -> dict[str, float]:
        """Volumes in mL: right, left, total."""
        v = scan.voxel_volume_ml
        r, l_ = int((self.labels == 1).sum()), int((self.labels == 2).sum())
        return {"right": r * v, "left": l_ * v, "total": (r + l_) * v}


# --------------------------------------------------------------------------------------------
def _inplane_factor(scan: CTScan, target_mm: float = 1.4) -> int:
    """In-plane block size of the working grid: the nearest to ``target_mm`` (0.65-1.0 mm pixels work on 1.3-2.0 mm,
    finer than the narrowest structure followed on it, a main bronchus of ~10 mm, and than the smallest vessel
    radius measured); borders are then refined at full resolution."""
    return _block(scan.spacing[1], target_mm)


def _block(pixel_mm: float, target_mm: float) -> int:
    """Pixels per block of a grid of about ``target_mm`` (at least 1)."""
    return max(1, int(round(target_mm / max(pixel_mm, 1e-3))))


def _downsample(hu: np.ndarray, f: int) -> np.ndarray:
    if f == 1:
        return hu.astype(np.float32)
    nz, ny, nx = hu.shape
    ny2, nx2 = ny // f * f, nx // f * f
    # block sums by f * f strided adds (8x faster than a 5-D mean): exact for 16-bit integers in int32, and for
    # whole-numbered float32 HU (what the working grid holds at f == 1) in any order, so the same block means as
    # np.mean; other float32 data is summed in this fixed order
    exact_int = hu.dtype.kind in "iu" and hu.dtype.itemsize <= 2 and f * f * 65536 <= 2 ** 24
    acc = np.zeros((nz, ny2 // f, nx2 // f), np.int32 if exact_int else np.float32)
    for i in range(f):
        for j in range(f):
            acc += hu[:, i:ny2:f, j:nx2:f]
    return acc.astype(np.float32) / np.float32(f * f)


def _select(lab: np.ndarray, n: int, keep) -> np.ndarray:
    """Mask of the voxels whose label (of ``n``) is in ``keep``, by a lookup table (one pass, unlike np.isin)."""
    lut = np.zeros(n + 1, bool)
    lut[np.asarray(keep, np.intp)] = True
    lut[0] = False
    return lut[lab]


def _dilate(mask: np.ndarray, iterations: int = 1) -> np.ndarray:
    """``ndi.binary_dilation(mask, iterations=iterations)`` (:func:`sscild.morph.dilate`) computed on the mask's
    bounding box only."""
    out = np.zeros(mask.shape, bool)
    if mask.any():
        box = _bbox(mask, margin=iterations)
        out[box] = morph.dilate(mask[box], iterations)
    return out


def _body_mask(hu: np.ndarray, spacing: tuple[float, float, float]) -> np.ndarray:
    """The patient's body on the grid of ``hu``: tissue (> -500 HU) opened in-plane by ~3 mm so that thin
    contacts (a table or cushion shell, clothes, blankets) let go, its largest 3D component, holes filled per
    slice (so the lungs and airways are inside it). Worked out at ~3 mm in-plane and mapped back."""
    g = _block(spacing[1], 3.0)
    ny2, nx2 = hu.shape[1] // g * g, hu.shape[2] // g * g
    # a coarse voxel is tissue when most of its block is (block mean above the threshold)
    coarse = _downsample(hu[:, :ny2, :nx2], g) if g > 1 else hu
    tissue = coarse > -500
    opened = morph.opening(tissue, 2 if g == 1 else 1, axes=(1, 2))
    lab, n = cc3d.connected_components(opened, connectivity=6, return_N=True)
    if n == 0:
        return np.zeros(hu.shape, bool)
    counts = np.bincount(lab.ravel(), minlength=n + 1)
    counts[0] = 0
    body = lab == int(np.argmax(counts))
    box = _bbox(body, margin=1)
    sub = np.ascontiguousarray(body[box])
    body[box] = sub | _slice_holes(sub)
    # one coarse voxel of margin gives back what the opening took from the outline
    body = morph.dilate(body, axes=(1, 2))
    out = np.zeros(hu.shape, bool)
    out[:, :ny2, :nx2] = np.repeat(np.repeat(body, g, axis=1), g, axis=2) if g > 1 else body
    return out


def _internal_air(hu: np.ndarray, body: np.ndarray) -> np.ndarray:
    """Air (< LUNG_THRESHOLD) inside the body: 3D components of the air that is not connected, in its own slice,
    to the border of the image (the air around the patient), with most of their voxels inside the body outline (not
    a table or cushion). The air around the patient is found slice by slice: in thick slices over a narrow neck it
    can lie right above the lung apex and would join the lungs in 3D."""
    air = hu < LUNG_THRESHOLD
    flat, n_flat = ndi.label(air, structure=_SLICE_CROSS)            # components within each slice
    edge = np.unique(np.concatenate([flat[:, 0, :].ravel(), flat[:, -1, :].ravel(), flat[:, :, 0].ravel(),
                                     flat[:, :, -1].ravel()]))
    air &= ~_select(flat, n_flat, edge)
    lab, n = cc3d.connected_components(air, connectivity=6, return_N=True)
    ids = lab[air]
    total = np.bincount(ids, minlength=n + 1)
    in_body = np.bincount(lab[air & body], minlength=n + 1)
    # a lookup table by label is one gather per voxel (np.isin sorts and searches)
    inside = in_body >= 0.5 * np.maximum(total, 1)
    inside[0] = False
    return inside[lab]


def _lung_components(hu: np.ndarray, internal: np.ndarray, vox_ml: float) -> np.ndarray:
    lab, n = cc3d.connected_components(internal, connectivity=6, return_N=True)
    if n == 0:
        return np.zeros(hu.shape, bool)
    # sizes and HU sums over the labelled voxels only (in array order, so the sums are those of ndi.mean)
    ids = lab[internal]
    counts = np.bincount(ids, minlength=n + 1)
    sums = np.bincount(ids, weights=hu[internal], minlength=n + 1)
    order = np.argsort(counts)[::-1]
    big = counts[order[0]]
    keep = []
    for i in order[:12]:
        vol = counts[i] * vox_ml
        if i == 0 or vol < 30 or counts[i] < 0.02 * big:
            continue
        # gas in the bowel or stomach is nearly pure air; lung carries parenchyma (~-850 HU)
        if sums[i] / np.float64(counts[i]) < -975 and vol < 1500:
            continue
        keep.append(i)
    return _select(lab, n, keep)


def _find_trachea(dark: np.ndarray, lung: np.ndarray, spacing, top: int | None = None
                  ) -> tuple[int, np.ndarray] | None:
    """The trachea's first slice from the top of the lungs (or from slice ``top`` down): a round dark component
    (1-5 cm^2) inside the lung/air mask near the middle of the body in x; returns (slice, its mask) or None."""
    zs = np.nonzero(lung.any(axis=(1, 2)))[0]
    if len(zs) == 0:
        return None
    px = spacing[1] * spacing[2]
    top = zs.max() if top is None else min(top, zs.max())
    xs = np.nonzero(lung.any(axis=(0, 1)))[0]
    x_mid = (xs.min() + xs.max()) / 2
    for k in range(top, max(zs.min(), top - int(120 / spacing[0])), -1):
        lab, n = ndi.label(dark[k] & lung[k])
        best = None
        for j, sl in enumerate(ndi.find_objects(lab), start=1):
            comp = lab[sl] == j
            area = comp.sum() * px
            if not 60 <= area <= 700:      # trachea cross-section ~1-5 cm^2
                continue
            h, w = comp.shape
            cx = (sl[1].start + sl[1].stop) / 2
            if comp.sum() / float(h * w) < 0.5 or abs(cx - x_mid) * spacing[2] > 35:
                continue
            if best is None or abs(cx - x_mid) < best[0]:
                best = (abs(cx - x_mid), j)
        if best is not None:
            return k, lab == best[1]
    return None


def _follow_up(dark: np.ndarray, airway: np.ndarray, k0: int, seed: np.ndarray, reach: int, px: float) -> None:
    """Mark the trachea upward from slice ``k0`` while it continues (the whole visible trachea)."""
    prev = seed
    for k in range(k0, dark.shape[0]):
        lab, n = cc3d.connected_components(dark[k], connectivity=4, return_N=True)
        hit = np.unique(lab[_dilate(prev, iterations=reach)])
        cur = _select(lab, n, hit[hit > 0])
        if not cur.any() or cur.sum() * px > 900:
            break
        airway[k] = cur
        prev = cur


#: a lumen that keeps at least this share of the largest lumen of the slice above is the same airway going on
#: unless that lumen's centre lies between it and the next one, left to right (:func:`lumen_divides`)
SPLIT_AREA_RATIO = 0.8
BETWEEN_MARGIN_MM = 2.0


def lumen_divides(lumens: list[tuple[float, float]], above: tuple[float, float]) -> bool:
    """Whether a slice's airway lumens (:func:`airway_lumens`: (area mm^2, centre x mm), largest first) divide the
    largest lumen of the slice above (``above``, the same pair): two or more, and the largest is not that lumen
    going on (nearly as large, ``SPLIT_AREA_RATIO``, with the centre above not lying between the two largest,
    ``BETWEEN_MARGIN_MM`` inside, as the carina's ridge lies between the main bronchi). A trachea that goes on
    beside a second component (a pocket of air, a cyst, lung the wide search of thick slices takes in) is not a
    carina."""
    if len(lumens) < 2:
        return False
    (area, x), (_, x_other) = lumens[:2]
    area_above, x_above = above
    between = min(x, x_other) + BETWEEN_MARGIN_MM < x_above < max(x, x_other) - BETWEEN_MARGIN_MM
    return area < SPLIT_AREA_RATIO * area_above or between


def _follow_down(dark: np.ndarray, airway: np.ndarray, k0: int, seed: np.ndarray, reach: int, spacing
                 ) -> float | None:
    """Follow every branch downward from ``k0``; the carina is where the trachea divides (:func:`lumen_divides`:
    two branches or more, the largest not the largest lumen of the slice above going on) and stays two for
    >= 12 mm (a short-lived second component, e.g. a cyst touching the trachea, is not a carina). Returns the
    carina's z index (between two slices) or None."""
    px = spacing[1] * spacing[2]
    prev, carina, candidate, max_below = seed, None, None, None
    above = airway_lumens(seed, spacing)[0]            # the largest lumen of the slice above: area, centre x
    branch_area = above[0]
    persist = int(np.ceil(12.0 / spacing[0]))
    for k in range(k0 - 1, -1, -1):
        lab, n = cc3d.connected_components(dark[k], connectivity=4, return_N=True)
        hit = np.unique(lab[_dilate(prev, iterations=reach)])
        hit = hit[hit > 0]
        cur = _select(lab, n, hit)
        area = np.bincount(lab[cur], minlength=n + 1)[hit] * px     # counted on the touched components only
        leak = area > max(3.0 * branch_area, 900)                  # a bigger one is a leak into the lung
        if leak.all():
            break
        if leak.any():
            cur = _select(lab, n, hit[~leak])
        if carina is None:
            lumens = airway_lumens(cur, spacing)
            if candidate is None and lumen_divides(lumens, above):
                candidate = k + 0.5              # the ridge lies between this slice and the one above
            elif candidate is not None and len(lumens) < 2:
                candidate = None
            if candidate is not None and candidate - k >= persist:
                carina = candidate
                max_below = int(np.floor(carina - 40.0 / spacing[0]))  # main bronchi: ~4 cm long
            above = lumens[0] if lumens else above
        if max_below is not None and k < max_below:
            break
        airway[k] = cur
        prev = cur
    return carina


def airway_lumens(mask2d: np.ndarray, spacing) -> list[tuple[float, float]]:
    """(area mm^2, centre x mm) of each 4-connected component of a 2D airway mask, largest first."""
    lab, n = cc3d.connected_components(np.ascontiguousarray(mask2d), connectivity=4, return_N=True)
    if n == 0:
        return []
    count = np.bincount(lab.ravel(), minlength=n + 1)[1:]
    xs = np.bincount(lab.ravel(), weights=np.broadcast_to(np.arange(mask2d.shape[1]), mask2d.shape).ravel(),
                     minlength=n + 1)[1:]
    order = np.argsort(count)[::-1]
    px = spacing[1] * spacing[2]
    return [(float(count[i] * px), float(xs[i] / count[i] * spacing[2])) for i in order]


def _track_airways(hu: np.ndarray, lung: np.ndarray, spacing: tuple[float, float, float], apex: int
                   ) -> tuple[np.ndarray, float | None]:
    """Trachea + main bronchi by slice-wise tracking from the top; returns the mask and the carina z index.

    When that finds no carina, or one less than ``APEX_CARINA_MIN_MM`` below the lung apex (slice ``apex``), the
    tracking is run again on the in-plane 3x3 median of the image (below the air threshold where at least 5 of the
    9 pixels are) and its carina kept when it is plausible: in a noisy scan, parenchyma pixels that noise pushes
    below the threshold join the trachea as specks that look like a second branch (a false carina above the lungs).
    The median's mask takes back the air pixels within one pixel of the tracked lumen (the median trims its
    border); thin lobar bronchi are lost there."""
    def plausible(carina: float | None) -> bool:
        return carina is not None and (apex - carina) * spacing[0] >= APEX_CARINA_MIN_MM

    dark = hu < AIR_THRESHOLD
    airway, carina = _track(dark, lung, spacing)
    if plausible(carina):
        return airway, carina
    low = np.nonzero(airway.any(axis=(1, 2)))[0]
    if len(low) and low.min() > 0:
        # in a scan that includes the larynx the airway is followed from the pharynx, its folds look like a split
        # and the glottis (a slit of a few mm^2) ends it: the trachea below that end is found and followed again
        below, carina_b = _track(dark, lung, spacing, top=int(low.min()) - 1)
        if plausible(carina_b):
            return airway | below, carina_b
    smooth = ndi.uniform_filter(dark.astype(np.float32), size=(1, 3, 3), mode="nearest") > 4.5 / 9
    airway2, carina2 = _track(smooth, lung, spacing)
    if not plausible(carina2):
        return airway, carina
    box = _bbox(airway2, margin=1)
    airway2[box] |= dark[box] & morph.dilate(airway2[box], axes=(1, 2))
    return airway2, carina2


def _track(dark: np.ndarray, lung: np.ndarray, spacing: tuple[float, float, float], top: int | None = None
           ) -> tuple[np.ndarray, float | None]:
    """The airway mask and carina index tracked through the air mask ``dark`` from the trachea's first slice (from
    the top of ``lung``, or from slice ``top`` down)."""
    airway = np.zeros(dark.shape, bool)
    start = _find_trachea(dark, lung, spacing, top)
    if start is None:
        return airway, None
    k0, seed = start
    # the next slice's branch is searched 2 voxels around the current one; in slices thicker than 5 mm a bronchus
    # leaving at ~35 degrees moves 0.7 x the spacing sideways from one slice to the next (wider on 5 mm slices
    # took the esophagus for a bronchus on the real series)
    reach = 2 if spacing[0] <= 5.0 else max(2, int(np.ceil(0.7 * spacing[0] / spacing[1])))
    _follow_up(dark, airway, k0, seed, reach, spacing[1] * spacing[2])
    carina = _follow_down(dark, airway, k0, seed, reach, spacing)
    return airway, carina


def _tubular_air(hu: np.ndarray, internal: np.ndarray, lung: np.ndarray) -> np.ndarray:
    """Internal air components that are not lung but reach into the lungs' z range (trachea, bronchi)."""
    zs = np.nonzero(lung.any(axis=(1, 2)))[0]
    if len(zs) == 0:
        return np.zeros(hu.shape, bool)
    rest = internal & ~lung
    lab, n = cc3d.connected_components(rest, connectivity=6, return_N=True)
    if n == 0:
        return rest
    # z range of every component: the labelled voxels in array order, with their slice index
    ids = lab[rest]
    z = np.repeat(np.arange(rest.shape[0]), np.count_nonzero(rest, axis=(1, 2)))
    z_lo = np.full(n + 1, rest.shape[0])
    z_hi = np.full(n + 1, -1)
    np.minimum.at(z_lo, ids, z)
    np.maximum.at(z_hi, ids, z)
    # reaches the top of the lungs and spans several slices: a tube from the neck
    keep = np.nonzero((z_hi >= zs.max() - 5) & (z_hi - z_lo + 1 >= 5))[0]
    return _select(lab, n, keep)


def _right_left(lung: np.ndarray) -> tuple[np.ndarray, str]:
    """Small detached bits dropped, then labels 1 right, 2 left (see ``_split_left_right``) and the split note."""
    # the work is done on the lungs' bounding box (a C-ordered copy, so that components are numbered in the same
    # order as in the whole array)
    box = _bbox(lung, margin=0)
    x_mid = (box[2].start + box[2].stop - 1) / 2 if lung.any() else lung.shape[2] / 2
    sub = np.ascontiguousarray(lung[box])
    # drop small detached bits (< 1 % of the lung)
    lab, n = cc3d.connected_components(sub, connectivity=6, return_N=True)
    if n > 1:
        c = np.bincount(lab[sub], minlength=n + 1)
        sub = _select(lab, n, np.nonzero(c >= 0.01 * c.max())[0])
    labels = np.zeros(lung.shape, np.uint8)
    labels[box], note = _split_left_right(sub, x_mid, x0=box[2].start)
    return labels, note


def _split_left_right(mask: np.ndarray, x_mid: float, x0: int = 0) -> tuple[np.ndarray, str]:
    """Label 1 right (smaller x), 2 left; separate touching lungs by erosion + watershed.

    ``mask`` may be a box of the scan whose first column is column ``x0`` (``x_mid`` is in scan columns).
    """
    lab, n = cc3d.connected_components(mask, connectivity=6, return_N=True)
    counts = np.bincount(lab[mask], minlength=n + 1)
    note = ""
    big = [i for i in np.argsort(counts)[::-1] if i > 0 and counts[i] > 0.15 * counts.max()][:2]
    cols = np.arange(x0, x0 + mask.shape[2])
    if len(big) < 2:
        markers = None
        # erosion by ``it`` steps of the 6-neighbour cross keeps the voxels farther than ``it`` steps (city-block)
        # from the background, the array's outside included: one distance transform serves every step
        depth = ndi.distance_transform_cdt(np.pad(mask, 1), metric="taxicab")[1:-1, 1:-1, 1:-1]
        for it in range(1, 12):
            er = depth > it
            l2, n2 = cc3d.connected_components(er, connectivity=6, return_N=True)
            c2 = np.bincount(l2[er], minlength=n2 + 1)
            top2 = [i for i in np.argsort(c2)[::-1] if i > 0 and c2[i] > 0.15 * c2.max()][:2]
            if len(top2) == 2:
                lut = np.zeros(n2 + 1, np.uint8)
                lut[top2[0]], lut[top2[1]] = 1, 2
                markers = lut[l2]
                note = f"the lungs touch; separated after {it} erosion step(s)"
                break
        if markers is None:
            # fall back to the midline
            out = np.zeros(mask.shape, np.uint8)
            out[mask & (cols < x_mid)] = 1
            out[mask & (cols >= x_mid)] = 2
            return out, "the lungs could not be separated by shape; split at the body midline"
        lab = _grow_markers(markers, mask, it + 2)
        n = 2
        big = [1, 2]
    # which of the two is right: the mean column of each (exact integer sums, as np.mean of the columns)
    sel = np.zeros(n + 1, np.uint8)
    sel[big[0]], sel[big[1]] = 1, 2
    two = sel[lab]
    cx = []
    for m in (1, 2):
        per_col = np.count_nonzero(two == m, axis=(0, 1))
        cx.append(float(int((per_col * cols).sum()) / max(int(per_col.sum()), 1)))
    out = two if cx[0] < cx[1] else np.array([0, 2, 1], np.uint8)[two]
    # small pieces (e.g. split by a fissure-like gap) go to the side of their centroid
    rest = mask & (out == 0)
    if rest.any():
        out[rest & (cols < x_mid)] = 1
        out[rest & (cols >= x_mid)] = 2
    return out, note


def _grow_markers(markers: np.ndarray, mask: np.ndarray, steps: int) -> np.ndarray:
    """Grow markers 1 and 2 back inside ``mask``, one 6-neighbour step each in turn, ``steps`` times (a flat
    watershed: the same as dilating each marker in turn into the unassigned mask voxels).

    Only unassigned voxels can change, so each step looks at their neighbours (a thin shell) instead of dilating
    whole arrays.
    """
    lab = np.pad(markers, 1)          # a zero rim: neighbour offsets never wrap around
    flat = lab.ravel()
    todo = np.flatnonzero(np.pad(mask & (markers == 0), 1))
    sz, sy = lab.shape[1] * lab.shape[2], lab.shape[2]
    for _ in range(steps):
        for m in (1, 2):
            hit = np.zeros(todo.size, bool)
            for o in (-sz, sz, -sy, sy, -1, 1):
                hit |= flat[todo + o] == m
            flat[todo[hit]] = m
            todo = todo[~hit]
    return lab[1:-1, 1:-1, 1:-1]


def _column_near(mask: np.ndarray, reach: int, up: bool) -> np.ndarray:
    """Per voxel: is ``mask`` set within ``reach`` slices below (``up=False``) or above (``up=True``) it, in the
    same column (the voxel's own slice excluded)."""
    out = np.zeros(mask.shape, bool)
    for d in range(1, reach + 1):
        if up:
            out[:-d] |= mask[d:]
        else:
            out[d:] |= mask[:-d]
    return out


def _fill_holes_from_below(lung: np.ndarray, spacing: tuple[float, float, float]) -> np.ndarray:
    """Fill holes per slice, bottom up: small holes (< 10 cm^2: vessels, nodules) always; a larger hole only when
    lung lies within 15 mm below most of it (a dense lesion inside the lung; the top of a diaphragm dome, the
    stomach or the heart ringed by lung have abdomen or mediastinum below them)."""
    out = lung.copy()
    box = _bbox(lung, margin=1)
    ys, xs = box[1], box[2]
    px = spacing[1] * spacing[2]
    reach = max(1, int(np.ceil(15.0 / spacing[0])))
    for k in range(box[0].start, box[0].stop):
        sl = out[k, ys, xs]
        if not sl.any():
            continue
        holes = _holes(sl)
        if not holes.any():
            continue
        lab, n = cc3d.connected_components(holes, connectivity=4, return_N=True)
        area = np.bincount(lab.ravel(), minlength=n + 1)
        below = out[max(k - reach, 0):k, ys, xs].any(axis=0)
        supported = np.bincount(lab[below], minlength=n + 1)
        ok = (area * px <= 1000.0) | (supported >= 0.5 * area)
        ok[0] = False
        out[k, ys, xs] |= ok[lab]
    return out


def _close_envelope(lung: np.ndarray, hu: np.ndarray, spacing: tuple[float, float, float]) -> np.ndarray:
    """Fill holes per slice (see ``_fill_holes_from_below``) and close the outline in 3D at ~4 mm resolution
    (radius ~10 mm), never into bone (> 300 HU), and only where lung lies within 15 mm both above and below in the
    same column (a concavity of the lung's surface, not the top of a dome or the apex)."""
    if not lung.any():
        return lung.copy()
    out = _fill_holes_from_below(lung, spacing)
    f = [_block(s, CLOSE_GRID_MM) for s in spacing]
    coarse = out[:: f[0], :: f[1], :: f[2]]
    cs = [s * ff for s, ff in zip(spacing, f)]
    r = 10.0
    # within the lung's box grown by 2 r (+2 voxels): the closing reaches no farther, the same result for less work
    cb = _bbox(coarse, margin=max(int(np.ceil(2 * r / c)) + 2 for c in cs))
    sub_c = coarse[cb]
    dilated = ndi.distance_transform_edt(~sub_c, sampling=cs) <= r
    added_c = np.zeros(coarse.shape, bool)
    added_c[cb] = (ndi.distance_transform_edt(dilated, sampling=cs) > r) & ~sub_c
    if not added_c.any():
        return out
    idx = [np.minimum(np.arange(n) // ff, c - 1) for n, ff, c in zip(out.shape, f, coarse.shape)]
    cbox = _bbox(added_c, margin=0)
    sel = []
    for ax in range(3):
        pos = np.nonzero((idx[ax] >= cbox[ax].start) & (idx[ax] < cbox[ax].stop))[0]
        sel.append(slice(pos[0], pos[-1] + 1))
    reach = max(1, int(np.ceil(15.0 / spacing[0])))
    fb = (slice(max(sel[0].start - reach, 0), min(sel[0].stop + reach, out.shape[0])), sel[1], sel[2])
    sub = out[fb]
    support = _column_near(sub, reach, up=False) & _column_near(sub, reach, up=True)
    added = added_c[np.ix_(idx[0][fb[0]], idx[1][fb[1]], idx[2][fb[2]])] & (hu[fb] < 300) & support
    out[fb] |= added
    return out


RIB_MARGIN_MM = 1.0    # the cavity ends this far short of the first bone (the rib's own partial volume)
SPINE_HALF_MM = 25.0   # bone this near the midline is the spine (or sternum) for the rib cavity
RIB_TOL_MM = 8.0       # a ray's bone lies beyond a gap when farther than this beyond the nearest bone on both sides
RIB_SIDE_RAYS = 4      # rays (of 5 degrees) on each side looked at for that
RIB_GAP_RAYS = 6       # rays (of 5 degrees) a gap between two ribs may span and still be bridged
RIB_STEP = 1.3         # a gap between bone beside the spine and a rib this much farther takes the rib (a step)
PARAVERTEBRAL_MM = 50.0  # bone this near the midline (x) is beside the spine for RIB_STEP
RIB_Z_MM = 3.0         # the rib cavity's bone: the nearest within this many mm above or below (5 mm took dense lung)
FLOOR_RELAX_MM = 10.0  # a column of dense lung may reach this far below the aerated floor of the lung around it
DENSE_RANGE = (-300.0, 60.0)   # HU: consolidation-like or fibrotic lung that the air threshold leaves out
DENSE_GRID_MM = 3.0    # the dense envelope's in-plane working grid
CLOSE_GRID_MM = 4.0    # the envelope closing's working grid (strides)
DENSE_BOX_MM = 40.0    # the dense envelope is worked out within the lungs' in-plane box grown by this much


def _rib_cavity(hu: np.ndarray, lung: np.ndarray, spacing: tuple[float, float, float], x_mid: float | None = None
                ) -> np.ndarray:
    """The thoracic cavity per slice as seen from the lungs' centre: in each 5 degree direction it reaches the
    first bone (> 200 HU: rib, spine, sternum) beyond the aerated lung, gaps between ribs bridged by the line
    between the ribs on either side (:func:`_rib_line`), and ``RIB_MARGIN_MM`` short of it; a ray's bone is the
    nearest within ``RIB_Z_MM`` above or below the slice (a rib cut obliquely by the slice leaves a gap the ray
    would pass through to the scapula). Where no rib is in reach it ends at the aerated lung. Given the midline
    column ``x_mid``, bone within ``SPINE_HALF_MM`` of it does not end a ray. All slices at once."""
    nz, ny, nx = hu.shape
    nb = 72
    cav = np.zeros(hu.shape, bool)
    ks = np.nonzero(lung.any(axis=(1, 2)))[0]
    if len(ks) == 0:
        return cav
    lk, hk = lung[ks], hu[ks]
    n_k = np.count_nonzero(lk, axis=(1, 2)).astype(float)
    cy = (np.count_nonzero(lk, axis=2) * np.arange(ny)).sum(axis=1) / n_k
    cx = (np.count_nonzero(lk, axis=1) * np.arange(nx)).sum(axis=1) / n_k
    dy = np.arange(ny)[None, :, None] - cy[:, None, None]
    dx = np.arange(nx)[None, None, :] - cx[:, None, None]
    rad = np.hypot(dy, dx)
    ang = ((np.arctan2(dy, dx) + np.pi) / (2 * np.pi) * nb).astype(np.intp) % nb
    ang += (np.arange(len(ks)) * nb)[:, None, None]            # one set of directions per slice
    r_lung = np.zeros(len(ks) * nb)
    np.maximum.at(r_lung, ang[lk], rad[lk])
    bone = (hk > 200) & (rad > r_lung[ang] - 2.0)
    if x_mid is not None:   # the spine does not end the cavity (rays to a dense posterior recess pass it)
        bone &= np.abs(np.arange(nx) - x_mid)[None, None, :] * spacing[2] > SPINE_HALF_MM
    r_bone = np.full(len(ks) * nb, np.inf)
    np.minimum.at(r_bone, ang[bone], rad[bone])
    r_bone = r_bone.reshape(len(ks), nb)
    n_z = int(RIB_Z_MM // spacing[0])
    if n_z > 0:     # a rib cut obliquely may end the ray in the next slice and not in this one (a ray without
        # bone in its own slice stays without: it ends at the aerated lung)
        r_bone = np.where(np.isfinite(r_bone), ndi.minimum_filter1d(r_bone, size=2 * n_z + 1, axis=0,
                                                                   mode="nearest"), r_bone)
    spine_side = None
    if x_mid is not None:     # the x of each ray's bone, at the ray's central angle
        theta = (np.arange(nb) + 0.5) / nb * 2 * np.pi - np.pi
        x_b = cx[:, None] + np.where(np.isfinite(r_bone), r_bone, 0.0) * np.cos(theta)[None, :]
        spine_side = np.isfinite(r_bone) & (np.abs(x_b - x_mid) * spacing[2] < PARAVERTEBRAL_MM)
    r_cav = _rib_line(r_bone, RIB_TOL_MM / spacing[1], spine_side) - RIB_MARGIN_MM / spacing[1]
    r_l = r_lung.reshape(len(ks), nb)
    r_cav = np.where(np.isfinite(r_cav), np.maximum(r_cav, r_l), r_l).ravel()
    cav[ks] = rad <= r_cav[ang]
    return cav


def _rib_line(r_bone: np.ndarray, tol: float, spine_side: np.ndarray | None = None) -> np.ndarray:
    """The inner line of the rib cage per (slice, ray) from each ray's nearest bone ``r_bone`` (inf: none).

    A ray passes through a gap between two ribs when its bone (the next rib out, the scapula, the arm) is farther
    than ``tol`` (pixels) beyond the nearest bone on *both* sides within ``RIB_SIDE_RAYS`` rays (an outward
    excursion; where the rib line only steps, next to the spine, one side is farther), or when it meets no bone.
    Such a ray takes the line interpolated in angle between the nearest rays on either side that meet a rib (the
    farther of the two when the nearer is bone beside the spine, ``spine_side``, and they differ by more than
    ``RIB_STEP``: the lung's paravertebral recess reaches back to the rib, behind the chord), when the gap spans at
    most ``RIB_GAP_RAYS`` rays; else inf (the ray ends at the aerated lung)."""
    nk, nb = r_bone.shape
    side = range(1, RIB_SIDE_RAYS + 1)
    before = np.min(np.stack([np.roll(r_bone, d, axis=1) for d in side]), axis=0)
    after = np.min(np.stack([np.roll(r_bone, -d, axis=1) for d in side]), axis=0)
    rib = np.isfinite(r_bone) & (r_bone <= np.maximum(before, after) + tol)
    out = np.where(rib, r_bone, np.inf)
    rays = np.arange(nb)
    for k in range(nk):
        idx = np.nonzero(rib[k])[0]
        if len(idx) < 2:
            continue
        # the nearest rib ray before and after each ray, circularly
        ext = np.concatenate([idx - nb, idx, idx + nb])
        i0, i1 = ext[np.searchsorted(ext, rays, side="right") - 1], ext[np.searchsorted(ext, rays)]
        gap = ~rib[k] & (i1 - i0 <= RIB_GAP_RAYS + 1)
        r0, r1 = r_bone[k, i0[gap] % nb], r_bone[k, i1[gap] % nb]
        line = r0 + (rays[gap] - i0[gap]) / np.maximum(i1[gap] - i0[gap], 1) * (r1 - r0)
        if spine_side is not None:
            near_spine = np.where(r0 < r1, spine_side[k, i0[gap] % nb], spine_side[k, i1[gap] % nb])
            step = near_spine & (np.maximum(r0, r1) > RIB_STEP * np.minimum(r0, r1))
            line = np.where(step, np.maximum(r0, r1), line)
        out[k, gap] = line
    return out


def _medial(aer: np.ndarray, right: bool) -> np.ndarray:
    """The most medial aerated column per (slice, row) of one lung; -1 (right) or nx (left) where the row has none."""
    nx = aer.shape[2]
    cols = np.arange(nx)
    if right:
        return np.where(aer, cols, -1).max(axis=2)
    return np.where(aer, cols, nx).min(axis=2)


def _side_limits(aer: np.ndarray, other: np.ndarray, right: bool, x_mid: float) -> np.ndarray:
    """The medial limit per (slice, row) of one lung: its most medial aerated column in the row; a row without
    aerated lung takes the nearest row's or, when more medial, the other lung's medial column mirrored across
    ``x_mid`` (behind the heart the mediastinum is about as wide on both sides of the spine). -1 (right) / nx (left) in a
    slice without this lung."""
    nz, ny, nx = aer.shape
    none = -1 if right else nx
    own = _medial(aer, right)
    theirs = _medial(other, not right)
    mirrored = np.clip(np.rint(2 * x_mid - theirs), 0, nx - 1).astype(np.int64)
    has_other = (theirs >= 0) & (theirs < nx)
    lim = np.full((nz, ny), none, np.int64)
    for k in range(nz):
        rows = np.nonzero(own[k] != none)[0]
        if len(rows) == 0:
            continue
        near = np.clip(np.searchsorted(rows, np.arange(ny)), 0, len(rows) - 1)
        prev = np.clip(near - 1, 0, len(rows) - 1)
        use_prev = np.abs(rows[prev] - np.arange(ny)) < np.abs(rows[near] - np.arange(ny))
        lim[k] = own[k][rows[np.where(use_prev, prev, near)]]
        fill = (own[k] == none) & has_other[k]
        pick = np.maximum if right else np.minimum
        lim[k][fill] = pick(lim[k][fill], mirrored[k][fill])
    return lim


def _floor(aer: np.ndarray, other: np.ndarray | None = None, x_mid: float = 0.0, relax: int = 0) -> np.ndarray:
    """The lowest aerated slice per column (y, x); a column without aerated lung takes the mirror column of the
    ``other`` lung (across ``x_mid``) when that one has aerated lung, else the nearest column's floor, lowered by
    ``relax`` slices (a dense posterior recess reaches below the aerated lung around it)."""
    nz, ny, nx = aer.shape
    has = aer.any(axis=0)
    floor = np.where(has, np.argmax(aer, axis=0), nz)
    if not has.any() or has.all():
        return floor
    _, (iy, ix) = ndi.distance_transform_edt(~has, return_indices=True)
    near = floor[iy, ix]
    if other is not None and other.any():
        mx = np.clip(np.rint(2 * x_mid - np.arange(nx)).astype(np.intp), 0, nx - 1)
        o = other[:, :, mx]
        o_has = o.any(axis=0)
        near = np.where(o_has, np.argmax(o, axis=0), near)
    return np.where(has, floor, np.maximum(near - relax, 0))


def _under_dome(region: np.ndarray, aer: np.ndarray) -> np.ndarray:
    """``region`` limited, toward the apex where the lung narrows (< 30 % of its widest slice), to the in-plane
    footprint of the lung (aerated or dense) one slice lower, grown by one voxel: the apex is a dome whose every
    section lies within the one below it, while the neck's muscles and vessels around it spread outside it."""
    area = np.count_nonzero(aer, axis=(1, 2))
    if not area.any():
        return region
    top = int(np.argmax(area))
    out = region.copy()
    for k in range(top + 1, region.shape[0]):
        if area[k] >= 0.3 * area.max():
            continue
        # the lung one slice lower: its aerated part and the dense parts against it in that slice
        lab, n = cc3d.connected_components(out[k - 1], connectivity=4, return_N=True)
        touch = np.unique(lab[morph.dilate(aer[k - 1]) & out[k - 1]])
        below = aer[k - 1] | _select(lab, n, touch[touch > 0])
        out[k] &= morph.dilate(below)
    return out


def _dense_envelope(labels: np.ndarray, hu: np.ndarray, spacing: tuple[float, float, float]
                    ) -> tuple[np.ndarray, str]:
    """:func:`_dense_envelope_box` within the lungs' in-plane box grown by ``DENSE_BOX_MM`` (the ribs and the
    dense lung against them lie within it; the table, arms and air around the body do not need the work)."""
    g = _block(spacing[1], DENSE_GRID_MM)           # the box starts on the working grid of the whole image
    box = _inplane_box(labels > 0, spacing, DENSE_BOX_MM, (g, g))
    if box is None:
        return labels, ""
    inner, note = _dense_envelope_box(labels[box], hu[box], spacing)
    out = labels.copy()
    out[box] = inner
    return out, note


def _dense_envelope_box(labels: np.ndarray, hu: np.ndarray, spacing: tuple[float, float, float]
                        ) -> tuple[np.ndarray, str]:
    """Dense lung (``DENSE_RANGE``) that lies against the aerated lung inside the rib cage, added to that lung's
    label: lateral to the lung's medial border row by row (so not the heart or mediastinum), above its floor column
    by column (so not the liver or spleen under a dome), not behind the most posterior aerated lung of either side
    (so not the back muscles), at most as large as the aerated part of that lung (up to half a lung).

    Worked out at ~3 mm in-plane. Returns the labels with the dense regions added and a note saying how much was
    added to which lung (when 100 mL or more)."""
    g = _block(spacing[1], DENSE_GRID_MM)
    ny2, nx2 = hu.shape[1] // g * g, hu.shape[2] // g * g
    sp = (spacing[0], spacing[1] * g, spacing[2] * g)
    hs = _downsample(hu[:, :ny2, :nx2], g) if g > 1 else hu
    sides = [_downsample((labels[:, :ny2, :nx2] == v).astype(np.uint8), g) >= 0.5 if g > 1 else labels == v
             for v in (1, 2)]
    lc = sides[0] | sides[1]
    if not sides[0].any() or not sides[1].any():
        return labels, ""
    cand = (hs >= DENSE_RANGE[0]) & (hs <= DENSE_RANGE[1]) & ~lc
    # the posterior limit per slice: the most posterior aerated lung of either side in this or the next slices
    # (+10 mm), so that one lung's dense back stays lung while the back muscles never do
    rows_any = lc.any(axis=2)
    y_post = np.where(rows_any.any(axis=1), rows_any.shape[1] - 1 - np.argmax(rows_any[:, ::-1], axis=1), -1)
    y_post = ndi.maximum_filter1d(y_post, size=3) + int(round(10.0 / sp[1]))
    cand &= np.arange(hs.shape[1])[None, :, None] <= y_post[:, None, None]
    x_mid = (np.nonzero(sides[0].any(axis=(0, 1)))[0].mean() + np.nonzero(sides[1].any(axis=(0, 1)))[0].mean()) / 2
    cavity = _rib_cavity(hs, lc, sp, x_mid)
    cols = np.arange(hs.shape[2])
    out = labels.copy()
    notes = []
    vox = float(np.prod(sp)) / 1000.0
    for i, name in enumerate(("right", "left")):
        aer, other = sides[i], sides[1 - i]
        side = (cols < x_mid) if i == 0 else (cols >= x_mid)
        lim = _side_limits(aer, other, i == 0, x_mid)
        ok = (cols[None, None, :] <= lim[:, :, None]) if i == 0 else (cols[None, None, :] >= lim[:, :, None])
        ok &= np.arange(hs.shape[0])[:, None, None] >= _floor(aer, other, x_mid, int(FLOOR_RELAX_MM // sp[0]))[None]
        region = cand & ok & side[None, None, :] & cavity
        if not region.any():
            continue
        # only thick regions (an in-plane opening by ~6 mm): the thin layer of chest wall between the lung and the
        # ribs is not dense lung (thin subpleural disease is the closing's); the opened region then takes back its
        # own border up to ~9 mm within the candidates; and at least ~8 mm tall in every column: dense lung
        # continues from slice to slice, while the chest wall seen through a gap between two ribs is a one-slice
        # ledge. Worked out within the box of this lung and its candidates, grown beyond the reach of each step
        it = max(1, int(round(6.0 / sp[1])))
        n_z = max(2, int(np.ceil(8.0 / sp[0])))
        sub = _bbox(region | aer, margin=max(it + 2, n_z + 1))
        reg, aer_s = region[sub], aer[sub]
        core = morph.opening(reg, it, axes=(1, 2))
        reg = morph.dilate(core, it + 1, axes=(1, 2), within=reg)
        reg = _under_dome(reg, aer_s)
        reg = ndi.binary_opening(reg, structure=np.ones((n_z, 1, 1), bool))
        lab, n = cc3d.connected_components(reg, connectivity=6, return_N=True)
        touch = np.unique(lab[_dilate(aer_s, 1) & reg])
        grown = np.zeros(hs.shape, bool)
        grown[sub] = _select(lab, n, touch[touch > 0])
        size = grown.sum() * vox
        if grown.sum() > aer.sum():
            notes.append(f"{name}: a dense region of {size:.0f} mL against the lung was larger than the aerated lung "
                         "and was not added (check the lung outline)")
            continue
        if size >= 100:
            notes.append(f"{name}: the envelope was closed over {size:.0f} mL of dense lung "
                         f"({DENSE_RANGE[0]:.0f} to +{DENSE_RANGE[1]:.0f} HU)")
        if not grown.any():
            continue
        box = _fine_box(_bbox(grown, margin=0), g, labels.shape)
        o = out[box]
        o[_upsample_box(grown, box, g) & (o == 0) & (hu[box] < 300)] = i + 1
    return out, "; ".join(notes)


def _slice_holes(mask: np.ndarray) -> np.ndarray:
    """Holes of every slice of a 3D mask (``_holes`` of each slice), in one labelling: the slices are stacked with
    a full slice between each two, so that no background component joins two slices."""
    nz = mask.shape[0]
    stack = np.ones((2 * nz - 1,) + mask.shape[1:], bool)
    stack[::2] = mask
    lab, n = cc3d.connected_components(~stack, connectivity=6, return_N=True)
    lab = lab[::2]
    rim = np.concatenate([lab[:, 0].ravel(), lab[:, -1].ravel(), lab[:, :, 0].ravel(), lab[:, :, -1].ravel()])
    hole = np.ones(n + 1, bool)
    hole[0] = False
    hole[rim] = False
    return hole[lab]


def _holes(sl: np.ndarray) -> np.ndarray:
    """Holes of a 2D mask: background not 4-connected to the border (what ``ndi.binary_fill_holes`` adds)."""
    lab, n = cc3d.connected_components(~sl, connectivity=4, return_N=True)
    rim = np.concatenate([lab[0], lab[-1], lab[:, 0], lab[:, -1]])
    hole = np.ones(n + 1, bool)
    hole[0] = False
    hole[rim] = False
    return hole[lab]


def segment_lungs(scan: CTScan, *, quiet: bool = True) -> Lungs:
    """Segment the right and left lungs and the airways (trachea, main bronchi) of a chest CT.

    Parameters
    ----------
    scan : CTScan
    quiet : bool
        Unused (kept for a uniform stage signature); the stage takes about a second.

    Returns
    -------
    Lungs

    Raises
    ------
    NoLungsError
        When no lung-like air space of at least 100 mL is inside the body.

    Examples
    --------
    >>> from sscild.phantom import make_phantom
    >>> scan, truth = make_phantom(0, extent=10)
    >>> lungs = segment_lungs(scan)
    >>> sorted(np.unique(lungs.labels).tolist())
    [0, 1, 2]
    """
    f = _inplane_factor(scan)
    lo = _downsample(scan.hu, f)
    sp = (scan.spacing[0], scan.spacing[1] * f, scan.spacing[2] * f)
    labels_lo, aerated_lo, airway_lo, carina_lo, notes, body = _segment_coarse(lo, sp)
    # back to full resolution, refined with the full-resolution threshold at the border; the work is done within
    # the lungs' box (and the airways' box) grown by one coarse voxel, zero outside it
    if f > 1:
        airways = np.zeros(scan.shape, bool)
        if airway_lo.any():
            a_box = _fine_box(_bbox(airway_lo, margin=1), f, scan.shape)
            airways[a_box] = _upsample_box(airway_lo, a_box, f)
            airways = _refine_airways(airways, scan.hu)
        labels = np.zeros(scan.shape, np.uint8)
        box = _fine_box(_bbox(labels_lo > 0, margin=1), f, scan.shape)
        dense = _upsample_box(np.where(aerated_lo, 0, labels_lo), box, f)
        lab = _refine_box(_upsample_box(labels_lo, box, f), scan.hu[box], airways[box])
        # the dense regions stay whole (the refinement trims the border by the air threshold)
        labels[box] = np.where((dense > 0) & (lab == 0), dense, lab)
    else:
        labels, airways = labels_lo, airway_lo
    # the airway lumen and a rim of two voxels around it are never lung (no slivers of trachea as lung)
    labels[_dilate(airways, iterations=2)] = 0
    zs = np.nonzero(labels.any(axis=(1, 2)))[0]
    cut = {"apex": bool(zs.max() >= scan.shape[0] - 1), "base": bool(zs.min() <= 0)}
    if cut["apex"]:
        notes["apex"] = "the lungs reach the top slice: the apex may be cut off by the scan range"
    if cut["base"]:
        notes["base"] = "the lungs reach the bottom slice: the bases may be cut off by the scan range"
    if carina_lo is None:
        notes["airways"] = "the trachea was not found in the upper lung slices"
    pos = str(scan.meta.get("patient_position", "") or "")
    if pos.upper().startswith("FF"):
        notes["position"] = notes.get("position", "") + "; feet first (from the header; the image is reoriented to LPS)"
    return Lungs(labels, airways, notes, cut, carina_lo, body)


def _segment_coarse(lo: np.ndarray, sp: tuple[float, float, float]):
    """The coarse-grid stages: body, internal air, lungs, airways, envelope, right/left, dense envelope, notes
    (returned with the body outline). After the body outline, the work is done in the body's in-plane box
    (:func:`_body_box`): the air, table and cushion around the patient are never lung and only cost time (a PET/CT
    field of view is twice the body's width); the position still looks at the whole image (the table)."""
    body = _body_mask(lo, sp)
    box = _body_box(body, sp)
    lo_c, body_c = np.ascontiguousarray(lo[box]), np.ascontiguousarray(body[box])
    labels_c, aerated_c, airway_c, carina_lo, notes = _segment_inside(lo_c, body_c, sp)
    labels_lo, aerated_lo, airway_lo = (np.zeros(lo.shape, a.dtype) for a in (labels_c, aerated_c, airway_c))
    labels_lo[box], aerated_lo[box], airway_lo[box] = labels_c, aerated_c, airway_c
    notes["position"] = _position(lo, body, aerated_lo)
    side_note = _heart_side(labels_c, body_c, sp, carina_lo)
    if side_note:
        notes["right_left"] = side_note
    return labels_lo, aerated_lo, airway_lo, carina_lo, notes, body


def _body_box(body: np.ndarray, sp: tuple[float, float, float], margin_mm: float = DENSE_BOX_MM + 5.0
              ) -> tuple[slice, ...]:
    """All slices, and the rows and columns of the body grown by ``margin_mm``. The box holds the dense
    envelope's own box (the lungs' box grown by ``DENSE_BOX_MM``) and starts on the in-plane grids of the dense
    envelope (~3 mm blocks) and of the envelope closing (~4 mm strides), so that every later stage gives what it
    gives on the whole image."""
    g = _block(sp[1], DENSE_GRID_MM)
    steps = (math.lcm(g, _block(sp[1], CLOSE_GRID_MM)), math.lcm(g, _block(sp[2], CLOSE_GRID_MM)))
    return _inplane_box(body, sp, margin_mm, steps) or (slice(None),) * 3


def _inplane_box(mask: np.ndarray, sp: tuple[float, float, float], margin_mm: float, steps: tuple[int, int]
                 ) -> tuple[slice, ...] | None:
    """All slices, and the rows and columns of ``mask`` grown by ``margin_mm``, each starting on a multiple of its
    ``steps`` (the working grid of the whole image); None when ``mask`` is empty."""
    rows, cols = np.nonzero(mask.any(axis=0))
    if len(rows) == 0:
        return None
    out: list[slice] = [slice(None)]
    for idx, s, step in ((rows, sp[1], steps[0]), (cols, sp[2], steps[1])):
        m = int(np.ceil(margin_mm / s))
        out.append(slice(max(0, int(idx.min()) - m) // step * step, int(idx.max()) + m + 1))
    return tuple(out)


def _segment_inside(lo: np.ndarray, body: np.ndarray, sp: tuple[float, float, float]):
    """The coarse stages after the body outline, on the body's box: labels, aerated lung, airways, carina index,
    notes (split, dense)."""
    vox_ml = sp[0] * sp[1] * sp[2] / 1000.0
    internal = _internal_air(lo, body)
    n_internal = int(internal.sum())
    lung = _lung_components(lo, internal, vox_ml)
    if lung.sum() * vox_ml < 100:
        raise NoLungsError(
            f"no lungs found: is this a chest CT? {n_internal * vox_ml:.0f} mL of air below {LUNG_THRESHOLD:.0f} HU "
            "inside the body, none of it lung-like (need at least 100 mL)")
    # the trachea is searched in all internal air: when its lumen is closed off from the parenchyma it is a
    # component of its own (pure air), which the lung filter drops like bowel gas
    zs = np.nonzero(lung.any(axis=(1, 2)))[0]
    airway_lo, carina_lo = _track_airways(lo, lung | _tubular_air(lo, internal, lung), sp, int(zs.max()))
    # the trachea outside the lungs' component (in the neck) still counts as airway
    near_airway = _dilate(airway_lo, iterations=1)
    lung_wo = lung & ~near_airway
    lung_wo = _close_envelope(lung_wo, lo, sp) & ~near_airway
    labels_lo, split_note = _right_left(lung_wo)
    aerated_lo = labels_lo > 0
    labels_lo, dense_note = _dense_envelope(labels_lo, lo, sp)
    labels_lo[near_airway] = 0
    notes: dict[str, str] = {}
    if split_note:
        notes["split"] = split_note
    if dense_note:
        notes["dense"] = dense_note
    return labels_lo, aerated_lo, airway_lo, carina_lo, notes


def _position(hu: np.ndarray, body: np.ndarray, lung: np.ndarray) -> str:
    """Supine or prone, from the table's side (dense material outside the body, behind or in front of it) or,
    without a table in view, from the dependent lung (the lower side is denser)."""
    rows = np.arange(hu.shape[1])
    body_rows = np.count_nonzero(body, axis=(0, 2))
    y_body = float((body_rows * rows).sum() / max(body_rows.sum(), 1))
    table = (hu > -300) & ~_dilate(body, 3)
    t_rows = np.count_nonzero(table, axis=(0, 2))
    if t_rows.sum() > 0.01 * body_rows.sum():
        y_table = float((t_rows * rows).sum() / t_rows.sum())
        if y_table > y_body:
            return "supine (the table is behind the patient)"
        return "prone (the table is in front of the patient); right and left follow the image's LPS orientation"
    ys = np.nonzero(lung.any(axis=(0, 2)))[0]
    if len(ys) < 6:
        return "unknown"
    third = (ys.max() - ys.min()) / 3
    front = hu[:, : int(ys.min() + third)][lung[:, : int(ys.min() + third)]]
    back = hu[:, int(ys.max() - third):][lung[:, int(ys.max() - third):]]
    if front.size and back.size and float(np.mean(front)) > float(np.mean(back)) + 15:
        return "prone (no table in view; the anterior lung is the denser, dependent one)"
    return "supine (no table in view; judged from the dependent, denser posterior lung)"


HEART_BALANCE_MIN = -0.15   # below: the mediastinum at heart level lies on the image's right (see _heart_side)


def _heart_side(labels: np.ndarray, body: np.ndarray, sp: tuple[float, float, float], carina: float | None
                ) -> str:
    """A note when the heart lies on the image's right (situs inversus or a mirrored image).

    At heart level (30-90 mm below the carina, else 20-50 % of the lung height from the base; slices where both
    lungs have at least half their largest area, so not the domes), the mediastinum is what lies between the two
    lungs' medial borders row by row; its *balance* is (pixels left of the body's midline - pixels right of it) /
    all, LPS x growing to the patient's left. On phantoms and the five shared real scans it is +0.23 to +0.58 as
    made and the negative when mirrored, except one scan with a midline heart (-0.08 either way), so only a
    balance below ``HEART_BALANCE_MIN`` gives the note."""
    zs = np.nonzero(labels.any(axis=(1, 2)))[0]
    if len(zs) < 4:
        return ""
    if carina is not None:
        k0, k1 = max(int(np.floor(carina - 90.0 / sp[0])), zs.min()), min(int(np.ceil(carina - 30.0 / sp[0])), zs.max())
    else:
        k0, k1 = int(zs.min() + 0.2 * (zs.max() - zs.min())), int(zs.min() + 0.5 * (zs.max() - zs.min()))
    area = [np.count_nonzero(labels == v, axis=(1, 2)) for v in (1, 2)]
    ks = [k for k in range(k0, k1 + 1) if all(a[k] > 0 and a[k] >= 0.5 * a.max() for a in area)]
    if not ks:
        return ""
    lab, nx = labels[ks], labels.shape[2]
    r_med, l_med = _medial(lab == 1, True), _medial(lab == 2, False)                 # (slice, row); -1 / nx: none
    cols = np.arange(nx)[None, None, :]
    both = (r_med >= 0) & (l_med < nx)
    mediastinum = both[:, :, None] & (cols > r_med[:, :, None]) & (cols < l_med[:, :, None])
    bc = body[ks].any(axis=1)                                                          # (slice, column)
    mid = ((np.argmax(bc, axis=1) + nx - 1 - np.argmax(bc[:, ::-1], axis=1)) / 2.0)[:, None, None]
    left, right = int((mediastinum & (cols > mid)).sum()), int((mediastinum & (cols < mid)).sum())
    if left + right == 0:
        return ""
    balance = (left - right) / (left + right)
    if balance < HEART_BALANCE_MIN:
        return (f"the mediastinum at heart level lies mostly to the image's right of the body's midline (balance "
                f"{balance:+.2f}; +0.2 or more is usual): situs inversus or a mirrored image; right and left lung "
                "labels follow the image's LPS orientation, check them")
    return ""


def _upsample_labels(lab: np.ndarray, shape: tuple[int, int, int], f: int) -> np.ndarray:
    """``lab`` (a coarse grid of ``f`` x ``f`` in-plane blocks) on the full grid ``shape`` (the remainder rows and
    columns beyond the last whole block are 0)."""
    if f == 1:
        return lab
    return _upsample_box(lab, tuple(slice(0, n) for n in shape), f)


def _fine_box(box_lo: tuple[slice, ...], f: int, shape: tuple[int, int, int]) -> tuple[slice, ...]:
    """The full-resolution box of a box on the grid of ``f`` x ``f`` in-plane blocks (all its slices; the rows and
    columns of its blocks, and the remainder rows / columns beyond the last whole block when it reaches it)."""
    out = [box_lo[0]]
    for ax in (1, 2):
        sl, n_lo = box_lo[ax], shape[ax] // f
        out.append(slice(sl.start * f, shape[ax] if sl.stop >= n_lo else sl.stop * f))
    return tuple(out)


def _upsample_box(lab: np.ndarray, box: tuple[slice, ...], f: int) -> np.ndarray:
    """:func:`_upsample_labels` of ``lab`` (a coarse grid of ``f`` x ``f`` blocks) cut to the full-resolution
    ``box`` of :func:`_fine_box` (the remainder beyond the last whole block is 0)."""
    r0, r1, c0, c1 = box[1].start // f, -(-box[1].stop // f), box[2].start // f, -(-box[2].stop // f)
    up = np.repeat(np.repeat(lab[box[0], r0:r1, c0:c1], f, axis=1), f, axis=2)
    out = np.zeros((up.shape[0], box[1].stop - box[1].start, box[2].stop - box[2].start), lab.dtype)
    ny, nx = min(up.shape[1], out.shape[1]), min(up.shape[2], out.shape[2])
    out[:, :ny, :nx] = up[:, :ny, :nx]
    return out


def _bbox(mask: np.ndarray, margin: int = 1) -> tuple[slice, ...]:
    """Bounding box of ``mask`` grown by ``margin`` voxels, as slices (the whole array when empty)."""
    if not mask.any():
        return tuple(slice(0, n) for n in mask.shape)
    # the first axis from the per-slice test, the others from the projection along it (two passes, not one per axis)
    proj = mask.any(axis=0)
    flags = [mask.reshape(mask.shape[0], -1).any(axis=1)]
    flags += [proj.any(axis=tuple(a for a in range(proj.ndim) if a != ax)) for ax in range(proj.ndim)]
    out = []
    for ax, fl in enumerate(flags):
        idx = np.nonzero(fl)[0]
        out.append(slice(max(idx[0] - margin, 0), min(idx[-1] + margin + 1, mask.shape[ax])))
    return tuple(out)


def _refine_airways(up: np.ndarray, hu: np.ndarray) -> np.ndarray:
    """The coarse airway lumen at full resolution: its blocky border replaced by the air threshold within one
    coarse pixel of it (the lumen is air, its wall is not: the wall's partial-volume pixels go, the lumen's come)."""
    if not up.any():
        return up
    box = _bbox(up, margin=3)
    m = up[box]
    grown = morph.dilate(m, 2, axes=(1, 2))
    out = np.zeros_like(up)
    out[box] = grown & (hu[box] < AIRWAY_LUMEN_HU)
    return out


def _refine_box(labels: np.ndarray, hu: np.ndarray, airways: np.ndarray) -> np.ndarray:
    """At the lung border, keep full-resolution voxels that are below the lung threshold; keep the interior.
    Each lung is worked on within its own box grown by two voxels (the band reaches one voxel out)."""
    out = labels.copy()
    for lab in (1, 2):
        whole = labels == lab
        if not whole.any():
            continue
        sub = _bbox(whole, margin=2)
        m, hu_s, aw, res = whole[sub], hu[sub], airways[sub], out[sub]
        # in-plane 4-neighbour erosion and dilation, outside the box counting as background
        band = morph.dilate(m, axes=(1, 2)) & ~morph.erode(m, axes=(1, 2))
        air = hu_s < LUNG_THRESHOLD
        keep = band & air & (res == 0) | (band & m & air)
        res[m & band & ~air] = 0
        res[keep & ~aw] = lab
    return out


def segment_airways_only(scan: CTScan) -> Lungs:
    """Trachea (and main bronchi when seen) of a scan without usable lungs, e.g. a mediastinal crop.

    The trachea is the internal air component that spans most slices with a cross-section of 0.6-7 cm^2;
    ``labels`` holds the remaining internal air (lung fragments) as lung (1 right / 2 left of the trachea).
    """
    f = _inplane_factor(scan)
    lo = _downsample(scan.hu, f)
    sp = (scan.spacing[0], scan.spacing[1] * f, scan.spacing[2] * f)
    # a crop cuts the lungs at its sides, so 'outside' is judged per slice: air not touching the slice border
    internal = np.zeros(lo.shape, bool)
    for k in range(lo.shape[0]):
        lab2, n2 = ndi.label(lo[k] < AIR_THRESHOLD)
        if n2:
            edge = np.unique(np.r_[lab2[0], lab2[-1], lab2[:, 0], lab2[:, -1]])
            internal[k] = (lab2 > 0) & ~np.isin(lab2, edge)
    lab, n = cc3d.connected_components(internal, connectivity=6, return_N=True)
    px = sp[1] * sp[2]
    best, best_span = None, 0
    for i, sl in enumerate(ndi.find_objects(lab), start=1):
        if sl is None:
            continue
        comp = lab[sl] == i
        per_slice = comp.sum(axis=(1, 2)) * px
        span = int((per_slice > 0).sum())
        if span > best_span and 60 <= np.median(per_slice[per_slice > 0]) <= 700:
            best, best_span = i, span
    airway_lo = lab == best if best is not None else np.zeros(lo.shape, bool)
    rest = internal & ~airway_lo
    xs = np.nonzero(airway_lo.any(axis=(0, 1)))[0]
    x_mid = xs.mean() if len(xs) else lo.shape[2] / 2
    labels_lo = np.zeros(lo.shape, np.uint8)
    cols = np.arange(lo.shape[2])[None, None, :]
    labels_lo[rest & (cols < x_mid)] = 1
    labels_lo[rest & (cols >= x_mid)] = 2
    labels = _upsample_labels(labels_lo, scan.shape, f)
    airways = _upsample_labels(airway_lo.astype(np.uint8), scan.shape, f) > 0
    notes = {"airways": "trachea found without lungs" if best is not None else "no trachea found"}
    return Lungs(labels, airways, notes, {"apex": False, "base": False}, None)

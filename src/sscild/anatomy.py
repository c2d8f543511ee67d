"""Lungs and airways without a model.

``segment_lungs`` works on any chest CT, in a few seconds on a CPU:

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

from dataclasses import dataclass, field

import cc3d
import numpy as np
from scipy import ndimage as ndi

from .errors import NoLungsError
from .scan import CTScan

LUNG_THRESHOLD = -300.0   # HU: below this is air or aerated/hazy lung
AIR_THRESHOLD = -930.0    # HU: airway lumen is darker than lung parenchyma


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
    """

    labels: np.ndarray
    airways: np.ndarray
    notes: dict[str, str] = field(default_factory=dict)
    cut_off: dict[str, bool] = field(default_factory=dict)
    carina_index: float | None = None

    @property
    def mask(self) -> np.ndarray:
        return self.labels > 0

    def volume_ml(self, scan: CTScan) -> dict[str, float]:
        """Volumes in mL: right, left, total."""
        v = scan.voxel_volume_ml
        r, l_ = int((self.labels == 1).sum()), int((self.labels == 2).sum())
        return {"right": r * v, "left": l_ * v, "total": (r + l_) * v}


# --------------------------------------------------------------------------------------------
def _inplane_factor(scan: CTScan, target_mm: float = 1.4) -> int:
    return max(1, int(np.floor(target_mm / max(scan.spacing[1], 1e-3))))


def _downsample(hu: np.ndarray, f: int) -> np.ndarray:
    if f == 1:
        return hu.astype(np.float32)
    nz, ny, nx = hu.shape
    ny2, nx2 = ny // f * f, nx // f * f
    v = hu[:, :ny2, :nx2].astype(np.float32).reshape(nz, ny2 // f, f, nx2 // f, f)
    return v.mean(axis=(2, 4))


def _internal_air(hu: np.ndarray) -> np.ndarray:
    """Air (< LUNG_THRESHOLD) not connected to the in-plane border of the image, per connected component in 3D."""
    air = hu < LUNG_THRESHOLD
    lab = cc3d.connected_components(air, connectivity=6)
    border = np.unique(np.concatenate([lab[:, 0, :].ravel(), lab[:, -1, :].ravel(), lab[:, :, 0].ravel(),
                                       lab[:, :, -1].ravel()]))
    inside = air.copy()
    inside[np.isin(lab, border[border > 0])] = False
    return inside


def _lung_components(hu: np.ndarray, internal: np.ndarray, vox_ml: float) -> np.ndarray:
    lab, n = cc3d.connected_components(internal, connectivity=6, return_N=True)
    if n == 0:
        return np.zeros(hu.shape, bool)
    counts = np.bincount(lab.ravel())
    counts[0] = 0
    means = ndi.mean(hu, lab, index=np.arange(n + 1))
    order = np.argsort(counts)[::-1]
    big = counts[order[0]]
    keep = []
    for i in order[:12]:
        vol = counts[i] * vox_ml
        if i == 0 or vol < 30 or counts[i] < 0.02 * big:
            continue
        # gas in the bowel or stomach is nearly pure air; lung carries parenchyma (~-850 HU)
        if means[i] < -975 and vol < 1500:
            continue
        keep.append(i)
    return np.isin(lab, keep)


def _track_airways(hu: np.ndarray, lung: np.ndarray, spacing: tuple[float, float, float]
                   ) -> tuple[np.ndarray, float | None]:
    """Trachea + main bronchi by slice-wise tracking from the top; returns the mask and the carina z index."""
    nz, ny, nx = hu.shape
    px = spacing[1] * spacing[2]
    airway = np.zeros(hu.shape, bool)
    dark = hu < AIR_THRESHOLD
    # the trachea: in the upper third of the lungs, a round dark component inside the lung/air mask, near the
    # middle of the body in x, present in several consecutive slices
    zs = np.nonzero(lung.any(axis=(1, 2)))[0]
    if len(zs) == 0:
        return airway, None
    top = zs.max()
    xs = np.nonzero(lung.any(axis=(0, 1)))[0]
    x_mid = (xs.min() + xs.max()) / 2
    start = None
    for k in range(top, max(zs.min(), top - int(120 / spacing[0])), -1):
        lab, n = ndi.label(dark[k] & lung[k])
        if n == 0:
            continue
        best = None
        for j, sl in enumerate(ndi.find_objects(lab), start=1):
            comp = lab[sl] == j
            area = comp.sum() * px
            if not 60 <= area <= 700:      # trachea cross-section ~1-5 cm^2
                continue
            h, w = comp.shape
            fill = comp.sum() / float(h * w)
            cx = (sl[1].start + sl[1].stop) / 2
            if fill < 0.5 or abs(cx - x_mid) * spacing[2] > 35:
                continue
            score = abs(cx - x_mid)
            if best is None or score < best[0]:
                best = (score, j)
        if best is not None:
            start = (k, lab == best[1])
            break
    if start is None:
        return airway, None
    k0, seed = start
    # go up while the trachea continues (so the mask covers the whole visible trachea)
    prev = seed
    for k in range(k0, nz):
        lab, n = ndi.label(dark[k])
        hit = np.unique(lab[ndi.binary_dilation(prev, iterations=2) & (lab > 0)])
        cur = np.isin(lab, hit[hit > 0]) if len(hit) else np.zeros_like(prev)
        if not cur.any() or cur.sum() * px > 900:
            break
        airway[k] = cur
        prev = cur
    # go down: follow every branch; the carina is where one branch becomes two and stays two for >= 12 mm
    # (a short-lived second component, e.g. a cyst touching the trachea, is not a carina)
    prev = seed
    carina = None
    candidate = None
    max_below = None
    branch_area = seed.sum() * px
    persist = int(np.ceil(12.0 / spacing[0]))
    for k in range(k0 - 1, -1, -1):
        lab, n = ndi.label(dark[k])
        grown = ndi.binary_dilation(prev, iterations=2)
        hit = np.unique(lab[grown & (lab > 0)])
        hit = hit[hit > 0]
        comps = []
        for h in hit:
            c = lab == h
            a = c.sum() * px
            if a > max(3.0 * branch_area, 900):   # leak into the lung
                continue
            comps.append(c)
        if not comps:
            break
        cur = np.zeros_like(prev)
        for c in comps:
            cur |= c
        _, n_branches = ndi.label(cur)
        if carina is None:
            if n_branches >= 2:
                if candidate is None:
                    candidate = k + 0.5          # the ridge lies between this slice and the one above
                if candidate - k >= persist:
                    carina = candidate
                    max_below = int(np.floor(carina - 40.0 / spacing[0]))  # main bronchi: ~4 cm long
            else:
                candidate = None
        if max_below is not None and k < max_below:
            break
        airway[k] = cur
        prev = cur
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
    keep = []
    for i, sl in enumerate(ndi.find_objects(lab), start=1):
        if sl is not None and sl[0].stop - 1 >= zs.max() - 5 and sl[0].stop - sl[0].start >= 5:
            keep.append(i)   # reaches the top of the lungs and spans several slices: a tube from the neck
    return np.isin(lab, keep)


def _split_left_right(mask: np.ndarray, x_mid: float) -> tuple[np.ndarray, str]:
    """Label 1 right (smaller x), 2 left; separate touching lungs by erosion + watershed."""
    lab, n = cc3d.connected_components(mask, connectivity=6, return_N=True)
    counts = np.bincount(lab.ravel())
    counts[0] = 0
    note = ""
    big = [i for i in np.argsort(counts)[::-1] if i > 0 and counts[i] > 0.15 * counts.max()][:2]
    if len(big) < 2:
        markers = None
        # erosion by ``it`` steps of the 6-neighbour cross keeps the voxels farther than ``it`` steps (city-block)
        # from the background, the array's outside included: one distance transform serves every step
        depth = ndi.distance_transform_cdt(np.pad(mask, 1), metric="taxicab")[1:-1, 1:-1, 1:-1]
        for it in range(1, 12):
            er = depth > it
            l2, n2 = cc3d.connected_components(er, connectivity=6, return_N=True)
            c2 = np.bincount(l2.ravel())
            c2[0] = 0
            top2 = [i for i in np.argsort(c2)[::-1] if i > 0 and c2[i] > 0.15 * c2.max()][:2]
            if len(top2) == 2:
                markers = np.zeros(mask.shape, np.int32)
                for m, i in enumerate(top2, start=1):
                    markers[l2 == i] = m
                note = f"the lungs touch; separated after {it} erosion step(s)"
                break
        if markers is None:
            # fall back to the midline
            out = np.zeros(mask.shape, np.uint8)
            xs = np.arange(mask.shape[2])[None, None, :]
            out[mask & (xs < x_mid)] = 1
            out[mask & (xs >= x_mid)] = 2
            return out, "the lungs could not be separated by shape; split at the body midline"
        # grow both markers back inside the mask, one step each in turn (a flat watershed)
        lab = markers
        todo = mask & (lab == 0)
        box = _bbox(todo, margin=it + 3)
        sub, msub = lab[box], mask[box]            # views: growth happens only near unassigned voxels
        for _ in range(it + 2):
            for m in (1, 2):
                grow = ndi.binary_dilation(sub == m) & msub & (sub == 0)
                sub[grow] = m
        big = [1, 2]
    out = np.zeros(mask.shape, np.uint8)
    xs = np.arange(mask.shape[2])
    cx = [float((np.bincount(np.nonzero(lab == i)[2], minlength=mask.shape[2]) * xs).sum() / max((lab == i).sum(), 1))
          for i in big]
    right, left = (big[0], big[1]) if cx[0] < cx[1] else (big[1], big[0])
    out[lab == right] = 1
    out[lab == left] = 2
    # small pieces (e.g. split by a fissure-like gap) go to the side of their centroid
    rest = mask & (out == 0)
    if rest.any():
        out[rest & (np.arange(mask.shape[2])[None, None, :] < x_mid)] = 1
        out[rest & (np.arange(mask.shape[2])[None, None, :] >= x_mid)] = 2
    return out, note


def _close_envelope(lung: np.ndarray, hu: np.ndarray, spacing: tuple[float, float, float]) -> np.ndarray:
    """Fill holes per slice and close the outline in 3D at ~4 mm resolution (radius ~10 mm), never into bone
    (> 300 HU) or outside the body."""
    out = lung.copy()
    # a hole in an axial slice may be the top of a diaphragm dome (liver/spleen ringed by lung): only regions
    # with lung below them in their column are filled; a dome has abdomen below it
    lung_below = np.zeros(lung.shape, bool)
    lung_below[1:] = np.logical_or.accumulate(lung, axis=0)[:-1]
    for k in range(out.shape[0]):
        if out[k].any():
            out[k] |= ndi.binary_fill_holes(out[k]) & lung_below[k]
    # coarse 3D closing (dilation then erosion) with a ball of ~10 mm
    f = [max(1, int(round(4.0 / s))) for s in spacing]
    coarse = out[:: f[0], :: f[1], :: f[2]]
    cs = [s * ff for s, ff in zip(spacing, f)]
    r = 10.0
    dilated = ndi.distance_transform_edt(~coarse, sampling=cs) <= r
    closed = (ndi.distance_transform_edt(dilated, sampling=cs) > r) | coarse
    added_c = closed & ~coarse
    if added_c.any():
        idx = [np.minimum(np.arange(n) // ff, c - 1) for n, ff, c in zip(out.shape, f, coarse.shape)]
        added = added_c[np.ix_(idx[0], idx[1], idx[2])] & (hu < 300) & lung_below
        out |= added
    return out


def segment_lungs(scan: CTScan, *, quiet: bool = True) -> Lungs:
    """Segment the right and left lungs and the airways (trachea, main bronchi) of a chest CT.

    Parameters
    ----------
    scan : CTScan
    quiet : bool
        Unused (kept for a uniform stage signature); the stage takes seconds.

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
    vox_ml = sp[0] * sp[1] * sp[2] / 1000.0
    internal = _internal_air(lo)
    n_internal = int(internal.sum())
    lung = _lung_components(lo, internal, vox_ml)
    if lung.sum() * vox_ml < 100:
        raise NoLungsError(
            f"no lungs found: is this a chest CT? {n_internal * vox_ml:.0f} mL of air below {LUNG_THRESHOLD:.0f} HU "
            "inside the body, none of it lung-like (need at least 100 mL)")
    # the trachea is searched in all internal air: when its lumen is closed off from the parenchyma it is a
    # component of its own (pure air), which the lung filter drops like bowel gas
    airway_lo, carina_lo = _track_airways(lo, lung | _tubular_air(lo, internal, lung), sp)
    # the trachea outside the lungs' component (in the neck) still counts as airway
    lung_wo = lung & ~ndi.binary_dilation(airway_lo, iterations=1)
    lung_wo = _close_envelope(lung_wo, lo, sp) & ~ndi.binary_dilation(airway_lo, iterations=1)
    xs = np.nonzero(lung_wo.any(axis=(0, 1)))[0]
    x_mid = (xs.min() + xs.max()) / 2 if len(xs) else lung_wo.shape[2] / 2
    # drop small detached bits (< 1 % of the lung)
    lab, n = cc3d.connected_components(lung_wo, connectivity=6, return_N=True)
    if n > 1:
        c = np.bincount(lab.ravel())
        c[0] = 0
        lung_wo = np.isin(lab, np.nonzero(c >= 0.01 * c.max())[0])
    labels_lo, split_note = _split_left_right(lung_wo, x_mid)

    # back to full resolution, refined with the full-resolution threshold at the border
    labels = _upsample_labels(labels_lo, scan.shape, f)
    airways = _upsample_labels(airway_lo.astype(np.uint8), scan.shape, f) > 0
    if f > 1:
        labels = _refine(labels, scan.hu, airways)
    labels[airways] = 0
    notes: dict[str, str] = {}
    if split_note:
        notes["split"] = split_note
    zs = np.nonzero(labels.any(axis=(1, 2)))[0]
    cut = {"apex": bool(zs.max() >= scan.shape[0] - 1), "base": bool(zs.min() <= 0)}
    if cut["apex"]:
        notes["apex"] = "the lungs reach the top slice: the apex may be cut off by the scan range"
    if cut["base"]:
        notes["base"] = "the lungs reach the bottom slice: the bases may be cut off by the scan range"
    if carina_lo is None:
        notes["airways"] = "the trachea was not found in the upper lung slices"
    return Lungs(labels, airways, notes, cut, carina_lo)


def _upsample_labels(lab: np.ndarray, shape: tuple[int, int, int], f: int) -> np.ndarray:
    if f == 1:
        return lab
    out = np.zeros(shape, lab.dtype)
    up = np.repeat(np.repeat(lab, f, axis=1), f, axis=2)
    out[:, : up.shape[1], : up.shape[2]] = up
    return out


def _bbox(mask: np.ndarray, margin: int = 1) -> tuple[slice, ...]:
    """Bounding box of ``mask`` grown by ``margin`` voxels, as slices (the whole array when empty)."""
    if not mask.any():
        return tuple(slice(0, n) for n in mask.shape)
    out = []
    for ax in range(mask.ndim):
        idx = np.nonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != ax)))[0]
        out.append(slice(max(idx[0] - margin, 0), min(idx[-1] + margin + 1, mask.shape[ax])))
    return tuple(out)


def _refine(labels: np.ndarray, hu: np.ndarray, airways: np.ndarray) -> np.ndarray:
    """At the lung border, keep full-resolution voxels that are below the lung threshold; keep the interior."""
    out = labels.copy()
    box = _bbox(labels > 0, margin=2)
    out[box] = _refine_box(labels[box], hu[box], airways[box])
    return out


def _refine_box(labels: np.ndarray, hu: np.ndarray, airways: np.ndarray) -> np.ndarray:
    out = labels.copy()
    st = ndi.generate_binary_structure(2, 1)[None]
    for lab in (1, 2):
        m = labels == lab
        inner = ndi.binary_erosion(m, structure=st, iterations=1)
        outer = ndi.binary_dilation(m, structure=st, iterations=1)
        band = outer & ~inner
        keep = band & (hu < LUNG_THRESHOLD) & (out == 0) | (band & m & (hu < LUNG_THRESHOLD))
        out[m & band & ~(hu < LUNG_THRESHOLD)] = 0
        out[keep & ~airways] = lab
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
